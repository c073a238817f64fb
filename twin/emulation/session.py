"""One running twin: run record, controller process, emulated network, probes.

``twin up`` and the integration tests use :class:`TwinSession`; it is a context
manager whose exit (normal, exception or Ctrl-C) tears everything down in
reverse order. A SIGKILL leaves the run record behind for ``twin clean``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from twin.emulation.controller import ControllerProcess
from twin.emulation.idle_poll import IdlePollers
from twin.emulation.network import (ENGINE_RT_PRIORITY, ENGINE_SPIN_US, PMD_MAXSLEEP_DEDICATED_US, PMD_MAXSLEEP_US,
                                    ApnNetwork, in_host, userspace_datapath)
from twin.emulation.probe import ProbeSummary, wait_reflector_ready
from twin.emulation.records import RunRecord, clean_record
from twin.errors import TwinError
from twin.model import addressing as ad
from twin.model.optics import OpticalNetwork
from twin.model.validate import load_topology
from twin.timeouts import scaled

log = logging.getLogger(__name__)

PROBE_PORT = 8620
#: Uncounted probes before each measured run, so the path's datapath flows exist (probe.send).
PROBE_WARMUP = 10
# Transit calibration: probes per span, their rate, and the largest hold the engine may
# take off a span direction (a measurement spoiled by a hiccup must not erase a delay).
CALIBRATION_PROBES = 400
CALIBRATION_RATE = 1000.0
MAX_ADVANCE_US = 300.0
#: Probe planes by name: the lightpaths' addresses, or the conventional packet network's.
PLANES = {"apn": ad.APN_PLANE, "packet": ad.PACKET_PLANE}


# How TwinSession lays the emulator and the workloads out on the CPUs. Measured on this
# 2-core machine (benchmarks/README.md, fourth pass):
# - "network" (twin up, the benchmarks): OVS's PMD thread alone on the highest CPU, polling
#   it without sleeping (as OVS-DPDK's PMDs do on their cores); the delay engine (SCHED_FIFO,
#   asleep between departures), the hosts' processes and any workloads on the others.
#   Sharing its core with the engine, the PMD thread was preempted for every frame it handed
#   over, and frames waited at both ends of a route (japan: p99 error 130-574 us per pair,
#   5 of 36 within 150 us; on separate cores: 30 of 36, pooled p99 76 us).
# - "workloads" (twin run): the engine and a PMD thread that sleeps up to 50 us when idle
#   share the highest CPU; service containers and load generators get the others. The
#   engine beside the workloads made drive-assist's p99 outside migrations 27 ms instead
#   of 10-12 and pushed farm-images past its budget (6 h cut).
# - "shared": nothing pinned; the PMD thread sleeps up to 50 us.
CPU_LAYOUTS = ("network", "workloads", "shared")


def cpu_plan(available: set[int]) -> tuple[int | None, set[int] | None]:
    """(datapath CPU, the other CPUs) for the CPUs this process may use: OVS's PMD thread
    gets the highest CPU (see ``CPU_LAYOUTS`` for who else shares which).

    With one CPU there is nothing to partition.

    >>> cpu_plan({0, 1})
    (1, {0})
    >>> cpu_plan({0, 1, 2, 3})
    (3, {0, 1, 2})
    >>> cpu_plan({5})
    (None, None)
    """
    if len(available) < 2:
        return None, None
    datapath = max(available)
    return datapath, set(available) - {datapath}


def _pin_own_threads(cpus: set[int]) -> dict[int, set[int]]:
    """Move every thread of this process to ``cpus``; returns each one's previous CPU set."""
    previous = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            previous[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass
    return previous


def _restore_own_threads(previous: dict[int, set[int]]) -> None:
    for tid, cpus in previous.items():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def switch_passes(route: list[str], calibrated: bool, carried: bool = False) -> int:
    """Switch passes of the emulator's own forwarding time left in a lightpath's one-way
    delay: one (the path's ends) when the spans are calibrated; two (the first span's and
    the last switch's) when the delay engine carries transit frames over
    (:class:`~twin.emulation.delay_schedule.TransitMemory`); else one per site on the route.

    >>> switch_passes(["a", "b", "c", "d"], False), switch_passes(["a", "b", "c", "d"], False, True)
    (4, 2)
    """
    if calibrated:
        return 1
    return min(2, len(route)) if carried else len(route)


@dataclass
class PairCheck:
    """Measured against model for one site pair over one plane."""

    src: str
    dst: str
    plane: str
    route: list[str]
    model_one_way_ms: float
    probe: ProbeSummary
    baseline_one_way_ms: float
    tolerance_ms: float
    calibrated: bool = False
    carried: bool = False

    @property
    def measured_one_way_ms(self) -> float:
        return self.probe.forward_us.median / 1e3

    @property
    def error_ms(self) -> float:
        """Measured minus (model + the emulator's own forwarding time): one switch pass when the
        spans are calibrated (:meth:`TwinSession.calibrate_transit`), else one per site on the route."""
        return (self.measured_one_way_ms - self.model_one_way_ms
                - self.baseline_one_way_ms * switch_passes(self.route, self.calibrated, self.carried))

    @property
    def ok(self) -> bool:
        return (abs(self.error_ms) <= self.tolerance_ms and self.probe.lost == 0
                and (self.plane != "apn" or self.probe.reordered == 0))

    def to_dict(self) -> dict:
        p = self.probe
        return {"src": self.src, "dst": self.dst, "plane": self.plane, "route": self.route,
                "model_one_way_ms": round(self.model_one_way_ms, 4),
                "measured_one_way_ms": round(self.measured_one_way_ms, 4),
                "measured_rtt_ms": round(p.rtt_us.median / 1e3, 4),
                "error_ms": round(self.error_ms, 4),
                "jitter_ms": round(p.forward_us.stdev / 1e3, 4),
                "p99_one_way_ms": round(p.forward_us.p99 / 1e3, 4),
                "sent": p.sent, "lost": p.lost, "reordered": p.reordered, "ok": self.ok}


@dataclass
class TwinSession:
    topology_path: str
    backend: str = "auto"
    api_port: int | None = None
    port_type: str = "auto"     # OVS interface type of every switch port (network.PORT_TYPES)
    engine_rt_priority: int = ENGINE_RT_PRIORITY  # SCHED_FIFO priority of the delay engine (0: normal)
    engine_spin_us: float = ENGINE_SPIN_US           # the engine busy-waits this long before a departure
    pmd_maxsleep_us: int | None = None               # OVS PMD's longest idle sleep (accuracy vs CPU);
    #                                                  None: 0 with a CPU of its own, else PMD_MAXSLEEP_US
    calibrate: bool = True                           # take the emulator's transit time out of span delays
    transit_carry: bool = True                       # transit frames keep their intended time (delay_engine)
    engine_turns: bool = True                        # a behind engine serves lanes in turns (FairDepartures)
    cpu_layout: str = "network"                      # which CPUs the datapath and workloads get (CPU_LAYOUTS)
    idle_poll: bool = False                          # keep idle vCPUs from halting (idle_poll.py: a trade)
    record: RunRecord = field(init=False)
    timings: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.topology = load_topology(self.topology_path)
        self.optical = OpticalNetwork(self.topology)
        self.controller: ControllerProcess | None = None
        self.network: ApnNetwork | None = None
        self.calibration: dict | None = None
        self._previous_affinity: dict[int, set[int]] = {}  # this process's threads, before start()
        if self.cpu_layout not in CPU_LAYOUTS:
            raise TwinError(f"cpu layout {self.cpu_layout!r} unknown; fix: one of {', '.join(CPU_LAYOUTS)}")
        self.cpus_available = os.sched_getaffinity(0)  # what the CPU plan divides
        self.datapath_cpu, self.workload_cpus = cpu_plan(self.cpus_available) \
            if self.cpu_layout != "shared" else (None, None)
        # "network": the engine beside the workloads, off the polled PMD core; "workloads":
        # the engine on the PMD's core, which then sleeps when idle (see CPU_LAYOUTS).
        self.engine_cpus = self.workload_cpus if self.cpu_layout == "network" else \
            ({self.datapath_cpu} if self.datapath_cpu is not None else None)
        if self.pmd_maxsleep_us is None:
            self.pmd_maxsleep_us = PMD_MAXSLEEP_DEDICATED_US \
                if self.datapath_cpu is not None and self.cpu_layout == "network" else PMD_MAXSLEEP_US
        self.idle_poll_cpus = self._idle_poll_cpus()
        self.idle_pollers = IdlePollers()

    def _idle_poll_cpus(self) -> set[int]:
        """Every CPU but one a PMD thread polls without sleeping (it never halts anyway)."""
        if not self.idle_poll:
            return set()
        polled = {self.datapath_cpu} if self.datapath_cpu is not None and self.pmd_maxsleep_us == 0 else set()
        return set(self.cpus_available) - polled

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "TwinSession":
        previous = signal.getsignal(signal.SIGTERM)
        # SIGTERM tears down like Ctrl-C does.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        self._previous_sigterm = previous
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def start(self) -> None:
        t0 = time.monotonic()
        if self.workload_cpus and userspace_datapath():
            # Everything the run starts from here (controller, host shells, podman and its
            # conmon, state copies) inherits the workload CPUs; only the datapath's own threads
            # go to its CPU. Unpinned, they took the PMD thread's CPU for 0.5-5 ms at a time,
            # 487 times in 25 s (perf sched, spring-day cut to 6 h), and frames waited in the switch.
            # With the kernel datapath there is no such thread to keep the CPU free for.
            self._previous_affinity = _pin_own_threads(self.workload_cpus)
        self.record = RunRecord.create(workload_cpus=sorted(self.workload_cpus) if self.workload_cpus else None)
        log.info("run %s: records in %s", self.record.run_id, self.record.directory)
        portmap_path = self.record.directory / "portmap.json"
        network = ApnNetwork(self.topology, self.record, controller_port=0, backend=self.backend,
                             port_type=self.port_type, engine_rt_priority=self.engine_rt_priority,
                             engine_spin_us=self.engine_spin_us, pmd_maxsleep_us=self.pmd_maxsleep_us,
                             datapath_cpu=self.datapath_cpu, engine_cpus=self.engine_cpus,
                             transit_carry=self.transit_carry, engine_turns=self.engine_turns)
        network.port_map.save(portmap_path)
        self.controller = ControllerProcess(self.topology_path, portmap_path=portmap_path,
                                            workdir=self.record.directory, api_port=self.api_port,
                                            purge_datapath_flows=userspace_datapath())
        self.controller.start()
        self.record.add_process(self.controller.pid, "controller")
        network.controller_port = self.controller.ofp_port
        self.network = network
        network.start()
        if network.link_backend == "userspace":  # netem needs no process to wake up on time
            self.idle_pollers.start(self.idle_poll_cpus, self.record)
        t1 = time.monotonic()
        self.client.wait_switches(len(self.topology.sites), timeout=scaled(60))
        self.timings["switches_connected_s"] = time.monotonic() - t0
        self.timings["connect_wait_s"] = time.monotonic() - t1
        self.timings["up_s"] = time.monotonic() - t0
        if self.calibrate and network.link_backend == "userspace":
            try:
                self.calibrate_transit()
            except (TwinError, subprocess.TimeoutExpired) as err:  # still works, less exactly: say so, go on
                log.warning("span calibration failed, delays stay uncalibrated: %s", err)
                self.calibration = None

    def stop(self) -> None:
        t0 = time.monotonic()
        if self.network is not None:
            self.network.stop()
        if self.controller is not None:
            self.controller.stop()
        self.idle_pollers.stop()
        if getattr(self, "record", None) is not None:
            left = clean_record(self.record)  # anything the steps above missed
            if left:
                log.warning("teardown also removed: %s", ", ".join(left))
        _restore_own_threads(self._previous_affinity)
        self._previous_affinity = {}
        self.timings["down_s"] = time.monotonic() - t0

    @property
    def client(self):
        if self.controller is None:
            raise TwinError("the controller is not running")
        return self.controller.client

    # -- lightpaths --------------------------------------------------------------------------
    def setup_all_lightpaths(self) -> tuple[list[dict], list[dict]]:
        """One lightpath per site pair the plan can serve, in plan order; returns (made, blocked)."""
        from twin.model.plan import default_pairs

        made, blocked = [], []
        t0 = time.monotonic()
        for src, dst in default_pairs(self.topology):
            try:
                made.append(self.client.create_lightpath(src, dst))
            except TwinError as err:
                blocked.append({"src": src, "dst": dst, "blocked": str(err)})
        self.timings["lightpaths_s"] = time.monotonic() - t0
        return made, blocked

    # -- calibration -------------------------------------------------------------------------
    def calibrate_transit(self, *, count: int = CALIBRATION_PROBES, rate: float = CALIBRATION_RATE) -> dict:
        """Measure the emulator's own transit time on every span and take it out of the delay engine.

        Each span a frame crosses costs, besides its configured delay, one pass through
        the delay engine and one through the next switch (OVS's PMD thread): 15-180 us
        on this machine, different per span, so a six-span lightpath arrived about
        0.7 ms late. Per span, a single-span lightpath is set up and probed both ways;
        ``excess = one-way median - model - baseline`` (baseline: one-way between two
        hosts on the same switch, the part every path pays once), and the engine then
        holds frames that much less in that direction (at most ``MAX_ADVANCE_US``).
        Afterwards a lightpath of any length measures about model + baseline.
        Spans with no free wavelength are left as they are (listed as skipped).

        Returns (and keeps in ``self.calibration``) what it measured and applied.
        """
        net = self._net()
        t0 = time.monotonic()
        advances: dict[tuple[str, str], float] = {}
        spans = []
        with self.reflectors([s.id for s in self.topology.sites]):
            site0 = self.topology.sites[0].id

            def send(a: str, b: str) -> ProbeSummary:
                return self._send_probes(a, b, plane="apn", count=count, rate=rate, size=64, poisson=True)

            send(site0, site0)  # warm-up: the first probes after bring-up run slow
            baseline_us = send(site0, site0).forward_us.median
            for span in self.topology.spans:
                a, b = span.ends
                try:
                    lp = self.client.create_lightpath(a, b, route=[a, b])
                except TwinError as err:
                    spans.append({"span": f"{a}-{b}", "skipped": str(err)})
                    continue
                try:
                    probe = send(a, b)
                finally:
                    self.client.delete_lightpath(lp["id"])
                spans.append(self._span_advances(a, b, lp["one_way_ms"] * 1e3, probe, baseline_us, advances))
        net.set_transit_advance(advances)
        self.calibration = {"baseline_us": round(baseline_us, 1), "probes_per_span": count, "rate_pps": rate,
                            "spans": spans, "seconds": round(time.monotonic() - t0, 2)}
        self.timings["calibration_s"] = time.monotonic() - t0
        log.info("calibrated %d spans in %.1f s: advance %s us", len(advances) // 2, self.timings["calibration_s"],
                 ", ".join(f"{r['span']} {r['advance_ab_us']:.0f}/{r['advance_ba_us']:.0f}"
                           for r in spans if "advance_ab_us" in r))
        return self.calibration

    @staticmethod
    def _span_advances(a: str, b: str, model_us: float, probe: ProbeSummary, baseline_us: float,
                       advances: dict) -> dict:
        """Both directions' excess over model + baseline, clamped into ``advances``; the row to report."""
        row = {"span": f"{a}-{b}", "model_us": round(model_us, 1)}
        for (x, y), stats, key in (((a, b), probe.forward_us, "ab"), ((b, a), probe.backward_us, "ba")):
            excess = stats.median - model_us - baseline_us
            advances[(x, y)] = min(MAX_ADVANCE_US, max(0.0, excess))
            row[f"excess_{key}_us"] = round(excess, 1)
            row[f"advance_{key}_us"] = round(advances[(x, y)], 1)
        return row

    # -- probes ------------------------------------------------------------------------------
    @contextmanager
    def reflectors(self, sites, *, plane: str = "apn"):
        """Probe reflectors in the compute hosts of ``sites`` while the block runs."""
        net = self._net()
        plane_no = PLANES[plane]
        procs = {}
        try:
            for site in dict.fromkeys(sites):
                pid = net.host_pid(ad.host_name(site, ad.COMPUTE))
                procs[site] = subprocess.Popen(
                    in_host(pid, [sys.executable, "-m", "twin.emulation.probe", "reflect", "--bind",
                                  net.host_ip(site, ad.COMPUTE, plane_no), "--port", str(PROBE_PORT)]),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for site, proc in procs.items():
                wait_reflector_ready(proc, f"at {site}")
            yield
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(5)

    def _send_probes(self, src: str, dst: str, *, plane: str, count: int, rate: float, size: int,
                     poisson: bool) -> ProbeSummary:
        """Probes from src's users host to a reflector already running at dst (see :meth:`reflectors`)."""
        net = self._net()
        dst_ip = net.host_ip(dst, ad.COMPUTE, PLANES[plane])
        sender_pid = net.host_pid(ad.host_name(src, ad.USERS))
        proc = subprocess.run(in_host(sender_pid, [sys.executable, "-m", "twin.emulation.probe", "send", "--dst",
                                                   dst_ip, "--port", str(PROBE_PORT), "--rate", str(rate),
                                                   "--count", str(count), "--size", str(size), "--json",
                                                   "--warmup", str(PROBE_WARMUP),
                                                   *(["--poisson"] if poisson else [])]),
                              capture_output=True, text=True, timeout=count / rate + scaled(30))
        if proc.returncode != 0:
            raise TwinError(f"probe {src}->{dst} failed: {proc.stderr.strip()[-500:]}")
        return ProbeSummary.from_json(proc.stdout)

    def probe(self, src: str, dst: str, *, plane: str = "apn", count: int = 500, rate: float = 500.0,
              size: int = 64, poisson: bool = True) -> ProbeSummary:
        """Probe from src's users host to dst's compute host over a plane ('apn' or 'packet').

        Probes are Poisson-spaced by default (RFC 2330): periodic ones can lock onto
        the PMD thread's sleep cycle and report one phase of it as the delay.
        """
        with self.reflectors([dst], plane=plane):
            return self._send_probes(src, dst, plane=plane, count=count, rate=rate, size=size, poisson=poisson)

    @property
    def transit_carried(self) -> bool:
        """Whether the delay engine carries transit frames over (it runs, and carry-over is on)."""
        return self.transit_carry and self.network is not None and self.network.link_backend == "userspace"

    def baseline_one_way_ms(self, site: str | None = None, count: int = 300, *, poisson: bool = True) -> float:
        """One-way delay between two hosts on the same switch: the emulator's per-switch overhead."""
        site = site or self.topology.sites[0].id
        return self.probe(site, site, count=count, rate=500.0, poisson=poisson).forward_us.median / 1e3

    def check_pairs(self, lightpaths: list[dict], *, count: int = 500, rate: float = 500.0,
                    tolerance_ms: float = 0.1, progress=None) -> list[PairCheck]:
        """Probe every lightpath (and the packet network between the same sites) against the model."""
        baseline = self.baseline_one_way_ms()
        checks = []
        for lp in lightpaths:
            probe = self.probe(lp["src"], lp["dst"], count=count, rate=rate)
            checks.append(PairCheck(lp["src"], lp["dst"], "apn", lp["route"], lp["one_way_ms"], probe,
                                    baseline, tolerance_ms, calibrated=self.calibration is not None,
                                    carried=self.transit_carried))
            if progress:
                progress(checks[-1])
        return checks

    def packet_path(self, src: str, dst: str) -> tuple[list[str], float]:
        """Route and model one-way delay (without queueing) of the conventional network."""
        route = self.optical.k_shortest_routes(src, dst, 1)[0]
        apn, packet = self.topology.apn, self.topology.packet_network
        delay = sum(self.optical.span(a, b).length * apn.propagation + packet.router_delay
                    for a, b in zip(route.sites, route.sites[1:]))
        return list(route.sites), delay * 1e3

    def _net(self) -> ApnNetwork:
        if self.network is None:
            raise TwinError("the network is not running")
        return self.network

    def summary(self) -> dict:
        return {"run_id": self.record.run_id, "topology": self.topology.name,
                "link_backend": self.network.link_backend if self.network else None,
                "ovs_port_type": self.network.ovs_port_type if self.network else None,
                "calibration": self.calibration,
                "cpus": {"layout": self.cpu_layout, "pmd": self.datapath_cpu,
                         "engine": sorted(self.engine_cpus) if self.engine_cpus else None,
                         "workloads": sorted(self.workload_cpus) if self.workload_cpus else None,
                         "idle_pollers": self.idle_pollers.started},
                "timings_s": {**self.network.timings, **self.timings} if self.network else self.timings}


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def write_json(path: str | Path, data: object) -> None:
    Path(path).write_text(json.dumps(data, indent=2))
