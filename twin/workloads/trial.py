"""One measured migration: deploy a service, load it, move it, and say what clients saw.

Used by ``twin up --check`` (the migration check), by the interactive ``twin up``
commands, by ``benchmarks/migration.py`` and by the integration tests, so all of
them measure the same way:

    deploy at src -> load from the users' region -> ``before_s`` of steady load ->
    migrate (strategy) -> ``after_s`` of steady load -> stop load -> figures

Figures: total migration time and its phases, state bytes and the time they took
on the wire against ``size / path rate + 2 RTT`` (TCP and HTTP handshakes), the
interruption clients saw and the requests that failed (see
:mod:`twin.experiment.analysis`), and latency p99 before, during and after.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

from twin.experiment.analysis import migration_effects
from twin.model.schema import Scenario
from twin.workloads.stats import percentile, read_requests_csv

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 5.0


def trial_scenario(topology_path: str, service: dict) -> Scenario:
    """A one-service scenario around ``service`` (a scenario ``services`` entry as a dict)."""
    return Scenario.model_validate({"kind": "scenario", "name": "migration-trial", "topology": topology_path,
                                    "duration": "1h", "services": [service]})


def trial_service(service_id: str, *, model: str = "sensor-fusion-mlp", site: str, region: str,
                  rate: str = "20/s", state_size: str = "4MiB", request_size: str = "8KiB",
                  cpus: float = 0.5, memory: str = "384MiB") -> dict:
    """A scenario service entry with sensible defaults for trials."""
    return {"id": service_id, "model": model, "slo": {"latency": "50ms", "percentile": 99},
            "request_size": request_size, "response_size": "512B", "state_size": state_size,
            "service_time": "2ms", "cpus": cpus, "memory": memory, "initial_site": site,
            "demand": [{"region": region, "rate": rate}]}


def expected_transfer_s(state_bytes: int, rate_bps: float, rtt_s: float) -> float:
    """The state copy's floor: bytes at the path's rate plus the TCP and HTTP handshakes (2 RTT)."""
    return state_bytes * 8 / rate_bps + 2 * rtt_s


def run_trial(session, scenario: Scenario, launcher, *, src: str, dst: str, strategy: str,
              out_dir: Path, before_s: float = 5.0, after_s: float = 5.0, kill_during=None) -> dict:
    """Deploy at ``src``, migrate to ``dst`` under load; returns the figures (a flat dict).

    ``kill_during(runtime)`` (tests) runs in a thread while the migration is under way.
    """
    from twin.workloads.load_fleet import LoadFleet
    from twin.workloads.site_runtime import EmulatedRuntime

    service = scenario.services[0]
    runtime = EmulatedRuntime(session, scenario, launcher, run_id=session.record.run_id, strategy=strategy)
    fleet = LoadFleet(session, scenario, out_dir, timeout_s=LOAD_TIMEOUT_S)
    result: dict = {"service": service.id, "src": src, "dst": dst, "strategy": strategy,
                    "state_bytes_configured": int(service.state_size)}

    async def body() -> None:
        await runtime.ensure_running(service.id, src)
        duration = before_s + after_s + 60.0  # generous: stopped when the trial is over
        fleet.start(duration, start_at=time.time() + 0.3)
        await asyncio.sleep(0.3 + before_s)
        started = time.time()
        killer = asyncio.create_task(asyncio.to_thread(kill_during, runtime)) if kill_during else None
        try:
            outcome = await runtime.migrate(service.id, src, dst)
            result.update(outcome.to_event())
        except Exception as err:  # the trial reports it; the caller decides
            result.update({"ok": False, "error": str(err)})
        finished = time.time()
        if killer is not None:
            await killer
        result["started_unix"], result["finished_unix"] = started, finished
        await asyncio.sleep(after_s)
        result["placements"] = await runtime.placements()

    try:
        asyncio.run(body())
    finally:
        fleet.stop()
        asyncio.run(runtime.close())
    records = [r for path in fleet.files().values() for r in read_requests_csv(path)]
    t0, t1 = result["started_unix"], result["finished_unix"]
    result.update(migration_effects(records, t0, t1, LOAD_TIMEOUT_S))

    before = [r.latency_ms for r in records if r.send_unix < t0 and r.ok and r.latency_ms is not None]
    after = [r.latency_ms for r in records if r.send_unix > t1 and r.ok and r.latency_ms is not None]
    result["requests"] = len(records)
    result["failed_total"] = sum(1 for r in records if not r.ok)
    for q in (50, 99):
        result[f"p{q}_before_ms"] = percentile(before, float(q))
        result[f"p{q}_after_ms"] = percentile(after, float(q))
    result["answered_by"] = sorted({r.site for r in records if r.ok and r.site})
    result["answered_by_after"] = sorted({r.site for r in records if r.ok and r.site and r.send_unix > t1 + 1})
    return result


def migration_check(session, *, strategy: str = "make-before-break", state_size: str = "4MiB",
                    image: str | None = None) -> dict:
    """``twin up --check``'s migration check: move a stateful service across the longest
    lightpath under load; ok when it moved, lost no request and its state arrived whole.
    ``image``: the workload image (default: :func:`workload_image`)."""
    from twin.workloads.containers import ContainerRuntime
    from twin.workloads.site_runtime import PodmanLauncher, workload_image

    lightpaths = session.client.lightpaths()
    if not lightpaths:
        return {"ok": False, "text": "no lightpath to migrate over"}
    longest = max(lightpaths, key=lambda lp: lp["one_way_ms"])
    src, dst = longest["src"], longest["dst"]
    scenario = trial_scenario(str(session.topology_path), trial_service("check", site=src, region=src,
                                                                       state_size=state_size))
    with tempfile.TemporaryDirectory(prefix="twin-check-") as tmp, \
            ContainerRuntime(session.record.run_id, record=session.record) as containers:
        launcher = PodmanLauncher(containers, image or workload_image(), cpus=session.workload_cpus)
        result = run_trial(session, scenario, launcher, src=src, dst=dst, strategy=strategy, out_dir=Path(tmp),
                           before_s=3.0, after_s=3.0)
        engine = launcher.describe()
    ok = bool(result.get("ok")) and result["failed_requests"] == 0 and result["answered_by_after"] == [dst] \
        and result.get("state_bytes") == int(scenario.services[0].state_size)
    text = (f"{strategy} {src} -> {dst} ({longest['one_way_ms']:.2f} ms one way) in "
            f"{result.get('duration_s', 0):.2f} s, state {result.get('state_bytes', 0)} B in "
            f"{result.get('transfer_s', 0):.3f} s, {result['failed_requests']} failed, interruption "
            f"{result['interruption_ms']:.0f} ms, p99 before/after {result['p99_before_ms']}/"
            f"{result['p99_after_ms']} ms [{engine}]" + (f"; error: {result['error']}" if result.get("error") else ""))
    return {"ok": ok, "text": text, "engine": engine,
            **{k: v for k, v in result.items() if k not in ("placements",)}}
