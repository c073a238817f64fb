"""Idle pollers: keep a virtual CPU awake so the delay engine's wake-ups are on time.

Why: in a virtual machine an idle vCPU halts, and the hypervisor wakes it for the
next timer or interrupt. On the 2-vCPU VM this project is measured on, a
SCHED_FIFO task sleeping to 1 ms deadlines on an idle CPU woke over 0.5 ms late
0.5-1 times a second, up to 4.1 ms late (benchmarks/wakeup.py). The delay engine
sleeps on a timer until just before each departure, so such wake-ups held frames
for milliseconds: on a 1-span lightpath, 0-43 probes in 4,000 were over 0.5 ms
late, and they set the whole-sample jitter and p99.9 (benchmarks/README.md,
ninth pass).

What: one process per CPU, pinned to it, scheduled ``SCHED_IDLE`` (it runs only
when nothing else wants the CPU) and calling ``sched_yield`` in a loop, so the CPU
never halts and the kernel switches away from it at once. It is the userspace
equivalent of a guest's ``idle=poll`` or halt-polling, for the CPUs the engine
sleeps on; the PMD thread's CPU needs none, since the PMD thread polls it already.

Off by default (``twin up --idle-poll``), because it is a trade, measured with
pollers and without in alternating rounds on one running twin:

* 200 probes/s on one triangle span: probes over 0.5 ms late fell from 100 to
  28 of 44,000 (11 rounds; a plain spinning loop in 5 of them).
* 1,000 probes/s on ten japan pairs: the tail grew. Pairs within 150 us at p99:
  29 and 14 of 40 with pollers (26 with a plain spinning loop), 33, 38 and 37
  without. Why a busy vCPU fares worse under load here is not known.

The pollers also show as CPU use to the host.

Each poller dies with its parent (``PR_SET_PDEATHSIG``) and is recorded in the run
record, so ``twin clean`` ends it by PID after anything worse.

CLI (what :class:`IdlePollers` starts)::

    python -m twin.emulation.idle_poll --cpu N --parent PID
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Collection

from twin.emulation.records import RunRecord, stop_child

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class IdlePollers:
    """Idle pollers on some CPUs, started and ended by this process (by PID)."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen] = {}
        self.started: list[int] = []  # CPUs, kept after stop() for reports

    def start(self, cpus: Collection[int], record: RunRecord | None = None) -> None:
        # PR_SET_PDEATHSIG fires when the *thread* that forked a poller ends: start them
        # from one that lives as long as they should (TwinSession: the caller's).
        for cpu in sorted(cpus):
            proc = subprocess.Popen([sys.executable, "-m", "twin.emulation.idle_poll", "--cpu", str(cpu),
                                     "--parent", str(os.getpid())],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs[cpu] = proc
            self.started.append(cpu)
            if record is not None:
                record.add_process(proc.pid, f"idle poller on CPU {cpu}")

    def running(self) -> list[int]:
        """CPUs whose poller still runs."""
        return sorted(cpu for cpu, proc in self.procs.items() if proc.poll() is None)

    def stop(self) -> None:
        for cpu, proc in self.procs.items():
            ended_early = proc.poll() is not None  # a poller only ends by our signal or its parent's death
            stop_child(proc, timeout_s=2.0)
            if proc.stderr is not None:
                if ended_early:
                    log.warning("idle poller on CPU %d had stopped: %s", cpu,
                                proc.stderr.read().decode(errors="replace").strip() or f"exit {proc.returncode}")
                proc.stderr.close()
        self.procs.clear()


def poll(cpu: int, parent: int) -> None:
    """Become CPU ``cpu``'s idle poller; never returns (ends by signal, or with ``parent``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: nobody would end us
        raise SystemExit(0)
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    spin = os.sched_yield  # gives the CPU to any runnable task at once, even one EEVDF would not pick yet
    while True:
        spin()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.emulation.idle_poll", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", type=int, required=True, help="the CPU to keep awake")
    parser.add_argument("--parent", type=int, required=True, help="exit when this process (our parent) is gone")
    args = parser.parse_args(argv)
    try:
        poll(args.cpu, args.parent)
    except OSError as exc:
        print(f"idle_poll: CPU {args.cpu}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
