"""Benchmark: what one inference instance sustains here, and what the load generator costs.

1. Capacity per model: one server (``--threads 1 --workers 1``) on loopback, one
   closed-loop client thread sending the scenario's request sizes back to back
   for ``--seconds``, twice: on one kept-alive connection (the server's own
   ceiling) and with a new connection per request (how the twin's clients
   talk). Reports requests/s, client latency p50/p99, the server-reported
   service time p50/p99 and the server's CPU per request (/proc/PID/stat).
2. Load generator overhead: ``run_load`` in this process against the echo
   model at 50, 200 and 1,000 requests/s for ``--seconds``: CPU of the
   generator per request, send lateness against the Poisson schedule
   (p50/p99/max) and outcomes.

Both ends share the machine's 2 cores, so the figures are for "client and
server on one box"; run it on a quiet machine.

Usage: ``python benchmarks/inference.py [--seconds 5] [--out bench-results/inference.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from twin.tables import format_table
from twin.workloads.loadgen import LoadConfig, run_load
from twin.workloads.models import build_models
from twin.workloads.server import ServerProcess
from twin.workloads.stats import percentile

# (service, model, request bytes, response bytes): the spring-day scenario's sizes, echo small.
CASES = (
    ("echo", "echo", 1024, 128),
    ("drive-assist", "sensor-fusion-mlp", 16 * 1024, 1024),
    ("farm-images", "farm-cnn", 1_000_000, 4096),
)
LOAD_RATES = (50, 200, 1000)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def closed_loop(server: ServerProcess, request: bytes, response_size: int, seconds: float,
                keep_alive: bool) -> dict:
    headers = {"X-Response-Size": str(response_size), "X-Session": "bench-1"}
    if not keep_alive:
        headers["Connection"] = "close"
    latencies_ms, service_us = [], []
    conn = None
    cpu0 = _cpu_s(server.proc.pid)
    t_end = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/infer", body=request, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies_ms.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            raise SystemExit(f"server answered {resp.status}; the benchmark needs 200s")
        service_us.append(int(resp.getheader("X-Service-Time-Us")))
        if not keep_alive:
            conn.close()
            conn = None
    wall = time.perf_counter() - t_start
    if conn is not None:
        conn.close()
    n = len(latencies_ms)
    return {"requests": n, "rps": round(n / wall, 1),
            "latency_p50_ms": round(percentile(latencies_ms, 50), 3),
            "latency_p99_ms": round(percentile(latencies_ms, 99), 3),
            "service_p50_us": percentile(service_us, 50), "service_p99_us": percentile(service_us, 99),
            "server_cpu_per_request_us": round((_cpu_s(server.proc.pid) - cpu0) / n * 1e6, 1)}


def loadgen_overhead(server: ServerProcess, rate: float, seconds: float) -> dict:
    config = LoadConfig(host="127.0.0.1", port=server.port, rate_per_s=rate, duration_s=seconds,
                        request_size=1024, response_size=128, region="fuk", service="echo", seed=1)
    result = asyncio.run(run_load(config))
    late = result.lateness_us
    lat = [r.latency_ms for r in result.records if r.ok]
    return {"rate": rate, "sent": result.sent, "achieved_rps": round(result.sent / result.wall_s, 1),
            "outcomes": result.outcomes,
            "cpu_per_request_us": round(result.cpu_s / max(result.sent, 1) * 1e6, 1),
            "cpu_share_of_core": round(result.cpu_s / result.wall_s, 3),
            "late_p50_us": round(percentile(late, 50), 1), "late_p99_us": round(percentile(late, 99), 1),
            "late_max_us": round(max(late), 1),
            "latency_p50_ms": round(percentile(lat, 50), 3) if lat else None,
            "latency_p99_ms": round(percentile(lat, 99), 3) if lat else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--out", default="bench-results/inference.json")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    capacity = []
    with tempfile.TemporaryDirectory(prefix="twin-bench-models-") as models_dir:
        build_models(models_dir)
        for service, model, req_bytes, resp_bytes in CASES:
            request = rng.bytes(req_bytes)
            with ServerProcess(service, model, "fuk", models_dir=models_dir) as server:
                for keep_alive in (True, False):
                    row = closed_loop(server, request, resp_bytes, args.seconds, keep_alive)
                    capacity.append({"model": model, "request_bytes": req_bytes,
                                     "connection": "keep-alive" if keep_alive else "per request", **row})
        with ServerProcess("echo", "echo", "fuk", models_dir=models_dir) as server:
            overhead = [loadgen_overhead(server, rate, args.seconds) for rate in LOAD_RATES]

    print(f"Capacity of one instance (closed loop, 1 client thread, {args.seconds:g} s each; "
          "client and server on the same 2 cores)")
    print(format_table(
        ["model", "req B", "connection", "req/s", "lat p50 ms", "lat p99 ms", "svc p50 us", "svc p99 us",
         "server CPU/req us"],
        [[r["model"], r["request_bytes"], r["connection"], r["rps"], r["latency_p50_ms"], r["latency_p99_ms"],
          r["service_p50_us"], r["service_p99_us"], r["server_cpu_per_request_us"]] for r in capacity]))
    print(f"\nLoad generator overhead (open loop, Poisson, echo model, 1 KiB requests, {args.seconds:g} s each)")
    print(format_table(
        ["rate/s", "sent", "ok", "gen CPU/req us", "gen CPU share", "late p50 us", "late p99 us", "late max us",
         "lat p50 ms", "lat p99 ms"],
        [[o["rate"], o["sent"], o["outcomes"]["ok"], o["cpu_per_request_us"], o["cpu_share_of_core"],
          o["late_p50_us"], o["late_p99_us"], o["late_max_us"], o["latency_p50_ms"], o["latency_p99_ms"]]
         for o in overhead]))

    result = {"capacity": capacity, "loadgen": overhead, "seconds": args.seconds,
              "python": platform.python_version(), "host": socket.gethostname(),
              "cpus": os.cpu_count(), "recorded_unix": round(time.time()),
              # Other processes on the same 2 cores change every figure here: say how busy it was.
              "loadavg_1min_before": round(load_before[0], 2), "loadavg_1min_after": round(os.getloadavg()[0], 2)}
    out = Path(args.out)
    print(f"\nload average (1 min) before/after: {result['loadavg_1min_before']} / {result['loadavg_1min_after']}"
          f" on {os.cpu_count()} CPUs")
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
