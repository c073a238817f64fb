"""Pure parts of the link-delay layer: jitter, no-reorder scheduling, router queue, netem args, probe stats."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.emulation.delay_schedule import (
    DelayEngineError,
    DepartureScheduler,
    JitterSampler,
    LinkSpec,
    RouterQueue,
    validate_links,
)
from twin.emulation.link_backends import (
    LinkBackendError,
    choose_backend,
    netem_commands,
    netem_limit,
    rate_limit_commands,
)
from twin.emulation.probe import (
    DelayStats,
    ProbeSummary,
    Sample,
    count_reordered,
    percentile,
    rfc3550_jitter,
    summarize,
    to_json,
)

# ---------------------------------------------------------------- jitter


@pytest.mark.parametrize(
    ("dist", "expected_sd"),
    [("uniform", 100 / math.sqrt(3)), ("normal", 100.0), ("paretonormal", 100.0)],
)
def test_jitter_mean_zero_and_sd_as_configured(dist, expected_sd):
    sampler = JitterSampler(dist, 100.0, seed=1)
    xs = [sampler.sample_us() for _ in range(40_000)]
    assert abs(statistics.fmean(xs)) < 3.0
    assert statistics.pstdev(xs) == pytest.approx(expected_sd, rel=0.05)


def test_uniform_jitter_bounded():
    sampler = JitterSampler("uniform", 50.0, seed=2)
    assert all(-50.0 <= sampler.sample_us() <= 50.0 for _ in range(5000))


def test_paretonormal_has_heavier_right_tail_than_normal():
    pn = JitterSampler("paretonormal", 100.0, seed=3)
    xs = [pn.sample_us() for _ in range(40_000)]
    m = statistics.fmean(xs)
    skew = statistics.fmean([(x - m) ** 3 for x in xs]) / statistics.pstdev(xs) ** 3
    assert skew > 0.3


def test_jitter_is_seeded():
    a = JitterSampler("normal", 10.0, seed=42)
    b = JitterSampler("normal", 10.0, seed=42)
    assert [a.sample_us() for _ in range(10)] == [b.sample_us() for _ in range(10)]


def test_none_and_zero_jitter_sample_zero():
    assert JitterSampler("none", 0.0).sample_us() == 0.0
    assert JitterSampler("normal", 0.0).sample_us() == 0.0


def test_unknown_distribution_rejected():
    with pytest.raises(DelayEngineError, match="unknown jitter distribution"):
        JitterSampler("gamma", 1.0)


# ---------------------------------------------------------------- scheduling


def test_departure_is_arrival_plus_delay_without_jitter():
    sched = DepartureScheduler(2500.0)
    assert sched.departure(1_000_000) == 1_000_000 + 2_500_000
    assert sched.departure(2_000_000) == 2_000_000 + 2_500_000


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=200),
    jitter_us=st.floats(min_value=0, max_value=500),
    dist=st.sampled_from(["uniform", "normal", "paretonormal"]),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_departures_never_reorder_and_never_precede_arrival(gaps, jitter_us, dist, seed):
    sched = DepartureScheduler(100.0, JitterSampler(dist, jitter_us, seed=seed))
    t, last = 0, -1
    for gap in gaps:
        t += gap
        dep = sched.departure(t, 100)
        assert dep >= last
        assert dep >= t
        last = dep


def test_large_jitter_becomes_delay_not_reordering():
    # Frames 1 us apart with 1 ms jitter: order kept, mean delay pushed above the model.
    sched = DepartureScheduler(1000.0, JitterSampler("normal", 1000.0, seed=5))
    deps = [sched.departure(i * 1000) for i in range(2000)]
    assert deps == sorted(deps)
    mean_delay = statistics.fmean(d - i * 1000 for i, d in enumerate(deps))
    assert mean_delay > 1_000_000


# ---------------------------------------------------------------- router queue


def _mean_router_delay_us(load, n=3000, seed=9):
    q = RouterQueue(load, 1e9, seed=seed)
    # Sparse real frames (1 ms apart) see the stationary queue of the cross traffic.
    return statistics.fmean(q.delay_ns(i * 1_000_000, 1500) for i in range(n)) / 1000


def test_router_delay_increases_with_load():
    means = [_mean_router_delay_us(load) for load in (0.0, 0.3, 0.6, 0.85)]
    assert means == sorted(means)
    assert means[0] == pytest.approx(12.0)  # no cross traffic: own service time, 1500 B at 1 Gb/s


def test_router_delay_matches_md1_mean_wait():
    load, s_us = 0.5, 12.0
    expected_wait = load * s_us / (2 * (1 - load))  # M/D/1 (Pollaczek-Khinchine)
    measured_wait = _mean_router_delay_us(load, n=20_000) - s_us
    assert measured_wait == pytest.approx(expected_wait, rel=0.15)


def test_router_queue_rejects_bad_load():
    with pytest.raises(DelayEngineError):
        RouterQueue(1.0, 1e9)


# ---------------------------------------------------------------- link specs


def test_validate_links_reports_every_problem_at_once():
    bad = [
        LinkSpec("x", "veth-with-a-very-long-name", "b", delay_us=-1),
        LinkSpec("y", "b", "c", delay_us=1, jitter_us=5),
        LinkSpec("x", "d", "e", delay_us=1),
    ]
    with pytest.raises(DelayEngineError) as err:
        validate_links(bad)
    msg = str(err.value)
    for fragment in ("not a valid interface name", "delay_us", "duplicate link name", "already used",
                     "name a distribution"):
        assert fragment in msg


def test_linkspec_from_dict_rejects_unknown_fields():
    with pytest.raises(DelayEngineError, match="unknown field"):
        LinkSpec.from_dict({"name": "l", "iface_a": "a", "iface_b": "b", "delay_us": 1, "delay_ms": 1})


# ---------------------------------------------------------------- netem / rate arguments


def test_netem_limit_is_bandwidth_delay_product_with_floor():
    # 10 Gb/s x 5 ms / 1500 B = 4166.7 -> 4167 packets
    assert netem_limit(5000, 0, 10e9) == 4167
    # jitter counts towards the worst-case delay
    assert netem_limit(5000, 1000, 10e9) == 5000
    assert netem_limit(500, 0, 1e9) == 1000
    assert netem_limit(5000, 0, None) == 1000


def test_netem_commands_rate_stage_then_netem_with_rate():
    cmds = netem_commands("veth1", delay_us=2500, jitter_us=100, jitter_dist="normal", rate_bps=10e9, netns="ns1")
    assert cmds[0][:3] == ["tc", "-n", "ns1"]
    assert "htb" in cmds[0] and "htb" in cmds[1]
    netem = cmds[-1]
    i = netem.index("netem")
    assert netem[i:] == ["netem", "limit", "2167", "delay", "2500us", "100us", "distribution", "normal",
                         "rate", "10000000000bit"]
    assert netem[netem.index("parent") + 1] == "1:1"


def test_netem_commands_always_has_rate_so_it_cannot_reorder():
    cmds = netem_commands("veth1", delay_us=1000, jitter_us=50, jitter_dist="uniform")
    assert len(cmds) == 1  # no rate stage without a rate
    netem = cmds[0]
    assert "rate" in netem and "distribution" not in netem  # uniform is netem's default
    assert "reorder" not in netem


def test_netem_commands_reject_jitter_without_distribution():
    with pytest.raises(LinkBackendError, match="jitter_dist"):
        netem_commands("v", delay_us=1, jitter_us=1)


def test_rate_limit_tbf_and_htb():
    (tbf,) = rate_limit_commands("v", 500e6, netns="n")
    assert tbf[:8] == ["tc", "-n", "n", "qdisc", "replace", "dev", "v", "root"]
    assert tbf[8:12] == ["tbf", "rate", "500000000bit", "burst"]
    htb = rate_limit_commands("v", 1e9, kind="htb")
    assert htb[1][htb[1].index("rate") + 1] == "1000000000bit"
    with pytest.raises(LinkBackendError):
        rate_limit_commands("v", 0)


def test_choose_backend_rejects_unknown():
    with pytest.raises(LinkBackendError, match="unknown"):
        choose_backend("fast")
    assert choose_backend("userspace") == "userspace"


# ---------------------------------------------------------------- probe statistics


def _sample(seq, rseq, fwd_us, back_us, t1=None):
    t1 = seq * 1_000_000 if t1 is None else t1
    t2 = t1 + int(fwd_us * 1000)
    t3 = t2 + 10_000  # 10 us in the reflector
    t4 = t3 + int(back_us * 1000)
    return Sample(seq, rseq, t1, t2, t3, t4)


def test_percentile_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1.0
    assert percentile([1, 2, 3, 4], 100) == 4.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_rfc3550_jitter_hand_checked():
    # D = 16, 0, 32: J1 = 16/16 = 1; J2 = 1 + (0-1)/16 = 0.9375; J3 = 0.9375 + (32-0.9375)/16 = 2.87890625
    assert rfc3550_jitter([100, 116, 116, 148]) == pytest.approx(2.87890625)
    assert rfc3550_jitter([5]) == 0.0


def test_count_reordered():
    assert count_reordered([0, 1, 2, 3]) == 0
    assert count_reordered([0, 2, 1, 3]) == 1
    assert count_reordered([3, 0, 1, 2]) == 3


def test_summary_loss_duplicates_reordering_and_delays():
    # sent 0..5; 4 lost; 2 duplicated; 3 overtakes 2 on the way back
    samples = [
        _sample(0, 1, 100, 200),
        _sample(1, 2, 110, 210),
        _sample(3, 4, 130, 230),
        _sample(2, 3, 120, 220),
        _sample(2, 3, 120, 220),
        _sample(5, 5, 150, 250),
    ]
    s = summarize(samples, sent=6, rate_pps_requested=1000)
    assert (s.sent, s.received, s.lost, s.duplicates) == (6, 5, 1, 1)
    assert s.loss_ratio == pytest.approx(1 / 6)
    assert s.reordered == 1 and s.reordered_backward == 1 and s.reordered_forward == 0
    assert s.forward_us.n == 5
    assert s.forward_us.min == 100 and s.forward_us.max == 150
    assert s.forward_us.median == 120
    assert s.forward_us.mean == pytest.approx(122.0)
    # forward values in reflector order: 100, 110, 120, 130, 150 -> D = 10, 10, 10, 20
    j = 0.0
    for d in (10, 10, 10, 20):
        j += (d - j) / 16
    assert s.forward_us.rfc3550_jitter == pytest.approx(j)
    assert s.forward_us.stdev == pytest.approx(statistics.pstdev([100, 110, 120, 130, 150]))
    assert s.forward_us.iqr == pytest.approx(130 - 110)
    assert s.rtt_us.median == pytest.approx(120 + 220)  # reflector time removed


def test_summary_json_round_trip_and_no_replies():
    s = summarize([_sample(0, 1, 100, 100)], sent=2, rate_pps_requested=10, rate_pps_achieved=10)
    again = ProbeSummary.from_json(to_json(s))
    assert again == s
    empty = summarize([], sent=3)
    assert empty.lost == 3 and empty.forward_us.n == 0
    doc = to_json(empty)
    assert "NaN" not in doc  # strict JSON
    assert ProbeSummary.from_json(doc).lost == 3


def test_delay_stats_of_constant_series():
    d = DelayStats.of([5.0] * 10)
    assert (d.min, d.median, d.p99, d.max, d.stdev, d.rfc3550_jitter, d.iqr) == (5, 5, 5, 5, 0, 0, 0)


def test_probe_json_without_iqr_still_reads():
    """Output of an older probe (before ``iqr``) still parses; the field is NaN."""
    s = summarize([_sample(0, 1, 100, 100), _sample(1, 2, 110, 100)], sent=2, rate_pps_requested=10)
    doc = json.loads(to_json(s))
    for key in ("forward_us", "backward_us", "rtt_us"):
        del doc["summary"][key]["iqr"]
    again = ProbeSummary.from_json(doc)
    assert math.isnan(again.forward_us.iqr) and again.forward_us.median == s.forward_us.median


def test_delay_schedule_doctests():
    import doctest

    from twin.emulation import delay_schedule
    result = doctest.testmod(delay_schedule)
    assert result.failed == 0 and result.attempted > 0
