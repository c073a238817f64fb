"""Idle pollers (twin/emulation/idle_poll.py): which CPUs get one, and how one runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from twin.emulation.idle_poll import IdlePollers
from twin.emulation.session import TwinSession, cpu_plan

TRIANGLE = str(Path(__file__).resolve().parents[2] / "topologies" / "triangle.yaml")


def test_off_by_default():
    assert TwinSession(TRIANGLE).idle_poll_cpus == set()


def test_every_cpu_but_one_a_pmd_thread_polls_without_sleeping():
    available = os.sched_getaffinity(0)
    datapath, _ = cpu_plan(available)
    session = TwinSession(TRIANGLE, idle_poll=True)
    assert session.pmd_maxsleep_us == 0 or datapath is None
    assert session.idle_poll_cpus == available - ({datapath} if datapath is not None else set())
    # A PMD thread that sleeps when idle leaves its CPU to halt: that one is polled too.
    assert TwinSession(TRIANGLE, idle_poll=True, pmd_maxsleep_us=50).idle_poll_cpus == available
    assert TwinSession(TRIANGLE, idle_poll=True, cpu_layout="shared").idle_poll_cpus == available


def test_a_poller_runs_idle_on_its_cpu_and_a_failed_one_is_reported(caplog):
    cpu = min(os.sched_getaffinity(0))
    pollers = IdlePollers()
    pollers.start([cpu, 4096])  # no CPU 4096: that poller must fail, not hang
    try:
        proc = pollers.procs[cpu]
        deadline = time.monotonic() + 10
        while (os.sched_getscheduler(proc.pid) != os.SCHED_IDLE or pollers.running() != [cpu]) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pollers.running() == [cpu]
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(proc.pid) == {cpu}
    finally:
        pollers.stop()
    assert proc.returncode is not None and pollers.procs == {} and pollers.started == [cpu, 4096]
    assert "idle poller on CPU 4096 had stopped" in caplog.text and "Invalid argument" in caplog.text
