"""Energy model: server power, utilisation, surplus-first attribution and whole-run
accounting, with hand-checked arithmetic and properties."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twin.errors import TwinError
from twin.model import energy
from twin.model.energy import (
    EnergyTotals,
    account_interval,
    account_placements,
    account_services,
    service_power_kw,
    utilisation,
)
from twin.model.power import SignalSeries, SiteSignal, load_signals
from twin.model.schema import Scenario, Site, Topology
from twin.model.validate import load_scenario

REPO = Path(__file__).resolve().parents[2]


def make_site(site_id="a", area="kyushu", pue=1.4, idle="100W", peak="250W") -> Site:
    return Site.model_validate({"id": site_id, "name": site_id, "area": area, "lat": 33, "lon": 130, "pue": pue,
                                "compute": {"cpus": 4, "memory": "4GiB"}, "server_idle": idle,
                                "server_peak": peak})


def test_doctests():
    result = doctest.testmod(energy)
    assert result.failed == 0 and result.attempted > 0


def test_service_power_by_hand():
    # 0.5 core x (100 W + 150 W x 0.2) = 65 W, x PUE 1.4 = 91 W
    assert service_power_kw(make_site(), 0.5, 0.2) == pytest.approx(0.091)
    assert service_power_kw(make_site(), 1, 0.0) == pytest.approx(0.14)     # idle still draws
    assert service_power_kw(make_site(), 1, 1.0) == pytest.approx(0.35)


@pytest.mark.parametrize(("cpus", "u"), [(-1, 0.5), (1, -0.1), (1, 1.1)])
def test_service_power_rejects_out_of_range(cpus, u):
    with pytest.raises(TwinError, match="out of range"):
        service_power_kw(make_site(), cpus, u)


def test_utilisation_of_the_default_scenario_services():
    scenario, _ = load_scenario(REPO / "scenarios" / "spring-day.yaml")
    by_id = {s.id: s for s in scenario.services}
    # drive-assist: (50 + 20)/s x 2 ms / 0.5 core = 0.28
    assert utilisation(by_id["drive-assist"]) == pytest.approx(0.14)  # 70/s x 1 ms / 0.5 core
    # farm-images: (1 + 1 + 1 + 1 + 0.5)/s x 150 ms / 1 core = 0.675
    assert utilisation(by_id["farm-images"]) == pytest.approx(0.63)  # 4.5/s x 70 ms / 0.5 core


def test_utilisation_is_capped_at_one():
    svc = Scenario.model_validate(scenario_dict("1h", rate="100/s")).services[0]
    assert utilisation(svc) == 1.0


def test_surplus_is_used_first_up_to_the_areas_surplus():
    # 2 MW for 30 min = 1000 kWh; the area has 1 MW of surplus = 500 kWh in that time.
    signal = SiteSignal(surplus_mw=1.0, renewable_share=0.3, carbon_g_per_kwh=400.0, price_yen_per_kwh=None,
                        surplus_carbon_g_per_kwh=48.0)
    totals = account_interval(make_site(), 2000.0, 1800, signal)
    assert totals.kwh == pytest.approx(1000.0)
    assert totals.surplus_kwh == pytest.approx(500.0)
    # 500 kWh x 48 g + 500 kWh x 400 g = 24 kg + 200 kg
    assert totals.kg_co2 == pytest.approx(224.0)
    assert totals.surplus_share == pytest.approx(0.5)


def test_small_dc_takes_all_its_energy_from_a_large_surplus():
    signal = SiteSignal(3500.0, 0.5, 120.0, 0.01, 47.0)
    totals = account_interval(make_site(), 0.5, 3600, signal)
    assert totals == EnergyTotals(kwh=0.5, surplus_kwh=0.5, kg_co2=pytest.approx(0.5 * 47 / 1000))


def test_no_surplus_means_grid_mix():
    totals = account_interval(make_site(), 1.0, 1800, SiteSignal(0.0, 0.2, 500.0, None))
    assert totals.kwh == 0.5 and totals.surplus_kwh == 0 and totals.kg_co2 == pytest.approx(0.25)


def test_negative_inputs_are_errors():
    with pytest.raises(TwinError, match="must be >= 0"):
        account_interval(make_site(), -1.0, 10, SiteSignal(0.0, 0.2, 500.0, None))


def test_totals_add():
    a = EnergyTotals(1.0, 0.5, 0.2)
    b = EnergyTotals(2.0, 0.0, 1.0)
    assert a + b == EnergyTotals(3.0, 0.5, pytest.approx(1.2))
    assert sum([a, b], EnergyTotals()) == a + b
    assert EnergyTotals().surplus_share == 0.0


signals_st = st.builds(SiteSignal, st.floats(0, 5000), st.floats(0, 1), st.floats(11, 820), st.none(),
                       st.floats(11, 48))


@given(st.floats(0, 1e4), st.floats(0, 1800), st.floats(0, 1800), signals_st)
def test_interval_accounting_is_additive_in_time(power_kw, s1, s2, signal):
    whole = account_interval(make_site(), power_kw, s1 + s2, signal)
    parts = account_interval(make_site(), power_kw, s1, signal) + account_interval(make_site(), power_kw, s2,
                                                                                   signal)
    assert whole.kwh == pytest.approx(parts.kwh, abs=1e-9)
    assert whole.surplus_kwh == pytest.approx(parts.surplus_kwh, abs=1e-9)
    assert whole.kg_co2 == pytest.approx(parts.kg_co2, abs=1e-9)


@given(st.floats(0, 1e4), st.floats(0, 1800), signals_st)
def test_interval_bounds(power_kw, seconds, signal):
    t = account_interval(make_site(), power_kw, seconds, signal)
    assert 0 <= t.surplus_kwh <= t.kwh + 1e-12
    low = min(signal.carbon_g_per_kwh, signal.surplus_carbon_g_per_kwh) * t.kwh / 1000
    high = max(signal.carbon_g_per_kwh, signal.surplus_carbon_g_per_kwh) * t.kwh / 1000
    assert low - 1e-9 <= t.kg_co2 <= high + 1e-9


# --------------------------------------------------------------------------- whole runs


def scenario_dict(duration: str, rate: str = "10/s") -> dict:
    return {"name": "t", "topology": "t.yaml", "duration": duration,
            "services": [{"id": "s", "model": "echo", "slo": {"latency": "1s"}, "request_size": "1KiB",
                          "response_size": "1KiB", "service_time": "50ms", "cpus": 1, "initial_site": "a",
                          "demand": [{"region": "a", "rate": rate}]},
                         {"id": "t", "model": "echo", "slo": {"latency": "1s"}, "request_size": "1KiB",
                          "response_size": "1KiB", "service_time": "50ms", "cpus": 2, "initial_site": "a",
                          "demand": [{"region": "a", "rate": rate}]}]}


def topology(*areas: str) -> Topology:
    ids = "abc"
    return Topology.model_validate({
        "name": "t", "packet_network": {"router_delay": "50us", "capacity": "1Gbit"},
        "sites": [{"id": ids[i], "name": ids[i], "area": area, "lat": 33, "lon": 130, "pue": 1.5,
                   "server_idle": "100W", "server_peak": "300W", "compute": {"cpus": 4, "memory": "4GiB"}}
                  for i, area in enumerate(areas)],
        "spans": [{"ends": ["a", "b"], "length": "10km", "wavelengths": 1, "rate": "1Gbit"}]})


def constant(site: str, signal: SiteSignal, n: int = 4) -> SignalSeries:
    return SignalSeries(site=site, area="x", source="test", slots=[signal] * n)


def test_run_accounting_by_hand():
    # s: 1 core at u = 10/s x 50 ms = 0.5 -> (100 + 200 x 0.5) W x 1.5 = 300 W
    # t: 2 cores at u = 0.25 -> 2 x (100 + 50) W x 1.5 = 450 W
    scenario = Scenario.model_validate(scenario_dict("1h"))
    topo = topology("kyushu", "tokyo")
    signals = {"a": constant("a", SiteSignal(0.0, 0.5, 100.0, None)),
               "b": constant("b", SiteSignal(0.0, 0.1, 500.0, None))}
    placements = [{"s": "a", "t": "b"}, {"s": "b", "t": None}]
    per_service = account_services(placements, scenario, topo, signals)
    # s: 0.15 kWh at 100 g + 0.15 kWh at 500 g = 0.015 + 0.075 kg; t: 0.225 kWh at 500 g = 0.1125 kg
    assert per_service["s"].kwh == pytest.approx(0.3)
    assert per_service["s"].kg_co2 == pytest.approx(0.09)
    assert per_service["t"].kwh == pytest.approx(0.225)
    assert per_service["t"].kg_co2 == pytest.approx(0.1125)
    total = account_placements(placements, scenario, topo, signals)
    assert total.kwh == pytest.approx(0.525) and total.kg_co2 == pytest.approx(0.2025)


def test_last_slot_is_cut_at_the_duration():
    scenario = Scenario.model_validate(scenario_dict("45min"))
    topo = topology("kyushu", "tokyo")
    signals = {s: constant(s, SiteSignal(0.0, 0.5, 100.0, None)) for s in "ab"}
    total = account_placements([{"s": "a"}, {"s": "a"}], scenario, topo, signals)
    assert total.kwh == pytest.approx(0.3 * 0.75)      # 300 W for 45 min


def test_sites_in_one_area_share_its_surplus():
    # a and b both in kyushu; 0.0003 MW = 300 W of surplus; s at a draws 300 W, t at b 450 W.
    scenario = Scenario.model_validate(scenario_dict("30min"))
    topo = topology("kyushu", "kyushu")
    signal = SiteSignal(0.0003, 0.5, 400.0, None, 40.0)
    signals = {s: constant(s, signal) for s in "ab"}
    per_service = account_services([{"s": "a", "t": "b"}], scenario, topo, signals)
    assert per_service["s"].surplus_kwh == pytest.approx(0.15)     # a takes the whole surplus first
    assert per_service["t"].surplus_kwh == pytest.approx(0.0)
    # the same two services on two areas each get their own surplus
    apart = account_services([{"s": "a", "t": "b"}], scenario, topology("kyushu", "tohoku"), signals)
    assert apart["t"].surplus_kwh == pytest.approx(0.15)


def test_services_on_one_site_split_the_capped_surplus_by_power():
    scenario = Scenario.model_validate(scenario_dict("30min"))
    signal = SiteSignal(0.0003, 0.5, 400.0, None, 40.0)       # 0.15 kWh of surplus in the slot
    per_service = account_services([{"s": "a", "t": "a"}], scenario, topology("kyushu", "tokyo"),
                                   {s: constant(s, signal) for s in "ab"})
    # 750 W in total; s draws 300/750 of it
    assert per_service["s"].surplus_kwh == pytest.approx(0.15 * 300 / 750)
    assert per_service["t"].surplus_kwh == pytest.approx(0.15 * 450 / 750)


def test_two_instances_during_a_migration_both_draw_power():
    scenario = Scenario.model_validate(scenario_dict("30min"))
    signals = {s: constant(s, SiteSignal(0.0, 0.5, 100.0, None)) for s in "ab"}
    total = account_placements([{"s": ["a", "b"]}], scenario, topology("kyushu", "tokyo"), signals)
    assert total.kwh == pytest.approx(0.3)


@pytest.mark.parametrize(("placements", "message"), [
    ([{"s": "a"}] * 3, "3 placement slots for a 1 h scenario (2 slots); pass one placement per 30-minute slot"),
    ([{"x": "a"}], "slot 0: unknown service 'x'; use one of s, t"),
    ([{"s": "z"}], "slot 0: service s placed at unknown site 'z'; use one of a, b"),
])
def test_bad_placements(placements, message):
    scenario = Scenario.model_validate(scenario_dict("1h"))
    signals = {s: constant(s, SiteSignal(0.0, 0.5, 100.0, None)) for s in "ab"}
    with pytest.raises(TwinError) as err:
        account_placements(placements, scenario, topology("kyushu", "tokyo"), signals)
    assert str(err.value) == message


def test_following_the_surplus_beats_static_on_the_default_scenario():
    path = REPO / "scenarios" / "spring-day.yaml"
    scenario, topo = load_scenario(path)
    signals = load_signals(scenario, path.parent, topo)
    static = [{"drive-assist": "fuk", "farm-images": "tyo"}] * 48
    # farm-images follows whichever site has the largest surplus, else stays put
    follow = []
    for slot in range(48):
        best = max(signals, key=lambda s: signals[s].slots[slot].surplus_mw)
        follow.append({"drive-assist": "fuk",
                       "farm-images": best if signals[best].slots[slot].surplus_mw > 0 else "tyo"})
    base = account_services(static, scenario, topo, signals)
    moved = account_services(follow, scenario, topo, signals)
    assert base["farm-images"].surplus_kwh == 0
    assert moved["farm-images"].surplus_kwh > 0.3 * moved["farm-images"].kwh
    assert moved["farm-images"].kg_co2 < base["farm-images"].kg_co2
    # drive-assist stays at fuk in both, so its figures are identical
    assert moved["drive-assist"] == base["drive-assist"]
