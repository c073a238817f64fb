"""Link-delay backends: kernel ``netem`` where it exists, the userspace engine elsewhere.

``--link-backend auto|netem|userspace``: ``auto`` picks ``netem`` when a netem
qdisc can be created (:func:`detect_backend`), else ``userspace``
(:mod:`twin.emulation.delay_engine`).

netem without reordering. netem keeps packets in a time-sorted queue
("tfifo"); with plain ``delay D J`` each packet gets an independent jitter
sample, so a packet can be scheduled before its predecessor: netem reorders
(Mininet's TCLink does this). When netem's own ``rate`` is set, the kernel
takes the send time of the last queued packet as the reference ("now") for
the next one, subtracts the time already waited from the new delay and adds
the serialisation time, so every send time is >= the previous one: no
reordering, and jitter larger than the packet gap turns into delay (the same
rule as the userspace engine's ``max(arrival + delay + jitter, previous)``).
We therefore always give netem a ``rate``: the per-wavelength rate when known
(it is the line's serialisation delay anyway), else a fast nominal rate
(``NO_REORDER_RATE_BPS``) that only serves to keep order.

The rate stage (``htb``) sits in front of netem: htb root -> class at the
per-wavelength rate -> netem leaf. netem's ``limit`` (queue length in
packets) is sized to the bandwidth-delay product, rate x (delay + jitter) /
1500 B, never below netem's default of 1,000; the default is far too small
at 10 Gbit/s x 5 ms (about 4,200 packets).

:func:`apply_rate_limit` (tbf or htb) is used by both backends: with the
userspace engine it shapes traffic *before* the engine (on the interface that
feeds it), so the engine is never the bottleneck; a saturated engine queues
and inflates delay by milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from twin.errors import TwinError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "netem", "userspace")
NETEM_DISTS = {"none": None, "uniform": None, "normal": "normal", "paretonormal": "paretonormal"}
NETEM_MIN_LIMIT = 1000
MTU_BYTES = 1500
NO_REORDER_RATE_BPS = 100e9
PROBE_PREFIX = "twprobe"


class LinkBackendError(TwinError):
    """A link backend cannot be chosen or applied."""


def _run(args: Sequence[str], what: str) -> None:
    proc = subprocess.run(list(args), capture_output=True, text=True)
    if proc.returncode != 0:
        raise LinkBackendError(f"{what}: `{' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _tc(netns: str | None) -> list[str]:
    return ["tc", "-n", netns] if netns else ["tc"]


def _bit(rate_bps: float) -> str:
    return f"{int(round(rate_bps))}bit"


def _us(value_us: float) -> str:
    # tc accepts fractional microseconds poorly on old iproute2; whole us is plenty.
    return f"{int(round(value_us))}us"


def netem_limit(delay_us: float, jitter_us: float, rate_bps: float | None, mtu_bytes: int = MTU_BYTES) -> int:
    """netem queue length in packets: the bandwidth-delay product, floor 1,000.

    >>> netem_limit(5000, 0, 10e9)
    4167
    >>> netem_limit(500, 0, 1e9)
    1000
    """
    if not rate_bps:
        return NETEM_MIN_LIMIT
    bdp = rate_bps * (delay_us + jitter_us) * 1e-6 / (8 * mtu_bytes)
    return max(NETEM_MIN_LIMIT, math.ceil(bdp))


def netem_commands(ifname: str, *, delay_us: float, jitter_us: float = 0.0, jitter_dist: str = "none",
                   rate_bps: float | None = None, netns: str | None = None) -> list[list[str]]:
    """``tc`` argument lists giving ``ifname`` a non-reordering netem delay behind an htb rate stage.

    Raises:
        LinkBackendError: negative values or an unknown distribution.
    """
    if delay_us < 0 or jitter_us < 0:
        raise LinkBackendError(f"{ifname}: delay_us and jitter_us must be >= 0")
    if jitter_dist not in NETEM_DISTS:
        raise LinkBackendError(f"{ifname}: jitter_dist {jitter_dist!r} unknown; use one of {', '.join(NETEM_DISTS)}")
    if jitter_us > 0 and jitter_dist == "none":
        raise LinkBackendError(f"{ifname}: jitter_us={jitter_us} needs a jitter_dist")
    tc = _tc(netns)
    cmds = []
    netem_parent = "root"
    if rate_bps:
        cmds.append([*tc, "qdisc", "replace", "dev", ifname, "root", "handle", "1:", "htb", "default", "1"])
        cmds.append([*tc, "class", "replace", "dev", ifname, "parent", "1:", "classid", "1:1", "htb",
                     "rate", _bit(rate_bps), "ceil", _bit(rate_bps)])
        netem_parent = "1:1"
    netem = [*tc, "qdisc", "replace", "dev", ifname]
    netem += ["root", "handle", "10:"] if netem_parent == "root" else ["parent", netem_parent, "handle", "10:"]
    netem += ["netem", "limit", str(netem_limit(delay_us, jitter_us, rate_bps)), "delay", _us(delay_us)]
    if jitter_us > 0:
        netem.append(_us(jitter_us))
        dist = NETEM_DISTS[jitter_dist]
        if dist:
            netem += ["distribution", dist]
    # `rate` is what keeps netem from reordering (see the module docstring).
    netem += ["rate", _bit(rate_bps or NO_REORDER_RATE_BPS)]
    cmds.append(netem)
    return cmds


def rate_limit_commands(ifname: str, rate_bps: float, *, kind: str = "tbf", netns: str | None = None,
                        burst_s: float = 0.0005, queue_s: float = 0.02, mtu_bytes: int = MTU_BYTES) -> list[list[str]]:
    """``tc`` argument lists shaping egress of ``ifname`` to ``rate_bps``.

    ``burst_s`` of line rate may pass back-to-back (at least two MTU); a small
    burst keeps the engine behind it from seeing long line-rate trains.
    ``queue_s`` bounds the shaper's queue (tbf ``latency``).

    >>> rate_limit_commands("eth0", 500e6)[0][-6:]
    ['rate', '500000000bit', 'burst', '31250', 'latency', '20000us']

    Raises:
        LinkBackendError: non-positive rate or unknown kind.
    """
    if not rate_bps or rate_bps <= 0:
        raise LinkBackendError(f"{ifname}: rate_bps must be > 0")
    burst = max(2 * (mtu_bytes + 14), int(rate_bps * burst_s / 8))
    tc = _tc(netns)
    if kind == "tbf":
        return [[*tc, "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", _bit(rate_bps), "burst", str(burst),
                 "latency", _us(queue_s * 1e6)]]
    if kind == "htb":
        return [[*tc, "qdisc", "replace", "dev", ifname, "root", "handle", "1:", "htb", "default", "1"],
                [*tc, "class", "replace", "dev", ifname, "parent", "1:", "classid", "1:1", "htb", "rate",
                 _bit(rate_bps), "ceil", _bit(rate_bps), "burst", str(burst), "cburst", str(burst)]]
    raise LinkBackendError(f"rate limit kind {kind!r} unknown; use tbf or htb")


def apply_rate_limit(ifname: str, rate_bps: float, *, kind: str = "tbf", netns: str | None = None,
                     **kw) -> None:
    """Shape egress of ``ifname`` (in ``netns`` if given) to ``rate_bps``.

    Raises:
        LinkBackendError: tc missing or refusing the qdisc.
    """
    if not shutil.which("tc"):
        raise LinkBackendError("tc (iproute2) not found; install iproute2")
    for cmd in rate_limit_commands(ifname, rate_bps, kind=kind, netns=netns, **kw):
        _run(cmd, f"rate limit on {ifname}")


def clear_qdisc(ifname: str, *, netns: str | None = None) -> None:
    """Remove the root qdisc of ``ifname``; no error when there is none."""
    subprocess.run([*_tc(netns), "qdisc", "del", "dev", ifname, "root"], capture_output=True)


def apply_netem(ifname: str, **kw) -> None:
    """Apply :func:`netem_commands` to ``ifname``.

    Raises:
        LinkBackendError: tc refused one of the commands (e.g. no sch_netem).
    """
    for cmd in netem_commands(ifname, **kw):
        _run(cmd, f"netem on {ifname}")


def netem_available() -> bool:
    """True if a netem qdisc can be created here (tried on a throwaway veth pair)."""
    if not (shutil.which("ip") and shutil.which("tc")):
        return False
    name = f"{PROBE_PREFIX}{os.getpid() % 100000}"  # <= 12 chars, under the 15-char limit
    # A veth pair, not a dummy: loading the dummy module makes a dummy0 that would stay.
    made = subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"],
                          capture_output=True)
    if made.returncode != 0:
        log.debug("cannot create %s to probe for netem: %s", name, made.stderr)
        return False
    try:
        tried = subprocess.run(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"],
                               capture_output=True)
        return tried.returncode == 0
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def detect_backend() -> str:
    """``"netem"`` if the kernel can run netem, else ``"userspace"``."""
    return "netem" if netem_available() else "userspace"


def choose_backend(requested: str = "auto") -> str:
    """Resolve ``--link-backend``: ``auto`` -> netem when possible; ``netem`` must be available.

    Raises:
        LinkBackendError: unknown name, or netem requested where it cannot run.
    """
    if requested not in BACKENDS:
        raise LinkBackendError(f"link backend {requested!r} unknown; use one of {', '.join(BACKENDS)}")
    if requested == "userspace":
        return "userspace"
    available = netem_available()
    if requested == "netem" and not available:
        raise LinkBackendError("link backend netem requested but this kernel cannot create a netem qdisc "
                               "(no sch_netem module); use --link-backend userspace or auto")
    return "netem" if available else "userspace"


# --------------------------------------------------------------------------- trunks (one port per span)


@dataclass(frozen=True)
class TrunkChannel:
    """One VLAN of a span trunk (``vid`` None: the untagged frames) with its own delay and rate."""

    vid: int | None
    delay_us: float
    jitter_us: float = 0.0
    jitter_dist: str = "none"
    rate_bps: float | None = None


def trunk_netem_commands(ifname: str, channels: Sequence[TrunkChannel], *,
                         netns: str | None = None) -> list[list[str]]:
    """``tc`` argument lists giving each VLAN of a trunk its own rate and non-reordering netem.

    htb root; per channel a class at its rate with a netem leaf (as
    :func:`netem_commands`, so it keeps order), chosen by a flower filter on the
    VLAN id; untagged frames go to the default class (the untagged channel).
    Separate classes mean separate queues: one wavelength never waits behind
    another.

    Raises:
        LinkBackendError: bad values, two channels for one VLAN, or too many channels.
    """
    vids = [ch.vid for ch in channels]
    if len(set(vids)) != len(vids):
        raise LinkBackendError(f"{ifname}: two trunk channels share a VLAN id")
    if not channels or len(channels) > 0xFF00:
        raise LinkBackendError(f"{ifname}: a trunk needs 1..{0xFF00} channels")
    tc = _tc(netns)
    untagged = next((i for i, ch in enumerate(channels) if ch.vid is None), None)
    default = f"{untagged + 1:x}" if untagged is not None else "0"
    cmds = [[*tc, "qdisc", "replace", "dev", ifname, "root", "handle", "1:", "htb", "default", default]]
    for i, ch in enumerate(channels):
        classid = f"1:{i + 1:x}"
        cmds += _channel_commands(tc, ifname, i, ch)
        if ch.vid is not None:
            cmds.append([*tc, "filter", "replace", "dev", ifname, "parent", "1:", "protocol", "802.1Q", "prio", "1",
                         "handle", str(i + 1), "flower", "vlan_id", str(ch.vid), "classid", classid])
    return cmds


def _channel_commands(tc: list[str], ifname: str, index: int, ch: TrunkChannel) -> list[list[str]]:
    """The htb class and netem leaf of channel ``index`` (``replace``: makes or changes them)."""
    if ch.delay_us < 0 or ch.jitter_us < 0:
        raise LinkBackendError(f"{ifname}: channel {ch.vid}: delay_us and jitter_us must be >= 0")
    if ch.jitter_dist not in NETEM_DISTS:
        raise LinkBackendError(f"{ifname}: channel {ch.vid}: jitter_dist {ch.jitter_dist!r} unknown")
    if ch.rate_bps is not None and not ch.rate_bps > 0:
        raise LinkBackendError(f"{ifname}: channel {ch.vid}: rate_bps must be > 0")
    classid = f"1:{index + 1:x}"
    rate = ch.rate_bps or NO_REORDER_RATE_BPS
    netem = [*tc, "qdisc", "replace", "dev", ifname, "parent", classid, "handle", f"{index + 0x10:x}:", "netem",
             "limit", str(netem_limit(ch.delay_us, ch.jitter_us, ch.rate_bps)), "delay", _us(ch.delay_us)]
    if ch.jitter_us > 0:
        netem.append(_us(ch.jitter_us))
        if NETEM_DISTS[ch.jitter_dist]:
            netem += ["distribution", NETEM_DISTS[ch.jitter_dist]]
    netem += ["rate", _bit(rate)]  # keeps netem from reordering (module docstring)
    return [[*tc, "class", "replace", "dev", ifname, "parent", "1:", "classid", classid, "htb",
             "rate", _bit(rate), "ceil", _bit(rate)], netem]


def trunk_rate_commands(ifname: str, channels: Sequence[TrunkChannel], vid: int, rate_bps: float, *,
                        netns: str | None = None) -> list[list[str]]:
    """``tc`` argument lists giving the channel of VLAN ``vid`` (already set up by
    :func:`trunk_netem_commands` with the same ``channels``) a new rate, in place:
    its class and netem leaf change, the other channels and the filters stay.

    Raises:
        LinkBackendError: no channel has that VLAN, or a bad rate.
    """
    index = next((i for i, ch in enumerate(channels) if ch.vid == vid), None)
    if index is None:
        raise LinkBackendError(f"{ifname}: no trunk channel has VLAN {vid}")
    return _channel_commands(_tc(netns), ifname, index, dataclasses.replace(channels[index], rate_bps=rate_bps))


def apply_trunk_netem(ifname: str, channels: Sequence[TrunkChannel], **kw) -> None:
    """Apply :func:`trunk_netem_commands` to ``ifname``.

    Raises:
        LinkBackendError: tc refused one of the commands (e.g. no sch_netem or cls_flower).
    """
    for cmd in trunk_netem_commands(ifname, channels, **kw):
        _run(cmd, f"trunk netem on {ifname}")
