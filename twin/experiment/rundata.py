"""Read a run directory (docs/run-directory.md) back into arrays for the report.

Reads only the files the contract names, checks each CSV header and every number,
and raises :class:`RunDirError` naming the file (and line) and the fix. Columns are
parsed in bulk with numpy so a year of model-only intervals loads in about a second.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twin.errors import TwinError

SIGNALS_COLUMNS = ("t", "site", "area", "surplus_mw", "renewable_share", "carbon_g_per_kwh",
                   "price_yen_per_kwh")
PLACEMENTS_COLUMNS = ("t", "service", "site")
LATENCY_COLUMNS = ("t", "service", "region", "site", "requests", "failed", "p50_ms", "p95_ms",
                   "p99_ms", "p999_ms", "slo_ms")
REQUESTS_COLUMNS = ("t", "region", "site", "latency_ms", "outcome")
PROBES_COLUMNS = ("t", "src", "dst", "plane", "forward_ms", "backward_ms", "rtt_ms")
OUTCOMES = ("ok", "timeout", "error", "refused")
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms", "p999_ms")

REMAKE = "run `twin run SCENARIO --out DIR` again, or give the folder of a finished run"


class RunDirError(TwinError):
    """A run directory is missing a file or holds a malformed one."""

    exit_code = 2


@dataclass
class LatencySeries:
    """One service's latency per decision interval, worst region first (max over regions)."""

    t_s: np.ndarray
    requests: np.ndarray
    failed: np.ndarray
    percentiles_ms: dict[str, np.ndarray]
    slo_ms: np.ndarray


@dataclass
class SignalSeries:
    """One site's power signals per decision interval."""

    area: str
    t_s: np.ndarray
    surplus_mw: np.ndarray
    renewable_share: np.ndarray
    carbon_g_per_kwh: np.ndarray
    price_yen_per_kwh: np.ndarray


@dataclass
class RequestStats:
    """What requests/SERVICE.csv recorded for one service."""

    outcomes: dict[str, int]
    latency_ms: np.ndarray          # answered requests only


@dataclass
class ProbeSeries:
    """Probe samples of one lightpath (or packet-network pair) on one plane."""

    t_s: np.ndarray
    forward_ms: np.ndarray
    backward_ms: np.ndarray
    rtt_ms: np.ndarray


@dataclass
class RunData:
    run_dir: Path
    run: dict
    summary: dict
    events: list[dict]
    signals: dict[str, SignalSeries]                  # by site id
    placements: dict[str, list[tuple[float, str]]]    # by service: (t_s, site) at each change
    placement_share: dict[str, dict[str, float]]      # by service: site -> share of intervals
    latency: dict[str, LatencySeries]                 # by service
    requests: dict[str, RequestStats] = field(default_factory=dict)
    probes: dict[tuple[str, str, str], ProbeSeries] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def service_ids(self) -> list[str]:
        """Every service named anywhere, in run.json order first."""
        ids = [str(s["id"]) for s in self.run.get("services", [])]
        for more in (self.summary.get("services", {}), self.placements, self.latency):
            ids += [s for s in more if s not in ids]
        return ids

    @property
    def site_ids(self) -> list[str]:
        ids = [str(s["id"]) for s in self.run.get("sites", [])]
        for more in (self.signals, *self.placement_share.values()):
            ids += [s for s in more if s not in ids]
        return ids


# --------------------------------------------------------------------------- files


