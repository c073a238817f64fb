"""Statistics of client request records: percentiles, jitter, goodput, interruptions, time bins.

Pure: no I/O except :func:`read_requests_csv` for the load generator's file.

Definitions (the same everywhere in the twin):

- **Percentile** ``p`` of ``n`` values: *nearest rank*, the smallest value such
  that at least ``p`` % of the values are less than or equal to it, i.e. the
  ``ceil(p/100 * n)``-th smallest (1-based; rank 1 for p = 0). Always a latency
  that was really observed, and never optimistic for an SLO check with few samples.
- **Latency statistics** use only requests with outcome ``ok``; failures are
  counted separately and weigh on goodput.
- **Jitter**: the population standard deviation of the ok latencies (divide by
  ``n``), and the spread ``p99 - p50``.
- **Goodput**: the share of *all* requests (failed ones included) that are ``ok``
  with ``latency <= latency budget``. Per request; the jitter budget is a
  property of the whole set and is checked by :func:`slo_met`.
- **Interruption**: the longest time without a successful response inside a
  window: between consecutive ok completions (``send + latency``), and from the
  window's edges to the first and after the last one when edges are given.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twin.errors import TwinError

OUTCOMES = ("ok", "timeout", "error", "refused")
CSV_FIELDS = ("send_unix", "region", "site", "instance", "latency_ms", "service_time_us", "outcome", "status")


class RecordsError(TwinError):
    """A request-records file cannot be read."""


@dataclass(frozen=True)
class RequestRecord:
    """One client request as the load generator saw it.

    ``site``/``instance`` are empty and ``latency_ms`` is None when no answer came
    (timeout, connection refused or reset); ``status`` is the HTTP status or None.
    """

    send_unix: float
    region: str
    site: str
    instance: str
    latency_ms: float | None
    service_time_us: int | None
    outcome: str
    status: int | None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def done_unix(self) -> float | None:
        """When the answer was complete (None without an answer)."""
        return None if self.latency_ms is None else self.send_unix + self.latency_ms / 1000.0

    def csv_row(self) -> list[str]:
        return [f"{self.send_unix:.6f}", self.region, self.site, self.instance,
                "" if self.latency_ms is None else f"{self.latency_ms:.3f}",
                "" if self.service_time_us is None else str(self.service_time_us),
                self.outcome, "" if self.status is None else str(self.status)]


# --------------------------------------------------------------------------- basic statistics


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (see the module docstring); None for no values.

    >>> percentile([15, 20, 35, 40, 50], 30), percentile([15, 20, 35, 40, 50], 40)
    (20, 20)
    >>> percentile([15, 20, 35, 40, 50], 100), percentile([3, 1, 2], 50)
    (50, 2)

    Raises:
        ValueError: ``p`` is outside 0..100.
    """
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile {p} is outside 0..100")
    if not values:
        return None
    ordered = sorted(values)
    # A small epsilon keeps 99.9/100*1000 (= 999.0000000000001 in floating point) at rank 999.
    rank = max(1, math.ceil(p / 100.0 * len(ordered) - 1e-9))
    return ordered[rank - 1]


PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


