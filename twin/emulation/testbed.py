"""A switch-only test bed: one OVS bridge per site, spans as patch ports, no hosts or delay.

For exercising the controller against real Open vSwitch without Mininet: the
bridges carry exactly the port numbers of :func:`twin.model.portmap.build_port_map`
(span trunks as patch-port pairs to the neighbouring site, host ports as
internal ports), so ``ovs-appctl ofproto/trace`` follows a
packet across sites. Used by the controller's integration test and benchmark.

Every bridge and port name starts with the caller's prefix (``twt`` + a tag), and
teardown deletes only the bridges this object created.
"""

from __future__ import annotations

import logging
import subprocess

from twin.errors import TwinError
from twin.model.addressing import check_ifname, dpid
from twin.model.portmap import PortMap, build_port_map

LOG = logging.getLogger(__name__)


def vsctl(*args: str, timeout: float = 20) -> str:
    result = subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise TwinError(f"ovs-vsctl {' '.join(args[:3])}... failed: {result.stderr.strip()}")
    return result.stdout


class PatchTestbed:
    """Context manager building the bridges; ``bridge[site]`` names each one."""

    def __init__(self, topology, *, prefix: str, controller_port: int, datapath_type: str = "netdev"):
        if not prefix.startswith("tw"):
            raise ValueError("test bed names must start with 'tw' so that cleanup recognises them")
        self.portmap: PortMap = build_port_map(topology)
        self.prefix = prefix
        self.controller = f"tcp:127.0.0.1:{controller_port}"
        self.datapath_type = datapath_type
        self.bridge = {site: check_ifname(f"{prefix}{site}") for site in self.portmap.switches}
        self.created: list[str] = []

    def port_name(self, site: str, number: int) -> str:
        return check_ifname(f"{self.prefix}{site}{number}")

    def __enter__(self) -> "PatchTestbed":
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def build(self) -> None:
        cmd: list[str] = []
        for site, sw in self.portmap.switches.items():
            br = self.bridge[site]
            self.created.append(br)   # recorded before creation: teardown uses --if-exists
            cmd += ["--", "add-br", br,
                    "--", "set", "bridge", br, f"datapath_type={self.datapath_type}", "protocols=OpenFlow14",
                    "fail_mode=secure", f"other-config:datapath-id={dpid(sw.index)}",
                    f"external_ids:twin-testbed={self.prefix}"]
            for port in sw.ports:
                name = self.port_name(site, port.number)
                cmd += ["--", "add-port", br, name, "--", "set", "interface", name, f"ofport_request={port.number}"]
                if port.kind == "host":
                    cmd.append("type=internal")
                else:  # a span trunk: patched to the far end's trunk, VLAN tags and all
                    peer = self.portmap.switches[port.peer].trunk_port(site)
                    cmd += ["type=patch", f"options:peer={self.port_name(port.peer, peer.number)}"]
            cmd += ["--", "set-controller", br, self.controller]
        vsctl(*cmd[1:])
        # OVS backs off up to 8 s between reconnects; a restarted controller should not wait that long.
        backoff: list[str] = []
        for br in self.bridge.values():
            backoff += ["--", "set", "controller", br, "max_backoff=1000"]
        vsctl(*backoff[1:])
        for site, sw in self.portmap.switches.items():
            gets: list[str] = []
            for port in sw.ports:
                gets += ["--", "get", "interface", self.port_name(site, port.number), "ofport"]
            got = [int(n) for n in vsctl(*gets[1:]).split()]
            expected = [p.number for p in sw.ports]
            if got != expected:
                raise TwinError(f"bridge {self.bridge[site]}: OVS numbered its ports {got}, not {expected}")

    def teardown(self) -> None:
        for br in self.created:
            try:
                vsctl("--if-exists", "del-br", br)
            except (TwinError, subprocess.SubprocessError) as err:
                LOG.error("could not delete bridge %s: %s", br, err)
        self.created.clear()

    def dump_flows(self, site: str) -> list[str]:
        result = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows", self.bridge[site]],
                                capture_output=True, text=True, timeout=20, check=True)
        return [line.strip() for line in result.stdout.splitlines() if line.strip() and "reply" not in line]

    def trace(self, site: str, flow: str) -> str:
        result = subprocess.run(["ovs-appctl", "ofproto/trace", self.bridge[site], flow],
                                capture_output=True, text=True, timeout=20, check=True)
        return result.stdout
