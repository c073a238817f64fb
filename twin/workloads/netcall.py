"""One small HTTP call made from inside a site's namespace (``python -m twin.workloads.netcall``).

The orchestrator lives in the root namespace and cannot reach an instance's
loopback or VIP from there; it runs this module through ``mnexec -a PID`` in
the compute host instead. ``--until STATUS --within S`` polls (every 50 ms)
until the answer has that status, so waiting for readiness costs one process,
not one per poll. Prints one JSON line: status, elapsed seconds, body (text,
first 4 KiB); exit 0 when the wanted status came, 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from urllib.parse import urlsplit


def call(method: str, url: str, *, timeout_s: float = 10.0, body: bytes | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    try:
        conn.request(method, parts.path or "/", body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read(4096)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.workloads.netcall", description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["GET", "POST", "PUT", "DELETE"])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-attempt socket timeout, seconds")
    parser.add_argument("--until", type=int, default=None, help="poll until this HTTP status comes")
    parser.add_argument("--within", type=float, default=30.0, help="give up polling after this many seconds")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    status, body, error = 0, b"", None
    while True:
        try:
            status, body = call(args.method, args.url, timeout_s=args.timeout)
            error = None
        except OSError as err:
            status, error = 0, str(err)
        if args.until is None or status == args.until or time.monotonic() - t0 > args.within:
            break
        time.sleep(0.05)
    result = {"status": status, "seconds": round(time.monotonic() - t0, 4),
              "body": body.decode(errors="replace"), "error": error}
    print(json.dumps(result))
    wanted = args.until if args.until is not None else status
    return 0 if status == wanted and status != 0 else 1


if __name__ == "__main__":
    sys.exit(main())
