"""`twin run SCENARIO --out DIR`: a whole experiment on the emulated network.

Order of work (each step tears down in reverse on error, Ctrl-C or SIGTERM):

1. validate the scenario, load its power signals, run the model once (the
   static and oracle energies are computed on the same signals, and the oracle
   policy needs the model's plan);
2. bring up the topology (TwinSession: OVS, Mininet, delay engine, controller)
   and set up the lightpaths the plan serves;
3. probe the site pairs whose SLO margin is tight and correct the model's
   feasibility with what was measured (``probes.csv``);
4. start every service at its initial site as a container (podman) and point
   its VIP there; start one open-loop load generator per service and region;
5. run the shifting daemon in compressed scenario time; migrations go through
   the emulated runtime (make-before-break by default) and the controller;
6. stop the load, stop the containers, take the network down;
7. write the run directory (docs/run-directory.md) from the daemon's events and
   every request record, then build report.html.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import platform
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from twin.errors import NoPathError, TwinError
from twin.experiment.analysis import (
    EngineBehind,
    TimeBase,
    latency_rows,
    migration_effects,
    service_summary,
)
from twin.experiment.rundata import engine_totals
from twin.experiment.rundir import RunDirWriter, write_json
from twin.model import energy
from twin.model.optics import OpticalNetwork
from twin.model.policies import StaticPolicy, feasible_sites, make_policy
from twin.model.power import load_signals
from twin.model.schema import Scenario, Topology
from twin.model.simulate import simulate
from twin.model.validate import load_scenario
from twin.shifter.daemon import ScenarioClock, ShiftingDaemon
from twin.workloads.stats import CSV_FIELDS

log = logging.getLogger(__name__)

# A (region, site) pair is probed when the model's RTT + service time lies in this
# share of the SLO budget: far inside or far outside, a measurement cannot change
# the verdict, and each probe costs the run about half a second.
MARGIN_LOW, MARGIN_HIGH = 0.4, 1.6
PROBE_COUNT, PROBE_RATE = 200, 1000.0
LOAD_TIMEOUT_S = 5.0
# Clients start this many wall seconds before the scenario clock: the day is a
# slice of a running system, so its first requests should not pay for cold
# connections and flow caches. Warm-up requests are counted in summary.json
# ("warm_up") and kept out of every statistic of the day.
LOAD_WARMUP_S = 3.0


def run_emulated(scenario_path: str | Path, out_dir: str | Path, *, strategy: str = "make-before-break",
                 link_backend: str = "auto", time_compression: float | None = None, progress: bool = True,
                 overwrite: bool = False, build_report: bool = True, attach_to: str | None = None,
                 attach: bool = False, calibrate: bool = True, cpu_layout: str = "workloads") -> dict:
    """Run the scenario on the emulated twin and write the run directory; returns summary.json's content.

    With ``attach`` (``twin shift``) the network is the one a running ``twin up``
    made (``attach_to`` picks the run); it is left running afterwards, and the
    model's RTTs are not corrected by probes.

    Raises:
        ValidationError: the scenario or its topology is invalid.
        TwinError: a step failed (its message says which and why); everything is torn down.
    """
    from twin.emulation.session import TwinSession

    wall_start = time.monotonic()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    scenario_path = Path(scenario_path)
    scenario, topology = load_scenario(scenario_path)
    topology_path = (scenario_path.parent / scenario.topology).resolve()
    compression = time_compression or scenario.time_compression
    signals = load_signals(scenario, scenario_path.parent, topology)
    model = simulate(scenario, topology, signals)
    from twin.workloads.site_runtime import workload_image

    image = workload_image()  # before anything starts: a missing image is a one-line fix, not a torn-down run
    writer = RunDirWriter(out_dir, overwrite=overwrite)
    events: list[dict] = []
    placements: dict[float, dict[str, str]] = {}
    probes: list[tuple] = []
    info: dict = {}
    try:
        if attach:
            from twin.workloads.attach import attach as attach_run

            session = attach_run(attach_to)
            if session.topology.name != topology.name:
                raise TwinError(f"{scenario_path}: its topology is {topology.name!r} but the running twin "
                                f"({session.record.run_id}) has {session.topology.name!r}; start "
                                f"'twin up {topology_path}' or pick another scenario")
            info["lightpaths"] = session.client.lightpaths()
            info["link_backend"] = f"attached to run {session.record.run_id}"
            base = _experiment(session, image, scenario, topology, signals, model, compression, strategy, {},
                               events, placements, info, writer.path, progress)
        else:
            with TwinSession(topology_path, backend=link_backend, calibrate=calibrate,
                             cpu_layout=cpu_layout) as session:
                # Lightpaths are set up on demand (where services and their users are) and
                # released when no longer needed: the whole mesh does not fit the wavelengths.
                info["lightpaths"] = []
                info["link_backend"] = session.network.link_backend
                info["calibration"] = session.calibration
                info["cpus"] = session.summary()["cpus"]
                overrides = _measure_tight_pairs(session, scenario, topology, probes)
                base = _experiment(session, image, scenario, topology, signals, model, compression, strategy,
                                   overrides, events, placements, info, writer.path, progress)
            info["engine_stats"] = session.network.engine_stats  # read on leaving, once the engine has stopped
    except BaseException:
        writer.close()
        raise
    info["wall_seconds"] = round(time.monotonic() - wall_start, 3)
    summary = _write_run_directory(writer, scenario, topology, signals, model, base, events, placements, probes,
                                   info, started=started, strategy=strategy, compression=compression)
    if build_report:
        from twin.experiment.report import build_report as make_report
        make_report(writer.path)
    return summary


def _experiment(session, image, scenario, topology, signals, model, compression, strategy, overrides, events,
                placements, info, run_dir: Path, progress: bool) -> TimeBase:
    """Containers, load and the daemon on a running network; returns the wall/scenario time base."""
    from twin.workloads.containers import ContainerRuntime
    from twin.workloads.load_fleet import LoadFleet
    from twin.workloads.site_runtime import EmulatedRuntime, PodmanLauncher

    with ContainerRuntime(session.record.run_id, record=session.record) as containers:
        launcher = PodmanLauncher(containers, image, cpus=session.workload_cpus)
        info["container_engine"] = launcher.describe()
        runtime = EmulatedRuntime(session, scenario, launcher, run_id=session.record.run_id, strategy=strategy)
        fleet = LoadFleet(session, scenario, run_dir / "load", timeout_s=LOAD_TIMEOUT_S)
        try:
            base = asyncio.run(_drive(scenario, topology, signals, model, runtime, fleet, compression, overrides,
                                      events, placements, progress))
        finally:
            info["lightpaths"] = info.get("lightpaths", []) + runtime.lightpath_log
        info["load_failures"] = fleet.failed()
    return base


def _measure_tight_pairs(session, scenario: Scenario, topology: Topology, probes: list[tuple]) -> dict:
    """Measured RTT (ms) for the (region, site) pairs whose SLO margin is tight."""
    network = OpticalNetwork(topology)
    pairs = set()
    for service in scenario.services:
        budget = service.slo.latency
        for demand in service.demand:
            for site in topology.sites:
                if site.id == demand.region:
                    continue
                try:
                    rtt = 2 * network.shortest_delay(demand.region, site.id)
                except NoPathError:
                    continue
                if MARGIN_LOW * budget <= rtt + service.service_time <= MARGIN_HIGH * budget:
                    pairs.add((demand.region, site.id))
    measured = {}
    for region, site in tqdm(sorted(pairs), desc="probing tight pairs", unit="pair", leave=False):
        try:  # a lightpath just for the probe, released right after
            lightpath = session.client.create_lightpath(region, site)
        except TwinError as err:
            log.info("not probing %s-%s: %s", region, site, err)
            continue
        try:
            summary = session.probe(region, site, count=PROBE_COUNT, rate=PROBE_RATE)
        finally:
            session.client.delete_lightpath(lightpath["id"])
        measured[(region, site)] = summary.rtt_us.p99 / 1e3  # the tail: SLOs are judged at high percentiles
        probes.append((0.0, region, site, "apn", summary.forward_us.median / 1e3,
                       summary.backward_us.median / 1e3, summary.rtt_us.median / 1e3))
    return measured


async def _drive(scenario, topology, signals, model, runtime, fleet, compression, overrides, events, placements,
                 progress) -> TimeBase:
    """Deploy, load, shift; returns the time base that maps wall clock to scenario time."""
    by_id = {s.id: s for s in scenario.services}

    def feasible(service_id: str, down: frozenset, cut: frozenset) -> frozenset:
        cut_spans = frozenset(frozenset(span) for span in cut)
        # Measured RTTs hold for the intact network only.
        sites = feasible_sites(by_id[service_id], topology, None if cut_spans else overrides, cut_spans=cut_spans)
        return frozenset(s for s in sites if s not in down)

    if scenario.policy.name == "static":
        policy = StaticPolicy()
    else:
        policy = make_policy(scenario.policy, oracle_plan=model.oracle_plan)
    await runtime.deploy_all()
    duration_wall = scenario.duration / compression
    start_unix = time.time() + 1.0 + LOAD_WARMUP_S
    fleet.start(duration_wall + LOAD_WARMUP_S, start_at=start_unix - LOAD_WARMUP_S)
    clock = ScenarioClock(compression, start_wall=time.monotonic() + (start_unix - time.time()))
    base = TimeBase(start_unix, compression)

    def emit(event: dict) -> None:
        event.setdefault("wall", time.time())
        events.append(event)

    def on_step(t: float, where: dict[str, str]) -> None:
        placements[t] = dict(where)

    daemon = ShiftingDaemon(
        services=scenario.services, policy=policy, signals=signals, runtime=runtime, feasible_sites=feasible,
        capacity={s.id: (s.compute.cpus, s.compute.memory) for s in topology.sites},
        decision_interval_s=scenario.policy.decision_interval, duration_s=scenario.duration, clock=clock,
        emit=emit, events=scenario.events, on_step=on_step)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    daemon.install_signal_handlers()
    bar = tqdm(total=round(scenario.duration / 3600, 2), unit="h", desc=f"{scenario.name}", disable=not progress,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} h scenario [{elapsed}] {postfix}")

    live = LiveSlo(scenario, fleet)

    async def show_progress() -> None:
        while True:
            bar.n = min(bar.total, round(clock.now() / 3600, 2))
            where = daemon.result.placements or {s.id: s.initial_site for s in scenario.services}
            slo = live.update()
            bar.set_postfix_str(" ".join(f"{k}@{v}:{slo.get(k, '-')}" for k, v in where.items())
                                + f" moves={daemon.result.migrations} failed={daemon.result.failed_migrations}")
            await asyncio.sleep(1.0)

    ticker = asyncio.create_task(show_progress())
    try:
        await daemon.run()
    finally:
        ticker.cancel()
        bar.close()
        daemon.remove_signal_handlers()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        remaining = max(0.0, start_unix + duration_wall - time.time())
        if daemon.result.stopped_early:
            await asyncio.to_thread(fleet.stop)
        else:
            await asyncio.to_thread(fleet.wait, remaining + LOAD_TIMEOUT_S + 5)
        await runtime.close()
    if daemon.result.stopped_early:
        raise KeyboardInterrupt  # the session tears down; nothing half-written is kept as a result
    return base


_LATENCY, _OUTCOME = CSV_FIELDS.index("latency_ms"), CSV_FIELDS.index("outcome")


class LiveSlo:
    """SLO state for the progress bar: each service's latency at its SLO percentile over the
    last ``window`` requests, read incrementally from the load generators' files."""

    def __init__(self, scenario: Scenario, fleet, window: int = 2000):
        self.services = {s.id: s for s in scenario.services}
        self.fleet = fleet
        self.window = window
        self.offsets: dict[Path, int] = {}
        self.recent: dict[str, list[float | None]] = {sid: [] for sid in self.services}

    def update(self) -> dict[str, str]:
        for (service, _region), path in self.fleet.files().items():
            try:
                # Bytes, not text: the CSV ends rows with \r\n, which text mode would turn
                # into \n, and the offset would fall a byte short per row (mid-row reads
                # then showed as failed requests).
                with path.open("rb") as fh:
                    fh.seek(self.offsets.get(path, 0))
                    chunk = fh.read()
            except OSError:
                continue
            complete = chunk[:chunk.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                fields = line.split(",")
                if len(fields) < len(CSV_FIELDS) or fields[0] == CSV_FIELDS[0]:
                    continue
                latency = fields[_LATENCY]
                self.recent[service].append(float(latency) if fields[_OUTCOME] == "ok" and latency else None)
            del self.recent[service][:-self.window]
        state = {}
        for sid, values in self.recent.items():
            if not values:
                continue
            service = self.services[sid]
            ok = sorted(v for v in values if v is not None)
            failed = len(values) - len(ok)
            rank = max(0, min(len(values) - 1, int(len(values) * service.slo.percentile / 100.0)))
            at = ok[rank] if rank < len(ok) else float("inf")  # failures count as misses
            state[sid] = f"p{service.slo.percentile:g}={at:.1f}ms" + ("" if at <= service.slo.latency * 1e3
                                                                      else "!") + (f" {failed}err" if failed else "")
        return state


def _write_run_directory(writer: RunDirWriter, scenario: Scenario, topology: Topology, signals, model, base,
                         events, placements, probes, info, *, started, strategy, compression) -> dict:
    from twin.experiment.model_run import run_info
    from twin.workloads.stats import read_requests_csv

    run_dir = writer.path
    interval = scenario.policy.decision_interval
    records = {s.id: {} for s in scenario.services}
    warm_up = {"seconds": LOAD_WARMUP_S, "requests": 0, "failed": 0}
    for path in sorted((run_dir / "load").glob("*.csv")):
        service, region = path.stem.split(".", 1)
        if service in records:
            rows = read_requests_csv(path)
            day = [r for r in rows if r.send_unix >= base.start_unix]
            warm_up["requests"] += len(rows) - len(day)
            warm_up["failed"] += sum(1 for r in rows if r.send_unix < base.start_unix and not r.ok)
            records[service][region] = day
    all_records = {sid: [r for rs in by_region.values() for r in rs] for sid, by_region in records.items()}

    migrations_by_service: dict[str, list[dict]] = {s.id: [] for s in scenario.services}
    for event in events:
        if event.get("kind") == "migration" and "started" in event:
            effects = migration_effects(all_records[event["service"]], base.unix(event["started"]),
                                        base.unix(event["finished"]), LOAD_TIMEOUT_S)
            event.update(effects)
            migrations_by_service[event["service"]].append(event)
    for event in sorted(events, key=lambda e: e["t"]):
        fields = {k: v for k, v in event.items() if k not in ("t", "kind", "wall")}
        writer.event(event["t"], event["kind"], wall=event.get("wall"), **fields)

    times = sorted(placements)
    for t in times:
        for site in topology.sites:
            sig = signals[site.id].at(t)
            writer.signal(t, site.id, site.area, sig.surplus_mw, sig.renewable_share, sig.carbon_g_per_kwh,
                          sig.price_yen_per_kwh)
        for service in scenario.services:
            writer.placement(t, service.id, placements[t].get(service.id, ""))
    for service in scenario.services:
        site_at = {t: placements[t].get(service.id, "") for t in times}
        for row in latency_rows(records[service.id], service.id, service.slo.latency * 1e3, base, interval,
                                scenario.duration, site_at):
            writer.latency(**row)
        writer.request_rows(service.id, sorted(
            ((round(base.t(r.send_unix), 3), r.region, r.site or None, r.latency_ms, r.outcome)
             for r in all_records[service.id]), key=lambda row: row[0]))
    if probes:
        writer.probe_rows(probes)
    if info.get("engine_stats"):
        write_json(run_dir / "engine.json", info["engine_stats"])

    by_slot = []
    initial = {s.id: s.initial_site for s in scenario.services}
    for t in model.times.tolist():
        k = bisect.bisect_right(times, t)  # the last decision at or before t
        where = placements[times[k - 1]] if k else initial
        by_slot.append({sid: where.get(sid, site) for sid, site in initial.items()})
    used = energy.account_placements(by_slot, scenario, topology, signals)

    run = run_info(scenario, topology, started=started, wall_seconds=info["wall_seconds"])
    run.update({"mode": "emulated", "time_compression": compression, "link_backend": info.get("link_backend"),
                "container_engine": info.get("container_engine"), "migration_strategy": strategy,
                "lightpaths": [{"src": lp["src"], "dst": lp["dst"], "route": lp.get("route"),
                                "wavelength": lp.get("wavelength"), "one_way_ms": lp.get("one_way_ms")}
                               for lp in info.get("lightpaths", [])],
                "load_generator_failures": info.get("load_failures", []),
                "transit_calibration": info.get("calibration"), "cpus": info.get("cpus"),
                "start_unix": round(base.start_unix, 6)})
    writer.write_run(run)
    engine_stats = info.get("engine_stats")
    behind = EngineBehind.from_stats(engine_stats) if engine_stats else None
    summary = {
        "format": 1, "scenario": scenario.name, "mode": "emulated", "policy": scenario.policy.name,
        "migration_strategy": strategy, "wall_seconds": info["wall_seconds"], "warm_up": warm_up,
        "services": {s.id: service_summary(all_records[s.id], slo_ms=s.slo.latency * 1e3,
                                           percentile_pct=s.slo.percentile,
                                           jitter_budget_ms=None if s.slo.jitter is None else s.slo.jitter * 1e3,
                                           migrations=migrations_by_service[s.id], engine_behind=behind)
                     for s in scenario.services},
        "energy": {"policy": {"kwh": round(used.kwh, 6), "surplus_kwh": round(used.surplus_kwh, 6),
                              "kg_co2": round(used.kg_co2, 6)},
                   "static": model.summary["energy"]["static"], "oracle": model.summary["energy"]["oracle"]},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    if engine_stats:
        summary["engine"] = engine_totals(engine_stats)
    for sid, connections in _connection_counts(run_dir / "load").items():
        if sid in summary["services"]:
            summary["services"][sid].update(connections)
    writer.write_summary(summary)
    writer.close()
    if info.get("load_failures"):
        raise TwinError("load generators failed: " + "; ".join(info["load_failures"]))
    return summary


def _connection_counts(load_dir: Path) -> dict[str, dict]:
    """Per service: TCP connections the clients opened, requests sent again on a new one
    after a kept-alive connection closed under them, and the scheduling the clients ran
    under (from each generator's closing line)."""
    out: dict[str, dict] = {}
    for path in sorted(load_dir.glob("*.json")):
        service = path.stem.split(".", 1)[0]
        try:
            line = json.loads(path.read_text().strip().splitlines()[-1])
        except (ValueError, IndexError, OSError):
            continue  # a generator that died wrote no line; load_failures says so
        counts = out.setdefault(service, {"connections": 0, "retried": 0, "client_scheduling": []})
        counts["connections"] += int(line.get("connections", 0))
        counts["retried"] += int(line.get("retried", 0))
        scheduling = line.get("scheduling", "normal")
        if scheduling not in counts["client_scheduling"]:
            counts["client_scheduling"].append(scheduling)
    return out
