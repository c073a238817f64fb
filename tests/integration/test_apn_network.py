"""The emulated APN end to end on the three-site ring (root, OVS, Mininet).

Real switches, real packets through real namespaces, the real controller process.
Tolerances here are looser than the benchmark targets (CI machines are noisy);
precision is measured in benchmarks/network.py, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.emulation import records
from twin.emulation.session import TwinSession

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = str(REPO / "topologies" / "triangle.yaml")
_snapshot = records.host_state


@pytest.fixture(scope="module")
def session():
    before = _snapshot()
    with TwinSession(TRIANGLE) as s:
        yield s
    after = _snapshot()
    assert after == before, f"left behind: {after} vs {before}"


def test_switches_connect_and_backend_is_reported(session):
    health = session.client.health()
    assert health["switches_connected"] == 3
    assert session.network.link_backend in ("netem", "userspace")


def test_lightpath_lifecycle_over_the_api(session):
    lp = session.client.create_lightpath("a", "c")
    try:
        assert lp["route"] == ["a", "c"] and lp["wavelength"] == 0
        assert lp["id"] in {x["id"] for x in session.client.lightpaths()}
        assert session.client.occupancy()["a-c"][0] == lp["id"]
        probe = session.probe("a", "c", count=200, rate=400)
        assert probe.lost == 0 and probe.reordered == 0
    finally:
        session.client.delete_lightpath(lp["id"])
    assert session.client.occupancy()["a-c"] == [None, None]
    # Without a lightpath the APN plane has no connectivity at all (layer-1 faithful).
    silent = session.probe("a", "c", count=20, rate=100)
    assert silent.received == 0


def test_probes_match_the_model_over_a_transit_site(session):
    # Fill a-c so the next a-c lightpath must go a-b-c through transit switch b.
    held = [session.client.create_lightpath("a", "c", route=["a", "c"]) for _ in range(2)]
    via_b = session.client.create_lightpath("a", "c")
    try:
        assert via_b["route"] == ["a", "b", "c"]
        baseline_ms = session.baseline_one_way_ms()
        # The oldest a-c lightpath carries traffic; delete the direct ones so via_b does.
        for lp in held:
            session.client.delete_lightpath(lp["id"])
        probe = session.probe("a", "c", count=500, rate=500)
        # Calibrated spans carry no emulator transit time: only the path's ends pay the baseline.
        switches = 1 if session.calibration else 3
        expected_ms = via_b["one_way_ms"] + baseline_ms * switches
        measured_ms = probe.forward_us.median / 1e3
        # The OVS userspace datapath adds ~0.2 ms of noise per path on 2 cores (benchmarks/README.md).
        assert abs(measured_ms - expected_ms) < 0.4, (measured_ms, expected_ms)
        assert probe.reordered == 0 and probe.lost == 0
        # RTT is both directions of the same lightpath.
        assert abs(probe.rtt_us.median / 1e3 - 2 * expected_ms) < 0.5
    finally:
        session.client.delete_lightpath(via_b["id"])


def test_transit_calibration_measured_every_span_and_moves_real_packets(session):
    from twin.emulation.session import MAX_ADVANCE_US

    if session.network.link_backend != "userspace":
        pytest.skip("calibration is for the userspace delay engine")
    cal = session.calibration
    assert [row["span"] for row in cal["spans"]] == ["a-b", "b-c", "a-c"]
    for row in cal["spans"]:
        assert 0 <= row["advance_ab_us"] <= MAX_ADVANCE_US and 0 <= row["advance_ba_us"] <= MAX_ADVANCE_US
    # The advance really moves packets, in one direction only: 250 us more on a->b.
    ab = next(row for row in cal["spans"] if row["span"] == "a-b")
    lp = session.client.create_lightpath("a", "b", route=["a", "b"])
    try:
        before = session.probe("a", "b", count=400, rate=500)
        session.network.set_transit_advance({("a", "b"): ab["advance_ab_us"] + 250.0})
        after = session.probe("a", "b", count=400, rate=500)
    finally:
        session.network.set_transit_advance({("a", "b"): ab["advance_ab_us"]})
        session.client.delete_lightpath(lp["id"])
    forward_gain = before.forward_us.median - after.forward_us.median
    backward_gain = before.backward_us.median - after.backward_us.median
    assert 150 < forward_gain < 350, (forward_gain, before.forward_us.median, after.forward_us.median)
    assert abs(backward_gain) < 100, backward_gain
    assert after.lost == 0 and after.reordered == 0


def test_a_lightpath_replacing_a_transit_cross_connect_carries_traffic(session):
    # At b, wavelength 0 from a first transits to c (a-b-c), then drops at b (a-b): the same
    # port and VLAN with new actions. OVS 3.1's userspace datapath sometimes kept the cached
    # transit action, sending a-b's frames on to c (half the runs); the controller now purges
    # the datapath flows after every change set. Three rounds to catch it when it comes back.
    def direct_ab(count: int):
        lp = session.client.create_lightpath("a", "b", route=["a", "b"])
        try:
            return lp, session.probe("a", "b", count=count, rate=500)
        finally:
            session.client.delete_lightpath(lp["id"])

    for _ in range(3):
        direct_ab(200)  # b caches a datapath flow for a-b's frames: pop the VLAN, deliver
        held = [session.client.create_lightpath("a", "c", route=["a", "c"]) for _ in range(2)]
        via_b = session.client.create_lightpath("a", "c", route=["a", "b", "c"])
        for lp in held:
            session.client.delete_lightpath(lp["id"])
        transit = session.probe("a", "c", count=300, rate=500)  # ... which becomes "on to c"
        session.client.delete_lightpath(via_b["id"])
        direct, probe = direct_ab(100)                              # ... and must become "deliver" again
        assert via_b["wavelength"] == direct["wavelength"] == 0
        assert transit.lost == 0 and probe.lost == 0, (transit.lost, probe.lost)


def test_packet_network_shows_more_delay_and_jitter_than_the_lightpath(session):
    lp = session.client.create_lightpath("a", "b")
    try:
        apn = session.probe("a", "b", plane="apn", count=400, rate=400)
        packet = session.probe("a", "b", plane="packet", count=400, rate=400)
    finally:
        session.client.delete_lightpath(lp["id"])
    _, model_packet_ms = session.packet_path("a", "b")
    assert packet.forward_us.median > apn.forward_us.median + 100  # router delay + queueing (>= 150 us)
    # Spread as the interquartile range: probes the host held for milliseconds made the
    # lightpath's sd larger than the packet network's in one CI run (373 vs 308 us), and on a
    # noisier host its RFC 3550 jitter too (485 vs 371 us, with stalls up to 15 ms); the
    # middle half of the delays is what the packet network's 300 us of jitter widens.
    assert packet.forward_us.iqr > apn.forward_us.iqr + 100, (apn.forward_us, packet.forward_us)
    assert packet.forward_us.median / 1e3 > model_packet_ms
