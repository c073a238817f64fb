"""What the delay engine decides, without sockets: pure and unit-tested.

Link and channel specs (what the emulation asks for, validated), jitter
sampling, a conventional router's queueing, token-bucket pacing, departure
times that never reorder (:class:`DepartureScheduler`), the memory of intended
departures that carries a frame's schedule across spans in transit
(:class:`TransitMemory`), and the lanes that take turns when the engine runs
behind (:class:`FairDepartures`, :class:`DirectionQueues`). The forwarding loop
that feeds these with frames and clock readings, and the Linux plumbing it
needs, are in :mod:`twin.emulation.delay_engine`; this module opens no socket.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import json
import math
import os
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twin.errors import TwinError

JITTER_DISTS = ("none", "uniform", "normal", "paretonormal")
CARRY_WINDOW_NS = 10_000_000  # a frame back within 10 ms of its intended departure is in transit
CARRY_KEY_BYTES = 128  # Ethernet + VLAN + IP + TCP/UDP headers with options: identifies a frame
LATE_NS = 500_000  # frames sent this late are counted, and logged by episode to line up with slow requests


class DelayEngineError(TwinError):
    """The delay engine could not be configured, started or run."""


# --------------------------------------------------------------------------- specs


ANY_VID = -1  # a channel that takes every frame (a link without channels)
VID_MAX = 4094


def _param_problems(where: str, obj) -> list[str]:
    """Problems of the delay/jitter/router/pacing fields shared by links and channels."""
    out = []
    if not (isinstance(obj.delay_us, (int, float)) and obj.delay_us >= 0 and math.isfinite(obj.delay_us)):
        out.append(f"{where}: delay_us must be a finite number >= 0, got {obj.delay_us!r}")
    if not (isinstance(obj.jitter_us, (int, float)) and obj.jitter_us >= 0 and math.isfinite(obj.jitter_us)):
        out.append(f"{where}: jitter_us must be a finite number >= 0, got {obj.jitter_us!r}")
    if obj.jitter_dist not in JITTER_DISTS:
        out.append(f"{where}: jitter_dist {obj.jitter_dist!r} unknown; use one of {', '.join(JITTER_DISTS)}")
    if obj.jitter_us > 0 and obj.jitter_dist == "none":
        out.append(f"{where}: jitter_us={obj.jitter_us} but jitter_dist is 'none'; name a distribution")
    if not 0 <= obj.background_load < 1:
        out.append(f"{where}: background_load must be in [0, 1), got {obj.background_load!r}")
    if obj.background_load > 0 and not (obj.rate_bps and obj.rate_bps > 0):
        out.append(f"{where}: background_load needs rate_bps > 0 (the router's line rate)")
    if obj.rate_bps is not None and not obj.rate_bps > 0:
        out.append(f"{where}: rate_bps must be > 0 or null, got {obj.rate_bps!r}")
    if obj.pace_bps is not None and not (isinstance(obj.pace_bps, (int, float)) and obj.pace_bps > 0):
        out.append(f"{where}: pace_bps must be > 0 or null, got {obj.pace_bps!r}")
    return out


@dataclass(frozen=True)
class ChannelSpec:
    """One channel of a trunk link: the frames carrying 802.1Q VLAN id ``vid`` (None: untagged).

    Each channel has its own delay, jitter, router model and token-bucket
    shaper (``pace_bps``), and its own order per direction, so one channel's
    frames never wait behind another's: a trunk carries several wavelengths
    the way a fibre does.
    """

    vid: int | None
    name: str = ""
    delay_us: float = 0.0
    jitter_us: float = 0.0
    jitter_dist: str = "none"
    background_load: float = 0.0
    rate_bps: float | None = None
    pace_bps: float | None = None
    seed: int = 0

    def problems(self, where: str) -> list[str]:
        where = f"{where} channel {self.name or self.vid!r}"
        out = []
        if self.vid is not None and not (isinstance(self.vid, int) and 1 <= self.vid <= VID_MAX):
            out.append(f"{where}: vid must be an integer 1..{VID_MAX} or null (untagged), got {self.vid!r}")
        return out + _param_problems(where, self)


@dataclass(frozen=True)
class LinkSpec:
    """One emulated link: frames are forwarded iface_a <-> iface_b with this delay.

    ``delay_us`` is one-way and applies to each direction. ``jitter_us`` is the
    half-width for ``uniform`` and the standard deviation for ``normal`` and
    ``paretonormal``. ``background_load`` (in [0, 1)) and ``rate_bps`` switch
    on the conventional-router model (:class:`RouterQueue`) in both directions,
    each with its own random stream. ``pace_bps`` shapes each direction with a
    token bucket (:class:`TokenBucket`), as tbf would.

    With ``channels`` the link is a trunk: each frame is demultiplexed by its
    VLAN id to the channel of that id (untagged frames to the channel with
    ``vid`` None) and gets that channel's delay, jitter and pacing; a frame of
    no channel is dropped and counted. The link-level delay fields are then
    unused.
    """

    name: str
    iface_a: str
    iface_b: str
    delay_us: float = 0.0
    jitter_us: float = 0.0
    jitter_dist: str = "none"
    background_load: float = 0.0
    rate_bps: float | None = None
    seed: int = 0
    pace_bps: float | None = None
    channels: tuple[ChannelSpec, ...] = ()

    def channel_specs(self) -> tuple[ChannelSpec, ...]:
        """The channels frames are sorted into (one catch-all channel for a plain link)."""
        if self.channels:
            return self.channels
        return (ChannelSpec(ANY_VID, self.name, self.delay_us, self.jitter_us, self.jitter_dist,
                            self.background_load, self.rate_bps, self.pace_bps, self.seed),)

    def problems(self) -> list[str]:
        """Every problem with this spec, each a complete sentence naming the field."""
        out = []
        where = f"link {self.name!r}"
        for attr in ("iface_a", "iface_b"):
            value = getattr(self, attr)
            if not value or len(value) > 15 or "/" in value or " " in value:
                out.append(f"{where}: {attr} {value!r} is not a valid interface name (1-15 chars)")
        if self.iface_a == self.iface_b:
            out.append(f"{where}: iface_a and iface_b are both {self.iface_a!r}")
        out += _param_problems(where, self)
        seen: set = set()
        for channel in self.channels:
            if not isinstance(channel, ChannelSpec):
                out.append(f"{where}: channels must be ChannelSpec objects, got {type(channel).__name__}")
                continue
            out += channel.problems(where)
            if channel.vid in seen:
                out.append(f"{where}: two channels with vid {channel.vid!r}")
            seen.add(channel.vid)
        return out

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "link") -> "LinkSpec":
        """Build from a JSON object, rejecting unknown keys (a typo is an error)."""
        if not isinstance(data, dict):
            raise DelayEngineError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DelayEngineError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        channels = data.get("channels", ())
        if not isinstance(channels, (list, tuple)):
            raise DelayEngineError(f"{where}: channels must be a list of objects")
        ch_known = {f.name for f in dataclasses.fields(ChannelSpec)}
        built = []
        for i, ch in enumerate(channels):
            if not isinstance(ch, dict):
                raise DelayEngineError(f"{where}: channels[{i}]: expected an object")
            bad = sorted(set(ch) - ch_known)
            if bad:
                raise DelayEngineError(f"{where}: channels[{i}]: unknown field(s) {', '.join(bad)}; "
                                       f"known: {', '.join(sorted(ch_known))}")
            try:
                built.append(ChannelSpec(**ch))
            except TypeError as exc:
                raise DelayEngineError(f"{where}: channels[{i}]: {exc}") from None
        data["channels"] = tuple(built)
        try:
            return cls(**data)
        except TypeError as exc:
            raise DelayEngineError(f"{where}: {exc}") from None


def validate_links(links: Sequence[LinkSpec]) -> None:
    """Raise one :class:`DelayEngineError` listing every problem in ``links``."""
    problems: list[str] = []
    seen_names: set[str] = set()
    seen_ifaces: dict[str, str] = {}
    for link in links:
        problems.extend(link.problems())
        if link.name in seen_names:
            problems.append(f"link {link.name!r}: duplicate link name")
        seen_names.add(link.name)
        for iface in (link.iface_a, link.iface_b):
            if iface in seen_ifaces and seen_ifaces[iface] != link.name:
                problems.append(f"link {link.name!r}: interface {iface!r} already used by link {seen_ifaces[iface]!r}")
            seen_ifaces[iface] = link.name
    if not links:
        problems.append("no links given")
    if problems:
        raise DelayEngineError("; ".join(problems))


def load_links(path: str | os.PathLike) -> list[LinkSpec]:
    """Read a JSON list of link specs from ``path``.

    Raises:
        DelayEngineError: unreadable file, bad JSON, unknown fields or invalid values
            (all problems in one message).
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DelayEngineError(f"{path}: cannot read link config: {exc}") from None
    if not isinstance(raw, list):
        raise DelayEngineError(f"{path}: expected a JSON list of link objects")
    links = [LinkSpec.from_dict(item, where=f"{path}: [{i}]") for i, item in enumerate(raw)]
    validate_links(links)
    return links


