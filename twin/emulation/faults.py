"""Faults injected into the running emulation: a fibre span cut and its repair.

A cut takes the switch ports of the span down at both ends (``ip link set dev X
down``), so frames on the dead fibre are really lost, whatever the controller
believes; telling the controller (``POST /spans/{a}/{b}/cut``) is a separate
step, as an alarm is in a real network. Port names come from the port map
(every port of site ``a`` whose peer is ``b``), never from a naming rule.
"""

from __future__ import annotations

import subprocess

from twin.errors import TwinError
from twin.model.addressing import check_ifname
from twin.model.portmap import PortMap


class FaultError(TwinError):
    """A fault could not be injected or removed."""


def span_ports(portmap: PortMap, a: str, b: str) -> list[str]:
    """Names of the switch ports carrying span a-b, at both ends.

    Raises:
        FaultError: unknown site, or no port between the two sites.
    """
    for site in (a, b):
        if site not in portmap.switches:
            raise FaultError(f"unknown site {site!r}; the port map has {', '.join(portmap.switches)}")
    names = [check_ifname(p.name) for local, remote in ((a, b), (b, a))
             for p in portmap.switches[local].ports if p.peer == remote]
    if not names:
        raise FaultError(f"no span between {a} and {b} in the port map; check the topology's spans")
    return names


def _set_links(names: list[str], state: str) -> None:
    for name in names:
        proc = subprocess.run(["ip", "link", "set", "dev", name, state], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FaultError(f"ip link set dev {name} {state} failed: {proc.stderr.strip()}; is the network up "
                             "and are you root?")


def cut_span(portmap: PortMap, a: str, b: str) -> list[str]:
    """Take span a-b's switch ports down (both ends); returns their names.

    Raises:
        FaultError: unknown span, or ``ip`` failed (not root, network not up).
    """
    names = span_ports(portmap, a, b)
    _set_links(names, "down")
    return names


def repair_span(portmap: PortMap, a: str, b: str) -> list[str]:
    """Bring span a-b's switch ports up again; returns their names."""
    names = span_ports(portmap, a, b)
    _set_links(names, "up")
    return names
