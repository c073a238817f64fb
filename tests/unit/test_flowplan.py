"""Flow planning and controller state on the triangle topology, with a fake switch side."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from controllers import flowplan as fp
from controllers.flowplan import FlowDiff, FlowSpec, desired_flows, diff
from controllers.state import BadRequest, Conflict, ControllerState, NotFound, PushError
from twin.model.optics import OpticalNetwork
from twin.model.portmap import build_port_map
from twin.model.validate import load_topology

TRIANGLE = Path(__file__).resolve().parents[2] / "topologies" / "triangle.yaml"


class FakeSwitches:
    """Applies bundles to in-memory flow tables, checking each diff makes sense."""

    def __init__(self, sites, connected=True):
        self.tables: dict[str, dict] = {s: {} for s in sites}
        self.connected = set(sites) if connected else set()
        self.log: list[tuple[str, str, FlowDiff | None]] = []   # (site, "apply"/"replace", change)
        self.fail_on: str | None = None

    def apply(self, site, change):
        if site not in self.connected:
            return False
        if site == self.fail_on:
            raise PushError(f"switch {site}: refused")
        table = self.tables[site]
        for f in change.adds:
            assert f.key not in table, f"add of an existing flow {f}"
        for f in change.modifies + change.deletes:
            assert f.key in table, f"modify/delete of a missing flow {f}"
        for f in change.adds + change.modifies:
            table[f.key] = f
        for f in change.deletes:
            del table[f.key]
        self.log.append((site, "apply", change))
        return True

    def replace(self, site, flows):
        if site not in self.connected:
            return False
        self.tables[site] = {f.key: f for f in flows}
        self.log.append((site, "replace", None))
        return True

    def settled(self):
        self.log.append(("*", "settled", None))

    def flows(self, site) -> frozenset[FlowSpec]:
        return frozenset(self.tables[site].values())


@pytest.fixture(scope="module")
def topology():
    return load_topology(TRIANGLE)


@pytest.fixture
def state(topology):
    portmap = build_port_map(topology)
    switches = FakeSwitches(portmap.switches)
    st = ControllerState(OpticalNetwork(topology), portmap, switches)
    for site in st.sites:
        st.switch_up(site)
    switches.log.clear()
    return st


def port(state, site, peer, wavelength=None):
    """The trunk port towards ``peer`` (wavelengths and the packet network share it)."""
    sw = state.portmap.switches[site]
    return sw.packet_port(peer).number if wavelength is None else sw.wavelength_channel(peer, wavelength)[0]


def vid(state, site, peer, wavelength):
    return state.portmap.switches[site].wavelength_channel(peer, wavelength)[1]


def lp_out(state, site, peer, wavelength):
    """What puts a packet onto the lightpath at ``site``: tag with the wavelength's VLAN, out of the trunk."""
    return (("push_vlan", 0x8100), ("set_vlan_vid", vid(state, site, peer, wavelength)),
            ("output", port(state, site, peer, wavelength)))


def by_kind(flows, kind):
    return {f for f in flows if f.cookie == fp.COOKIE_APP | kind}


def ip_rule(flows, dst):
    return [f for f in flows if dict(f.match).get("ipv4_dst") == dst]


def assert_switches_match(state):
    desired = state.desired()
    for site in state.sites:
        assert state.pusher.flows(site) == desired[site], site


def test_the_pusher_hears_once_when_a_change_set_is_in_everywhere(state):
    lp = state.create_lightpath("a", "c", route=["a", "b", "c"])
    kinds = [entry[1] for entry in state.pusher.log]
    assert kinds.count("settled") == 1 and kinds[-1] == "settled"   # after the last switch, once
    assert sum(1 for k in kinds if k == "apply") >= 3
    state.pusher.log.clear()
    state.delete_lightpath(lp.id)
    assert [entry[1] for entry in state.pusher.log][-1] == "settled"
    state.pusher.log.clear()
    state.switch_up("a")                                              # nothing changed: no call
    assert "settled" not in [entry[1] for entry in state.pusher.log]


