"""Power signals: CSV dialects and broken files (exact messages), built-in profiles
against the sourced facts, signal lookup by time, and loading a scenario's signals."""

from __future__ import annotations

import codecs
import doctest
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.errors import TwinError
from twin.model import power
from twin.model.power import (
    AREA_CODES,
    LIFECYCLE_G_PER_KWH,
    PROFILES,
    SLOT_SECONDS,
    SignalSeries,
    SiteSignal,
    area_code,
    load_signals,
    profile_day,
    read_area_csv,
    read_price_csv,
    signals_from_columns,
)
from twin.model.schema import Scenario
from twin.model.validate import load_scenario, load_topology, validate_file

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "power"

# The four slots every good fixture holds (see tests/fixtures/power/make_fixtures.py), checked by hand:
# 0:00 and 0:30: LNG 1000, coal 1000, hydro 500, wind 500 of 3000 MW
#   carbon (1000*490 + 1000*820 + 500*24 + 500*11) / 3000 = 1,327,500 / 3000 = 442.5 g/kWh
#   renewable (500 + 500) / 3000 = 1/3
# 1:00: LNG 500, coal 500, hydro 500, solar 1500; 200 MW solar curtailed
#   carbon (500*490 + 500*820 + 500*24 + 1500*48) / 3000 = 739,000 / 3000 = 246.333 g/kWh
#   renewable 2000 / 3000; surplus 200 MW of solar (48 g/kWh)
# 1:30: as 1:00 plus 100 MW wind curtailed: surplus 300 MW at (200*48 + 100*11) / 300 = 35.667 g/kWh
EXPECTED_CARBON = [442.5, 442.5, 739000 / 3000, 739000 / 3000]
EXPECTED_SHARE = [1 / 3, 1 / 3, 2 / 3, 2 / 3]
EXPECTED_SURPLUS = [0.0, 0.0, 200.0, 300.0]
EXPECTED_SURPLUS_G = [48.0, 48.0, 48.0, (200 * 48 + 100 * 11) / 300]


def signals_of(path: Path) -> list[SiteSignal]:
    data = read_area_csv(path)
    return signals_from_columns(data.columns, label=data.label, row_numbers=data.rows)


@pytest.mark.parametrize("name", ["standard.csv", "wide22.csv", "kyushu.csv", "utf8-bom.csv"])
def test_every_dialect_reads_the_same_slots(name):
    data = read_area_csv(FIX / name)
    assert len(data) == 4
    assert data.start.isoformat() == "2024-04-01T00:00:00"
    assert data.columns["demand"] == [3000.0] * 4
    assert data.columns["solar"] == [0.0, 0.0, 1500.0, 1500.0]
    signals = signals_of(FIX / name)
    assert [s.carbon_g_per_kwh for s in signals] == pytest.approx(EXPECTED_CARBON)
    assert [s.renewable_share for s in signals] == pytest.approx(EXPECTED_SHARE)
    assert [s.surplus_mw for s in signals] == pytest.approx(EXPECTED_SURPLUS)
    assert [s.surplus_carbon_g_per_kwh for s in signals] == pytest.approx(EXPECTED_SURPLUS_G)
    assert all(s.price_yen_per_kwh is None for s in signals)


def test_22_column_dialect_keeps_the_extra_curtailment_columns():
    data = read_area_csv(FIX / "wide22.csv")
    assert data.columns["thermal_curtailed"] == [0.0] * 4
    assert data.columns["biomass_curtailed"] == [0.0] * 4
    # the 20-column dialect gets zeros for them, so both dialects have the same keys
    assert set(read_area_csv(FIX / "standard.csv").columns) == set(data.columns)


def test_kyushu_dialect_is_really_different_on_disk():
    raw = (FIX / "kyushu.csv").read_bytes().decode("cp932")
    assert '"20240401","00:00"' in raw and "火力（LNG）" in raw and '"3,000"' in raw


