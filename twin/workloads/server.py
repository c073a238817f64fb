"""The inference server: one service instance, HTTP/1.1 on asyncio streams, ONNX Runtime underneath.

Run as::

    python -m twin.workloads.server --service ID --model NAME --site SITE --port 8080
        [--bind 0.0.0.0] [--models-dir DIR] [--state-dir DIR] [--threads N]
        [--state-size BYTES] [--workers N] [--rt-priority N]

The protocol (endpoints, headers, status codes, state format) is in
docs/inference-protocol.md.

Why asyncio streams rather than ``http.server`` with threads: draining needs one
exact in-flight count and a listener that keeps answering (503, ``Connection:
close``) while the last requests finish; on one event loop that bookkeeping
needs no locks, idle or slow connections cost nothing, and ``/healthz`` stays
answerable during a 40 ms CNN run. The model itself runs in a small thread pool
(``--workers``, default 1: one request computes at a time, like one core's
worth of service; the rest queue, which clients see as latency). ONNX Runtime
releases the GIL while it computes, so the loop keeps serving meanwhile, and the
service time reported is the wall and CPU time of that computation alone.

On start the server prints one JSON line ``{"event": "listening", "port": ...}``
to stdout, then ``{"event": "ready", ...}`` once the model is loaded and warmed.
SIGTERM or SIGINT drains (finish in-flight, refuse new), saves the state to
``--state-dir`` if given, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.errors import TwinError
from twin.workloads import protocol as proto
from twin.workloads.models import default_models_dir, find_model
from twin.workloads.realtime import apply_rt_priority

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_INFER_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_STATE_BYTES = 4 * 1024**3
MAX_SESSIONS = 10_000  # oldest sessions are forgotten beyond this (bounded memory)
STATE_FILE = "state.bin"
WARMUP_RUNS = 3
_READ_CHUNK = 1 << 20

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Content Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable"}


class ServerError(TwinError):
    """The server cannot start as asked."""


@dataclass(frozen=True)
class ServerConfig:
    service: str
    model: str
    site: str
    port: int = 8080
    bind: str = "0.0.0.0"
    models_dir: Path | None = None
    state_dir: Path | None = None
    threads: int = 1
    workers: int = 1
    state_size: int = 0
    rt_priority: int = 0  # > 0: serve under SCHED_FIFO (see apply_rt_priority)
    max_infer_bytes: int = DEFAULT_MAX_INFER_BYTES
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES


class InferenceService:
    """The model and the service's state; no sockets. Thread-safe for ``infer``."""

    def __init__(self, config: ServerConfig, instance: str):
        self.config = config
        self.instance = instance
        self.model_path: Path | None = None
        self.model_sha256 = ""
        self.model_bytes = b""
        self._session = None  # onnxruntime.InferenceSession
        self._input_name = ""
        self._lock = threading.Lock()
        self.sessions: OrderedDict[str, proto.SessionTrack] = OrderedDict()
        self.padding = proto.make_padding(config.state_size)  # upper bound; exports use a prefix
        self.served = 0
        self.service_time_us_total = 0.0

    # -- model

    def locate(self) -> None:
        """Find and verify the model file (fast; before listening, so a bad directory fails at once)."""
        if self.config.model == "echo":
            return
        models_dir = self.config.models_dir or default_models_dir()
        self.model_path, self.model_sha256 = find_model(models_dir, self.config.model)

    def load(self) -> None:
        """Create the ONNX Runtime session and warm it (first runs allocate and pick kernels)."""
        if self.config.model == "echo":
            return
        import onnxruntime as ort

        self.model_bytes = self.model_path.read_bytes()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(self.model_bytes, opts, providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        shape = proto.MODEL_INPUT_SHAPES[self.config.model]
        for i in range(WARMUP_RUNS):
            self._session.run(None, {self._input_name: proto.derive_input(bytes([i]), shape)})

    # -- requests

    def infer(self, body: bytes, session_id: str | None, response_size: int) -> tuple[bytes, int, int]:
        """Answer one request: (response body, service time us, CPU time us)."""
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        model = self.config.model
        answer: dict = {"service": self.config.service, "model": model, "site": self.config.site,
                        "instance": self.instance}
        if model == "echo":
            answer["digest"] = proto.request_digest(body)
            answer["bytes"] = len(body)
        else:
            x = proto.derive_input(body, proto.MODEL_INPUT_SHAPES[model])
            if model in proto.STATEFUL_MODELS and session_id is not None:
                with self._lock:
                    track = self.sessions.get(session_id)
                x, track = proto.fuse_with_track(x, track)
                with self._lock:
                    self.sessions[session_id] = track
                    self.sessions.move_to_end(session_id)
                    while len(self.sessions) > MAX_SESSIONS:
                        self.sessions.popitem(last=False)
                answer["session"] = session_id
                answer["session_requests"] = track.requests
            logits = self._session.run(None, {self._input_name: x})[0].reshape(-1)
            answer["class"] = int(np.argmax(logits))
            answer["logits"] = [round(float(v), 4) for v in logits]
        service_us = (time.perf_counter_ns() - t0) // 1000
        cpu_us = (time.thread_time_ns() - c0) // 1000
        with self._lock:
            self.served += 1
            self.service_time_us_total += service_us
        answer["service_time_us"] = service_us
        return proto.response_body(answer, response_size), service_us, cpu_us

    # -- state

    def _meta(self) -> dict:
        return {"service": self.config.service, "model": self.config.model, "model_sha256": self.model_sha256,
                "site": self.config.site, "instance": self.instance, "exported_unix": round(time.time(), 6)}

    def export_state(self) -> tuple[int, int, list]:
        """(blob length, natural length without padding, pieces to send)."""
        with self._lock:
            sessions = proto.encode_sessions(dict(self.sessions))
            count = len(self.sessions)
        meta = {**self._meta(), "sessions": count}
        sections = {"sessions": sessions, "model": self.model_bytes}
        pad = proto.padding_for_target(meta, {k: len(v) for k, v in sections.items()}, self.config.state_size)
        if pad > len(self.padding):
            self.padding = proto.make_padding(pad)
        natural, _ = proto.state_chunks(meta, {**sections, "padding": b""})
        total, pieces = proto.state_chunks(meta, {**sections, "padding": memoryview(self.padding)[:pad]})
        return total, natural, list(pieces)

    def import_state(self, data: bytes | bytearray) -> dict:
        """Verify and adopt a blob from another instance of the same service and model.

        The session table is replaced as a whole, so this instance then answers
        exactly as the exporter would have.

        Raises:
            StateFormatError: bad magic, version or checksum (HTTP 400).
            StateConflict: another service, model or model build (HTTP 409).
        """
        blob = proto.decode_state(data)
        meta = blob.meta
        for key, mine in (("service", self.config.service), ("model", self.config.model),
                          ("model_sha256", self.model_sha256)):
            if meta.get(key) != mine:
                raise StateConflict(f"state is for {key} {str(meta.get(key))[:24]!r}, this instance serves "
                                    f"{mine[:24]!r}; import it into an instance of the same service and model")
        sessions = blob.sessions
        shape = proto.MODEL_INPUT_SHAPES.get(self.config.model)
        if shape is not None:
            n = int(np.prod(shape))
            bad = [sid for sid, t in sessions.items() if t.vector.size != n]
            if bad:
                raise proto.StateFormatError(f"session {bad[0][:40]!r} has a track of the wrong size; "
                                             "export the state again")
        with self._lock:
            self.sessions = OrderedDict(sessions)
        return {"sessions": len(sessions), "bytes": len(data), "from_instance": meta.get("instance"),
                "from_site": meta.get("site")}


class StateConflict(proto.ProtocolError):
    """A valid state blob for another service or model."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class InferenceServer:
    """HTTP/1.1 front of an :class:`InferenceService` (see the module docstring for why asyncio)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.instance = f"{config.site}-{config.service}-{os.getpid()}-{secrets.token_hex(3)}"
        self.service = InferenceService(config, self.instance)
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.refused = 0
        self.errors = 0
        self.started_unix = time.time()
        self.scheduling = "normal"  # what apply_rt_priority obtained
        self._idle = asyncio.Event()
        self._idle.set()
        self._kept_idle: set[asyncio.StreamWriter] = set()  # kept-alive connections between requests
        self._server: asyncio.base_events.Server | None = None
        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="infer")
        self._stopping: asyncio.Task | None = None
        self._done = asyncio.Event()
        self.port = 0

    # -- lifecycle

    async def start(self) -> None:
        self.service.locate()
        self._server = await asyncio.start_server(self._handle, self.config.bind, self.config.port,
                                                  limit=MAX_HEADER_BYTES, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        _announce({"event": "listening", "port": self.port, "bind": self.config.bind,
                   "instance": self.instance, "pid": os.getpid()})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.service.load)
        if self.config.state_dir is not None:
            await loop.run_in_executor(self._executor, self._load_saved_state)
        self.ready = True
        _announce({"event": "ready", "port": self.port, "instance": self.instance, "model": self.config.model})

    def _load_saved_state(self) -> None:
        path = self.config.state_dir / STATE_FILE
        if path.is_file():
            info = self.service.import_state(path.read_bytes())
            log.info("imported %d sessions from %s", info["sessions"], path)

    def _save_state(self) -> None:
        directory = self.config.state_dir
        directory.mkdir(parents=True, exist_ok=True)
        _, _, pieces = self.service.export_state()
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                for piece in pieces:
                    fh.write(piece)
            os.replace(tmp, directory / STATE_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def drain(self) -> int:
        """Refuse new requests and wait for the in-flight ones; returns how many it waited for."""
        self.draining = True
        # Kept-alive connections with no request under way would otherwise bring their
        # next request here, to be refused: close them now, so their clients open a new
        # connection (steered to the new site) for it.
        for writer in list(self._kept_idle):
            writer.close()
        waited_for = self.in_flight
        await self._idle.wait()
        return waited_for

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: drain, save state, close, exit 0 (idempotent)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        try:
            waited = await self.drain()
            log.info("drained %d in-flight requests", waited)
            if self.config.state_dir is not None and self.ready:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._save_state)
        finally:
            if self._server is not None:
                self._server.close()
            self._done.set()

    async def serve_until_stopped(self) -> None:
        await self._done.wait()
        self._executor.shutdown(wait=True)

    # -- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            keep_alive = True
            served = 0
            while keep_alive:
                if served:
                    if self.draining:
                        return  # answered with Connection: close already
                    self._kept_idle.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed between requests (or the drain closed it)
                except asyncio.LimitOverrunError:
                    await self._send(writer, 400, _error_body("request headers exceed 64 KiB"), close=True)
                    return
                finally:
                    self._kept_idle.discard(writer)
                served += 1
                try:
                    method, path, version, headers = _parse_head(head)
                except _BadRequest as err:
                    await self._send(writer, err.status, _error_body(str(err)), close=True)
                    return
                keep_alive = _wants_keep_alive(version, headers)
                keep_alive = await self._dispatch(method, path, headers, reader, writer, keep_alive)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request; nothing to answer
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], reader, writer,
                        keep_alive: bool) -> bool:
        """Serve one request; returns whether the connection stays open."""
        path = path.split("?", 1)[0]
        routes = {"/infer": ("POST",), "/healthz": ("GET",), "/readyz": ("GET",), "/stats": ("GET",),
                  "/drain": ("POST",), "/resume": ("POST",), "/state": ("GET", "PUT")}
        if path not in routes:
            await self._discard_body(headers, reader)
            await self._send(writer, 404, _error_body(f"no endpoint {path[:60]}"), close=not keep_alive)
            return keep_alive
        if method not in routes[path]:
            await self._discard_body(headers, reader)
            await self._send(writer, 405, _error_body(f"{path} takes {' or '.join(routes[path])}"),
                             close=not keep_alive, extra={"Allow": ", ".join(routes[path])})
            return keep_alive
        if "transfer-encoding" in headers:
            await self._send(writer, 501, _error_body("chunked bodies are not supported; send Content-Length"),
                             close=True)
            return False
        if path == "/infer":
            return await self._infer(headers, reader, writer, keep_alive)
        await self._discard_body(headers, reader, allow=path == "/state" and method == "PUT")
        if path == "/healthz":
            await self._send_json(writer, 200, {"alive": True, "instance": self.instance}, keep_alive)
        elif path == "/readyz":
            ok = self.ready and not self.draining
            await self._send_json(writer, 200 if ok else 503,
                                  {"ready": ok, "loaded": self.ready, "draining": self.draining}, keep_alive)
        elif path == "/stats":
            await self._send_json(writer, 200, self.stats(), keep_alive)
        elif path == "/drain":
            waited = await self.drain()
            await self._send_json(writer, 200, {"drained": True, "waited_for": waited,
                                                "served": self.service.served}, keep_alive)
        elif path == "/resume":
            self.draining = False
            await self._send_json(writer, 200, {"draining": False}, keep_alive)
        elif method == "GET":
            await self._export(headers, writer, keep_alive)
        else:
            await self._import(headers, reader, writer, keep_alive)
        return keep_alive

    async def _infer(self, headers, reader, writer, keep_alive: bool) -> bool:
        if self.draining or not self.ready:
            # Read the body before answering: closing with unread bytes makes the
            # kernel send RST, which can destroy the 503 before the client reads it.
            self.refused += 1
            why = "draining" if self.draining else "model not loaded yet"
            await self._discard_body(headers, reader)
            await self._send(writer, 503, _error_body(f"not accepting requests: {why}"), close=True,
                             extra={"Retry-After": "1"})
            return False
        self.in_flight += 1
        self._idle.clear()
        try:
            try:
                length = _content_length(headers, self.config.max_infer_bytes)
                response_size = proto.parse_response_size(headers.get("x-response-size"))
                session_id = headers.get("x-session")
                if session_id is not None:
                    proto.check_session_id(session_id)
            except proto.ProtocolError as err:
                await self._discard_body(headers, reader)
                await self._send(writer, 400, _error_body(str(err)), close=not keep_alive)
                return keep_alive
            except _BadRequest as err:
                await self._send(writer, err.status, _error_body(str(err)), close=True)
                return False
            body = await reader.readexactly(length) if length else b""
            loop = asyncio.get_running_loop()
            try:
                data, service_us, cpu_us = await loop.run_in_executor(
                    self._executor, self.service.infer, body, session_id, response_size)
            except Exception as err:  # a bug or a runtime failure: answer 500, keep serving
                log.exception("inference failed")
                self.errors += 1
                await self._send(writer, 500, _error_body(f"inference failed: {err}"), close=not keep_alive)
                return keep_alive
            close = not keep_alive or self.draining
            await self._send(writer, 200, data, close=close, content_type="application/json",
                             extra={proto.H_SERVICE_TIME_US: str(service_us), proto.H_SERVICE_CPU_US: str(cpu_us)})
            return not close
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _export(self, headers, writer, keep_alive: bool) -> None:
        try:
            max_rate = proto.parse_max_rate(headers.get(proto.H_MAX_RATE.lower()))
        except proto.ProtocolError as err:
            await self._send(writer, 400, _error_body(str(err)), close=not keep_alive)
            return
        if max_rate:
            _pace(writer, max_rate)
        loop = asyncio.get_running_loop()
        total, natural, pieces = await loop.run_in_executor(self._executor, self.service.export_state)
        head = _head(200, total, "application/octet-stream", not keep_alive, self._common_headers(
            {"X-State-Bytes": str(total), "X-State-Natural-Bytes": str(natural)}))
        writer.write(head)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()

    async def _import(self, headers, reader, writer, keep_alive: bool) -> None:
        try:
            length = _content_length(headers, self.config.max_state_bytes)
        except _BadRequest as err:
            await self._send(writer, err.status, _error_body(str(err)), close=True)
            raise ConnectionError("unreadable state upload") from None
        buf = bytearray()
        while len(buf) < length:
            chunk = await reader.read(min(_READ_CHUNK, length - len(buf)))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buf), length)
            buf += chunk
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(self._executor, self.service.import_state, buf)
        except StateConflict as err:
            await self._send(writer, 409, _error_body(str(err)), close=not keep_alive)
            return
        except proto.ProtocolError as err:
            await self._send(writer, 400, _error_body(str(err)), close=not keep_alive)
            return
        await self._send_json(writer, 200, {"imported": True, **info}, keep_alive)

    async def _discard_body(self, headers, reader, allow: bool = False) -> None:
        if allow:
            return
        try:
            length = _content_length(headers, self.config.max_infer_bytes)
        except _BadRequest:
            raise ConnectionError("unreadable body") from None
        while length > 0:
            chunk = await reader.read(min(_READ_CHUNK, length))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(chunk)

    def stats(self) -> dict:
        served = self.service.served
        return {
            "service": self.config.service, "model": self.config.model, "site": self.config.site,
            "instance": self.instance, "pid": os.getpid(), "ready": self.ready, "draining": self.draining,
            "served": served, "in_flight": self.in_flight, "refused": self.refused, "errors": self.errors,
            "mean_service_time_us": round(self.service.service_time_us_total / served, 1) if served else None,
            "sessions": len(self.service.sessions), "state_size": self.config.state_size,
            "threads": self.config.threads, "workers": self.config.workers, "scheduling": self.scheduling,
            "uptime_s": round(time.time() - self.started_unix, 3),
        }

    def _common_headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {proto.H_SITE: self.config.site, proto.H_SERVICE: self.config.service, proto.H_INSTANCE: self.instance}
        if extra:
            out.update(extra)
        return out

    async def _send(self, writer, status: int, body: bytes, *, close: bool,
                    content_type: str = "application/json", extra: dict[str, str] | None = None) -> None:
        writer.write(_head(status, len(body), content_type, close, self._common_headers(extra)) + body)
        await writer.drain()

    async def _send_json(self, writer, status: int, obj: dict, keep_alive: bool) -> None:
        await self._send(writer, status, json.dumps(obj, sort_keys=True).encode(), close=not keep_alive)


