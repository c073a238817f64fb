"""Realtime scheduling for the processes on the workload CPUs: load generators and
the servers of ``cpu_priority: realtime`` services.

Why: the emulation runs every site's workloads on the same cores. Under the fair
scheduler a latency-critical server or a client woken by its answer waited up to
4-5 ms (p99 3.5 ms, ``perf sched``) behind another site's batch compute, whatever
its CPU weight; a real site would give it cores of its own. SCHED_FIFO lets them
run at once (benchmarks/README.md, eighth pass).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def apply_rt_priority(priority: int) -> str:
    """Put this process under SCHED_FIFO at ``priority`` (0: leave it normal); returns the
    scheduling obtained, for results. Call it before starting threads: they inherit it.

    Where it is refused (no CAP_SYS_NICE, no realtime budget in the cgroup) the
    process logs why and carries on at normal priority; the returned text says so.
    """
    if priority <= 0:
        return "normal"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as err:
        why = err.strerror or str(err)
        log.warning("SCHED_FIFO %d refused (%s): running at normal priority", priority, why)
        return f"normal (SCHED_FIFO {priority} refused: {why})"
    return f"fifo {priority}"
