"""TCP server and clients for the service-steering integration test (run inside Mininet hosts).

    serve --bind VIP --port P --site S     answer each line with "S\\n"; after an upload
                                           (client half-close) answer "S <bytes>\\n"
    hold --dst VIP --port P --duration D   one connection, a line every --interval s;
                                           prints JSON {"replies": [[t_s, site], ...], "error": ...}
    load --dst VIP --port P --rate R --duration D --size B
                                           open-loop uploads of B bytes on new connections;
                                           prints JSON {"sites": {site: n}, "failures": [...], "sent": n}
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def serve(bind: str, port: int, site: str) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            received = 0
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                if line == b"ping\n":
                    self.wfile.write(f"{site}\n".encode())
                    self.wfile.flush()
                else:
                    received += len(line)
            if received:
                self.wfile.write(f"{site} {received}\n".encode())

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 256

    with Server((bind, port), Handler) as server:
        server.serve_forever()


def hold(dst: str, port: int, duration_s: float, interval_s: float) -> dict:
    replies, error = [], None
    t0 = time.monotonic()
    try:
        with socket.create_connection((dst, port), timeout=5) as sock:
            reader = sock.makefile("rb")
            while time.monotonic() - t0 < duration_s:
                sock.sendall(b"ping\n")
                line = reader.readline()
                if not line:
                    raise ConnectionError("server closed the connection")
                replies.append([round(time.monotonic() - t0, 4), line.decode().strip()])
                time.sleep(interval_s)
    except OSError as err:
        error = f"{type(err).__name__}: {err} after {time.monotonic() - t0:.3f} s"
    return {"replies": replies, "error": error}


def upload(dst: str, port: int, size: int) -> str:
    # Lines of 1,000 bytes so the server counts them; the reply names the answering site.
    payload = (b"x" * 999 + b"\n") * (size // 1000)
    with socket.create_connection((dst, port), timeout=5) as sock:
        sock.settimeout(5)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = sock.makefile("rb").readline().decode().split()
    if len(reply) != 2 or int(reply[1]) != len(payload):
        raise ConnectionError(f"bad reply {reply!r} for {len(payload)} bytes")
    return reply[0]


def load(dst: str, port: int, rate: float, duration_s: float, size: int) -> dict:
    sites: dict[str, int] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def one(t_s: float) -> None:
        try:
            site = upload(dst, port, size)
            with lock:
                sites[site] = sites.get(site, 0) + 1
        except (OSError, ValueError) as err:
            with lock:
                failures.append(f"t={t_s:.3f}s {type(err).__name__}: {err}")

    count = int(rate * duration_s)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=128) as pool:
        for i in range(count):
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i / rate)
    return {"sites": sites, "failures": failures, "sent": count}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--site", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--dst", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--duration", type=float, required=True)
    h.add_argument("--interval", type=float, default=0.05)
    ld = sub.add_parser("load")
    ld.add_argument("--dst", required=True)
    ld.add_argument("--port", type=int, required=True)
    ld.add_argument("--rate", type=float, required=True)
    ld.add_argument("--duration", type=float, required=True)
    ld.add_argument("--size", type=int, default=20000)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.bind, args.port, args.site)
    elif args.cmd == "hold":
        print(json.dumps(hold(args.dst, args.port, args.duration, args.interval)))
    else:
        print(json.dumps(load(args.dst, args.port, args.rate, args.duration, args.size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
