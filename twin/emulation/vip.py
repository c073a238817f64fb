"""Service virtual IPs on compute hosts.

The controller steers a VIP's packets to a site's compute host (destination MAC
rewritten); the host accepts them only if the VIP is one of its addresses. It
goes on ``lo`` as a /32, so the host answers for it without ever announcing it
(ARP is static) and its own routes are untouched.
"""

from __future__ import annotations

import ipaddress
import subprocess

from twin.emulation.network import ApnNetwork, in_host
from twin.errors import TwinError
from twin.model import addressing as ad

VIP_NETWORK = ipaddress.ip_network("10.3.0.0/24")


def _check_vip(vip: str) -> str:
    try:
        address = ipaddress.IPv4Address(vip)
    except ValueError:
        raise TwinError(f"{vip!r} is not an IPv4 address; service VIPs are 10.3.0.k") from None
    if address not in VIP_NETWORK:
        raise TwinError(f"{vip} is not a service VIP; use 10.3.0.1 .. 10.3.0.250 (twin.model.addressing)")
    return str(address)


def _ip(network: ApnNetwork, site: str, args: list[str], *, ok_codes: tuple[int, ...] = (0,)) -> None:
    pid = network.host_pid(ad.host_name(site, ad.COMPUTE))
    proc = subprocess.run(in_host(pid, ["ip", *args]), capture_output=True, text=True)
    if proc.returncode not in ok_codes:
        raise TwinError(f"ip {' '.join(args)} on {ad.host_name(site, ad.COMPUTE)} failed: {proc.stderr.strip()}")


def add_vip(network: ApnNetwork, site: str, vip: str) -> None:
    """Make ``site``'s compute host answer for ``vip`` (idempotent)."""
    _ip(network, site, ["addr", "replace", f"{_check_vip(vip)}/32", "dev", "lo"])


def remove_vip(network: ApnNetwork, site: str, vip: str) -> None:
    """Stop ``site``'s compute host answering for ``vip`` (no error if it did not)."""
    _ip(network, site, ["addr", "del", f"{_check_vip(vip)}/32", "dev", "lo"], ok_codes=(0, 2))
