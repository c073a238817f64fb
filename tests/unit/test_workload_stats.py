"""Request statistics: nearest-rank percentiles, jitter, goodput, gaps and bins, checked by hand."""

from __future__ import annotations

import math

import pytest

from twin.workloads.stats import (
    CSV_FIELDS,
    RecordsError,
    RequestRecord,
    goodput,
    jitter,
    latency_percentiles,
    longest_gap,
    percentile,
    read_requests_csv,
    slo_met,
    std_dev,
    summarize,
    time_bins,
)


def rec(send: float, latency_ms: float | None, outcome: str = "ok", site: str = "fuk") -> RequestRecord:
    answered = latency_ms is not None and outcome in ("ok", "refused", "error")
    return RequestRecord(send_unix=send, region="fuk", site=site if answered else "", instance="i1" if answered else "",
                         latency_ms=latency_ms, service_time_us=100 if outcome == "ok" else None,
                         outcome=outcome, status=200 if outcome == "ok" else None)


# --------------------------------------------------------------------------- percentiles


def test_nearest_rank_on_the_textbook_example():
    # Wikipedia's nearest-rank example: 15, 20, 35, 40, 50.
    values = [50, 15, 40, 20, 35]
    assert [percentile(values, p) for p in (5, 30, 40, 50, 100)] == [15, 20, 20, 35, 50]


def test_nearest_rank_on_1_to_1000():
    values = list(range(1000, 0, -1))  # 1..1000, unsorted
    # rank = ceil(p/100 * 1000): p50 -> 500th, p95 -> 950th, p99 -> 990th, p99.9 -> 999th.
    assert latency_percentiles(values) == {"p50": 500, "p95": 950, "p99": 990, "p999": 999}


def test_percentile_with_few_samples_is_the_maximum_for_high_ranks():
    # 10 samples: p95, p99 and p99.9 all need rank 10 (never interpolated below an observed value).
    values = [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 100.0]
    pct = latency_percentiles(values)
    assert pct["p50"] == 5 and pct["p95"] == 100.0 and pct["p99"] == 100.0 and pct["p999"] == 100.0


def test_percentile_edges():
    assert percentile([], 50) is None
    assert percentile([7.0], 0) == 7.0 and percentile([7.0], 100) == 7.0
    assert percentile([3, 1, 2], 0) == 1
    with pytest.raises(ValueError):
        percentile([1], 101)


# --------------------------------------------------------------------------- jitter, goodput


def test_jitter_sd_is_population_and_spread_is_p99_minus_p50():
    values = [2, 4, 4, 4, 5, 5, 7, 9]
    assert std_dev(values) == 2.0  # mean 5, squared deviations sum 32, / 8 = 4
    j = jitter(values)
    assert j.sd_ms == 2.0
    assert j.p99_p50_ms == 9 - 4  # p99 = 8th of 8, p50 = 4th of 8
    assert jitter([]).sd_ms is None


def test_goodput_counts_failures_in_the_denominator():
    records = [rec(0, 3.0), rec(1, 5.0), rec(2, 9.0), rec(3, None, "timeout"), rec(4, 1.0, "refused")]
    # ok and <= 5 ms: the first two of five.
    assert goodput(records, 5.0) == pytest.approx(2 / 5)
    assert goodput(records, 100.0) == pytest.approx(3 / 5)
    assert goodput([], 5.0) is None


def test_slo_met_needs_no_failure_and_the_percentile_and_the_jitter_budget():
    fine = [rec(i, 1.0 + (i % 10) * 0.1) for i in range(100)]  # 1.0 .. 1.9 ms
    assert slo_met(fine, latency_budget_ms=2.0, at_percentile=99)
    assert not slo_met(fine, latency_budget_ms=1.5, at_percentile=99)
    # p50 = 50th of 100 = 1.4, p99 = 99th = 1.9: p99 - p50 = 0.5.
    assert slo_met(fine, latency_budget_ms=2.0, at_percentile=99, jitter_budget_ms=0.6)
    assert not slo_met(fine, latency_budget_ms=2.0, at_percentile=99, jitter_budget_ms=0.4)
    assert not slo_met(fine + [rec(200, None, "timeout")], latency_budget_ms=2.0, at_percentile=99)


