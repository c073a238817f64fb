"""STAMP-like delay probes (in the spirit of RFC 8762 / TWAMP-light, not wire-compatible).

A *sender* emits timestamped, sequence-numbered UDP probes at a fixed rate; a
*reflector* echoes each one, adding its own receive and send timestamps and its
own receive sequence number. Sender and reflector run in different network
namespaces of the same machine, so they share CLOCK_REALTIME (time namespaces
only virtualise the monotonic/boot clocks) and one-way delays are meaningful.

Timestamps (all CLOCK_REALTIME ns), as close to the wire as the kernel gives them:

* t1: sender, the kernel's software transmit timestamp (``SO_TIMESTAMPING``,
  taken as the interface sends the frame), else the time just before ``sendto``;
* t2: reflector, kernel receive timestamp (``SO_TIMESTAMPNS``);
* t3: reflector, its kernel transmit timestamp, else the time just before ``sendto``;
* t4: sender, kernel receive timestamp.

Why kernel transmit timestamps: a userspace timestamp is taken before the
system call, and a process preempted in between (on a 2-core machine running
the emulator, it is) reports the wait as network delay: 6-8 us at the median
and 20-60 us at p99 here. The sender reads its own transmit timestamps from
the socket's error queue. The reflector learns its transmit timestamp only
after sending, so it reports it in its next reply to the same sender (a
follow-up: ``fu_seq``, ``fu_t3``); the last reply of a run keeps the userspace t3.

forward = t2 - t1, backward = t4 - t3, rtt = (t4 - t1) - (t3 - t2).

Wire format (network byte order, ``PROBE_STRUCT``): magic ``b"TWPR"``, version,
flags, 2 pad bytes, sender seq (u32), reflector seq (u32, 0 from the sender),
t1, t2, t3 (u64 each), fu_seq (u32: the sender seq of the previous reply to
this sender, ``NO_FOLLOW_UP`` if none), 4 pad bytes, fu_t3 (u64: that reply's
kernel transmit timestamp), then zero padding up to ``--size`` bytes of UDP payload.

CLI::

    python -m twin.emulation.probe reflect --bind IP --port P
    python -m twin.emulation.probe send --dst IP --port P --rate 1000 --count N \
        [--size B] [--json] [--samples]
    python -m twin.emulation.probe flood --iface IF [--vid N] --pps R --seconds S   # load for the emulator

JSON output of ``send --json`` (schema ``twin.probe/1``, stable)::

    {"schema": "twin.probe/1",
     "summary": {"sent", "received", "lost", "loss_ratio", "duplicates",
                 "reordered", "reordered_forward", "reordered_backward",
                 "rate_pps_requested", "rate_pps_achieved", "size_bytes",
                 "forward_us" | "backward_us" | "rtt_us":
                     {"n", "min", "median", "mean", "p99", "max", "stdev", "rfc3550_jitter", "iqr"}},
     "samples": [[seq, reflector_seq, forward_us, backward_us, rtt_us], ...]   # with --samples

Definitions: percentiles interpolate linearly between order statistics
(numpy's default, "type 7"); ``stdev`` is the population standard deviation;
``iqr`` the interquartile range (p75 - p25), the spread a few probes held for
milliseconds by the host cannot swing (added later: absent from older output);
``rfc3550_jitter`` is RFC 3550's J += (|D| - J)/16 over consecutive packets in
arrival order (forward: order the reflector received them; backward and rtt:
order the sender received the replies). ``reordered`` counts replies arriving
at the sender with a sequence number below the highest seen so far (RFC 4737's
"reordered" notion); ``reordered_forward`` does the same at the reflector
(using its receive sequence), ``reordered_backward`` does it for the return
path only. Duplicates are replies whose sequence number was already seen; they
are excluded from the delay statistics.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import math
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twin.errors import TwinError

SCHEMA = "twin.probe/1"
MAGIC = b"TWPR"
VERSION = 2
PROBE_STRUCT = struct.Struct("!4sBBHIIQQQI4xQ")
MIN_SIZE = PROBE_STRUCT.size  # 56 bytes of UDP payload
NO_FOLLOW_UP = 0xFFFFFFFF
#: Flag of warm-up probes: echoed like any probe, left out of every statistic.
WARMUP_FLAG = 0x01
WARMUP_SEQ0 = 0x8000_0000  # warm-up sequence numbers, apart from the measured ones
SO_TIMESTAMPNS = 35
SO_TIMESTAMPING = 37  # == SCM_TIMESTAMPING
# SOF_TIMESTAMPING_TX_SOFTWARE | SOFTWARE | OPT_ID | OPT_TSONLY: a software transmit
# timestamp per datagram, numbered in send order, without the payload looped back.
TX_TIMESTAMP_FLAGS = (1 << 1) | (1 << 4) | (1 << 7) | (1 << 11)
IP_RECVERR, IPV6_RECVERR = 11, 25
SOCK_EXTENDED_ERR = struct.Struct("IBBBBII")  # errno, origin, type, code, pad, info, data (= the OPT_ID number)
TX_TS_MAX_AFTER_NS = 5_000_000  # a kernel transmit stamp later than this after the userspace one is not ours
PR_SET_TIMERSLACK = 29
SPIN_NS = 150_000  # busy-wait the last 150 us before each send (select wakes late otherwise)
REFLECTOR_READY_TIMEOUT_S = 10.0  # Python's start-up alone can take seconds on a busy machine


class ProbeError(TwinError):
    """The probe tool could not run (bad arguments, socket errors)."""


# --------------------------------------------------------------------------- pure statistics


@dataclass(frozen=True)
class Sample:
    """One reply as the sender saw it (ns timestamps, see the module docstring)."""

    seq: int
    reflector_seq: int
    t1: int
    t2: int
    t3: int
    t4: int

    @property
    def forward_ns(self) -> int:
        return self.t2 - self.t1

    @property
    def backward_ns(self) -> int:
        return self.t4 - self.t3

    @property
    def rtt_ns(self) -> int:
        return (self.t4 - self.t1) - (self.t3 - self.t2)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy "linear"/type 7), ``q`` in [0, 100].

    >>> percentile([1, 2, 3, 4], 50)
    2.5
    >>> percentile([10, 20, 30], 100)
    30.0

    Raises:
        ValueError: empty input or q outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def rfc3550_jitter(transits: Sequence[float]) -> float:
    """RFC 3550 section 6.4.1 interarrival jitter over transit times in arrival order.

    J(i) = J(i-1) + (|D(i-1, i)| - J(i-1)) / 16 with D the difference of
    consecutive transit times; J(0) = 0.

    >>> rfc3550_jitter([10, 26])
    1.0
    """
    j = 0.0
    for prev, cur in zip(transits, transits[1:]):
        j += (abs(cur - prev) - j) / 16
    return j


def count_reordered(seqs: Iterable[int]) -> int:
    """Packets whose sequence number is below the highest already seen (RFC 4737 style).

    >>> count_reordered([1, 2, 4, 3, 5])
    1
    """
    n, highest = 0, None
    for s in seqs:
        if highest is not None and s < highest:
            n += 1
        else:
            highest = s
    return n


@dataclass(frozen=True)
class DelayStats:
    """Summary of one delay series, microseconds."""

    n: int
    min: float
    median: float
    mean: float
    p99: float
    max: float
    stdev: float
    rfc3550_jitter: float
    iqr: float = float("nan")  # p75 - p25: robust to a few probes a stalled host held (absent in older JSON)

    @classmethod
    def of(cls, values_us: Sequence[float]) -> "DelayStats":
        """Statistics of ``values_us`` given in arrival order (the order matters for RFC 3550 only)."""
        if not values_us:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan, nan, nan)
        n = len(values_us)
        mean = math.fsum(values_us) / n
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values_us) / n)
        return cls(n, float(min(values_us)), percentile(values_us, 50), mean, percentile(values_us, 99),
                   float(max(values_us)), sd, rfc3550_jitter(values_us),
                   percentile(values_us, 75) - percentile(values_us, 25))

    def as_dict(self, ndigits: int = 3) -> dict:
        return {k: (v if isinstance(v, int) or math.isnan(v) else round(v, ndigits))
                for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class ProbeSummary:
    """The ``summary`` object of ``probe send --json`` (schema ``twin.probe/1``)."""

    sent: int
    received: int
    lost: int
    loss_ratio: float
    duplicates: int
    reordered: int
    reordered_forward: int
    reordered_backward: int
    rate_pps_requested: float
    rate_pps_achieved: float
    size_bytes: int
    forward_us: DelayStats
    backward_us: DelayStats
    rtt_us: DelayStats

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("forward_us", "backward_us", "rtt_us"):
            out[key] = out[key].as_dict()
        return out

    @classmethod
    def from_json(cls, text_or_obj: str | dict) -> "ProbeSummary":
        """Parse the full ``send --json`` output (or just its ``summary`` object).

        Raises:
            ProbeError: not valid JSON or not schema ``twin.probe/1``.
        """
        try:
            obj = json.loads(text_or_obj) if isinstance(text_or_obj, str) else text_or_obj
        except ValueError as exc:
            raise ProbeError(f"probe output is not JSON: {exc}") from None
        if "schema" in obj:
            if obj["schema"] != SCHEMA:
                raise ProbeError(f"probe output schema {obj['schema']!r}, expected {SCHEMA!r}")
            obj = obj["summary"]
        try:
            kw = dict(obj)
            for key in ("forward_us", "backward_us", "rtt_us"):
                kw[key] = DelayStats(**{k: (float("nan") if v is None else v) for k, v in kw[key].items()})
            return cls(**kw)
        except (TypeError, KeyError) as exc:
            raise ProbeError(f"probe summary is missing or has unknown fields: {exc}") from None


def summarize(samples: Sequence[Sample], *, sent: int, rate_pps_requested: float = 0.0,
              rate_pps_achieved: float = 0.0, size_bytes: int = MIN_SIZE) -> ProbeSummary:
    """Loss, duplicates, reordering and delay statistics of replies in sender-arrival order."""
    seen: set[int] = set()
    unique: list[Sample] = []
    duplicates = 0
    for s in samples:
        if s.seq in seen:
            duplicates += 1
            continue
        seen.add(s.seq)
        unique.append(s)
    by_reflector = sorted(unique, key=lambda s: s.reflector_seq)
    # Return-path order: the reflector sent in reflector_seq order, so reordering on the
    # way back is reflector_seq going backwards at the sender.
    lost = max(0, sent - len(unique))
    return ProbeSummary(
        sent=sent,
        received=len(unique),
        lost=lost,
        loss_ratio=lost / sent if sent else 0.0,
        duplicates=duplicates,
        reordered=count_reordered(s.seq for s in unique),
        reordered_forward=count_reordered(s.seq for s in by_reflector),
        reordered_backward=count_reordered(s.reflector_seq for s in unique),
        rate_pps_requested=rate_pps_requested,
        rate_pps_achieved=round(rate_pps_achieved, 3),
        size_bytes=size_bytes,
        forward_us=DelayStats.of([s.forward_ns / 1000 for s in by_reflector]),
        backward_us=DelayStats.of([s.backward_ns / 1000 for s in unique]),
        rtt_us=DelayStats.of([s.rtt_ns / 1000 for s in unique]),
    )


def to_json(summary: ProbeSummary, samples: Sequence[Sample] | None = None) -> str:
    out: dict = {"schema": SCHEMA, "summary": summary.as_dict()}
    if samples is not None:
        out["samples"] = [[s.seq, s.reflector_seq, s.forward_ns / 1000, s.backward_ns / 1000, s.rtt_ns / 1000]
                          for s in samples]
    # NaN (no replies) becomes null so the output is strict JSON.
    return json.dumps(_nan_to_none(out))


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- sockets


def _set_timer_slack() -> None:
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(1), 0, 0, 0)
    except OSError:
        pass


def _udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_TIMESTAMP_FLAGS)
    except OSError:
        pass  # no transmit timestamps: userspace t1/t3 are used
    return sock


class TxStamps:
    """Kernel transmit timestamps of a socket's datagrams, by send order (``OPT_ID``).

    Call :meth:`sent` after every successful send, with what the datagram is to the
    caller (a sequence number, an address and seq, ...), then :meth:`collect` to read the
    error queue; :meth:`take` pops the stamp of one datagram, if the kernel gave one.
    """

    MAX_PENDING = 10_000  # datagrams whose stamp never came are forgotten after this many more sends

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._tags: dict[int, object] = {}   # OPT_ID number -> tag, until its stamp is read
        self._next = 0
        self._stamps: dict = {}               # tag -> ns, until taken

    def sent(self, tag) -> None:
        self._tags[self._next] = tag
        self._tags.pop(self._next - self.MAX_PENDING, None)
        self._next += 1
        while len(self._stamps) > self.MAX_PENDING:  # stamps nobody took (a reflector's last replies)
            del self._stamps[next(iter(self._stamps))]

    def collect(self) -> None:
        while True:
            try:
                _data, anc, _flags, _addr = self.sock.recvmsg(0, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # a queued ICMP error, not a timestamp: the caller's own reads report it
            stamp = number = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 16:
                    sec, nsec = _TS.unpack_from(data)  # ts[0]: the software stamp
                    stamp = sec * 1_000_000_000 + nsec
                elif (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)) \
                        and len(data) >= SOCK_EXTENDED_ERR.size:
                    number = SOCK_EXTENDED_ERR.unpack_from(data)[6]
            if stamp and number is not None and number in self._tags:
                self._stamps[self._tags.pop(number)] = stamp

    def take(self, tag, userspace_ns: int) -> int:
        """The kernel stamp of ``tag``'s datagram if it is plausible, else ``userspace_ns``."""
        return plausible_stamp(self._stamps.pop(tag, None), userspace_ns)