def test_utf8_without_bom(tmp_path):
    text = (FIX / "standard.csv").read_bytes().decode("cp932")
    (tmp_path / "a.csv").write_text(text, encoding="utf-8")
    assert [s.carbon_g_per_kwh for s in signals_of(tmp_path / "a.csv")] == pytest.approx(EXPECTED_CARBON)


def test_man_kw_unit_row_is_scaled_to_mw(tmp_path):
    text = (FIX / "standard.csv").read_bytes().decode("cp932").replace("単位[MW平均]", "単位[万kW]")
    (tmp_path / "a.csv").write_text(text, encoding="utf-8")
    assert read_area_csv(tmp_path / "a.csv").columns["demand"] == [30000.0] * 4


BROKEN = [
    ("bad-number.csv",
     'power/kyushu.csv: row 17, column 太陽光出力制御量: "abc" is not a number; fix the value or remove the row'),
    ("missing-column.csv",
     "power/kyushu.csv: row 2: missing column(s) 太陽光出力制御量; export the full area supply-demand results file"),
    ("wrong-header.csv",
     "power/kyushu.csv: no header row starting with DATE,TIME (first row: '単位[MW平均],,,供給力'); "
     "use an area supply-demand results (エリア需給実績) CSV as published"),
    ("unknown-column.csv",
     "power/kyushu.csv: row 2, column 12: unknown column '太陽光'; the header must be " + ",".join(power.CSV_COLUMNS)
     + " (plus optionally 火力出力制御量,バイオマス出力制御量)"),
    ("gap.csv",
     "power/kyushu.csv: row 5: slot 2024-04-01 01:00 is missing; the file must have every 30-minute slot in "
     "order (first gap here)"),
    ("truncated.csv",
     "power/kyushu.csv: row 6: 12 fields, fewer than the header's 20 (truncated or malformed row); "
     "complete the row or remove it"),
    ("empty.csv",
     "power/kyushu.csv: the file is empty; export the data again or point to the right file"),
]


@pytest.mark.parametrize(("name", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_files_name_file_row_column_and_fix(name, message):
    with pytest.raises(TwinError) as err:
        read_area_csv(FIX / name, label="power/kyushu.csv")
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def write_rows(tmp_path: Path, replace: tuple[str, str]) -> Path:
    text = (FIX / "standard.csv").read_bytes().decode("cp932")
    assert replace[0] in text
    (tmp_path / "x.csv").write_text(text.replace(replace[0], replace[1], 1), encoding="utf-8")
    return tmp_path / "x.csv"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("2024/4/1,1:00", "2024/4/1,0:30",
     "x.csv: row 5: slot 2024-04-01 01:00 is followed by 2024-04-01 00:30 (repeated or out of order); "
     "the file must have every 30-minute slot in order (first gap here)"),
    ("2024/4/1,1:00", "2024/4/1,1:15",
     "x.csv: row 5, column TIME: '1:15' is not a slot start; write H:MM with minutes 00 or 30"),
    ("2024/4/1,1:00", "2024/13/1,1:00",
     "x.csv: row 5, column DATE: '2024/13/1' is not a date; write YYYY/MM/DD or YYYYMMDD"),
    ("2024/4/1,1:00,3000", "2024/4/1,1:00,",
     "x.csv: row 5, column エリア需要: an empty cell is not a number; fix the value or remove the row"),
    ("2024/4/1,1:00,3000", "2024/4/1,1:00,nan",
     'x.csv: row 5, column エリア需要: "nan" is not a number; fix the value or remove the row'),
    ("DATE,TIME,エリア需要", "DATE,TIME,水力",
     "x.csv: row 2: column '水力' appears twice; keep one"),
])
def test_bad_rows(tmp_path, old, new, message):
    path = write_rows(tmp_path, (old, new))
    with pytest.raises(TwinError) as err:
        read_area_csv(path, label="x.csv")
    assert str(err.value) == message


def test_header_without_data_rows(tmp_path):
    (tmp_path / "x.csv").write_text(power.CSV_COLUMNS and ",".join(power.CSV_COLUMNS) + "\n", encoding="utf-8")
    with pytest.raises(TwinError, match="no data rows"):
        read_area_csv(tmp_path / "x.csv")