# --------------------------------------------------------------------------- pure model

_NORMAL = statistics.NormalDist()
_PARETO_SHAPE = 3.0  # shape used by netem's paretonormal table generator (iproute2 netem/)


def _paretonormal_raw(u: float) -> float:
    """Unscaled pareto-normal value at probability ``u`` (0 < u < 1).

    netem documents ``paretonormal`` as "25 % pareto + 75 % normal". We combine
    the two *at the same probability level*: 0.25 x Pareto(shape 3) quantile +
    0.75 x standard-normal quantile. This gives a normal-like body with a heavy
    right tail (late frames), which is what the distribution is used for.
    """
    pareto = (1.0 - u) ** (-1.0 / _PARETO_SHAPE)
    return 0.25 * pareto + 0.75 * _NORMAL.inv_cdf(u)


def _paretonormal_moments(points: int = 20000) -> tuple[float, float]:
    # Midpoint rule over u; the (1-u)^(-1/3) tail is integrable so this converges.
    vals = [_paretonormal_raw((i + 0.5) / points) for i in range(points)]
    mean = math.fsum(vals) / points
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / points)
    return mean, sd


_PN_MOMENTS: tuple[float, float] | None = None


class JitterSampler:
    """Seeded jitter samples in microseconds, mean 0.

    * ``none``: always 0.
    * ``uniform``: uniform on [-j, +j] (netem's default for ``delay D J``).
    * ``normal``: Gaussian with standard deviation j.
    * ``paretonormal``: see :func:`_paretonormal_raw`; standardised here to mean 0
      and standard deviation j (netem's table is not re-standardised, so its
      spread differs slightly for the same j).
    """

    def __init__(self, dist: str, jitter_us: float, seed: int = 0):
        if dist not in JITTER_DISTS:
            raise DelayEngineError(f"unknown jitter distribution {dist!r}; use one of {', '.join(JITTER_DISTS)}")
        self.dist = dist if jitter_us > 0 else "none"
        self.jitter_us = float(jitter_us)
        self._rng = random.Random(seed)
        if self.dist == "paretonormal":
            global _PN_MOMENTS
            if _PN_MOMENTS is None:
                _PN_MOMENTS = _paretonormal_moments()
            self._pn_mean, self._pn_sd = _PN_MOMENTS

    def sample_us(self) -> float:
        """One jitter sample in microseconds."""
        j = self.jitter_us
        if self.dist == "none":
            return 0.0
        if self.dist == "uniform":
            return self._rng.uniform(-j, j)
        if self.dist == "normal":
            return self._rng.gauss(0.0, j)
        u = self._rng.random()
        while u <= 0.0:  # inv_cdf(0) is undefined
            u = self._rng.random()
        return (_paretonormal_raw(u) - self._pn_mean) / self._pn_sd * j