def plausible_stamp(kernel_ns: int | None, userspace_ns: int) -> int:
    """``kernel_ns`` if it can be the kernel's stamp of the datagram stamped ``userspace_ns``
    in userspace (not before it, at most ``TX_TS_MAX_AFTER_NS`` after it), else ``userspace_ns``."""
    if kernel_ns is None or not userspace_ns <= kernel_ns <= userspace_ns + TX_TS_MAX_AFTER_NS:
        return userspace_ns
    return kernel_ns


_TS = struct.Struct("qq")


def _kernel_ts(anc, fallback: int) -> int:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _TS.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    return fallback


def reflect(bind: str, port: int, *, max_packets: int | None = None,
            on_ready: Callable[[], None] | None = None) -> None:
    """Echo probes forever (or ``max_packets``), stamping t2 (kernel RX) and t3, and
    following up each reply's kernel transmit stamp in the next reply to that sender.
    ``on_ready`` is called once the socket is bound."""
    _set_timer_slack()
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = _udp_socket(family)
    sock.bind((bind, port))
    if on_ready is not None:
        on_ready()
    anc_size = socket.CMSG_SPACE(16)
    rseq = 0
    clock = time.time_ns
    pack_into, unpack_from = PROBE_STRUCT.pack_into, PROBE_STRUCT.unpack_from
    stamps = TxStamps(sock)
    last_reply: dict = {}  # sender address -> (its seq, userspace t3) of the last reply to it
    while max_packets is None or rseq < max_packets:
        data, anc, _flags, addr = sock.recvmsg(65535, anc_size)
        t2 = _kernel_ts(anc, clock())
        if len(data) < MIN_SIZE:
            continue
        magic, ver, flags, _pad, seq, _r, t1, _t2, _t3, _fs, _ft = unpack_from(data)
        if magic != MAGIC or ver != VERSION:
            continue
        rseq += 1
        stamps.collect()
        fu_seq, fu_t3 = NO_FOLLOW_UP, 0
        previous = last_reply.get(addr)
        if previous is not None:
            kernel_t3 = stamps.take((addr, previous[0]), previous[1])
            if kernel_t3 != previous[1]:
                fu_seq, fu_t3 = previous[0], kernel_t3
        buf = bytearray(data)
        pack_into(buf, 0, MAGIC, VERSION, flags, 0, seq, rseq, t1, t2, 0, fu_seq, fu_t3)
        # t3 is written last, as close to sendto as Python allows.
        t3 = clock()
        struct.pack_into("!Q", buf, 32, t3)
        sock.sendto(buf, addr)
        stamps.sent((addr, seq))
        last_reply[addr] = (seq, t3)


