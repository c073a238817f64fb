"""Build and tear down the emulated inter-DC network with Mininet and Open vSwitch.

The only module that imports Mininet. Names, addresses and port numbers come from
:mod:`twin.model.addressing` and :func:`twin.model.portmap.build_port_map`, so
the controller knows the same port map the network was built with.

Per site: one OVS switch (the ROADM and DC edge; userspace datapath where the
kernel has no openvswitch module), a compute host and a users host. Per fibre
span: one trunk link between the two switches. Each wavelength is a VLAN on it
with the span's delay (+ the APN's residual jitter) and the per-wavelength rate;
the untagged frames are the conventional packet network (propagation + per-hop
router delay, jitter, background load queueing, shared capacity). Every VLAN
has its own queue: a wavelength never waits behind another one, as on a fibre.

Why one trunk per span and not one link per wavelength: the OVS userspace
datapath polls every port from its main thread, so its per-packet delay and
jitter grow with the port count (japan.yaml: 46 switch ports instead of 240;
figures in benchmarks/README.md).

Link delay backends
    netem      switch-to-switch veth; on each end an htb class per VLAN (rate)
               with a netem leaf (delay), selected by a VLAN filter
               (:func:`twin.emulation.link_backends.trunk_netem_commands`).
    userspace  every span passes through one delay engine process
               (:mod:`twin.emulation.delay_engine`) that lives in a namespace of
               its own (Mininet host ``tw_dly``): switch port <-> veth <-> engine
               <-> veth <-> switch port. The engine sorts frames by VLAN into
               per-wavelength channels and shapes each with a token bucket
               (what tbf did per wavelength port before). It runs SCHED_FIFO
               (``ENGINE_RT_PRIORITY``). Ending the ``tw_dly`` shell removes all
               those veths at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from twin.emulation import link_backends
from twin.emulation.delay_engine import DelayEngineProcess
from twin.emulation.delay_schedule import ChannelSpec, LinkSpec
from twin.emulation.records import (OVS_TAG, RunRecord, delete_interfaces, destroy_qos, ovs_global,
                                    release_ovs_globals, set_ovs_global, tagged_qos)
from twin.errors import TwinError
from twin.model import addressing as ad
from twin.model.optics import OpticalNetwork
from twin.model.portmap import PortMap, build_port_map
from twin.model.schema import Topology

log = logging.getLogger(__name__)

DELAY_HOST = "tw_dly"
VIP_GATEWAY_IP = "10.1.0.254"   # on-link next hop for all VIPs; its MAC is the shared VIP MAC
VIP_GATEWAY_MAC = "02:00:03:00:00:00"
PORT_TYPES = ("auto", "system", "afxdp", "afxdp-nonpmd")
# An idle PMD thread sleeps at most this long between polls. Measured on japan.yaml
# (benchmarks/README.md): 50 us costs 20 % of a core when idle and adds ~46 us per
# switch; 10 us costs 55 % and adds ~31 us. When the PMD thread shares its CPU, the
# default leaves that CPU to workloads.
PMD_MAXSLEEP_US = 50
# When the datapath has a CPU of its own (TwinSession's CPU partition), the PMD thread
# polls without sleeping, as OVS-DPDK's PMDs do on their dedicated cores: the CPU has
# nothing else to do, and a one-switch pass takes 9 us instead of 44 (p99 37 vs 100 us).
PMD_MAXSLEEP_DEDICATED_US = 0
# The delay engine runs SCHED_FIFO: with normal scheduling any other busy process on a
# 2-core machine made it late by about 1 ms on average (20 us with FIFO; benchmarks/README.md).
# It sleeps between departures, and the kernel's RT throttling keeps 5 % of each CPU for others.
# Where FIFO is not allowed (containers) the engine logs it and runs normally.
ENGINE_RT_PRIORITY = 10
# Busy-wait before a departure: at FIFO priority the timer wakes the engine within a few
# us, and a long spin at that priority kept OVS's PMD thread off the CPU on long paths
# (japan.yaml, 6-span lightpath: corrected median error 2.3-2.5 ms with 100 us, 0.56 ms with 20 us).
ENGINE_SPIN_US = 20.0
#: Topology file spelling of a jitter distribution -> the delay engine's.
ENGINE_DIST = {"none": "none", "uniform": "uniform", "normal": "normal", "pareto-normal": "paretonormal"}


class EmulationError(TwinError):
    """The emulated network could not be built or configured."""


@dataclass(frozen=True)
class EmulatedChannel:
    """One channel of a span trunk: a wavelength (its VLAN id) or the packet network (untagged)."""

    wavelength: int | None
    vid: int | None
    delay_s: float
    jitter_s: float
    jitter_dist: str
    rate_bps: float
    background_load: float = 0.0

    @property
    def name(self) -> str:
        return f"w{self.wavelength}" if self.wavelength is not None else "pk"


@dataclass(frozen=True)
class EmulatedLink:
    """One span as built: its trunk ports and channels (wavelengths, then the packet network)."""

    number: int
    a: str
    b: str
    port_a: str
    port_b: str
    channels: tuple[EmulatedChannel, ...]

    @property
    def name(self) -> str:
        return ad.trunk_port(self.a, self.b)

    def wavelength(self, w: int) -> EmulatedChannel:
        for channel in self.channels:
            if channel.wavelength == w:
                return channel
        raise EmulationError(f"span {self.a}-{self.b} has no wavelength {w}")


def plan_links(topology: Topology) -> list[EmulatedLink]:
    """Every span with the delays the model gives its channels (pure; used by tests too)."""
    network = OpticalNetwork(topology)
    port_map = build_port_map(topology)
    apn, packet = topology.apn, topology.packet_network
    links = []
    for number, span in enumerate(topology.spans, start=1):
        a, b = span.ends
        optical = network.span_delay(a, b)
        trunk = port_map.switches[a].trunk_port(b)
        channels = [EmulatedChannel(w, vid, optical, apn.jitter, apn.jitter_distribution, span.rate)
                    for w, vid in enumerate(trunk.vids)]
        # The packet network crosses the same fibre, then a router at the far end.
        propagation = span.length * apn.propagation
        channels.append(EmulatedChannel(None, None, propagation + packet.router_delay, packet.jitter,
                                        packet.jitter_distribution, packet.capacity, packet.background_load))
        links.append(EmulatedLink(number, a, b, trunk.name, port_map.switches[b].trunk_port(a).name,
                                  tuple(channels)))
    return links


def _run(args: list[str], what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EmulationError(f"{what}: {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def in_host(pid: int, args: list[str]) -> list[str]:
    """Argument list running ``args`` inside the namespaces of Mininet node ``pid``."""
    return ["mnexec", "-a", str(pid), *args]


@dataclass
class ApnNetwork:
    """The running emulation of one topology (context manager: ``with ApnNetwork(...) as net``)."""

    topology: Topology
    record: RunRecord
    controller_port: int
    backend: str = "auto"
    port_type: str = "auto"
    engine_rt_priority: int = ENGINE_RT_PRIORITY
    engine_spin_us: float = ENGINE_SPIN_US
    pmd_maxsleep_us: int = PMD_MAXSLEEP_US
    datapath_cpu: int | None = None  # OVS's PMD thread polls this CPU (TwinSession's CPU plan)
    engine_cpus: set[int] | None = None  # the delay engine runs on these (kept off the PMD thread's CPU)
    transit_carry: bool = True  # the engine schedules transit frames from their intended departure (delay_engine)
    engine_turns: bool = True  # when behind, the engine serves lanes in turns (delay_schedule.FairDepartures)
    link_backend: str = field(init=False, default="")
    port_map: PortMap = field(init=False)
    links: list[EmulatedLink] = field(init=False)
    timings: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.port_map = build_port_map(self.topology)
        self.links = plan_links(self.topology)
        self._net = None
        self._engine: DelayEngineProcess | None = None
        self.engine_stats: dict | None = None
        self.ovs_port_type = "system"
        if not 0 <= self.pmd_maxsleep_us <= 10_000:
            raise EmulationError(f"pmd_maxsleep_us {self.pmd_maxsleep_us} out of range; fix: 0 to 10000 "
                                 "(OVS pmd-maxsleep)")

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "ApnNetwork":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for tool in ("mnexec", "ovs-vsctl", "ip", "ethtool", "tc"):
            if not shutil.which(tool):
                raise EmulationError(f"{tool} not found; run scripts/install.sh (as root) first")
        if os.geteuid() != 0:
            raise EmulationError("the emulation needs root; run with sudo")
        taken = sorted(p.name for sw in self.port_map.switches.values() for p in sw.ports
                       if Path(f"/sys/class/net/{p.name}").exists())
        if taken:
            raise EmulationError(f"interfaces {', '.join(taken[:3])} already exist: another run of topology "
                                 f"{self.topology.name!r} is up; leave it or run 'twin clean' if it was killed")
        self.link_backend = link_backends.choose_backend(self.backend)
        datapath = "kernel" if _kernel_has_ovs() else "user"
        t0 = time.monotonic()
        from mininet.link import Link
        from mininet.net import Mininet
        from mininet.node import Host, OVSSwitch, RemoteController

        net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False, autoStaticArp=False,
                      waitConnected=False, link=Link)
        self._net = net
        net.addController(RemoteController("c0", ip="127.0.0.1", port=self.controller_port))
        for site in self.topology.sites:
            sw_ports = self.port_map.switches[site.id]
            net.addSwitch(site.id, cls=OVSSwitch, dpid=ad.dpid(sw_ports.index), datapath=datapath,
                          protocols="OpenFlow14", failMode="secure")
            self.record.add_bridge(site.id)
        for sw_ports in self.port_map.switches.values():
            for port in sw_ports.host_ports():
                net.addHost(port.host, cls=Host, ip=None)
                net.addLink(port.host, sw_ports.site, intfName1=f"{port.host}-eth0", intfName2=port.name,
                            port1=0, port2=port.number)
        delay_host = None
        if self.link_backend == "userspace":
            delay_host = net.addHost(DELAY_HOST, cls=Host, ip=None)
        for link in self.links:
            a, b = self.port_map.switches[link.a], self.port_map.switches[link.b]
            num_a = _port_number(a, link.port_a)
            num_b = _port_number(b, link.port_b)
            if delay_host is not None:
                end_a, end_b = ad.engine_ifnames(link.number)
                net.addLink(link.a, DELAY_HOST, port1=num_a, intfName1=link.port_a, intfName2=end_a)
                net.addLink(link.b, DELAY_HOST, port1=num_b, intfName1=link.port_b, intfName2=end_b)
            else:
                # Both ends stay in the root namespace, where no host's end takes them away:
                # recorded first, so teardown and 'twin clean' delete them.
                self.record.add_interface(link.port_a)
                net.addLink(link.a, link.b, port1=num_a, port2=num_b, intfName1=link.port_a,
                            intfName2=link.port_b)
        self.timings["build_s"] = time.monotonic() - t0
        for host in net.hosts:
            self.record.add_process(host.pid, f"mininet host {host.name}")
        self._configure_interfaces()
        if delay_host is not None:
            self._start_engine(delay_host)
        t1 = time.monotonic()
        net.start()  # builds the bridges and points them at the controller
        self.ovs_port_type = self._resolve_port_type(datapath)
        if self.ovs_port_type != "system":
            self._set_port_type(self.ovs_port_type)
        for switch in net.switches:
            _run(["ovs-vsctl", "--timeout=10", "set", "Bridge", switch.name,
                  f"external_ids:{OVS_TAG}={self.record.run_id}"], "tagging bridge")
        if delay_host is None:
            # Only now: OVS resets the root qdisc of every port it takes unless told not to.
            _leave_qos_to_tc([name for link in self.links for name in (link.port_a, link.port_b)],
                             self.record.run_id)
            self._apply_netem()
            _one_cpu_per_flow([p.name for sw in self.port_map.switches.values() for p in sw.ports])
        self.timings["switches_s"] = time.monotonic() - t1
        self._configure_hosts()
        self.timings["up_s"] = time.monotonic() - t0

    def stop(self) -> None:
        t0 = time.monotonic()
        engine, self._engine = self._engine, None
        if engine is not None and engine.proc is not None and engine.proc.poll() is None:
            # The kernel releases each of the engine's packet sockets with an RCU grace
            # period (seconds for hundreds of links): let that overlap the rest.
            engine.proc.send_signal(signal.SIGTERM)
        if self._net is not None:
            net, self._net = self._net, None
            try:
                _teardown(net, self.record)
            except Exception as err:  # keep tearing down; the record lets 'twin clean' finish the job
                log.warning("teardown failed: %s; run 'twin clean'", err)
        if engine is not None:
            self.engine_stats = engine.stop(timeout_s=30.0)
        if self.ovs_port_type.startswith("afxdp"):
            release_ovs_globals()  # unless another twin run still has PMD ports
        self.timings["down_s"] = time.monotonic() - t0

    # -- configuration -----------------------------------------------------------------------
    def _configure_interfaces(self) -> None:
        """Offloads and IPv6 off on every switch port (rates are per VLAN: engine or netem)."""
        for sw_ports in self.port_map.switches.values():
            for port in sw_ports.ports:
                _offloads_off(port.name)
                _ipv6_off(port.name)

    def _resolve_port_type(self, datapath: str) -> str:
        """``auto``: afxdp on the userspace datapath when this OVS offers it, else system.

        Raises:
            EmulationError: an unknown port type was asked for.
        """
        if self.port_type not in PORT_TYPES:
            raise EmulationError(f"OVS port type {self.port_type!r} unknown; use one of {', '.join(PORT_TYPES)}")
        if self.port_type != "auto":
            return self.port_type
        if datapath != "user":
            return "system"   # the kernel datapath needs no polling thread
        types = _run(["ovs-vsctl", "--timeout=10", "get", "Open_vSwitch", ".", "iface_types"], "reading OVS port types")
        return "afxdp" if "afxdp" in types.strip("[]\n").replace(" ", "").split(",") else "system"

    def _set_port_type(self, port_type: str) -> None:
        """Re-type every switch port: ``afxdp`` ports are polled by a PMD thread through
        AF_XDP rings, ``system`` ports by OVS's main thread through AF_PACKET sockets.

        Why: the main thread polls all its ports (and runs the bridges' housekeeping) on
        every wake-up, which put 0.3-0.5 ms per switch on japan.yaml; the PMD thread
        took about 50 us (benchmarks/README.md). With ``afxdp`` the PMD thread may sleep
        up to ``pmd_maxsleep_us`` when idle (OVS ``other_config:pmd-maxsleep``, set for
        the run unless an operator set it; removed by the last run to stop, or by
        ``twin clean`` after a kill), so it does not spin a core.
        If OVS cannot open the ports that way, they stay ``system`` (logged) when the
        type was ``auto``.

        Raises:
            EmulationError: OVS could not open the ports with a type asked for explicitly.
        """
        if port_type.startswith("afxdp") and not set_ovs_global("pmd-maxsleep", str(self.pmd_maxsleep_us)):
            log.info("OVS pmd-maxsleep was set by someone else (%s us); leaving it",
                     ovs_global("other_config", "pmd-maxsleep"))
        if port_type.startswith("afxdp") and self.datapath_cpu is not None and \
                not set_ovs_global("pmd-cpu-mask", hex(1 << self.datapath_cpu)):
            log.info("OVS pmd-cpu-mask was set by someone else (%s); leaving it",
                     ovs_global("other_config", "pmd-cpu-mask"))
        names = [p.name for sw in self.port_map.switches.values() for p in sw.ports]
        args = ["ovs-vsctl", "--timeout=60"]
        for name in names:
            args += ["--", "set", "Interface", name, f"type={port_type}"]
        _run(args, f"setting OVS port type {port_type}")
        gets = ["ovs-vsctl", "--timeout=10"]
        for name in names:
            gets += ["--", "get", "Interface", name, "error"]
        errors = [(n, e) for n, e in zip(names, _run(gets, "reading port errors").split("\n")) if e.strip() != "[]"]
        if not errors:
            return
        if self.port_type == "auto":
            log.warning("OVS could not open %d port(s) as %s (e.g. %s: %s); using system ports",
                        len(errors), port_type, errors[0][0], errors[0][1])
            self.ovs_port_type = "system"
            self._set_port_type("system")
            return
        raise EmulationError(f"OVS could not open {len(errors)} port(s) as {port_type}, e.g. "
                             f"{errors[0][0]}: {errors[0][1]}; use port type system")

    def _start_engine(self, delay_host) -> None:
        specs = []
        for link in self.links:
            end_a, end_b = ad.engine_ifnames(link.number)
            channels = tuple(
                ChannelSpec(vid=ch.vid, name=ch.name, delay_us=ch.delay_s * 1e6, jitter_us=ch.jitter_s * 1e6,
                            jitter_dist=ENGINE_DIST[ch.jitter_dist], background_load=ch.background_load,
                            rate_bps=ch.rate_bps if ch.background_load else None, pace_bps=ch.rate_bps,
                            seed=link.number * 1000 + (ch.wavelength if ch.wavelength is not None else 999))
                for ch in link.channels)
            specs.append(LinkSpec(name=link.name, iface_a=end_a, iface_b=end_b, channels=channels))
        self._engine = DelayEngineProcess(specs, workdir=self.record.directory,
                                          exec_prefix=["mnexec", "-a", str(delay_host.pid)],
                                          ready_timeout_s=120.0, rt_priority=self.engine_rt_priority,
                                          spin_us=self.engine_spin_us, cpus=self.engine_cpus,
                                          transit_carry=self.transit_carry, turns=self.engine_turns)
        self._engine.start()
        self.record.add_process(self._engine.pid, "delay engine")

    @staticmethod
    def _trunk_channels(link: EmulatedLink) -> list[link_backends.TrunkChannel]:
        return [link_backends.TrunkChannel(ch.vid, delay_us=ch.delay_s * 1e6, jitter_us=ch.jitter_s * 1e6,
                                           jitter_dist=ENGINE_DIST[ch.jitter_dist], rate_bps=ch.rate_bps)
                for ch in link.channels]

    def _apply_netem(self) -> None:
        for link in self.links:
            channels = self._trunk_channels(link)
            for ifname in (link.port_a, link.port_b):
                link_backends.apply_trunk_netem(ifname, channels)

    def _span_link(self, a: str, b: str) -> EmulatedLink:
        link = next((lk for lk in self.links if {lk.a, lk.b} == {a, b}), None)
        if link is None:
            raise EmulationError(f"no span {a}-{b}")
        return link

    def set_wavelength_rate(self, a: str, b: str, wavelength: int, rate_bps: float) -> None:
        """Change the rate of one wavelength of span a-b (both directions) while running.

        Raises:
            EmulationError: no such span or wavelength, or the backend cannot change it.
        """
        link = self._span_link(a, b)
        channel = link.wavelength(wavelength)
        if self._engine is not None:
            self._engine.set_pace([(link.name, channel.vid, rate_bps)])
            return
        if self.link_backend != "netem":
            raise EmulationError("the network is not running")
        channels = self._trunk_channels(link)
        for ifname in (link.port_a, link.port_b):
            for cmd in link_backends.trunk_rate_commands(ifname, channels, channel.vid, rate_bps):
                _run(cmd, f"changing the rate of wavelength {wavelength} on {ifname}")

    def set_transit_advance(self, advances: dict[tuple[str, str], float]) -> None:
        """Shorten the engine's hold on directed spans: ``{(a, b): us}`` for frames going a -> b
        (every channel of the span: wavelengths and the packet network). Calibration uses
        this to take the emulator's own per-span transit time out of the configured delay.

        Raises:
            EmulationError: no such span, or the backend is not the userspace engine.
        """
        if self._engine is None:
            raise EmulationError("transit advance needs the userspace link backend")
        changes = []
        for (a, b), us in advances.items():
            link = self._span_link(a, b)
            changes.append((link.name, "a->b" if (a, b) == (link.a, link.b) else "b->a", float(us)))
        self._engine.set_advance(changes)

    def _configure_hosts(self) -> None:
        """Addresses, MACs, static ARP for every host and the VIP gateway; offloads off."""
        hosts = [p for sw in self.port_map.switches.values() for p in sw.host_ports()]
        for port in hosts:
            pid = self._net.get(port.host).pid
            dev = f"{port.host}-eth0"
            cmds = [["ip", "link", "set", "dev", dev, "address", port.mac],
                    ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
                    ["ip", "addr", "flush", "dev", dev]]
            cmds += [["ip", "addr", "add", f"{ip}/16", "dev", dev] for ip in port.ips]
            cmds += [["ip", "link", "set", "dev", dev, "up"],
                     ["ip", "neigh", "replace", VIP_GATEWAY_IP, "lladdr", VIP_GATEWAY_MAC, "dev", dev,
                      "nud", "permanent"],
                     ["ip", "route", "replace", "10.3.0.0/16", "via", VIP_GATEWAY_IP, "dev", dev, "onlink"]]
            for other in hosts:
                if other.host != port.host:
                    cmds += [["ip", "neigh", "replace", ip, "lladdr", other.mac, "dev", dev, "nud", "permanent"]
                             for ip in other.ips]
            ip_cmds = [c[1:] for c in cmds if c[0] == "ip"]
            for cmd in (c for c in cmds if c[0] != "ip"):
                _run(in_host(pid, cmd), f"configuring host {port.host}")
            # One 'ip -batch' per host: hundreds of static ARP entries in one process.
            _run_batch(in_host(pid, ["ip", "-batch", "-"]), ip_cmds, f"configuring host {port.host}")
            _offloads_off(dev, pid)

    # -- access ------------------------------------------------------------------------------
    def host_pid(self, name: str) -> int:
        if self._net is None:
            raise EmulationError("the network is not running")
        return self._net.get(name).pid

    def host_ip(self, site: str, role: int, plane: int = ad.APN_PLANE) -> str:
        return ad.host_ip(plane, self.port_map.switches[site].index, role)

    @property
    def mininet(self):
        return self._net

    @property
    def engine(self) -> DelayEngineProcess | None:
        return self._engine


def _teardown(net, record: RunRecord) -> None:
    """Faster than Mininet's link-by-link stop: end the host shells, and their namespaces
    take every veth with an end inside them; then delete all bridges in one OVSDB transaction."""
    from twin.emulation.records import terminate

    # Mininet's host shells are interactive bash, which ignores SIGTERM; they hold nothing
    # that needs a graceful end.
    terminate([p for p in record.processes if p.what.startswith("mininet host")], first_signal=signal.SIGKILL)
    bridges = [sw.name for sw in net.switches]
    if bridges:
        args = ["ovs-vsctl", "--timeout=20"]
        for name in bridges:
            args += ["--", "--if-exists", "del-br", name]
        _run(args, "deleting bridges")
    # The netem backend's QoS rows, once no port refers to them, and its switch-to-switch veths.
    error = destroy_qos([row for row, run_id in tagged_qos().items() if run_id == record.run_id])
    if error:
        raise EmulationError(f"deleting the QoS rows: {error}")
    delete_interfaces(record.interfaces)
    for host in net.hosts:
        host.shell = None  # already ended; keeps Mininet's atexit/destructors from touching them


def _leave_qos_to_tc(ifnames: list[str], run_id: str) -> None:
    """Give ports OVS's ``linux-noop`` QoS, so OVS leaves their qdiscs to us.

    On a port with no QoS row, OVS's Linux netdev deletes a root qdisc it
    recognises but did not make (our htb) when it takes the port: netem would
    silently vanish (seen on the kernel datapath, where every pair measured its
    whole span delay short). QoS is a root table, so the row outlives the
    ports: it carries the run's tag, and teardown and ``twin clean`` destroy it."""
    if not ifnames:
        return
    args = ["ovs-vsctl", "--timeout=20", "--", "--id=@noop", "create", "QoS", "type=linux-noop",
            f"external_ids:{OVS_TAG}={run_id}"]
    for name in ifnames:
        args += ["--", "set", "Port", name, "qos=@noop"]
    _run(args, "handing the trunk ports' qdiscs to tc (QoS linux-noop)")


def _one_cpu_per_flow(ifnames: list[str]) -> None:
    """Receive packet steering on the switch ports: every frame of one flow is switched on
    the same CPU.

    A veth hands a sent frame to the receive queue of the CPU that sent it. netem
    releases frames from whichever CPU runs its timer or queue, so two frames of one
    flow can be switched on two CPUs at once and leave in the wrong order (seen in the
    netem guest: a probe overtaken while another wavelength was flooded). RPS hashes
    each flow to one CPU's queue. The kernel datapath only: the userspace datapath
    reads the ports itself."""
    mask = cpu_mask_text(range(os.cpu_count() or 1))
    for name in ifnames:
        for queue in Path(f"/sys/class/net/{name}/queues").glob("rx-*"):
            (queue / "rps_cpus").write_text(mask)


def cpu_mask_text(cpus) -> str:
    """A CPU set as the kernel writes masks in sysfs: hex in comma-separated 32-bit groups.

    >>> cpu_mask_text([0, 1]), cpu_mask_text([0, 33])
    ('3', '2,00000001')
    """
    bits = sum(1 << c for c in set(cpus))
    groups = []
    while True:
        groups.append(bits & 0xFFFFFFFF)
        bits >>= 32
        if not bits:
            break
    return ",".join([f"{groups[-1]:x}", *(f"{g:08x}" for g in reversed(groups[:-1]))])


def _port_number(sw_ports, name: str) -> int:
    for port in sw_ports.ports:
        if port.name == name:
            return port.number
    raise EmulationError(f"port {name} missing from the port map of {sw_ports.site}")


def userspace_datapath() -> bool:
    """Whether switches use OVS's userspace datapath here (no openvswitch kernel module)."""
    return not _kernel_has_ovs()


def _kernel_has_ovs() -> bool:
    return Path("/sys/module/openvswitch").exists()


def _run_batch(args: list[str], lines: list[list[str]], what: str) -> None:
    proc = subprocess.run(args, input="\n".join(" ".join(line) for line in lines) + "\n",
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise EmulationError(f"{what}: {(proc.stderr or proc.stdout).strip()}")


_OFFLOADS = ("tso", "gso", "gro", "tx", "rx")


def _offloads_off(ifname: str, pid: int | None = None) -> None:
    # TSO/GSO would hand the switch and the delay engine 64 KB super-frames it cannot re-send.
    args = ["ethtool", "-K", ifname, *[x for f in _OFFLOADS for x in (f, "off")]]
    if subprocess.run(in_host(pid, args) if pid else args, capture_output=True).returncode == 0:
        return
    for feature in _OFFLOADS:  # some drivers refuse one feature; set the others anyway
        args = ["ethtool", "-K", ifname, feature, "off"]
        subprocess.run(in_host(pid, args) if pid else args, capture_output=True)


def _ipv6_off(ifname: str) -> None:
    path = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if path.exists():
        path.write_text("1")
