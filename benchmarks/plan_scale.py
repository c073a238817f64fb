"""Benchmark: the all-pairs lightpath plan on a generated 100-site, 300-span topology.

The topology is a seeded random geometric graph over a Japan-sized box
(lat 31-45 N, lon 129-146 E): a nearest-neighbour spanning tree makes it
connected, then the shortest remaining site pairs become spans until there are
``--spans`` of them. Lengths are great-circle distance x 1.3 (the planning route
factor), 8 wavelengths per span, k = 3 routes per pair. Every pair (4,950 for
100 sites) is planned in file order on one occupancy map, as ``twin plan`` does.

Usage: ``python benchmarks/plan_scale.py [--sites 100] [--spans 300] [--seed 1]
[--out bench-results/plan_scale.json]``
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

from _common import write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from twin.model.plan import default_pairs, plan_lightpaths
from twin.model.schema import Topology
from twin.model.zoo import haversine_km

ROUTE_FACTOR = 1.3


def generate(sites: int, spans: int, seed: int, wavelengths: int = 8) -> Topology:
    """A connected random geometric topology; raises ValueError if ``spans`` is impossible."""
    max_spans = sites * (sites - 1) // 2
    if not sites - 1 <= spans <= max_spans:
        raise ValueError(f"{spans} spans cannot connect {sites} sites; use {sites - 1} to {max_spans}")
    rng = random.Random(seed)
    coords = [(round(rng.uniform(31.0, 45.0), 4), round(rng.uniform(129.0, 146.0), 4)) for _ in range(sites)]
    ids = [f"s{i:03d}" for i in range(sites)]
    dist = {(i, j): haversine_km(*coords[i], *coords[j]) for i in range(sites) for j in range(i + 1, sites)}
    chosen: set[tuple[int, int]] = set()
    # Connect each site to its nearest earlier site: a tree, so the graph is connected.
    for j in range(1, sites):
        i = min(range(j), key=lambda i: dist[(i, j)])
        chosen.add((i, j))
    for pair in sorted(dist, key=dist.get):
        if len(chosen) >= spans:
            break
        chosen.add(pair)
    data = {
        "name": f"random-{sites}-{spans}-seed{seed}",
        "packet_network": {"router_delay": "200us", "capacity": "400Mbit"},
        "apn": {"propagation": "4.9us/km", "node_delay": "1us", "k_paths": 3},
        "sites": [{"id": ids[i], "name": f"Site {i}", "area": "synthetic", "lat": lat, "lon": lon,
                   "compute": {"cpus": 1, "memory": "1GiB"}} for i, (lat, lon) in enumerate(coords)],
        "spans": [{"ends": [ids[i], ids[j]], "length": f"{max(dist[(i, j)] * ROUTE_FACTOR, 1.0):.3f}km",
                   "wavelengths": wavelengths, "rate": "100Mbit"} for i, j in sorted(chosen)],
    }
    return Topology.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--spans", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench-results/plan_scale.json")
    args = parser.parse_args(argv)

    topology = generate(args.sites, args.spans, args.seed)
    # Two passes: tracemalloc slows allocation-heavy Python about 2x, so the time comes
    # from an untraced run and the peak memory from a traced one (same work, fresh state).
    start = time.perf_counter()
    entries = plan_lightpaths(topology, default_pairs(topology))
    seconds = time.perf_counter() - start
    tracemalloc.start()
    traced_start = time.perf_counter()
    traced = plan_lightpaths(topology, default_pairs(topology))
    traced_seconds = time.perf_counter() - traced_start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if [e.to_dict() for e in traced] != [e.to_dict() for e in entries]:
        raise SystemExit("the two passes planned differently: the plan is not deterministic")

    served = sum(1 for e in entries if e.lightpath is not None)
    result = {
        "sites": len(topology.sites), "spans": len(topology.spans), "pairs": len(entries),
        "served": served, "blocked": len(entries) - served,
        "seconds": round(seconds, 3), "peak_mib": round(peak / 2**20, 2),
        "seconds_traced": round(traced_seconds, 3),
        "seed": args.seed, "python": platform.python_version(),
    }
    headers = ["sites", "spans", "pairs", "served", "blocked", "seconds", "peak_mib"]
    widths = [max(len(h), len(str(result[h]))) for h in headers]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("  ".join(str(result[h]).rjust(w) for h, w in zip(headers, widths)))
    out = Path(args.out)
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
