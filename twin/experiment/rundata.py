"""Read a run directory (docs/run-directory.md) back into arrays for the report.

Reads only the files the contract names, checks each CSV header and every number,
and raises :class:`RunDirError` naming the file (and line) and the fix. Columns are
parsed in bulk with numpy so a year of model-only intervals loads in about a second.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from operator import itemgetter
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
class EngineLate:
    """What engine.json recorded (userspace link backend): frames forwarded, and those sent
    more than 0.5 ms late, in scenario time."""

    frames: int
    late_frames: int
    max_late_ms: float
    t_s: np.ndarray                 # scenario time each logged episode of late frames began
    late_ms: np.ndarray             # its worst lateness
    episode_frames: np.ndarray      # its late frames
    late_by_direction: dict[str, int]  # "span:a->b" -> late frames


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
    engine: EngineLate | None = None
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
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    try:
        # One decode for the whole file is several times faster than one per line (a year: 175k lines).
        events = json.loads("[" + ",".join(line for _, line in numbered) + "]")
    except json.JSONDecodeError:
        events = None
    if events is None or len(events) != len(numbered):
        for line_no, line in numbered:     # find the line to name
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                raise RunDirError(f"{path}:{line_no}: not a JSON object ({err.msg}); {REMAKE}") from None
        raise RunDirError(f"{path}: not one JSON object per line; {REMAKE}")
    for (line_no, _), event in zip(numbered, events):
        if not isinstance(event, dict) or "kind" not in event or not _is_number(event.get("t")):
            raise RunDirError(f"{path}:{line_no}: each line needs a number 't' and a 'kind'; {REMAKE}")
    return events


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_header(path: Path, columns: tuple[str, ...]) -> tuple[list[str], bytes]:
    """(header, whole file) after checking that the header names every contract column."""
    if not path.is_file():
        raise RunDirError(f"{path}: missing; {REMAKE}")
    raw = path.read_bytes()
    first = raw.split(b"\n", 1)[0].decode("utf-8", "replace")
    header = [h.strip() for h in next(csv.reader([first]), [])]
    if not header:
        raise RunDirError(f"{path}: empty, expected the header {','.join(columns)}; {REMAKE}")
    missing = [c for c in columns if c not in header]
    if missing:
        raise RunDirError(f"{path}:1: header lacks {', '.join(missing)}; the header must be "
                          f"{','.join(columns)} (docs/run-directory.md)")
    return header, raw


def _commas_per_line_are(raw: bytes, count: int) -> bool:
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if not raw.endswith(b"\n"):
        ends = np.r_[ends, len(buf)]
    per_line = np.diff(np.searchsorted(np.flatnonzero(buf == ord(",")), np.r_[-1, ends]))
    return bool((per_line == count).all())


def _nan_if_empty(text: str) -> float:
    return float(text) if text.strip() else math.nan


def _read_fast(raw: bytes, header: list[str], columns: tuple[str, ...], numbers: tuple[str, ...],
               empty_ok: tuple[str, ...]) -> dict[str, np.ndarray]:
    """numpy's C reader; raises ValueError on anything unusual so the exact reader can name it."""
    if b'"' in raw or not _commas_per_line_are(raw, len(header) - 1):
        raise ValueError("quoted fields or ragged rows")
    text = raw.decode("utf-8")
    common = dict(delimiter=",", skiprows=1, comments=None, ndmin=2, encoding=None)
    out: dict[str, np.ndarray] = {}
    if numbers:
        usecols = [header.index(c) for c in numbers]
        try:
            values = np.loadtxt(io.StringIO(text), usecols=usecols, dtype=float, **common)
        except ValueError:
            if not empty_ok:
                raise
            converters = {header.index(c): _nan_if_empty for c in empty_ok}
            values = np.loadtxt(io.StringIO(text), usecols=usecols, dtype=float, converters=converters,
                                **common)
        out.update({c: values[:, i] for i, c in enumerate(numbers)})
    strings = [c for c in columns if c not in numbers]
    if strings:
        values = np.loadtxt(io.StringIO(text), usecols=[header.index(c) for c in strings], dtype=str,
                            **common)
        out.update({c: values[:, i] for i, c in enumerate(strings)})
    return out


