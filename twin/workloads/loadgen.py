"""Open-loop Poisson load generator for one client region: every request recorded.

Run as::

    python -m twin.workloads.loadgen --target HOST:PORT --rate R --duration S
        --request-size B --response-size B --region REGION --service ID --out FILE.csv
        [--timeout S] [--seed N] [--sessions K] [--start-at UNIX_TIME]

or in-process with :func:`run_load`.

- **Open loop, no coordinated omission**: arrival times are drawn up front from
  a seeded Poisson process and each request is sent at its absolute time, in
  its own task; a slow or lost answer never delays the next send. How late the
  sends were against the schedule is measured (``LoadResult.lateness_us``).
- **Connections.** By default one TCP connection per request
  (``Connection: close``); the latency includes the TCP handshake. The client
  waits for the server's FIN so the TIME_WAIT state stays on the server's side
  and a long run does not exhaust the client's ephemeral ports.
  With ``--keep-alive`` the region's clients keep connections open, as
  vehicles hold a long-lived session to their service: a request takes an idle
  connection (the most recently used, whose congestion window is warmest) or
  opens one when all are busy. The twin steers a service per connection (the
  controller re-points a virtual IP for new connections only), so after a
  migration a kept-alive connection still reaches the old site until that
  instance, draining, closes it after its next answer or, idle, at once; the
  next request then opens a connection to the new site. A request sent on a
  reused connection that the server closed meanwhile (no byte of an answer
  came back) is sent again once on a new connection, as HTTP clients do; its
  latency counts from the first send (``LoadResult.retried`` counts them).
- **Every request is a row** of the CSV (``send_unix,region,site,instance,
  latency_ms,service_time_us,outcome,status``), written when it completes and
  flushed at least twice a second; ``outcome`` is ``ok`` (HTTP 200), ``timeout``
  (no full answer within ``--timeout``), ``refused`` (HTTP 503 or connection
  refused) or ``error`` (anything else: reset, other status, malformed answer).
  Rows are in completion order, not send order.
- SIGTERM/SIGINT: stop sending, wait for the requests in flight (each ends by
  its own timeout at the latest), record them, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twin.errors import TwinError
from twin.workloads import protocol as proto
from twin.workloads.realtime import apply_rt_priority
from twin.workloads.stats import CSV_FIELDS, RequestRecord, percentile

FLUSH_INTERVAL_S = 0.5
BODY_POOL = 8  # distinct request bodies per run (made once; random per request would cost CPU at 1,000/s)
MAX_RESPONSE_HEAD = 64 * 1024


class LoadError(TwinError):
    """The load generator was asked for something it cannot do."""


@dataclass(frozen=True)
class LoadConfig:
    host: str
    port: int
    rate_per_s: float
    duration_s: float
    request_size: int
    response_size: int
    region: str
    service: str
    timeout_s: float = 5.0
    seed: int = 0
    sessions: int = 0  # 0: no X-Session header
    start_at_unix: float | None = None
    keep_alive: bool = False  # reuse connections (see the module docstring)

    def check(self) -> LoadConfig:
        """Raises LoadError/ProtocolError naming the bad option and the fix."""
        if not self.rate_per_s > 0:
            raise LoadError(f"--rate {self.rate_per_s} must be > 0 requests/s")
        if not self.duration_s > 0:
            raise LoadError(f"--duration {self.duration_s} must be > 0 s")
        if not self.timeout_s > 0:
            raise LoadError(f"--timeout {self.timeout_s} must be > 0 s")
        if self.request_size < 0 or self.response_size < 0:
            raise LoadError("--request-size and --response-size must be >= 0 bytes")
        if self.response_size > proto.MAX_RESPONSE_BYTES:
            raise LoadError(f"--response-size {self.response_size} exceeds {proto.MAX_RESPONSE_BYTES} bytes")
        if self.sessions < 0:
            raise LoadError(f"--sessions {self.sessions} must be >= 0")
        if not 1 <= self.port <= 65535:
            raise LoadError(f"target port {self.port} is out of range; use HOST:1..65535")
        proto.check_site_id(self.region)
        proto.check_service_id(self.service)
        return self


@dataclass
class LoadResult:
    """What a run produced. ``records`` is empty when the caller asked not to keep them."""

    records: list[RequestRecord]
    sent: int
    lateness_us: list[float]  # actual send - scheduled send, per request
    started_unix: float
    wall_s: float
    cpu_s: float  # CPU time of this process during the run (the generator's own overhead)
    outcomes: dict[str, int] = field(default_factory=dict)
    connections: int = 0  # TCP connections opened
    retried: int = 0  # requests sent again after a reused connection was closed under them


def parse_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``.

    >>> parse_target("10.0.0.1:8080"), parse_target("[::1]:80")
    (('10.0.0.1', 8080), ('::1', 80))
    """
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LoadError(f"--target {target!r} is not HOST:PORT; write e.g. 10.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def arrival_offsets(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, duration) (exponential gaps, seeded: reproducible runs)."""
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


class _Writer:
    """CSV rows as requests complete; flushed by a timer so a crash loses at most half a second."""

    def __init__(self, path: Path | None):
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("w", newline="")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(CSV_FIELDS)
            self._fh.flush()

    def write(self, record: RequestRecord) -> None:
        if self._fh is not None:
            self._csv.writerow(record.csv_row())

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            self._fh.close()
            self._fh = None


class _Unanswered(ConnectionError):
    """The connection closed before any byte of the answer came back."""


class _Connection(asyncio.Protocol):
    """A client connection carrying one request at a time, on the bare protocol API.

    asyncio streams cost about twice the CPU per connection (reader, writer and
    their protocol per request); at 1,000 requests/s that is the generator's
    whole budget. :meth:`begin` sends a request; ``answer`` resolves at the last
    body byte with the latency in ms. ``closed`` resolves when the connection is
    gone (after ``Connection: close``, at the server's FIN, so the TIME_WAIT
    state stays on the server's side).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future = loop.create_future()
        self.answer: asyncio.Future | None = None
        self.reusable = False  # the last answer left the connection open for another request

    def connection_made(self, transport) -> None:
        self.transport = transport

    def begin(self, payload: tuple[bytes, ...], t0: float) -> asyncio.Future:
        self.t0 = t0
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.headers: dict[str, str] = {}
        self.reusable = False
        self.answer = self.loop.create_future()
        # A request that timed out never awaits its answer; read the outcome here
        # so asyncio does not warn about it.
        self.answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.transport.writelines(payload)
        return self.answer

    def _pending(self) -> bool:
        return self.answer is not None and not self.answer.done()

    def data_received(self, data: bytes) -> None:
        if not self._pending():
            self._fail(ConnectionError("bytes from the server with no request outstanding"))
            return
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_RESPONSE_HEAD:
                    self._fail(ValueError("response headers exceed 64 KiB"))
                return
            try:
                lines = self.buf[:end].decode("latin-1").split("\r\n")
                parts = lines[0].split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                    raise ValueError(f"malformed status line {lines[0][:40]!r}")
                self.status = int(parts[1])
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    self.headers[name.strip().lower()] = value.strip()
                self.need = end + 4 + int(self.headers.get("content-length", "0"))
            except ValueError as err:
                self._fail(err)
                return
        if len(self.buf) > self.need:
            self._fail(ConnectionError("more bytes than the answer's Content-Length"))
        elif len(self.buf) == self.need:
            self.reusable = self.headers.get("connection", "").lower() != "close"
            self.answer.set_result((time.perf_counter() - self.t0) * 1000.0)

    def _fail(self, err: BaseException) -> None:
        self.reusable = False
        if self._pending():
            self.answer.set_exception(err)
        if self.transport is not None:
            self.transport.abort()

    def _gone(self, exc: BaseException | None) -> None:
        self.reusable = False
        if self._pending():
            if self.buf:
                self.answer.set_exception(exc or ConnectionError("connection closed before the full answer"))
            else:
                self.answer.set_exception(_Unanswered(f"connection closed before an answer ({exc or 'FIN'})"))

    def eof_received(self):
        self._gone(None)
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self._gone(exc)
        if not self.closed.done():
            self.closed.set_result(None)


class _Pool:
    """The region's open connections to one target; the most recently used is reused first."""

    MAX_IDLE = 64

    def __init__(self, host: str, port: int, keep_alive: bool):
        self.host, self.port, self.keep_alive = host, port, keep_alive
        self.idle: list[_Connection] = []
        self.opened = 0
        self.retried = 0

    async def open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(loop)
        self.opened += 1
        await loop.create_connection(lambda: conn, self.host, self.port)
        return conn

    def take_idle(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.reusable:
                return conn
        return None

    def give_back(self, conn: _Connection) -> bool:
        """Keep ``conn`` for a later request if it can carry one; False: the caller closes it."""
        if self.keep_alive and conn.reusable and len(self.idle) < self.MAX_IDLE:
            self.idle.append(conn)
            return True
        return False

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


async def _request(pool: _Pool, head: bytes, body: bytes) -> tuple[float, _Connection]:
    """One request on a reused or new connection: (latency ms, the connection with its answer).

    Raises on any failure; the connection it used is then aborted, never reused.
    """
    payload = (head, body) if body else (head,)
    t0 = time.perf_counter()
    conn = pool.take_idle()
    try:
        if conn is not None:
            try:
                return await conn.begin(payload, t0), conn
            except _Unanswered:
                # The server closed this idle connection as the request went out (it
                # drained, or stopped): nothing was served, so send it again on a new one.
                pool.retried += 1
        conn = await pool.open()
        return await conn.begin(payload, t0), conn
    except BaseException:
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        raise


async def run_load(config: LoadConfig, out: Path | str | None = None, *, stop: asyncio.Event | None = None,
                   keep_records: bool = True, on_record: Callable[[RequestRecord], None] | None = None) -> LoadResult:
    """Drive open-loop Poisson load at ``config.host:port`` and record every request.

    ``out``: CSV file to write (optional). ``stop``: set it to stop sending early
    (what SIGTERM does in the CLI); requests in flight are still awaited and
    recorded. Cancelling the coroutine records the requests in flight as
    ``error`` before it propagates.

    Raises:
        LoadError / ProtocolError: a bad option (checked before anything is sent).
    """
    config.check()
    loop = asyncio.get_running_loop()
    writer = _Writer(Path(out) if out is not None else None)
    records: list[RequestRecord] = []
    lateness_us: list[float] = []
    outcomes = {o: 0 for o in ("ok", "timeout", "error", "refused")}
    body_rng = np.random.default_rng(config.seed)
    bodies = [body_rng.bytes(config.request_size) for _ in range(BODY_POOL)]
    pick = random.Random(config.seed + 1)
    offsets = arrival_offsets(config.rate_per_s, config.duration_s, config.seed)
    stop = stop or asyncio.Event()
    pool = _Pool(config.host, config.port, config.keep_alive)

    def record(rec: RequestRecord) -> None:
        outcomes[rec.outcome] += 1
        writer.write(rec)
        if keep_records:
            records.append(rec)
        if on_record is not None:
            on_record(rec)

    async def one(scheduled: float, head: bytes, body: bytes) -> None:
        lateness_us.append((loop.time() - scheduled) * 1e6)
        send_unix = time.time()
        status = None
        try:
            async with asyncio.timeout(config.timeout_s):
                latency_ms, conn = await _request(pool, head, body)
                status, headers = conn.status, conn.headers
        except TimeoutError:
            record(RequestRecord(send_unix, config.region, "", "", None, None, "timeout", status))
            return
        except ConnectionRefusedError:
            record(RequestRecord(send_unix, config.region, "", "", None, None, "refused", None))
            return
        except asyncio.CancelledError:
            record(RequestRecord(send_unix, config.region, "", "", None, None, "error", None))
            raise
        except Exception:  # reset, malformed answer, unreachable: an outcome, never a lost row
            record(RequestRecord(send_unix, config.region, "", "", None, None, "error", None))
            return
        if not pool.give_back(conn) and not conn.closed.done():
            # Let the server close first (its FIN closes our side: TIME_WAIT stays
            # there); a server that keeps the connection open is cut after the timeout.
            loop.call_later(config.timeout_s, conn.transport.abort)
        svc = headers.get(proto.H_SERVICE_TIME_US.lower(), "")
        outcome = "ok" if status == 200 else "refused" if status == 503 else "error"
        record(RequestRecord(send_unix, config.region, headers.get(proto.H_SITE.lower(), ""),
                             headers.get(proto.H_INSTANCE.lower(), ""), latency_ms,
                             int(svc) if svc.isdigit() else None, outcome, status))

    base_head = (f"POST /infer HTTP/1.1\r\nHost: {config.host}:{config.port}\r\n"
                 f"Content-Length: {config.request_size}\r\n{proto.H_RESPONSE_SIZE}: {config.response_size}\r\n"
                 f"{proto.H_SERVICE}: {config.service}\r\n")
    if not config.keep_alive:
        base_head += "Connection: close\r\n"
    in_flight: set[asyncio.Task] = set()
    flusher = loop.create_task(writer.flush_forever())
    cpu0 = time.process_time()
    if config.start_at_unix is not None:
        await _sleep_or_stop(stop, config.start_at_unix - time.time())
    started_unix = time.time()
    t_start = loop.time()
    sent = 0
    try:
        for offset in offsets:
            if stop.is_set():
                break
            scheduled = t_start + offset
            delay = scheduled - loop.time()
            if delay > 0 and await _sleep_or_stop(stop, delay):
                break
            session = (f"{proto.H_SESSION}: {config.region}-{pick.randrange(config.sessions)}\r\n"
                       if config.sessions else "")
            head = (base_head + session + "\r\n").encode("latin-1")
            task = loop.create_task(one(scheduled, head, bodies[sent % BODY_POOL]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
        if in_flight:
            await asyncio.wait(set(in_flight))  # each ends by its own timeout
    except asyncio.CancelledError:
        for task in list(in_flight):
            task.cancel()
        if in_flight:
            await asyncio.wait(set(in_flight))
        raise
    finally:
        flusher.cancel()
        writer.close()
        pool.close()
    return LoadResult(records=records, sent=sent, lateness_us=lateness_us, started_unix=started_unix,
                      wall_s=loop.time() - t_start, cpu_s=time.process_time() - cpu0, outcomes=outcomes,
                      connections=pool.opened, retried=pool.retried)


async def _sleep_or_stop(stop: asyncio.Event, delay_s: float) -> bool:
    """Sleep ``delay_s``; True if ``stop`` was set meanwhile.

    Short gaps use a plain sleep (cheapest at 1,000/s; a stop is noticed at the
    next arrival); long ones wait on the event so SIGTERM is not held up.
    """
    if delay_s > 0.05:
        try:
            await asyncio.wait_for(stop.wait(), delay_s)
        except TimeoutError:
            pass
    elif delay_s > 0:
        await asyncio.sleep(delay_s)
    return stop.is_set()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twin.workloads.loadgen",
                                description="Open-loop Poisson clients of one region; every request to a CSV row.")
    p.add_argument("--target", required=True, help="HOST:PORT of the service (its virtual IP in the twin)")
    p.add_argument("--rate", type=float, required=True, help="mean requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of arrivals")
    p.add_argument("--request-size", type=int, required=True, help="request body bytes")
    p.add_argument("--response-size", type=int, required=True, help="response bytes asked for (X-Response-Size)")
    p.add_argument("--region", required=True, help="client region (site id) written on every row")
    p.add_argument("--service", required=True, help="service id (sent as X-Service)")
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request before 'timeout' (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of arrivals, bodies and sessions (default 0)")
    p.add_argument("--sessions", type=int, default=0, help="spread requests over K sessions (X-Session)")
    p.add_argument("--start-at", type=float, default=None, help="Unix time of the schedule's start")
    p.add_argument("--keep-alive", action="store_true",
                   help="reuse connections between requests (default: a new connection per request)")
    p.add_argument("--rt-priority", type=int, default=0,
                   help="run under SCHED_FIFO at this priority (1-98; 0: normal scheduling, the default)")
    return p


async def _main_async(config: LoadConfig, out: Path, latencies_ms: list[float]) -> LoadResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def keep_latency(rec: RequestRecord) -> None:
        if rec.ok and rec.latency_ms is not None:
            latencies_ms.append(rec.latency_ms)

    # Records go to the CSV, not to memory: a run of 20,000 kept records made each full
    # garbage collection walk them all, a pause of milliseconds that clients saw as latency.
    # Floats in a list are not tracked by the collector. What exists after start-up is
    # frozen out of the collector's scans for the same reason.
    gc.collect()
    gc.freeze()
    return await run_load(config, out, stop=stop, keep_records=False, on_record=keep_latency)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        host, port = parse_target(args.target)
        config = LoadConfig(host=host, port=port, rate_per_s=args.rate, duration_s=args.duration,
                            request_size=args.request_size, response_size=args.response_size,
                            region=args.region, service=args.service, timeout_s=args.timeout,
                            seed=args.seed, sessions=args.sessions, start_at_unix=args.start_at,
                            keep_alive=args.keep_alive).check()
        if not 0 <= args.rt_priority <= 98:
            raise LoadError(f"--rt-priority {args.rt_priority} is out of range; use 0 (normal) or 1..98")
        scheduling = apply_rt_priority(args.rt_priority)
        latencies_ms: list[float] = []
        result = asyncio.run(_main_async(config, args.out, latencies_ms))
    except TwinError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: {args.out}: cannot write ({err.strerror}); choose another --out", file=sys.stderr)
        return 1
    print(json.dumps({"sent": result.sent, "outcomes": result.outcomes,
                      "p50_ms": percentile(latencies_ms, 50.0), "p99_ms": percentile(latencies_ms, 99.0),
                      "cpu_s": round(result.cpu_s, 3), "connections": result.connections,
                      "retried": result.retried, "scheduling": scheduling, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