def wait_reflector_ready(proc, where: str, timeout_s: float = REFLECTOR_READY_TIMEOUT_S) -> None:
    """Wait until a reflector started as ``python -m twin.emulation.probe reflect`` with
    ``stdout=PIPE`` says it is bound: a probe sent earlier is refused and lost.

    Raises:
        ProbeError: it exited or said nothing in time (it is killed; the message carries
            its stderr when that was piped).
    """
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if (line.decode() if isinstance(line, bytes) else line).strip() == "ready":
        return
    proc.kill()
    proc.wait()
    err = proc.stderr.read() if proc.stderr is not None else ""
    err = (err.decode(errors="replace") if isinstance(err, bytes) else err)[-500:]
    raise ProbeError(f"probe reflector {where} did not start within {timeout_s:g} s: {err or '(no stderr)'}")


def send_offsets_ns(rate_pps: float, count: int, *, poisson: bool = False, seed: int = 1) -> list[int]:
    """Send times (ns from the start) of ``count`` probes at a mean of ``rate_pps``.

    Periodic by default; ``poisson`` draws exponential gaps (RFC 2330 section 11.1.1):
    a periodic stream can lock onto a periodic process in the path (a polling
    thread's sleep, a timer) and see the same phase of it every time.

    >>> send_offsets_ns(1000.0, 3)
    [0, 1000000, 2000000]
    >>> offsets = send_offsets_ns(1000.0, 20000, poisson=True)
    >>> 0.97 < offsets[-1] / 20000 / 1e6 < 1.03 and offsets == sorted(offsets)
    True
    """
    interval = 1e9 / rate_pps
    if not poisson:
        return [int(i * interval) for i in range(count)]
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(int(t))
        t += rng.expovariate(1.0) * interval
    return out