def _read_exact(path: Path, raw: bytes, header: list[str], columns: tuple[str, ...],
                numbers: tuple[str, ...], empty_ok: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The csv module, row by row: slower, but names the line and column of a problem."""
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8", "replace"), newline="")))[1:]
    width = len(header)
    for line_no, row in enumerate(rows, 2):
        if len(row) != width:
            raise RunDirError(f"{path}:{line_no}: {len(row)} fields where the header has {width}; "
                              f"{REMAKE}")
    out = {}
    for c in columns:
        values = tuple(map(itemgetter(header.index(c)), rows))
        out[c] = (_floats(values, path, c, empty_ok=c in empty_ok) if c in numbers
                  else np.array(values, dtype=str))
    return out


def _read_table(path: Path, columns: tuple[str, ...], numbers: tuple[str, ...],
                empty_ok: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The contract's columns of a CSV by name (extra columns are ignored), numbers as floats.

    A year of model-only rows is parsed by numpy's C reader; any file it refuses is read
    again by the csv module, which finds and names the bad line.
    """
    header, raw = _read_header(path, columns)
    if not raw.partition(b"\n")[2].strip():
        return {c: np.empty(0, dtype=float if c in numbers else str) for c in columns}
    try:
        return _read_fast(raw, header, columns, numbers, empty_ok)
    except ValueError:
        return _read_exact(path, raw, header, columns, numbers, empty_ok)


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


def _group(keys) -> dict[str, np.ndarray]:
    """Row indices per distinct key, keys in first-seen order."""
    if not len(keys):
        return {}
    uniques, first, inverse = np.unique(np.asarray(keys, dtype=str), return_index=True, return_inverse=True)
    order = np.argsort(first)
    groups = {}
    sort_idx = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[sort_idx], np.arange(len(uniques) + 1))
    for u in order:
        groups[str(uniques[u])] = sort_idx[bounds[u]:bounds[u + 1]]
    return groups


# --------------------------------------------------------------------------- tables


def _load_signals(path: Path) -> dict[str, SignalSeries]:
    numbers = ("t", "surplus_mw", "renewable_share", "carbon_g_per_kwh", "price_yen_per_kwh")
    cols = _read_table(path, SIGNALS_COLUMNS, numbers, empty_ok=numbers[1:])
    t = cols["t"]
    out = {}
    for site, idx in _group(cols["site"]).items():
        idx = idx[np.argsort(t[idx], kind="stable")]
        out[site] = SignalSeries(str(cols["area"][idx[0]]), t[idx], cols["surplus_mw"][idx],
                                 cols["renewable_share"][idx], cols["carbon_g_per_kwh"][idx],
                                 cols["price_yen_per_kwh"][idx])
    return out


def _load_placements(path: Path) -> tuple[dict[str, list[tuple[float, str]]], dict[str, dict[str, float]]]:
    cols = _read_table(path, PLACEMENTS_COLUMNS, ("t",))
    t, sites = cols["t"], cols["site"]
    changes: dict[str, list[tuple[float, str]]] = {}
    shares: dict[str, dict[str, float]] = {}
    for service, idx in _group(cols["service"]).items():
        idx = idx[np.argsort(t[idx], kind="stable")]
        served = sites[idx]
        steps = np.flatnonzero(np.r_[True, served[1:] != served[:-1]])
        changes[service] = [(float(t[idx[i]]), str(served[i])) for i in steps]
        names, counts = np.unique(served, return_counts=True)
        order = sorted(range(len(names)), key=lambda k: np.flatnonzero(served == names[k])[0])
        shares[service] = {str(names[k]): int(counts[k]) / len(idx) for k in order}
    return changes, shares


def _load_latency(path: Path) -> dict[str, LatencySeries]:
    numbers = ("t", "requests", "failed", *PERCENTILES, "slo_ms")
    cols = _read_table(path, LATENCY_COLUMNS, numbers, empty_ok=(*PERCENTILES, "slo_ms"))
    t, requests, failed, slo = cols["t"], cols["requests"], cols["failed"], cols["slo_ms"]
    pct = {p: cols[p] for p in PERCENTILES}
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
        cols = _read_table(path, REQUESTS_COLUMNS, ("t", "latency_ms"), empty_ok=("latency_ms",))
        names, counts = np.unique(cols["outcome"], return_counts=True)
        unknown = [str(n) for n in names if n not in OUTCOMES]
        if unknown:
            raise RunDirError(f"{path}: outcome {unknown[0]!r} is not one of {', '.join(OUTCOMES)}; "
                              f"{REMAKE}")
        outcomes = {o: 0 for o in OUTCOMES}
        outcomes.update({str(n): int(c) for n, c in zip(names, counts)})
        latency = cols["latency_ms"]
        out[path.stem] = RequestStats(outcomes, latency[~np.isnan(latency)])
    return out