class RouterQueue:
    """Queueing delay of a conventional store-and-forward router port.

    Model: one FIFO server at ``rate_bps`` shared by real frames and *virtual*
    cross-traffic. The cross-traffic is a Poisson stream of fixed-size frames
    (``cross_frame_bytes``, default 1500 B) with mean arrival rate
    ``background_load * rate_bps / (8 * cross_frame_bytes)``, i.e. it keeps the
    server busy ``background_load`` of the time (an M/D/1 queue when real
    traffic is light, mean wait rho*S/(2(1-rho)) for service time S).

    The unfinished work W(t) (seconds of work in the queue) is advanced lazily
    when a real frame arrives: each virtual arrival adds S, W drains at rate 1.
    A real frame arriving at t waits W(t) and then takes its own service
    time len*8/rate; its work is added to W, so a burst of real frames also
    queues behind itself. When frames are far apart only the last ``horizon``
    of virtual traffic is simulated (from an empty queue): a queue relaxes in
    about S/(1-sqrt(rho))^2, and the horizon is many times that, so the state
    seen is statistically the stationary one while the cost per frame stays
    bounded (about lambda x min(gap, horizon) virtual arrivals).
    """

    def __init__(self, background_load: float, rate_bps: float, seed: int = 0, cross_frame_bytes: int = 1500):
        if not 0 <= background_load < 1:
            raise DelayEngineError(f"background_load must be in [0, 1), got {background_load!r}")
        if not rate_bps > 0:
            raise DelayEngineError(f"rate_bps must be > 0, got {rate_bps!r}")
        self.load = float(background_load)
        self.rate_bps = float(rate_bps)
        self._rng = random.Random(seed)
        self._s_cross_ns = cross_frame_bytes * 8 / self.rate_bps * 1e9
        self._lambda_per_ns = self.load / self._s_cross_ns if self.load > 0 else 0.0
        relax_ns = self._s_cross_ns / (1 - math.sqrt(self.load)) ** 2
        self.horizon_ns = 20 * relax_ns
        self._work_ns = 0.0  # unfinished work at time _t_ns
        self._t_ns: float | None = None
        self._next_cross_ns = math.inf

    def _restart(self, t_ns: float) -> None:
        self._t_ns = t_ns
        self._work_ns = 0.0
        self._next_cross_ns = t_ns + self._rng.expovariate(self._lambda_per_ns) if self._lambda_per_ns else math.inf

    def delay_ns(self, t_ns: float, frame_bytes: int) -> float:
        """Wait + own service time (ns) of a real frame of ``frame_bytes`` arriving at ``t_ns``."""
        if self._t_ns is None or t_ns - self._t_ns > self.horizon_ns:
            self._restart(t_ns - self.horizon_ns if self._lambda_per_ns else t_ns)
        elif t_ns < self._t_ns:
            t_ns = self._t_ns  # timestamps can step back by a few ns between sockets
        work, t_prev, nxt = self._work_ns, self._t_ns, self._next_cross_ns
        s_cross, lam, expo = self._s_cross_ns, self._lambda_per_ns, self._rng.expovariate
        while nxt <= t_ns:
            work = max(0.0, work - (nxt - t_prev)) + s_cross
            t_prev = nxt
            nxt += expo(lam)
        work = max(0.0, work - (t_ns - t_prev))
        own = frame_bytes * 8 / self.rate_bps * 1e9
        self._work_ns, self._t_ns, self._next_cross_ns = work + own, t_ns, nxt
        return work + own


