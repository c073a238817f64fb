"""Userspace link-delay engine: one process that delays frames for many links.

Why it exists: the target machine's kernel has no ``sch_netem``, so ``tc netem``
cannot add delay. This engine forwards Ethernet frames between the two ends of
each emulated link (two interfaces in the root namespace, e.g. the root-side
ends of veth pairs whose other ends are OVS ports or host interfaces) and holds
each frame for the link's one-way delay plus a jitter sample.

Guarantees, per link and per direction:

* departure = max(arrival + delay + jitter [+ router queueing], previous
  departure in that direction): frames are never reordered. Jitter larger than
  the gap between frames therefore becomes extra delay, as with netem + rate.
* frames are not dropped below the configured rate; the only drops are frames
  larger than the receive buffer, send errors, an overflow of
  ``MAX_QUEUED_FRAMES`` per direction (memory guard) and, when the engine is
  overloaded, frames it could not send within ``OVERLOAD_NS`` of their
  departure; all counted in the stats.

When the engine runs behind (more frames due than it can send), the shortfall
stays with the wavelengths that cause it, as far as one process can do that:
every channel of every direction has its own queue (a :class:`Lane`), due
lanes take turns one frame each (:class:`FairDepartures`), and a ring that
fills up is drained in bigger batches so the backlog waits in the lanes rather
than in the kernel's ring, which all channels of a direction share. A probe on
one wavelength beside a flood on another then waits for about one flood frame,
not for the flood's backlog (``tests/integration/test_delay_engine.py``). And
the engine sleeps ``PAUSE_NS`` after every ``BUSY_SLICE_NS`` without sleeping:
the kernel stops a real-time task that never sleeps for 50 ms a second (RT
throttling), and whatever shares its CPU would get nothing until then.

Timing, and why it is done this way (measured on a 2-vCPU Debian 12 VM):

* arrival time is the kernel's receive timestamp (``SO_TIMESTAMPNS``,
  CLOCK_REALTIME) so Python's scheduling delay before ``recvmsg`` does not
  count; the whole engine therefore schedules on CLOCK_REALTIME nanoseconds
  (NTP slewing is harmless; a clock *step* would disturb frames in flight).
* ``epoll`` waits on the sockets and on a ``timerfd`` armed (absolute,
  nanosecond resolution) at ``spin_us`` before the next departure, then the
  loop busy-waits to the deadline. ``epoll.poll``'s own timeout is rounded up
  to whole milliseconds by Python, hence the timerfd. Timer slack is set to
  1 ns with ``prctl`` so the kernel does not batch our wake-ups (default 50 us).
* sockets are drained in batches with ``MSG_DONTWAIT``;
  ``PACKET_IGNORE_OUTGOING`` keeps the engine from reading its own sends.
* offloads are switched off on every interface (``prepare_interface``): with
  GSO/GRO a "frame" can be a 64 KB super-frame that cannot be re-sent.
* transit carry-over (on by default, ``--no-transit-carry`` turns it off): a
  frame that left one of this engine's links and comes back on another one
  within ``CARRY_WINDOW_NS`` (it crossed a switch in transit) is scheduled from
  the departure the engine *intended* for it on the previous link, not from
  its arrival here. The emulator's own time in transit (engine lateness, the
  switch's poll wake-up) is then absorbed by the next span's hold instead of
  adding up along a route; only the first span of a route pays it, and span
  calibration takes that out (``set_advance`` applies to first spans only).
  A frame is recognised by its first ``CARRY_KEY_BYTES`` bytes (headers,
  sequence numbers, checksums); a frame later than its intended arrival is
  sent at once, never before it arrived.

What the engine decides (specs, jitter, router queueing, pacing, departure
times, transit memory, lanes) is in :mod:`twin.emulation.delay_schedule`, pure
and unit-tested directly; this module feeds it frames and clock readings.

CLI::

    python -m twin.emulation.delay_engine --config links.json \
        [--ready-file PATH] [--stats-file PATH] [--spin-us 100]

``links.json`` is a JSON list of objects with the fields of :class:`LinkSpec`.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import dataclasses
import gc
import json
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twin.emulation.delay_schedule import (
    DelayEngineError,
    DirectionQueues,
    FairDepartures,
    LATE_NS,
    LinkSpec,
    TransitMemory,
    frame_vid,
    load_links,
    validate_links,
)
from twin.errors import TwinError

log = logging.getLogger(__name__)


# Linux constants not exported by the socket module.
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23
PACKET_QDISC_BYPASS = 20
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_USER = 0x1
TP_STATUS_COPY = 0x2
TP_STATUS_LOSING = 0x4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
# struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid, pad[4]
TPACKET2_HDR = struct.Struct("IIIHHIIHH4x")
RING_FRAMES = 4096
SO_TIMESTAMPNS = 35  # == SCM_TIMESTAMPNS
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
PR_SET_TIMERSLACK = 29
CLOCK_REALTIME = 0
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1

DEFAULT_SPIN_US = 100.0
RECV_BATCH = 64
RECV_BATCHES = 4  # a behind engine takes up to this many batches from a ring at once (see drain)
SEND_BATCH = 64
POLL_SPIN_NS = 15_000  # last stretch before a departure is a pure spin
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
MAX_QUEUED_FRAMES = 200_000
MAX_BLOCK_S = 0.05  # bound on a blocking wait so a stop request is seen quickly
OVERLOAD_NS = 100_000_000  # a frame the engine could not send within this of its departure is dropped
BUSY_SLICE_NS = 1_000_000  # the engine runs at most this long without sleeping ...
PAUSE_NS = 100_000  # ... then sleeps this long: 9 % of the CPU, more than RT throttling's 5 %
LATE_EPISODE_GAP_NS = 10_000_000  # late frames closer than this in one direction are one episode
LATE_EPISODES_MAX = 5000  # per direction; the oldest episodes go first


# --------------------------------------------------------------------------- Linux plumbing


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_timer_slack_ns(ns: int = 1) -> bool:
    """Ask the kernel not to defer our timer wake-ups (default slack is 50 us)."""
    try:
        return _libc().prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) == 0
    except OSError:
        return False


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd:
    """An absolute CLOCK_REALTIME timerfd (Python 3.11 has no os.timerfd_*)."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise DelayEngineError(f"timerfd_create failed: {os.strerror(err)}")
        self.fd = fd
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._settime = self._libc.timerfd_settime
        self.armed_ns = 0

    def arm(self, deadline_ns: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        if self._settime(self.fd, TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            raise DelayEngineError(f"timerfd_settime failed: {os.strerror(ctypes.get_errno())}")
        self.armed_ns = deadline_ns

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.armed_ns = 0

    def close(self) -> None:
        os.close(self.fd)


def _run_checked(args: list[str], what: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DelayEngineError(f"{what} failed ({' '.join(args)}): {proc.stderr.strip() or proc.stdout.strip()}")


def prepare_interface(ifname: str) -> None:
    """Make ``ifname`` fit for frame forwarding: offloads off, IPv6 off, link up.

    Offloads must be off: with TSO/GSO/GRO the engine would read 64 KB
    super-frames that cannot be sent as one frame. IPv6 is disabled on these
    root-side ends so the root namespace does not send its own router
    solicitations into the emulated link.

    Raises:
        DelayEngineError: ``ethtool`` or ``ip`` missing, or a command failed.
    """
    ethtool, ip = shutil.which("ethtool"), shutil.which("ip")
    if not ethtool:
        raise DelayEngineError("ethtool not found; install it (apt-get install ethtool): "
                               "offloads must be off on delay-engine interfaces")
    if not ip:
        raise DelayEngineError("ip (iproute2) not found; install iproute2")
    # One call for all features (hundreds of interfaces at start-up); if a driver refuses
    # one feature the call fails, and each is then set separately so the others still apply.
    features = ("tso", "gso", "gro", "tx", "rx")
    if subprocess.run([ethtool, "-K", ifname, *[x for f in features for x in (f, "off")]],
                      capture_output=True).returncode == 0:
        _enable(ifname, ip)
        return
    for feature in features:
        subprocess.run([ethtool, "-K", ifname, feature, "off"], capture_output=True)
    out = subprocess.run([ethtool, "-k", ifname], capture_output=True, text=True)
    if out.returncode != 0:
        raise DelayEngineError(f"ethtool -k {ifname} failed: {out.stderr.strip()}")
    still_on = [line.split(":")[0] for line in out.stdout.splitlines()
                if line.split(":")[0].strip() in ("tcp-segmentation-offload", "generic-segmentation-offload",
                                                  "generic-receive-offload")
                and line.split(":")[1].strip().startswith("on")]
    if still_on:
        raise DelayEngineError(f"{ifname}: could not switch off {', '.join(still_on)}")
    _enable(ifname, ip)


def _enable(ifname: str, ip: str) -> None:
    v6 = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if v6.exists():
        try:
            v6.write_text("1")
        except OSError:
            pass
    _run_checked([ip, "link", "set", "dev", ifname, "up"], f"bringing {ifname} up")


def _iface_mtu(ifname: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{ifname}/mtu").read_text())
    except (OSError, ValueError):
        return 1500


def open_packet_socket(ifname: str) -> socket.socket:
    """A raw AF_PACKET socket bound to ``ifname``: all frames, kernel RX timestamps,
    own sends ignored, promiscuous, large buffers.

    Raises:
        DelayEngineError: the interface does not exist or we lack CAP_NET_RAW.
    """
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise DelayEngineError("raw sockets need root (CAP_NET_RAW); run the delay engine as root") from None
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        # Our sends skip the egress qdisc: the delay is applied here, and a qdisc
        # on the engine's own interfaces would only add latency and CPU.
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        for opt, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER_BYTES)
        sock.bind((ifname, ETH_P_ALL))
        ifindex = socket.if_nametoindex(ifname)
        # struct packet_mreq { int ifindex; u16 type; u16 alen; u8 address[8]; }
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
    except OSError as exc:
        sock.close()
        raise DelayEngineError(f"{ifname}: cannot open packet socket: {exc}") from None
    # Receive with MSG_DONTWAIT; sends stay blocking so a full socket buffer is
    # back-pressure rather than a drop.
    return sock


def ring_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped on this packet socket since the last call (its
    counters reset on read): the receive ring was full because the engine fell behind."""
    try:
        _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    except OSError:
        return 0
    return drops


class RxRing:
    """A TPACKET_V2 receive ring on a packet socket.

    Why: Python's ``socket.recvmsg`` on AF_PACKET builds an address tuple for
    every frame, and doing so costs an extra ``ioctl(SIOCGIFNAME)`` syscall per
    frame (seen with strace); with the ring the kernel writes frames and their
    receive timestamps (the same software timestamp ``SO_TIMESTAMPNS`` gives)
    into shared memory and reading a frame needs no syscall at all.
    """

    def __init__(self, sock: socket.socket, mtu: int):
        frame_size = 1 << max(11, (mtu + 160 - 1).bit_length())  # header + padding + frame, power of two
        per_block = max(1, 65536 // frame_size)
        block_size = per_block * frame_size
        blocks = max(1, RING_FRAMES // per_block)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", block_size, blocks, frame_size,
                                                               per_block * blocks))
        self.frame_size = frame_size
        self.size = block_size * blocks  # frames are contiguous because block_size = n * frame_size
        self.mm = mmap.mmap(sock.fileno(), self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.offset = 0

    def close(self) -> None:
        self.mm.close()


# --------------------------------------------------------------------------- engine


@dataclass
class DirectionStats:
    frames: int = 0
    bytes: int = 0
    drops: int = 0
    late_sum_ns: int = 0
    late_max_ns: int = 0
    carried: int = 0  # frames scheduled from their intended departure on a previous span
    late_frames: int = 0  # sent more than LATE_NS after their departure time
    ring_drops: int = 0  # frames the kernel dropped because the receive ring was full (engine behind)
    overload_drops: int = 0  # frames not sent because they were over OVERLOAD_NS late (engine overloaded)
    # [first, last intended departure (ns), frames, max lateness (ns)] per run of late frames
    late_episodes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATE_EPISODES_MAX))

    def note_late(self, departure_ns: int, late_ns: int) -> None:
        self.late_frames += 1
        episodes = self.late_episodes
        if episodes and departure_ns - episodes[-1][1] <= LATE_EPISODE_GAP_NS:
            episode = episodes[-1]
            episode[1] = max(episode[1], departure_ns)
            episode[2] += 1
            episode[3] = max(episode[3], late_ns)
        else:
            episodes.append([departure_ns, departure_ns, 1, late_ns])

    def as_dict(self) -> dict:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "drops": self.drops,
            "ring_drops": self.ring_drops,
            "overload_drops": self.overload_drops,
            "carried": self.carried,
            "mean_lateness_us": round(self.late_sum_ns / self.frames / 1000, 3) if self.frames else 0.0,
            "max_lateness_us": round(self.late_max_ns / 1000, 3),
            "late_frames": self.late_frames,
            # [first, last intended departure (Unix s), frames, max lateness (us)], the last LATE_EPISODES_MAX
            "late_episodes": [[round(first / 1e9, 6), round(last / 1e9, 6), n, round(worst / 1000, 1)]
                              for first, last, n, worst in self.late_episodes],
        }


@dataclass
class _Direction:
    name: str
    in_sock: socket.socket
    out_sock: socket.socket
    queues: DirectionQueues
    stats: DirectionStats = field(default_factory=DirectionStats)
    queued: int = 0
    ring: RxRing | None = None
    trunk: bool = False   # frames are sorted by VLAN id


class DelayEngine:
    """The forwarding loop for a set of links (see the module docstring)."""

    def __init__(self, links: Sequence[LinkSpec], *, spin_us: float = DEFAULT_SPIN_US, prepare: bool = True,
                 transit_carry: bool = True, turns: bool = True):
        validate_links(links)
        self.links = list(links)
        self.spin_ns = int(spin_us * 1000)
        self.turns = turns
        self.transit = TransitMemory() if transit_carry else None
        self._socks: dict[str, socket.socket] = {}
        self._dirs: list[_Direction] = []
        self._by_fd: dict[int, _Direction] = {}
        self._timer: TimerFd | None = None
        self._epoll: select.epoll | None = None
        self._bufsize = 2048
        self._rings: dict[str, RxRing] = {}
        try:
            for link in self.links:
                for iface in (link.iface_a, link.iface_b):
                    if prepare:
                        prepare_interface(iface)
                    self._socks[iface] = open_packet_socket(iface)
                    self._rings[iface] = RxRing(self._socks[iface], _iface_mtu(iface))
                sa, sb = self._socks[link.iface_a], self._socks[link.iface_b]
                ra, rb = self._rings[link.iface_a], self._rings[link.iface_b]
                trunk = bool(link.channels)
                for d in (_Direction(f"{link.name}:a->b", sa, sb, DirectionQueues(link, 0), ring=ra, trunk=trunk),
                          _Direction(f"{link.name}:b->a", sb, sa, DirectionQueues(link, 1), ring=rb, trunk=trunk)):
                    self._dirs.append(d)
                    self._by_fd[d.in_sock.fileno()] = d
                    for lane in d.queues.lanes.values():
                        lane.owner = d
            self._timer = TimerFd()
            self._epoll = select.epoll()
            for fd in self._by_fd:
                self._epoll.register(fd, select.EPOLLIN)
            self._epoll.register(self._timer.fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    def stats(self) -> dict:
        """Per link, per direction: frames, bytes, drops, mean/max send lateness (us), and per channel
        the frames admitted and those the shaper dropped."""
        out: dict[str, dict] = {}
        for d in self._dirs:
            d.stats.ring_drops += ring_drops(d.in_sock)
            link, direction = d.name.rsplit(":", 1)
            out.setdefault(link, {})[direction] = {**d.stats.as_dict(), **d.queues.stats_dict()}
        return out

    def transit_stats(self) -> dict:
        """Whether transit carry-over is on, and how many frames it scheduled from a previous span."""
        return {"transit_carry": self.transit is not None,
                "carried_frames": self.transit.carried if self.transit is not None else 0}

    def set_pace(self, link_name: str, vid: int | None, pace_bps: float | None) -> None:
        """Re-shape one channel of a link (both directions) while running.

        Raises:
            DelayEngineError: no such link or channel.
        """
        dirs = [d for d in self._dirs if d.name.rsplit(":", 1)[0] == link_name]
        if not dirs:
            raise DelayEngineError(f"no link named {link_name!r}")
        for d in dirs:
            d.queues.set_pace(vid, pace_bps)

    def set_advance(self, link_name: str, direction: str, advance_us: float) -> None:
        """Shorten the holds of one direction (``a->b`` or ``b->a``) of a link by ``advance_us``.

        Raises:
            DelayEngineError: no such link or direction, or a bad value.
        """
        dirs = [d for d in self._dirs if d.name == f"{link_name}:{direction}"]
        if not dirs:
            raise DelayEngineError(f"no link direction {link_name}:{direction}")
        dirs[0].queues.set_advance(advance_us)

    def run(self, stop: threading.Event, control: Callable[["DelayEngine"], None] | None = None,
            control_due: threading.Event | None = None) -> None:
        """Forward frames until ``stop`` is set. The hot loop; locals are bound for speed.

        When ``control_due`` is set, ``control(self)`` is called between frames (then the
        event is cleared): the way a signal handler changes the engine safely.
        """
        set_timer_slack_ns(1)
        waiting = FairDepartures(self.turns)
        push, pop_due, next_departure = waiting.push, waiting.pop_due, waiting.next_departure_ns
        clock = time.time_ns
        hdr_unpack = TPACKET2_HDR.unpack_from
        status_unpack = struct.Struct("I").unpack_from
        release = bytes(4)  # TP_STATUS_KERNEL
        by_fd = self._by_fd
        timer = self._timer
        timer_fd = timer.fd
        epoll_poll = self._epoll.poll
        spin_ns = self.spin_ns
        stop_is_set = stop.is_set
        max_queued = MAX_QUEUED_FRAMES
        overload_ns = OVERLOAD_NS
        transit = self.transit
        carry_bytes = transit.key_bytes if transit is not None else 0
        recall = transit.recall if transit is not None else None
        remember = transit.remember if transit is not None else None

        def drain(d: _Direction) -> None:
            ring = d.ring
            mm, off, fsize, rsize = ring.mm, ring.offset, ring.frame_size, ring.size
            admit = d.queues.admit_to_lane
            trunk = d.trunk
            filling = RECV_BATCH * fsize  # another batch waits behind this one
            n = 0
            while status_unpack(mm, off)[0] & TP_STATUS_USER:
                if n % RECV_BATCH == 0 and n:
                    # Batch done. Go on (up to RECV_BATCHES) while another whole batch waits, i.e.
                    # the engine is behind: better the backlog waits in the lanes, where each
                    # wavelength takes its turn and a hopeless one is shed, than in the ring,
                    # where a flood on one wavelength delays and drops every other's frames.
                    ahead = off + filling
                    if ahead >= rsize:
                        ahead -= rsize
                    if n == RECV_BATCHES * RECV_BATCH or not status_unpack(mm, ahead)[0] & TP_STATUS_USER:
                        break
                n += 1
                status, length, snaplen, mac, _net, sec, nsec, tci, tpid = hdr_unpack(mm, off)
                start = off + mac
                data = mm[start:start + snaplen]
                mm[off:off + 4] = release  # hand the slot back to the kernel
                off += fsize
                if off == rsize:
                    off = 0
                if snaplen < length or d.queued >= max_queued:
                    d.stats.drops += 1
                    continue
                vid = None
                if status & TP_STATUS_VLAN_VALID:
                    # The kernel took the 802.1Q tag out of the frame (into the ring header);
                    # put it back, so the far switch sees the wavelength's VLAN.
                    tag = struct.pack("!HH", tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
                    data = data[:12] + tag + data[12:]
                    vid = tci & 0x0FFF
                elif trunk:
                    vid = frame_vid(data)
                arrival = sec * 1_000_000_000 + nsec
                carried = False
                if recall is not None:
                    intended = recall(data[:carry_bytes], arrival)
                    if intended is not None:
                        arrival, carried = intended, True
                        d.stats.carried += 1
                admitted = admit(arrival, vid, len(data), carried)
                if admitted is None:
                    continue  # no channel for this VLAN, or its shaper is full (counted per channel)
                d.queued += 1
                push(admitted[1], admitted[0], data)
            ring.offset = off

        timeout = 0.0
        control_is_set = control_due.is_set if control_due is not None else (lambda: False)
        busy_since = clock()  # start of the current stretch without sleep (0: just slept)
        pause, pause_s = time.sleep, PAUSE_NS / 1e9
        while not stop_is_set():
            if control_is_set():
                control_due.clear()
                control(self)
            if timeout:
                asleep = clock()
                events = epoll_poll(timeout)
                if clock() - asleep > POLL_SPIN_NS:
                    busy_since = 0
            else:
                events = epoll_poll(0.0)
            for fd, _ev in events:
                d = by_fd.get(fd)
                if d is not None:
                    drain(d)
                elif fd == timer_fd:
                    timer.clear()
            timeout = 0.0
            first = next_departure()
            if first is None:
                if transit is not None:
                    transit.expire(clock())
                timeout = MAX_BLOCK_S
                continue
            now = clock()
            wait = first - now
            if wait > spin_ns:
                # Far from the next departure: sleep on the timer (and the sockets).
                # Re-arm only if the armed wake-up is missing or too late; an early
                # wake-up costs one loop, a timerfd_settime per frame costs more.
                wake = first - spin_ns
                armed = timer.armed_ns
                if armed == 0 or armed > wake or armed <= now:
                    timer.arm(wake)
                timeout = MAX_BLOCK_S
                continue
            if wait > POLL_SPIN_NS:
                # Near: keep polling the sockets (epoll with timeout 0) while we wait,
                # so the wait does useful work under load.
                continue
            while clock() < first:
                pass
            # Send everything due now: in departure order, or lane by lane when behind.
            sent = 0
            while sent < SEND_BATCH:
                now = clock()
                due = pop_due(now)
                if due is None:
                    break
                dep, lane, data = due
                d = lane.owner
                d.queued -= 1
                if now - dep > overload_ns:
                    d.stats.overload_drops += 1  # shed: the engine cannot keep up with this lane
                    continue
                try:
                    d.out_sock.send(data)
                except OSError:
                    d.stats.drops += 1
                    continue
                if remember is not None:
                    remember(data[:carry_bytes], dep)
                late = now - dep
                st = d.stats
                st.frames += 1
                st.bytes += len(data)
                st.late_sum_ns += late
                if late > st.late_max_ns:
                    st.late_max_ns = late
                if late > LATE_NS:
                    st.note_late(dep, late)
                    lane.stats.late_frames += 1
                sent += 1
            if transit is not None:
                transit.expire(now)
            if not busy_since:
                busy_since = now
            elif now - busy_since > BUSY_SLICE_NS:
                # Busy for a whole slice (behind, or frames closer than the spin): sleep a moment
                # (see the module docstring). Probes beside TCP over the engine's capacity:
                # p99 31-42 ms over the model without the pause, 1.4-6.4 ms with it.
                pause(pause_s)
                busy_since = clock()


def tune_process(*, rt_priority: int = 0, cpus: Collection[int] | None = None, freeze_gc: bool = True) -> list[str]:
    """Reduce scheduling outliers of the engine process; returns what could not be applied.

    * ``rt_priority`` > 0: SCHED_FIFO at that priority, so other tasks on the CPU
      cannot delay a departure by a whole time slice (ms). The engine sleeps
      between deadlines and spins at most ``spin_us``, and the kernel's RT
      throttling still leaves 5 % of each CPU to others.
    * ``cpus``: run only on these CPUs (TwinSession keeps the engine off the core
      that OVS's PMD thread polls: sharing it, each frame the PMD thread handed
      over woke the engine, which preempted the PMD thread, and frames waited at
      both ends of a route for tens to hundreds of us).
    * one CPU, always (the highest of ``cpus``, or of those the process may use):
      a veth hands each frame sent into it to the receive queue of the CPU that
      sent it, so an engine that moved between two sends could have them switched
      out of order. Seen: 3 of 400 probes overtaken with two SCHED_FIFO engines
      free to move between 2 CPUs.
    * ``freeze_gc``: the hot loop allocates only acyclic objects (bytes, tuples);
      a cyclic-GC pass over the heap every few thousand frames costs up to
      milliseconds, so collection is disabled after setup.
    """
    failed = []
    # ``cpus`` as given, not within the inherited affinity: the twin's own processes (the
    # engine's parent) keep off the CPU the engine is meant for.
    one = max(cpus) if cpus else max(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, {one})
    except OSError as exc:
        failed.append(f"cpus {sorted(cpus) if cpus else 'any'}: {exc}")
    if rt_priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
        except OSError as exc:
            failed.append(f"SCHED_FIFO {rt_priority}: {exc}")
    if freeze_gc:
        gc.collect()
        gc.freeze()
        gc.disable()
    return failed


def apply_control_file(engine: "DelayEngine", path: str | os.PathLike) -> None:
    """Apply a control request ``{"seq": N, "pace": [{"link", "vid", "pace_bps"}, ...],
    "advance": [{"link", "direction", "advance_us"}, ...]}`` and acknowledge it in
    ``<path>.ack`` as ``{"seq": N, "error": null | "..."}``."""
    path = Path(path)
    seq, error = None, None
    try:
        request = json.loads(path.read_text())
        seq = request.get("seq")
        for item in request.get("pace", []):
            engine.set_pace(item["link"], item.get("vid"), item.get("pace_bps"))
        for item in request.get("advance", []):
            engine.set_advance(item["link"], item["direction"], float(item["advance_us"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, TwinError) as exc:
        error = f"{path}: {exc}"
    tmp = Path(f"{path}.ack.tmp")
    tmp.write_text(json.dumps({"seq": seq, "error": error}))
    tmp.replace(f"{path}.ack")


def run_engine(links: Sequence[LinkSpec], stop: threading.Event, *, spin_us: float = DEFAULT_SPIN_US,
               prepare: bool = True, on_ready: Callable[[], None] | None = None,
               control_file: str | os.PathLike | None = None,
               control_due: threading.Event | None = None, transit_carry: bool = True, turns: bool = True) -> dict:
    """Run the engine in this thread until ``stop`` is set; return ``{"links": per-link stats,
    "transit": carry-over stats}``.

    ``on_ready`` is called once every socket is bound. Process-wide tuning
    (priority, GC) is left to the caller: see :func:`tune_process`. Each time
    ``control_due`` is set, ``control_file`` is applied (:func:`apply_control_file`).

    Raises:
        DelayEngineError: invalid links, missing tools, missing interfaces or privileges.
    """
    engine = DelayEngine(links, spin_us=spin_us, prepare=prepare, transit_carry=transit_carry, turns=turns)
    try:
        if on_ready is not None:
            on_ready()
        control = (lambda eng: apply_control_file(eng, control_file)) if control_file else None
        engine.run(stop, control, control_due if control_file else None)
        return {"links": engine.stats(), "transit": engine.transit_stats(), "turns": engine.turns}
    finally:
        engine.close()


# --------------------------------------------------------------------------- subprocess wrapper


class DelayEngineProcess:
    """Run the engine as a child process (argument list, no shell) for the duration of a ``with``.

    Example::

        with DelayEngineProcess(links, workdir=tmp) as eng:
            ...            # frames are being delayed
        eng.stats          # per-link stats written by the engine on SIGTERM
    """

    def __init__(self, links: Sequence[LinkSpec], *, workdir: str | os.PathLike, ready_timeout_s: float = 10.0,
                 spin_us: float = DEFAULT_SPIN_US, python: str = sys.executable, prepare: bool = True,
                 rt_priority: int = 0, cpus: Collection[int] | None = None, exec_prefix: Sequence[str] = (),
                 transit_carry: bool = True, turns: bool = True):
        validate_links(links)
        # e.g. ["mnexec", "-a", PID]: run inside a Mininet node's namespaces (mnexec execs, so the PID stays ours)
        self.exec_prefix = list(exec_prefix)
        self.links = list(links)
        self.workdir = Path(workdir)
        self.ready_timeout_s = ready_timeout_s
        self.spin_us = spin_us
        self.python = python
        self.prepare = prepare
        self.rt_priority = rt_priority
        self.cpus = sorted(cpus) if cpus else None
        self.transit_carry = transit_carry
        self.turns = turns
        self.proc: subprocess.Popen | None = None
        self.stats: dict | None = None
        self.config_path = self.workdir / "delay-engine-links.json"
        self.ready_path = self.workdir / "delay-engine.ready"
        self.stats_path = self.workdir / "delay-engine-stats.json"
        self.stderr_path = self.workdir / "delay-engine.stderr"
        self.control_path = self.workdir / "delay-engine-control.json"
        self._control_seq = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text()[-2000:].strip()
        except OSError:
            return ""

    def start(self) -> "DelayEngineProcess":
        """Start the engine and wait until its sockets are bound.

        Raises:
            DelayEngineError: the engine exited or was not ready in time; the message
                carries the engine's stderr.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        for p in (self.ready_path, self.stats_path):
            p.unlink(missing_ok=True)
        self.config_path.write_text(json.dumps([dataclasses.asdict(link) for link in self.links], indent=1))
        args = [*self.exec_prefix, self.python, "-m", "twin.emulation.delay_engine", "--config", str(self.config_path),
                "--ready-file", str(self.ready_path), "--stats-file", str(self.stats_path),
                "--control-file", str(self.control_path), "--spin-us", str(self.spin_us)]
        if not self.prepare:
            args.append("--no-prepare")
        if not self.transit_carry:
            args.append("--no-transit-carry")
        if not self.turns:
            args.append("--strict-order")
        if self.rt_priority:
            args += ["--rt-priority", str(self.rt_priority)]
        if self.cpus:
            args += ["--cpus", ",".join(str(c) for c in self.cpus)]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise DelayEngineError(f"delay engine exited with status {self.proc.returncode} before it was "
                                       f"ready: {self._stderr_tail() or '(no stderr)'}")
            if time.monotonic() > deadline:
                self.stop()
                raise DelayEngineError(f"delay engine not ready after {self.ready_timeout_s:.0f} s: "
                                       f"{self._stderr_tail() or '(no stderr)'}")
            time.sleep(0.01)
        return self

    def set_pace(self, changes: Sequence[tuple[str, int | None, float | None]], timeout_s: float = 5.0) -> None:
        """Re-shape channels of the running engine: (link name, vid, pace_bps or None) each.

        Raises:
            DelayEngineError: the engine is not running, refused a change, or did not answer.
        """
        self._control({"pace": [{"link": link, "vid": vid, "pace_bps": bps} for link, vid, bps in changes]},
                      timeout_s)

    def set_advance(self, changes: Sequence[tuple[str, str, float]], timeout_s: float = 5.0) -> None:
        """Shorten holds of the running engine: (link name, ``a->b`` or ``b->a``, advance us) each.

        Raises:
            DelayEngineError: the engine is not running, refused a change, or did not answer.
        """
        self._control({"advance": [{"link": link, "direction": direction, "advance_us": us}
                                   for link, direction, us in changes]}, timeout_s)

    def _control(self, request: dict, timeout_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise DelayEngineError("the delay engine is not running")
        self._control_seq += 1
        seq = self._control_seq
        tmp = Path(f"{self.control_path}.tmp")
        tmp.write_text(json.dumps({"seq": seq, **request}))
        tmp.replace(self.control_path)
        ack = Path(f"{self.control_path}.ack")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                answer = json.loads(ack.read_text())
            except (OSError, ValueError):
                answer = None
            if answer and answer.get("seq") == seq:
                if answer.get("error"):
                    raise DelayEngineError(f"delay engine refused the change: {answer['error']}")
                return
            time.sleep(0.005)
        raise DelayEngineError(f"delay engine did not apply the change within {timeout_s:g} s")

    def stop(self, timeout_s: float = 5.0) -> dict | None:
        """SIGTERM the engine by PID, wait, and load its stats (None if it wrote none)."""
        proc = self.proc
        if proc is None:
            return self.stats
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            self.stats = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            self.stats = None
        return self.stats

    def __enter__(self) -> "DelayEngineProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


def _cpu_list(text: str) -> set[int]:
    try:
        cpus = {int(c) for c in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of CPU numbers, e.g. 0,2")
    if any(c < 0 for c in cpus):
        raise argparse.ArgumentTypeError(f"{text!r}: CPU numbers are >= 0")
    return cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.emulation.delay_engine",
                                     description="Userspace per-link delay/jitter engine (needs root).")
    parser.add_argument("--config", required=True, help="JSON list of link specs (fields of LinkSpec)")
    parser.add_argument("--ready-file", help="written once every socket is bound")
    parser.add_argument("--stats-file", help="per-link stats written here on exit (JSON)")
    parser.add_argument("--control-file", help="on SIGUSR1, apply this JSON request (see apply_control_file)")
    parser.add_argument("--spin-us", type=float, default=DEFAULT_SPIN_US,
                        help="busy-wait this long before each departure (default %(default)s)")
    parser.add_argument("--no-prepare", action="store_true", help="do not touch offloads/IPv6/link state")
    parser.add_argument("--rt-priority", type=int, default=0, help="SCHED_FIFO priority (0 = normal scheduling)")
    parser.add_argument("--cpus", type=_cpu_list, help="run the engine only on these CPUs (comma-separated)")
    parser.add_argument("--no-transit-carry", action="store_true",
                        help="schedule every frame from its arrival, also in transit (see the module docstring)")
    parser.add_argument("--strict-order", action="store_true",
                        help="when behind, send in departure order instead of lane by lane (see FairDepartures)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    control_due = threading.Event()
    signal.signal(signal.SIGUSR1, lambda _s, _f: control_due.set())

    def on_ready() -> None:
        if args.ready_file:
            tmp = Path(args.ready_file + ".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(args.ready_file)  # atomic: a reader never sees a half file

    try:
        links = load_links(args.config)
        for problem in tune_process(rt_priority=args.rt_priority, cpus=args.cpus):
            log.warning("tuning not applied: %s", problem)
        stats = run_engine(links, stop, spin_us=args.spin_us, prepare=not args.no_prepare, on_ready=on_ready,
                           control_file=args.control_file, control_due=control_due,
                           transit_carry=not args.no_transit_carry, turns=not args.strict_order)
    except TwinError as exc:
        if args.debug:
            raise
        print(f"delay_engine: error: {exc}", file=sys.stderr)
        return 2
    if args.stats_file:
        tmp = Path(args.stats_file + ".tmp")
        tmp.write_text(json.dumps(stats, indent=1))
        tmp.replace(args.stats_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
