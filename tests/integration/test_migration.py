"""Deploy, load and migrate a containerized inference service between two emulated sites.

Real everything: Mininet + OVS userspace, the controller steering the service VIP,
podman containers in the sites' compute hosts, the load generator in the users'
host, state copied over the 600 km APN lightpath.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from twin.emulation.session import TwinSession
from twin.workloads.containers import ContainerRuntime
from twin.workloads.site_runtime import PodmanLauncher, workload_image
from twin.workloads.trial import run_trial, trial_scenario, trial_service

pytestmark = pytest.mark.root

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "fukuoka-osaka.yaml"


@pytest.fixture(scope="module")
def twin():
    # Partitioned CPUs, as 'twin run' has them: the network on one, the workloads on the others.
    before = os.sched_getaffinity(0)
    with TwinSession(TOPOLOGY, cpu_layout="workloads") as session:
        session.client.create_lightpath("fuk", "osa")
        with ContainerRuntime(session.record.run_id, record=session.record) as containers:
            yield session, containers, PodmanLauncher(containers, workload_image(), cpus=session.workload_cpus)
    assert os.sched_getaffinity(0) == before  # the session gives this process its CPUs back


def scenario(service_id: str, state_size: str = "4MiB"):
    return trial_scenario(str(TOPOLOGY), trial_service(service_id, site="fuk", region="fuk", rate="25/s",
                                                       state_size=state_size))


def test_make_before_break_loses_nothing_and_moves_the_service(twin, tmp_path):
    session, containers, launcher = twin
    result = run_trial(session, scenario("mbb"), launcher, src="fuk", dst="osa", strategy="make-before-break",
                       out_dir=tmp_path, before_s=4, after_s=4)
    assert result["ok"], result.get("error")
    assert result["failed_requests"] == 0 and result["failed_total"] == 0, result
    assert result["interruption_ms"] == 0.0
    assert result["answered_by"] == ["fuk", "osa"] and result["answered_by_after"] == ["osa"]
    assert result["placements"] == {"mbb": "osa"}
    assert result["state_bytes"] == 4 * 1024 * 1024
    # the state crossed the 600 km lightpath: at least the round trips' worth of time
    assert result["transfer_s"] > 2 * 0.0059
    # after the move the users in Fukuoka pay the round trips to Osaka (2 x 5.9 ms on the model
    # for an 8 KiB request on a new connection); medians, so one slow request cannot flip it
    assert result["p50_after_ms"] > result["p50_before_ms"] + 5.0
    assert containers.list_run() == []  # both instances stopped by the trial


def test_the_network_and_the_workloads_have_cpus_of_their_own(twin, tmp_path):
    session, containers, launcher = twin
    cpus = session.cpus_available
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to partition")
    assert session.datapath_cpu == max(cpus) and session.workload_cpus == cpus - {max(cpus)}
    # With OVS's userspace datapath the run's own processes (this one included, so all it
    # starts) stay off the datapath's CPU, which its PMD thread polls.
    from twin.emulation.network import userspace_datapath
    if userspace_datapath():
        assert os.sched_getaffinity(0) == session.workload_cpus
        assert os.sched_getaffinity(session.controller.pid) == session.workload_cpus
    # With workloads the engine shares the PMD thread's CPU, not the workloads' (CPU_LAYOUTS says why).
    assert os.sched_getaffinity(session.network.engine.pid) == {session.datapath_cpu}
    # ...and 'twin shift' against this run finds the plan in its record.
    from twin.emulation.records import RunRecord
    from twin.workloads.attach import workload_cpus_of
    assert workload_cpus_of(RunRecord.load(session.record.path)) == session.workload_cpus
    if session.network.ovs_port_type.startswith("afxdp"):
        mask = subprocess.run(["ovs-vsctl", "get", "Open_vSwitch", ".", "other_config:pmd-cpu-mask"],
                              capture_output=True, text=True, check=True).stdout.strip().strip('"')
        assert int(mask, 16) == 1 << session.datapath_cpu
    # A service container and its clients stay off the network's CPU.
    from twin.workloads.load_fleet import LoadFleet
    from twin.workloads.site_runtime import EmulatedRuntime
    import asyncio

    scn = scenario("pinned")
    runtime = EmulatedRuntime(session, scn, launcher, run_id=session.record.run_id)
    fleet = LoadFleet(session, scn, tmp_path)
    try:
        asyncio.run(runtime.ensure_running("pinned", "fuk"))
        (name,) = containers.list_run()
        pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", name],
                                 capture_output=True, text=True, check=True).stdout)
        assert os.sched_getaffinity(pid) == session.workload_cpus
        fleet.start(5.0)
        (generator,) = fleet.generators
        assert os.sched_getaffinity(generator.process.pid) == session.workload_cpus
    finally:
        fleet.stop()
        asyncio.run(runtime.close())
    assert containers.list_run() == []


def test_cold_migration_is_measured(twin, tmp_path):
    session, containers, launcher = twin
    result = run_trial(session, scenario("cold"), launcher, src="fuk", dst="osa", strategy="cold",
                       out_dir=tmp_path, before_s=3, after_s=3)
    assert result["ok"], result.get("error")
    assert result["answered_by_after"] == ["osa"]
    # clients are refused from the drain to the re-point: the downtime cold migration costs
    assert result["failed_requests"] > 0 and result["interruption_ms"] > 0
    assert containers.list_run() == []


def test_destination_killed_mid_migration_leaves_service_at_source(twin, tmp_path):
    session, containers, launcher = twin
    target = f"{launcher.short_name('killed', 'osa')}"

    def kill_destination(runtime) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = [n for n in containers.list_run() if n.endswith(target)]
            # Listed already while only created: podman kill refuses that, so retry until it runs.
            if names and subprocess.run(["podman", "kill", names[0]], capture_output=True).returncode == 0:
                return
            time.sleep(0.02)
        raise AssertionError("destination container never appeared")

    result = run_trial(session, scenario("killed"), launcher, src="fuk", dst="osa",
                       strategy="make-before-break", out_dir=tmp_path, before_s=2, after_s=2,
                       kill_during=kill_destination)
    assert result["ok"] is False and result["error"]
    assert result["placements"] == {"killed": "fuk"}  # still served at the source
    assert result["answered_by_after"] == ["fuk"]
    assert result["failed_total"] == 0  # clients never noticed
    assert containers.list_run() == []  # the trial's teardown removed the source; nothing else was left
