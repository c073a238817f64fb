"""Workload containers for real: podman, the twin's image, a network namespace of the test's own.

No Mininet and no shipped topology (other tests bring those up at the same time):
each test makes its own network namespace with ``unshare --net`` around a
sleeper and joins the container to it through /proc/PID/ns/net, as the twin does
with a Mininet host. Every container is made through a run record, so a
concurrent ``twin clean`` sees a live run and leaves it alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twin.emulation.records import RunRecord, clean_record, labelled_containers, stop_child
from twin.workloads import containers as c
from twin.workloads.image import IMAGE_REPOSITORY, ImageError, require_image

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
PORT = 8080


@pytest.fixture(scope="module")
def workload_image() -> str:
    """The image for this checkout, built now if the code changed since the install."""
    try:
        return require_image()
    except ImageError:
        pass
    proc = subprocess.run([str(REPO / "scripts" / "build-image.sh")], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        return require_image()
    except ImageError:
        # The tree changed while it was built (another edit in this checkout): take the newest.
        out = subprocess.run(
            ["podman", "images", "--sort", "created", "--format", "{{.Repository}}:{{.Tag}}",
             "--filter", f"reference={IMAGE_REPOSITORY}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        return out[0]


@pytest.fixture
def netns_pid():
    """A sleeper in a new network namespace (loopback up); the namespace goes when it ends."""
    proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{proc.pid}/ns/net").st_ino == own:
            assert time.monotonic() < deadline, "unshare --net did not make a namespace"
            time.sleep(0.01)
        subprocess.run(["nsenter", f"--net=/proc/{proc.pid}/ns/net", "ip", "link", "set", "lo", "up"], check=True)
        yield proc.pid
    finally:
        stop_child(proc)


@pytest.fixture
def runtime():
    record = RunRecord.create()
    rt = c.ContainerRuntime(record.run_id, record=record)
    try:
        yield rt
    finally:
        rt.cleanup_run()
        clean_record(record)


def _server_spec(image: str, netns_pid: int, **kw) -> c.ContainerSpec:
    command = ("python", "-m", "twin.workloads.server", "--service", "t", "--model", "sensor-fusion-mlp",
               "--site", "here", "--port", str(PORT), "--bind", "127.0.0.1")
    args = dict(name="srv", image=image, command=command, netns_pid=netns_pid)
    args.update(kw)
    return c.ContainerSpec(**args)


def _podman_names(run_id: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "--all", "--filter", f"label=twin-run={run_id}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_engine_is_described(runtime: c.ContainerRuntime) -> None:
    text = runtime.describe()
    assert text.startswith("podman ") and f"({runtime.engine.oci_runtime}, cgroup {runtime.engine.cgroup_version})" in text
    if runtime.engine.cgroup_layout == "hybrid":
        # crun refuses this layout; the runtime must have chosen runc (or been told otherwise).
        assert runtime.engine.oci_runtime != "crun"


def test_server_answers_inside_the_namespace_with_limits_enforced(
    workload_image: str, netns_pid: int, runtime: c.ContainerRuntime
) -> None:
    spec = _server_spec(workload_image, netns_pid, cpus=0.5, memory_bytes=384 * 2**20, pids_limit=96, cpuset=(0,))
    container = runtime.run(spec, ready_url=f"http://127.0.0.1:{PORT}/readyz", timeout_s=60)
    assert container.name == f"tw-{runtime.run_id}-srv"
    assert runtime.record.containers == [container.name]

    status, body = c.run_in_netns(netns_pid, c.http_get, f"http://127.0.0.1:{PORT}/healthz")
    assert status == 200 and json.loads(body)["alive"] is True

    limits = runtime.limits(container.name)
    assert limits.cgroup_version in ("v1", "v2")
    assert limits.cpus == pytest.approx(0.5)
    assert limits.memory_bytes == 384 * 2**20
    assert limits.pids_max == 96
    pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", container.name],
                             capture_output=True, text=True, check=True).stdout)
    assert os.sched_getaffinity(pid) == {0}  # the cpuset keeps it off the emulated network's CPU


def test_realtime_server_runs_fifo_within_the_runs_budget_and_leaves_no_cgroup(
    workload_image: str, netns_pid: int
) -> None:
    """A realtime container: its server obtains SCHED_FIFO at the priority asked, inside the run's
    realtime budget where the kernel budgets per cgroup; leaving the runtime removes the run cgroup."""
    from twin.emulation.records import run_cgroups

    record = RunRecord.create()
    try:
        with c.ContainerRuntime(record.run_id, record=record) as rt:
            spec = _server_spec(workload_image, netns_pid, cpus=0.1, rt_priority=4, cpuset=(0,))
            spec = dataclasses.replace(spec, command=(*spec.command, "--rt-priority", "4"))
            container = rt.run(spec, ready_url=f"http://127.0.0.1:{PORT}/readyz", timeout_s=60)
            pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", container.name],
                                     capture_output=True, text=True, check=True).stdout)
            server = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])  # under podman's init
            assert b"twin.workloads.server" in Path(f"/proc/{server}/cmdline").read_bytes()
            assert os.sched_getscheduler(server) == os.SCHED_FIFO
            assert os.sched_getparam(server).sched_priority == 4
            status, body = c.run_in_netns(netns_pid, c.http_get, f"http://127.0.0.1:{PORT}/stats")
            assert status == 200 and json.loads(body)["scheduling"] == "fifo 4"
            owned = [path for path, run_id in run_cgroups().items() if run_id == record.run_id]
            if rt.rt_budget:
                cpu_dir = next(p for p in owned if (p / "cpu.rt_runtime_us").exists())
                assert int((cpu_dir / "cpu.rt_runtime_us").read_text()) > 0
                child = next(d for d in cpu_dir.iterdir() if d.name.startswith("libpod-"))  # beside conmon's
                assert int((child / "cpu.rt_runtime_us").read_text()) == c.rt_runtime_us(spec) == 10_000
        assert _podman_names(record.run_id) == []
        assert [p for p, run_id in run_cgroups().items() if run_id == record.run_id] == []
    finally:
        clean_record(record)


def test_root_is_read_only_and_state_writable(workload_image: str, netns_pid: int, runtime: c.ContainerRuntime) -> None:
    spec = c.ContainerSpec("fs", workload_image, ("sleep", "600"), netns_pid=netns_pid)
    container = runtime.run(spec)
    root = runtime.exec(container.name, ["touch", "/opt/x"], check=False)
    assert root.returncode != 0 and "Read-only file system" in root.stderr
    state = runtime.exec(container.name, ["sh", "-c", "echo kept > /state/s && cat /state/s"])
    assert state.stdout.strip() == "kept"


def test_own_pid_mount_uts_namespaces_and_the_hosts_network(
    workload_image: str, netns_pid: int, runtime: c.ContainerRuntime
) -> None:
    container = runtime.run(c.ContainerSpec("ns", workload_image, ("sleep", "600"), netns_pid=netns_pid))
    pid = runtime.pid(container.name)
    assert pid > 0

    def ns(p, kind: str) -> int:
        return os.stat(f"/proc/{p}/ns/{kind}").st_ino

    for kind in ("pid", "mnt", "uts"):
        assert ns(pid, kind) != ns("self", kind), kind
    assert ns(pid, "net") == ns(netns_pid, "net")
    assert ns(pid, "net") != ns("self", "net")
    assert runtime.exec(container.name, ["hostname"]).stdout.strip() == "ns"
    # In its own PID namespace the workload sees itself and its init only.
    pids = runtime.exec(container.name, ["sh", "-c", "ls -d /proc/[0-9]*"]).stdout.split()
    assert len(pids) <= 4, pids


def test_stop_then_remove_leaves_nothing(workload_image: str, netns_pid: int, runtime: c.ContainerRuntime) -> None:
    container = runtime.run(_server_spec(workload_image, netns_pid), ready_url=f"http://127.0.0.1:{PORT}/readyz", timeout_s=60)
    pid = runtime.pid(container.name)
    start = time.monotonic()
    runtime.stop(container.name, grace_s=10)
    # The server drains on SIGTERM and exits: no need to wait for the SIGKILL after the grace period.
    assert time.monotonic() - start < 10
    assert runtime.state(container.name) in ("exited", "stopped")
    assert not Path(f"/proc/{pid}").exists()
    runtime.remove(container.name)
    assert _podman_names(runtime.run_id) == []
    runtime.remove(container.name)  # removing twice is fine


def test_kill_9_then_clean_leaves_nothing(workload_image: str, netns_pid: int, runtime: c.ContainerRuntime) -> None:
    a = runtime.run(c.ContainerSpec("a", workload_image, ("sleep", "600"), netns_pid=netns_pid))
    b = runtime.create(c.ContainerSpec("b", workload_image, ("sleep", "600"), netns_pid=netns_pid))
    info = runtime.inspect(a.name)
    pid, conmon = info["State"]["Pid"], info["State"]["ConmonPid"]
    os.kill(conmon, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    assert sorted(_podman_names(runtime.run_id)) == sorted([a.name, b.name])
    # What `twin clean` does for a run whose owner died: by the run's label.
    removed = clean_record(runtime.record)
    assert sorted(removed) == sorted([f"container {a.name}", f"container {b.name}"])
    assert _podman_names(runtime.run_id) == []
    assert runtime.run_id not in labelled_containers().values()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_exit_before_ready_is_reported_and_removed(workload_image: str, netns_pid: int, runtime: c.ContainerRuntime) -> None:
    spec = c.ContainerSpec("bad", workload_image, ("sh", "-c", "echo boom-on-start >&2; exit 3"), netns_pid=netns_pid)
    with pytest.raises(c.ContainerError, match="boom-on-start"):
        runtime.run(spec, ready_url=f"http://127.0.0.1:{PORT}/readyz", timeout_s=20)
    assert _podman_names(runtime.run_id) == []


def test_context_manager_removes_the_runs_containers(workload_image: str, netns_pid: int) -> None:
    record = RunRecord.create()
    try:
        with c.ContainerRuntime(record.run_id, record=record) as rt:
            rt.run(c.ContainerSpec("cm", workload_image, ("sleep", "600"), netns_pid=netns_pid))
            assert len(_podman_names(record.run_id)) == 1
        assert _podman_names(record.run_id) == []
    finally:
        clean_record(record)


def test_checkpoint_restore_or_the_reason(
    workload_image: str, netns_pid: int, runtime: c.ContainerRuntime, tmp_path: Path
) -> None:
    ok, reason = runtime.criu_available()
    assert isinstance(reason, str) and "criu" in reason.lower()
    spec = c.ContainerSpec(
        "cr", workload_image, ("python", "-c", "import time\nn = 0\nwhile True:\n    n += 1\n    open('/state/n', 'w').write(str(n))\n    time.sleep(0.05)"),
        netns_pid=netns_pid,
    )
    container = runtime.run(spec)
    archive = tmp_path / "cr.tar.gz"
    if not ok:
        # Where CRIU cannot run, the strategy is refused with the reason, and nothing changes.
        with pytest.raises(c.ContainerError, match="not available here"):
            runtime.checkpoint(container.name, archive)
        assert runtime.state(container.name) == "running"
        assert not archive.exists()
        return
    time.sleep(0.3)
    runtime.checkpoint(container.name, archive)
    assert archive.stat().st_size > 0
    counted = int(runtime.exec(container.name, ["cat", "/state/n"]).stdout) if runtime.state(container.name) == "running" else 0
    runtime.remove(container.name)
    restored = runtime.restore(archive, name="cr2")
    assert runtime.state(restored) == "running"
    # The restored process goes on counting from where it was, not from zero.
    time.sleep(0.2)
    assert int(runtime.exec(restored, ["cat", "/state/n"]).stdout) > max(counted, 1)


_OWNER = """
import sys, time
from twin.emulation.records import RunRecord
from twin.workloads import containers as c
record = RunRecord.create()
rt = c.ContainerRuntime(record.run_id, record=record)
# realtime, so that where the kernel budgets realtime CPU per cgroup the run owns a cgroup too
rt.run(c.ContainerSpec("orphan", sys.argv[1], ("sleep", "600"), netns_pid=int(sys.argv[2]), cpus=0.1, rt_priority=4))
print(record.path, flush=True)
time.sleep(600)
"""


def test_owner_killed_then_clean_by_its_record(workload_image: str, netns_pid: int) -> None:
    """The crash path of `twin clean`: the run's process dies by SIGKILL; its record on disk finds the container."""
    from twin.emulation import records

    owner = subprocess.Popen([sys.executable, "-c", _OWNER, workload_image, str(netns_pid)],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        path = Path(owner.stdout.readline().strip())
        record = RunRecord.load(path)
        assert record.containers == [f"tw-{record.run_id}-orphan"]
        owner.kill()
        owner.wait()
        assert not records._owner_alive(record)
        assert _podman_names(record.run_id) == record.containers
        cgroups = sorted(str(p) for p, run_id in records.run_cgroups().items() if run_id == record.run_id)
        if c.ContainerRuntime(record.run_id).rt_budget:
            assert cgroups, "a realtime container where the kernel budgets per cgroup lives under the run's cgroup"
        removed = clean_record(RunRecord.load(path))
        assert removed == [f"container {record.containers[0]}"] + [f"cgroup {p}" for p in cgroups]
        assert _podman_names(record.run_id) == []
        assert [p for p, run_id in records.run_cgroups().items() if run_id == record.run_id] == []
        assert not path.exists()
    finally:
        stop_child(owner)
