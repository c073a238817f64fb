"""Writer of the run directory (docs/run-directory.md), for model-only and emulated runs alike.

Open it, append events and rows as they happen, write ``run.json`` and
``summary.json`` when known, close. ``events.jsonl`` and the CSV files are flushed
on every :meth:`RunDirWriter.flush` and on close, so a run stopped half-way still
leaves readable files; JSON documents are written to a temporary name and renamed.

    with RunDirWriter(out_dir) as run_dir:
        run_dir.write_run(run_info)
        run_dir.event(0.0, "decision", service="farm", ...)
        run_dir.placement(0.0, "farm", "tyo")
        run_dir.write_summary(summary)
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from twin.errors import TwinError

FORMAT = 1
SIGNALS_COLUMNS = ("t", "site", "area", "surplus_mw", "renewable_share", "carbon_g_per_kwh",
                   "price_yen_per_kwh")
PLACEMENTS_COLUMNS = ("t", "service", "site")
LATENCY_COLUMNS = ("t", "service", "region", "site", "requests", "failed", "p50_ms", "p95_ms", "p99_ms",
                   "p999_ms", "slo_ms")
REQUESTS_COLUMNS = ("t", "region", "site", "latency_ms", "outcome")
PROBES_COLUMNS = ("t", "src", "dst", "plane", "forward_ms", "backward_ms", "rtt_ms")
OUTCOMES = ("ok", "timeout", "error", "refused")
EVENT_KINDS = ("decision", "migration", "event", "warning")
# Files this writer makes; only these are replaced when ``overwrite`` is given.
OWN_FILES = ("run.json", "events.jsonl", "signals.csv", "placements.csv", "latency.csv", "summary.json",
             "probes.csv")


def cell(value: Any) -> str:
    """A CSV cell: empty for None/NaN, integers as integers, floats without float noise.

    >>> [cell(v) for v in (None, float("nan"), 3, 2.0, 0.1 + 0.2, 1234.56789, "fuk")]
    ['', '', '3', '2', '0.3', '1234.568', 'fuk']
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def format_column(values: Sequence[float], decimals: int = 3) -> list[str]:
    """Numbers as CSV cells with a fixed number of decimals; NaN and None become empty cells.

    >>> format_column([1.0, float("nan"), 2.345678, None], 2)
    ['1.00', '', '2.35', '']
    """
    fmt = f"{{:.{decimals}f}}".format
    return ["" if v is None or v != v else fmt(v) for v in values]


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays sneak in from the simulator.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _clean(value: Any) -> Any:
    """NaN and infinity are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_json_default)  # one encoder, not one per line


def write_json(path: Path, doc: dict) -> None:
    """Write a JSON document atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(doc), indent=2, ensure_ascii=False, default=_json_default) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


