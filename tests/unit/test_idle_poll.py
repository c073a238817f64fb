"""Which CPUs get idle pollers (twin/emulation/idle_poll.py)."""

from __future__ import annotations

import os
from pathlib import Path

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
