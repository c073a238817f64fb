"""Wavelengths as VLANs on span trunks: the port map and the lightpath rules (pure, no switch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controllers import flowplan as fp
from controllers.flowplan import desired_flows, lightpath_out_actions
from twin.errors import TwinError
from twin.model import addressing as ad
from twin.model.optics import OpticalNetwork
from twin.model.portmap import PortMap, build_port_map
from twin.model.rwa import Lightpath
from twin.model.validate import load_topology

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = REPO / "topologies" / "triangle.yaml"
JAPAN = REPO / "topologies" / "japan.yaml"


@pytest.fixture(scope="module")
def triangle():
    topology = load_topology(TRIANGLE)
    return topology, build_port_map(topology), OpticalNetwork(topology)


def lightpath(network, sites, wavelength, lp_id="lp1") -> Lightpath:
    route = next(r for r in network.k_shortest_routes(sites[0], sites[-1], 3) if list(r.sites) == list(sites))
    return Lightpath(lp_id, route, wavelength)


# -- port map --------------------------------------------------------------------------------------

def test_one_trunk_port_per_span_end_with_a_vlan_per_wavelength():
    topology = load_topology(JAPAN)
    pm = build_port_map(topology)
    trunks = [p for sw in pm.switches.values() for p in sw.trunk_ports()]
    assert len(trunks) == 2 * len(topology.spans)
    assert sum(len(sw.ports) for sw in pm.switches.values()) == 2 * len(topology.sites) + 2 * len(topology.spans)
    for span in topology.spans:
        a, b = span.ends
        port_a, port_b = pm.switches[a].trunk_port(b), pm.switches[b].trunk_port(a)
        assert port_a.name == ad.trunk_port(a, b) and port_b.name == ad.trunk_port(b, a)
        assert port_a.vids == port_b.vids == tuple(100 + w for w in range(span.wavelengths))
    for sw in pm.switches.values():
        assert [p.number for p in sw.ports] == list(range(1, len(sw.ports) + 1))


def test_port_map_file_round_trip_keeps_vlans(triangle, tmp_path):
    _, pm, _ = triangle
    pm.save(tmp_path / "pm.json")
    loaded = PortMap.load(tmp_path / "pm.json")
    assert loaded.switches == pm.switches
    assert loaded.switches["a"].wavelength_channel("c", 1) == (pm.switches["a"].trunk_port("c").number, 101)


def test_wavelength_channel_rejects_a_missing_wavelength(triangle):
    _, pm, _ = triangle
    with pytest.raises(TwinError, match="no wavelength 2"):
        pm.switches["a"].wavelength_channel("b", 2)
    with pytest.raises(TwinError, match="no trunk port"):
        pm.switches["a"].trunk_port("zz")


def test_controller_takes_vlan_ids_from_the_port_map_not_a_rule(triangle):
    topology, pm, network = triangle
    # Renumber a-b's VLANs on both ends: the rules must follow the file.
    data = json.loads(pm.to_json())
    for site, peer in (("a", "b"), ("b", "a")):
        for port in data["switches"][site]["ports"]:
            if port.get("peer") == peer:
                port["vids"] = [300, 301]
    edited = PortMap.from_json(json.dumps(data))
    lp = lightpath(network, ["a", "b"], 1)
    assert lightpath_out_actions(edited, lp, "a") == (
        ("push_vlan", 0x8100), ("set_vlan_vid", 301), ("output", edited.switches["a"].trunk_port("b").number))


# -- lightpath rules ------------------------------------------------------------------------------

def test_add_pushes_the_wavelength_vlan_and_outputs_the_trunk(triangle):
    _, pm, network = triangle
    lp = lightpath(network, ["a", "b", "c"], 1)
    flows = desired_flows(pm, network, [lp], {})
    [add_a] = [f for f in flows["a"] if f.cookie == fp.COOKIE_APP | fp.KIND_ADD_DROP]
    assert dict(add_a.match)["ipv4_dst"] == "10.1.3.0/24"
    assert add_a.actions == (("push_vlan", 0x8100), ("set_vlan_vid", 101),
                             ("output", pm.switches["a"].trunk_port("b").number))
    assert add_a.actions == lightpath_out_actions(pm, lp, "a")
    with pytest.raises(ValueError, match="not an end"):
        lightpath_out_actions(pm, lp, "b")


def test_drop_at_both_ends_pops_the_vlan_and_looks_up_again(triangle):
    _, pm, network = triangle
    lp = lightpath(network, ["a", "b", "c"], 1)
    flows = desired_flows(pm, network, [lp], {})
    for end, towards in (("a", "b"), ("c", "b")):
        [drop] = [f for f in flows[end] if f.cookie == fp.COOKIE_APP | fp.KIND_LP_DROP]
        assert dict(drop.match) == {"in_port": pm.switches[end].trunk_port(towards).number, "vlan_vid": 0x1000 | 101}
        assert drop.actions == (("pop_vlan", 0), ("resubmit", fp.TABLE))
        assert drop.priority > fp.PRIO_DARK > fp.PRIO_VIP
    assert not [f for f in flows["b"] if f.cookie == fp.COOKIE_APP | fp.KIND_LP_DROP]


def test_every_trunk_drops_tagged_frames_of_no_lightpath(triangle):
    _, pm, network = triangle
    flows = desired_flows(pm, network, [], {})
    for site, sw in pm.switches.items():
        dark = {dict(f.match)["in_port"] for f in flows[site] if f.cookie == fp.COOKIE_APP | fp.KIND_DARK}
        assert dark == {p.number for p in sw.trunk_ports()}
        assert all(f.actions == () and dict(f.match)["vlan_vid"] == (0x1000, 0x1000)
                   for f in flows[site] if f.cookie == fp.COOKIE_APP | fp.KIND_DARK)


def test_two_wavelengths_of_one_span_get_separate_rules(triangle):
    _, pm, network = triangle
    lp0 = lightpath(network, ["a", "b"], 0, "lp0")
    lp1 = lightpath(network, ["a", "b", "c"], 1, "lp1")
    flows = desired_flows(pm, network, [lp0, lp1], {})
    trunk_ab = pm.switches["b"].trunk_port("a").number
    at_b = {dict(f.match).get("vlan_vid"): f for f in flows["b"]
            if dict(f.match).get("in_port") == trunk_ab and f.priority == fp.PRIO_TRANSIT}
    assert at_b[0x1000 | 100].cookie == fp.COOKIE_APP | fp.KIND_LP_DROP     # lp0 ends at b
    assert at_b[0x1000 | 101].cookie == fp.COOKIE_APP | fp.KIND_TRANSIT     # lp1 passes b
    assert at_b[0x1000 | 101].actions == (("output", pm.switches["b"].trunk_port("c").number),)


def test_packet_network_leaves_untagged_on_the_trunk(triangle):
    _, pm, network = triangle
    flows = desired_flows(pm, network, [], {})
    [rule] = [f for f in flows["a"] if dict(f.match).get("ipv4_dst") == "10.2.3.0/24"]
    assert rule.actions == (("output", pm.switches["a"].trunk_port("c").number),)
