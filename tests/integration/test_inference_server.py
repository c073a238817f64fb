"""The real inference server as a child process on loopback, and the load generator against it.

No root: every server binds 127.0.0.1 on a port the kernel picks (``--port 0``,
read back from the server's "listening" line). Every child is stopped by the
fixtures, also when a test fails.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from twin.workloads.loadgen import LoadConfig, run_load
from twin.workloads.models import build_models
from twin.workloads.server import ServerProcess
from twin.workloads.stats import read_requests_csv

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    build_models(directory)
    return directory


@pytest.fixture
def start_server(models_dir):
    started: list[ServerProcess] = []

    def start(service: str, model: str, site: str = "fuk", *extra: str) -> ServerProcess:
        server = ServerProcess(service, model, site, models_dir=models_dir, extra_args=list(extra))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def call(server: ServerProcess, method: str, path: str, body: bytes = b"", headers: dict | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def infer(server: ServerProcess, body: bytes, session: str | None = None, size: int = 0):
    headers = {"X-Response-Size": str(size)}
    if session:
        headers["X-Session"] = session
    return call(server, "POST", "/infer", body, headers)


def test_each_model_answers_with_its_headers(start_server):
    body = np.random.default_rng(0).bytes(20_000)
    for service, model, classes in (("drive-assist", "sensor-fusion-mlp", 8), ("farm-images", "farm-cnn", 10),
                                    ("echo", "echo", None)):
        server = start_server(service, model, "osa")
        status, headers, data = infer(server, body, size=4096)
        assert status == 200
        assert headers["x-site"] == "osa" and headers["x-instance"] == server.instance
        assert int(headers["x-service-time-us"]) >= 0 and len(data) == 4096
        answer = json.loads(data)
        assert answer["model"] == model
        if classes is None:
            assert answer["bytes"] == 20_000 and len(answer["digest"]) == 16
        else:
            assert len(answer["logits"]) == classes and 0 <= answer["class"] < classes
            # Same bytes, same answer: the input derivation is deterministic (stateless call).
            assert json.loads(infer(server, body)[2])["logits"] == answer["logits"]
        stats = json.loads(call(server, "GET", "/stats")[2])
        assert stats["served"] == (1 if classes is None else 2) and stats["model"] == model
    # The CNN really computes: its service time is well above the echo's.
    cnn = start_server("farm-images", "farm-cnn", "tyo")
    echo = start_server("echo", "echo", "tyo")
    cnn_us = int(infer(cnn, body)[1]["x-service-time-us"])
    echo_us = int(infer(echo, body)[1]["x-service-time-us"])
    assert cnn_us > 10 * max(echo_us, 1)


def test_stateful_answer_depends_on_session_history(start_server):
    server = start_server("drive-assist", "sensor-fusion-mlp")
    rng = np.random.default_rng(1)
    request, other = rng.bytes(16384), rng.bytes(16384)
    first = json.loads(infer(server, request, "car-a")[2])
    second = json.loads(infer(server, request, "car-a")[2])
    assert first["session_requests"] == 1 and second["session_requests"] == 2
    assert first["logits"] != second["logits"]
    # A fresh session with the same request answers like car-a's first request did...
    assert json.loads(infer(server, request, "car-b")[2])["logits"] == first["logits"]
    # ...and a different history gives a different answer to the same request.
    infer(server, other, "car-c")
    assert json.loads(infer(server, request, "car-c")[2])["logits"] != second["logits"]


def test_drain_finishes_in_flight_and_refuses_new(start_server):
    server = start_server("farm-images", "farm-cnn")
    body = np.random.default_rng(2).bytes(100_000)
    results: list[int] = []

    def one():
        results.append(infer(server, body)[0])

    # Five CNN requests (~40 ms each, one computed at a time) are in flight when the drain starts.
    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    # Drain only once all five were accepted (a request arriving after the drain is new
    # and refused, correctly) while at least two are still in flight.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = json.loads(call(server, "GET", "/stats")[2])
        if stats["served"] + stats["in_flight"] >= 5 and stats["in_flight"] >= 2:
            break
        time.sleep(0.002)
    status, _, data = call(server, "POST", "/drain")
    drained = json.loads(data)
    for t in threads:
        t.join()
    assert status == 200 and drained["waited_for"] >= 2
    assert results == [200] * 5  # every in-flight request finished
    assert json.loads(call(server, "GET", "/stats")[2])["in_flight"] == 0
    status, headers, _ = infer(server, body)
    assert status == 503 and headers["connection"] == "close"
    assert call(server, "GET", "/readyz")[0] == 503 and call(server, "GET", "/healthz")[0] == 200
    # Resuming (a migration rolled back) serves again.
    assert call(server, "POST", "/resume")[0] == 200
    assert infer(server, body)[0] == 200 and call(server, "GET", "/readyz")[0] == 200


def test_sigterm_drains_and_exits_zero(start_server, tmp_path):
    server = start_server("drive-assist", "sensor-fusion-mlp", "fuk", "--state-dir", str(tmp_path),
                          "--state-size", "3000000")
    infer(server, b"x" * 4096, "car-z")
    cnn = start_server("farm-images", "farm-cnn")
    results = []
    thread = threading.Thread(target=lambda: results.append(infer(cnn, b"y" * 10_000)[0]))
    thread.start()
    deadline = time.monotonic() + 10
    while json.loads(call(cnn, "GET", "/stats")[2])["in_flight"] < 1 and time.monotonic() < deadline:
        time.sleep(0.002)
    cnn.proc.send_signal(signal.SIGTERM)
    server.proc.send_signal(signal.SIGTERM)
    assert cnn.proc.wait(10) == 0 and server.proc.wait(10) == 0
    thread.join()
    assert results == [200]  # the request in flight at SIGTERM was answered
    # The stateful one saved its state for a cold restart, padded to the size asked.
    saved = tmp_path / "state.bin"
    assert saved.stat().st_size == 3_000_000
    again = start_server("drive-assist", "sensor-fusion-mlp", "osa", "--state-dir", str(tmp_path))
    assert json.loads(infer(again, b"x" * 4096, "car-z")[2])["session_requests"] == 2


def test_state_moves_and_the_second_instance_answers_as_the_first(start_server):
    size = 4 * 1024 * 1024
    src = start_server("drive-assist", "sensor-fusion-mlp", "fuk", "--state-size", str(size))
    dst = start_server("drive-assist", "sensor-fusion-mlp", "osa", "--state-size", str(size))
    rng = np.random.default_rng(3)
    for i in range(20):
        infer(src, rng.bytes(16384), f"car-{i % 4}")
    status, headers, blob = call(src, "GET", "/state")
    assert status == 200 and len(blob) == size == int(headers["x-state-bytes"])
    assert int(headers["x-state-natural-bytes"]) < size
    status, _, data = call(dst, "PUT", "/state", blob)
    assert status == 200 and json.loads(data)["sessions"] == 4
    probe = rng.bytes(16384)
    a = json.loads(infer(src, probe, "car-2")[2])
    b = json.loads(infer(dst, probe, "car-2")[2])
    assert a["logits"] == b["logits"] and a["session_requests"] == b["session_requests"] == 6
    assert a["site"] == "fuk" and b["site"] == "osa"
    # A corrupted copy is refused and leaves the destination's state alone.
    bad = bytearray(blob)
    bad[size // 2] ^= 0xFF
    status, _, data = call(dst, "PUT", "/state", bytes(bad))
    assert status == 400 and b"checksum" in data
    assert json.loads(call(dst, "GET", "/stats")[2])["sessions"] == 4
    # State of another service is a conflict, not a format error.
    other = start_server("farm-images", "farm-cnn")
    assert call(other, "PUT", "/state", blob)[0] == 409


def test_paced_state_copy_keeps_to_its_rate(start_server):
    from twin.workloads.transfer import copy_state

    size = 3 * 1024 * 1024
    src = start_server("drive-assist", "sensor-fusion-mlp", "fuk", "--state-size", str(size))
    dst = start_server("drive-assist", "sensor-fusion-mlp", "osa", "--state-size", str(size))
    rate = 2 * 1024 * 1024  # bytes/s: the copy cannot take less than 1.5 s
    paced = copy_state(f"http://127.0.0.1:{src.port}/state", f"http://127.0.0.1:{dst.port}/state", max_rate=rate)
    assert paced["bytes"] == size
    assert paced["network_seconds"] >= 0.8 * size / rate
    # a rate the server cannot take is a 400 naming the header, and nothing moves
    status, _, body = call(src, "GET", "/state", headers={"X-Max-Rate": "fast"})
    assert status == 400 and b"X-Max-Rate" in body


def test_bad_requests_get_clear_statuses(start_server):
    server = start_server("drive-assist", "sensor-fusion-mlp")
    assert call(server, "GET", "/nope")[0] == 404
    assert call(server, "GET", "/infer")[0] == 405
    status, _, data = infer(server, b"abc", session="bad session")
    assert status == 400 and b"X-Session" in data
    status, _, data = call(server, "POST", "/infer", b"", {"X-Response-Size": "lots"})
    assert status == 400 and b"X-Response-Size" in data
    # Keep-alive works: two requests on one connection.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(2):
        conn.request("POST", "/infer", body=b"k" * 100)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Connection") == "keep-alive"
        resp.read()
    conn.close()


def test_bad_command_line_fails_with_one_line(models_dir, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "twin.workloads.server", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    res = run("--service", "drive-assist", "--model", "farm-cnn", "--site", "fuk", "--port", "0",
              "--models-dir", str(tmp_path / "empty"))
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "--build" in res.stderr
    res = run("--service", "Drive Assist", "--model", "echo", "--site", "fuk")
    assert res.returncode != 0 and "service id" in res.stderr


def test_loadgen_records_every_request(start_server, tmp_path):
    server = start_server("drive-assist", "sensor-fusion-mlp")
    out = tmp_path / "fuk.csv"
    config = LoadConfig(host="127.0.0.1", port=server.port, rate_per_s=50, duration_s=3, request_size=16384,
                        response_size=1024, region="fuk", service="drive-assist", sessions=5, seed=11)
    result = asyncio.run(run_load(config, out))
    rows = read_requests_csv(out)
    assert result.sent > 100  # 150 expected; 5 sd of a Poisson count is ~61
    assert len(rows) == len(result.records) == result.sent
    assert all(r.outcome == "ok" and r.status == 200 and r.site == "fuk" for r in rows)
    assert {r.instance for r in rows} == {server.instance}
    assert all(r.latency_ms > 0 and r.service_time_us is not None for r in rows)
    assert json.loads(call(server, "GET", "/stats")[2])["served"] == result.sent
    # Open loop: sends follow the Poisson schedule, not the answers.
    assert rows and max(r.send_unix for r in rows) - min(r.send_unix for r in rows) > 2.0


def test_drain_closes_idle_kept_alive_connections_and_answers_busy_ones_with_close(start_server):
    import socket

    server = start_server("echo", "echo")
    request = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"

    def answer(sock: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(v for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                          if k.lower() == b"content-length"))
        while len(body) < length:
            body += sock.recv(4096)
        return head

    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    fresh = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        idle.sendall(request)
        assert b"connection: close" not in answer(idle).lower()  # kept alive
        status, _, body = call(server, "POST", "/drain")
        assert status == 200 and json.loads(body)["drained"]
        # the kept-alive connection, idle when the drain began, is closed by the server:
        # its client's next request goes to a new connection (steered to the new site)
        assert idle.recv(100) == b""
        # a connection that has not sent its first request yet is left alone (refused, not cut)
        fresh.sendall(request)
        head = answer(fresh)
        assert head.startswith(b"HTTP/1.1 503") and b"connection: close" in head.lower()
    finally:
        idle.close()
        fresh.close()


def test_loadgen_records_refusals_and_timeouts(start_server, tmp_path):
    server = start_server("echo", "echo")
    port = server.port
    call(server, "POST", "/drain")
    config = LoadConfig(host="127.0.0.1", port=port, rate_per_s=40, duration_s=0.5, request_size=100,
                        response_size=0, region="fuk", service="echo")
    drained = asyncio.run(run_load(config, tmp_path / "a.csv"))
    assert drained.sent > 0 and drained.outcomes["refused"] == drained.sent
    assert all(r.status == 503 for r in read_requests_csv(tmp_path / "a.csv"))
    server.stop()
    closed = asyncio.run(run_load(config, tmp_path / "b.csv"))  # nobody listens now
    assert closed.sent > 0 and closed.outcomes["refused"] == closed.sent
    # A listener that never answers: every request times out, and is still a row.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(100)
        cfg = LoadConfig(host="127.0.0.1", port=silent.getsockname()[1], rate_per_s=40, duration_s=0.5,
                         request_size=100, response_size=0, region="fuk", service="echo", timeout_s=0.3)
        silent_run = asyncio.run(run_load(cfg, tmp_path / "c.csv"))
    rows = read_requests_csv(tmp_path / "c.csv")
    assert silent_run.sent > 0 and len(rows) == silent_run.sent
    assert all(r.outcome == "timeout" and r.latency_ms is None for r in rows)


def test_loadgen_cli_sigterm_stops_early_and_keeps_every_row(start_server, tmp_path):
    server = start_server("echo", "echo")
    out = tmp_path / "cli.csv"
    proc = subprocess.Popen([sys.executable, "-m", "twin.workloads.loadgen", "--target", server.address,
                             "--rate", "100", "--duration", "60", "--request-size", "1000", "--response-size", "100",
                             "--region", "fuk", "--service", "echo", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Rows reach the file while it runs (flushed at least once a second); start-up
        # time varies with the machine's load, so wait for them rather than a fixed time.
        # Count complete lines only: the writer may be mid-row.
        rows_so_far = lambda: out.read_bytes().count(b"\n") - 1 if out.exists() else 0  # noqa: E731
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and rows_so_far() <= 50:
            time.sleep(0.2)
        assert proc.poll() is None and rows_so_far() > 50
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    rows = read_requests_csv(out)
    assert len(rows) == summary["sent"] < 6000 and all(r.outcome == "ok" for r in rows)
    assert json.loads(call(server, "GET", "/stats")[2])["served"] == summary["sent"]
