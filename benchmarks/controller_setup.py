"""Benchmark: lightpath set-up and tear-down latency through the controller API.

Needs root and Open vSwitch. Builds three netdev OVS bridges joined by patch
ports (``twin.emulation.testbed``, names ``twt<tag><site>``) for
topologies/triangle.yaml, starts the controller process, and times N cycles of
``POST /lightpaths`` then ``DELETE /lightpaths/<id>``. Each time runs from the
request to the response, and the controller answers only after every switch
involved acknowledged its bundle commit, so it includes RWA, flow planning,
the OpenFlow bundles to all switches and the HTTP round trip. Routes alternate
between the direct a-c (2 switches change) and a-b-c (3 switches, one transit).
It also times re-pointing a service VIP (make-before-break over all switches).

Not included: time until a first packet crosses (the issue's "request to first
probe through"); that needs hosts and the delay engine, so it belongs to the
full network benchmark.

Usage: ``sudo .venv/bin/python benchmarks/controller_setup.py [--cycles 100] [--out PATH]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _common import percentile, write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.emulation.controller import ControllerProcess, free_port  # noqa: E402
from twin.emulation.testbed import PatchTestbed  # noqa: E402
from twin.model.validate import load_topology  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = ROOT / "topologies" / "triangle.yaml"


def summary(samples_s: list[float]) -> dict:
    ms = [s * 1e3 for s in samples_s]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3),
            "p99_ms": round(percentile(ms, 99), 3), "mean_ms": round(statistics.fmean(ms), 3),
            "max_ms": round(max(ms), 3)}


def run(cycles: int) -> dict:
    ofp_port = free_port()
    results: dict[str, list[float]] = {"create a-c direct": [], "create a-b-c transit": [],
                                       "delete a-c direct": [], "delete a-b-c transit": [], "move VIP": []}
    with ControllerProcess(TOPOLOGY, ofp_port=ofp_port, log_level="WARNING") as controller, \
            PatchTestbed(load_topology(TOPOLOGY), prefix=f"twt{os.getpid() % 4096:03x}",
                         controller_port=ofp_port) as testbed:
        client = controller.client
        client.wait_switches(3, timeout=30)
        for warmup in range(5):   # first requests pay for imports and connection set-up
            client.delete_lightpath(client.create_lightpath("a", "c")["id"])
        for i in range(cycles):
            route = ["a", "c"] if i % 2 == 0 else ["a", "b", "c"]
            label = "a-c direct" if len(route) == 2 else "a-b-c transit"
            t0 = time.perf_counter()
            lp = client.create_lightpath("a", "c", route=route)
            t1 = time.perf_counter()
            client.delete_lightpath(lp["id"])
            t2 = time.perf_counter()
            results[f"create {label}"].append(t1 - t0)
            results[f"delete {label}"].append(t2 - t1)
        # VIP moves between b and c, both reachable from everywhere (full mesh of lightpaths).
        for src, dst in (("a", "b"), ("b", "c"), ("a", "c")):
            client.create_lightpath(src, dst)
        client.set_service_site("10.3.0.1", "b")
        for i in range(cycles):
            t0 = time.perf_counter()
            client.set_service_site("10.3.0.1", "c" if i % 2 == 0 else "b")
            results["move VIP"].append(time.perf_counter() - t0)
        flows_per_switch = {s: len(testbed.dump_flows(s)) for s in testbed.portmap.switches}
    create_all = results["create a-c direct"] + results["create a-b-c transit"]
    return {
        "benchmark": "controller_setup",
        "topology": str(TOPOLOGY.relative_to(ROOT)),
        "cycles": cycles,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "setup": "3 OVS 3.1 netdev bridges, patch ports, OpenFlow 1.4 bundles, HTTP keep-alive on loopback",
        "lightpath_setup": summary(create_all),
        "cases": {name: summary(samples) for name, samples in results.items()},
        "flows_per_switch_at_end": flows_per_switch,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "controller_setup.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("controller_setup: needs root (Open vSwitch); run with sudo", file=sys.stderr)
        return 2
    report = run(args.cycles)
    print(f"Lightpath set-up through the API ({args.cycles} cycles, request -> response after bundle commits)")
    print(f"{'case':24} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    rows = {"create (all)": report["lightpath_setup"], **report["cases"]}
    for name, s in rows.items():
        print(f"{name:24} {s['n']:>4} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.3f}")
    write_result(args.out, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
