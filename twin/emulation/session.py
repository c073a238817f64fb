"""One running twin: run record, controller process, emulated network, probes.

``twin up`` and the integration tests use :class:`TwinSession`; it is a context
manager whose exit (normal, exception or Ctrl-C) tears everything down in
reverse order. A SIGKILL leaves the run record behind for ``twin clean``.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from twin.emulation.controller import ControllerProcess
from twin.emulation.network import ENGINE_RT_PRIORITY, ENGINE_SPIN_US, PMD_MAXSLEEP_US, ApnNetwork, in_host
from twin.emulation.probe import ProbeSummary
from twin.emulation.records import RunRecord, clean_record
from twin.errors import TwinError
from twin.model import addressing as ad
from twin.model.optics import OpticalNetwork
from twin.model.validate import load_topology

log = logging.getLogger(__name__)

PROBE_PORT = 8620


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

    @property
    def measured_one_way_ms(self) -> float:
        return self.probe.forward_us.median / 1e3

    @property
    def error_ms(self) -> float:
        """Measured minus (model + the emulator's fixed forwarding overhead)."""
        hops = len(self.route) - 1
        return self.measured_one_way_ms - self.model_one_way_ms - self.baseline_one_way_ms * (hops + 1)

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
    pmd_maxsleep_us: int = PMD_MAXSLEEP_US           # OVS PMD's longest idle sleep (accuracy vs CPU)
    record: RunRecord = field(init=False)
    timings: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.topology = load_topology(self.topology_path)
        self.optical = OpticalNetwork(self.topology)
        self.controller: ControllerProcess | None = None
        self.network: ApnNetwork | None = None

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
        self.record = RunRecord.create()
        log.info("run %s: records in %s", self.record.run_id, self.record.directory)
        portmap_path = self.record.directory / "portmap.json"
        network = ApnNetwork(self.topology, self.record, controller_port=0, backend=self.backend,
                             port_type=self.port_type, engine_rt_priority=self.engine_rt_priority,
                             engine_spin_us=self.engine_spin_us, pmd_maxsleep_us=self.pmd_maxsleep_us)
        network.port_map.save(portmap_path)
        self.controller = ControllerProcess(self.topology_path, portmap_path=portmap_path,
                                            workdir=self.record.directory, api_port=self.api_port)
        self.controller.start()
        self.record.add_process(self.controller.pid, "controller")
        network.controller_port = self.controller.ofp_port
        self.network = network
        network.start()
        t1 = time.monotonic()
        self.client.wait_switches(len(self.topology.sites), timeout=60)
        self.timings["switches_connected_s"] = time.monotonic() - t0
        self.timings["connect_wait_s"] = time.monotonic() - t1
        self.timings["up_s"] = time.monotonic() - t0

    def stop(self) -> None:
        t0 = time.monotonic()
        if self.network is not None:
            self.network.stop()
        if self.controller is not None:
            self.controller.stop()
        if getattr(self, "record", None) is not None:
            left = clean_record(self.record)  # anything the steps above missed
            if left:
                log.warning("teardown also removed: %s", ", ".join(left))
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

    # -- probes ------------------------------------------------------------------------------
    def probe(self, src: str, dst: str, *, plane: str = "apn", count: int = 500, rate: float = 500.0,
              size: int = 64) -> ProbeSummary:
        """Probe from src's users host to dst's compute host over a plane ('apn' or 'packet')."""
        net = self._net()
        plane_no = {"apn": ad.APN_PLANE, "packet": ad.PACKET_PLANE}[plane]
        dst_ip = net.host_ip(dst, ad.COMPUTE, plane_no)
        reflector_pid = net.host_pid(ad.host_name(dst, ad.COMPUTE))
        sender_pid = net.host_pid(ad.host_name(src, ad.USERS))
        python = sys.executable
        reflector = subprocess.Popen(in_host(reflector_pid, [python, "-m", "twin.emulation.probe", "reflect",
                                                              "--bind", dst_ip, "--port", str(PROBE_PORT)]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.3)  # let the reflector bind
            if reflector.poll() is not None:
                raise TwinError(f"probe reflector at {dst} failed: {reflector.stderr.read().decode()[-500:]}")
            proc = subprocess.run(in_host(sender_pid, [python, "-m", "twin.emulation.probe", "send", "--dst",
                                                       dst_ip, "--port", str(PROBE_PORT), "--rate", str(rate),
                                                       "--count", str(count), "--size", str(size), "--json"]),
                                  capture_output=True, text=True, timeout=count / rate + 30)
        finally:
            reflector.terminate()
            reflector.wait(5)
        if proc.returncode != 0:
            raise TwinError(f"probe {src}->{dst} failed: {proc.stderr.strip()[-500:]}")
        return ProbeSummary.from_json(proc.stdout)

    def baseline_one_way_ms(self, site: str | None = None, count: int = 300) -> float:
        """One-way delay between two hosts on the same switch: the emulator's per-switch overhead."""
        site = site or self.topology.sites[0].id
        return self.probe(site, site, count=count, rate=500.0).forward_us.median / 1e3

    def check_pairs(self, lightpaths: list[dict], *, count: int = 500, rate: float = 500.0,
                    tolerance_ms: float = 0.1, progress=None) -> list[PairCheck]:
        """Probe every lightpath (and the packet network between the same sites) against the model."""
        baseline = self.baseline_one_way_ms()
        checks = []
        for lp in lightpaths:
            probe = self.probe(lp["src"], lp["dst"], count=count, rate=rate)
            checks.append(PairCheck(lp["src"], lp["dst"], "apn", lp["route"], lp["one_way_ms"], probe,
                                    baseline, tolerance_ms))
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
                "timings_s": {**self.network.timings, **self.timings} if self.network else self.timings}


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def write_json(path: str | Path, data: object) -> None:
    Path(path).write_text(json.dumps(data, indent=2))