# --------------------------------------------------------------------------- gaps


def test_longest_gap_between_successes():
    # ok completions at 0.010, 1.010, 1.510 and 4.010 (send + latency); failures do not close a gap.
    records = [rec(0.0, 10.0), rec(1.0, 10.0), rec(1.5, 10.0), rec(2.0, None, "timeout"),
               rec(3.0, 2.0, "refused"), rec(4.0, 10.0)]
    gap = longest_gap(records)
    assert gap.start_unix == pytest.approx(1.51) and gap.end_unix == pytest.approx(4.01)
    assert gap.duration_s == pytest.approx(2.5)


def test_longest_gap_with_window_edges():
    records = [rec(1.0, 0.0), rec(2.0, 0.0)]
    assert longest_gap(records, 0.0, 10.0).duration_s == pytest.approx(8.0)  # 2.0 -> window end
    assert longest_gap(records, 0.0, 2.5).duration_s == pytest.approx(1.0)
    assert longest_gap([rec(1.0, None, "timeout")], 0.0, 3.0).duration_s == pytest.approx(3.0)
    assert longest_gap([rec(1.0, 0.0)]) is None  # one success, no edges: no gap to speak of
    # Completions outside the window are ignored.
    assert longest_gap([rec(-5.0, 0.0), rec(20.0, 0.0)], 0.0, 10.0).duration_s == pytest.approx(10.0)


# --------------------------------------------------------------------------- summaries and bins


def test_summarize_counts_outcomes_and_sites():
    records = [rec(0, 1.0, site="fuk"), rec(1, 2.0, site="osa"), rec(2, 3.0, site="osa"),
               rec(3, None, "timeout"), rec(4, None, "error")]
    s = summarize(records, latency_budget_ms=2.5)
    assert s.requests == 5 and s.failed == 2
    assert s.outcomes == {"ok": 3, "timeout": 1, "error": 1, "refused": 0}
    assert s.sites == {"fuk": 1, "osa": 2}
    assert s.p50_ms == 2.0 and s.p99_ms == 3.0 and s.mean_ms == pytest.approx(2.0)
    assert s.goodput == pytest.approx(2 / 5)
    assert s.jitter_sd_ms == pytest.approx(math.sqrt(2 / 3))
    assert s.as_dict()["failed"] == 2


def test_time_bins_split_by_send_time_and_keep_empty_bins():
    records = [rec(100.0, 1.0), rec(100.5, 2.0), rec(102.2, 3.0, "refused")]
    bins = time_bins(records, 1.0, start_unix=100.0, end_unix=104.0)
    assert [b.start_unix for b in bins] == [100.0, 101.0, 102.0, 103.0]
    assert [b.summary.requests for b in bins] == [2, 0, 1, 0]
    assert bins[0].summary.p50_ms == 1.0 and bins[2].summary.outcomes["refused"] == 1
    assert bins[1].summary.p50_ms is None
    with pytest.raises(ValueError):
        time_bins(records, 0)


# --------------------------------------------------------------------------- CSV


def test_csv_round_trip(tmp_path):
    records = [rec(1700000000.123456, 2.5), rec(1700000000.5, None, "timeout")]
    path = tmp_path / "r.csv"
    path.write_text(",".join(CSV_FIELDS) + "\n" + "".join(",".join(r.csv_row()) + "\n" for r in records))
    back = read_requests_csv(path)
    assert back == records


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(",".join(CSV_FIELDS) + "\n1.0,fuk,fuk,i,2.0,10,ok,200\n2.0,fuk,,,,,lost,\n")
    with pytest.raises(RecordsError, match=r"r\.csv:3: bad row"):
        read_requests_csv(path)
    path.write_text("a,b\n")
    with pytest.raises(RecordsError, match=r"r\.csv:1: header"):
        read_requests_csv(path)
    with pytest.raises(RecordsError, match="cannot read"):
        read_requests_csv(tmp_path / "missing.csv")
