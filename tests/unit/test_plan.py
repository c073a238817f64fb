"""The planner: pair orders, blocking by earlier pairs, SLO feasibility, shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.errors import TwinError
from twin.model.plan import default_pairs, parse_pairs, plan_lightpaths, slo_feasibility
from twin.model.validate import load_scenario, load_topology

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def triangle():
    return load_topology(REPO / "topologies" / "triangle.yaml")


@pytest.fixture(scope="module")
def japan():
    return load_topology(REPO / "topologies" / "japan.yaml")


def test_default_pairs_in_file_order(triangle):
    assert default_pairs(triangle) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_longest_first_order(triangle):
    assert default_pairs(triangle, "longest-first") == [("a", "c"), ("a", "b"), ("b", "c")]


def test_unknown_order(triangle):
    with pytest.raises(TwinError, match="unknown order 'random'"):
        default_pairs(triangle, "random")


def test_parse_pairs(triangle):
    assert parse_pairs("a:b, c:a", triangle) == [("a", "b"), ("c", "a")]
    for text, message in [("a-b", "not a pair"), ("a:z", "unknown site 'z'"), ("a:a", "itself"), (",", "empty")]:
        with pytest.raises(TwinError, match=message):
            parse_pairs(text, triangle)


def test_plan_entries_and_dicts(triangle):
    entries = plan_lightpaths(triangle, default_pairs(triangle))
    assert [e.to_dict() for e in entries] == [
        {"src": "a", "dst": "b", "route": ["a", "b"], "wavelength": 0, "length_km": 204.082,
         "one_way_ms": 1.0, "rtt_ms": 2.0},
        {"src": "a", "dst": "c", "route": ["a", "c"], "wavelength": 0, "length_km": 306.122,
         "one_way_ms": 1.5, "rtt_ms": 3.0},
        {"src": "b", "dst": "c", "route": ["b", "c"], "wavelength": 0, "length_km": 204.082,
         "one_way_ms": 1.0, "rtt_ms": 2.0},
    ]


def test_later_pairs_are_blocked_by_earlier_ones(triangle):
    pairs = [("a", "c")] * 4
    entries = plan_lightpaths(triangle, pairs)
    assert [e.lightpath.route.sites if e.lightpath else None for e in entries] == [
        ("a", "c"), ("a", "c"), ("a", "b", "c"), ("a", "b", "c")]
    blocked = plan_lightpaths(triangle, pairs + [("a", "b")])[-1]
    assert blocked.lightpath is None
    assert blocked.to_dict() == {"src": "a", "dst": "b",
                                 "blocked": "no lightpath a->b: a-b: spans a-b full; a-c-b: spans a-c, b-c full"}


def test_japan_plan_serves_most_pairs_and_the_longest(japan):
    entries = plan_lightpaths(japan, default_pairs(japan))
    served = [e for e in entries if e.lightpath]
    assert len(entries) == 45
    # East and west share 16 wavelengths for 25 pairs: at least 9 must block.
    assert len(entries) - len(served) == 9
    longest = plan_lightpaths(japan, [("hkd", "oka")])[0]
    assert longest.lightpath is not None
    assert 15 < longest.lightpath.route.one_way_s * 1e3 < 18


def test_japan_longest_first_also_plans(japan):
    entries = plan_lightpaths(japan, default_pairs(japan, "longest-first"))
    assert sum(1 for e in entries if e.lightpath) >= 25


def test_japan_delays_match_facts(japan):
    # facts.md: Tokyo-Osaka ~2.5 ms one way at 1.3x; our route follows the spans.
    (entry,) = plan_lightpaths(japan, [("tyo", "osa")])
    assert entry.lightpath.route.sites == ("tyo", "ngo", "osa")
    assert entry.lightpath.route.one_way_s * 1e3 == pytest.approx(2.57, abs=0.05)


def test_slo_feasibility_of_spring_day():
    scenario, topology = load_scenario(REPO / "scenarios" / "spring-day.yaml")
    rows = slo_feasibility(scenario, topology)
    meets: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        meets.setdefault((row.service, row.region), set())
        if row.meets:
            meets[(row.service, row.region)].add(row.site)
    # kept-alive connections: 2 round trips for 16 KiB; Osaka is 13.4 ms away from Fukuoka's users
    assert meets[("drive-assist", "fuk")] == {"fuk", "hij", "tak"}
    assert meets[("drive-assist", "fuk")] & meets[("drive-assist", "hij")] == {"fuk", "hij", "tak"}
    assert "hkd" not in meets[("drive-assist", "hij")]
    assert all(len(meets[("farm-images", region)]) == 10 for region in ("hkd", "sdj", "kij", "fuk", "oka"))
    same_site = [r for r in rows if r.region == r.site]
    assert all(r.rtt_ms == 0 for r in same_site)


def test_request_round_trips_follow_tcp_slow_start():
    from twin.model.plan import request_round_trips

    # handshake + one window (10 x 1448 B) + ... : the round trips a new connection costs
    assert request_round_trips(1) == 2
    assert request_round_trips(10 * 1448) == 2
    assert request_round_trips(10 * 1448 + 1) == 3
    assert request_round_trips(30 * 1448) == 3
    assert request_round_trips(30 * 1448 + 1) == 4


def test_kept_alive_connections_save_the_handshake_only():
    from twin.model.plan import request_round_trips

    assert request_round_trips(1, keep_alive=True) == 1
    assert request_round_trips(10 * 1448, keep_alive=True) == 1
    # an idle connection starts again from the initial window: no credit for a warm one
    assert request_round_trips(16 * 1024, keep_alive=True) == 2
    for size in (1, 16 * 1024, 200_000, 5_000_000):
        assert request_round_trips(size) == request_round_trips(size, keep_alive=True) + 1


def test_service_connection_kind_changes_feasibility():
    from twin.model.plan import expected_latency_s

    scenario, _ = load_scenario(REPO / "scenarios" / "spring-day.yaml")
    drive = next(s for s in scenario.services if s.id == "drive-assist")
    assert drive.connection == "keep-alive"
    fresh = drive.model_copy(update={"connection": "per-request"})
    rtt = 2.68e-3  # Fukuoka - Hiroshima
    assert expected_latency_s(rtt, drive) == pytest.approx(2 * rtt + drive.service_time)
    assert expected_latency_s(rtt, fresh) == pytest.approx(3 * rtt + drive.service_time)
