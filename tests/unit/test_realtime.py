"""Realtime scheduling requests of the workload processes: what they report, and their bad input."""

from __future__ import annotations

import errno
import os

import pytest

from twin.workloads import loadgen, server
from twin.workloads.realtime import apply_rt_priority


def test_priority_zero_leaves_the_process_alone(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_setscheduler", lambda *a: pytest.fail("must not be called"))
    assert apply_rt_priority(0) == "normal"


def test_a_refusal_is_reported_and_the_process_carries_on(monkeypatch) -> None:
    def refuse(*_args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    assert apply_rt_priority(4) == "normal (SCHED_FIFO 4 refused: Operation not permitted)"


def test_granted_priority_is_reported(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda pid, policy, param: calls.append((pid, policy, param)))
    assert apply_rt_priority(5) == "fifo 5"
    assert calls[0][0] == 0 and calls[0][1] == os.SCHED_FIFO and calls[0][2].sched_priority == 5


def test_loadgen_refuses_an_out_of_range_priority(tmp_path, capsys) -> None:
    code = loadgen.main(["--target", "127.0.0.1:9", "--rate", "1", "--duration", "1", "--request-size", "10",
                         "--response-size", "10", "--region", "fuk", "--service", "s", "--out",
                         str(tmp_path / "x.csv"), "--rt-priority", "99"])
    assert code != 0
    assert "--rt-priority 99 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_server_refuses_an_out_of_range_priority() -> None:
    with pytest.raises(server.ServerError, match="--rt-priority -1 is out of range"):
        server.config_from_args(["--service", "s", "--model", "echo", "--site", "fuk", "--rt-priority", "-1"])