# -- flows of one lightpath ----------------------------------------------------------------------

def test_direct_lightpath_adds_and_drops_at_both_ends_only(state):
    lp = state.create_lightpath("a", "c", route=["a", "c"])
    flows = state.desired()
    assert lp.wavelength == 0
    assert by_kind(flows["a"], fp.KIND_ADD_DROP) == {
        fp.flow(fp.PRIO_ADD_DROP, fp.KIND_ADD_DROP, {"eth_type": 0x800, "ipv4_dst": "10.1.3.0/24"},
                lp_out(state, "a", "c", 0))}
    assert by_kind(flows["c"], fp.KIND_ADD_DROP) == {
        fp.flow(fp.PRIO_ADD_DROP, fp.KIND_ADD_DROP, {"eth_type": 0x800, "ipv4_dst": "10.1.1.0/24"},
                lp_out(state, "c", "a", 0))}
    assert not by_kind(flows["b"], fp.KIND_ADD_DROP) and not by_kind(flows["b"], fp.KIND_TRANSIT)
    assert_switches_match(state)


def test_transit_site_cross_connects_the_same_wavelength_both_ways(state):
    state.create_lightpath("a", "c", route=["a", "c"], wavelength=1)
    lp = state.create_lightpath("a", "c", route=["a", "b", "c"], wavelength=1)
    flows = state.desired()
    west, east = port(state, "b", "a", 1), port(state, "b", "c", 1)
    tag = 0x1000 | vid(state, "b", "a", 1)
    assert tag == 0x1000 | vid(state, "b", "c", 1) == 0x1000 | 101
    assert by_kind(flows["b"], fp.KIND_TRANSIT) == {
        fp.flow(fp.PRIO_TRANSIT, fp.KIND_TRANSIT, {"in_port": west, "vlan_vid": tag}, [("output", east)]),
        fp.flow(fp.PRIO_TRANSIT, fp.KIND_TRANSIT, {"in_port": east, "vlan_vid": tag}, [("output", west)])}
    # Layer 1: the transit rule looks at nothing but the port and the wavelength, and keeps the tag.
    assert all(set(dict(f.match)) == {"in_port", "vlan_vid"} for f in by_kind(flows["b"], fp.KIND_TRANSIT))
    assert not by_kind(flows["b"], fp.KIND_LP_DROP)
    assert lp.route.sites == ("a", "b", "c")
    assert_switches_match(state)


def test_ends_of_a_routed_lightpath_send_towards_the_next_site(state):
    state.create_lightpath("a", "c", route=["a", "b", "c"])
    flows = state.desired()
    assert [f.output_port() for f in ip_rule(flows["a"], "10.1.3.0/24")] == [port(state, "a", "b", 0)]
    assert [f.output_port() for f in ip_rule(flows["c"], "10.1.1.0/24")] == [port(state, "c", "b", 0)]


def test_oldest_of_several_lightpaths_between_a_pair_carries_traffic(state):
    first = state.create_lightpath("a", "c")                 # a-c, wavelength 0
    second = state.create_lightpath("a", "c")                # a-c, wavelength 1
    assert (first.wavelength, second.wavelength) == (0, 1)
    flows = state.desired()
    assert [f.output_port() for f in ip_rule(flows["a"], "10.1.3.0/24")] == [port(state, "a", "c", 0)]
    state.delete_lightpath(first.id)
    flows = state.desired()
    assert [f.output_port() for f in ip_rule(flows["a"], "10.1.3.0/24")] == [port(state, "a", "c", 1)]
    assert_switches_match(state)


def test_delete_leaves_exactly_the_flows_of_the_remaining_state(state, topology):
    baseline = state.desired()
    keep = state.create_lightpath("a", "b")
    gone = state.create_lightpath("a", "c", route=["a", "b", "c"])
    state.delete_lightpath(gone.id)
    expected = desired_flows(state.portmap, state.network, [keep], {})
    for site in state.sites:
        assert state.pusher.flows(site) == expected[site]
    state.delete_lightpath(keep.id)
    for site in state.sites:
        assert state.pusher.flows(site) == baseline[site]


