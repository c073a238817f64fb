"""Services at emulated sites: deploy, steer, migrate (the daemon's emulated Runtime).

One :class:`EmulatedRuntime` per running twin. It owns every service instance
(a container in a site's compute host, see :mod:`twin.workloads.containers`),
the VIP addresses on the compute hosts, and the calls to the controller that
steer each service's VIP. Everything it does to an instance goes over HTTP from
inside the instance's site namespace (``netcall``/``transfer`` run through
``mnexec``), and state moves over the emulated APN between the two sites, so a
migration's time depends on the path's delay and rate like the real thing.

Migration strategies (docs/migration.md)

make-before-break (default)
    start and warm at the destination -> copy state src -> dst over the lightpath
    between the sites -> re-point the VIP (new connections go to dst; open ones
    stay with src by connection tracking) -> drain src (finish in-flight, refuse
    new) -> tell the controller src is drained -> stop src.
cold
    drain src (clients see refusals from here) -> start dst -> copy state ->
    re-point -> stop src. For comparison: its downtime is what make-before-break
    avoids.

Every failure before the re-point rolls back to the source (dst is stopped) and
raises MigrationFailed, so a service is never left without an instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twin.emulation.controller import ControllerError
from twin.emulation.network import in_host
from twin.errors import TwinError
from twin.model import addressing as ad
from twin.model.schema import Scenario, Service
from twin.shifter.interfaces import (
    ControllerUnavailable,
    MigrationFailed,
    MigrationOutcome,
)

log = logging.getLogger(__name__)

SERVICE_PORT_BASE = 8000
# Realtime priorities on the workload CPUs, all under the delay engine's (ENGINE_RT_PRIORITY,
# 10): first the load generators, the measuring instrument, then the servers of services
# with ``cpu_priority: realtime``. Under the fair scheduler both waited up to 4-5 ms
# (p99 3.5 ms) behind farm-images' compute; the drive-assist server's own share of the
# request time fell from p99 6.1 to 3.1 ms with SCHED_FIFO (benchmarks/README.md, eighth pass).
LOADGEN_RT_PRIORITY = 5
SERVICE_RT_PRIORITY = 4


def service_port(index: int) -> int:
    """TCP port of service ``index`` (1-based, scenario order): services sharing a site's
    compute host (one network namespace) each need their own."""
    return SERVICE_PORT_BASE + index
STRATEGIES = ("make-before-break", "cold")


class InstanceLauncher(Protocol):
    """Starts and stops one service instance inside a site's network namespace."""

    def start(self, *, name: str, service: Service, site: str, netns_pid: int, server_args: list[str]) -> object:
        """Start the instance (blocking); returns a handle for stop()."""

    def stop(self, handle: object, *, grace_s: float = 10.0) -> None:
        """Stop it (SIGTERM, grace, then kill) and remove everything it made."""

    def alive(self, handle: object) -> bool:
        """Whether the instance still runs."""

    def describe(self) -> str:
        """What runs instances, for results (e.g. 'podman 4.3.1 (runc, cgroup v1)')."""


@dataclass
class Instance:
    service: str
    site: str
    name: str
    handle: object
    started_wall: float


@dataclass
class ServiceState:
    service: Service
    index: int  # 1-based, VIP 10.3.0.index
    serving: str | None = None  # site new connections go to
    instances: dict[str, Instance] = field(default_factory=dict)

    @property
    def vip(self) -> str:
        return ad.vip(self.index)

    @property
    def port(self) -> int:
        return service_port(self.index)


