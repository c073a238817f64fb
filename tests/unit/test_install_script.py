"""Checks of scripts/install.sh, lab.sh and .ci/run.

Most of these run without root. The idempotence test is root-marked: it runs
the real installer, which must already have been run once (./lab.sh test does).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install.sh"
LAB = REPO / "lab.sh"
CI_RUN = REPO / ".ci" / "run"
GUEST = REPO / "scripts" / "netem-guest.sh"
SCRIPTS = [INSTALL, LAB, CI_RUN, GUEST]

KERNEL_LINE = re.compile(
    r"^kernel: netem=(yes|no|unknown) ovs-module=(yes|no) -> "
    r"link backend (netem|userspace), OVS datapath (system|netdev)$",
    re.MULTILINE,
)


def _run(args: list[str | Path], env: dict[str, str] | None = None, timeout: float = 60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_INSTALL_")}
    full_env.pop("TWIN_OS_RELEASE", None)
    full_env.update(env or {})
    return subprocess.run(
        [str(a) for a in args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _os_release(tmp_path: Path, id_: str, version: str) -> Path:
    path = tmp_path / "os-release"
    path.write_text(f'NAME="test"\nID={id_}\nVERSION_ID="{version}"\n')
    return path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_syntax(script: Path) -> None:
    result = _run(["bash", "-n", script])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        if os.environ.get("TWIN_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail("shellcheck missing in CI; scripts/install.sh installs it (TEST_PKGS)")
        pytest.skip("shellcheck not installed (sudo scripts/install.sh installs it)")
    result = _run(["shellcheck", *SCRIPTS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_lab_help() -> None:
    result = _run(["bash", LAB, "--help"])
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    for command in ("demo", "test", "install"):
        assert command in result.stdout


def test_lab_unknown_command() -> None:
    result = _run(["bash", LAB, "no-such-command"])
    assert result.returncode == 2
    assert "--help" in result.stderr


def test_install_help() -> None:
    result = _run(["bash", INSTALL, "--help"])
    assert result.returncode == 0, result.stderr
    assert "--with-workloads" in result.stdout


def test_install_refuses_non_root(tmp_path: Path) -> None:
    env = {
        "TWIN_OS_RELEASE": str(_os_release(tmp_path, "debian", "12")),
        "TWIN_INSTALL_ASSUME_NONROOT": "1",
    }
    result = _run(["bash", INSTALL], env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "root" in lines[0] and "sudo" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("id_", "version"),
    [("fedora", "40"), ("debian", "11"), ("ubuntu", "20.04"), ("ubuntu", "")],
)
def test_install_refuses_unsupported_os(tmp_path: Path, id_: str, version: str) -> None:
    env = {"TWIN_OS_RELEASE": str(_os_release(tmp_path, id_, version))}
    result = _run(["bash", INSTALL], env=env)
    assert result.returncode != 0
    assert "supported: Debian 12+, Ubuntu 22.04+" in result.stderr
    assert result.stdout == ""


def _probe_interfaces() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    names = [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]
    return [name for name in names if name.startswith("twprobe")]


@pytest.mark.root
def test_install_rerun_is_fast_and_clean() -> None:
    # Make sure everything is installed (a no-op after ./lab.sh test), then
    # time the rerun that must do nothing.
    first = _run(["bash", INSTALL], timeout=1800)
    assert first.returncode == 0, first.stdout + first.stderr

    start = time.monotonic()
    second = _run(["bash", INSTALL], timeout=300)
    elapsed = time.monotonic() - start

    assert second.returncode == 0, second.stdout + second.stderr
    assert elapsed < 60, f"second install run took {elapsed:.1f}s"
    assert KERNEL_LINE.search(second.stdout), second.stdout
    assert "apt packages: all" in second.stdout
    assert ".venv: up to date" in second.stdout
    assert _probe_interfaces() == []


def test_netem_guest_help_and_bad_arguments_get_one_clear_line(tmp_path) -> None:
    shown = _run(["bash", str(GUEST), "--help"])
    assert shown.returncode == 0 and "run [--out DIR] -- CMD" in shown.stdout
    unknown = _run(["bash", str(GUEST), "boot"])
    assert unknown.returncode != 0 and "netem-guest: error: unknown command 'boot'" in unknown.stderr
    missing = _run(["bash", str(GUEST), "run", "--out", str(tmp_path / "nowhere"), "--", "true"])
    assert missing.returncode != 0
    if os.geteuid() == 0:
        assert f"--out {tmp_path / 'nowhere'}: no such folder; create it first" in missing.stderr
    else:
        assert "needs root" in missing.stderr