class TokenBucket:
    """A token-bucket shaper (what tbf does), as departure times instead of a queue.

    The bucket holds at most ``burst_bytes`` of tokens and fills at
    ``rate_bps``; a frame of L bytes leaves once L tokens are there, in FIFO
    order. In virtual time: ``full_ns`` is when the bucket would be full again,
    so a frame may leave at ``full - (burst - L) / rate`` and then pushes
    ``full`` by L / rate. A frame that would wait longer than ``limit_us`` is
    dropped (tbf's ``latency``), which is what tells TCP the rate.

    >>> tb = TokenBucket(8e6, burst_bytes=2000)      # 1 byte per us
    >>> [tb.release_ns(0, 1000) for _ in range(3)]    # 2,000 B pass at once, then 1 us per byte
    [0, 0, 1000000]
    """

    def __init__(self, rate_bps: float, *, burst_bytes: int | None = None, limit_us: float = 20_000.0):
        if not rate_bps > 0:
            raise DelayEngineError(f"pacing rate must be > 0, got {rate_bps!r}")
        self.rate_bps = float(rate_bps)
        self.ns_per_byte = 8e9 / self.rate_bps
        # Like link_backends.rate_limit_commands: 0.5 ms of line rate, at least two full frames.
        self.burst_bytes = burst_bytes if burst_bytes is not None else max(2 * 1518, int(rate_bps * 0.0005 / 8))
        self.limit_ns = limit_us * 1000
        self.full_ns = 0.0
        self.drops = 0

    def release_ns(self, arrival_ns: int, frame_bytes: int) -> int | None:
        """When the frame may leave the shaper, or None if it is dropped (queue over the limit)."""
        full = self.full_ns
        release = full - (self.burst_bytes - frame_bytes) * self.ns_per_byte
        if release < arrival_ns:
            release = arrival_ns
        elif release - arrival_ns > self.limit_ns:
            self.drops += 1
            return None
        self.full_ns = (full if full > release else release) + frame_bytes * self.ns_per_byte
        return int(release)