def test_undecodable_bytes(tmp_path):
    (tmp_path / "x.csv").write_bytes(b"DATE,TIME\n\x81\xff\xfe\n")
    with pytest.raises(TwinError, match=r"x.csv: byte 10 is neither UTF-8 nor Shift-JIS \(CP932\)"):
        read_area_csv(tmp_path / "x.csv", label="x.csv")


def test_bom_but_not_utf8(tmp_path):
    (tmp_path / "x.csv").write_bytes(codecs.BOM_UTF8 + "DATE".encode() + "需要".encode("cp932"))
    with pytest.raises(TwinError, match="starts with a UTF-8 byte-order mark"):
        read_area_csv(tmp_path / "x.csv")


def test_missing_file_is_a_twin_error(tmp_path):
    with pytest.raises(TwinError, match=r"nope.csv: cannot read the file .*; check the path"):
        read_area_csv(tmp_path / "nope.csv", label="nope.csv")


def test_slot_with_no_generation(tmp_path):
    path = write_rows(tmp_path, ("2024/4/1,0:30,3000,0,1000,1000,0,0,500,0,0,0,0,500",
                                 "2024/4/1,0:30,3000,0,0,0,0,0,0,0,0,0,0,0"))
    with pytest.raises(TwinError, match=r"x.csv: row 4: no generation in any fuel column"):
        data = read_area_csv(path, label="x.csv")
        signals_from_columns(data.columns, label="x.csv", row_numbers=data.rows)


# --------------------------------------------------------------------------- JEPX prices


@pytest.mark.parametrize(("area", "first", "column"), [
    ("kyushu", 11.9, "エリアプライス九州(円/kWh)"),
    ("hokkaido", 11.1, "エリアプライス北海道(円/kWh)"),
    ("okinawa", 11.0, "システムプライス(円/kWh)"),     # not on JEPX: the system price
])
def test_price_csv_picks_the_area_column(area, first, column):
    data = read_price_csv(FIX / "jepx.csv", area)
    assert data.column == column
    assert data.prices[0] == pytest.approx(first)
    assert data.prices == pytest.approx([first + k for k in range(4)])
    assert data.start.isoformat() == "2024-04-01T00:00:00"


def test_price_csv_english_columns_and_hh_mm(tmp_path):
    (tmp_path / "p.csv").write_text("date,time,system,kyushu\n2024-04-01,0:00,9,0.01\n2024-04-01,0:30,9,5\n")
    assert read_price_csv(tmp_path / "p.csv", "kyushu").prices == [0.01, 5.0]


@pytest.mark.parametrize(("text", "message"), [
    ("date,slot,tokyo\n2024-04-01,1,9\n",
     "p.csv: row 1: no price column for area 'kyushu' (area_price_kyushu, kyushu, price_kyushu, "
     "エリアプライス九州) and no system price column; add one"),
    ("date,slot,kyushu\n2024-04-01,49,9\n",
     "p.csv: row 2, column slot: '49' is not a slot; write 1-48 or H:MM"),
    ("date,slot,kyushu\n2024-04-01,1,9\n2024-04-01,3,9\n",
     "p.csv: row 3: slot 2024-04-01 00:30 is missing; the file must have every 30-minute slot in order "
     "(first gap here)"),
    ("price\n1\n", "p.csv: no header row with a date column (年月日, 受渡日, DATE, date) and a slot column "
                   "(時刻コード, TIME, time, slot); use JEPX's spot price CSV"),
    ("date,slot,kyushu\n2024-04-01,1,x\n", 'p.csv: row 2, column kyushu: "x" is not a number; '
                                             'fix the value or remove the row'),
])
def test_bad_price_csv(tmp_path, text, message):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(TwinError) as err:
        read_price_csv(tmp_path / "p.csv", "kyushu", label="p.csv")
    assert str(err.value) == message


# --------------------------------------------------------------------------- areas


