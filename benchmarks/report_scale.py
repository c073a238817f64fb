"""Benchmark: ``twin report`` on a year-long model-only run directory.

Writes a synthetic run directory straight from the contract (docs/run-directory.md):
10 sites in 10 power areas, 10 services with 2 demand regions each, a year of
30-minute decision intervals (17,520), one decision per service per interval,
a migration roughly every 10 days per service. Then times reading it, the plots
and the HTML separately. The issue's budget for the report of such a run: about 10 s.

Usage: ``python benchmarks/report_scale.py [--intervals 17520] [--services 10]
[--out bench-results/report_scale.json]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _common import write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from twin.experiment.plots import make_plots
from twin.experiment.report import render_html
from twin.experiment.rundata import load_run

SLOT_S = 1800
SITES = [("fuk", "kyushu", 33.59, 130.40), ("hij", "chugoku", 34.39, 132.46), ("osa", "kansai", 34.69, 135.50),
         ("mat", "shikoku", 33.84, 132.77), ("ngo", "chubu", 35.18, 136.91), ("tyo", "tokyo", 35.68, 139.69),
         ("nii", "hokuriku", 37.92, 139.04), ("sdj", "tohoku", 38.27, 140.87), ("hkd", "hokkaido", 43.06, 141.35),
         ("oki", "okinawa", 26.21, 127.68)]


def write_year(root: Path, intervals: int, services: int, seed: int = 1) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    site_ids = [s[0] for s in SITES]
    service_ids = [f"svc{i}" for i in range(services)]
    t = np.arange(intervals) * SLOT_S
    hour = (t / 3600) % 24
    run = {
        "format": 1, "scenario": "synthetic-year", "topology": "japan-like", "mode": "model-only",
        "policy": {"name": "hysteresis", "decision_interval": SLOT_S}, "duration": intervals * SLOT_S,
        "time_compression": None, "started": "2026-01-01T00:00:00Z", "wall_seconds": 8.0,
        "link_backend": None, "container_engine": None,
        "sites": [{"id": s, "name": s.upper(), "area": a, "lat": lat, "lon": lon, "cpus": 16, "pue": 1.3}
                  for s, a, lat, lon in SITES],
        "spans": [{"ends": [a, b], "length_km": 500, "wavelengths": 8} for a, b in zip(site_ids, site_ids[1:])],
        "lightpaths": [{"src": a, "dst": b, "route": [a, b], "wavelength": 0, "one_way_ms": 2.5}
                       for a, b in zip(site_ids, site_ids[1:])],
        "services": [{"id": s, "slo": {"latency_ms": 20.0, "percentile": 99.0}, "initial_site": site_ids[0],
                      "demand": [{"region": site_ids[0], "rate": 10.0}]} for s in service_ids],
    }
    (root / "run.json").write_text(json.dumps(run))

    with (root / "signals.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "site", "area", "surplus_mw", "renewable_share", "carbon_g_per_kwh", "price_yen_per_kwh"])
        for k, (site, area, _, _) in enumerate(SITES):
            surplus = np.clip(300 * np.sin((hour - 6 - k) / 12 * np.pi), 0, None) * rng.uniform(0.5, 1.5, intervals)
            carbon = 500 - surplus / 2
            w.writerows(zip(t, [site] * intervals, [area] * intervals, np.round(surplus, 1),
                            np.round(surplus / 1000, 3), np.round(carbon, 1), [""] * intervals))

    placements = {}
    for s in service_ids:
        moves = np.flatnonzero(rng.random(intervals) < 1 / 480)      # about every 10 days
        site_index = np.zeros(intervals, dtype=int)
        for m in moves:
            site_index[m:] = rng.integers(len(site_ids))
        placements[s] = [site_ids[i] for i in site_index]
    with (root / "placements.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "service", "site"])
        for i in range(intervals):
            w.writerows([t[i], s, placements[s][i]] for s in service_ids)

    rows = 0
    with (root / "latency.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "service", "region", "site", "requests", "failed", "p50_ms", "p95_ms", "p99_ms",
                    "p999_ms", "slo_ms"])
        for s in service_ids:
            for region in site_ids[:2]:
                base = np.round(rng.uniform(3, 6, intervals), 2)
                w.writerows(zip(t, [s] * intervals, [region] * intervals, placements[s], [18000] * intervals,
                                [0] * intervals, base, base * 1.3, base * 1.6, base * 2.1, [20.0] * intervals))
                rows += intervals

    events = 0
    with (root / "events.jsonl").open("w") as f:
        for i in range(intervals):
            for s in service_ids:
                src = placements[s][i - 1] if i else placements[s][0]
                dst = placements[s][i]
                f.write(json.dumps({"t": int(t[i]), "kind": "decision", "service": s, "from": src, "to": dst,
                                    "reason": "surplus" if src != dst else "min dwell",
                                    "scores": {dst: 0.5}, "feasible": site_ids[:4]}) + "\n")
                events += 1
                if src != dst:
                    f.write(json.dumps({"t": int(t[i]) + 1, "kind": "migration", "service": s, "from": src,
                                        "to": dst, "strategy": "make-before-break", "started": int(t[i]) + 1,
                                        "finished": int(t[i]) + 3, "duration_s": 2.0, "state_bytes": 1 << 20,
                                        "transfer_s": 0.4, "interruption_ms": 3.0, "failed_requests": 0,
                                        "ok": True, "error": None}) + "\n")
                    events += 1

    summary = {"format": 1, "scenario": "synthetic-year", "mode": "model-only", "policy": "hysteresis",
               "wall_seconds": 8.0,
               "services": {s: {"requests": intervals * 36000, "failed": 0, "failed_by_migration": 0,
                                "p50_ms": 4.5, "p95_ms": 6.0, "p99_ms": 7.5, "p999_ms": 12.0,
                                "jitter_sd_ms": 0.8, "jitter_p99_p50_ms": 3.0,
                                "slo": {"latency_ms": 20.0, "percentile": 99.0}, "slo_met": True,
                                "goodput": 1.0, "migrations": 36, "interruption_ms_max": 3.0}
                            for s in service_ids},
               "energy": {"policy": {"kwh": 1e6, "surplus_kwh": 3e5, "kg_co2": 4e5},
                          "static": {"kwh": 1e6, "surplus_kwh": 1e5, "kg_co2": 5e5},
                          "oracle": {"kwh": 1e6, "surplus_kwh": 4e5, "kg_co2": 3.5e5}}}
    (root / "summary.json").write_text(json.dumps(summary))
    return {"latency_rows": rows, "signal_rows": intervals * len(SITES), "placement_rows": intervals * services,
            "events": events}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", type=int, default=17520)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--dir", default="bench-results/report-scale-run")
    parser.add_argument("--out", default="bench-results/report_scale.json")
    args = parser.parse_args()

    run_dir = Path(args.dir)
    started = time.perf_counter()
    sizes = write_year(run_dir, args.intervals, args.services)
    write_s = time.perf_counter() - started

    c0, t0 = time.process_time(), time.perf_counter()
    data = load_run(run_dir)
    t1 = time.perf_counter()
    plots = make_plots(data, run_dir / "plots")
    t2 = time.perf_counter()
    text = render_html(data, plots)
    (run_dir / "report.html").write_text(text)
    c3, t3 = time.process_time(), time.perf_counter()
    load = os.getloadavg()[0]

    result = {
        "intervals": args.intervals, "services": args.services, "sites": len(SITES), **sizes,
        "read_s": round(t1 - t0, 3), "plots_s": round(t2 - t1, 3), "html_s": round(t3 - t2, 3),
        "total_s": round(t3 - t0, 3), "cpu_s": round(c3 - c0, 3), "load_average_1min": round(load, 2),
        "html_bytes": len(text.encode()), "budget_s": 10.0,
        "write_run_dir_s": round(write_s, 1), "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"twin report on {args.intervals} intervals x {args.services} services "
          f"({sizes['latency_rows']:,} latency rows, {sizes['events']:,} events)")
    for key in ("read_s", "plots_s", "html_s", "total_s", "cpu_s"):
        print(f"  {key:<8} {result[key]:>7.2f}")
    print(f"  load average {load:.1f} on {os.cpu_count()} cores (other processes slow every figure)")
    print(f"  report.html {result['html_bytes'] / 1e6:.2f} MB; budget {result['budget_s']:.0f} s: "
          f"{'met' if result['total_s'] <= result['budget_s'] else 'NOT met'}")
    out = Path(args.out)
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
