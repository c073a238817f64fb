"""Teardown after a SIGKILL plus ``twin clean``, and the ``twin up --check`` command (root).

Separate from test_apn_network.py: that module keeps a network up for all its
tests, and two runs of one topology cannot coexist (same interface names).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twin.emulation import records
from twin.emulation.session import cpu_plan


pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = str(REPO / "topologies" / "triangle.yaml")
_snapshot = records.host_state


def test_sigkill_then_twin_clean_leaves_nothing(tmp_path):
    before = _snapshot()
    script = (
        "import sys, time\n"
        "from twin.emulation.session import TwinSession\n"
        f"s = TwinSession({TRIANGLE!r}, idle_poll=True); s.__enter__()\n"
        "print('UP', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    checked = False
    pollers = []
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "UP" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"twin run died: {proc.stderr.read()[-2000:]}")
        during = _snapshot()
        assert len(during["bridges"] - before["bridges"]) == 3
        (run_id,) = during["runs"] - before["runs"]
        started = records.RunRecord.load(records.RECORD_ROOT / run_id / "record.json").processes
        assert {p.what for p in started} >= {"controller", "delay engine"} or any(
            p.what == "controller" for p in started)
        if _afxdp_ports():  # the PMD's CPU and idle sleep are set for the run, and must go with it
            datapath_cpu, _ = cpu_plan(os.sched_getaffinity(0))
            if datapath_cpu is None:
                assert "pmd-maxsleep=50" in during["ovs_settings"]
            else:  # a CPU of its own: polled without sleeping
                assert {"pmd-maxsleep=0", f"pmd-cpu-mask={hex(1 << datapath_cpu)}"} <= during["ovs_settings"]
        # Idle pollers (asked for) with the userspace engine: SCHED_IDLE, one pinned per CPU
        # the PMD thread does not poll. They must die with their owner, before any clean.
        pollers = [p for p in started if p.what.startswith("idle poller")]
        if "delay engine" in {p.what for p in started}:
            available = os.sched_getaffinity(0)
            datapath_cpu = cpu_plan(available)[0]
            assert {int(p.what.split()[-1]) for p in pollers} == available - {datapath_cpu}
            for poller in pollers:
                assert os.sched_getscheduler(poller.pid) == os.SCHED_IDLE
                assert os.sched_getaffinity(poller.pid) == {int(poller.what.split()[-1])}
        else:  # netem: nothing sleeps on a timer to forward frames
            assert pollers == []
        checked = True
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not checked:  # a failed check above must not leave the run's objects to the next tests
            subprocess.run([sys.executable, "-m", "twin", "clean"], capture_output=True, cwd=REPO)
    deadline = time.monotonic() + 5
    while any(p.alive() for p in pollers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pollers if p.alive()]  # they end with their owner, before any twin clean
    assert _snapshot() != before  # the kill left things behind...
    out = subprocess.run([sys.executable, "-m", "twin", "clean"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    time.sleep(0.5)
    assert _snapshot() == before  # ...and twin clean removed exactly them (OVS settings included)
    # No process of that run survives (engine, controller, host shells).
    assert not [p for p in started if p.alive()]


def _afxdp_ports() -> list[str]:
    out = subprocess.run(["ovs-vsctl", "--bare", "--columns=name", "find", "Interface", "type=afxdp"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_ovs_setting_of_an_operator_is_left_alone():
    assert records.ovs_global("other_config", "pmd-maxsleep") is None, "machine has a pmd-maxsleep already"
    subprocess.run(["ovs-vsctl", "set", "Open_vSwitch", ".", "other_config:pmd-maxsleep=77"], check=True)
    try:
        assert records.set_ovs_global("pmd-maxsleep", "10") is False
        assert records.ovs_global("other_config", "pmd-maxsleep") == "77"
        assert records.release_ovs_globals() == []
        assert records.ovs_global("other_config", "pmd-maxsleep") == "77"
    finally:
        subprocess.run(["ovs-vsctl", "remove", "Open_vSwitch", ".", "other_config", "pmd-maxsleep"], check=True)
    # Ours: set, marked, and released once no afxdp port is left.
    assert records.set_ovs_global("pmd-maxsleep", "10") is True
    assert records.host_state()["ovs_settings"] == {"pmd-maxsleep=10"}
    if not _afxdp_ports():
        assert records.release_ovs_globals() == ["OVS other_config:pmd-maxsleep=10"]
    assert records.ovs_global("other_config", "pmd-maxsleep") is None
    assert records.ovs_global("external_ids", "twin-pmd-maxsleep") is None


def test_twin_up_check_cli_json():
    out = subprocess.run([sys.executable, "-m", "twin", "up", TRIANGLE, "--check", "--json", "--count", "200",
                          "--tolerance-us", "400"], capture_output=True, text=True, cwd=REPO, timeout=240)
    doc = json.loads(out.stdout)
    assert {p["src"] + p["dst"] for p in doc["pairs"]} == {"ab", "ac", "bc"}
    assert all(p["reordered"] == 0 and p["lost"] == 0 for p in doc["pairs"])
    assert doc["link_backend"] in ("netem", "userspace")
    assert doc["timings_s"]["up_s"] > 0 and doc["timings_s"]["switches_connected_s"] > 0
    assert out.returncode == (0 if doc["ok"] else 1)
    # the migration check: a containerized service moved over the longest lightpath under load
    migration = doc["migration"]
    assert migration["ok"], migration["text"]
    assert migration["failed_requests"] == 0 and migration["answered_by_after"] == [migration["dst"]]
    assert migration["state_bytes"] == 4 * 1024 * 1024 and migration["engine"].startswith("podman")


def test_a_failed_calibration_leaves_a_working_uncalibrated_twin():
    from twin.emulation.session import TwinSession
    from twin.errors import TwinError

    class NoCalibration(TwinSession):
        def calibrate_transit(self, **kwargs):
            raise TwinError("probe reflector at a failed: (test)")

    before = _snapshot()
    with NoCalibration(TRIANGLE) as session:
        assert session.calibration is None
        lp = session.client.create_lightpath("a", "b")
        probe = session.probe("a", "b", count=50, rate=200)
        assert probe.lost == 0 and lp["route"] == ["a", "b"]
    assert _snapshot() == before
