"""The load generator's connections: one per request, or kept alive and retried once when closed under a request.

Real sockets on loopback against a small scripted HTTP server in the same event
loop, so each test decides exactly when the server answers or hangs up.
"""

from __future__ import annotations

import asyncio

import pytest

from twin.workloads.loadgen import LoadConfig, run_load

pytestmark = pytest.mark.timeout(60)


class ScriptedServer:
    """HTTP/1.1 on 127.0.0.1; ``hang_up_on(conn_no, request_no)`` closes without answering."""

    def __init__(self, hang_up=lambda conn_no, request_no: False):
        self.hang_up = hang_up
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self.port = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer):
        self.connections += 1
        conn_no, request_no = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                request_no += 1
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(headers)
                if self.hang_up(conn_no, request_no):
                    return  # as a draining server closing a connection the request raced
                close = headers.get("connection", "").lower() == "close"
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Site: fuk\r\n%s\r\n%s"
                             % (len(body), b"Connection: close\r\n" if close else b"", body))
                await writer.drain()
                if close:
                    return
        finally:
            writer.close()


def config(port: int, keep_alive: bool, n_per_s: float = 200.0, seconds: float = 0.25) -> LoadConfig:
    return LoadConfig(host="127.0.0.1", port=port, rate_per_s=n_per_s, duration_s=seconds, request_size=3000,
                      response_size=0, region="fuk", service="drive-assist", timeout_s=5.0, seed=3,
                      keep_alive=keep_alive)


def test_per_request_mode_opens_one_connection_per_request():
    async def go():
        async with ScriptedServer() as server:
            result = await run_load(config(server.port, keep_alive=False))
            return server, result

    server, result = asyncio.run(go())
    assert result.sent > 20
    assert result.outcomes["ok"] == result.sent
    assert result.connections == result.sent == server.connections
    assert all(h.get("connection") == "close" for h in server.requests)


def test_kept_alive_connections_are_reused():
    async def go():
        async with ScriptedServer() as server:
            result = await run_load(config(server.port, keep_alive=True))
            return server, result

    server, result = asyncio.run(go())
    assert result.outcomes["ok"] == result.sent > 20
    # requests overlap only now and then at 200/s on loopback: a few connections carry them all
    assert server.connections == result.connections <= result.sent // 4
    assert not any("connection" in h for h in server.requests)
    assert result.retried == 0


def test_request_on_a_connection_closed_under_it_is_sent_again_once():
    # the first connection's 3rd request meets a server that hangs up instead of answering
    async def go():
        async with ScriptedServer(hang_up=lambda c, r: (c, r) == (1, 3)) as server:
            result = await run_load(config(server.port, keep_alive=True, n_per_s=50, seconds=0.5))
            return server, result

    server, result = asyncio.run(go())
    assert result.retried == 1
    assert result.outcomes["ok"] == result.sent
    assert len(server.requests) == result.sent + 1  # the lost one arrived twice


def test_a_new_connection_closed_before_an_answer_is_an_error_not_retried():
    async def go():
        async with ScriptedServer(hang_up=lambda c, r: c == 1) as server:
            result = await run_load(config(server.port, keep_alive=True, n_per_s=50, seconds=0.3))
            return result

    result = asyncio.run(go())
    assert result.retried == 0
    assert result.outcomes["error"] >= 1
    assert result.outcomes["ok"] == result.sent - result.outcomes["error"]
