"""What clients saw in an emulated run: per-interval latency, migration interruptions, per-service summary.

Pure functions over the load generators' request records
(:class:`twin.workloads.stats.RequestRecord`) and the daemon's events. Scenario
time ``t`` and wall time relate by ``wall = start_unix + t / compression``.

Two measures of a migration's cost to clients, both reported:

``interruption_ms``
    the longest stretch in which requests were sent and none was answered: from
    the send time of the first failed request of a run of failures to the send
    time of the next request that succeeded. Zero when no request failed; this
    is the outage the service's users feel.
``longest_gap_ms``
    the longest time between two successful completions in the migration window
    (the issue's literal definition). With open-loop Poisson arrivals it includes
    natural gaps between arrivals (mean 1/rate), so it is only meaningful beside
    that rate, which is reported with it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from twin.workloads.stats import RequestRecord, longest_gap, percentile, summarize

# Requests sent this long before a migration started may still be affected by it.
WINDOW_BEFORE_S = 1.0


@dataclass(frozen=True)
class TimeBase:
    start_unix: float
    compression: float

    def t(self, unix: float) -> float:
        return (unix - self.start_unix) * self.compression

    def unix(self, t: float) -> float:
        return self.start_unix + t / self.compression


def interruption_ms(records: Sequence[RequestRecord]) -> float:
    """Longest run of failed requests, from its first send to the next ok send (see module doc)."""
    ordered = sorted(records, key=lambda r: r.send_unix)
    worst = 0.0
    run_start: float | None = None
    for r in ordered:
        if not r.ok:
            if run_start is None:
                run_start = r.send_unix
        elif run_start is not None:
            worst = max(worst, r.send_unix - run_start)
            run_start = None
    if run_start is not None and ordered:  # failures until the end of the window
        worst = max(worst, ordered[-1].send_unix - run_start)
    return worst * 1e3


def migration_effects(records: Sequence[RequestRecord], started_unix: float, finished_unix: float,
                      timeout_s: float) -> dict:
    """Failed requests, interruption and latency around one migration of one service."""
    lo, hi = started_unix - WINDOW_BEFORE_S, finished_unix + timeout_s
    window = [r for r in records if lo <= r.send_unix <= hi]
    during = [r for r in records if started_unix <= r.send_unix <= finished_unix]
    gap = longest_gap(window, lo, hi)
    lat = [r.latency_ms for r in during if r.ok and r.latency_ms is not None]
    rate = len(window) / (hi - lo) if hi > lo else 0.0
    return {
        "failed_requests": sum(1 for r in window if not r.ok),
        "interruption_ms": round(interruption_ms(window), 3),
        "longest_gap_ms": round(gap.duration_s * 1e3, 3) if gap else None,
        "request_rate_per_s": round(rate, 2),
        "requests_during": len(during),
        "p99_during_ms": percentile(lat, 99.0),
        "max_during_ms": max(lat) if lat else None,
    }


def latency_rows(records_by_region: dict[str, Sequence[RequestRecord]], service: str, slo_ms: float,
                 base: TimeBase, interval_s: float, duration_s: float,
                 site_at: dict[float, str]) -> list[dict]:
    """latency.csv rows: one per region and decision interval (docs/run-directory.md)."""
    rows = []
    steps = int(round(duration_s / interval_s))
    for region, records in sorted(records_by_region.items()):
        buckets: list[list[RequestRecord]] = [[] for _ in range(steps)]
        for r in records:
            k = int(base.t(r.send_unix) // interval_s)
            if 0 <= k < steps:
                buckets[k].append(r)
        for k, bucket in enumerate(buckets):
            t = k * interval_s
            s = summarize(bucket)
            rows.append({"t": t, "service": service, "region": region, "site": site_at.get(t, ""),
                         "requests": s.requests, "failed": s.failed, "p50_ms": s.p50_ms, "p95_ms": s.p95_ms,
                         "p99_ms": s.p99_ms, "p999_ms": s.p999_ms, "slo_ms": slo_ms})
    return rows


def _latency_slo(records: list[RequestRecord], slo_ms: float, percentile_pct: float) -> tuple[float | None, bool]:
    """(latency at the SLO percentile, whether it is in budget counting failures as misses)."""
    at = percentile([r.latency_ms for r in records if r.ok and r.latency_ms is not None], percentile_pct)
    ok_share = sum(1 for r in records if r.ok) / len(records) if records else 0.0
    return at, at is not None and at <= slo_ms and ok_share >= percentile_pct / 100.0


class EngineBehind:
    """When the userspace delay engine ran behind: its episodes of frames sent over 0.5 ms
    late (engine.json ``late_episodes``, Unix s). A request that met one while under way (from
    ``LEAD_S`` before it was sent to its answer) may carry the emulator's own delay. Episodes of
    every span count: the engine shares its CPU with the switches' packet path, so an episode
    anywhere means that CPU was short, and frames on spans without late ones waited too (a
    capture at both ends measured them, benchmarks/README.md eleventh pass)."""

    LEAD_S = 0.002  # a frame of the request may have waited in the engine just before

    def __init__(self, episodes: Iterable[tuple[float, float]]):
        ordered = sorted(episodes)
        self._firsts = [first for first, _ in ordered]
        # the latest end among the first i + 1 episodes: one lookup answers "any overlap?"
        self._latest_end = list(itertools.accumulate((last for _, last in ordered), max))

    @classmethod
    def from_stats(cls, stats: dict) -> "EngineBehind":
        """From the engine's stats (engine.json).

        Raises:
            KeyError, TypeError, ValueError, AttributeError: not the engine's stats.
        """
        return cls((float(first), float(last)) for span in stats["links"].values() for d in span.values()
                   for first, last, _frames, _worst_us in d.get("late_episodes", []))

    def met(self, send_unix: float, latency_ms: float) -> bool:
        j = bisect.bisect_right(self._firsts, send_unix + latency_ms / 1e3)
        return j > 0 and self._latest_end[j - 1] >= send_unix - self.LEAD_S


def region_summaries(records: Iterable[RequestRecord], slo_ms: float, percentile_pct: float,
                     engine_behind: EngineBehind | None = None) -> dict[str, dict]:
    """Per user region: what its users saw, and whether the latency SLO held for them alone;
    with ``engine_behind``, how many of its requests over budget met the delay engine behind."""
    by_region: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_region.setdefault(r.region, []).append(r)
    out = {}
    for region, rows in sorted(by_region.items()):
        s = summarize(rows, slo_ms)
        at, met = _latency_slo(rows, slo_ms, percentile_pct)
        over = [r for r in rows if r.ok and r.latency_ms is not None and r.latency_ms > slo_ms]
        out[region] = {"requests": s.requests, "failed": s.failed, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
                       "p999_ms": s.p999_ms, "slo_percentile_ms": at, "slo_met": bool(met),
                       "over_budget": len(over)}
        if engine_behind is not None:
            out[region]["over_budget_engine_behind"] = sum(engine_behind.met(r.send_unix, r.latency_ms)
                                                           for r in over)
    return out


def service_summary(records: Iterable[RequestRecord], *, slo_ms: float, percentile_pct: float,
                    jitter_budget_ms: float | None, migrations: Sequence[dict],
                    engine_behind: EngineBehind | None = None) -> dict:
    """The per-service block of summary.json."""
    records = list(records)
    s = summarize(records, slo_ms)
    at, latency_ok = _latency_slo(records, slo_ms, percentile_pct)
    jitter_ok = jitter_budget_ms is None or (s.jitter_p99_p50_ms is not None
                                             and s.jitter_p99_p50_ms <= jitter_budget_ms)
    total = sum(s.sites.values())
    ok_moves = [m for m in migrations if m.get("ok")]
    return {
        "requests": s.requests, "failed": s.failed,
        "failed_by_migration": sum(int(m.get("failed_requests") or 0) for m in migrations),
        "p50_ms": s.p50_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms, "p999_ms": s.p999_ms,
        "jitter_sd_ms": s.jitter_sd_ms, "jitter_p99_p50_ms": s.jitter_p99_p50_ms,
        "slo": {"latency_ms": slo_ms, "percentile": percentile_pct, "jitter_ms": jitter_budget_ms},
        "slo_met": bool(latency_ok and jitter_ok), "goodput": s.goodput,
        "migrations": len(ok_moves),
        "interruption_ms_max": max((float(m.get("interruption_ms") or 0.0) for m in ok_moves), default=0.0),
        "sites": {site: round(n / total, 4) for site, n in sorted(s.sites.items())} if total else {},
        "outcomes": s.outcomes,
        "regions": region_summaries(records, slo_ms, percentile_pct, engine_behind),
    }
