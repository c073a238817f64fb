"""The port map: which OpenFlow port (and VLAN) of which switch is which host, span and wavelength.

A span end is one trunk port; on it, wavelength ``w`` is the VLAN id listed at
``vids[w]`` and the packet network is the untagged traffic (see
:mod:`twin.model.addressing`). The controller takes ports and VLAN ids from
here, never from a naming rule, so another numbering needs no controller change.

The emulation writes it (it numbers the ports when it builds the network); the
controller reads it. Keeping it a plain JSON file lets the controller run as its
own process, restart, or run against a network it did not build.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from twin.errors import TwinError

PortKind = Literal["host", "trunk"]


@dataclass(frozen=True)
class Port:
    number: int
    name: str
    kind: PortKind
    peer: str | None = None          # remote site, for trunk ports
    vids: tuple[int, ...] = ()       # for trunk ports: VLAN id of wavelength 0, 1, ...
    host: str | None = None          # for host ports
    role: int | None = None          # addressing.COMPUTE or USERS, for host ports
    ips: tuple[str, ...] = ()        # host addresses, for host ports
    mac: str | None = None           # host MAC, for host ports


@dataclass
class SwitchPorts:
    site: str
    index: int
    dpid: int
    ports: list[Port] = field(default_factory=list)

    def trunk_port(self, peer: str) -> Port:
        """The port carrying the span to ``peer`` (all its wavelengths and the packet network)."""
        for port in self.ports:
            if port.kind == "trunk" and port.peer == peer:
                return port
        raise TwinError(f"switch {self.site} has no trunk port towards {peer}")

    def wavelength_channel(self, peer: str, wavelength: int) -> tuple[int, int]:
        """(port number, VLAN id) of ``wavelength`` on the span to ``peer``."""
        port = self.trunk_port(peer)
        if not 0 <= wavelength < len(port.vids):
            raise TwinError(f"switch {self.site}: the span to {peer} has no wavelength {wavelength} "
                            f"(it has {len(port.vids)})")
        return port.number, port.vids[wavelength]

    def packet_port(self, peer: str) -> Port:
        """The port of the packet network's link to ``peer`` (the trunk; its frames are untagged)."""
        return self.trunk_port(peer)

    def trunk_ports(self) -> list[Port]:
        return [p for p in self.ports if p.kind == "trunk"]

    def host_ports(self) -> list[Port]:
        return [p for p in self.ports if p.kind == "host"]


@dataclass
class PortMap:
    topology: str
    switches: dict[str, SwitchPorts] = field(default_factory=dict)

    def by_dpid(self, dpid: int) -> SwitchPorts | None:
        for switch in self.switches.values():
            if switch.dpid == dpid:
                return switch
        return None

    def to_json(self) -> str:
        return json.dumps({"topology": self.topology,
                           "switches": {k: asdict(v) for k, v in self.switches.items()}}, indent=1)

    def save(self, path: str | Path) -> None:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # readers never see half a file

    @classmethod
    def from_json(cls, text: str) -> "PortMap":
        data = json.loads(text)
        result = cls(data["topology"])
        for site, sw in data["switches"].items():
            ports = [Port(**{**p, "ips": tuple(p.get("ips", ())), "vids": tuple(p.get("vids", ()))})
                     for p in sw["ports"]]
            result.switches[site] = SwitchPorts(sw["site"], sw["index"], sw["dpid"], ports)
        return result

    @classmethod
    def load(cls, path: str | Path) -> "PortMap":
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TwinError(f"cannot read port map {path}: {err}; start the network with 'twin up' first") from None


def build_port_map(topology) -> PortMap:
    """The port numbering the emulation uses, derived from the topology alone.

    Port 1 compute host, 2 users host, then one trunk port per span touching the
    site (in file order), whose VLAN ids are ``wavelength_vid(0..W-1)``.
    """
    from twin.model import addressing as ad

    pm = PortMap(topology.name)
    for index, site in enumerate(topology.sites, start=1):
        sw = SwitchPorts(site.id, index, index)
        for h in ad.site_hosts(site.id, index):
            # The switch end of the host link; the host end is <host>-eth0 inside the host.
            sw.ports.append(Port(h.port, f"{h.name}_sw", "host", host=h.name, role=h.role,
                                 ips=(h.apn_ip, h.packet_ip), mac=h.mac))
        pm.switches[site.id] = sw
    for span in topology.spans:
        for local, remote in (span.ends, span.ends[::-1]):
            sw = pm.switches[local]
            sw.ports.append(Port(len(sw.ports) + 1, ad.trunk_port(local, remote), "trunk", peer=remote,
                                 vids=tuple(ad.wavelength_vid(w) for w in range(span.wavelengths))))
    return pm
