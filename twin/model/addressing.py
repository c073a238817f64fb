"""Names and addresses of everything the emulation creates (pure; no root needed).

One place decides every name, so the emulation, the controller, ``twin clean``
and the tests agree. Site ids are at most 5 characters (the schema enforces
it), which keeps every generated Linux interface name within 15 characters.

Sites are numbered 1..N in file order (``index``).

Per site ``s`` with index ``i``
    switch ``s``                       OVS bridge (tagged external_ids:twin-run=<run id>) acting as the site's ROADM and DC edge;
                                       datapath id ``i``
    hosts ``s_c`` (compute), ``s_u`` (users of the region)
    host interface ``<host>-eth0`` on switch port 1 (compute) or 2 (users)

Addresses (each host has both; the destination prefix picks the network)
    APN plane      10.1.i.h/16   h = 1 compute, 2 users; reached over lightpaths
    packet plane   10.2.i.h/16   reached hop by hop over the conventional network
    service VIPs   10.3.0.k/32   k = 1.. per service in scenario order; steered by the
                                 controller to the site hosting the service
    host MAC       02:00:00:<i>:00:<h> (hex), VIP MAC 02:00:03:00:00:<k>
ARP is static (written into each host), so no broadcast crosses the optical layer.

Per span ``a-b`` (ends in file order), numbered 1.. in file order (``link``)
    one trunk port per span end: ``a_b`` on a and ``b_a`` on b (switch ports
    numbered after the hosts: 3, 4, ... for the spans touching the site, in file order)
    wavelength ``w`` (0-based) travels on the trunk as 802.1Q VLAN id ``100 + w``
    (``wavelength_vid``); the conventional packet network is the untagged traffic
    of the same trunk. A trunk is the fibre: the link-delay backend gives each
    VLAN its own queue, delay, jitter and rate (and the untagged frames the packet
    network's router model), so no wavelength ever waits behind another.
    Why trunks and not one port per wavelength: Open vSwitch's userspace datapath
    polls every port from one thread, and its cost grows with the port count
    (japan.yaml: 46 ports instead of 240).
Generated names join ids with ``_``, which ids may not contain, so two different
sites can never produce the same name (``a-b`` + ``c`` vs ``a`` + ``b-c``).
The userspace delay engine sits in the middle of each span in a namespace of its
own, on interfaces ``d<link>a`` / ``d<link>b``, so its interface names never
collide with a switch's.

Everything the twin makes on the host carries the prefix ``tw`` in a record file
(see :mod:`twin.emulation.records`), so ``twin clean`` removes only its own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IFNAME_MAX = 15
COMPUTE, USERS = 1, 2
HOST_ROLES = {COMPUTE: "c", USERS: "u"}
APN_PLANE, PACKET_PLANE, VIP_PLANE = 1, 2, 3


def check_ifname(name: str) -> str:
    """Return ``name`` if Linux accepts it as an interface name, else raise ValueError."""
    if not 1 <= len(name) <= IFNAME_MAX or any(c in name for c in "/ :\t\n") or name in (".", ".."):
        raise ValueError(f"interface name {name!r} is not valid on Linux (1-{IFNAME_MAX} characters, no / : or space)")
    return name


def host_name(site: str, role: int) -> str:
    return f"{site}_{HOST_ROLES[role]}"


def host_ip(plane: int, site_index: int, role: int) -> str:
    if not 1 <= site_index <= 250:
        raise ValueError(f"site index {site_index} out of range 1..250")
    return f"10.{plane}.{site_index}.{role}"


def site_prefix(plane: int, site_index: int) -> str:
    return f"10.{plane}.{site_index}.0/24"


def host_mac(site_index: int, role: int) -> str:
    return f"02:00:00:{site_index:02x}:00:{role:02x}"


def vip(service_index: int) -> str:
    if not 1 <= service_index <= 250:
        raise ValueError(f"service index {service_index} out of range 1..250")
    return f"10.{VIP_PLANE}.0.{service_index}"


def vip_mac(service_index: int) -> str:
    return f"02:00:03:00:00:{service_index:02x}"


WAVELENGTH_VID_BASE = 100
VID_MAX = 4094


def trunk_port(local: str, remote: str) -> str:
    """Name of the switch port at ``local`` that carries the span to ``remote``."""
    return check_ifname(f"{local}_{remote}")


def wavelength_vid(wavelength: int) -> int:
    """802.1Q VLAN id of a wavelength on a trunk.

    >>> wavelength_vid(0), wavelength_vid(7)
    (100, 107)
    """
    vid = WAVELENGTH_VID_BASE + wavelength
    if not (0 <= wavelength and vid <= VID_MAX):
        raise ValueError(f"wavelength {wavelength} has no VLAN id (0..{VID_MAX - WAVELENGTH_VID_BASE})")
    return vid


def engine_ifnames(link_number: int) -> tuple[str, str]:
    return check_ifname(f"d{link_number}a"), check_ifname(f"d{link_number}b")


def dpid(site_index: int) -> str:
    """16 hex digits, as Mininet and OVS expect."""
    return f"{site_index:016x}"


def plane_of(ip: str) -> int:
    """Which plane an address belongs to (1 APN, 2 packet, 3 VIP)."""
    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network("10.0.0.0/8"):
        raise ValueError(f"{ip} is not a twin address")
    return int(ip.split(".")[1])


@dataclass(frozen=True)
class HostAddress:
    site: str
    role: int
    name: str
    apn_ip: str
    packet_ip: str
    mac: str
    port: int


def site_hosts(site: str, site_index: int) -> list[HostAddress]:
    """The two hosts of a site with their addresses and switch ports."""
    return [
        HostAddress(site, role, host_name(site, role), host_ip(APN_PLANE, site_index, role),
                    host_ip(PACKET_PLANE, site_index, role), host_mac(site_index, role), role)
        for role in (COMPUTE, USERS)
    ]
