"""Client load for every service and user region: one load generator per pair.

Each generator runs in its region's users host (``mnexec``), sends open-loop
Poisson requests to the service's VIP, and writes every request to
``<dir>/<service>.<region>.csv`` (format: twin.workloads.loadgen). The fleet
records the processes in the run record, so ``twin clean`` ends them if the
run is killed; ``stop()`` ends them with SIGTERM (they finish in-flight
requests and flush), then SIGKILL after a grace period.
"""

from __future__ import annotations

import logging
import signal
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twin.emulation.network import in_host
from twin.model import addressing as ad
from twin.model.schema import Scenario
from twin.workloads.site_runtime import LOADGEN_RT_PRIORITY, service_port

log = logging.getLogger(__name__)


@dataclass
class Generator:
    service: str
    region: str
    out: Path
    process: subprocess.Popen


class LoadFleet:
    """Start/stop the load generators of a scenario on a running TwinSession."""

    def __init__(self, session, scenario: Scenario, out_dir: Path, *,
                 rate_scale: float = 1.0, timeout_s: float = 5.0, python: str = sys.executable, seed: int = 0,
                 only: str | None = None):
        self.session = session
        self.scenario = scenario
        self.out_dir = Path(out_dir)
        self.rate_scale = rate_scale
        self.timeout_s = timeout_s
        self.python = python
        self.seed = seed
        self.only = only  # one service id, or None for all
        self.generators: list[Generator] = []

    def start(self, duration_s: float, *, start_at: float | None = None) -> None:
        """Start every generator; they share ``start_at`` (Unix time) as the schedule's origin."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start_at = start_at if start_at is not None else time.time() + 0.5
        for index, service in enumerate(self.scenario.services, start=1):
            if self.only is not None and service.id != self.only:
                continue
            for n, demand in enumerate(service.demand):
                out = self.out_dir / f"{service.id}.{demand.region}.csv"
                pid = self.session.network.host_pid(ad.host_name(demand.region, ad.USERS))
                args = [self.python, "-m", "twin.workloads.loadgen",
                        "--target", f"{ad.vip(index)}:{service_port(index)}", "--rate", f"{demand.rate * self.rate_scale:g}",
                        "--duration", f"{duration_s:g}", "--request-size", str(int(service.request_size)),
                        "--response-size", str(int(service.response_size)), "--region", demand.region,
                        "--service", service.id, "--out", str(out), "--timeout", f"{self.timeout_s:g}",
                        "--seed", str(self.seed * 1000 + index * 37 + n), "--start-at", f"{start_at:.6f}"]
                if service.state_size > 0 and service.model == "sensor-fusion-mlp":
                    args += ["--sessions", "16"]  # vehicles: the stateful service keeps per-session tracks
                if service.connection == "keep-alive":
                    args.append("--keep-alive")
                args += ["--rt-priority", str(LOADGEN_RT_PRIORITY)]
                # Clients run beside the workloads, off the emulated network's CPU (TwinSession.cpu_plan).
                cpus = self.session.workload_cpus
                # files, not pipes: a pipe could fill and block it. stdout is its closing JSON line.
                with open(out.with_suffix(".log"), "wb") as errors, open(out.with_suffix(".json"), "wb") as result:
                    process = subprocess.Popen(in_host(pid, args), stdout=result,
                                               stderr=errors, start_new_session=True,
                                               preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
                self.session.record.add_process(process.pid, f"loadgen {service.id} {demand.region}")
                self.generators.append(Generator(service.id, demand.region, out, process))
        log.info("started %d load generators", len(self.generators))

    def files(self) -> dict[tuple[str, str], Path]:
        return {(g.service, g.region): g.out for g in self.generators}

    def failed(self) -> list[str]:
        """Generators that exited with an error, with the last line of their stderr."""
        bad = []
        for g in self.generators:
            code = g.process.poll()
            if code not in (None, 0):
                err = g.out.with_suffix(".log").read_text(errors="replace").strip()
                bad.append(f"{g.service}@{g.region} exited {code}: {err.splitlines()[-1] if err else ''}")
        return bad

    def stop(self, grace_s: float = 10.0) -> None:
        for g in self.generators:
            if g.process.poll() is None:
                g.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for g in self.generators:
            try:
                g.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                g.process.kill()
                g.process.wait()

    def wait(self, timeout_s: float) -> None:
        """Wait for the generators to finish their schedule on their own."""
        deadline = time.monotonic() + timeout_s
        for g in self.generators:
            try:
                g.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.stop(grace_s=2.0)