def test_area_codes_cover_the_ten_areas_in_order():
    assert [area_code(a) for a in AREA_CODES] == [f"{i:02d}" for i in range(1, 11)]
    assert area_code(" Kyushu ") == "09"
    with pytest.raises(TwinError, match="unknown power area 'kanto'; use one of hokkaido, tohoku"):
        area_code("kanto")


def test_doctests():
    result = doctest.testmod(power)
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------- built-in profiles


def scenario_profiles() -> set[str]:
    names = set()
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        scenario, _ = load_scenario(path)
        names |= {p.profile for p in scenario.power.values() if p.profile}
    return names


def test_every_profile_named_in_the_shipped_scenarios_exists():
    names = scenario_profiles()
    assert "kyushu-spring-solar" in names and "hokkaido-night-wind" in names
    assert names <= set(PROFILES)


def test_every_area_has_a_default_profile_of_its_own_area():
    assert set(power.AREA_DEFAULT_PROFILE) == set(AREA_CODES)
    for area, name in power.AREA_DEFAULT_PROFILE.items():
        assert PROFILES[name].model.area == area


def hours_with_surplus(name: str) -> list[float]:
    _, day = profile_day(name)
    return [i / 2 for i, s in enumerate(day) if s.surplus_mw > 0]


def test_kyushu_curtails_solar_around_midday_only():
    hours = hours_with_surplus("kyushu-spring-solar")
    # the first curtailment (2018-10-13) ran in a 9:00-16:00 window (facts.md)
    assert hours and min(hours) >= 8.5 and max(hours) <= 16.0
    columns, day = profile_day("kyushu-spring-solar")
    assert all(w == 0 for w in columns["wind_curtailed"][:16])       # no surplus at night
    assert max(s.surplus_mw for s in day) > 1000


def test_kyushu_daily_curtailment_fits_the_fy2023_total():
    # FY2023: 1.29 TWh curtailed (facts.md), mostly on sunny March-May days. A sunny spring day
    # should be a fair share of it: 1.29 TWh over 60-200 curtailment days is 6.5-21.5 GWh a day.
    _, day = profile_day("kyushu-spring-solar")
    gwh = sum(s.surplus_mw for s in day) * 0.5 / 1000
    assert 1290 / 200 <= gwh <= 1290 / 60


def test_hokkaido_surplus_is_wind_at_night():
    hours = hours_with_surplus("hokkaido-night-wind")
    assert hours and all(h < 7 or h >= 21 for h in hours)
    columns, _ = profile_day("hokkaido-night-wind")
    # mostly wind; a little early-morning solar is curtailed with it, in proportion
    assert sum(columns["solar_curtailed"]) < 0.05 * sum(columns["wind_curtailed"])


@pytest.mark.parametrize("name", [n for n in PROFILES if n.endswith("-grid")])
def test_grid_profiles_have_no_surplus(name):
    assert hours_with_surplus(name) == []


@pytest.mark.parametrize("name", [n for n in PROFILES if n.endswith(("-solar", "-wind"))])
def test_solar_and_wind_profiles_have_a_surplus(name):
    assert hours_with_surplus(name)


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_balances_supply_and_demand(name):
    columns, day = profile_day(name)
    assert len(day) == 48
    for i in range(48):
        supply = sum(columns[k][i] for k in ("nuclear", "lng", "coal", "oil", "thermal_other", "hydro",
                                             "geothermal", "biomass", "solar", "wind", "pumped", "interconnect"))
        assert supply == pytest.approx(columns["demand"][i])
        assert columns["total"][i] == pytest.approx(supply)
        assert columns["solar_curtailed"][i] >= 0 and columns["wind_curtailed"][i] >= 0
    for s in day:
        assert min(LIFECYCLE_G_PER_KWH.values()) <= s.carbon_g_per_kwh <= max(LIFECYCLE_G_PER_KWH.values())
        assert 0 <= s.renewable_share <= 1
        assert s.price_yen_per_kwh is not None and 0 < s.price_yen_per_kwh < 50


