"""Client-side figures of an emulated run, on hand-made request records."""

from __future__ import annotations

import pytest

from twin.experiment.analysis import (EngineBehind, TimeBase, interruption_ms, latency_rows, migration_effects,
                                      service_summary)
from twin.workloads.stats import RequestRecord


def rec(send: float, outcome: str = "ok", latency_ms: float | None = 5.0, region: str = "r1",
        site: str = "a") -> RequestRecord:
    if outcome != "ok":
        latency_ms, site = None, ""
    return RequestRecord(send_unix=send, region=region, site=site, instance="i1", latency_ms=latency_ms,
                         service_time_us=1000, outcome=outcome, status=200 if outcome == "ok" else None)


def test_no_failures_no_interruption():
    assert interruption_ms([rec(0.0), rec(0.1), rec(0.2)]) == 0.0


def test_interruption_spans_first_failure_to_next_success():
    records = [rec(0.0), rec(1.0, "refused"), rec(1.2, "error"), rec(1.5), rec(2.0, "timeout"), rec(2.1)]
    # runs: 1.0 -> 1.5 (500 ms) and 2.0 -> 2.1 (100 ms)
    assert interruption_ms(records) == pytest.approx(500.0)


def test_interruption_ignores_order_of_regions():
    records = [rec(1.5, region="r2"), rec(1.0, "refused", region="r1"), rec(0.5, region="r1")]
    assert interruption_ms(records) == pytest.approx(500.0)


def test_migration_effects_count_only_the_window():
    records = [rec(0.0, "refused"), rec(10.0), rec(10.5, "refused"), rec(10.8), rec(11.0, latency_ms=9.0),
               rec(30.0, "error")]
    effects = migration_effects(records, started_unix=10.2, finished_unix=11.0, timeout_s=1.0)
    assert effects["failed_requests"] == 1
    assert effects["interruption_ms"] == pytest.approx(300.0)
    assert effects["requests_during"] == 3  # 10.5, 10.8, 11.0
    assert effects["max_during_ms"] == 9.0


def test_latency_rows_bin_by_scenario_interval():
    base = TimeBase(start_unix=1000.0, compression=100.0)  # 1 wall second = 100 scenario seconds
    records = {"r1": [rec(1000.1, latency_ms=1.0), rec(1000.2, latency_ms=3.0), rec(1001.5, latency_ms=7.0),
                      rec(1001.6, "timeout")]}
    rows = latency_rows(records, "svc", 8.0, base, interval_s=100.0, duration_s=300.0,
                        site_at={0.0: "a", 100.0: "b", 200.0: "b"})
    assert [(r["t"], r["requests"], r["failed"], r["site"]) for r in rows] == [
        (0.0, 2, 0, "a"), (100.0, 2, 1, "b"), (200.0, 0, 0, "b")]
    assert rows[0]["p50_ms"] == 1.0 and rows[0]["p99_ms"] == 3.0 and rows[1]["p50_ms"] == 7.0


def test_service_summary_slo_counts_failures_as_misses():
    good = [rec(i * 0.01, latency_ms=2.0) for i in range(999)]
    one_bad = good + [rec(20.0, "error")]
    migrations = [{"ok": True, "failed_requests": 1, "interruption_ms": 40.0}]
    at_p99 = service_summary(one_bad, slo_ms=8.0, percentile_pct=99.0, jitter_budget_ms=None,
                             migrations=migrations)
    assert at_p99["slo_met"] is True and at_p99["failed"] == 1 and at_p99["failed_by_migration"] == 1
    assert at_p99["interruption_ms_max"] == 40.0 and at_p99["migrations"] == 1
    two_bad = one_bad + [rec(21.0, "error")]
    at_p999 = service_summary(two_bad, slo_ms=8.0, percentile_pct=99.9, jitter_budget_ms=None, migrations=[])
    assert at_p999["slo_met"] is False  # 2 of 1001 failed: more than 0.1 %
    slow = service_summary(good, slo_ms=1.5, percentile_pct=50.0, jitter_budget_ms=None, migrations=[])
    assert slow["slo_met"] is False


def test_service_summary_gives_each_user_region_its_own_verdict():
    near = [rec(i * 0.01, latency_ms=2.0 + (i % 10) * 0.1, region="fuk") for i in range(1000)]
    far = [rec(i * 0.01, latency_ms=5.0 + (i % 10) * 0.1, region="hij") for i in range(998)]
    far += [rec(10.0, latency_ms=30.0, region="hij")] * 2  # two slow answers in a thousand: p99.9 = 30 ms
    summary = service_summary(near + far, slo_ms=12.0, percentile_pct=99.9, jitter_budget_ms=None, migrations=[])
    regions = summary["regions"]
    assert regions["fuk"]["slo_met"] and regions["fuk"]["requests"] == 1000
    assert regions["fuk"]["p999_ms"] == pytest.approx(2.9)
    assert not regions["hij"]["slo_met"] and regions["hij"]["slo_percentile_ms"] == 30.0
    # over both regions the two slow answers are 0.1 %: the whole population's p99.9 hides
    # that Hiroshima's users miss it, which is why each region has its own verdict
    assert summary["slo_met"]
    failed = [rec(20.0 + i, "timeout", region="fuk") for i in range(2)]
    assert not service_summary(near + failed, slo_ms=12.0, percentile_pct=99.9, jitter_budget_ms=None,
                               migrations=[])["regions"]["fuk"]["slo_met"]  # 2 failed in 1,002 > 0.1 %


def test_engine_behind_meets_requests_under_way_only():
    behind = EngineBehind([(10.000, 10.004), (20.0, 20.0)])
    assert behind.met(9.990, 15.0)          # under way when the episode began
    assert behind.met(10.005, 1.0)          # sent within 2 ms after it ended: its frames may have waited
    assert not behind.met(10.007, 1.0)      # sent after that
    assert not behind.met(9.980, 5.0)       # answered before it began
    assert behind.met(19.999, 2.0) and not behind.met(20.003, 5.0)
    # a long episode that began early still covers requests long after later, short ones
    assert EngineBehind([(9.0, 30.0), (10.0, 10.004)]).met(25.0, 1.0)
    assert not EngineBehind([]).met(10.0, 1.0)


def test_engine_behind_from_stats_and_in_the_regions():
    stats = {"links": {"fuk_hij": {"a->b": {"late_episodes": [[100.0, 100.01, 12, 2500.0]]},
                                   "b->a": {"late_episodes": []}}}}
    behind = EngineBehind.from_stats(stats)
    records = [rec(99.995, latency_ms=15.0, region="hij"), rec(50.0, latency_ms=15.0, region="hij"),
               rec(100.0, latency_ms=5.0, region="hij"), rec(10.0, latency_ms=2.0, region="fuk")]
    regions = service_summary(records, slo_ms=12.0, percentile_pct=99.9, jitter_budget_ms=None, migrations=[],
                              engine_behind=behind)["regions"]
    assert regions["hij"]["over_budget"] == 2 and regions["hij"]["over_budget_engine_behind"] == 1
    assert regions["fuk"]["over_budget"] == 0 and regions["fuk"]["over_budget_engine_behind"] == 0
    plain = service_summary(records, slo_ms=12.0, percentile_pct=99.9, jitter_budget_ms=None, migrations=[])
    assert "over_budget_engine_behind" not in plain["regions"]["hij"]
