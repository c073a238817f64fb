"""`twin run SCENARIO --model-only`: the scenario on the model, written as a run directory.

No root, no emulation: latencies and service times come from the model
(:mod:`twin.model.simulate`), so a year of 30-minute intervals runs in seconds and
its files sit beside the emulated runs' in the same format (docs/run-directory.md).
"""

from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from twin.errors import NoPathError
from twin.experiment.rundir import RunDirWriter, format_column
from twin.model.optics import OpticalNetwork
from twin.model.power import load_signals
from twin.model.schema import Scenario, Topology
from twin.model.simulate import PERCENTILE_KEYS, SimulationResult, simulate
from twin.model.validate import load_scenario


def run_model_only(scenario_path: str | Path, out_dir: str | Path, *, progress: bool = True, seed: int = 0,
                   overwrite: bool = False) -> dict:
    """Load and validate the scenario, simulate it, write the run directory; return the summary.

    ``progress`` shows a tqdm bar of scenario time on stderr. ``seed`` fixes the
    random request counts and latency draws (same seed, same files).

    Raises:
        twin.errors.ValidationError: the scenario or its topology is invalid.
        TwinError: bad power signals, or ``out_dir`` already holds a run.
    """
    wall_start = time.perf_counter()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    scenario_path = Path(scenario_path)
    scenario, topology = load_scenario(scenario_path)
    signals = load_signals(scenario, scenario_path.parent, topology)
    # Open the run directory before the work so a bad --out fails fast.
    with RunDirWriter(out_dir, overwrite=overwrite) as writer:
        with tqdm(total=round(scenario.duration), unit="s", unit_scale=True, disable=not progress,
                  desc=f"{scenario.name} (model)", leave=False) as bar:
            def advance(t_s: float) -> None:
                bar.update(round(t_s) - bar.n)
            result = simulate(scenario, topology, signals, seed=seed, progress=advance)
        write_result(writer, result)
        wall_seconds = round(time.perf_counter() - wall_start, 3)
        writer.write_run(run_info(scenario, topology, started=started, wall_seconds=wall_seconds))
        summary = dict(result.summary)
        summary["wall_seconds"] = wall_seconds
        writer.write_summary(summary)
    return {"format": 1, **summary}


def run_info(scenario: Scenario, topology: Topology, *, started: str, wall_seconds: float) -> dict:
    """The ``run.json`` document of a model-only run."""
    policy = scenario.policy
    network = OpticalNetwork(topology)
    pairs = sorted({(d.region, site.id) for svc in scenario.services for d in svc.demand
                    for site in topology.sites if d.region != site.id})
    lightpaths = []
    for src, dst in pairs:
        try:
            route = network.k_shortest_routes(src, dst, 1)[0]
        except NoPathError:
            continue
        # The model uses the fastest route and no wavelength: occupancy is the emulation's business.
        lightpaths.append({"src": src, "dst": dst, "route": list(route.sites), "wavelength": None,
                           "one_way_ms": round(route.one_way_s * 1e3, 4)})
    return {
        "scenario": scenario.name, "topology": topology.name, "mode": "model-only",
        "policy": {"name": policy.name, "decision_interval": policy.decision_interval,
                   "min_dwell": policy.min_dwell, "hysteresis": policy.hysteresis,
                   "migration_cost": policy.migration_cost},
        "duration": scenario.duration, "time_compression": None,
        "started": started, "wall_seconds": wall_seconds,
        "link_backend": None, "container_engine": None,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "sites": [{"id": s.id, "name": s.name, "area": s.area, "lat": s.lat, "lon": s.lon,
                   "cpus": s.compute.cpus, "memory_bytes": int(s.compute.memory), "pue": s.pue}
                  for s in topology.sites],
        "spans": [{"ends": list(s.ends), "length_km": round(s.length, 3), "wavelengths": s.wavelengths}
                  for s in topology.spans],
        "lightpaths": lightpaths,
        "services": [{"id": s.id, "model": s.model,
                      "slo": {"latency_ms": round(s.slo.latency * 1e3, 3), "percentile": s.slo.percentile,
                              "jitter_ms": None if s.slo.jitter is None else round(s.slo.jitter * 1e3, 3)},
                      "initial_site": s.initial_site, "service_time_ms": round(s.service_time * 1e3, 3),
                      "cpus": s.cpus, "memory_bytes": int(s.memory), "state_bytes": int(s.state_size),
                      "demand": [{"region": d.region, "rate": d.rate} for d in s.demand]}
                     for s in scenario.services],
    }


def write_result(writer: RunDirWriter, result: SimulationResult) -> None:
    """Events, signals, placements and latency of a simulation, in the documented files."""
    writer.events(result.events)
    times = result.times.tolist()
    t_cells = format_column(times, 0) if all(t == int(t) for t in times) else format_column(times, 3)
    topology = result.topology
    n = len(times)

    # signals.csv: one row per site per interval, interval by interval.
    sites = topology.sites
    cols: list[list[str]] = [[] for _ in range(7)]
    for k in range(n):
        slot = result.signals[k]
        for site in sites:
            sig = slot[site.id]
            cols[0].append(t_cells[k])
            cols[1].append(site.id)
            cols[2].append(site.area)
            cols[3].append(sig.surplus_mw)
            cols[4].append(sig.renewable_share)
            cols[5].append(sig.carbon_g_per_kwh)
            cols[6].append(sig.price_yen_per_kwh)
    writer.write_columns("signals.csv", [cols[0], cols[1], cols[2], format_column(cols[3], 3),
                                         format_column(cols[4], 4), format_column(cols[5], 2),
                                         format_column(cols[6], 3)])

    services = [s.id for s in result.scenario.services]
    writer.write_columns("placements.csv", [
        [t_cells[k] for k in range(n) for _ in services],
        services * n,
        [site for row in result.placements for site in row],
    ])

    # latency.csv: interval by interval, then service and region in scenario order.
    groups = [(svc, demand.region) for svc in result.scenario.services for demand in svc.demand]
    if not groups:
        return
    blocks = []
    for svc, region in groups:
        table = result.latency[svc.id][region]
        blocks.append([
            t_cells, [svc.id] * n, [region] * n, list(table["site"]),
            list(map(str, table["requests"].tolist())), list(map(str, table["failed"].tolist())),
            *(format_column(table[key].tolist(), 3) for key in PERCENTILE_KEYS),
            [f"{svc.slo.latency * 1e3:g}"] * n,
        ])
    columns = []
    for c in range(len(blocks[0])):
        # Interleave the groups so rows run t0:g1, t0:g2, ..., t1:g1, ...
        merged = [None] * (n * len(blocks))
        for g, block in enumerate(blocks):
            merged[g::len(blocks)] = block[c]
        columns.append(merged)
    writer.write_columns("latency.csv", columns)
