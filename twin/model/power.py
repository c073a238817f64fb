"""Per-site power signals: surplus (curtailed) renewables, renewable share, carbon, price.

A site's signal comes from its power area's supply-demand balance in 30-minute
slots from scenario time 0, either from a built-in spring-day profile or from a
real area supply-demand results file (エリア需給実績, see :func:`read_area_csv`).
Both paths produce the same per-fuel columns, and one function
(:func:`signals_from_columns`) turns them into :class:`SiteSignal` values, so a
profile is nothing but a synthetic エリア需給実績 day.

Carbon intensity of a slot is production-based and lifecycle, as "Let's Wait
Awhile" (Wiesner et al., Middleware '21) does for grids without an official
hourly figure (facts.md: none exists for Japanese areas)::

    carbon_g_per_kwh = sum(gen_f x factor_f) / sum(gen_f)

over the fuels generated in the area in that slot (nuclear, thermal by fuel,
hydro, geothermal, biomass, solar and wind actually fed in). Pumped storage,
batteries, interconnector flows and "other" are left out: they move energy made
elsewhere or earlier, whose fuel the file does not say. ``renewable_share`` is
(hydro + geothermal + biomass + solar + wind) / the same sum. ``surplus_mw`` is
the curtailed solar + wind output (出力制御量) of the slot; the surplus carries the
lifecycle intensity of the curtailed mix (``surplus_carbon_g_per_kwh``).

Built-in profiles: one sunny spring weekday (late April) per area, simulated
from a handful of area figures by :func:`simulate_day` (parameters, resulting
figures and every assumption in ``docs/power.md``):

======================  ==========================================================
profile                 what drives it, and where its figures come from
======================  ==========================================================
hokkaido-night-wind     wind surplus 23:00-06:30 on a windy night (the scenario's
                        premise; wind capacity is an estimate including projects
                        under way); no nuclear (Tomari offline)
tohoku-spring-wind      snowmelt hydro, wind and solar; midday curtailment (FY2024
                        outlook 2.5 %, facts.md); Onagawa 2 on line (825 MW)
tokyo-spring-grid       LNG-heavy thermal, no nuclear on line; no surplus
chubu-spring-solar      much solar, no nuclear; a small midday curtailment
hokuriku-spring-grid    snowmelt hydro and coal, surplus exported; no surplus
kansai-spring-grid      five of seven reactors on line (assumption), large pumped
                        storage takes the midday solar; no surplus
chugoku-spring-solar    solar and coal; midday curtailment (outlook 5.8 %)
shikoku-spring-solar    solar and Ikata 3 (890 MW); midday curtailment (4.5 %)
kyushu-spring-solar     four reactors (4.14 GW) and 12.5 GW of solar; curtails
                        09:00-16:00, 14.8 GWh/day (FY2023: 8.3 %, 1.29 TWh; first
                        curtailment 2018-10-13, 9:00-16:00 window; facts.md)
okinawa-spring-grid     islanded coal, LNG and oil; the highest intensity
======================  ==========================================================

Full documentation, sources and the profiles' assumptions: ``docs/power.md``.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Sequence

from twin.errors import TwinError
from twin.model.schema import Scenario, Topology

SLOT_SECONDS = 1800
SLOTS_PER_DAY = 48

# --------------------------------------------------------------------------- carbon factors

# Lifecycle emissions, g CO2-eq per kWh generated. IPCC AR5 WG3 Annex III
# (Schlömer et al. 2014, "Technology-specific cost and performance parameters",
# Table A.III.2), median values: coal (pulverised) 820, gas combined cycle 490,
# biomass (dedicated) 230, solar PV utility 48 (rooftop 41), wind onshore 11
# (offshore 12), hydropower 24, geothermal 38, nuclear 12. Oil is not in that
# table: 733 is the mean of the World Nuclear Association's review
# ("Comparison of Lifecycle Greenhouse Gas Emissions of Various Electricity
# Generation Sources", 2011). "Other thermal" (火力(その他): blast-furnace gas,
# waste, by-product gases) is charged like oil, an assumption. Japan's PV fleet
# is mostly ground-mounted FIT plants, hence the utility-scale figure.
LIFECYCLE_G_PER_KWH: dict[str, float] = {
    "nuclear": 12.0,
    "lng": 490.0,
    "coal": 820.0,
    "oil": 733.0,
    "thermal_other": 733.0,
    "hydro": 24.0,
    "geothermal": 38.0,
    "biomass": 230.0,
    "solar": 48.0,
    "wind": 11.0,
}
RENEWABLE_FUELS = ("hydro", "geothermal", "biomass", "solar", "wind")
GENERATING_FUELS = tuple(LIFECYCLE_G_PER_KWH)

# --------------------------------------------------------------------------- areas

# The ten general transmission and distribution areas in their usual code order
# (OCCTO and the utilities' area supply-demand files): 01 Hokkaido ... 10 Okinawa.
AREA_CODES: dict[str, str] = {
    "hokkaido": "01", "tohoku": "02", "tokyo": "03", "chubu": "04", "hokuriku": "05",
    "kansai": "06", "chugoku": "07", "shikoku": "08", "kyushu": "09", "okinawa": "10",
}
AREA_KANJI: dict[str, str] = {
    "hokkaido": "北海道", "tohoku": "東北", "tokyo": "東京", "chubu": "中部", "hokuriku": "北陸",
    "kansai": "関西", "chugoku": "中国", "shikoku": "四国", "kyushu": "九州", "okinawa": "沖縄",
}


def area_code(area: str) -> str:
    """Two-digit area code of a topology ``area`` name.

    >>> area_code("kyushu"), area_code("Okinawa")
    ('09', '10')

    Raises:
        TwinError: the name is not one of the ten areas.
    """
    code = AREA_CODES.get(area.strip().lower())
    if code is None:
        raise TwinError(f"unknown power area {area!r}; use one of {', '.join(AREA_CODES)}")
    return code


# --------------------------------------------------------------------------- signals


@dataclass(frozen=True)
class SiteSignal:
    """A site's power signal in one 30-minute slot.

    ``surplus_mw``: curtailed solar + wind output of the site's power area.
    ``surplus_carbon_g_per_kwh``: lifecycle intensity of that curtailed mix
    (added after the four fields the policies read; defaults to solar PV).
    """

    surplus_mw: float
    renewable_share: float
    carbon_g_per_kwh: float
    price_yen_per_kwh: float | None
    surplus_carbon_g_per_kwh: float = LIFECYCLE_G_PER_KWH["solar"]


class SignalSeries:
    """One site's signals in 30-minute slots from scenario time 0.

    ``slots`` covers the requested duration. A built-in profile passes its day
    as ``period`` and repeats it, so :meth:`at` answers for any ``t >= 0``; a CSV
    series ends where its file ends. ``columns`` keeps the per-slot area figures
    in MW (demand, solar, ...) for plots; for a periodic series they are one day.
    """

    slot_seconds = SLOT_SECONDS

    def __init__(self, *, site: str, area: str, source: str, slots: list[SiteSignal],
                 period: list[SiteSignal] | None = None, columns: dict[str, list[float]] | None = None):
        if not slots:
            raise TwinError(f"{source}: no 30-minute slots; give at least one")
        self.site = site
        self.area = area
        self.source = source
        self.slots = slots
        self.period = period
        self.columns = columns or {}

    @property
    def periodic(self) -> bool:
        return bool(self.period)

    def __len__(self) -> int:
        return len(self.slots)

    def slot_index(self, t_seconds: float) -> int:
        """Index of the slot containing scenario time ``t_seconds``.

        The end instant of the last slot belongs to the last slot.

        Raises:
            TwinError: ``t`` is negative, or after the end of a non-periodic series.
        """
        if t_seconds < 0 or math.isnan(t_seconds):
            raise TwinError(f"{self.source}: time {t_seconds} s is before scenario time 0; ask for t >= 0")
        index = int(t_seconds // SLOT_SECONDS)
        if index < len(self.slots):
            return index
        if self.period:
            return index
        if t_seconds <= len(self.slots) * SLOT_SECONDS:
            return len(self.slots) - 1
        raise TwinError(f"{self.source}: time {t_seconds:.0f} s is after the end of the data "
                        f"({len(self.slots) * SLOT_SECONDS} s); give a longer file or a shorter duration")

    def at(self, t_seconds: float) -> SiteSignal:
        """The signal of the slot containing scenario time ``t_seconds`` (see :meth:`slot_index`)."""
        index = self.slot_index(t_seconds)
        if index < len(self.slots):
            return self.slots[index]
        assert self.period
        return self.period[index % len(self.period)]


def signals_from_columns(columns: dict[str, list[float]], prices: Sequence[float | None] | None = None,
                         *, label: str = "", first_row: int = 1,
                         row_numbers: Sequence[int] | None = None) -> list[SiteSignal]:
    """Per-slot signals from per-fuel columns in MW (the keys of :data:`CSV_COLUMNS`).

    Raises:
        TwinError: a slot generated nothing at all (carbon intensity undefined).
    """
    n = len(columns["demand"])
    fuels = [(columns[f], LIFECYCLE_G_PER_KWH[f], f in RENEWABLE_FUELS) for f in GENERATING_FUELS]
    solar_curt = columns["solar_curtailed"]
    wind_curt = columns["wind_curtailed"]
    solar_g, wind_g = LIFECYCLE_G_PER_KWH["solar"], LIFECYCLE_G_PER_KWH["wind"]
    out: list[SiteSignal] = []
    for i in range(n):
        total = grams = renewable = 0.0
        for values, factor, is_renewable in fuels:
            mw = values[i]
            if mw > 0:
                total += mw
                grams += mw * factor
                if is_renewable:
                    renewable += mw
        if total <= 0:
            row = row_numbers[i] if row_numbers else first_row + i
            raise TwinError(f"{label}: row {row}: no generation in any fuel column; "
                            f"fix the row (carbon intensity needs a generation mix)")
        sc, wc = max(0.0, solar_curt[i]), max(0.0, wind_curt[i])
        surplus = sc + wc
        surplus_g = (sc * solar_g + wc * wind_g) / surplus if surplus > 0 else solar_g
        out.append(SiteSignal(
            surplus_mw=surplus,
            renewable_share=renewable / total,
            carbon_g_per_kwh=grams / total,
            price_yen_per_kwh=prices[i] if prices is not None else None,
            surplus_carbon_g_per_kwh=surplus_g,
        ))
    return out


# --------------------------------------------------------------------------- built-in profiles

# Spring weekday demand relative to the late-morning level, hour by hour (JST):
# night trough about 0.77 and an evening lighting peak, no heating or cooling.
# Shape from the typical spring load curves utilities publish (assumption).
_DEMAND_SHAPE_HOURLY = (
    0.84, 0.80, 0.78, 0.77, 0.77, 0.79, 0.84, 0.91, 0.97, 1.00, 1.01, 1.01,
    0.96, 1.00, 1.01, 1.00, 0.99, 1.00, 1.04, 1.05, 1.02, 0.98, 0.93, 0.88,
)
_DAY_LENGTH_H = 13.2            # late April at 33-43 deg N (assumption: 13.0-13.6 h)
_SOLAR_PEAK_CF = 0.70           # clear spring noon: cool panels, high sun (assumption)
_PUMP_EFFICIENCY = 0.7          # pumped hydro round trip (typical 0.7-0.8)
_EVENING_SLOTS = range(34, 42)  # 17:00-21:00, when stored midday surplus is released


def _half_hourly(hourly: Sequence[float]) -> list[float]:
    """Values at slot midpoints (00:15, 00:45, ...) by linear interpolation of hourly points."""
    out = []
    for slot in range(SLOTS_PER_DAY):
        h = slot / 2 + 0.25
        i = int(h) % 24
        frac = h - int(h)
        out.append(hourly[i] * (1 - frac) + hourly[(i + 1) % 24] * frac)
    return out


@dataclass(frozen=True)
class AreaModel:
    """Parameters of one area's spring day (MW unless stated); see docs/power.md."""

    area: str
    lon: float                      # representative longitude, for solar noon
    demand_mw: float                # late-morning weekday demand
    nuclear_mw: float
    hydro_mw: float
    geothermal_mw: float
    biomass_mw: float
    thermal_other_mw: float
    solar_capacity_mw: float
    wind_capacity_mw: float
    wind_shape: str                 # "night", "spring" or "calm"
    thermal_min_mw: float           # thermal kept on for frequency control and inertia
    pump_mw: float                  # pumped-storage pumping that can absorb a midday excess
    export_mw: float                # interconnector headroom for exporting an excess
    coal_share: float               # thermal split (flexible thermal only)
    lng_share: float
    price_base_yen: float           # price shape (assumption): base + spread x thermal load
    price_spread_yen: float

    def solar_cf(self) -> list[float]:
        noon_h = 12.0 - (self.lon - 135.0) / 15.0   # JST is solar time at 135 deg E
        rise = noon_h - _DAY_LENGTH_H / 2
        out = []
        for slot in range(SLOTS_PER_DAY):
            h = slot / 2 + 0.25
            x = (h - rise) / _DAY_LENGTH_H
            out.append(_SOLAR_PEAK_CF * math.sin(math.pi * x) ** 1.2 if 0 < x < 1 else 0.0)
        return out

    def wind_cf(self) -> list[float]:
        # night: land breeze and nocturnal jet (Hokkaido's surplus comes at night);
        # spring: strong mean with an afternoon sea-breeze bump; calm: weak.
        mean, swing, peak_h = {"night": (0.45, 0.30, 1.0), "spring": (0.40, 0.10, 15.0),
                               "calm": (0.22, 0.05, 15.0)}[self.wind_shape]
        return [mean + swing * math.cos(2 * math.pi * (slot / 2 + 0.25 - peak_h) / 24)
                for slot in range(SLOTS_PER_DAY)]


