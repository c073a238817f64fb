"""The port map: which OpenFlow port of which switch is which host, span and wavelength.

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

PortKind = Literal["host", "wavelength", "packet"]


@dataclass(frozen=True)
class Port:
    number: int
    name: str
    kind: PortKind
    peer: str | None = None          # remote site, for wavelength and packet ports
    wavelength: int | None = None    # for wavelength ports
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

    def wavelength_port(self, peer: str, wavelength: int) -> Port:
        for port in self.ports:
            if port.kind == "wavelength" and port.peer == peer and port.wavelength == wavelength:
                return port
        raise TwinError(f"switch {self.site} has no port for wavelength {wavelength} towards {peer}")

    def packet_port(self, peer: str) -> Port:
        for port in self.ports:
            if port.kind == "packet" and port.peer == peer:
                return port
        raise TwinError(f"switch {self.site} has no packet-network port towards {peer}")

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
            ports = [Port(**{**p, "ips": tuple(p.get("ips", ()))}) for p in sw["ports"]]
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

    Port 1 compute host, 2 users host, then for each span touching the site (in
    file order) its wavelengths 0..W-1 and then its packet-network port.
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
            for w in range(span.wavelengths):
                sw.ports.append(Port(len(sw.ports) + 1, ad.wavelength_port(local, remote, w), "wavelength",
                                     peer=remote, wavelength=w))
            sw.ports.append(Port(len(sw.ports) + 1, ad.packet_port(local, remote), "packet", peer=remote))
    return pm
