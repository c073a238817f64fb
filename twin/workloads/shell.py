"""Workload commands for ``twin up --scenario FILE`` and the ``--check`` migration check.

Commands added to the interactive shell (services come from the scenario file):

    services                          where each service runs, its VIP and port
    deploy SERVICE SITE               start SERVICE at SITE (container) and point its VIP there
    migrate SERVICE SITE [STRATEGY]   move it (make-before-break | cold) and print what it cost
    load SERVICE SECONDS [RATE]       drive load from its demand regions; print latency and outcomes
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from twin.model.schema import Scenario
from twin.tables import format_table
from twin.workloads.site_runtime import EmulatedRuntime, service_port
from twin.workloads.stats import read_requests_csv, summarize


def workload_commands(session, scenario: Scenario, launcher) -> type:
    """A mixin class with the ``do_*`` methods above, bound to one runtime."""
    runtime = EmulatedRuntime(session, scenario, launcher, run_id=session.record.run_id)
    loop = asyncio.new_event_loop()
    by_id = {s.id: s for s in scenario.services}

    def run(coro):
        return loop.run_until_complete(coro)

    def service_of(name: str):
        if name not in by_id:
            raise ValueError(f"unknown service {name!r}; the scenario has {', '.join(by_id)}")
        return by_id[name]

    class WorkloadCommands:
        """Mixed into the twin shell, whose ``_guard`` turns errors into one printed line."""
        def do_services(self, line):
            """services: where each service runs, its VIP and port"""
            def show(_a):
                rows = []
                for index, s in enumerate(scenario.services, start=1):
                    state = runtime.services[s.id]
                    rows.append([s.id, s.model, state.vip, service_port(index), state.serving or "-",
                                 ", ".join(sorted(state.instances)) or "-"])
                print(format_table(["service", "model", "VIP", "port", "serving", "instances"], rows))
            self._guard(show, line)

        def do_deploy(self, line):
            """deploy SERVICE SITE: start SERVICE at SITE and point its VIP there"""
            def deploy(args):
                if len(args) != 2:
                    raise ValueError("usage: deploy SERVICE SITE")
                service_of(args[0])
                t0 = time.monotonic()
                run(runtime.ensure_running(args[0], args[1]))
                print(f"{args[0]} serving at {runtime.services[args[0]].serving} "
                      f"({time.monotonic() - t0:.1f} s to ready)")
            self._guard(deploy, line)

        def do_migrate(self, line):
            """migrate SERVICE SITE [make-before-break|cold]: move a running service"""
            def migrate(args):
                if len(args) not in (2, 3):
                    raise ValueError("usage: migrate SERVICE SITE [make-before-break|cold]")
                state = runtime.services[service_of(args[0]).id]
                if state.serving is None:
                    raise ValueError(f"{args[0]} is not deployed; deploy it first")
                runtime.strategy = args[2] if len(args) == 3 else "make-before-break"
                outcome = run(runtime.migrate(args[0], state.serving, args[1]))
                phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in outcome.phases_s.items())
                print(f"{outcome.strategy} {outcome.src} -> {outcome.dst}: {outcome.duration_s:.2f} s "
                      f"({phases}); state {outcome.state_bytes} B in {outcome.transfer_s:.3f} s")
            self._guard(migrate, line)

        def do_load(self, line):
            """load SERVICE SECONDS [RATE_SCALE]: load from the service's regions, then summarise"""
            def load(args):
                from twin.workloads.load_fleet import LoadFleet

                if len(args) not in (2, 3):
                    raise ValueError("usage: load SERVICE SECONDS [RATE_SCALE]")
                service = service_of(args[0])
                with tempfile.TemporaryDirectory(prefix="twin-load-") as tmp:
                    fleet = LoadFleet(session, scenario, Path(tmp), only=service.id,
                                      rate_scale=float(args[2]) if len(args) == 3 else 1.0)
                    fleet.start(float(args[1]))
                    fleet.wait(float(args[1]) + 10)
                    records = [r for p in fleet.files().values() for r in read_requests_csv(p)]
                s = summarize(records, service.slo.latency * 1e3)
                print(f"{s.requests} requests: {s.outcomes}; p50 {s.p50_ms} ms, p99 {s.p99_ms} ms, "
                      f"p99.9 {s.p999_ms} ms; answered by {s.sites}")
            self._guard(load, line)

    WorkloadCommands.runtime = runtime  # for teardown by the caller
    WorkloadCommands.loop = loop
    return WorkloadCommands