def send(dst: str, port: int, *, rate_pps: float, count: int, size: int = 64,
         wait_s: float = 1.0, poisson: bool = False, seed: int = 1,
         warmup: int = 0) -> tuple[list[Sample], float]:
    """Send ``count`` probes at ``rate_pps``; return (replies in arrival order, achieved rate).

    Pacing is on an absolute schedule (no drift; periodic, or Poisson with
    ``poisson``): sleep in ``select`` until ``SPIN_NS`` before each send time,
    then busy-wait; replies are read while waiting. After the last probe,
    replies are awaited for ``wait_s``.

    ``warmup`` probes go first, periodic at ``rate_pps``, and the measured ones
    start when their replies are in (or ``wait_s`` after the last): they are
    not counted anywhere. They make the path's switches set up their flows, so
    the measurement is of the steady path. Without them, OVS's kernel datapath
    sends a new flow's first packets through ovs-vswitchd, and packets behind
    them can overtake them once the flow is in the kernel (seen as 1-3 reordered
    probes per new path in the netem guest).

    Raises:
        ProbeError: bad arguments.
    """
    if rate_pps <= 0 or count <= 0:
        raise ProbeError("rate and count must be > 0")
    if warmup < 0:
        raise ProbeError("--warmup must be >= 0")
    if size < MIN_SIZE:
        raise ProbeError(f"--size must be at least {MIN_SIZE} bytes (the probe header)")
    _set_timer_slack()
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = _udp_socket(family)
    sock.connect((dst, port))
    sock.setblocking(False)
    anc_size = socket.CMSG_SPACE(16)
    buf = bytearray(size)
    pack_into, unpack_from = PROBE_STRUCT.pack_into, PROBE_STRUCT.unpack_from
    clock = time.time_ns
    mono = time.monotonic_ns
    samples: list[Sample] = []
    offsets = send_offsets_ns(rate_pps, count, poisson=poisson, seed=seed)
    stamps = TxStamps(sock)
    follow_ups: dict[int, int] = {}  # seq -> the reflector's kernel t3 of its reply

    def read_replies() -> None:
        while True:
            try:
                data, anc, _f, _a = sock.recvmsg(65535, anc_size)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                continue  # ICMP port unreachable for an earlier probe (reflector not up yet): that probe is lost
            t4 = _kernel_ts(anc, clock())
            if len(data) < MIN_SIZE:
                continue
            magic, ver, flags, _p, seq, rseq, t1, t2, t3, fu_seq, fu_t3 = unpack_from(data)
            if magic == MAGIC and ver == VERSION:
                if flags & WARMUP_FLAG:
                    warm_replies.add(seq)
                else:
                    samples.append(Sample(seq, rseq, t1, t2, t3, t4))
                if fu_seq != NO_FOLLOW_UP:
                    follow_ups[fu_seq] = fu_t3

    warm_replies: set[int] = set()
    if warmup > 0:
        gap_ns = int(1e9 / rate_pps)
        for j in range(warmup):
            pack_into(buf, 0, MAGIC, VERSION, WARMUP_FLAG, 0, WARMUP_SEQ0 + j, 0, clock(), 0, 0, NO_FOLLOW_UP, 0)
            try:
                sock.send(buf)
                stamps.sent(WARMUP_SEQ0 + j)
            except (BlockingIOError, ConnectionRefusedError):
                pass
            _wait_reading(sock, mono() + gap_ns, read_replies)
        _wait_reading(sock, mono() + int(wait_s * 1e9), read_replies, done=lambda: len(warm_replies) >= warmup)
        stamps.collect()

    start = mono()
    for i in range(count):
        due = start + offsets[i]
        while True:
            remaining = due - mono()
            if remaining <= SPIN_NS:
                break
            r, _, _ = select.select([sock], [], [], (remaining - SPIN_NS) / 1e9)
            if r:
                read_replies()
        while mono() < due:
            pass
        pack_into(buf, 0, MAGIC, VERSION, 0, 0, i, 0, clock(), 0, 0, NO_FOLLOW_UP, 0)
        try:
            sock.send(buf)
        except (BlockingIOError, ConnectionRefusedError):
            continue  # counted as lost; ICMP port unreachable from a missing reflector lands here
        stamps.sent(i)
        stamps.collect()
    end = mono()
    achieved = (count - 1) / ((end - start) / 1e9) if count > 1 and end > start else float(rate_pps)
    _wait_reading(sock, mono() + int(wait_s * 1e9), read_replies, done=lambda: len(samples) >= count)
    stamps.collect()
    sock.close()
    return [with_kernel_stamps(smp, stamps, follow_ups) for smp in samples], achieved


