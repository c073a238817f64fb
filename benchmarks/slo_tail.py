"""Where a run's latency tail sits: per service and user region, inside and outside migrations.

    python benchmarks/slo_tail.py RUN_DIR [--service ID] [--margin 2] [--out bench-results/slo-tail.json]

Reads an emulated run directory (``twin run``; docs/run-directory.md): every request
of ``requests/SERVICE.csv`` and the migrations of ``events.jsonl``. A request is
"in a migration" when it was sent from ``--margin`` wall seconds before a
migration (of any service) started until ``--margin`` after it finished: what a
move costs the users of every service, since they share the emulator's cores.
Prints, per service and region, the requests, p50 / p99 / p99.9 and how many
exceeded the service's latency budget, split that way, and writes the same as JSON.
The percentiles are nearest-rank, as in summary.json.

With ``--engine`` it also lines the requests up with the delay engine's late
frames (``engine.json``, userspace backend): per service and region, how many of
the requests over budget, and how many of all requests, had a frame sent more than
0.5 ms late anywhere in the engine while they were under way (from 2 ms before
sending to the answer; Unix times from ``load/``, warm-up left out). Over-budget
requests that meet late frames far more often than requests in general point at
the engine falling behind.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result  # noqa: E402
from twin.experiment.analysis import EngineBehind  # noqa: E402
from twin.experiment.rundata import scenario_start_unix  # noqa: E402
from twin.tables import format_table  # noqa: E402
from twin.workloads.stats import percentile  # noqa: E402


class TailError(Exception):
    """The run directory cannot be read for this; the message says what to fix."""


def _load(run_dir: Path) -> tuple[dict, list[dict], dict[str, list[tuple[float, str, float | None]]]]:
    try:
        run = json.loads((run_dir / "run.json").read_text())
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise TailError(f"{run_dir}: not a readable run directory ({err}); give the folder 'twin run --out' wrote")
    if run.get("mode") != "emulated":
        raise TailError(f"{run_dir}: a {run.get('mode')} run has no per-request records; give an emulated run")
    requests: dict[str, list[tuple[float, str, float | None]]] = {}
    for path in sorted((run_dir / "requests").glob("*.csv")):
        with path.open(newline="") as f:
            requests[path.stem] = [(float(r["t"]), r["region"], float(r["latency_ms"]) if r["latency_ms"] else None)
                                   for r in csv.DictReader(f)]
    return run, events, requests


def tail_table(run_dir: Path, *, margin_s: float = 2.0, only: str | None = None) -> list[dict]:
    """One row per service, region and part of the run (all, outside migrations, in migrations)."""
    run, events, requests = _load(run_dir)
    compression = float(run.get("time_compression") or 1.0)
    windows = [(e["started"] - margin_s * compression, e["finished"] + margin_s * compression)
               for e in events if e.get("kind") == "migration" and "started" in e and "finished" in e]
    budgets = {s["id"]: s["slo"] for s in run.get("services", [])}
    if only is not None and only not in requests:
        raise TailError(f"--service {only}: not in {run_dir / 'requests'} ({', '.join(requests) or 'none'})")
    rows = []
    for service, records in requests.items():
        if only is not None and service != only:
            continue
        budget_ms = float(budgets.get(service, {}).get("latency_ms") or "nan")
        for region in sorted({r for _, r, _ in records}):
            mine = [(t, lat) for t, r, lat in records if r == region]
            parts = {"all": mine,
                     "outside migrations": [(t, lat) for t, lat in mine if not any(a <= t <= b for a, b in windows)],
                     "in migrations": [(t, lat) for t, lat in mine if any(a <= t <= b for a, b in windows)]}
            for part, sample in parts.items():
                ok = [lat for _, lat in sample if lat is not None]
                rows.append({"service": service, "region": region, "part": part, "requests": len(sample),
                             "unanswered": len(sample) - len(ok),
                             "p50_ms": percentile(ok, 50.0), "p99_ms": percentile(ok, 99.0),
                             "p999_ms": percentile(ok, 99.9), "budget_ms": budget_ms,
                             "over_budget": sum(1 for lat in ok if lat > budget_ms)})
    return rows


def engine_overlap(run_dir: Path, *, only: str | None = None) -> list[dict]:
    """Per service and region: requests (all, over budget) and how many met a late engine frame."""
    run, events, _requests = _load(run_dir)
    try:
        behind = EngineBehind.from_stats(json.loads((run_dir / "engine.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise TailError(f"{run_dir / 'engine.json'}: not readable ({err}); --engine needs a run whose spans "
                        "went through the userspace delay engine (run.json link_backend 'userspace')")
    start = scenario_start_unix(run, events)
    start_unix = start if start is not None else float("-inf")
    budgets = {s["id"]: float(s["slo"]["latency_ms"]) for s in run.get("services", [])}

    rows = []
    for path in sorted((run_dir / "load").glob("*.csv")):
        service, region = path.stem.split(".", 1)
        if service not in budgets or (only is not None and service != only):
            continue
        with path.open(newline="") as f:
            answered = [(float(r["send_unix"]), float(r["latency_ms"])) for r in csv.DictReader(f)
                        if r["outcome"] == "ok" and r["latency_ms"] and float(r["send_unix"]) >= start_unix]
        over = [(t, lat) for t, lat in answered if lat > budgets[service]]
        rows.append({"service": service, "region": region, "budget_ms": budgets[service],
                     "requests": len(answered), "requests_meeting_late": sum(behind.met(*a) for a in answered),
                     "over_budget": len(over), "over_budget_meeting_late": sum(behind.met(*a) for a in over)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="an emulated run directory (twin run --out)")
    p.add_argument("--service", help="only this service (default: every service with request records)")
    p.add_argument("--margin", type=float, default=2.0, help="wall seconds around each migration (default 2)")
    p.add_argument("--engine", action="store_true",
                   help="also line requests up with the delay engine's late frames (engine.json)")
    p.add_argument("--out", type=Path, default=Path("bench-results/slo-tail.json"))
    args = p.parse_args(argv)
    if args.margin < 0:
        print(f"error: --margin {args.margin} must be >= 0 s", file=sys.stderr)
        return 2
    try:
        rows = tail_table(args.run_dir, margin_s=args.margin, only=args.service)
        overlap = engine_overlap(args.run_dir, only=args.service) if args.engine else None
    except TailError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(format_table(["service", "users in", "part", "requests", "p50 ms", "p99 ms", "p99.9 ms", "over budget"],
                       [[r["service"], r["region"], r["part"], r["requests"], ms(r["p50_ms"]), ms(r["p99_ms"]),
                         ms(r["p999_ms"]), f"{r['over_budget']} (> {r['budget_ms']:g} ms)"] for r in rows]))
    result = {"run_dir": str(args.run_dir), "margin_s": args.margin, "rows": rows}
    if overlap is not None:
        def share(part: int, whole: int) -> str:
            return f"{part} of {whole}" + (f" ({100 * part / whole:.0f} %)" if whole else "")

        print()
        print(format_table(["service", "users in", "over budget: met a late frame", "all requests: met a late frame"],
                           [[r["service"], r["region"], share(r["over_budget_meeting_late"], r["over_budget"]),
                             share(r["requests_meeting_late"], r["requests"])] for r in overlap]))
        result["engine_overlap"] = overlap
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
