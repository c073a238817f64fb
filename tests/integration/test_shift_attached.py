"""`twin shift` against a network that `twin up` keeps running in another process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twin.emulation.records import host_state

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def test_shift_runs_the_daemon_against_twin_up(tmp_path):
    before = host_state()
    up = subprocess.Popen([sys.executable, "-m", "twin", "up", "topologies/fukuoka-osaka.yaml"], cwd=REPO,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        banner = ""
        while "controller API" not in banner and time.monotonic() < deadline and up.poll() is None:
            banner = up.stdout.readline()
        assert "controller API" in banner, f"twin up did not come up (exit {up.poll()})"
        shift = subprocess.run([sys.executable, "-m", "twin", "shift", "scenarios/fukuoka-osaka-day.yaml",
                                "--out", str(tmp_path / "run"), "--time-compression", "1440", "-q", "--no-report"],
                               cwd=REPO, capture_output=True, text=True, timeout=400)
        assert shift.returncode == 0, shift.stderr[-3000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
        migrations = [e for e in events if e["kind"] == "migration"]
        assert migrations and all(m["ok"] and m["failed_requests"] == 0 for m in migrations)
        assert summary["services"]["fusion"]["failed"] == 0
        run = json.loads((tmp_path / "run" / "run.json").read_text())
        assert run["link_backend"].startswith("attached to run ")
        # the network is still up and still usable after shift ended
        assert up.poll() is None
        leftover = subprocess.run(["podman", "ps", "-a", "--filter", "label=twin-run", "--format", "{{.Names}}"],
                                  capture_output=True, text=True).stdout.split()
        assert leftover == []
    finally:
        if up.poll() is None:
            up.stdin.write("exit\n")
            up.stdin.flush()
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
                subprocess.run([sys.executable, "-m", "twin", "clean"], cwd=REPO, capture_output=True)
    assert up.returncode == 0
    after = host_state()
    for kind in after:
        assert after[kind] - before[kind] == set(), f"left behind: {kind} {after[kind] - before[kind]}"
