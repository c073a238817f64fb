"""Shared pytest configuration for the APN twin tests."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

# --- the `root` marker ---------------------------------------------------------
# Tests marked @pytest.mark.root need root, Open vSwitch and Mininet (mnexec).
# Without them they are skipped with ROOT_SKIP_REASON, except when
# TWIN_REQUIRE_ROOT_TESTS=1 (set by ./lab.sh test and so by CI): then a missing
# precondition is an error, so that CI never passes by silently skipping.

ROOT_SKIP_REASON = "needs root, Open vSwitch and Mininet; run as root via sudo ./lab.sh test"
REQUIRE_ROOT_TESTS_ENV = "TWIN_REQUIRE_ROOT_TESTS"


def root_tests_required() -> bool:
    """True when root tests must run (CI): missing preconditions fail, not skip."""
    return os.environ.get(REQUIRE_ROOT_TESTS_ENV) == "1"


@functools.lru_cache(maxsize=1)
def missing_root_preconditions() -> tuple[str, ...]:
    """What root tests need but this machine lacks; empty when all is there.

    Checked once per session.
    """
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("not running as root")
    if shutil.which("mnexec") is None:
        missing.append("mnexec not found (apt package mininet)")
    if shutil.which("ovs-vsctl") is None:
        missing.append("ovs-vsctl not found (apt package openvswitch-switch)")
    else:
        try:
            subprocess.run(
                ["ovs-vsctl", "--timeout=2", "show"],
                capture_output=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            missing.append("Open vSwitch is not answering 'ovs-vsctl show'")
    return tuple(missing)


def enforce_root_marker(item: pytest.Item) -> None:
    """Skip (or, when required, fail) a root-marked test lacking its preconditions."""
    if item.get_closest_marker("root") is None:
        return
    missing = missing_root_preconditions()
    if not missing:
        return
    detail = "; ".join(missing)
    if root_tests_required():
        pytest.fail(
            f"{REQUIRE_ROOT_TESTS_ENV}=1 but this root test cannot run: {detail}",
            pytrace=False,
        )
    pytest.skip(f"{ROOT_SKIP_REASON} ({detail})")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Runs before any fixture of the test is set up, so fixtures that build
    # namespaces or bridges never run on a machine that cannot host them.
    # If you need another pytest_runtest_setup here, add a call to it below.
    enforce_root_marker(item)


# --- tests/guest ------------------------------------------------------------------
# They need a kernel with sch_netem and the openvswitch module, so they run only inside
# the guest of scripts/netem-guest.sh (whose init sets TWIN_GUEST=1), started by
# tests/integration/test_netem_guest.py. Elsewhere they are not even collected: a
# skip would look like a pass.
collect_ignore = [] if os.environ.get("TWIN_GUEST") == "1" else ["guest"]