def simulate_day(model: AreaModel) -> tuple[dict[str, list[float]], list[float]]:
    """One spring day of an area: per-fuel columns in MW (as in エリア需給実績) and prices.

    Dispatch per slot, in the order of Japan's priority dispatch rules
    (優先給電ルール): nuclear, hydro, geothermal, biomass and a thermal minimum
    run; solar and wind take what demand leaves; an excess is absorbed by
    pumping, then exported over interconnectors, and what is left is curtailed
    (solar and wind in proportion to their output). Thermal covers the rest;
    pumped water comes back in the evening peak.
    """
    demand = [model.demand_mw * d for d in _half_hourly(_DEMAND_SHAPE_HOURLY)]
    solar_av = [model.solar_capacity_mw * cf for cf in model.solar_cf()]
    wind_av = [model.wind_capacity_mw * cf for cf in model.wind_cf()]
    must_run = model.nuclear_mw + model.hydro_mw + model.geothermal_mw + model.biomass_mw + model.thermal_other_mw
    cols: dict[str, list[float]] = {k: [0.0] * SLOTS_PER_DAY for k in CSV_COLUMNS.values() if k not in ("date", "time")}
    thermal = [0.0] * SLOTS_PER_DAY
    stored_mwh = 0.0
    for i in range(SLOTS_PER_DAY):
        vre = solar_av[i] + wind_av[i]
        excess = must_run + model.thermal_min_mw + vre - demand[i]
        pump = export = curtail = 0.0
        if excess > 0:
            pump = min(excess, model.pump_mw)
            export = min(excess - pump, model.export_mw)
            curtail = excess - pump - export
            thermal[i] = model.thermal_min_mw
        else:
            thermal[i] = model.thermal_min_mw - excess
        stored_mwh += pump * 0.5 * _PUMP_EFFICIENCY
        share = curtail / vre if vre > 0 else 0.0
        cols["solar_curtailed"][i] = solar_av[i] * share
        cols["wind_curtailed"][i] = wind_av[i] * share
        cols["solar"][i] = solar_av[i] - cols["solar_curtailed"][i]
        cols["wind"][i] = wind_av[i] - cols["wind_curtailed"][i]
        cols["pumped"][i] = -pump
        cols["interconnect"][i] = -export
    # Release the stored water evenly over the evening peak, never pushing thermal below its minimum.
    per_slot_mw = stored_mwh / (0.5 * len(_EVENING_SLOTS))
    for i in _EVENING_SLOTS:
        release = min(per_slot_mw, max(0.0, thermal[i] - model.thermal_min_mw), model.pump_mw)
        thermal[i] -= release
        cols["pumped"][i] += release
    oil_share = max(0.0, 1.0 - model.coal_share - model.lng_share)
    thermal_max = max(thermal)
    prices = []
    for i in range(SLOTS_PER_DAY):
        cols["demand"][i] = demand[i]
        cols["nuclear"][i] = model.nuclear_mw
        cols["hydro"][i] = model.hydro_mw
        cols["geothermal"][i] = model.geothermal_mw
        cols["biomass"][i] = model.biomass_mw
        cols["thermal_other"][i] = model.thermal_other_mw
        cols["coal"][i] = thermal[i] * model.coal_share
        cols["lng"][i] = thermal[i] * model.lng_share
        cols["oil"][i] = thermal[i] * oil_share
        cols["total"][i] = sum(cols[k][i] for k in ("nuclear", "lng", "coal", "oil", "thermal_other", "hydro",
                                                    "geothermal", "biomass", "solar", "wind", "pumped",
                                                    "interconnect"))
        if cols["solar_curtailed"][i] + cols["wind_curtailed"][i] > 0:
            prices.append(0.01)     # JEPX's floor price, what area prices fall to in curtailment hours
        else:
            load = (thermal[i] - model.thermal_min_mw) / max(1.0, thermal_max - model.thermal_min_mw)
            prices.append(round(model.price_base_yen + model.price_spread_yen * load, 2))
    return cols, prices