def latency_percentiles(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/p99.9 (keys ``p50``, ``p95``, ``p99``, ``p999``), nearest rank."""
    ordered = sorted(latencies_ms)
    return {key: percentile(ordered, p) for key, p in PERCENTILES.items()}


def std_dev(values: Sequence[float]) -> float | None:
    """Population standard deviation; None for no values.

    >>> std_dev([2, 4, 4, 4, 5, 5, 7, 9])
    2.0
    """
    if not values:
        return None
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


@dataclass(frozen=True)
class Jitter:
    sd_ms: float | None
    p99_p50_ms: float | None


def jitter(latencies_ms: Sequence[float]) -> Jitter:
    """Standard deviation and p99 - p50 of latencies."""
    if not latencies_ms:
        return Jitter(None, None)
    return Jitter(std_dev(latencies_ms), percentile(latencies_ms, 99) - percentile(latencies_ms, 50))


def ok_latencies(records: Iterable[RequestRecord]) -> list[float]:
    return [r.latency_ms for r in records if r.ok and r.latency_ms is not None]


def goodput(records: Sequence[RequestRecord], latency_budget_ms: float) -> float | None:
    """Share of all requests that are ok and within the latency budget; None for no requests."""
    if not records:
        return None
    good = sum(1 for r in records if r.ok and r.latency_ms is not None and r.latency_ms <= latency_budget_ms)
    return good / len(records)


def slo_met(records: Sequence[RequestRecord], latency_budget_ms: float, at_percentile: float,
            jitter_budget_ms: float | None = None) -> bool:
    """The service-level view: every request answered, the latency at ``at_percentile`` within
    budget and, when given, p99 - p50 within the jitter budget."""
    if not records or any(not r.ok for r in records):
        return False
    lat = ok_latencies(records)
    if percentile(lat, at_percentile) > latency_budget_ms:
        return False
    if jitter_budget_ms is not None and jitter(lat).p99_p50_ms > jitter_budget_ms:
        return False
    return True


# --------------------------------------------------------------------------- interruptions


@dataclass(frozen=True)
class Gap:
    """The longest stretch without a successful response: [start_unix, end_unix]."""

    start_unix: float
    end_unix: float

    @property
    def duration_s(self) -> float:
        return self.end_unix - self.start_unix


def longest_gap(records: Iterable[RequestRecord], start_unix: float | None = None,
                end_unix: float | None = None) -> Gap | None:
    """Longest interval without an ok completion inside ``[start_unix, end_unix]``.

    Given edges count as boundaries (a window with no success at all is one gap);
    without edges only gaps between successes count, and fewer than two successes
    give None.
    """
    done = sorted(d for r in records if r.ok and (d := r.done_unix) is not None
                  and (start_unix is None or d >= start_unix) and (end_unix is None or d <= end_unix))
    points = ([start_unix] if start_unix is not None else []) + done + ([end_unix] if end_unix is not None else [])
    if len(points) < 2:
        return None
    best = max(range(len(points) - 1), key=lambda i: points[i + 1] - points[i])
    return Gap(points[best], points[best + 1])


# --------------------------------------------------------------------------- summaries


@dataclass
class Summary:
    """What a reader wants first about a set of requests."""

    requests: int
    outcomes: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    mean_ms: float | None
    jitter_sd_ms: float | None
    jitter_p99_p50_ms: float | None
    goodput: float | None
    sites: dict[str, int] = field(default_factory=dict)
    mean_service_time_us: float | None = None

    @property
    def failed(self) -> int:
        return self.requests - self.outcomes.get("ok", 0)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "failed": self.failed, "outcomes": dict(self.outcomes),
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms, "p999_ms": self.p999_ms,
                "mean_ms": self.mean_ms, "jitter_sd_ms": self.jitter_sd_ms,
                "jitter_p99_p50_ms": self.jitter_p99_p50_ms, "goodput": self.goodput, "sites": dict(self.sites),
                "mean_service_time_us": self.mean_service_time_us}


def summarize(records: Sequence[RequestRecord], latency_budget_ms: float | None = None) -> Summary:
    """Counts per outcome and per answering site, latency percentiles and jitter (ok only),
    goodput when a budget is given."""
    lat = ok_latencies(records)
    pct = latency_percentiles(lat)
    jit = jitter(lat)
    service = [r.service_time_us for r in records if r.ok and r.service_time_us is not None]
    outcomes = Counter({o: 0 for o in OUTCOMES})
    outcomes.update(r.outcome for r in records)
    return Summary(
        requests=len(records), outcomes=dict(outcomes),
        p50_ms=pct["p50"], p95_ms=pct["p95"], p99_ms=pct["p99"], p999_ms=pct["p999"],
        mean_ms=math.fsum(lat) / len(lat) if lat else None,
        jitter_sd_ms=jit.sd_ms, jitter_p99_p50_ms=jit.p99_p50_ms,
        goodput=goodput(records, latency_budget_ms) if latency_budget_ms is not None else None,
        sites=dict(Counter(r.site for r in records if r.ok and r.site)),
        mean_service_time_us=math.fsum(service) / len(service) if service else None,
    )


@dataclass
class BinSummary:
    start_unix: float
    end_unix: float
    summary: Summary


def time_bins(records: Sequence[RequestRecord], bin_s: float, start_unix: float | None = None,
              end_unix: float | None = None, latency_budget_ms: float | None = None) -> list[BinSummary]:
    """Summaries per bin ``[start + k*bin_s, start + (k+1)*bin_s)`` by send time; empty bins included.

    Raises:
        ValueError: ``bin_s`` is not positive.
    """
    if bin_s <= 0:
        raise ValueError(f"bin width {bin_s} s must be positive")
    if not records and (start_unix is None or end_unix is None):
        return []
    t0 = start_unix if start_unix is not None else min(r.send_unix for r in records)
    t1 = end_unix if end_unix is not None else max(r.send_unix for r in records) + 1e-9
    n_bins = max(1, math.ceil((t1 - t0) / bin_s - 1e-9))
    buckets: list[list[RequestRecord]] = [[] for _ in range(n_bins)]
    for r in records:
        k = math.floor((r.send_unix - t0) / bin_s)
        if 0 <= k < n_bins:
            buckets[k].append(r)
    return [BinSummary(t0 + k * bin_s, t0 + (k + 1) * bin_s, summarize(b, latency_budget_ms))
            for k, b in enumerate(buckets)]


# --------------------------------------------------------------------------- CSV


def read_requests_csv(path: Path | str) -> list[RequestRecord]:
    """Read a load generator file (header ``send_unix,region,site,...``) in file order.

    Raises:
        RecordsError: missing file, wrong header, or a row that does not parse (with its line).
    """
    path = Path(path)
    records: list[RequestRecord] = []
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(header) != CSV_FIELDS:
                raise RecordsError(f"{path}:1: header is {header}, expected {','.join(CSV_FIELDS)}; "
                                   "pass a file written by twin.workloads.loadgen")
            for row in reader:
                try:
                    send, region, site, instance, lat, svc, outcome, status = row
                    if outcome not in OUTCOMES:
                        raise ValueError(f"outcome {outcome!r}")
                    records.append(RequestRecord(
                        send_unix=float(send), region=region, site=site, instance=instance,
                        latency_ms=float(lat) if lat else None, service_time_us=int(svc) if svc else None,
                        outcome=outcome, status=int(status) if status else None))
                except ValueError as err:
                    raise RecordsError(f"{path}:{reader.line_num}: bad row ({err}); "
                                       "the file is damaged or not from the load generator") from None
    except OSError as err:
        raise RecordsError(f"{path}: cannot read ({err.strerror}); check the path") from None
    return records