def mean_carbon(name: str) -> float:
    _, day = profile_day(name)
    return sum(s.carbon_g_per_kwh for s in day) / len(day)


def test_carbon_ordering_matches_the_utilities_emission_factors():
    # facts.md: FY2016 Hokkaido 0.640 vs Kyushu 0.483 kg/kWh; Okinawa burns coal and oil with no nuclear.
    assert mean_carbon("hokkaido-night-wind") > mean_carbon("kyushu-spring-solar")
    assert mean_carbon("okinawa-spring-grid") == max(mean_carbon(n) for n in PROFILES)
    # Kyushu is cleanest at midday, when solar curtails, and dirtiest at night
    _, day = profile_day("kyushu-spring-solar")
    assert day[24].carbon_g_per_kwh < day[4].carbon_g_per_kwh


def test_unknown_profile_name():
    with pytest.raises(TwinError, match='unknown profile "x"; choose one of chubu-spring-solar, '):
        profile_day("x")


# --------------------------------------------------------------------------- SignalSeries


def series_of(n: int, period: int = 0) -> SignalSeries:
    slots = [SiteSignal(float(i), 0.5, 100.0 + i, None) for i in range(n)]
    return SignalSeries(site="a", area="kyushu", source="test", slots=slots, period=slots[:period] or None)


def test_at_returns_the_slot_containing_t():
    series = series_of(4)
    assert series.slot_seconds == 1800
    assert series.at(0).surplus_mw == 0
    assert series.at(1799.999).surplus_mw == 0
    assert series.at(1800).surplus_mw == 1
    assert series.at(4 * 1800).surplus_mw == 3          # the end instant belongs to the last slot
    with pytest.raises(TwinError, match="after the end of the data"):
        series.at(4 * 1800 + 1)
    with pytest.raises(TwinError, match="before scenario time 0"):
        series.at(-1)


def test_periodic_series_repeats_daily():
    series = series_of(48 * 2, period=48)
    assert series.at(3 * 86400 + 1800 * 5).surplus_mw == 5
    assert series.periodic and not series_of(4).periodic


def test_a_short_run_of_a_profile_still_repeats_the_whole_day():
    scenario, directory, topology = spring_day()
    signals = load_signals(scenario, directory, topology, duration_s=7200)
    assert len(signals["fuk"].slots) == 4
    assert signals["fuk"].at(86400 + 12 * 3600) == profile_day("kyushu-spring-solar")[1][24]


def test_trailing_empty_cells_are_ignored_but_an_empty_last_value_is_not(tmp_path):
    text = (FIX / "standard.csv").read_bytes().decode("cp932").replace("\r\n", ",,\r\n")
    (tmp_path / "a.csv").write_text(text, encoding="utf-8")
    assert len(read_area_csv(tmp_path / "a.csv")) == 4
    path = write_rows(tmp_path, ("1:00,3000,0,500,500,0,0,500,0,0,1500,200,0,0,0,0,0,0,3000",
                                 "1:00,3000,0,500,500,0,0,500,0,0,1500,200,0,0,0,0,0,0,"))
    with pytest.raises(TwinError, match="row 5, column 合計: an empty cell is not a number"):
        read_area_csv(path)


@given(st.floats(min_value=0, max_value=48 * 1800 - 1e-6))
def test_at_property(t):
    series = series_of(48)
    assert series.at(t) is series.slots[int(t // SLOT_SECONDS)]


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(power.GENERATING_FUELS), st.floats(min_value=0, max_value=1e5),
                       min_size=1))
def test_carbon_is_a_weighted_mean_of_the_fuels_present(gen):
    total = sum(gen.values())
    if total <= 0:
        return
    columns = {k: [0.0] for k in ["demand", "solar_curtailed", "wind_curtailed", *power.GENERATING_FUELS]}
    for fuel, mw in gen.items():
        columns[fuel] = [mw]
    (signal,) = signals_from_columns(columns)
    present = [LIFECYCLE_G_PER_KWH[f] for f, mw in gen.items() if mw > 0]
    assert min(present) - 1e-9 <= signal.carbon_g_per_kwh <= max(present) + 1e-9
    renewable = sum(mw for f, mw in gen.items() if f in power.RENEWABLE_FUELS)
    assert signal.renewable_share == pytest.approx(renewable / total)