@dataclass(frozen=True)
class Profile:
    """A built-in profile: an area model and what it stands for."""

    name: str
    model: AreaModel
    summary: str


def _m(area, lon, demand, nuclear, hydro, geo, bio, other, solar, wind, wind_shape, tmin, pump, export,
       coal, lng, price_base, price_spread) -> AreaModel:
    return AreaModel(area, lon, demand, nuclear, hydro, geo, bio, other, solar, wind, wind_shape, tmin, pump,
                     export, coal, lng, price_base, price_spread)


# One sunny spring weekday (late April) in every area, so that sites compare on the
# same day. Figures are MW. Anchors from facts.md and cited reports; the rest are
# round-number estimates of 2024 installed capacity and spring operation, marked
# "est." in docs/power.md, where every column is explained.
#
# Kyushu anchor: on 2018-10-13, the first curtailment, Kyushu forecast 8.28 GW of
# midday demand against 12.93 GW of supply, with four reactors (4.14 GW) on line
# (Asahi Shimbun, 2018-10-13); solar has roughly doubled since. FY2023
# curtailment was 1.29 TWh (facts.md): 13 GWh on each of ~100 curtailment days;
# this profile's sunny day curtails 14.8 GWh (tests check 6.5-21.5).
#
#  area      lon   demand  nucl  hydro geo bio  oth  solar  wind  shape    tmin  pump  export coal lng  price
_PROFILES = (
    Profile("hokkaido-night-wind",
            _m("hokkaido", 141.3, 3600, 0, 800, 25, 300, 50, 1800, 1900, "night", 1100, 200, 200, 0.60, 0.25, 10, 8),
            "Hokkaido: windy spring night, wind surplus from about 23:00 to 04:00; no nuclear (Tomari offline)"),
    Profile("tohoku-spring-wind",
            _m("tohoku", 140.9, 9500, 825, 1800, 150, 500, 100, 7500, 2800, "spring", 2600, 460, 1400, 0.55, 0.40,
               9, 8),
            "Tohoku (with Niigata): snowmelt hydro, strong spring wind and solar; midday curtailment"),
    Profile("tokyo-spring-grid",
            _m("tokyo", 139.7, 30000, 0, 1500, 0, 1200, 300, 20000, 600, "calm", 8000, 6000, 1500, 0.25, 0.72,
               10, 9),
            "Tokyo: large demand, gas-fired thermal, no nuclear on line; no surplus"),
    Profile("chubu-spring-solar",
            _m("chubu", 136.9, 12500, 0, 1700, 0, 600, 200, 12000, 500, "calm", 3800, 1200, 900, 0.38, 0.60,
               9, 8),
            "Chubu: much solar, no nuclear (Hamaoka offline); small midday curtailment"),
    Profile("hokuriku-spring-grid",
            _m("hokuriku", 136.6, 3000, 0, 1600, 0, 100, 50, 1100, 150, "calm", 900, 0, 1500, 0.85, 0.10, 9, 8),
            "Hokuriku: snowmelt hydro and coal; excess exported; no surplus"),
    Profile("kansai-spring-grid",
            _m("kansai", 135.5, 14000, 4700, 1400, 0, 400, 200, 7500, 200, "calm", 2000, 4400, 1500, 0.30, 0.65,
               9, 8),
            "Kansai: five of seven reactors on line, large pumped storage absorbs the midday solar; no surplus"),
    Profile("chugoku-spring-solar",
            _m("chugoku", 132.5, 5800, 820, 500, 0, 350, 100, 6000, 400, "calm", 1600, 700, 500, 0.70, 0.25,
               9, 8),
            "Chugoku: solar and coal, Shimane 2 on line; midday curtailment (FY2024 outlook 5.8 %)"),
    Profile("shikoku-spring-solar",
            _m("shikoku", 133.5, 2700, 890, 350, 0, 150, 50, 3300, 300, "calm", 700, 620, 700, 0.70, 0.25, 9, 8),
            "Shikoku: solar and Ikata 3; midday curtailment (FY2024 outlook 4.5 %)"),
    Profile("kyushu-spring-solar",
            _m("kyushu", 130.4, 8600, 4140, 600, 180, 400, 100, 12500, 700, "calm", 1500, 2300, 1700, 0.50, 0.45,
               9, 8),
            "Kyushu: solar and four reactors; curtails solar around midday (FY2023 8.3 %, 1.29 TWh; "
            "FY2024 outlook 6.1 %)"),
    Profile("okinawa-spring-grid",
            _m("okinawa", 127.7, 950, 0, 0, 0, 30, 20, 450, 15, "calm", 550, 0, 0, 0.65, 0.25, 14, 6),
            "Okinawa: islanded, coal, LNG and oil; no interconnector; no surplus"),
)
PROFILES: dict[str, Profile] = {p.name: p for p in _PROFILES}
PROFILE_NAMES: tuple[str, ...] = tuple(sorted(PROFILES))
# The profile a site gets when the scenario has no power entry for it: its area's
# own model of the same day, so an unlisted site is compared on equal terms.
AREA_DEFAULT_PROFILE: dict[str, str] = {p.model.area: p.name for p in _PROFILES}