def _load_json_object(path: Path, required: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise RunDirError(f"{path}: missing; {REMAKE}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: not valid JSON ({err}); {REMAKE}") from None
    if not isinstance(doc, dict):
        raise RunDirError(f"{path}: expected a JSON object at the top; {REMAKE}")
    missing = [key for key in required if key not in doc]
    if missing:
        raise RunDirError(f"{path}: missing key(s) {', '.join(missing)}; {REMAKE}")
    return doc


def _load_events(path: Path) -> list[dict]:
    if not path.is_file():
        raise RunDirError(f"{path}: missing; {REMAKE}")
    events = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunDirError(f"{path}:{line_no}: not a JSON object ({err.msg}); {REMAKE}") from None
            if not isinstance(event, dict) or "kind" not in event or not _is_number(event.get("t")):
                raise RunDirError(f"{path}:{line_no}: each line needs a number 't' and a 'kind'; {REMAKE}")
            events.append(event)
    return events


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Columns of a CSV by name (only the contract's; extra columns are ignored)."""
    if not path.is_file():
        raise RunDirError(f"{path}: missing; {REMAKE}")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise RunDirError(f"{path}: empty, expected the header {','.join(columns)}; {REMAKE}")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise RunDirError(f"{path}:1: header lacks {', '.join(missing)}; the header must be "
                              f"{','.join(columns)} (docs/run-directory.md)")
        rows = list(reader)
    width = len(header)
    for line_no, row in enumerate(rows, 2):
        if len(row) != width:
            raise RunDirError(f"{path}:{line_no}: {len(row)} fields where the header has {width}; "
                              f"{REMAKE}")
    if not rows:
        return {c: () for c in columns}
    transposed = list(zip(*rows))
    return {c: transposed[header.index(c)] for c in columns}


def _floats(values: tuple[str, ...], path: Path, column: str, *, empty_ok: bool) -> np.ndarray:
    """Parse a column of numbers; empty cells become NaN where the contract allows them."""
    try:
        return np.array(values, dtype=float)
    except ValueError:
        pass
    out = np.empty(len(values))
    for i, text in enumerate(values):
        if text == "" and empty_ok:
            out[i] = math.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise RunDirError(f"{path}:{i + 2}: column {column}: {text!r} is not a number; "
                              f"{REMAKE}") from None
    return out


def _group(keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row indices per distinct key, keys in first-seen order."""
    if not keys:
        return {}
    uniques, first, inverse = np.unique(np.array(keys), return_index=True, return_inverse=True)
    order = np.argsort(first)
    groups = {}
    sort_idx = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[sort_idx], np.arange(len(uniques) + 1))
    for u in order:
        groups[str(uniques[u])] = sort_idx[bounds[u]:bounds[u + 1]]
    return groups


# --------------------------------------------------------------------------- tables


def _load_signals(path: Path) -> dict[str, SignalSeries]:
    cols = _read_csv(path, SIGNALS_COLUMNS)
    t = _floats(cols["t"], path, "t", empty_ok=False)
    surplus = _floats(cols["surplus_mw"], path, "surplus_mw", empty_ok=True)
    share = _floats(cols["renewable_share"], path, "renewable_share", empty_ok=True)
    carbon = _floats(cols["carbon_g_per_kwh"], path, "carbon_g_per_kwh", empty_ok=True)
    price = _floats(cols["price_yen_per_kwh"], path, "price_yen_per_kwh", empty_ok=True)
    out = {}
    for site, idx in _group(cols["site"]).items():
        idx = idx[np.argsort(t[idx], kind="stable")]
        out[site] = SignalSeries(cols["area"][idx[0]], t[idx], surplus[idx], share[idx], carbon[idx],
                                 price[idx])
    return out


def _load_placements(path: Path) -> tuple[dict[str, list[tuple[float, str]]], dict[str, dict[str, float]]]:
    cols = _read_csv(path, PLACEMENTS_COLUMNS)
    t = _floats(cols["t"], path, "t", empty_ok=False)
    sites = cols["site"]
    changes: dict[str, list[tuple[float, str]]] = {}
    shares: dict[str, dict[str, float]] = {}
    for service, idx in _group(cols["service"]).items():
        idx = idx[np.argsort(t[idx], kind="stable")]
        steps: list[tuple[float, str]] = []
        counts: dict[str, int] = {}
        for i in idx:
            site = sites[i]
            counts[site] = counts.get(site, 0) + 1
            if not steps or steps[-1][1] != site:
                steps.append((float(t[i]), site))
        changes[service] = steps
        shares[service] = {site: n / len(idx) for site, n in counts.items()}
    return changes, shares


def _load_latency(path: Path) -> dict[str, LatencySeries]:
    cols = _read_csv(path, LATENCY_COLUMNS)
    t = _floats(cols["t"], path, "t", empty_ok=False)
    requests = _floats(cols["requests"], path, "requests", empty_ok=False)
    failed = _floats(cols["failed"], path, "failed", empty_ok=False)
    slo = _floats(cols["slo_ms"], path, "slo_ms", empty_ok=True)
    pct = {p: _floats(cols[p], path, p, empty_ok=True) for p in PERCENTILES}
    out = {}
    for service, idx in _group(cols["service"]).items():
        idx = idx[np.argsort(t[idx], kind="stable")]
        ts = t[idx]
        # One point per interval: several regions share a t; keep the worst region's figure.
        starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        with np.errstate(invalid="ignore"):
            out[service] = LatencySeries(
                t_s=ts[starts],
                requests=np.add.reduceat(requests[idx], starts),
                failed=np.add.reduceat(failed[idx], starts),
                percentiles_ms={p: np.fmax.reduceat(v[idx], starts) for p, v in pct.items()},
                slo_ms=np.fmin.reduceat(slo[idx], starts),
            )
    return out


def _load_requests(folder: Path) -> dict[str, RequestStats]:
    out = {}
    for path in sorted(folder.glob("*.csv")):
        cols = _read_csv(path, REQUESTS_COLUMNS)
        outcomes = {o: 0 for o in OUTCOMES}
        for outcome in cols["outcome"]:
            if outcome not in outcomes:
                raise RunDirError(f"{path}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}; "
                                  f"{REMAKE}")
            outcomes[outcome] += 1
        latency = _floats(cols["latency_ms"], path, "latency_ms", empty_ok=True)
        out[path.stem] = RequestStats(outcomes, latency[~np.isnan(latency)])
    return out


def _load_probes(path: Path) -> dict[tuple[str, str, str], ProbeSeries]:
    cols = _read_csv(path, PROBES_COLUMNS)
    t = _floats(cols["t"], path, "t", empty_ok=False)
    fwd = _floats(cols["forward_ms"], path, "forward_ms", empty_ok=True)
    bwd = _floats(cols["backward_ms"], path, "backward_ms", empty_ok=True)
    rtt = _floats(cols["rtt_ms"], path, "rtt_ms", empty_ok=True)
    keys = tuple(f"{s}\0{d}\0{p}" for s, d, p in zip(cols["src"], cols["dst"], cols["plane"]))
    out = {}
    for key, idx in _group(keys).items():
        src, dst, plane = key.split("\0")
        out[(src, dst, plane)] = ProbeSeries(t[idx], fwd[idx], bwd[idx], rtt[idx])
    return out


def load_run(run_dir: Path) -> RunData:
    """Read every file of a run directory the report uses.

    Raises:
        RunDirError: the directory or a required file is missing, or a file is malformed
            (the message names the file, the line where known, and the fix).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory; give the folder written by "
                          f"`twin run SCENARIO --out DIR`")
    run = _load_json_object(run_dir / "run.json", ("scenario", "mode", "sites", "services"))
    for key in ("sites", "services"):
        items = run[key]
        if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
            raise RunDirError(f"{run_dir / 'run.json'}: '{key}' must be a list of objects with an 'id'; "
                              f"{REMAKE}")
    summary = _load_json_object(run_dir / "summary.json", ("services", "energy"))
    if not isinstance(summary["services"], dict) or not all(isinstance(v, dict)
                                                            for v in summary["services"].values()):
        raise RunDirError(f"{run_dir / 'summary.json'}: 'services' must map service ids to objects; "
                          f"{REMAKE}")
    if not isinstance(summary["energy"], dict):
        raise RunDirError(f"{run_dir / 'summary.json'}: 'energy' must be an object; {REMAKE}")
    events = _load_events(run_dir / "events.jsonl")
    placements, shares = _load_placements(run_dir / "placements.csv")
    data = RunData(
        run_dir=run_dir, run=run, summary=summary, events=events,
        signals=_load_signals(run_dir / "signals.csv"),
        placements=placements, placement_share=shares,
        latency=_load_latency(run_dir / "latency.csv"),
    )
    if (run_dir / "requests").is_dir():
        data.requests = _load_requests(run_dir / "requests")
    if (run_dir / "probes.csv").is_file():
        data.probes = _load_probes(run_dir / "probes.csv")
    duration = run.get("duration")
    if _is_number(duration) and duration > 0:
        data.duration_s = float(duration)
    else:
        ends = [s.t_s[-1] for s in data.signals.values() if len(s.t_s)]
        ends += [s.t_s[-1] for s in data.latency.values() if len(s.t_s)]
        data.duration_s = float(max(ends, default=0.0))
    return data