class DepartureScheduler:
    """Departure times for one direction of one channel, never reordering.

    ``departure(arrival_ns, frame_bytes)`` =
    max(release + [router wait + service] + delay + jitter, previous departure),
    where release is the arrival, or the time the token bucket lets the frame
    go when the channel is paced; the per-frame delay is clamped at >= 0 (a
    jitter sample can be negative). Returns None when the shaper drops.
    """

    def __init__(self, delay_us: float, jitter: JitterSampler | None = None, router: RouterQueue | None = None,
                 pacer: TokenBucket | None = None):
        self.configured_ns = int(round(delay_us * 1000))
        self.delay_ns = self.configured_ns  # configured minus the calibrated advance
        self.jitter = jitter if jitter is not None and jitter.dist != "none" else None
        self.router = router
        self.pacer = pacer
        self.last_departure_ns = 0

    def set_advance(self, advance_us: float) -> None:
        """Hold frames ``advance_us`` less than configured (never below zero): the emulator's
        own transit time on this hop (switch and engine passes, measured by calibration),
        so the end-to-end delay is the configured one rather than configured + overhead.

        >>> s = DepartureScheduler(500.0); s.set_advance(80.0); s.departure(0)
        420000
        >>> s.set_advance(900.0); s.departure(10**6)
        1000000
        """
        if not (advance_us >= 0 and math.isfinite(advance_us)):
            raise DelayEngineError(f"advance must be a finite number >= 0 us, got {advance_us!r}")
        self.delay_ns = max(0, self.configured_ns - int(round(advance_us * 1000)))

    def departure(self, arrival_ns: int, frame_bytes: int = 0, transit: bool = False) -> int | None:
        """``transit``: ``arrival_ns`` is the frame's intended departure from the previous span
        (see the module docstring), so the calibrated advance, which is the emulator's
        cost of entering the optical layer, is not taken off a second time.

        >>> s = DepartureScheduler(500.0); s.set_advance(80.0); s.departure(0, transit=True)
        500000
        """
        if self.pacer is not None:
            arrival_ns = self.pacer.release_ns(arrival_ns, frame_bytes)
            if arrival_ns is None:
                return None
        extra = self.configured_ns if transit else self.delay_ns
        if self.jitter is not None:
            extra += int(self.jitter.sample_us() * 1000)
            if extra < 0:
                extra = 0
        if self.router is not None:
            extra += int(self.router.delay_ns(arrival_ns, frame_bytes))
        dep = arrival_ns + extra
        if dep < self.last_departure_ns:
            dep = self.last_departure_ns
        self.last_departure_ns = dep
        return dep


def _scheduler(channel: ChannelSpec, direction: int) -> DepartureScheduler:
    seed = channel.seed * 2 + direction
    jitter = JitterSampler(channel.jitter_dist, channel.jitter_us, seed=seed)
    router = None
    if channel.background_load > 0 and channel.rate_bps:
        router = RouterQueue(channel.background_load, channel.rate_bps, seed=seed + 1_000_003)
    pacer = TokenBucket(channel.pace_bps) if channel.pace_bps else None
    return DepartureScheduler(channel.delay_us, jitter, router, pacer)


def schedulers_for(link: LinkSpec) -> tuple[DepartureScheduler, DepartureScheduler]:
    """The (a->b, b->a) schedulers of a plain link (its catch-all channel), each with its own streams."""
    channel = link.channel_specs()[0]
    return _scheduler(channel, 0), _scheduler(channel, 1)


def frame_vid(frame: bytes) -> int | None:
    """The VLAN id of an Ethernet frame whose tag is in the bytes (802.1Q or 802.1ad), else None.

    >>> frame_vid(bytes(12) + b"\\x81\\x00\\x20\\x65" + b"\\x08\\x00")   # PCP 1, vid 101
    101
    >>> frame_vid(bytes(12) + b"\\x08\\x00") is None
    True
    """
    if len(frame) >= 16 and frame[12] in (0x81, 0x88) and frame[13] in (0x00, 0xA8):
        return ((frame[14] << 8) | frame[15]) & 0x0FFF
    return None