def _wait_reading(sock: socket.socket, until_ns: int, read_replies: Callable[[], None], *,
                  done: Callable[[], bool] = lambda: False) -> None:
    """Sleep until ``until_ns`` (monotonic) or until ``done()``, reading replies as they come."""
    while not done() and (remaining := until_ns - time.monotonic_ns()) > 0:
        r, _, _ = select.select([sock], [], [], remaining / 1e9)
        if r:
            try:
                read_replies()
            except ConnectionRefusedError:
                pass


def with_kernel_stamps(sample: Sample, stamps: TxStamps, follow_ups: dict[int, int]) -> Sample:
    """``sample`` with t1 and t3 replaced by the kernel's transmit stamps where they are known
    and plausible (within ``TX_TS_MAX_AFTER_NS`` after the userspace ones)."""
    t1 = stamps.take(sample.seq, sample.t1)
    t3 = plausible_stamp(follow_ups.get(sample.seq), sample.t3)
    if t1 == sample.t1 and t3 == sample.t3:
        return sample
    return dataclasses.replace(sample, t1=t1, t3=t3)


# --------------------------------------------------------------------------- pcap helper


def pcap_udp_timestamps(path: str, port: int) -> list[tuple[int, float]]:
    """(sender seq, capture time s) of every probe in a pcap: for checking timestamps offline.

    Uses scapy (imported lazily; it is slow to import and not needed on the hot path).
    """
    from scapy.all import UDP, rdpcap  # noqa: PLC0415

    out = []
    for pkt in rdpcap(path):
        if UDP in pkt and port in (pkt[UDP].sport, pkt[UDP].dport):
            payload = bytes(pkt[UDP].payload)
            if len(payload) >= MIN_SIZE and payload[:4] == MAGIC:
                out.append((PROBE_STRUCT.unpack_from(payload)[4], float(pkt.time)))
    return out