def _load_probes(path: Path) -> dict[tuple[str, str, str], ProbeSeries]:
    lost_ok = ("forward_ms", "backward_ms", "rtt_ms")
    cols = _read_table(path, PROBES_COLUMNS, ("t", *lost_ok), empty_ok=lost_ok)
    t, fwd, bwd, rtt = cols["t"], cols["forward_ms"], cols["backward_ms"], cols["rtt_ms"]
    keys = tuple(f"{s}\0{d}\0{p}" for s, d, p in zip(cols["src"], cols["dst"], cols["plane"]))
    out = {}
    for key, idx in _group(keys).items():
        src, dst, plane = key.split("\0")
        out[(src, dst, plane)] = ProbeSeries(t[idx], fwd[idx], bwd[idx], rtt[idx])
    return out


def _compression(run: dict) -> float:
    """Scenario seconds per wall second (run.json ``time_compression``; 1 when absent)."""
    return float(run["time_compression"]) if _is_number(run.get("time_compression")) else 1.0


def scenario_start_unix(run: dict, events: list[dict]) -> float | None:
    """Wall clock (Unix s) of scenario time 0: run.json's ``start_unix``, or (older runs)
    from the events' ``wall`` stamps; None for a model-only run."""
    if _is_number(run.get("start_unix")):
        return float(run["start_unix"])
    compression = _compression(run)
    starts = [e["wall"] - e["t"] / compression for e in events if _is_number(e.get("wall"))]
    return min(starts) if starts else None


def engine_totals(stats: dict) -> dict:
    """The delay engine's stats (engine.json) in three numbers: frames forwarded, frames sent
    more than 0.5 ms late, the worst lateness (ms). summary.json's ``engine``.

    Raises:
        KeyError, TypeError, ValueError, AttributeError: not the engine's stats.
    """
    directions = [d for span in stats["links"].values() for d in span.values()]
    return {"frames": sum(int(d["frames"]) for d in directions),
            "late_frames": sum(int(d.get("late_frames", 0)) for d in directions),
            "max_lateness_ms": round(max((float(d.get("max_lateness_us", 0.0)) for d in directions),
                                         default=0.0) / 1e3, 3)}


def _load_engine(path: Path, run: dict, events: list[dict]) -> EngineLate:
    doc = _load_json_object(path, ("links",))
    try:
        totals = engine_totals(doc)
        by_direction = {f"{span}:{direction}": int(d.get("late_frames", 0))
                        for span, directions in doc["links"].items() for direction, d in directions.items()}
        episodes = sorted((float(first), float(us) / 1e3, int(n))
                          for directions in doc["links"].values() for d in directions.values()
                          for first, _last, n, us in d.get("late_episodes", []))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"{path}: not the delay engine's stats ({err!r}); {REMAKE}") from None
    start = scenario_start_unix(run, events)
    if start is None:
        episodes = []
    t_s = np.array([(first - start) * _compression(run) for first, _, _ in episodes], dtype=float)
    keep = t_s >= 0  # not the clients' warm-up before scenario time 0
    return EngineLate(frames=totals["frames"], late_frames=totals["late_frames"],
                      max_late_ms=totals["max_lateness_ms"], t_s=t_s[keep],
                      late_ms=np.array([ms for _, ms, _ in episodes], dtype=float)[keep],
                      episode_frames=np.array([n for _, _, n in episodes], dtype=int)[keep],
                      late_by_direction=by_direction)


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
    if (run_dir / "engine.json").is_file():
        data.engine = _load_engine(run_dir / "engine.json", run, events)
    duration = run.get("duration")
    if _is_number(duration) and duration > 0:
        data.duration_s = float(duration)
    else:
        ends = [s.t_s[-1] for s in data.signals.values() if len(s.t_s)]
        ends += [s.t_s[-1] for s in data.latency.values() if len(s.t_s)]
        data.duration_s = float(max(ends, default=0.0))
    return data