class EmulatedRuntime:
    """The daemon's :class:`twin.shifter.interfaces.Runtime` on a running TwinSession."""

    def __init__(self, session, scenario: Scenario, launcher: InstanceLauncher, *, run_id: str,
                 strategy: str = "make-before-break", python: str = sys.executable,
                 ready_timeout_s: float = 60.0, emit: Callable[[dict], None] | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown migration strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.session = session
        self.scenario = scenario
        self.launcher = launcher
        self.run_id = run_id
        self.strategy = strategy
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.emit = emit or (lambda event: None)
        self.services = {s.id: ServiceState(s, i) for i, s in enumerate(scenario.services, start=1)}
        self._lock = asyncio.Lock()  # one migration or deployment at a time
        self.owned_lightpaths: dict[frozenset, str] = {}  # pair -> id, set up on demand by this runtime
        self.lightpath_log: list[dict] = []  # every lightpath it set up, for run.json

    # -- helpers (blocking; run in threads) ------------------------------------------------
    def _host_pid(self, site: str, role: int = ad.COMPUTE) -> int:
        return self.session.network.host_pid(ad.host_name(site, role))

    def _in_site(self, site: str, args: list[str], *, timeout_s: float) -> subprocess.CompletedProcess:
        return subprocess.run(in_host(self._host_pid(site), args), capture_output=True, text=True,
                              timeout=timeout_s)

    def _netcall(self, site: str, port: int, method: str, path: str, *, until: int | None = None,
                 within_s: float = 30.0, timeout_s: float = 30.0) -> dict:
        args = [self.python, "-m", "twin.workloads.netcall", method, f"http://127.0.0.1:{port}{path}",
                "--timeout", str(timeout_s)]
        if until is not None:
            args += ["--until", str(until), "--within", str(within_s)]
        proc = self._in_site(site, args, timeout_s=within_s + timeout_s + 10)
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"status": 0, "error": proc.stderr.strip()[-300:] or "no answer"}

    def _controller(self, what: str, call: Callable[[], object]) -> object:
        try:
            return call()
        except ControllerError as err:
            if err.status is None:  # no answer at all: the controller is down or restarting
                raise ControllerUnavailable(str(err)) from None
            raise

    def _set_vip_address(self, site: str, vip: str, present: bool) -> None:
        from twin.emulation.vip import add_vip, remove_vip

        try:
            (add_vip if present else remove_vip)(self.session.network, site, vip)
        except TwinError as err:
            if present:
                raise MigrationFailed(f"could not add VIP {vip} at {site}: {err}") from None
            log.warning("removing VIP %s at %s: %s", vip, site, err)

    def _ensure_lightpath(self, a: str, b: str) -> None:
        """A lightpath between ``a`` and ``b`` exists afterwards (APN on demand: set up here,
        released by :meth:`_release_unneeded` when no service needs it any more)."""
        if a == b:
            return
        client = self.session.client
        existing = self._controller("lightpaths", client.lightpaths)
        for lp in existing:  # type: ignore[union-attr]
            if {lp["src"], lp["dst"]} == {a, b}:
                return
        try:
            made = self._controller("create lightpath", lambda: client.create_lightpath(a, b))
        except ControllerError as err:
            raise MigrationFailed(f"no lightpath {a}-{b} could be set up: {err}") from None
        self.owned_lightpaths[frozenset((a, b))] = made["id"]  # type: ignore[index]
        self.lightpath_log.append(dict(made))  # type: ignore[arg-type]

    def _needed_pairs(self) -> set[frozenset]:
        """Site pairs some running instance needs: each demand region to each instance's site."""
        return {frozenset((d.region, site)) for state in self.services.values() for site in state.instances
                for d in state.service.demand if d.region != site}

    def _release_unneeded(self) -> None:
        """Delete the lightpaths this runtime set up that no instance needs now (best effort)."""
        needed = self._needed_pairs()
        for pair, lightpath_id in list(self.owned_lightpaths.items()):
            if pair in needed:
                continue
            try:
                self._controller("delete lightpath", lambda i=lightpath_id: self.session.client.delete_lightpath(i))
            except TwinError as err:
                log.warning("could not release lightpath %s: %s", lightpath_id, err)
                continue
            del self.owned_lightpaths[pair]

    def _server_args(self, state: ServiceState, site: str) -> list[str]:
        s = state.service
        args = ["--service", s.id, "--model", s.model, "--site", site, "--port", str(state.port),
                "--state-size", str(int(s.state_size))]
        if s.cpu_priority == "realtime":
            args += ["--rt-priority", str(SERVICE_RT_PRIORITY)]
        return args

    def _start_instance(self, state: ServiceState, site: str) -> Instance:
        """Lightpaths from every user region, VIP on the host, instance started and ready."""
        for demand in state.service.demand:
            self._ensure_lightpath(demand.region, site)
        self._set_vip_address(site, state.vip, True)
        name = f"tw-{self.run_id}-{state.service.id}-{site}"
        try:
            handle = self.launcher.start(name=name, service=state.service, site=site,
                                         netns_pid=self._host_pid(site), server_args=self._server_args(state, site))
        except BaseException as err:
            if state.serving != site:
                self._set_vip_address(site, state.vip, False)
            if isinstance(err, TwinError) and not isinstance(err, ControllerUnavailable):
                raise MigrationFailed(f"{state.service.id} could not start at {site}: {err}") from None
            raise
        instance = Instance(state.service.id, site, name, handle, time.time())
        ready = self._netcall(site, state.port, "GET", "/readyz", until=200, within_s=self.ready_timeout_s, timeout_s=5)
        if ready.get("status") != 200:
            self._stop_instance(state, instance)
            raise MigrationFailed(f"{state.service.id} at {site} not ready within {self.ready_timeout_s:.0f}s: "
                                  f"{ready.get('error') or ready.get('body')}")
        state.instances[site] = instance
        return instance

    def _stop_instance(self, state: ServiceState, instance: Instance) -> None:
        try:
            self.launcher.stop(instance.handle)
        finally:
            state.instances.pop(instance.site, None)
            if state.serving != instance.site:
                self._set_vip_address(instance.site, state.vip, False)

    def _copy_state(self, state: ServiceState, src: str, dst: str) -> dict:
        self._ensure_lightpath(src, dst)
        src_ip = self.session.network.host_ip(src, ad.COMPUTE)
        max_rate = self.scenario.migration.max_rate
        proc = self._in_site(dst, [self.python, "-m", "twin.workloads.transfer",
                                   "--src", f"http://{src_ip}:{state.port}/state",
                                   "--dst", f"http://127.0.0.1:{state.port}/state",
                                   "--max-rate", str(int(max_rate / 8) if max_rate else 0)], timeout_s=600)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": proc.stderr.strip()[-300:] or "no output"}
        if "error" in result:
            raise MigrationFailed(f"state copy {src} -> {dst} failed: {result['error']}")
        return result

    def _point(self, state: ServiceState, site: str) -> None:
        client = self.session.client
        # force: the lightpaths from every demand region were made by _start_instance;
        # users of other regions are not this service's clients.
        self._controller("steer", lambda: client.set_service_site(state.vip, site, force=True))
        state.serving = site

    def _drained(self, state: ServiceState, site: str) -> None:
        client = self.session.client
        drained = getattr(client, "service_drained", None)
        if drained is not None:
            self._controller("drained", lambda: drained(state.vip, site))

    # -- the Runtime protocol --------------------------------------------------------------
    async def deploy_all(self) -> None:
        """Start every service at its initial site and point its VIP there."""
        for state in self.services.values():
            await self.ensure_running(state.service.id, state.service.initial_site)

    async def placements(self) -> dict[str, str]:
        def check() -> dict[str, str]:
            steered = self._controller("services", self.session.client.services)
            out = {}
            for sid, state in self.services.items():
                if state.serving is None or state.serving not in state.instances:
                    continue
                if not self.launcher.alive(state.instances[state.serving].handle):
                    continue
                entry = steered.get(state.vip) if isinstance(steered, dict) else None  # type: ignore[union-attr]
                if entry is None or entry.get("site") != state.serving:
                    # the controller restarted or lost the VIP: put it back (reconcile)
                    self._point(state, state.serving)
                out[sid] = state.serving
            return out
        return await asyncio.to_thread(check)

    async def ensure_running(self, service: str, site: str) -> None:
        async with self._lock:
            state = self.services[service]
            if state.serving is not None and state.serving in state.instances \
                    and self.launcher.alive(state.instances[state.serving].handle):
                return
            def start() -> None:
                stale = state.instances.pop(site, None)
                if stale is not None:
                    self.launcher.stop(stale.handle)
                self._start_instance(state, site)
                self._point(state, site)
            await asyncio.to_thread(start)
            self.emit({"kind": "deploy", "service": service, "site": site})

    async def migrate(self, service: str, src: str, dst: str) -> MigrationOutcome:
        async with self._lock:
            state = self.services[service]
            if state.serving != src or src not in state.instances:
                raise MigrationFailed(f"{service} is not serving at {src} (it serves at {state.serving})")
            move = self._cold if self.strategy == "cold" else self._make_before_break
            try:
                return await asyncio.to_thread(move, state, src, dst)
            except (ControllerUnavailable, MigrationFailed):
                raise
            except (TwinError, subprocess.TimeoutExpired) as err:
                # Anything else that failed below (podman, a helper timing out) is a failed
                # migration too: the steps above rolled back to the source.
                raise MigrationFailed(f"{service} {src} -> {dst}: {err}") from None
            finally:
                # wavelengths the old placement (or a failed attempt) held go back to the pool
                await asyncio.to_thread(self._release_unneeded)

    def _make_before_break(self, state: ServiceState, src: str, dst: str) -> MigrationOutcome:
        phases: dict[str, float] = {}
        t0 = time.monotonic()
        outcome = MigrationOutcome(state.service.id, src, dst, "make-before-break", False)
        dst_instance = self._start_instance(state, dst)
        phases["start_warm_s"] = time.monotonic() - t0
        try:
            t1 = time.monotonic()
            copied = self._copy_state(state, src, dst) if state.service.state_size > 0 else {"bytes": 0,
                                                                                            "seconds": 0.0}
            phases["state_copy_s"] = time.monotonic() - t1
            t2 = time.monotonic()
            self._point(state, dst)
            phases["repoint_s"] = time.monotonic() - t2
        except BaseException:
            self._stop_instance(state, dst_instance)  # roll back: src still serves
            raise
        # From here dst serves new connections; src only finishes what it has.
        t3 = time.monotonic()
        drained = self._netcall(src, state.port, "POST", "/drain", timeout_s=60)
        phases["drain_s"] = time.monotonic() - t3
        try:
            self._drained(state, src)
        except ControllerUnavailable:
            log.warning("controller down while marking %s drained at %s; reconciled later", state.vip, src)
        self._finish(state, src, outcome, t0, phases, copied)
        if drained.get("status") != 200:
            outcome.error = f"drain at {src} answered {drained.get('status')}: {drained.get('error')}"
        return outcome

    def _cold(self, state: ServiceState, src: str, dst: str) -> MigrationOutcome:
        phases: dict[str, float] = {}
        t0 = time.monotonic()
        outcome = MigrationOutcome(state.service.id, src, dst, "cold", False)
        self._netcall(src, state.port, "POST", "/drain", timeout_s=60)  # from here clients are refused
        phases["drain_s"] = time.monotonic() - t0
        dst_instance = None
        try:
            t1 = time.monotonic()
            dst_instance = self._start_instance(state, dst)
            phases["start_s"] = time.monotonic() - t1
            t2 = time.monotonic()
            copied = self._copy_state(state, src, dst) if state.service.state_size > 0 else {"bytes": 0}
            phases["state_copy_s"] = time.monotonic() - t2
            t3 = time.monotonic()
            self._point(state, dst)
            phases["repoint_s"] = time.monotonic() - t3
        except BaseException:
            # roll back: the source serves again, the destination goes
            if dst_instance is not None:
                self._stop_instance(state, dst_instance)
            self._netcall(src, state.port, "POST", "/resume")
            raise
        self._drained(state, src)
        self._finish(state, src, outcome, t0, phases, copied)
        return outcome

    def _finish(self, state: ServiceState, src: str, outcome: MigrationOutcome, t0: float,
                phases: dict[str, float], copied: dict) -> None:
        """Last step of every strategy: stop the source, fill in what the move cost."""
        t4 = time.monotonic()
        self._stop_instance(state, state.instances[src])
        phases["stop_source_s"] = time.monotonic() - t4
        outcome.ok = True
        outcome.duration_s = time.monotonic() - t0
        outcome.state_bytes = int(copied.get("bytes", 0))
        outcome.transfer_s = float(copied.get("network_seconds", copied.get("seconds", 0.0)))
        outcome.phases_s = {k: round(v, 4) for k, v in phases.items()}
        outcome.phases_s["started_unix"] = round(time.time() - (time.monotonic() - t0), 4)

    async def apply_event(self, kind: str, span: tuple[str, str] | None, site: str | None) -> dict:
        client = self.session.client
        if kind in ("fibre-cut", "fibre-repair") and span is not None:
            call = getattr(client, "cut_span" if kind == "fibre-cut" else "repair_span", None)
            if call is None:
                return {"applied": False, "reason": "controller client has no span fault API"}
            return await asyncio.to_thread(self._controller, kind, lambda: call(*span))
        # site-down/up: the daemon stops placing there; running instances are moved by the policy.
        return {"applied": True}

    async def close(self) -> None:
        """Stop every instance (teardown)."""
        def stop_all() -> None:
            for state in self.services.values():
                for instance in list(state.instances.values()):
                    try:
                        self.launcher.stop(instance.handle, grace_s=3.0)
                    except Exception as err:  # keep going: teardown must reach every instance
                        log.warning("stopping %s: %s", instance.name, err)
                    state.instances.pop(instance.site, None)
        await asyncio.to_thread(stop_all)


