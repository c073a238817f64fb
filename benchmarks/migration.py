"""Migration benchmark: each strategy on Fukuoka->Osaka and on the longest japan lightpath.

For every (topology, strategy) it deploys a stateful sensor-fusion service at the
source, drives open-loop load from the source region, migrates it, and reports
what the clients saw (twin.workloads.trial): total time and phases, state bytes
and their network time against ``size / rate + 2 RTT``, failed requests,
interruption, latency p99 before/during/after. Prints a table, writes JSON.

    sudo .venv/bin/python benchmarks/migration.py [--state 20MiB] [--rate 25/s] [--runs 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _common import write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twin.emulation.session import TwinSession  # noqa: E402
from twin.model.optics import OpticalNetwork  # noqa: E402
from twin.model.units import parse_size  # noqa: E402
from twin.model.validate import load_topology  # noqa: E402
from twin.tables import format_table  # noqa: E402
from twin.workloads.containers import ContainerRuntime  # noqa: E402
from twin.workloads.site_runtime import PodmanLauncher, workload_image  # noqa: E402
from twin.workloads.trial import (  # noqa: E402
    expected_transfer_s,
    run_trial,
    trial_scenario,
    trial_service,
)

STRATEGIES = ("make-before-break", "cold")


def longest_pair(topology_path: Path) -> tuple[str, str, list[str]]:
    network = OpticalNetwork(load_topology(topology_path))
    best = None
    for a in network.topology.sites:
        for b in network.topology.sites:
            if a.id < b.id:
                route = network.k_shortest_routes(a.id, b.id, 1)[0]
                if best is None or route.one_way_s > best[1].one_way_s:
                    best = ((a.id, b.id), route)
    (src, dst), route = best
    return src, dst, list(route.sites)


def bench_topology(name: str, topology_path: Path, src: str, dst: str, *, state: str, rate: str, runs: int) -> list:
    rows = []
    topology = load_topology(topology_path)
    with TwinSession(topology_path) as session:
        lightpath = session.client.create_lightpath(src, dst)
        rtt_s = 2 * lightpath["one_way_ms"] / 1e3
        rate_bps = next(s.rate for s in topology.spans if set(s.ends) & {src, dst})
        probe = session.probe(src, dst, count=200, rate=500)
        measured_rtt_s = probe.rtt_us.median / 1e6
        with ContainerRuntime(session.record.run_id, record=session.record) as containers:
            launcher = PodmanLauncher(containers, workload_image(), cpus=session.workload_cpus)
            for strategy in STRATEGIES:
                for n in range(runs):
                    service_id = f"b{n}{'m' if strategy == 'make-before-break' else 'c'}"
                    scenario = trial_scenario(str(topology_path), trial_service(
                        service_id, site=src, region=src, rate=rate, state_size=state))
                    with tempfile.TemporaryDirectory() as tmp:
                        r = run_trial(session, scenario, launcher, src=src, dst=dst, strategy=strategy,
                                      out_dir=Path(tmp), before_s=5, after_s=5)
                    expected = expected_transfer_s(int(parse_size(state)), rate_bps, measured_rtt_s)
                    r.update({"topology": name, "run": n, "route": lightpath["route"],
                              "model_rtt_ms": rtt_s * 1e3, "measured_rtt_ms": measured_rtt_s * 1e3,
                              "rate_bps": rate_bps, "expected_transfer_s": expected,
                              "transfer_vs_expected": (r.get("transfer_s") or 0) / expected,
                              "engine": launcher.describe()})
                    rows.append(r)
                    print(f"{name} {strategy} #{n}: ok={r.get('ok')} {r.get('duration_s', 0):.2f}s "
                          f"failed={r['failed_requests']} interruption={r['interruption_ms']:.0f}ms", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", default="20MiB", help="state size to migrate (default 20MiB)")
    parser.add_argument("--rate", default="25/s", help="client request rate (default 25/s)")
    parser.add_argument("--runs", type=int, default=2, help="runs per strategy and topology (default 2)")
    parser.add_argument("--skip-japan", action="store_true")
    parser.add_argument("--out", default="bench-results/migration.json")
    args = parser.parse_args()
    rows = bench_topology("fukuoka-osaka", REPO / "topologies" / "fukuoka-osaka.yaml", "fuk", "osa",
                          state=args.state, rate=args.rate, runs=args.runs)
    if not args.skip_japan:
        japan = REPO / "topologies" / "japan.yaml"
        src, dst, _ = longest_pair(japan)
        rows += bench_topology("japan", japan, src, dst, state=args.state, rate=args.rate, runs=args.runs)

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    table = []
    for r in rows:
        table.append([r["topology"], f"{r['src']}->{r['dst']}", r["strategy"], "yes" if r.get("ok") else "NO",
                      fmt(r.get("duration_s")), fmt(r.get("transfer_s"), ".3f"), fmt(r["expected_transfer_s"], ".3f"),
                      fmt(r["transfer_vs_expected"]), r["failed_requests"], fmt(r["interruption_ms"], ".0f"),
                      fmt(r.get("p99_before_ms"), ".1f"), fmt(r.get("p99_during_ms"), ".1f"),
                      fmt(r.get("p99_after_ms"), ".1f")])
    print(format_table(["topology", "pair", "strategy", "ok", "total s", "state s", "floor s", "ratio",
                        "failed", "interrupt ms", "p99 before", "p99 during", "p99 after"], table))
    by = {}
    for r in rows:
        by.setdefault((r["topology"], r["strategy"]), []).append(r)
    summary = {f"{t}/{s}": {"total_s_median": statistics.median(x.get("duration_s") or 0 for x in rs),
                            "failed_max": max(x["failed_requests"] for x in rs),
                            "interruption_ms_max": max(x["interruption_ms"] for x in rs),
                            "transfer_vs_expected_median": statistics.median(x["transfer_vs_expected"] for x in rs)}
               for (t, s), rs in by.items()}
    out = Path(args.out)
    write_result(out, {"rows": rows, "summary": summary, "state": args.state, "rate": args.rate}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
