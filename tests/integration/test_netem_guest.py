"""The kernel paths this host may lack, run for real in the netem guest (root, QEMU, debootstrap).

Boots scripts/netem-guest.sh (Debian 12's kernel: sch_netem, cls_flower, the
openvswitch module) and runs tests/guest inside it: the netem link backend with
its per-VLAN classes, OVS's kernel datapath, teardown and ``twin clean``. Then
reads their JUnit report: every guest test must have run and passed; a skip
inside the guest counts as a failure here, as it would in CI. Takes about 2
minutes to build the guest image (cached under /var/cache/twin/guest) and 6 to
run under QEMU's CPU emulation.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
GUEST_TESTS = REPO / "tests" / "guest"
# Image build (about 2 min, once) + the guest tests under CPU emulation (about 6 min).
GUEST_TIMEOUT_S = 1800


def _guest_test_names() -> set[str]:
    names = set()
    for path in GUEST_TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        names |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                  and node.name.startswith("test_")}
    return names


@pytest.mark.timeout(GUEST_TIMEOUT_S + 120)
def test_kernel_paths_pass_in_the_netem_guest(tmp_path):
    for tool in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found; scripts/install.sh installs it")
    report = tmp_path / "guest.xml"
    jobs_before = set(Path("/tmp").glob("twin-guest-job.*"))
    proc = subprocess.Popen([str(REPO / "scripts" / "netem-guest.sh"), "run", "--out", str(tmp_path), "--",
                             ".venv/bin/python", "-m", "pytest", "-q", "--color=no", "-p", "no:cacheprovider",
                             "-rfE", "tests/guest", f"--junitxml={report}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "TWIN_GUEST_TIMEOUT": str(GUEST_TIMEOUT_S - 300)})
    try:
        stdout, stderr = proc.communicate(timeout=GUEST_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            # SIGTERM, not SIGKILL: the script's trap stops its QEMU and removes its job folder.
            proc.terminate()
            proc.communicate(timeout=60)
    tail = (stdout[-4000:] + "\n" + stderr[-2000:]).strip()
    assert set(Path("/tmp").glob("twin-guest-job.*")) == jobs_before, "the script left its job folder"
    assert report.exists(), f"the guest wrote no report (exit {proc.returncode}):\n{tail}"
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {}
    for case in cases:
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        outcome[case.get("name")] = kinds.pop() if kinds else "passed"
    assert set(outcome) == _guest_test_names(), (sorted(outcome), tail)
    assert all(v == "passed" for v in outcome.values()), (outcome, tail)
    assert proc.returncode == 0, tail