class RunDirWriter:
    """Appends a run's records to ``out_dir`` in the documented format.

    Raises:
        TwinError: ``out_dir`` already holds a run (unless ``overwrite``), or is not
            a folder that can be written.
    """

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False):
        self.path = Path(out_dir)
        if self.path.exists() and not self.path.is_dir():
            raise TwinError(f"{self.path}: exists and is not a folder; give a folder path for the run directory")
        existing = [name for name in OWN_FILES if (self.path / name).exists()]
        if existing and not overwrite:
            raise TwinError(f"{self.path}: already holds a run ({', '.join(existing)}); "
                            f"give a new folder or remove the old run")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in existing:
                (self.path / name).unlink()
            self._events = open(self.path / "events.jsonl", "w", encoding="utf-8")
        except OSError as err:
            raise TwinError(f"{self.path}: cannot write the run directory ({err.strerror}); "
                            f"choose a folder you can write") from None
        self._csv: dict[str, tuple[Any, Any]] = {}
        for name, columns in (("signals.csv", SIGNALS_COLUMNS), ("placements.csv", PLACEMENTS_COLUMNS),
                              ("latency.csv", LATENCY_COLUMNS)):
            self._open_csv(name, columns)
        self.closed = False

    # -- plumbing ------------------------------------------------------------------------
    def _open_csv(self, name: str, columns: Sequence[str]):
        entry = self._csv.get(name)
        if entry is None:
            path = self.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "w", encoding="utf-8", newline="")
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            entry = (handle, writer)
            self._csv[name] = entry
        return entry[1]

    def _rows(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        writer = self._open_csv(name, columns)
        width = len(columns)
        out = []
        for row in rows:
            if len(row) != width:
                raise TwinError(f"{name}: a row has {len(row)} values for {width} columns "
                                f"({', '.join(columns)})")
            out.append([cell(v) for v in row])
        writer.writerows(out)

    def write_columns(self, name: str, columns: Sequence[Sequence[str]]) -> None:
        """Rows given column by column, already formatted (see :func:`format_column`): the fast path
        for a year of model-only intervals. ``name`` is one of the CSV files of the contract."""
        expected = {"signals.csv": SIGNALS_COLUMNS, "placements.csv": PLACEMENTS_COLUMNS,
                    "latency.csv": LATENCY_COLUMNS, "probes.csv": PROBES_COLUMNS}.get(name)
        if expected is None:
            raise TwinError(f"{name}: not a column file of the run directory; use one of signals.csv, "
                            f"placements.csv, latency.csv, probes.csv")
        if len(columns) != len(expected):
            raise TwinError(f"{name}: {len(columns)} columns given for {len(expected)} ({', '.join(expected)})")
        lengths = {len(c) for c in columns}
        if len(lengths) > 1:
            raise TwinError(f"{name}: columns of different lengths {sorted(lengths)}; give one value per row")
        self._open_csv(name, expected)
        handle = self._csv[name][0]
        if not lengths or lengths == {0}:
            return
        if any(ch in "".join(column) for column in columns for ch in ',"\n\r'):
            self._csv[name][1].writerows(zip(*columns))  # a cell needs quoting: let csv do it
            return
        handle.write("\n".join(map(",".join, zip(*columns))))
        handle.write("\n")

    # -- JSON documents -------------------------------------------------------------------
    def write_run(self, run: dict) -> None:
        """``run.json``: what ran (scenario, topology, mode, sites, spans, lightpaths, services)."""
        write_json(self.path / "run.json", {"format": FORMAT, **run})

    def write_summary(self, summary: dict) -> None:
        """``summary.json``: the figures a reader wants first."""
        write_json(self.path / "summary.json", {"format": FORMAT, **summary})

    # -- events -----------------------------------------------------------------------------
    def event(self, t: float, kind: str, *, wall: float | None = None, **fields: Any) -> None:
        """One line of ``events.jsonl``: ``t``, ``kind``, ``wall`` (emulated runs), then the fields."""
        if kind not in EVENT_KINDS:
            raise TwinError(f"events.jsonl: unknown kind {kind!r}; use one of {', '.join(EVENT_KINDS)}")
        record = {"t": t, "kind": kind}
        if wall is not None:
            record["wall"] = wall
        record.update(fields)
        self._events.write(json.dumps(_clean(record), ensure_ascii=False, default=_json_default) + "\n")

    def events(self, records: Iterable[dict]) -> None:
        """Many events at once, each a dict with at least ``t`` and ``kind`` (fast path for the model)."""
        dumps = _ENCODER.encode
        lines = []
        for record in records:
            if record.get("kind") not in EVENT_KINDS:
                raise TwinError(f"events.jsonl: unknown kind {record.get('kind')!r}; "
                                f"use one of {', '.join(EVENT_KINDS)}")
            lines.append(dumps(record))
        if lines:
            self._events.write("\n".join(lines) + "\n")

    def warning(self, t: float, message: str, *, wall: float | None = None) -> None:
        self.event(t, "warning", wall=wall, message=message)

    # -- CSV rows -----------------------------------------------------------------------------
    def signal(self, t: float, site: str, area: str, surplus_mw: float, renewable_share: float,
               carbon_g_per_kwh: float, price_yen_per_kwh: float | None) -> None:
        self._rows("signals.csv", SIGNALS_COLUMNS,
                   [(t, site, area, surplus_mw, renewable_share, carbon_g_per_kwh, price_yen_per_kwh)])

    def signal_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        self._rows("signals.csv", SIGNALS_COLUMNS, rows)

    def placement(self, t: float, service: str, site: str) -> None:
        self._rows("placements.csv", PLACEMENTS_COLUMNS, [(t, service, site)])

    def placement_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        self._rows("placements.csv", PLACEMENTS_COLUMNS, rows)

    def latency(self, t: float, service: str, region: str, site: str, requests: int, failed: int,
                p50_ms: float | None, p95_ms: float | None, p99_ms: float | None, p999_ms: float | None,
                slo_ms: float) -> None:
        self._rows("latency.csv", LATENCY_COLUMNS,
                   [(t, service, region, site, requests, failed, p50_ms, p95_ms, p99_ms, p999_ms, slo_ms)])

    def latency_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        self._rows("latency.csv", LATENCY_COLUMNS, rows)

    def request(self, service: str, t: float, region: str, site: str | None, latency_ms: float | None,
                outcome: str) -> None:
        """One row of ``requests/SERVICE.csv`` (emulated runs; the file appears with its first row)."""
        self.request_rows(service, [(t, region, site, latency_ms, outcome)])

    def request_rows(self, service: str, rows: Iterable[Sequence[Any]]) -> None:
        if "/" in service or service.startswith("."):
            raise TwinError(f"requests/: service id {service!r} cannot be a file name; use a valid service id")
        rows = list(rows)
        for row in rows:
            if len(row) == 5 and row[4] not in OUTCOMES:
                raise TwinError(f"requests/{service}.csv: outcome {row[4]!r} is not one of {', '.join(OUTCOMES)}")
        self._rows(f"requests/{service}.csv", REQUESTS_COLUMNS, rows)

    def probe(self, t: float, src: str, dst: str, plane: str, forward_ms: float | None,
              backward_ms: float | None, rtt_ms: float | None) -> None:
        """One row of ``probes.csv`` (emulated runs; the file appears with its first row)."""
        self.probe_rows([(t, src, dst, plane, forward_ms, backward_ms, rtt_ms)])

    def probe_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        for row in rows:
            if len(row) == 7 and row[3] not in ("apn", "packet"):
                raise TwinError(f"probes.csv: plane {row[3]!r} is not 'apn' or 'packet'")
        self._rows("probes.csv", PROBES_COLUMNS, rows)

    # -- life cycle ------------------------------------------------------------------------
    def flush(self) -> None:
        self._events.flush()
        for handle, _ in self._csv.values():
            handle.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._events.close()
        for handle, _ in self._csv.values():
            handle.close()

    def __enter__(self) -> "RunDirWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