# -- services ------------------------------------------------------------------------------------

def steer(flows, vip, priority=None):
    """The TABLE_STEER flows of one VIP (optionally of one priority)."""
    return {f for f in flows if f.table == fp.TABLE_STEER and dict(f.match).get("ipv4_dst") == vip
            and (priority is None or f.priority == priority)}


def test_vip_delivered_locally_at_host_and_over_lightpath_elsewhere(state):
    lp = state.create_lightpath("a", "c")
    state.set_service_site("10.3.0.1", "c")
    flows = state.desired()
    compute = state.portmap.switches["c"].ports[0]
    to_compute = (("set_eth_dst", compute.mac), ("output", compute.number))
    # At the host, packets arriving for the VIP go to the compute host.
    [at_host] = [f for f in ip_rule(flows["c"], "10.3.0.1") if f.priority == fp.PRIO_VIP]
    assert at_host.actions == to_compute and "in_port" not in dict(at_host.match)
    # At a, new connections are committed with c's index and sent into the lightpath.
    [new] = steer(flows["a"], "10.3.0.1", fp.PRIO_STEER_NEW)
    into_lp = lp_out(state, "a", "c", lp.wavelength)
    assert new.actions == (("ct_commit", (fp.CT_ZONE, 3)),) + into_lp
    [kept] = steer(flows["a"], "10.3.0.1", fp.PRIO_STEER_AFFINITY)
    assert dict(kept.match)["ct_mark"] == 3 and kept.actions == into_lp
    # Local clients at c are tracked too and delivered locally.
    [new_c] = steer(flows["c"], "10.3.0.1", fp.PRIO_STEER_NEW)
    assert new_c.actions == (("ct_commit", (fp.CT_ZONE, 3)),) + to_compute
    assert ip_rule(flows["b"], "10.3.0.1") == [] and not steer(flows["b"], "10.3.0.1")  # no lightpath b-c
    assert state.services()["10.3.0.1"]["reachable_from"] == ["a", "c"]
    assert_switches_match(state)


def test_clients_enter_conntrack_and_replies_pass_it(state):
    state.create_lightpath("a", "c")
    state.set_service_site("10.3.0.1", "c")
    flows = state.desired()["a"]
    users = next(p for p in state.portmap.switches["a"].host_ports() if p.role == 2)
    entry = [f for f in flows if f.priority == fp.PRIO_VIP_ENTRY]
    assert {dict(f.match)["in_port"] for f in entry} == {p.number for p in state.portmap.switches["a"].host_ports()}
    assert all(f.actions == (("ct_recirc", (fp.CT_ZONE, fp.TABLE_STEER)),) for f in entry)
    [reply] = [f for f in flows if dict(f.match).get("ipv4_src") == "10.3.0.1"
               and dict(f.match)["ipv4_dst"] == users.ips[0]]
    assert reply.actions == (("ct_track", fp.CT_ZONE), ("set_eth_dst", users.mac), ("output", users.number))
    assert reply.priority > fp.PRIO_LOCAL          # beats plain delivery to the users host