_DAY_CACHE: dict[str, tuple[dict[str, list[float]], list[SiteSignal]]] = {}


def profile_day(name: str) -> tuple[dict[str, list[float]], list[SiteSignal]]:
    """The 48 slots of a built-in profile: per-fuel columns (MW) and signals (cached).

    Raises:
        TwinError: unknown profile name.
    """
    if name not in PROFILES:
        raise TwinError(f'unknown profile "{name}"; choose one of {", ".join(PROFILE_NAMES)}')
    if name not in _DAY_CACHE:
        columns, prices = simulate_day(PROFILES[name].model)
        _DAY_CACHE[name] = columns, signals_from_columns(columns, prices, label=f"profile {name}")
    return _DAY_CACHE[name]


# --------------------------------------------------------------------------- CSV import

# エリア需給実績 header names (after NFKC normalisation, which turns the full-width
# parentheses of Kyushu's files into ASCII ones) to column keys.
CSV_COLUMNS: dict[str, str] = {
    "DATE": "date", "TIME": "time", "エリア需要": "demand", "原子力": "nuclear",
    "火力(LNG)": "lng", "火力(石炭)": "coal", "火力(石油)": "oil", "火力(その他)": "thermal_other",
    "水力": "hydro", "地熱": "geothermal", "バイオマス": "biomass",
    "太陽光発電実績": "solar", "太陽光出力制御量": "solar_curtailed",
    "風力発電実績": "wind", "風力出力制御量": "wind_curtailed",
    "揚水": "pumped", "蓄電池": "battery", "連系線": "interconnect", "その他": "other", "合計": "total",
}
# Hokkaido, Tohoku and Chubu add these two (22 columns).
CSV_OPTIONAL_COLUMNS: dict[str, str] = {"火力出力制御量": "thermal_curtailed", "バイオマス出力制御量": "biomass_curtailed"}