class TransitMemory:
    """Intended departures of recently sent frames, so a frame coming back on another link
    (in transit through a switch) can be scheduled from there (pure; no sockets).

    >>> m = TransitMemory(window_ns=1000)
    >>> m.remember(b"frame-1", 5000)
    >>> m.recall(b"frame-1", 5400)       # back 400 ns after its intended departure
    5000
    >>> m.recall(b"frame-1", 4000) is None  # before it was meant to leave: not this frame
    True
    >>> m.recall(b"frame-2", 5400) is None
    True
    >>> m.expire(7000); m.recall(b"frame-1", 5400) is None
    True
    """

    def __init__(self, window_ns: int = CARRY_WINDOW_NS, key_bytes: int = CARRY_KEY_BYTES):
        self.window_ns = window_ns
        self.key_bytes = key_bytes
        self._departures: dict[bytes, int] = {}
        self._order: collections.deque = collections.deque()
        self.carried = 0

    def key(self, frame: bytes) -> bytes:
        return frame[:self.key_bytes]

    def remember(self, key: bytes, departure_ns: int) -> None:
        self._departures[key] = departure_ns
        self._order.append((departure_ns, key))

    def recall(self, key: bytes, arrival_ns: int) -> int | None:
        """The intended departure of this frame from the previous link, if it left one
        at most ``window_ns`` before ``arrival_ns``; else None."""
        departed = self._departures.get(key)
        if departed is None or not departed <= arrival_ns < departed + self.window_ns:
            return None
        self.carried += 1
        return departed

    def expire(self, now_ns: int) -> None:
        horizon = now_ns - self.window_ns
        order, departures = self._order, self._departures
        while order and order[0][0] < horizon:
            departed, key = order.popleft()
            if departures.get(key) == departed:
                del departures[key]

    def __len__(self) -> int:
        return len(self._departures)


@dataclass
class ChannelStats:
    frames: int = 0
    bytes: int = 0
    paced_drops: int = 0
    late_frames: int = 0  # sent more than LATE_NS late: which wavelength bore the engine's shortfall

    def as_dict(self) -> dict:
        return {"frames": self.frames, "bytes": self.bytes, "paced_drops": self.paced_drops,
                "late_frames": self.late_frames}


class Lane:
    """The frames of one channel in one direction waiting to leave, in departure order.

    Departures within a lane never decrease (:class:`DepartureScheduler`), so a
    FIFO is enough; ``owner`` is whatever the engine needs to send them (its
    socket and stats), ``stats`` the channel's counters."""

    __slots__ = ("name", "frames", "owner", "stats")

    def __init__(self, name: str, stats: "ChannelStats | None" = None):
        self.name = name
        self.frames: collections.deque = collections.deque()
        self.owner = None
        self.stats = stats


class FairDepartures:
    """When each waiting frame leaves, across all lanes (pure; no sockets).

    On time, frames leave in departure order, as from one timer heap. When the
    engine runs behind (several lanes hold frames already due), lanes take turns
    one frame each instead: a wavelength with one frame due waits for at most one
    frame of every other busy lane, not for a whole backlog of bulk frames that
    fell due earlier on other spans. On real fibre, one wavelength's traffic never
    delays another's; this keeps the emulator's own shortfall where the load is.
    Order within a lane is kept.

    >>> fair = FairDepartures(); bulk, probe = Lane("bulk"), Lane("probe")
    >>> for t in range(4): fair.push(bulk, t, f"b{t}")
    >>> fair.push(probe, 3, "p")
    >>> [fair.pop_due(10)[2] for _ in range(5)]    # at t=10 all are due: turns, not departure order
    ['b0', 'p', 'b1', 'b2', 'b3']
    >>> fair.pop_due(10) is None, len(fair)
    (True, 0)
    """

    def __init__(self, turns: bool = True) -> None:
        self.turns = turns  # False: strict departure order even when behind (for comparison)
        self._timed: list = []                       # (head departure, tie-break, lane) of lanes not yet due
        self._ready: collections.deque = collections.deque()  # lanes whose head is due, in turn order
        self._tie = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, lane: Lane, departure_ns: int, frame) -> None:
        frames = lane.frames
        frames.append((departure_ns, frame))
        if len(frames) == 1:
            heapq.heappush(self._timed, (departure_ns, next(self._tie), lane))
        self._size += 1

    def next_departure_ns(self) -> int | None:
        """The earliest departure still waiting (in the past when the engine is behind), or None."""
        if self._ready:
            return self._ready[0].frames[0][0]
        if self._timed:
            return self._timed[0][0]
        return None

    def pop_due(self, now_ns: int) -> tuple[int, Lane, object] | None:
        """The next frame to send at ``now_ns`` as (departure, lane, frame), or None if none is due."""
        timed, ready = self._timed, self._ready
        if not self.turns:
            if timed and timed[0][0] <= now_ns:
                ready.append(heapq.heappop(timed)[2])
        else:
            while timed and timed[0][0] <= now_ns:
                ready.append(heapq.heappop(timed)[2])
        if not ready:
            return None
        lane = ready.popleft()
        frames = lane.frames
        departure_ns, frame = frames.popleft()
        if frames:
            head = frames[0][0]
            if head <= now_ns and self.turns:
                ready.append(lane)
            else:
                heapq.heappush(timed, (head, next(self._tie), lane))
        self._size -= 1
        return departure_ns, lane, frame