# --------------------------------------------------------------------------- flood

FLOOD_ETHERTYPE = 0x88B5  # IEEE "local experimental": no host stack takes these frames
FLOOD_BURST = 50
FLOOD_CATCH_UP = 200  # frames: a sender that lost the CPU does not make up more than this at once


def flood_frame(vid: int | None, size: int = 64) -> bytes:
    """A broadcast frame of ``size`` bytes (without FCS), 802.1Q-tagged with ``vid`` unless None.

    >>> f = flood_frame(100); len(f), f[12:16].hex(), f[16:18].hex()
    (64, '81000064', '88b5')
    >>> flood_frame(None, 60)[12:14].hex()
    '88b5'
    """
    if vid is not None and not 1 <= vid <= 4094:
        raise TwinError(f"flood: VLAN id {vid} out of range; fix: 1..4094")
    header = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01"
    header += struct.pack("!HHH", 0x8100, vid, FLOOD_ETHERTYPE) if vid is not None else \
        struct.pack("!H", FLOOD_ETHERTYPE)
    if size < len(header) or size > 1514:
        raise TwinError(f"flood: frame size {size} out of range; fix: {len(header)}..1514 bytes")
    return header + bytes(size - len(header))


def flood(ifname: str, *, pps: float, seconds: float, vid: int | None = None, size: int = 64) -> int:
    """Send raw frames out of ``ifname`` at about ``pps`` for ``seconds``; returns how many were sent.

    A load for the emulator itself (no IP; every host drops them): what a
    wavelength full of traffic costs the delay engine, without TCP backing off.
    """
    if not (pps > 0 and seconds > 0):
        raise TwinError(f"flood: rate {pps!r}/s and duration {seconds!r} s must be > 0")
    frame = flood_frame(vid, size)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        try:
            sock.bind((ifname, 0))
        except OSError as exc:
            raise TwinError(f"flood: cannot send on {ifname!r}: {exc.strerror}; "
                            f"fix: an interface of this namespace (ip link)") from None
        start = time.monotonic()
        end, sent, scheduled = start + seconds, 0, 0  # frames sent; the schedule's position
        while (now := time.monotonic()) < end:
            due = (now - start) * pps
            if scheduled < due:
                for _ in range(FLOOD_BURST):
                    sock.send(frame)
                sent += FLOOD_BURST
                # a sender that lost the CPU skips ahead instead of bursting to catch up
                scheduled = max(scheduled + FLOOD_BURST, int(due) - FLOOD_CATCH_UP)
    return sent