_DATE_RES = (re.compile(r"^(\d{4})[/-](\d{1,2})[/-](\d{1,2})$"), re.compile(r"^(\d{4})(\d{2})(\d{2})$"))
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::00)?(?:\s*[-~〜]\s*\d{1,2}:\d{2}(?::00)?)?$")


@dataclass
class AreaData:
    """An area supply-demand file: per-slot columns in MW from ``start`` on."""

    label: str
    start: datetime
    columns: dict[str, list[float]]
    rows: list[int] = field(default_factory=list)   # file row of each slot, for messages

    def __len__(self) -> int:
        return len(self.columns["demand"])


def _decode(raw: bytes, label: str) -> str:
    """UTF-8 (with or without BOM) or Shift-JIS/CP932 text."""
    if not raw.strip():
        raise TwinError(f"{label}: the file is empty; export the data again or point to the right file")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    else:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        try:
            return raw.decode("cp932")
        except UnicodeDecodeError as err:
            raise TwinError(f"{label}: byte {err.start} is neither UTF-8 nor Shift-JIS (CP932); "
                            f"save the file as CP932 or UTF-8") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TwinError(f"{label}: byte {err.start + 3} is not UTF-8 although the file starts with a UTF-8 "
                        f"byte-order mark; save it again as UTF-8") from None


