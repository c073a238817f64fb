"""The delay engine's trunk logic without sockets: VLAN demux, per-channel isolation, token-bucket pacing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from twin.emulation.delay_schedule import (
    ChannelSpec,
    DelayEngineError,
    DirectionQueues,
    LinkSpec,
    TokenBucket,
    frame_vid,
    validate_links,
)

MS = 1_000_000  # ns


def trunk(**pace) -> LinkSpec:
    """A span with two wavelengths (VLAN 100, 101) and the packet network untagged."""
    return LinkSpec("a_b", "da", "db", channels=(
        ChannelSpec(100, "w0", delay_us=1000.0, pace_bps=pace.get("w0")),
        ChannelSpec(101, "w1", delay_us=1000.0, pace_bps=pace.get("w1")),
        ChannelSpec(None, "pk", delay_us=1150.0, jitter_us=300.0, jitter_dist="normal", background_load=0.3,
                    rate_bps=100e6)))


def tagged(vid: int, payload: int = 46) -> bytes:
    return bytes(12) + b"\x81\x00" + vid.to_bytes(2, "big") + b"\x08\x00" + bytes(payload)


def test_frame_vid_reads_802_1q_and_ignores_untagged():
    assert frame_vid(tagged(101)) == 101
    assert frame_vid(tagged(0x0FFF | 0xE000)) == 0x0FFF     # priority bits are not the id
    assert frame_vid(bytes(12) + b"\x88\xa8\x00\x07" + bytes(50)) == 7
    assert frame_vid(bytes(12) + b"\x08\x00" + bytes(50)) is None
    assert frame_vid(b"\x00" * 10) is None


def test_demux_gives_each_vlan_its_channels_delay():
    q = DirectionQueues(trunk(), 0)
    assert q.admit(0, 100, 64) == 1 * MS
    assert q.admit(0, 101, 64) == 1 * MS
    packet = q.admit(0, None, 64)
    assert packet is not None and packet != 1 * MS           # untagged: the packet network's router model
    assert q.stats[100].frames == 1 and q.stats[101].frames == 1 and q.stats[None].frames == 1


def test_unknown_vlan_is_dropped_and_counted():
    q = DirectionQueues(trunk(), 0)
    assert q.admit(0, 555, 64) is None
    assert q.unknown_vid == 1
    assert q.stats_dict()["unknown_vid_drops"] == 1


def test_a_link_without_channels_takes_every_frame():
    q = DirectionQueues(LinkSpec("l", "x", "y", delay_us=500.0), 1)
    assert q.admit(0, None, 64) == 500_000
    assert q.admit(10, 123, 64) == 500_010


def test_a_burst_on_one_wavelength_does_not_delay_another():
    q = DirectionQueues(trunk(w0=10e6, w1=10e6), 0)
    # 200 full frames at once on w0: far beyond its 10 Mbit/s, so they queue (and the shaper drops the tail).
    deps0 = [q.admit(0, 100, 1500) for _ in range(200)]
    assert any(d is None for d in deps0)
    kept = [d for d in deps0 if d is not None]
    assert kept == sorted(kept) and kept[-1] > 10 * MS       # the queue of w0 grew by milliseconds
    # w1 at the same instant: exactly its own delay, as if w0 were idle.
    assert q.admit(0, 101, 64) == 1 * MS
    assert q.stats[101].paced_drops == 0


def test_directions_are_independent():
    a_to_b, b_to_a = DirectionQueues(trunk(w0=10e6), 0), DirectionQueues(trunk(w0=10e6), 1)
    for _ in range(50):
        a_to_b.admit(0, 100, 1500)
    assert b_to_a.admit(0, 100, 64) == 1 * MS


def test_token_bucket_holds_the_configured_rate_over_time():
    rate = 50e6
    tb = TokenBucket(rate, limit_us=20_000)
    sent_bytes, t, last = 0, 0, 0
    # Offer 3x the rate for one second: what passes must be the rate (+ one burst), in order.
    for i in range(int(3 * rate / 8 / 1500)):
        t = i * 1500 * 8 * 1e9 / (3 * rate)
        release = tb.release_ns(int(t), 1500)
        if release is not None:
            assert release >= last and release >= int(t)
            last = release
            sent_bytes += 1500
    assert sent_bytes * 8 == pytest.approx(rate, rel=0.03)
    assert tb.drops > 0
    # No queue beyond the limit: the last release is at most 20 ms after the last arrival.
    assert last - t <= 20 * MS


def test_token_bucket_lets_a_burst_through_then_spaces_frames():
    tb = TokenBucket(8e6, burst_bytes=3000)                   # 1 us per byte
    assert [tb.release_ns(0, 1500) for _ in range(2)] == [0, 0]
    assert tb.release_ns(0, 1500) == 1_500_000
    assert tb.release_ns(10 * MS, 1500) == 10 * MS            # idle long enough: bucket full again


def test_pacing_adds_no_delay_to_sparse_probes():
    q = DirectionQueues(trunk(w0=100e6), 0)
    assert [q.admit(i * MS, 100, 64) - i * MS for i in range(100)] == [1 * MS] * 100


def test_set_pace_changes_one_channel_only():
    q = DirectionQueues(trunk(w0=10e6, w1=10e6), 0)
    q.set_pace(100, None)
    deps = [q.admit(0, 100, 1500) for _ in range(100)]
    assert deps == [1 * MS] * 100                              # unshaped now
    assert q.channels[101].pacer is not None
    with pytest.raises(DelayEngineError):
        q.set_pace(555, 1e6)


def test_advance_shortens_every_channel_of_the_direction_and_never_below_zero():
    q = DirectionQueues(trunk(), 0)
    q.set_advance(80.0)
    assert q.admit(0, 100, 64) == 920_000 and q.admit(0, 101, 64) == 920_000
    q.set_advance(5000.0)                                      # more than the delay: held 0, not negative
    assert q.admit(10 * MS, 100, 64) == 10 * MS
    q.set_advance(0.0)
    assert q.admit(20 * MS, 100, 64) == 21 * MS                # back to the configured 1 ms
    with pytest.raises(DelayEngineError):
        q.set_advance(-1.0)


def test_control_file_applies_advances(tmp_path):
    from twin.emulation.delay_engine import apply_control_file

    class Engine:
        def __init__(self):
            self.calls = []

        def set_pace(self, *args):
            self.calls.append(("pace", *args))

        def set_advance(self, *args):
            self.calls.append(("advance", *args))

    engine, path = Engine(), tmp_path / "control.json"
    path.write_text(json.dumps({"seq": 7, "advance": [{"link": "a_b", "direction": "b->a", "advance_us": 42}]}))
    apply_control_file(engine, path)
    assert engine.calls == [("advance", "a_b", "b->a", 42.0)]
    assert json.loads((tmp_path / "control.json.ack").read_text()) == {"seq": 7, "error": None}
    path.write_text(json.dumps({"seq": 8, "advance": [{"link": "a_b"}]}))   # no direction: refused, said why
    apply_control_file(engine, path)
    ack = json.loads((tmp_path / "control.json.ack").read_text())
    assert ack["seq"] == 8 and "direction" in ack["error"]


def test_channels_validated_and_survive_json():
    link = trunk(w0=100e6)
    assert LinkSpec.from_dict(json.loads(json.dumps(dataclasses.asdict(link)))) == link
    bad = LinkSpec("t", "x", "y", channels=(ChannelSpec(100), ChannelSpec(100), ChannelSpec(5000),
                                             ChannelSpec(7, pace_bps=-1)))
    with pytest.raises(DelayEngineError) as err:
        validate_links([bad])
    text = str(err.value)
    assert "two channels with vid 100" in text and "vid must be" in text and "pace_bps" in text
    with pytest.raises(DelayEngineError, match="unknown field"):
        LinkSpec.from_dict({"name": "t", "iface_a": "x", "iface_b": "y", "channels": [{"vid": 1, "delay": 3}]})


# --- transit carry-over ----------------------------------------------------------------------

def test_transit_memory_recalls_a_frame_back_within_the_window_only():
    from twin.emulation.delay_schedule import TransitMemory
    mem = TransitMemory(window_ns=1_000_000, key_bytes=8)
    frame = b"ABCDEFGH-payload"
    mem.remember(mem.key(frame), 10_000_000)
    assert mem.recall(mem.key(frame), 10_300_000) == 10_000_000
    assert mem.recall(mem.key(b"ABCDEFGH-other-tail"), 10_300_000) == 10_000_000  # same headers: same frame
    assert mem.recall(mem.key(b"ABCDEFGX-payload"), 10_300_000) is None
    assert mem.recall(mem.key(frame), 9_999_999) is None       # before it left: a different frame
    assert mem.recall(mem.key(frame), 11_000_000) is None      # outside the window
    assert mem.carried == 2


def test_transit_memory_expires_old_departures_but_keeps_a_newer_send_of_the_same_key():
    from twin.emulation.delay_schedule import TransitMemory
    mem = TransitMemory(window_ns=1_000)
    mem.remember(b"k", 0)
    mem.remember(b"old", 100)
    mem.remember(b"k", 5_000)  # the same frame sent again later
    mem.expire(5_500)
    assert len(mem) == 1
    assert mem.recall(b"k", 5_200) == 5_000
    mem.expire(10_000)
    assert len(mem) == 0


def test_a_carried_frame_keeps_the_configured_delay_despite_the_advance():
    from twin.emulation.delay_schedule import DepartureScheduler
    first, later = DepartureScheduler(1000.0), DepartureScheduler(1000.0)
    first.set_advance(80.0)
    later.set_advance(80.0)
    assert first.departure(0) == 920_000                      # entering the optical layer: advanced
    assert later.departure(0, transit=True) == 1_000_000     # in transit: already paid on the first span


def test_switch_passes_left_per_route():
    from twin.emulation.session import switch_passes
    route = ["a", "b", "c", "d"]
    assert switch_passes(route, calibrated=True) == 1
    assert switch_passes(route, calibrated=True, carried=True) == 1
    assert switch_passes(route, calibrated=False, carried=True) == 2
    assert switch_passes(["a"], calibrated=False, carried=True) == 1
    assert switch_passes(route, calibrated=False) == 4


def test_the_engine_process_pins_itself_to_one_cpu():
    """A veth queues a sent frame on the sending CPU: an engine free to move between CPUs
    could have two frames switched out of order, so tune_process always leaves one CPU."""
    import os
    import subprocess
    import sys

    code = ("import os; from twin.emulation.delay_engine import tune_process; "
            "failed = tune_process(freeze_gc=False, cpus={cpus}); print(sorted(os.sched_getaffinity(0)), failed)")
    allowed = sorted(os.sched_getaffinity(0))
    for cpus, expected in ((None, [allowed[-1]]), (set(allowed), [allowed[-1]]), ({allowed[0]}, [allowed[0]])):
        out = subprocess.run([sys.executable, "-c", code.format(cpus=cpus)], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip() == f"{expected} []", (cpus, out)
    if len(allowed) > 1:
        # started from a process kept off the engine's CPU (as the twin's own are): cpus still win
        out = subprocess.run(["taskset", "-c", str(allowed[0]), sys.executable, "-c",
                              code.format(cpus={allowed[-1]})], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"{[allowed[-1]]} []", out
    out = subprocess.run([sys.executable, "-c", code.format(cpus={max(allowed) + 64})], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith(f"{allowed} ['cpus [{max(allowed) + 64}]"), out  # refused, said, left as it was
