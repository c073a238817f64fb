"""Copy a service's state from one instance to another: ``GET src/state`` -> ``PUT dst/state``.

Run inside the destination site's compute host (``python -m twin.workloads.transfer``)
so that the bytes cross the emulated network on the path between the two sites:
the source is addressed by its APN address, the destination by loopback. The
body is streamed in 64 KiB chunks, never held whole in memory. Prints one JSON
line: bytes moved and the time of the whole copy and of the network part.

``--max-rate`` asks the source to pace the answer (``X-Max-Rate``, TCP pacing in
the source's kernel): the copy then shares the emulated data plane with the
services' own traffic instead of flooding it, as operators cap migration
bandwidth on a production network.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from urllib.parse import urlsplit

from twin.workloads.protocol import H_MAX_RATE

CHUNK = 64 * 1024


def _connect(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r}: only http://HOST:PORT/PATH URLs are supported")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    return conn, parts.path or "/"


def copy_state(src_url: str, dst_url: str, *, timeout_s: float = 120.0, max_rate: int = 0) -> dict:
    """Stream the state from ``src_url`` into ``dst_url``; raise OSError/RuntimeError on failure.

    ``max_rate``: bytes/s the source may send at most (0: unpaced).
    """
    t0 = time.monotonic()
    src, src_path = _connect(src_url, timeout_s)
    dst, dst_path = _connect(dst_url, timeout_s)
    try:
        src.request("GET", src_path, headers={H_MAX_RATE: str(max_rate)} if max_rate else {})
        response = src.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {src_url}: HTTP {response.status} {response.read(200)!r}")
        length = int(response.getheader("Content-Length", "-1"))
        if length < 0:
            raise RuntimeError(f"GET {src_url}: no Content-Length")
        t_first = time.monotonic()
        dst.putrequest("PUT", dst_path)
        dst.putheader("Content-Length", str(length))
        dst.putheader("Content-Type", "application/octet-stream")
        dst.endheaders()
        moved = 0
        while moved < length:
            chunk = response.read(min(CHUNK, length - moved))
            if not chunk:
                raise RuntimeError(f"GET {src_url}: connection closed after {moved} of {length} bytes")
            dst.send(chunk)
            moved += len(chunk)
        t_received = time.monotonic()
        answer = dst.getresponse()
        body = answer.read(2000)
        if answer.status not in (200, 204):
            raise RuntimeError(f"PUT {dst_url}: HTTP {answer.status} {body!r}")
    finally:
        src.close()
        dst.close()
    t_done = time.monotonic()
    return {"bytes": moved, "seconds": t_done - t0, "network_seconds": t_received - t0,
            "first_byte_seconds": t_first - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.workloads.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="state URL of the source instance")
    parser.add_argument("--dst", required=True, help="state URL of the destination instance")
    parser.add_argument("--timeout", type=float, default=120.0, help="socket timeout in seconds")
    parser.add_argument("--max-rate", type=int, default=0, help="bytes/s the source may send at most (0: unpaced)")
    args = parser.parse_args(argv)
    if args.max_rate < 0:
        parser.error(f"--max-rate {args.max_rate} must be >= 0 bytes/s")
    try:
        result = copy_state(args.src, args.dst, timeout_s=args.timeout, max_rate=args.max_rate)
    except (OSError, RuntimeError, ValueError) as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