def cpu_shares_for(service: Service) -> int:
    """CPU weight from the latency budget: when cores are contended, a service with a
    budget of milliseconds must not wait behind one that has seconds (1024 = default
    at a 100 ms budget; 8 ms gets 12800, 1.5 s gets 68)."""
    return int(min(262144, max(2, 1024 * 0.1 / service.slo.latency)))


class PodmanLauncher:
    """Instances as podman containers joined to the site's compute-host namespace.

    Each container has its own PID, mount and UTS namespaces, the service's CPU
    and memory limits, a read-only root with a writable /state, and serves the
    image's copy of the project (built from this checkout by scripts/build-image.sh).
    """

    def __init__(self, containers, image: str, *, cpus: set[int] | None = None):
        self.containers = containers  # twin.workloads.containers.ContainerRuntime
        self.image = image
        self.cpus = cpus  # the session's workload CPUs (TwinSession.cpu_plan); None: any

    @staticmethod
    def short_name(service: str, site: str) -> str:
        return f"s-{service}-{site}"

    def start(self, *, name: str, service: Service, site: str, netns_pid: int, server_args: list[str]) -> object:
        from twin.workloads.containers import ContainerSpec
        from twin.workloads.image import MODELS_IN_IMAGE, VENV_IN_IMAGE

        port = server_args[server_args.index("--port") + 1]
        spec = ContainerSpec(
            name=self.short_name(service.id, site), image=self.image,
            command=(f"{VENV_IN_IMAGE}/bin/python", "-m", "twin.workloads.server", *server_args,
                     "--models-dir", MODELS_IN_IMAGE),
            netns_pid=netns_pid, cpus=service.cpus, memory_bytes=int(service.memory),
            cpu_shares=cpu_shares_for(service), cpuset=tuple(sorted(self.cpus)) if self.cpus else None,
            state_bytes=max(4096, int(service.state_size) * 2 + (16 << 20)),
            labels={"twin-service": service.id, "twin-site": site}, stop_grace_s=5.0,
            rt_priority=SERVICE_RT_PRIORITY if service.cpu_priority == "realtime" else None)
        container = self.containers.run(spec, ready_url=f"http://127.0.0.1:{port}/readyz", timeout_s=60.0)
        return container.name

    def stop(self, handle: object, *, grace_s: float = 10.0) -> None:
        name = str(handle)
        try:
            self.containers.stop(name, grace_s=grace_s)
        finally:
            self.containers.remove(name)

    def alive(self, handle: object) -> bool:
        try:
            return self.containers.state(str(handle)) == "running"
        except Exception:  # gone, or podman could not tell: not serving
            return False

    def describe(self) -> str:
        return self.containers.describe()


def workload_image() -> str:
    """The workload image to run: ``TWIN_IMAGE`` if set (pin a built image, e.g. while
    editing code the workload does not run), else the one built for this checkout."""
    import os

    from twin.workloads.image import require_image, validate_ref

    pinned = os.environ.get("TWIN_IMAGE")
    return validate_ref(pinned) if pinned else require_image()