def _norm(cell: str) -> str:
    return unicodedata.normalize("NFKC", cell).strip()


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """(file row, normalised cells) of every non-blank CSV record."""
    reader = csv.reader(io.StringIO(text))
    out = []
    try:
        for cells in reader:
            cells = [_norm(c) for c in cells]
            if any(cells):
                out.append((reader.line_num, cells))
    except csv.Error as err:
        raise ValueError(f"row {reader.line_num}: {err}") from None
    return out


def _strip_trailing(cells: list[str], keep: int) -> list[str]:
    """Drop empty cells after the first ``keep`` (trailing commas some exports add)."""
    end = len(cells)
    while end > keep and cells[end - 1] == "":
        end -= 1
    return cells[:end]


def _parse_date(text: str) -> date | None:
    for regex in _DATE_RES:
        m = regex.match(text)
        if m:
            try:
                return date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:
                return None
    return None


def _parse_time(text: str) -> tuple[int, int] | None:
    m = _TIME_RE.match(text)
    if not m:
        return None
    hour, minute = int(m[1]), int(m[2])
    if hour > 23 or minute not in (0, 30):
        return None
    return hour, minute


def _number(text: str, label: str, row: int, column: str) -> float:
    cleaned = text.replace(",", "")
    try:
        value = float(cleaned)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        shown = f'"{text}"' if text else "an empty cell"
        raise TwinError(f"{label}: row {row}, column {column}: {shown} is not a number; "
                        f"fix the value or remove the row")
    return value


def _check_consecutive(label: str, times: list[datetime], rows: list[int]) -> None:
    step = timedelta(seconds=SLOT_SECONDS)
    for i in range(1, len(times)):
        expected = times[i - 1] + step
        if times[i] != expected:
            what = ("is missing" if times[i] > expected else
                    f"is followed by {times[i]:%Y-%m-%d %H:%M} (repeated or out of order)")
            raise TwinError(f"{label}: row {rows[i]}: slot {expected:%Y-%m-%d %H:%M} {what}; "
                            f"the file must have every 30-minute slot in order (first gap here)")


def read_area_csv(path: str | Path, *, label: str | None = None) -> AreaData:
    """Read an area supply-demand results file (エリア需給実績), any of its dialects.

    Accepted: Shift-JIS/CP932 or UTF-8 (with or without BOM); an optional unit row
    before the header (``単位[MW平均]``; ``万kW`` is scaled to MW); the 20-column
    header, or 22 with ``火力出力制御量`` and ``バイオマス出力制御量`` (Hokkaido,
    Tohoku, Chubu), columns in any order; fields quoted or not; full-width
    parentheses; dates ``YYYY/M/D``, ``YYYY-MM-DD`` or ``YYYYMMDD`` (Kyushu); times
    ``H:MM`` (slot start). Rows must be consecutive 30-minute slots.

    Raises:
        TwinError: with the file, row and column and the fix, for an empty or
            undecodable file, a missing, unknown or repeated column, a short or long
            row, a bad date, time or number, or a gap in the slots.
    """
    path = Path(path)
    label = label or str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TwinError(f"{label}: cannot read the file ({err.strerror}); check the path") from None
    try:
        rows = _rows(_decode(raw, label))
    except ValueError as err:
        raise TwinError(f"{label}: {err}; fix the quoting of that row") from None
    header_at = next((k for k, (_, cells) in enumerate(rows) if cells[0].upper() == "DATE"), None)
    if header_at is None:
        first = ",".join(rows[0][1])[:60] if rows else ""
        raise TwinError(f"{label}: no header row starting with DATE,TIME (first row: {first!r}); "
                        f"use an area supply-demand results (エリア需給実績) CSV as published")
    scale = 1.0
    for _, cells in rows[:header_at]:
        if any("万kW" in c for c in cells):
            scale = 10.0
    header_row, header = rows[header_at]
    header = _strip_trailing(header, 0)
    known = {**CSV_COLUMNS, **CSV_OPTIONAL_COLUMNS}
    index: dict[str, int] = {}
    for col, name in enumerate(header):
        key = known.get(name if name.upper() not in ("DATE", "TIME") else name.upper())
        if key is None:
            raise TwinError(f"{label}: row {header_row}, column {col + 1}: unknown column {name!r}; "
                            f"the header must be {','.join(CSV_COLUMNS)} (plus optionally "
                            f"{','.join(CSV_OPTIONAL_COLUMNS)})")
        if key in index:
            raise TwinError(f"{label}: row {header_row}: column {name!r} appears twice; keep one")
        index[key] = col
    missing = [name for name, key in CSV_COLUMNS.items() if key not in index]
    if missing:
        raise TwinError(f"{label}: row {header_row}: missing column(s) {', '.join(missing)}; "
                        f"export the full area supply-demand results file")
    names = {key: name for name, key in known.items()}
    numeric = [k for k in index if k not in ("date", "time")]
    columns: dict[str, list[float]] = {k: [] for k in list(CSV_COLUMNS.values())[2:]}
    for k in CSV_OPTIONAL_COLUMNS.values():
        columns[k] = []
    times: list[datetime] = []
    data_rows: list[int] = []
    width = len(header)
    for row, cells in rows[header_at + 1:]:
        cells = _strip_trailing(cells, width)
        if len(cells) != width:
            what = "fewer" if len(cells) < width else "more"
            raise TwinError(f"{label}: row {row}: {len(cells)} fields, {what} than the header's {width} "
                            f"(truncated or malformed row); complete the row or remove it")
        day = _parse_date(cells[index["date"]])
        if day is None:
            raise TwinError(f"{label}: row {row}, column DATE: {cells[index['date']]!r} is not a date; "
                            f"write YYYY/MM/DD or YYYYMMDD")
        hm = _parse_time(cells[index["time"]])
        if hm is None:
            raise TwinError(f"{label}: row {row}, column TIME: {cells[index['time']]!r} is not a slot start; "
                            f"write H:MM with minutes 00 or 30")
        times.append(datetime(day.year, day.month, day.day, hm[0], hm[1]))
        data_rows.append(row)
        for key in numeric:
            columns[key].append(_number(cells[index[key]], label, row, names[key]) * scale)
        for key in CSV_OPTIONAL_COLUMNS.values():
            if key not in index:
                columns[key].append(0.0)
    if not times:
        raise TwinError(f"{label}: the header has no data rows after it; export a file with data")
    _check_consecutive(label, times, data_rows)
    return AreaData(label=label, start=times[0], columns=columns, rows=data_rows)