class DirectionQueues:
    """The channels of one direction of one link: which schedule a frame joins (pure; no sockets).

    ``admit(arrival_ns, vid, frame_bytes)`` returns the frame's departure time,
    or None when it is dropped: no channel for its VLAN id (``unknown_vid``) or
    its channel's shaper is full. Channels never share a schedule, so a burst
    on one VLAN cannot delay another.
    """

    def __init__(self, link: LinkSpec, direction: int):
        self.channels: dict[int | None, DepartureScheduler] = {}
        self.stats: dict[int | None, ChannelStats] = {}
        self.lanes: dict[int | None, Lane] = {}
        self.catch_all: DepartureScheduler | None = None
        arrow = ("a->b", "b->a")[direction]
        for channel in link.channel_specs():
            sched = _scheduler(channel, direction)
            self.stats[channel.vid] = ChannelStats()
            self.lanes[channel.vid] = Lane(f"{link.name}:{arrow}:{'all' if channel.vid == ANY_VID else channel.vid}",
                                           self.stats[channel.vid])
            if channel.vid == ANY_VID:
                self.catch_all = sched
            else:
                self.channels[channel.vid] = sched
        self.unknown_vid = 0

    def admit(self, arrival_ns: int, vid: int | None, frame_bytes: int, transit: bool = False) -> int | None:
        """The frame's departure time, or None when it is dropped."""
        admitted = self.admit_to_lane(arrival_ns, vid, frame_bytes, transit)
        return None if admitted is None else admitted[0]

    def admit_to_lane(self, arrival_ns: int, vid: int | None, frame_bytes: int,
                      transit: bool = False) -> tuple[int, Lane] | None:
        """The frame's departure time and the lane (its channel's queue) it waits in, or None."""
        sched = self.catch_all
        key = ANY_VID
        if sched is None:
            key = vid
            sched = self.channels.get(vid)
            if sched is None:
                self.unknown_vid += 1
                return None
        dep = sched.departure(arrival_ns, frame_bytes, transit)
        st = self.stats[key]
        if dep is None:
            st.paced_drops += 1
            return None
        st.frames += 1
        st.bytes += frame_bytes
        return dep, self.lanes[key]

    def set_pace(self, vid: int | None, pace_bps: float | None) -> None:
        """Change (or remove, with None) the shaper of one channel while running."""
        sched = self.catch_all if self.catch_all is not None else self.channels.get(vid)
        if sched is None:
            raise DelayEngineError(f"no channel with vid {vid!r}")
        sched.pacer = TokenBucket(pace_bps) if pace_bps else None

    def set_advance(self, advance_us: float) -> None:
        """Shorten every channel's hold by ``advance_us`` (see :meth:`DepartureScheduler.set_advance`)."""
        for sched in ([self.catch_all] if self.catch_all is not None else []) + list(self.channels.values()):
            sched.set_advance(advance_us)

    def stats_dict(self) -> dict:
        out = {("all" if vid == ANY_VID else "untagged" if vid is None else str(vid)): st.as_dict()
               for vid, st in self.stats.items()}
        return {"channels": out, "unknown_vid_drops": self.unknown_vid}