def test_repoint_moves_new_connections_and_keeps_old_ones_until_drained(state):
    for pair in (("a", "b"), ("a", "c"), ("b", "c")):
        state.create_lightpath(*pair)
    state.set_service_site("10.3.0.1", "c")
    always_at_b = desired_flows(state.portmap, state.network, state.lightpaths, {"10.3.0.1": "b"})
    answer = state.set_service_site("10.3.0.1", "b")
    assert answer["site"] == "b" and answer["draining"] == ["c"]
    flows = state.desired()
    to_b, to_c = lp_out(state, "a", "b", 0), lp_out(state, "a", "c", 0)
    # New connections from a: committed for b (index 2), sent to b.
    [new] = steer(flows["a"], "10.3.0.1", fp.PRIO_STEER_NEW)
    assert new.actions == (("ct_commit", (fp.CT_ZONE, 2)),) + to_b
    # Established ones keep their site: one affinity rule per home.
    assert {(dict(f.match)["ct_mark"], f.actions) for f in steer(flows["a"], "10.3.0.1", fp.PRIO_STEER_AFFINITY)} \
        == {(2, to_b), (3, to_c)}
    # Both homes still deliver to their compute host.
    for home in ("b", "c"):
        assert [f for f in ip_rule(flows[home], "10.3.0.1") if f.priority == fp.PRIO_VIP]
    assert_switches_match(state)
    # Drained: exactly the flows as if the service had always been at b.
    answer = state.service_drained("10.3.0.1", "c")
    assert answer["draining"] == []
    assert state.desired() == always_at_b
    assert_switches_match(state)


def test_repoint_and_drain_never_delete_before_adding(state):
    for pair in (("a", "b"), ("a", "c"), ("b", "c")):
        state.create_lightpath(*pair)
    state.set_service_site("10.3.0.1", "c")
    state.pusher.log.clear()
    state.set_service_site("10.3.0.1", "b")
    changes = [c for _, kind, c in state.pusher.log if kind == "apply"]
    assert changes and not any(c.deletes for c in changes)     # a re-point only adds or modifies
    state.pusher.log.clear()
    state.service_drained("10.3.0.1", "c")
    changes = [c for _, kind, c in state.pusher.log if kind == "apply"]
    assert changes and not any(c.adds for c in changes)         # a drain only removes
    assert_switches_match(state)


def test_drain_errors_and_moving_back_to_a_draining_site(state):
    for pair in (("a", "b"), ("a", "c"), ("b", "c")):
        state.create_lightpath(*pair)
    state.set_service_site("10.3.0.1", "c")
    with pytest.raises(Conflict, match="hosts it"):
        state.service_drained("10.3.0.1", "c")
    with pytest.raises(Conflict, match="not draining"):
        state.service_drained("10.3.0.1", "a")
    with pytest.raises(NotFound):
        state.service_drained("10.3.0.2", "c")
    state.set_service_site("10.3.0.1", "b")
    state.set_service_site("10.3.0.1", "a")
    assert state.services()["10.3.0.1"]["draining"] == ["b", "c"]
    state.set_service_site("10.3.0.1", "c")                   # back to a draining site: it hosts again
    assert state.services()["10.3.0.1"]["draining"] == ["a", "b"]
    state.delete_service("10.3.0.1")
    assert state.vip_draining == {}
    assert state.desired() == desired_flows(state.portmap, state.network, state.lightpaths, {})
    assert_switches_match(state)


def test_failed_repoint_keeps_old_site_and_draining(state):
    for pair in (("a", "b"), ("a", "c"), ("b", "c")):
        state.create_lightpath(*pair)
    state.set_service_site("10.3.0.1", "c")
    state.pusher.fail_on = "b"
    with pytest.raises(Exception, match="not moved"):
        state.set_service_site("10.3.0.1", "b")
    state.pusher.fail_on = None
    assert state.services()["10.3.0.1"]["site"] == "c" and state.services()["10.3.0.1"]["draining"] == []
    assert_switches_match(state)


def test_repointing_a_vip_is_make_before_break(state):
    state.create_lightpath("a", "c")
    state.create_lightpath("a", "b")
    state.set_service_site("10.3.0.1", "c")
    with pytest.raises(Conflict, match="cut off site"):
        state.set_service_site("10.3.0.1", "b")          # c has no lightpath to b yet
    state.create_lightpath("b", "c")
    state.pusher.log.clear()
    state.set_service_site("10.3.0.1", "b")
    applied = [(site, c) for site, kind, c in state.pusher.log if kind == "apply"]
    assert applied[0][0] == "b"                          # the new home first
    phases = ["make" if (c.adds or c.modifies) else "break" for _, c in applied]
    assert phases == sorted(phases, key=["make", "break"].index)   # no delete before every add/modify
    assert_switches_match(state)