# --------------------------------------------------------------------------- CLI


def _format_text(s: ProbeSummary) -> str:
    lines = [f"sent {s.sent} received {s.received} lost {s.lost} ({s.loss_ratio:.2%}) dup {s.duplicates} "
             f"reordered {s.reordered} (fwd {s.reordered_forward}, back {s.reordered_backward}) "
             f"rate {s.rate_pps_achieved:.1f}/s",
             f"{'us':8} {'min':>9} {'median':>9} {'mean':>9} {'p99':>9} {'max':>9} {'stdev':>8} {'rfc3550':>8}"]
    for name, d in (("forward", s.forward_us), ("backward", s.backward_us), ("rtt", s.rtt_us)):
        lines.append(f"{name:8} {d.min:9.1f} {d.median:9.1f} {d.mean:9.1f} {d.p99:9.1f} {d.max:9.1f} "
                     f"{d.stdev:8.1f} {d.rfc3550_jitter:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.emulation.probe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reflect", help="echo probes with receive/send timestamps")
    r.add_argument("--bind", default="0.0.0.0")
    r.add_argument("--port", type=int, default=8620)
    r.add_argument("--max-packets", type=int, help="exit after this many probes")
    s = sub.add_parser("send", help="send probes and report delays")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, default=8620)
    s.add_argument("--rate", type=float, default=1000.0, help="probes per second")
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--size", type=int, default=64, help=f"UDP payload bytes (>= {MIN_SIZE})")
    s.add_argument("--wait", type=float, default=1.0, help="seconds to wait for late replies")
    s.add_argument("--poisson", action="store_true", help="exponential gaps (RFC 2330) instead of periodic")
    s.add_argument("--seed", type=int, default=1, help="seed of the Poisson gaps")
    s.add_argument("--json", action="store_true", help="print the twin.probe/1 JSON document")
    s.add_argument("--samples", action="store_true", help="include per-packet samples in the JSON")
    s.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="first send N uncounted probes and wait for their replies (sets up the switches' flows)")
    f = sub.add_parser("flood", help="load a link with raw frames (no IP; for the emulator, not for hosts)")
    f.add_argument("--iface", required=True, help="interface to send from (in this namespace)")
    f.add_argument("--vid", type=int, help="802.1Q VLAN id (a wavelength of a span); untagged without")
    f.add_argument("--pps", type=float, required=True, help="frames per second")
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--size", type=int, default=64, help="frame bytes without FCS (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "flood":
            n = flood(args.iface, pps=args.pps, seconds=args.seconds, vid=args.vid, size=args.size)
            print(f"flood: {n} frames in {args.seconds:g} s out of {args.iface}")
            return 0
        if args.cmd == "reflect":
            try:
                # "ready" on stdout once bound: whoever started the reflector can wait for it.
                reflect(args.bind, args.port, max_packets=args.max_packets,
                        on_ready=lambda: print("ready", flush=True))
            except KeyboardInterrupt:
                pass
            return 0
        samples, achieved = send(args.dst, args.port, rate_pps=args.rate, count=args.count, size=args.size,
                                 wait_s=args.wait, poisson=args.poisson, seed=args.seed, warmup=args.warmup)
        summary = summarize(samples, sent=args.count, rate_pps_requested=args.rate, rate_pps_achieved=achieved,
                            size_bytes=args.size)
        print(to_json(summary, samples if args.samples else None) if args.json else _format_text(summary))
        return 0
    except (TwinError, OSError) as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