def _pace(writer, bytes_per_s: int) -> None:
    """Cap this connection's send rate in the kernel (TCP pacing, no qdisc needed).

    A state copy at line rate is a burst the emulated data plane shares with every
    other service's packets; paced, it is a steady stream of the asked rate.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, proto.SO_MAX_PACING_RATE, bytes_per_s)


def _announce(event: dict) -> None:
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _head(status: int, length: int, content_type: str, close: bool, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Content-Length: {length}",
             f"Content-Type: {content_type}", f"Connection: {'close' if close else 'keep-alive'}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text[:-4].split("\r\n")
        method, path, version = request_line.split(" ")
    except ValueError:
        raise _BadRequest(400, "malformed request line; send 'METHOD /path HTTP/1.1'") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(400, f"unsupported protocol {version[:20]!r}; use HTTP/1.1")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, f"malformed header line {line[:40]!r}")
        headers[name.lower()] = value.strip()
    return method, path, version, headers


def _wants_keep_alive(version: str, headers: dict[str, str]) -> bool:
    conn = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return conn == "keep-alive"
    return conn != "close"


def _content_length(headers: dict[str, str], limit: int) -> int:
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise _BadRequest(400, f"Content-Length {raw[:20]!r} is not a byte count")
    length = int(raw)
    if length > limit:
        raise _BadRequest(413, f"body of {length} bytes exceeds the limit of {limit}")
    return length


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twin.workloads.server",
                                description="Serve one inference service over HTTP/1.1 (docs/inference-protocol.md).")
    p.add_argument("--service", required=True, help="service id from the scenario (e.g. drive-assist)")
    p.add_argument("--model", required=True, choices=proto.MODEL_NAMES)
    p.add_argument("--site", required=True, help="site id this instance runs at (reported in X-Site)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0 = any free port; printed on stdout)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help=f"directory built by 'python -m twin.workloads.models --build' (default {default_models_dir()})")
    p.add_argument("--state-dir", type=Path, default=None,
                   help=f"load {STATE_FILE} from here at start, save it here on SIGTERM (cold migration)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--workers", type=int, default=1, help="requests computed at once (default 1)")
    p.add_argument("--rt-priority", type=int, default=0,
                   help="serve under SCHED_FIFO at this priority (1-98; 0: normal scheduling, the default)")
    p.add_argument("--state-size", type=int, default=0,
                   help="pad exported state to exactly this many bytes (scenario state_size)")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def config_from_args(argv: list[str] | None = None) -> ServerConfig:
    """Parse and validate the command line.

    Raises:
        ServerError / ProtocolError: a value is out of range or not an allowed id.
    """
    args = _parser().parse_args(argv)
    proto.check_service_id(args.service)
    proto.check_site_id(args.site)
    if not 0 <= args.port <= 65535:
        raise ServerError(f"--port {args.port} is out of range; use 0..65535")
    for flag, value, top in (("--threads", args.threads, 64), ("--workers", args.workers, 64)):
        if not 1 <= value <= top:
            raise ServerError(f"{flag} {value} is out of range; use 1..{top}")
    if not 0 <= args.rt_priority <= 98:
        raise ServerError(f"--rt-priority {args.rt_priority} is out of range; use 0 (normal) or 1..98")
    if args.state_size < 0:
        raise ServerError(f"--state-size {args.state_size} is negative; use a byte count >= 0")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return ServerConfig(service=args.service, model=args.model, site=args.site, port=args.port, bind=args.bind,
                        models_dir=args.models_dir, state_dir=args.state_dir, threads=args.threads,
                        workers=args.workers, state_size=args.state_size, rt_priority=args.rt_priority)


async def serve(config: ServerConfig) -> None:
    """Run a server until SIGTERM/SIGINT, then drain and return."""
    scheduling = apply_rt_priority(config.rt_priority)
    server = InferenceServer(config)
    server.scheduling = scheduling
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    await server.start()
    await server.serve_until_stopped()


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
        asyncio.run(serve(config))
    except TwinError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: cannot listen: {err.strerror or err}; choose another --port or --bind", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- a child process, for tests and tools


class ServerProcess:
    """Start ``python -m twin.workloads.server`` as a child and wait until it is ready.

    A context manager: leaving it sends SIGTERM (graceful drain) and waits, then
    SIGKILL if needed; only the child it started is ever signalled.
    """

    def __init__(self, service: str, model: str, site: str, *, models_dir: Path | str,
                 bind: str = "127.0.0.1", port: int = 0, extra_args: list[str] | None = None,
                 python: str = sys.executable, ready_timeout_s: float = 30.0):
        self.args = [python, "-m", "twin.workloads.server", "--service", service, "--model", model,
                     "--site", site, "--bind", bind, "--port", str(port), "--models-dir", str(models_dir),
                     *(extra_args or [])]
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.instance = ""
        self.host = bind
        self.stderr_file = None

    def start(self) -> ServerProcess:
        # stderr goes to a file, not a pipe: nobody reads it while the server runs,
        # and a full pipe would block the server mid-request.
        self.stderr_file = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.stderr_file)
        self._out = b""
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while True:
                line = self._readline(deadline)
                event = json.loads(line)
                if event.get("event") == "listening":
                    self.port, self.instance = int(event["port"]), event["instance"]
                elif event.get("event") == "ready":
                    return self
        except BaseException:
            self.stop()
            raise

    def _readline(self, deadline: float) -> str:
        # Raw reads and our own line buffer: a buffered text reader could swallow
        # both announcements in one read and leave select() waiting for nothing.
        import selectors

        fd = self.proc.stdout.fileno()
        while b"\n" not in self._out:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    raise ServerError(f"server did not become ready within {self.ready_timeout_s} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                err = self.stderr_text().strip().splitlines()
                raise ServerError(f"server exited with {self.proc.wait()}: {err[-1] if err else 'no message'}")
            self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        return line.decode()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout_s``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (its log)."""
        self.stderr_file.seek(0)
        return self.stderr_file.read()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