def test_vip_validation(state):
    with pytest.raises(BadRequest):
        state.set_service_site("10.1.0.1", "a")
    with pytest.raises(BadRequest):
        state.set_service_site("10.3.0.1", "zz")
    with pytest.raises(NotFound):
        state.delete_service("10.3.0.9")


# -- packet plane ---------------------------------------------------------------------------------

def test_packet_plane_uses_the_next_hop_of_the_fastest_route(state, topology):
    flows = state.desired()
    # a-c direct (1.5 ms) beats a-b-c (2 ms)
    [rule] = ip_rule(flows["a"], "10.2.3.0/24")
    assert rule.output_port() == port(state, "a", "c")
    state.network.set_span_down("a", "c")
    flows = state.desired()
    [rule] = ip_rule(flows["a"], "10.2.3.0/24")
    assert rule.output_port() == port(state, "a", "b")
    state.network.set_span_down("a", "c", False)


def test_every_switch_drops_on_table_miss_and_delivers_its_hosts(state):
    flows = state.desired()
    for site, sw in state.portmap.switches.items():
        assert fp.flow(fp.PRIO_MISS, fp.KIND_MISS, {}) in flows[site]
        for host in sw.host_ports():
            for ip in host.ips:
                [rule] = ip_rule(flows[site], ip)
                assert rule.actions == (("set_eth_dst", host.mac), ("output", host.number))


# -- diff ----------------------------------------------------------------------------------------

def test_diff_adds_modifies_deletes():
    keep = fp.flow(100, 2, {"in_port": 1}, [("output", 2)])
    old = fp.flow(200, 4, {"in_port": 3}, [("output", 4)])
    new = fp.flow(200, 4, {"in_port": 3}, [("output", 5)])      # same key, other action -> modify
    gone = fp.flow(300, 6, {"in_port": 7}, [("output", 8)])
    added = fp.flow(300, 6, {"in_port": 9}, [("output", 8)])
    change = diff({keep, old, gone}, {keep, new, added})
    assert change == FlowDiff(adds=(added,), modifies=(new,), deletes=(gone,))
    assert not diff({keep}, {keep})


def test_failed_push_rolls_back_state(state):
    state.pusher.fail_on = "b"
    with pytest.raises(Exception, match="not set up"):
        state.create_lightpath("a", "c", route=["a", "b", "c"])
    assert state.list_lightpaths() == [] and state.occupancy.holder == {}
    state.pusher.fail_on = None
    assert_switches_match(state)


def test_disconnected_switch_is_replaced_whole_on_reconnect(state):
    state.switch_down("c")
    state.pusher.connected.discard("c")
    state.create_lightpath("a", "c")
    state.pusher.connected.add("c")
    state.switch_up("c")
    assert_switches_match(state)


# -- occupancy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_occupancy_exact_after_random_creates_and_deletes(state, seed):
    rng = random.Random(seed)
    sites = state.sites
    for _ in range(300):
        if state.lightpaths and rng.random() < 0.45:
            state.delete_lightpath(rng.choice(state.lightpaths).id)
        else:
            src, dst = rng.sample(sites, 2)
            try:
                state.create_lightpath(src, dst, wavelength=rng.choice([None, 0, 1]))
            except Conflict:
                pass
        expected = {}
        for lp in state.lightpaths:
            for span in lp.route.spans:
                assert (span, lp.wavelength) not in expected, "wavelength used twice on a span"
                expected[(span, lp.wavelength)] = lp.id
        assert state.occupancy.holder == expected
        assert set(state.occupancy.lightpaths) == {lp.id for lp in state.lightpaths}
    assert_switches_match(state)
    for lp in list(state.lightpaths):
        state.delete_lightpath(lp.id)
    assert state.occupancy.holder == {}
