"""How long the host itself takes each CPU away from a real-time task: the emulator's noise floor.

The delay engine runs SCHED_FIFO, so no ordinary process delays it, but the kernel
can: interrupts, soft interrupts, and, with a kernel built without full
preemption (``CONFIG_PREEMPT_NONE``), any kernel thread until it yields. Every frame
in flight during such a stall leaves late, so their rate and length bound the
twin's delay tails from below, whatever the twin does.

Method (in the spirit of cyclictest/sysjitter): one process per CPU, pinned, SCHED_FIFO
1, reads the monotonic clock in a tight loop and records every gap between two reads
longer than ``--threshold-us``. It spins 10 ms and then sleeps 1 ms, staying under the
kernel's real-time throttling (95 %); the gaps across its own sleeps are not counted.
Kernel threads that used CPU time meanwhile are listed with the CPU they last ran on,
which usually names the culprit. In a VM, the time the hypervisor gave the vCPU to others
(``steal`` in /proc/stat) is reported beside it: no setting in the guest removes that part.

Run on an otherwise idle machine (the twin down)::

    sudo .venv/bin/python benchmarks/host_noise.py [--seconds 10] [--threshold-us 20]
        [--out bench-results/host-noise.json]

Prints a table per CPU and writes JSON.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import percentile, write_result  # noqa: E402

SPIN_NS = 10_000_000
REST_S = 0.001


def _measure(cpu: int, seconds: float, threshold_ns: int, out) -> None:
    """Child: spin on ``cpu`` and send back (observed ns, [gap ns, ...])."""
    try:
        os.sched_setaffinity(0, {cpu})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        fifo = True
    except OSError:
        fifo = False
    clock = time.perf_counter_ns
    gaps: list[int] = []
    observed = 0
    end = clock() + int(seconds * 1e9)
    while True:
        start = prev = clock()
        if start >= end:
            break
        stop = start + SPIN_NS
        while prev < stop:
            now = clock()
            if now - prev > threshold_ns:
                gaps.append(now - prev)
            prev = now
        observed += prev - start
        time.sleep(REST_S)
    out.send((observed, gaps, fifo))
    out.close()


def _kernel_threads() -> dict[int, tuple[str, int, int]]:
    """pid -> (name, CPU ticks used, last CPU) for every kernel thread (children of kthreadd)."""
    threads = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[1] != "2":  # ppid: kthreadd
            continue
        threads[int(entry.name)] = (name, int(fields[11]) + int(fields[12]), int(fields[36]))
    return threads


def _cpu_ticks() -> dict[int, dict[str, int]]:
    """Per CPU, from /proc/stat: ticks spent in hard and soft interrupts, and stolen by the
    hypervisor (a guest's vCPU not running at all: the part of the noise no guest can remove)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 8:
            out[int(name[3:])] = {"irq": int(fields[5]), "softirq": int(fields[6]), "steal": int(fields[7])}
    return out


def measure(cpus: list[int], seconds: float, threshold_us: float) -> dict:
    before = _kernel_threads()
    ticks_before = _cpu_ticks()
    wall0 = time.monotonic()
    pipes, procs = [], []
    for cpu in cpus:
        parent, child = mp.Pipe(duplex=False)
        proc = mp.Process(target=_measure, args=(cpu, seconds, int(threshold_us * 1000), child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    results = {}
    for cpu, pipe, proc in zip(cpus, pipes, procs):
        observed_ns, gaps_ns, fifo = pipe.recv()
        proc.join()
        obs_s = observed_ns / 1e9
        gaps_us = [g / 1000 for g in gaps_ns]
        results[cpu] = {
            "observed_s": round(obs_s, 3), "sched_fifo": fifo, "stalls": len(gaps_us),
            "per_s_over_20us": round(sum(g > 20 for g in gaps_us) / obs_s, 2),
            "per_s_over_100us": round(sum(g > 100 for g in gaps_us) / obs_s, 2),
            "per_s_over_1ms": round(sum(g > 1000 for g in gaps_us) / obs_s, 2),
            "lost_permille": round(sum(gaps_us) / 1e3 / obs_s, 3),
            "p50_us": round(percentile(gaps_us, 50), 1) if gaps_us else None,
            "p99_us": round(percentile(gaps_us, 99), 1) if gaps_us else None,
            "max_us": round(max(gaps_us), 1) if gaps_us else None,
        }
    ticks = os.sysconf("SC_CLK_TCK")
    wall = time.monotonic() - wall0
    ticks_after = _cpu_ticks()
    for cpu in cpus:
        for kind in ("irq", "softirq", "steal"):
            used = ticks_after.get(cpu, {}).get(kind, 0) - ticks_before.get(cpu, {}).get(kind, 0)
            results[cpu][f"{kind}_permille"] = round(used / ticks / wall * 1000, 2)
    after = _kernel_threads()
    busy = sorted(((after[p][1] - before[p][1]) * 1000 / ticks, after[p][0], after[p][2]) for p in after
                  if p in before and after[p][1] > before[p][1])[::-1][:5]
    return {"seconds": seconds, "threshold_us": threshold_us, "cpus": results,
            "kernel_threads": [{"name": n, "cpu_ms": round(ms, 1), "last_cpu": c} for ms, n, c in busy]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to watch (default %(default)s)")
    parser.add_argument("--threshold-us", type=float, default=20.0,
                        help="count gaps longer than this (default %(default)s)")
    parser.add_argument("--cpus", default=None, help="CPU list, e.g. 0,1 (default: all this process may use)")
    parser.add_argument("--out", default="bench-results/host-noise.json")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.threshold_us <= 0:
        parser.error("--seconds and --threshold-us must be positive")
    allowed = sorted(os.sched_getaffinity(0))
    try:
        cpus = allowed if args.cpus is None else sorted({int(c) for c in args.cpus.split(",")})
    except ValueError:
        parser.error(f"--cpus {args.cpus!r}: not a list of CPU numbers; fix: e.g. --cpus 0,1")
    if not set(cpus) <= set(allowed):
        parser.error(f"--cpus {args.cpus}: only {','.join(map(str, allowed))} are available here")
    print(f"watching CPUs {','.join(map(str, cpus))} for {args.seconds:g} s ...", file=sys.stderr)
    doc = measure(cpus, args.seconds, args.threshold_us)
    if not all(r["sched_fifo"] for r in doc["cpus"].values()):
        print("note: not SCHED_FIFO (run as root): ordinary processes count as noise too", file=sys.stderr)
    head = (f"{'CPU':>3} {'>20us/s':>8} {'>100us/s':>9} {'>1ms/s':>7} {'lost':>7} {'p50':>7} {'p99':>8} {'max':>8}"
            f" {'steal':>7} {'irq+soft':>8}")
    print(head)
    for cpu, r in doc["cpus"].items():
        fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
        print(f"{cpu:>3} {r['per_s_over_20us']:>8.1f} {r['per_s_over_100us']:>9.1f} {r['per_s_over_1ms']:>7.2f} "
              f"{r['lost_permille']:>6.2f}\u2030 {fmt(r['p50_us']):>6}us {fmt(r['p99_us']):>6}us {fmt(r['max_us']):>6}us"
              f" {r['steal_permille']:>6.1f}\u2030 {r['irq_permille'] + r['softirq_permille']:>7.1f}\u2030")
    print("lost: time the spinning task did not run (gaps over the threshold); steal: time the hypervisor "
          "gave this vCPU to others (/proc/stat, 10 ms ticks), part of lost")
    if doc["kernel_threads"]:
        print("kernel threads that ran meanwhile: " + ", ".join(
            f"{t['name']} {t['cpu_ms']:g} ms (last on CPU {t['last_cpu']})" for t in doc["kernel_threads"]))
    doc["machine"] = {"kernel": os.uname().release, "cpus_online": os.cpu_count()}
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
