"""The order in which the delay engine sends waiting frames (FairDepartures), without sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from twin.emulation.delay_schedule import ChannelSpec, DirectionQueues, FairDepartures, Lane, LinkSpec

MS = 1_000_000  # ns


def trunk() -> LinkSpec:
    return LinkSpec("a_b", "da", "db", channels=(ChannelSpec(100, "w0", delay_us=1000.0),
                                                 ChannelSpec(101, "w1", delay_us=1000.0)))


def drain(fair: FairDepartures, now: int) -> list:
    out = []
    while (due := fair.pop_due(now)) is not None:
        out.append(due)
    return out


def test_on_time_frames_leave_in_departure_order_across_lanes():
    fair, a, b = FairDepartures(), Lane("a"), Lane("b")
    for t in (10, 30, 50):
        fair.push(a, t, f"a{t}")
    for t in (20, 40):
        fair.push(b, t, f"b{t}")
    sent = []
    for now in range(0, 60, 5):          # the engine wakes at (or just after) each departure
        sent += [(now, frame) for _dep, _lane, frame in drain(fair, now)]
    assert sent == [(10, "a10"), (20, "b20"), (30, "a30"), (40, "b40"), (50, "a50")]


def test_nothing_leaves_before_its_departure():
    fair, a = FairDepartures(), Lane("a")
    fair.push(a, 100, "x")
    assert fair.pop_due(99) is None and fair.next_departure_ns() == 100 and len(fair) == 1
    assert fair.pop_due(100)[2] == "x" and fair.next_departure_ns() is None and len(fair) == 0


def test_behind_a_sparse_lane_waits_one_frame_per_busy_lane_not_the_whole_backlog():
    fair, bulk1, bulk2, sparse = FairDepartures(), Lane("bulk1"), Lane("bulk2"), Lane("sparse")
    for t in range(100):
        fair.push(bulk1, t, ("bulk1", t))
        fair.push(bulk2, t, ("bulk2", t))
    fair.push(sparse, 90, ("sparse", 90))
    sent = [frame for _dep, _lane, frame in drain(fair, 1000)]
    assert sent.index(("sparse", 90)) <= 2                       # strict order would put it at 180
    for name in ("bulk1", "bulk2"):                              # each lane keeps its own order
        assert [t for n, t in sent if n == name] == list(range(100))


def test_strict_order_sends_by_departure_even_when_behind():
    fair, bulk, sparse = FairDepartures(turns=False), Lane("bulk"), Lane("sparse")
    for t in range(100):
        fair.push(bulk, t * 10, t)
    fair.push(sparse, 905, "sparse")
    sent = [frame for _dep, _lane, frame in drain(fair, 10_000)]
    assert sent.index("sparse") == 91


def test_a_lane_served_while_behind_goes_back_to_waiting_for_its_next_departure():
    fair, a, b = FairDepartures(), Lane("a"), Lane("b")
    fair.push(a, 0, "a0")
    fair.push(a, 500, "a500")                                     # not yet due at 100
    fair.push(b, 0, "b0")
    assert [f for _d, _l, f in drain(fair, 100)] == ["a0", "b0"]
    assert fair.next_departure_ns() == 500
    assert fair.pop_due(499) is None and fair.pop_due(500)[2] == "a500"


def test_the_engine_lanes_are_one_per_channel_and_direction():
    queues = DirectionQueues(trunk(), 0)
    dep_w0, lane_w0 = queues.admit_to_lane(0, 100, 64)
    dep_w1, lane_w1 = queues.admit_to_lane(0, 101, 64)
    assert dep_w0 == dep_w1 == 1 * MS and lane_w0 is not lane_w1
    assert queues.admit_to_lane(5, 100, 64)[1] is lane_w0
    assert lane_w0.name == "a_b:a->b:100"
    assert DirectionQueues(trunk(), 1).lanes[100].name == "a_b:b->a:100"
    assert DirectionQueues(LinkSpec("l", "x", "y", delay_us=5.0), 0).admit_to_lane(0, None, 64)[1].name == "l:a->b:all"
    assert queues.admit_to_lane(0, 555, 64) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50)), min_size=1, max_size=60),
       st.lists(st.integers(0, 80), min_size=1, max_size=20), st.booleans())
def test_every_frame_leaves_once_in_lane_order_and_never_early(arrivals, wakeups, turns):
    fair = FairDepartures(turns)
    lanes = [Lane(str(i)) for i in range(5)]
    last = [0] * 5
    pushed = []
    for n, (lane_no, gap) in enumerate(arrivals):
        last[lane_no] += gap                                      # departures never decrease within a lane
        fair.push(lanes[lane_no], last[lane_no], (lane_no, n))
        pushed.append((lane_no, n))
    sent = []
    for now in sorted(wakeups) + [10**9]:
        for dep, lane, frame in drain(fair, now):
            assert dep <= now and lane is lanes[frame[0]]
            sent.append(frame)
    assert sorted(sent) == sorted(pushed) and len(fair) == 0
    for lane_no in range(5):
        assert [n for ln, n in sent if ln == lane_no] == [n for ln, n in pushed if ln == lane_no]
