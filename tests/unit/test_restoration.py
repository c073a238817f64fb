"""Restoration after a fibre cut: planning (pure RWA) and the controller state with fake switches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from controllers import flowplan as fp
from controllers.flowplan import desired_flows
from controllers.state import Conflict, ControllerState, NotFound, plan_restoration
from test_flowplan import FakeSwitches, assert_switches_match, port
from twin.model.optics import OpticalNetwork
from twin.model.portmap import build_port_map
from twin.model.rwa import Occupancy, assign
from twin.model.validate import load_topology

RING4 = Path(__file__).resolve().parents[1] / "fixtures" / "topologies" / "ring4.yaml"


@pytest.fixture
def state():
    topology = load_topology(RING4)
    portmap = build_port_map(topology)
    st = ControllerState(OpticalNetwork(topology), portmap, FakeSwitches(portmap.switches))
    for site in st.sites:
        st.switch_up(site)
    st.pusher.log.clear()
    return st


def exact_occupancy(state):
    expected = {}
    for lp in state.lightpaths:
        for span in lp.route.spans:
            assert (span, lp.wavelength) not in expected, "wavelength used twice on a span"
            assert span not in state.network.down, f"{lp.id} still crosses cut span {span}"
            expected[(span, lp.wavelength)] = lp.id
    return expected


def test_plan_reroutes_around_the_cut_and_reuses_freed_wavelengths():
    network = OpticalNetwork(load_topology(RING4))
    occ = Occupancy(network)
    direct = assign(occ, "ra", "rb", lightpath_id="x")                       # ra-rb, w0
    other = assign(occ, "rd", "ra", lightpath_id="y")                        # rd-ra, w0
    untouched = assign(occ, "rc", "rd", lightpath_id="z")                    # rc-rd, w0
    network.set_span_down("ra", "rb")
    plan = plan_restoration(occ, [direct, other, untouched], ("rb", "ra"))
    [(old, new)] = plan.restored
    assert old is direct and new.id == "x" and new.route.sites == ("ra", "rd", "rc", "rb")
    assert new.wavelength == 1                                               # w0 taken on rd-ra and rc-rd
    assert (new.src, new.dst) == ("ra", "rb") and plan.blocked == []
    assert [lp.id for lp in plan.lightpaths] == ["x", "y", "z"]              # creation order kept
    assert plan.transit_sites == ["rd", "rc"]
    assert occ.holder[(("ra", "rd"), 1)] == "x" and (("ra", "rb"), 0) not in occ.holder


def test_plan_blocks_when_no_wavelength_is_left_and_releases_it():
    network = OpticalNetwork(load_topology(RING4))
    occ = Occupancy(network)
    hit = assign(occ, "ra", "rb", lightpath_id="hit")
    fill = [assign(occ, "ra", "rd", lightpath_id=f"f{w}", wavelength=w) for w in range(2)]
    network.set_span_down("ra", "rb")
    plan = plan_restoration(occ, [hit, *fill], ("ra", "rb"))
    [(lp, why)] = plan.blocked
    assert lp is hit and "no lightpath ra->rb" in why and "full" in why
    assert plan.restored == [] and [lp.id for lp in plan.lightpaths] == ["f0", "f1"]
    assert "hit" not in occ.lightpaths and all(v != "hit" for v in occ.holder.values())


def test_cut_restores_make_before_break_and_reports_times(state):
    lp = state.create_lightpath("ra", "rb")
    state.set_service_site("10.3.0.1", "rb")
    state.pusher.log.clear()
    answer = state.cut_span("rb", "ra")
    assert answer["span"] == "ra-rb" and answer["down"] is True
    [entry] = answer["lightpaths"]
    assert entry["id"] == lp.id and entry["old_route"] == ["ra", "rb"]
    assert entry["route"] == ["ra", "rd", "rc", "rb"] and entry["restored_ms"] >= 0
    applied = [(site, c) for site, kind, c in state.pusher.log if kind == "apply"]
    # The new transit cross-connects are in before anything else, and no rule goes before every new one is in.
    assert [site for site, _ in applied[:2]] == ["rd", "rc"]
    phases = ["make" if (c.adds or c.modifies) else "break" for _, c in applied]
    assert phases == sorted(phases, key=["make", "break"].index)
    # Traffic from ra to rb (APN and VIP) now leaves towards rd.
    flows = state.desired()["ra"]
    towards_rd = port(state, "ra", "rd", entry["wavelength"])
    assert [f.output_port() for f in flows if dict(f.match).get("ipv4_dst") == "10.1.2.0/24"] == [towards_rd]
    assert {f.output_port() for f in flows if f.table == fp.TABLE_STEER and f.priority > 0} == {towards_rd}
    # The packet network routes around too.
    assert [f.output_port() for f in flows if dict(f.match).get("ipv4_dst") == "10.2.2.0/24"] \
        == [port(state, "ra", "rd")]
    assert state.occupancy.holder == exact_occupancy(state)
    assert_switches_match(state)


def test_cut_then_repair_states_and_errors(state):
    state.create_lightpath("ra", "rb")
    with pytest.raises(NotFound):
        state.cut_span("ra", "rc")                     # no such span
    state.cut_span("ra", "rb")
    with pytest.raises(Conflict, match="already cut"):
        state.cut_span("ra", "rb")
    assert state.repair_span("rb", "ra") == {"span": "ra-rb", "down": False}
    with pytest.raises(Conflict, match="not cut"):
        state.repair_span("ra", "rb")
    # Non-revertive: the restored lightpath stays on its new route; new ones may use the span again.
    assert state.lightpaths[0].route.sites == ("ra", "rd", "rc", "rb")
    assert state.create_lightpath("ra", "rb").route.sites == ("ra", "rb")
    assert_switches_match(state)


def test_failed_restoration_push_keeps_old_lightpaths_and_the_cut(state):
    lp = state.create_lightpath("ra", "rb")
    state.pusher.fail_on = "rd"
    with pytest.raises(Exception, match="not restored"):
        state.cut_span("ra", "rb")
    state.pusher.fail_on = None
    assert state.lightpaths == [lp] and state.occupancy.lightpaths == {lp.id: lp}
    assert ("ra", "rb") in state.network.down
    assert_switches_match(state)


@pytest.mark.parametrize("seed", range(4))
def test_occupancy_exact_through_random_cuts_repairs_creates_and_deletes(state, seed):
    rng = random.Random(seed)
    spans = state.network.spans()
    for _ in range(120):
        roll = rng.random()
        if roll < 0.15:
            span = rng.choice(spans)
            if span in state.network.down:
                state.repair_span(*span)
            else:
                answer = state.cut_span(*span)
                for entry in answer["lightpaths"]:
                    assert ("blocked" in entry) != ("route" in entry)
        elif roll < 0.45 and state.lightpaths:
            state.delete_lightpath(rng.choice(state.lightpaths).id)
        else:
            try:
                state.create_lightpath(*rng.sample(state.sites, 2))
            except Conflict:
                pass
        assert state.occupancy.holder == exact_occupancy(state)
        assert set(state.occupancy.lightpaths) == {lp.id for lp in state.lightpaths}
    assert_switches_match(state)
    assert state.desired() == desired_flows(state.portmap, state.network, state.lightpaths, {})