# --------------------------------------------------------------------------- load_signals


def spring_day():
    path = REPO / "scenarios" / "spring-day.yaml"
    scenario, topology = load_scenario(path)
    return scenario, path.parent, topology


def test_load_signals_for_the_default_scenario():
    scenario, directory, topology = spring_day()
    signals = load_signals(scenario, directory, topology)
    assert set(signals) == {s.id for s in topology.sites}
    assert all(len(s.slots) == 48 for s in signals.values())
    assert signals["fuk"].source == "profile kyushu-spring-solar"
    assert signals["fuk"].at(12 * 3600).surplus_mw > 0
    assert signals["fuk"].at(2 * 3600).surplus_mw == 0
    assert signals["hkd"].at(2 * 3600).surplus_mw > 0
    assert signals["tyo"].at(12 * 3600).surplus_mw == 0
    # sdj and kij are both in Tohoku with the same profile: the same signals
    assert signals["sdj"].slots == signals["kij"].slots


def test_a_year_of_slots_repeats_the_day():
    scenario, directory, topology = spring_day()
    signals = load_signals(scenario, directory, topology, duration_s=365 * 86400)
    assert len(signals["fuk"].slots) == 17_520
    assert signals["fuk"].at(200 * 86400 + 12 * 3600) == signals["fuk"].at(12 * 3600)


def scenario_with(power_entries: dict, duration: str = "2h") -> Scenario:
    return Scenario.model_validate({
        "name": "t", "topology": "t.yaml", "duration": duration,
        "services": [{"id": "s", "model": "echo", "slo": {"latency": "1s"}, "request_size": "1KiB",
                      "response_size": "1KiB", "service_time": "10ms", "initial_site": "a",
                      "demand": [{"region": "a", "rate": "1/s"}]}],
        "power": power_entries})


@pytest.fixture
def triangle():
    return load_topology(REPO / "topologies" / "triangle.yaml")


def test_csv_site_and_default_profiles(tmp_path, triangle):
    (tmp_path / "power").mkdir()
    shutil.copy(FIX / "kyushu.csv", tmp_path / "power" / "kyushu.csv")
    shutil.copy(FIX / "jepx.csv", tmp_path / "power" / "jepx.csv")
    scenario = scenario_with({"a": {"csv": "power/kyushu.csv", "price_csv": "power/jepx.csv"}})
    signals = load_signals(scenario, tmp_path, triangle)
    a = signals["a"]
    assert [s.carbon_g_per_kwh for s in a.slots] == pytest.approx(EXPECTED_CARBON)
    assert [s.price_yen_per_kwh for s in a.slots] == pytest.approx([11.9, 12.9, 13.9, 14.9])
    assert a.source == "power/kyushu.csv" and not a.periodic
    # b (chugoku) and c (kansai) have no entry: their area's own profile
    assert signals["b"].source == "profile chugoku-spring-solar"
    assert signals["c"].source == "profile kansai-spring-grid"


def test_csv_shorter_than_the_run(tmp_path, triangle):
    shutil.copy(FIX / "standard.csv", tmp_path / "a.csv")
    with pytest.raises(TwinError, match=r"a.csv: 4 slots \(2 h\) but the run needs 6 \(3 h\); give a longer file"):
        load_signals(scenario_with({"a": {"csv": "a.csv"}}, "3h"), tmp_path, triangle)


def test_price_csv_on_another_day(tmp_path, triangle):
    shutil.copy(FIX / "standard.csv", tmp_path / "a.csv")
    (tmp_path / "p.csv").write_text("date,slot,kyushu\n" + "".join(f"2024-04-02,{i},9\n" for i in range(1, 5)))
    with pytest.raises(TwinError, match="p.csv: starts at 2024-04-02 00:00 but the supply-demand file starts at "
                                        "2024-04-01 00:00; give prices for the same days"):
        load_signals(scenario_with({"a": {"csv": "a.csv", "price_csv": "p.csv"}}), tmp_path, triangle)


