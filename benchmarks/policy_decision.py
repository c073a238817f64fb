"""Benchmark: placement decision time per policy, and a model-only year on japan.yaml.

1. Decision time: the seeded 100-site, 300-span topology of ``plan_scale.py``
   (every site 8 CPUs, 16 GiB), 50 services of 0.5 CPU / 512 MiB, each with one
   to three user regions and a latency budget of 4-40 ms (so each sees a
   different subset of feasible sites), random signals per site (surplus 0-1000 MW
   on a third of the sites, carbon 100-800 g/kWh). Times ``Policy.decide`` for
   all 50 services at once, repeated, for every online policy; the oracle is
   timed as its plan over a day of 48 slots plus a replayed decision.
2. Model-only year: ``run_model_only`` on a scenario written to a temporary
   folder: japan.yaml, 365 days, 30-minute decisions (17,520 intervals),
   10 services (latency-critical and tolerant, 1-5 regions each), hysteresis
   policy, built-in spring-day profiles repeated daily; wall time including
   loading, simulating and writing the run directory.

Usage: ``python benchmarks/policy_decision.py [--repeat 50] [--days 365] [--seed 1]
[--out bench-results/policy_decision.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from twin.experiment.model_run import run_model_only
from twin.model.policies import (
    DecisionInput,
    Timeline,
    feasible_from_rtt,
    make_policy,
    model_rtt_ms,
    plan_oracle,
)
from twin.model.power import SiteSignal
from twin.model.schema import Policy, Service, Topology

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_scale import generate  # noqa: E402  (the same synthetic topology)

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3


def synthetic(sites: int, spans: int, services: int, seed: int) -> tuple[Topology, list[Service]]:
    topology = generate(sites, spans, seed)
    topology = topology.model_copy(update={"sites": [
        s.model_copy(update={"compute": s.compute.model_copy(update={"cpus": 8.0, "memory": 16.0 * GIB})})
        for s in topology.sites]})
    rng = random.Random(seed)
    ids = [s.id for s in topology.sites]
    out = []
    for i in range(services):
        regions = rng.sample(ids, rng.randint(1, 3))
        out.append(Service.model_validate({
            "id": f"svc{i:02d}", "model": "echo",
            "slo": {"latency": f"{rng.choice([4, 8, 15, 40])}ms", "percentile": 99},
            "request_size": "1KiB", "response_size": "1KiB", "service_time": "1ms",
            "cpus": 0.5, "memory": "512MiB", "initial_site": regions[0],
            "demand": [{"region": r, "rate": "10/s"} for r in regions]}))
    return topology, out


def random_signals(site_ids: list[str], rng: random.Random) -> dict[str, SiteSignal]:
    return {s: SiteSignal(surplus_mw=rng.uniform(0, 1000) if rng.random() < 1 / 3 else 0.0,
                          renewable_share=rng.uniform(0.1, 0.6), carbon_g_per_kwh=rng.uniform(100, 800),
                          price_yen_per_kwh=None) for s in site_ids}


def decision_times(repeat: int, seed: int) -> list[dict]:
    topology, services = synthetic(100, 300, 50, seed)
    site_ids = [s.id for s in topology.sites]
    start = time.perf_counter()
    rtt = model_rtt_ms(services, topology)
    feasible = {s.id: feasible_from_rtt(s, site_ids, rtt) for s in services}
    feasibility_s = time.perf_counter() - start
    capacity = {s.id: (s.compute.cpus, s.compute.memory) for s in topology.sites}
    rng = random.Random(seed)
    slots = [random_signals(site_ids, rng) for _ in range(48)]
    rows = []
    for name in ("static", "greedy-surplus", "greedy-carbon", "hysteresis"):
        policy = make_policy(Policy(name=name, hysteresis=0.1,
                                    migration_cost=0.05))
        placements = {s.id: s.initial_site for s in services}
        times_ms = []
        moves = 0
        for k in range(repeat):
            inp = DecisionInput(t=k * 1800.0, signals=slots[k % 48], placements=placements,
                                last_move={s.id: None for s in services}, feasible=feasible,
                                capacity=capacity, services=services)
            t0 = time.perf_counter()
            decisions = policy.decide(inp)
            times_ms.append((time.perf_counter() - t0) * 1e3)
            moves += sum(d.moves for d in decisions)
            placements = {d.service: d.to_site for d in decisions}
        rows.append(_row(name, times_ms, moves, repeat))
    # Oracle: the day's plan (energy matrices as a 0.3 kW service would give them), then a decision.
    n = 48
    surplus = np.array([[slots[k][s].surplus_mw for s in site_ids] for k in range(n)])
    carbon = np.array([[slots[k][s].carbon_g_per_kwh for s in site_ids] for k in range(n)])
    kwh = np.full((n, len(site_ids)), 0.15)
    grid = np.where(surplus > 0, 0.0, kwh)
    timeline = Timeline(1800.0, tuple(site_ids), capacity, services, {s.id: s.initial_site for s in services},
                        {s.id: grid for s in services}, {s.id: grid * carbon / 1000 for s in services},
                        {s.id: kwh for s in services}, [feasible] * n, [frozenset()] * n)
    plan_ms = []
    for _ in range(max(3, repeat // 10)):
        t0 = time.perf_counter()
        plan = plan_oracle(timeline, migration_cost=0.05)
        plan_ms.append((time.perf_counter() - t0) * 1e3)
    oracle = make_policy(Policy(name="oracle"), oracle_plan=plan)
    placements = {s.id: s.initial_site for s in services}
    times_ms = []
    moves = 0
    for k in range(repeat):
        inp = DecisionInput(t=(k % n) * 1800.0, signals=slots[k % n], placements=placements,
                            last_move={s.id: None for s in services}, feasible=feasible,
                            capacity=capacity, services=services)
        t0 = time.perf_counter()
        decisions = oracle.decide(inp)
        times_ms.append((time.perf_counter() - t0) * 1e3)
        moves += sum(d.moves for d in decisions)
        placements = {d.service: d.to_site for d in decisions}
    row = _row("oracle", times_ms, moves, repeat)
    row["plan_day_ms"] = round(statistics.median(plan_ms), 2)
    rows.append(row)
    for row in rows:
        row["feasibility_s"] = round(feasibility_s, 3)
        row["mean_feasible_sites"] = round(statistics.mean(len(f) for f in feasible.values()), 1)
    return rows


def _row(name: str, times_ms: list[float], moves: int, repeat: int) -> dict:
    times_ms = sorted(times_ms)
    return {"policy": name, "sites": 100, "services": 50, "decisions": repeat,
            "median_ms": round(statistics.median(times_ms), 3),
            "p99_ms": round(times_ms[min(len(times_ms) - 1, int(0.99 * len(times_ms)))], 3),
            "moves_per_decision": round(moves / repeat, 2)}


YEAR_SERVICES = [
    # id, model, latency, percentile, service time, cpus, regions
    ("drive-fuk", "sensor-fusion-mlp", "8ms", 99.9, "2ms", 0.25, ["fuk", "hij"]),
    ("drive-tyo", "sensor-fusion-mlp", "8ms", 99.9, "2ms", 0.25, ["tyo", "sdj"]),
    ("drive-osa", "sensor-fusion-mlp", "10ms", 99.9, "2ms", 0.25, ["osa", "ngo"]),
    ("farm", "farm-cnn", "1500ms", 95, "150ms", 0.25, ["hkd", "sdj", "kij", "fuk", "oka"]),
    ("farm-west", "farm-cnn", "1500ms", 95, "150ms", 0.25, ["fuk", "tak", "hij"]),
    ("translate", "echo", "200ms", 99, "40ms", 0.25, ["tyo", "osa"]),
    ("search", "echo", "50ms", 99, "10ms", 0.25, ["tyo", "osa", "fuk"]),
    ("archive", "echo", "5s", 95, "500ms", 0.25, ["tyo"]),
    ("sensor-hkd", "echo", "30ms", 99, "5ms", 0.25, ["hkd"]),
    ("medical", "farm-cnn", "300ms", 99, "80ms", 0.25, ["oka", "fuk"]),
]


def year_scenario(folder: Path, days: int) -> Path:
    services = []
    for sid, model, latency, percentile, st, cpus, regions in YEAR_SERVICES:
        services.append({"id": sid, "model": model, "slo": {"latency": latency, "percentile": percentile},
                         "request_size": "16KiB", "response_size": "1KiB", "service_time": st, "cpus": cpus,
                         "memory": "256MiB", "initial_site": regions[0],
                         "demand": [{"region": r, "rate": "20/s"} for r in regions]})
    doc = {"kind": "scenario", "name": "japan-year", "topology": str(REPO / "topologies" / "japan.yaml"),
           "duration": f"{days * 24}h", "services": services,
           "policy": {"name": "hysteresis", "decision_interval": "30min", "min_dwell": "1h",
                      "hysteresis": 0.1, "migration_cost": 0.05}}
    path = folder / "japan-year.yaml"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return path


def model_year(days: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        scenario = year_scenario(Path(tmp), days)
        out = Path(tmp) / "run"
        start = time.perf_counter()
        summary = run_model_only(scenario, out, progress=False, seed=seed)
        seconds = time.perf_counter() - start
        sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    return {"days": days, "intervals": summary["intervals"], "services": len(summary["services"]),
            "seconds": round(seconds, 2),
            "migrations": sum(s["migrations"] for s in summary["services"].values()),
            "run_dir_mib": round(sum(sizes.values()) / 2**20, 1),
            "energy": summary["energy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench-results/policy_decision.json")
    args = parser.parse_args(argv)

    rows = decision_times(args.repeat, args.seed)
    headers = ["policy", "sites", "services", "decisions", "median_ms", "p99_ms", "moves_per_decision"]
    table = [[str(r.get(h, "")) for h in headers] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for t in table:
        print("  ".join(c.rjust(w) for c, w in zip(t, widths)))
    oracle = rows[-1]
    print(f"oracle plan for 48 slots: {oracle['plan_day_ms']} ms; feasibility for 50 services: "
          f"{oracle['feasibility_s']} s; mean feasible sites per service: {oracle['mean_feasible_sites']}")

    year = model_year(args.days, args.seed)
    print(f"\nmodel-only {year['days']} days on japan ({year['intervals']} intervals, {year['services']} services): "
          f"{year['seconds']} s, {year['migrations']} migrations, run directory {year['run_dir_mib']} MiB")
    for name, totals in year["energy"].items():
        print(f"  energy {name:7s} {totals['kwh']:10.1f} kWh  surplus {totals['surplus_kwh']:9.1f} kWh  "
              f"{totals['kg_co2']:8.1f} kg CO2")

    result = {"decision": rows, "model_year": year, "seed": args.seed, "python": platform.python_version()}
    out = Path(args.out)
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
