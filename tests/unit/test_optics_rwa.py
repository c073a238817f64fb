"""Optical delays (hand-computed on triangle.yaml) and RWA: continuity, blocking, release, invariants."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from twin.errors import NoPathError, TwinError
from twin.model.optics import OpticalNetwork
from twin.model.rwa import Blocked, Lightpath, Occupancy, assign
from twin.model.schema import Topology
from twin.model.validate import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


@pytest.fixture
def triangle() -> OpticalNetwork:
    return OpticalNetwork(load_topology(TOPOLOGIES / "triangle.yaml"))


def line(n: int, wavelengths: int = 2, length_km: float = 100.0) -> Topology:
    """Sites s0..s{n-1} on a line."""
    return Topology.model_validate({
        "name": "line", "packet_network": {"router_delay": "100us", "capacity": "1Gbit"},
        "apn": {"k_paths": 3},
        "sites": [{"id": f"s{i}", "name": f"S{i}", "area": "x", "lat": 0, "lon": i,
                   "compute": {"cpus": 1, "memory": "1GiB"}} for i in range(n)],
        "spans": [{"ends": [f"s{i}", f"s{i + 1}"], "length": f"{length_km}km", "wavelengths": wavelengths,
                   "rate": "100Mbit"} for i in range(n - 1)],
    })


# --------------------------------------------------------------------------- delays


def test_hand_computed_span_delays(triangle):
    # 204.0816 km x 4.9 us/km = 1.000 ms; 306.1224 km -> 1.500 ms (node_delay 0).
    assert triangle.span_delay("a", "b") == pytest.approx(1.0e-3, abs=1e-9)
    assert triangle.span_delay("b", "a") == pytest.approx(1.0e-3, abs=1e-9)
    assert triangle.span_delay("a", "c") == pytest.approx(1.5e-3, abs=1e-9)


def test_lightpath_delay_is_the_sum_of_its_spans(triangle):
    route = triangle.route(["a", "b", "c"])
    assert route.one_way_s == pytest.approx(2.0e-3, abs=1e-9)
    assert route.length_km == pytest.approx(408.1632)
    assert route.hops == 2 and route.spans == [("a", "b"), ("b", "c")]


def test_node_delay_is_added_once_per_span():
    topo = line(3).model_copy(update={"apn": line(3).apn.model_copy(update={"node_delay": 10e-6})})
    network = OpticalNetwork(topo)
    assert network.route(["s0", "s1", "s2"]).one_way_s == pytest.approx(2 * (100 * 4.9e-6 + 10e-6))


def test_k_shortest_routes_in_delay_order(triangle):
    routes = triangle.k_shortest_routes("a", "c")
    assert [r.sites for r in routes] == [("a", "c"), ("a", "b", "c")]
    assert [round(r.one_way_s * 1e3, 6) for r in routes] == [1.5, 2.0]


def test_cut_span_is_avoided_and_repair_restores_it(triangle):
    triangle.set_span_down("a", "c")
    assert [r.sites for r in triangle.k_shortest_routes("a", "c")] == [("a", "b", "c")]
    triangle.set_span_down("c", "a", down=False)
    assert triangle.k_shortest_routes("a", "c")[0].sites == ("a", "c")
    # Routes are cached per pair; editing the cut set directly must not serve stale ones.
    triangle.down.add(("a", "c"))
    assert triangle.k_shortest_routes("a", "c")[0].sites == ("a", "b", "c")


def test_no_route_and_unknown_sites(triangle):
    triangle.set_span_down("a", "b")
    triangle.set_span_down("a", "c")
    with pytest.raises(NoPathError, match=r"no fibre route between 'a' and 'c' \(2 span\(s\) cut\)"):
        triangle.k_shortest_routes("a", "c")
    with pytest.raises(NoPathError, match="unknown site 'z'"):
        triangle.k_shortest_routes("a", "z")
    with pytest.raises(NoPathError, match="two different sites"):
        triangle.k_shortest_routes("a", "a")


def test_route_needs_existing_spans(triangle):
    with pytest.raises(TwinError, match="no span between 'a' and 'z'"):
        triangle.route(["a", "z"])
    with pytest.raises(TwinError, match="visits a site twice"):
        triangle.route(["a", "b", "a"])


def test_missing_delay_is_an_error_never_weight_one(triangle):
    triangle.graph.edges["a", "b"]["delay_s"] = None
    with pytest.raises(TwinError, match="has no delay"):
        triangle.span_delay("a", "b")


# --------------------------------------------------------------------------- RWA


def test_first_fit_wavelengths(triangle):
    occ = Occupancy(triangle)
    first = assign(occ, "a", "b", lightpath_id="p1")
    second = assign(occ, "a", "b", lightpath_id="p2")
    assert (first.wavelength, second.wavelength) == (0, 1)
    assert first.route.sites == second.route.sites == ("a", "b")


def test_wavelength_continuity_needs_the_same_wavelength_on_every_span():
    occ = Occupancy(OpticalNetwork(line(3)))
    # Wavelength 0 taken on s0-s1 and wavelength 1 on s1-s2: each span has a free
    # wavelength, but none is free on both, so s0->s2 must block (no converters).
    assign(occ, "s0", "s1", lightpath_id="left", wavelength=0)
    assign(occ, "s1", "s2", lightpath_id="right", wavelength=1)
    assert occ.free_on_route(occ.network.route(["s0", "s1"])) == [1]
    assert occ.free_on_route(occ.network.route(["s1", "s2"])) == [0]
    with pytest.raises(Blocked, match=r"s0-s1-s2: no wavelength free on all spans \(continuity\)"):
        assign(occ, "s0", "s2", lightpath_id="long")
    occ.release("right")
    long = assign(occ, "s0", "s2", lightpath_id="long")
    assert long.wavelength == 1 and occ.used(("s1", "s2")) == {1: "long"}


def test_transit_route_when_the_direct_span_is_full(triangle):
    occ = Occupancy(triangle)
    assign(occ, "a", "c", lightpath_id="x0")
    assign(occ, "a", "c", lightpath_id="x1")
    third = assign(occ, "a", "c", lightpath_id="x2")
    assert third.route.sites == ("a", "b", "c")
    assert third.route.one_way_s == pytest.approx(2e-3)


def test_blocking_names_every_route_and_why(triangle):
    occ = Occupancy(triangle)
    for i in range(2):
        assign(occ, "a", "c", lightpath_id=f"d{i}", route=["a", "c"])
        assign(occ, "a", "b", lightpath_id=f"ab{i}")
    with pytest.raises(Blocked) as excinfo:
        assign(occ, "a", "c", lightpath_id="late")
    assert str(excinfo.value) == "no lightpath a->c: a-c: spans a-c full; a-b-c: spans a-b full"
    assert "late" not in occ.lightpaths


def test_blocked_on_a_cut_span(triangle):
    occ = Occupancy(triangle)
    triangle.set_span_down("a", "b")
    with pytest.raises(Blocked, match="a-b: span a-b is cut"):
        assign(occ, "a", "b", lightpath_id="p", route=["a", "b"])


def test_release_then_reallocate_gets_the_same_wavelength(triangle):
    occ = Occupancy(triangle)
    assign(occ, "a", "b", lightpath_id="p0")
    assign(occ, "a", "b", lightpath_id="p1")
    released = occ.release("p0")
    assert released.wavelength == 0 and occ.used(("a", "b")) == {1: "p1"}
    again = assign(occ, "a", "b", lightpath_id="p2")
    assert again.wavelength == 0


def test_release_unknown_and_duplicate_ids(triangle):
    occ = Occupancy(triangle)
    with pytest.raises(TwinError, match="no lightpath 'ghost'"):
        occ.release("ghost")
    assign(occ, "a", "b", lightpath_id="p")
    with pytest.raises(Blocked, match="already exists"):
        assign(occ, "a", "c", lightpath_id="p")


def test_allocate_changes_nothing_when_it_fails(triangle):
    occ = Occupancy(triangle)
    assign(occ, "b", "c", lightpath_id="bc", wavelength=0)
    before = dict(occ.holder)
    bad = Lightpath("abc", triangle.route(["a", "b", "c"]), 0)
    with pytest.raises(Blocked, match="wavelength 0 on span b-c is held by lightpath bc"):
        occ.allocate(bad)
    assert occ.holder == before and "abc" not in occ.lightpaths
    with pytest.raises(Blocked, match="does not exist on span"):
        occ.allocate(Lightpath("w9", triangle.route(["a", "b"]), 9))


def test_pinned_route_must_join_the_pair(triangle):
    with pytest.raises(Blocked, match="does not run from a to c"):
        assign(Occupancy(triangle), "a", "c", lightpath_id="p", route=["a", "b"])


def test_table_lists_every_wavelength(triangle):
    occ = Occupancy(triangle)
    assign(occ, "a", "c", lightpath_id="p", route=["a", "b", "c"])
    assert occ.table() == {"a-b": ["p", None], "a-c": [None, None], "b-c": ["p", None]}


def check_invariants(occ: Occupancy) -> None:
    expected = {}
    for lp in occ.lightpaths.values():
        for span in lp.route.spans:
            key = (span, lp.wavelength)
            assert key not in expected, f"two lightpaths on {key}"
            expected[key] = lp.id
            assert lp.wavelength < occ.wavelength_count(span)
    assert occ.holder == expected


@pytest.mark.parametrize("seed", range(5))
def test_occupancy_is_exact_after_random_creates_and_deletes(seed):
    rng = random.Random(seed)
    topo = Topology.model_validate({
        "name": "mesh", "packet_network": {"router_delay": "100us", "capacity": "1Gbit"},
        "sites": [{"id": f"n{i}", "name": f"N{i}", "area": "x", "lat": 0, "lon": 0,
                   "compute": {"cpus": 1, "memory": "1GiB"}} for i in range(6)],
        "spans": [{"ends": [f"n{i}", f"n{j}"], "length": f"{rng.randint(10, 500)}km",
                   "wavelengths": rng.randint(1, 3), "rate": "100Mbit"}
                  for i in range(6) for j in range(i + 1, 6) if rng.random() < 0.6 or j == i + 1],
    })
    network = OpticalNetwork(topo)
    occ = Occupancy(network)
    sites = [s.id for s in topo.sites]
    created = blocked = 0
    for step in range(400):
        if occ.lightpaths and rng.random() < 0.4:
            occ.release(rng.choice(sorted(occ.lightpaths)))
        else:
            src, dst = rng.sample(sites, 2)
            try:
                lp = assign(occ, src, dst, lightpath_id=f"lp{step}")
                created += 1
                assert lp.route.sites[0] == src and lp.route.sites[-1] == dst
            except Blocked:
                blocked += 1
        check_invariants(occ)
    assert created > 50 and blocked > 0
    for lp_id in list(occ.lightpaths):
        occ.release(lp_id)
    assert occ.holder == {}