# JEPX spot price files: a date column, a slot column (時刻コード 1..48 or H:MM)
# and price columns in 円/kWh.
_PRICE_DATE_COLUMNS = ("年月日", "受渡日", "DATE", "date")
_PRICE_SLOT_COLUMNS = ("時刻コード", "TIME", "time", "slot")
_SYSTEM_PRICE_COLUMNS = ("システムプライス", "system", "system_price")


def _price_key(name: str) -> str:
    """Header name without its unit suffix: 'エリアプライス九州(円/kWh)' -> 'エリアプライス九州'."""
    return re.sub(r"\((円|yen)/kWh\)$", "", name, flags=re.IGNORECASE).strip()


@dataclass
class PriceData:
    label: str
    start: datetime
    prices: list[float]
    column: str


def read_price_csv(path: str | Path, area: str, *, label: str | None = None) -> PriceData:
    """Read a JEPX spot price CSV and pick the price column for ``area``.

    Accepted columns (header names compared without a ``(円/kWh)`` suffix): a
    date (年月日, 受渡日 or DATE), a slot (時刻コード 1-48, or TIME as H:MM), and
    the area price ``エリアプライス<area in kanji>`` (e.g. エリアプライス九州) or
    ``<area>`` / ``price_<area>`` in English; when the file has no column for the
    area (always so for Okinawa, which is not on JEPX) the system price
    (システムプライス or ``system``) is used. Rows must be consecutive slots.

    Raises:
        TwinError: with the file, row and column and the fix.
    """
    path = Path(path)
    label = label or str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TwinError(f"{label}: cannot read the file ({err.strerror}); check the path") from None
    try:
        rows = _rows(_decode(raw, label))
    except ValueError as err:
        raise TwinError(f"{label}: {err}; fix the quoting of that row") from None
    area = area.strip().lower()
    wanted = {f"エリアプライス{AREA_KANJI.get(area, '?')}", area, f"price_{area}", f"area_price_{area}"}
    header_at = None
    for k, (_, cells) in enumerate(rows):
        keys = [_price_key(c) for c in cells]
        if any(c in _PRICE_DATE_COLUMNS for c in keys) and any(c in _PRICE_SLOT_COLUMNS for c in keys):
            header_at = k
            break
    if header_at is None:
        raise TwinError(f"{label}: no header row with a date column ({', '.join(_PRICE_DATE_COLUMNS)}) and a "
                        f"slot column ({', '.join(_PRICE_SLOT_COLUMNS)}); use JEPX's spot price CSV")
    header_row, header = rows[header_at]
    header = _strip_trailing(header, 0)
    keys = [_price_key(c) for c in header]
    date_col = next(i for i, c in enumerate(keys) if c in _PRICE_DATE_COLUMNS)
    slot_col = next(i for i, c in enumerate(keys) if c in _PRICE_SLOT_COLUMNS)
    price_col = next((i for i, c in enumerate(keys) if c in wanted), None)
    if price_col is None:
        price_col = next((i for i, c in enumerate(keys) if c in _SYSTEM_PRICE_COLUMNS), None)
    if price_col is None:
        raise TwinError(f"{label}: row {header_row}: no price column for area {area!r} "
                        f"({', '.join(sorted(wanted))}) and no system price column; add one")
    times: list[datetime] = []
    prices: list[float] = []
    data_rows: list[int] = []
    need = max(date_col, slot_col, price_col) + 1
    for row, cells in rows[header_at + 1:]:
        if len(cells) < need:
            raise TwinError(f"{label}: row {row}: {len(cells)} fields, the price is in field {price_col + 1} "
                            f"(truncated row); complete the row or remove it")
        day = _parse_date(cells[date_col])
        if day is None:
            raise TwinError(f"{label}: row {row}, column {header[date_col]}: {cells[date_col]!r} is not a date; "
                            f"write YYYY/MM/DD or YYYYMMDD")
        slot_text = cells[slot_col]
        if slot_text.isdigit() and 1 <= int(slot_text) <= SLOTS_PER_DAY:
            minutes = (int(slot_text) - 1) * 30
            hm = (minutes // 60, minutes % 60)
        else:
            hm = _parse_time(slot_text)
        if hm is None:
            raise TwinError(f"{label}: row {row}, column {header[slot_col]}: {slot_text!r} is not a slot; "
                            f"write 1-48 or H:MM")
        times.append(datetime(day.year, day.month, day.day, *hm))
        prices.append(_number(cells[price_col], label, row, header[price_col]))
        data_rows.append(row)
    if not times:
        raise TwinError(f"{label}: the header has no data rows after it; export a file with data")
    _check_consecutive(label, times, data_rows)
    return PriceData(label=label, start=times[0], prices=prices, column=header[price_col])


# --------------------------------------------------------------------------- loading a scenario's signals


def _slots_needed(duration_s: float) -> int:
    return max(1, math.ceil(duration_s / SLOT_SECONDS - 1e-9))


def load_signals(scenario: Scenario, scenario_dir: Path, topology: Topology,
                 duration_s: float | None = None) -> dict[str, SignalSeries]:
    """The power signals of every site of ``topology`` for ``duration_s`` (default: the scenario's).

    A site's ``scenario.power`` entry names a built-in profile or a CSV (relative
    to ``scenario_dir``), optionally with a JEPX ``price_csv``; a site without an
    entry gets its area's built-in profile. Built-in profiles repeat daily.

    Raises:
        TwinError: unknown profile or area, unreadable or invalid CSV, or data
            shorter than the duration.
    """
    duration = scenario.duration if duration_s is None else duration_s
    n = _slots_needed(duration)
    scenario_dir = Path(scenario_dir)
    area_cache: dict[str, AreaData] = {}
    out: dict[str, SignalSeries] = {}
    for site in topology.sites:
        entry = scenario.power.get(site.id)
        if entry is None or entry.profile is not None:
            if entry is None:
                code = area_code(site.area)
                name = next(a for a, c in AREA_CODES.items() if c == code)
                profile = AREA_DEFAULT_PROFILE[name]
            else:
                profile = entry.profile
                if profile not in PROFILES:
                    raise TwinError(f'power.{site.id}.profile: unknown profile "{profile}"; '
                                    f'choose one of {", ".join(PROFILE_NAMES)}')
            columns, day = profile_day(profile)
            if entry is not None and entry.price_csv:
                prices = _prices_for(entry.price_csv, scenario_dir, site.area, n, None)
                day_slots = [SiteSignal(s.surplus_mw, s.renewable_share, s.carbon_g_per_kwh, prices[i],
                                        s.surplus_carbon_g_per_kwh)
                             for i, s in enumerate(day[i % SLOTS_PER_DAY] for i in range(n))]
                out[site.id] = SignalSeries(site=site.id, area=site.area, source=f"profile {profile}",
                                            slots=day_slots, columns=columns)
            else:
                slots = [day[i % SLOTS_PER_DAY] for i in range(n)]
                out[site.id] = SignalSeries(site=site.id, area=site.area, source=f"profile {profile}",
                                            slots=slots, period=day, columns=columns)
            continue
        csv_label = entry.csv
        if csv_label not in area_cache:
            area_cache[csv_label] = read_area_csv(scenario_dir / csv_label, label=csv_label)
        data = area_cache[csv_label]
        if len(data) < n:
            raise TwinError(f"{csv_label}: {len(data)} slots ({len(data) / 2:g} h) but the run needs {n} "
                            f"({duration / 3600:g} h); give a longer file or shorten the duration")
        prices = (_prices_for(entry.price_csv, scenario_dir, site.area, n, data.start)
                  if entry.price_csv else None)
        cols = {k: v[:n] for k, v in data.columns.items()}
        slots = signals_from_columns(cols, prices, label=csv_label, row_numbers=data.rows)
        out[site.id] = SignalSeries(site=site.id, area=site.area, source=csv_label, slots=slots, columns=cols)
    return out


def _prices_for(price_csv: str, scenario_dir: Path, area: str, n: int, start: datetime | None) -> list[float]:
    data = read_price_csv(scenario_dir / price_csv, area, label=price_csv)
    if start is not None and data.start != start:
        raise TwinError(f"{price_csv}: starts at {data.start:%Y-%m-%d %H:%M} but the supply-demand file starts "
                        f"at {start:%Y-%m-%d %H:%M}; give prices for the same days")
    if len(data.prices) < n:
        raise TwinError(f"{price_csv}: {len(data.prices)} slots but the run needs {n}; "
                        f"give a longer file or shorten the duration")
    return data.prices[:n]