def test_profile_with_a_price_csv(tmp_path, triangle):
    shutil.copy(FIX / "jepx.csv", tmp_path / "p.csv")
    signals = load_signals(scenario_with({"a": {"profile": "kyushu-spring-solar", "price_csv": "p.csv"}}),
                           tmp_path, triangle)
    assert [s.price_yen_per_kwh for s in signals["a"].slots] == pytest.approx([11.9, 12.9, 13.9, 14.9])
    assert signals["a"].slots[0].carbon_g_per_kwh == profile_day("kyushu-spring-solar")[1][0].carbon_g_per_kwh


def test_unknown_profile_in_load_signals(tmp_path, triangle):
    with pytest.raises(TwinError) as err:
        load_signals(scenario_with({"a": {"profile": "x"}}), tmp_path, triangle)
    assert str(err.value).startswith('power.a.profile: unknown profile "x"; choose one of chubu-spring-solar')


def test_unknown_area_without_an_entry(tmp_path):
    text = (REPO / "topologies" / "triangle.yaml").read_text().replace("area: kansai", "area: kanto")
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(TwinError, match="unknown power area 'kanto'"):
        load_signals(scenario_with({}), tmp_path, load_topology(tmp_path / "t.yaml"))


# --------------------------------------------------------------------------- validate


def test_validate_reports_unknown_profiles_and_missing_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (REPO / "scenarios" / "spring-day.yaml").read_text()
    text = text.replace("../topologies/japan.yaml", str(REPO / "topologies" / "japan.yaml"))
    text = text.replace("fuk: {profile: kyushu-spring-solar}", "fuk: {profile: x}")
    text = text.replace("oka: {profile: okinawa-spring-grid}", "oka: {csv: power/oka.csv}")
    Path("s.yaml").write_text(text)
    lines = text.splitlines()
    fuk_line = next(i for i, line in enumerate(lines, 1) if "fuk: {profile: x}" in line)
    oka_line = next(i for i, line in enumerate(lines, 1) if "oka: {csv" in line)
    problems = [str(p) for p in validate_file("s.yaml")]
    assert problems == [
        f's.yaml:{fuk_line}: power.fuk.profile: unknown profile "x"; choose one of '
        + ", ".join(power.PROFILE_NAMES),
        f"s.yaml:{oka_line}: power.oka.csv: file 'power/oka.csv' not found; give a path relative to the "
        "scenario file",
    ]
    Path("power").mkdir()
    shutil.copy(FIX / "standard.csv", "power/oka.csv")
    assert [str(p) for p in validate_file("s.yaml")][1:] == []


def test_profile_names_have_area_and_driver():
    for name, profile in PROFILES.items():
        assert name.startswith(profile.model.area + "-")
        assert name.rsplit("-", 1)[1] in ("solar", "wind", "grid")
        assert not math.isnan(profile.model.demand_mw)


def _fixture_writer():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_power_fixtures", FIX / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURE_WRITER = _fixture_writer()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-5000, 99_999), min_size=18, max_size=18), min_size=1, max_size=60),
       st.sampled_from(["standard", "kyushu"]), st.sampled_from(["cp932", "utf-8", "utf-8-sig"]))
def test_any_values_round_trip_through_each_dialect(tmp_path_factory, values, dialect, encoding):
    rows = [(f"{i // 2}:{(i % 2) * 30:02d}", v) for i, v in enumerate(values[:48])]
    text = getattr(FIXTURE_WRITER, dialect)(rows=rows)
    path = tmp_path_factory.mktemp("rt") / "x.csv"
    path.write_bytes(text.encode(encoding))
    data = read_area_csv(path)
    keys = list(power.CSV_COLUMNS.values())[2:]
    assert len(data) == len(rows)
    for i, (_, v) in enumerate(rows):
        assert [data.columns[k][i] for k in keys] == [float(x) for x in v]
