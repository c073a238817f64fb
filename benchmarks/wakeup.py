"""How late a sleeping real-time task wakes, per CPU, with and without an idle poller.

The delay engine sleeps on a timer until just before each departure, and is woken
when a frame arrives. On an idle CPU in a virtual machine both wake-ups go through
the hypervisor (the vCPU halted), and that is where the twin's millisecond outliers
came from (twin/emulation/idle_poll.py). This measures it directly, in the spirit
of cyclictest:

* timer: a SCHED_FIFO process pinned to the CPU sleeps to absolute deadlines
  every ``--period-us`` (``clock_nanosleep``, timer slack 1 ns); lateness = wake-up
  time - deadline.
* cross-CPU: a process on another CPU writes its clock into a pipe every period;
  the SCHED_FIFO reader on the measured CPU records read time - write time.

each once with the CPU left to halt and once with the twin's idle poller on it
(``IdlePollers``: SCHED_IDLE, ``sched_yield`` loop). Run with the twin down::

    sudo .venv/bin/python benchmarks/wakeup.py [--seconds 10] [--period-us 1000] [--out bench-results/wakeup.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import percentile, write_result  # noqa: E402
from twin.emulation.delay_engine import set_timer_slack_ns  # noqa: E402
from twin.emulation.idle_poll import IdlePollers  # noqa: E402

RT_PRIORITY = 20
CLOCK_MONOTONIC = 1
TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _realtime_on(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))


def _timer(cpu: int, seconds: float, period_ns: int, out) -> None:
    _realtime_on(cpu)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    set_timer_slack_ns(1)  # no batching of our wake-ups, as in the delay engine
    now = time.clock_gettime_ns
    deadline = now(time.CLOCK_MONOTONIC)
    end = deadline + int(seconds * 1e9)
    late = []
    while deadline < end:
        deadline += period_ns
        ts = _Timespec(deadline // 1_000_000_000, deadline % 1_000_000_000)
        libc.clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ctypes.byref(ts), None)
        late.append(now(time.CLOCK_MONOTONIC) - deadline)
    out.send(late)


def _writer(cpu: int, seconds: float, period_ns: int, fd: int) -> None:
    os.sched_setaffinity(0, {cpu})
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(period_ns / 1e9)
        os.write(fd, time.clock_gettime_ns(time.CLOCK_MONOTONIC).to_bytes(8, "little"))
    os.write(fd, bytes(8))  # zero: done


def _reader(cpu: int, fd: int, out) -> None:
    _realtime_on(cpu)
    late = []
    while True:
        sent = int.from_bytes(os.read(fd, 8), "little")
        if sent == 0:
            break
        late.append(time.clock_gettime_ns(time.CLOCK_MONOTONIC) - sent)
    out.send(late)


def measure(kind: str, cpu: int, other: int | None, seconds: float, period_ns: int) -> list[int]:
    """Wake-up lateness samples (ns) of one kind on one CPU."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    if kind == "timer":
        procs = [ctx.Process(target=_timer, args=(cpu, seconds, period_ns, send))]
    else:
        r, w = os.pipe()
        procs = [ctx.Process(target=_reader, args=(cpu, r, send)),
                 ctx.Process(target=_writer, args=(other, seconds, period_ns, w))]
    for p in procs:
        p.start()
    late = recv.recv()
    for p in procs:
        p.join()
    if kind != "timer":
        os.close(r)
        os.close(w)
    return late


def summarize(late_ns: list[int], seconds: float) -> dict:
    us = [v / 1e3 for v in late_ns]
    return {"n": len(us), "p50_us": percentile(us, 50), "p99_us": percentile(us, 99),
            "p999_us": percentile(us, 99.9), "max_us": max(us),
            "over_500us_per_s": sum(v > 500 for v in us) / seconds,
            "over_1ms_per_s": sum(v > 1000 for v in us) / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell (default %(default)s)")
    parser.add_argument("--period-us", type=float, default=1000.0, help="wake-ups every (default %(default)s)")
    parser.add_argument("--out", default="bench-results/wakeup.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/wakeup.py needs root (SCHED_FIFO)", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    period_ns = int(args.period_us * 1e3)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_avg_at_start": os.getloadavg(),
           "settings": {"seconds": args.seconds, "period_us": args.period_us}, "rows": []}
    for cpu in cpus:
        other = next((c for c in cpus if c != cpu), None)
        for kind in ("timer", "cross-cpu") if other is not None else ("timer",):
            for poller in (False, True):
                pollers = IdlePollers()
                if poller:
                    pollers.start([cpu])
                    time.sleep(0.2)
                try:
                    late = measure(kind, cpu, other, args.seconds, period_ns)
                finally:
                    pollers.stop()
                row = {"cpu": cpu, "kind": kind, "idle_poller": poller, **summarize(late, args.seconds)}
                doc["rows"].append(row)
                print(f"cpu {cpu} {kind:9} poller {'on ' if poller else 'off'}: p99.9 {row['p999_us']:.0f} us, "
                      f"max {row['max_us']:.0f} us", file=sys.stderr, flush=True)
    doc["load_avg_at_end"] = os.getloadavg()
    print(f"\nWake-up lateness of a SCHED_FIFO task, {args.seconds:g} s per row, every {args.period_us:g} us")
    header = ("CPU", "wake-up", "idle poller", "p50 us", "p99 us", "p99.9 us", "max us", ">0.5 ms/s", ">1 ms/s")
    print("  ".join(f"{h:>11}" for h in header))
    for r in doc["rows"]:
        cells = (r["cpu"], r["kind"], "on" if r["idle_poller"] else "off", f"{r['p50_us']:.1f}",
                 f"{r['p99_us']:.1f}", f"{r['p999_us']:.1f}", f"{r['max_us']:,.0f}", f"{r['over_500us_per_s']:.2f}",
                 f"{r['over_1ms_per_s']:.2f}")
        print("  ".join(f"{c!s:>11}" for c in cells))
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
