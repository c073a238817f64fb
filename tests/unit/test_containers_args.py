"""Container names, podman argument lists, cgroup facts and the image hash (no podman, no root)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from twin.emulation.records import RunRecord
from twin.workloads import containers as c
from twin.workloads import image

REF = "localhost/twin-workload:0123456789ab"


def _spec(**kw) -> c.ContainerSpec:
    base = dict(name="web", image=REF, command=("python", "-m", "twin.workloads.server"))
    base.update(kw)
    return c.ContainerSpec(**base)


def _value(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "web", "s-fusion-dfk", "a" * 24, "x1-2"])
def test_good_names(name: str) -> None:
    assert c.validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "A", "1abc", "-a", "a" * 25, "a;rm -rf /", "a b", "a/b", "a_b", "a.b", "ä", None, 5]
)
def test_bad_names_are_refused_with_the_fix(name) -> None:
    with pytest.raises(c.ContainerError, match=r"fix: use 1-24 characters"):
        c.validate_name(name)


@pytest.mark.parametrize("run_id", ["20261127-014512-ab12cd", "t123", "0", "a" * 32])
def test_good_run_ids(run_id: str) -> None:
    assert c.validate_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["", "-x", "A1", "a" * 33, "x y", "x;y", "../x"])
def test_bad_run_ids(run_id: str) -> None:
    with pytest.raises(c.ContainerError, match="run id"):
        c.validate_run_id(run_id)


def test_record_run_ids_are_valid_container_run_ids(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("twin.emulation.records.RECORD_ROOT", tmp_path)
    record = RunRecord.create()
    assert c.full_name(record.run_id, "web") == f"tw-{record.run_id}-web"


def test_runtime_refuses_names_of_other_runs() -> None:
    rt = c.ContainerRuntime("run-a")
    with pytest.raises(c.ContainerError, match="another run"):
        rt._known("tw-run-b-web")
    with pytest.raises(c.ContainerError, match="not a twin container name"):
        rt._known("web")


def test_runtime_without_podman_says_how_to_fix_and_leaves_cleanly(tmp_path: Path) -> None:
    # A host without podman (a VM made for the network only) gets one line, not a traceback
    # from the clean-up on the way out.
    rt = c.ContainerRuntime("run-a", podman=str(tmp_path / "no-podman"))
    with pytest.raises(c.ContainerError, match="not found.*install.sh.*--no-migration-check"):
        with rt:
            pass
    assert rt.cleanup_run() == []


# --------------------------------------------------------------------------- create arguments


def test_create_args_carry_name_labels_limits_and_namespace() -> None:
    spec = _spec(netns_pid=4242, cpus=0.5, memory_bytes=256 * 2**20, pids_limit=64, labels={"twin-site": "dfk"})
    args = c.create_args(spec, "r1", "runc")
    assert args[0] == "create"
    assert _value(args, "--name") == ["tw-r1-web"]
    assert _value(args, "--hostname") == ["web"]
    assert _value(args, "--runtime") == ["runc"]
    assert set(_value(args, "--label")) == {"twin-run=r1", "twin-container=web", "twin-site=dfk"}
    assert _value(args, "--network") == ["ns:/proc/4242/ns/net"]
    assert _value(args, "--cpus") == ["0.5"]
    assert _value(args, "--memory") == [str(256 * 2**20)]
    assert _value(args, "--memory-swap") == [str(256 * 2**20)]
    assert _value(args, "--pids-limit") == ["64"]
    assert "--cpuset-cpus" not in args
    assert _value(c.create_args(_spec(cpuset=(2, 0, 2)), "r1", None), "--cpuset-cpus") == ["0,2"]
    assert "--read-only" in args and "--init" in args and "--pull=never" in args
    assert _value(args, "--tmpfs") == [f"/state:rw,size={c.DEFAULT_STATE_BYTES},mode=1777"]
    assert set(_value(args, "--ulimit")) == set(c.ULIMITS)
    # Image, then the command, last: nothing after them is read as a podman flag.
    assert args[-4:] == [REF, "python", "-m", "twin.workloads.server"]


def test_create_args_defaults_no_network_no_runtime_no_limits() -> None:
    args = c.create_args(_spec(), "r1", None)
    assert "--runtime" not in args
    assert _value(args, "--network") == ["none"]
    assert "--cpus" not in args and "--memory" not in args
    assert _value(args, "--pids-limit") == [str(c.DEFAULT_PIDS_LIMIT)]


def test_create_args_writable_root_and_state_dir(tmp_path: Path) -> None:
    args = c.create_args(_spec(read_only_root=False, state_dir=tmp_path, init=False), "r1", None)
    assert "--read-only" not in args and "--init" not in args
    assert _value(args, "--mount") == [f"type=bind,src={tmp_path},dst=/state"]
    assert "--tmpfs" not in args


def test_create_args_env_and_mounts(tmp_path: Path) -> None:
    spec = _spec(env={"B": "2", "A": "x y"}, mounts=(c.Mount(tmp_path, "/data"),))
    args = c.create_args(spec, "r1", None)
    assert _value(args, "--env") == ["A=x y", "B=2"]
    assert _value(args, "--mount") == [f"type=bind,src={tmp_path},dst=/data,ro"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image": "docker.io/library/python:3"}, "not a local image"),
        ({"image": "localhost/x"}, "not a local image"),
        ({"command": ()}, "command"),
        ({"command": ("python", "")}, "command"),
        ({"netns_pid": 0}, "netns_pid"),
        ({"cpus": 0.0}, "cpus"),
        ({"cpus": 5000.0}, "cpus"),
        ({"memory_bytes": 1024}, "6 MiB"),
        ({"pids_limit": 0}, "pids_limit"),
        ({"env": {"A-B": "1"}}, "environment"),
        ({"labels": {"twin-run": "other"}}, "reserved"),
        ({"labels": {"Bad": "1"}}, "label"),
        ({"cgroup_parent": "/h1/../../x"}, "cgroup_parent"),
        ({"cgroup_parent": "/h1;x"}, "cgroup_parent"),
        ({"rt_priority": 0}, "rt_priority"),
        ({"rt_priority": 99}, "rt_priority"),
        ({"stop_grace_s": -1.0}, "stop_grace_s"),
        ({"cpuset": ()}, "cpuset"),
        ({"cpuset": (-1,)}, "cpuset"),
        ({"cpuset": ("0;rm",)}, "cpuset"),
    ],
)
def test_bad_specs_are_refused(change: dict, match: str) -> None:
    with pytest.raises(c.ContainerError, match=match):
        c.create_args(_spec(**change), "r1", None)


@pytest.mark.parametrize("target", ["data", "/a,b", "/a/../etc"])
def test_bad_mount_targets(tmp_path: Path, target: str) -> None:
    with pytest.raises(c.ContainerError, match="mount target"):
        c.create_args(_spec(mounts=(c.Mount(tmp_path, target),)), "r1", None)


def test_missing_mount_source(tmp_path: Path) -> None:
    with pytest.raises(c.ContainerError, match="does not exist"):
        c.create_args(_spec(mounts=(c.Mount(tmp_path / "nope", "/data"),)), "r1", None)


def test_cgroup_parent_passed() -> None:
    assert _value(c.create_args(_spec(cgroup_parent="/h1"), "r1", None), "--cgroup-parent") == ["/h1"]


def test_realtime_container_gets_sys_nice_and_its_budget_under_the_runs_cgroup() -> None:
    args = c.create_args(_spec(rt_priority=4, cpus=0.1), "r1", None, rt_budget=True)
    assert _value(args, "--cap-add") == ["SYS_NICE"]
    assert _value(args, "--cgroup-parent") == ["/tw-r1"]
    assert _value(args, "--cpu-rt-period") == [str(c.RT_PERIOD_US)]
    assert _value(args, "--cpu-rt-runtime") == [str(int(0.1 * c.RT_PERIOD_US))]
    # A large service is capped, so instances of a moving service fit the run's budget together.
    big = c.create_args(_spec(rt_priority=4, cpus=2.0), "r1", None, rt_budget=True)
    assert _value(big, "--cpu-rt-runtime") == [str(int(c.RT_MAX_SHARE * c.RT_PERIOD_US))]
    assert 3 * c.RT_MAX_SHARE <= c.RT_RUN_SHARE
    # Where the kernel does not budget per cgroup (cgroup v2, no RT group scheduling): the capability only.
    plain = c.create_args(_spec(rt_priority=4), "r1", None, rt_budget=False)
    assert _value(plain, "--cap-add") == ["SYS_NICE"] and "--cgroup-parent" not in plain
    assert "--cpu-rt-runtime" not in plain and "--cap-add" not in c.create_args(_spec(), "r1", None)


def test_realtime_container_cannot_have_another_cgroup_parent() -> None:
    with pytest.raises(c.ContainerError, match="leave cgroup_parent unset"):
        c.create_args(_spec(rt_priority=4, cgroup_parent="/h1"), "r1", None, rt_budget=True)


def test_run_cgroups_are_found_by_name_and_removed_deepest_first(tmp_path: Path, monkeypatch) -> None:
    from twin.emulation import records

    monkeypatch.setattr(records, "CGROUP_ROOT", tmp_path)
    ours, other = "20261127-165735-b9ad92", "20261127-170000-aaaaaa"
    for hierarchy in ("cpu,cpuacct", "memory"):
        (tmp_path / hierarchy / f"tw-{ours}" / "libpod-1").mkdir(parents=True)
        (tmp_path / hierarchy / f"tw-{other}").mkdir(parents=True)
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")  # one directory under two names: found once
    (tmp_path / "memory" / "tw-not-a-run").mkdir()
    (tmp_path / "memory" / "libpod_parent").mkdir()
    found = records.run_cgroups()
    assert sorted(found.values()) == sorted([ours, ours, other, other])
    assert records.run_cgroup(ours) == f"/tw-{ours}"
    removed = records.remove_run_cgroups(ours)
    assert len(removed) == 2 and not (tmp_path / "memory" / f"tw-{ours}").exists()
    assert (tmp_path / "memory" / f"tw-{other}").is_dir()
    assert sorted(records.remove_run_cgroups(keep={ours})) == sorted(
        str((tmp_path / h / f"tw-{other}").resolve()) for h in ("cpu,cpuacct", "memory"))
    assert (tmp_path / "memory" / "tw-not-a-run").is_dir() and (tmp_path / "memory" / "libpod_parent").is_dir()


# --------------------------------------------------------------------------- host facts

_HYBRID = """\
25 1 0:24 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:25 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""
_V2 = "25 1 0:24 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
_V1 = "25 1 0:24 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n27 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"


@pytest.mark.parametrize(("text", "layout"), [(_HYBRID, "hybrid"), (_V2, "v2"), (_V1, "v1"), ("", "v1")])
def test_cgroup_layout(text: str, layout: str) -> None:
    assert c.cgroup_layout(text) == layout


def test_runtime_choice() -> None:
    assert c.choose_oci_runtime("crun", "hybrid", True)[0] == "runc"
    assert c.choose_oci_runtime("crun", "v2", True)[0] is None
    assert c.choose_oci_runtime("runc", "hybrid", True)[0] is None
    with pytest.raises(c.ContainerError, match="apt-get install runc"):
        c.choose_oci_runtime("crun", "hybrid", False)


def test_engine_string() -> None:
    engine = c.Engine("4.3.1", "runc", "runc", "why", "v1", "hybrid", "cgroupfs")
    assert str(engine) == "podman 4.3.1 (runc, cgroup v1)"


def _fake_proc(tmp_path: Path, lines: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "77" / "cgroup").write_text(lines)
    return proc


def test_read_limits_v1(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    for ctl, files in {
        "cpu": {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000"},
        "memory": {"memory.limit_in_bytes": str(256 * 2**20)},
        "pids": {"pids.max": "64"},
    }.items():
        d = root / ctl / "libpod_parent" / "libpod-x"
        d.mkdir(parents=True)
        for name, text in files.items():
            (d / name).write_text(text + "\n")
    proc = _fake_proc(
        tmp_path,
        "9:pids:/libpod_parent/libpod-x\n4:memory:/libpod_parent/libpod-x\n1:cpu,cpuacct:/libpod_parent/libpod-x\n0::/\n",
    )
    limits = c.read_limits(77, cgroup_root=root, proc_root=proc)
    assert limits == c.AppliedLimits("v1", 50000, 100000, 256 * 2**20, 64)
    assert limits.cpus == 0.5


def test_read_limits_v2_and_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "machine.slice" / "libpod-x"
    d.mkdir(parents=True)
    (d / "cpu.max").write_text("max 100000\n")
    (d / "memory.max").write_text("max\n")
    (d / "pids.max").write_text("max\n")
    proc = _fake_proc(tmp_path, "0::/machine.slice/libpod-x\n")
    limits = c.read_limits(77, cgroup_root=root, proc_root=proc)
    assert limits == c.AppliedLimits("v2", None, 100000, None, None)
    assert limits.cpus is None


# --------------------------------------------------------------------------- run records


def test_record_keeps_container_names(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("twin.emulation.records.RECORD_ROOT", tmp_path)
    record = RunRecord.create()
    record.add_container(f"tw-{record.run_id}-web")
    assert record.path is not None
    loaded = RunRecord.load(record.path)
    assert loaded.containers == [f"tw-{record.run_id}-web"]


def test_old_records_without_containers_still_load(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text('{"run_id": "old", "created": 1.0, "owner_pid": 1, "owner_start": null, '
                    '"bridges": [], "processes": [], "interfaces": []}')
    assert RunRecord.load(path).containers == []


# --------------------------------------------------------------------------- image hash


def _mini_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "twin").mkdir(parents=True)
    (repo / "scripts").mkdir()
    (repo / "twin" / "a.py").write_text("x = 1\n")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    shutil.copy(image.REPO_ROOT / "scripts" / "build-image.sh", repo / "scripts" / "build-image.sh")
    return repo


def test_source_hash_follows_code_not_caches(tmp_path: Path) -> None:
    repo = _mini_repo(tmp_path)
    first = image.source_hash(repo)
    assert first == image.source_hash(repo)
    (repo / "twin" / "__pycache__").mkdir()
    (repo / "twin" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert image.source_hash(repo) == first
    (repo / "twin" / "a.py").write_text("x = 2\n")
    assert image.source_hash(repo) != first
    (repo / "twin" / "a.py").write_text("x = 1\n")
    (repo / "twin" / "b.py").write_text("")
    assert image.source_hash(repo) != first
    assert image.image_ref(repo).startswith("localhost/twin-workload:")


def test_pinned_requirements_cover_the_runtime() -> None:
    pins = dict(line.split("==") for line in image.pinned_requirements())
    for name in ("numpy", "onnxruntime", "pydantic", "pyyaml"):
        assert name in pins, pins


@pytest.mark.parametrize("ref", ["docker.io/x:1", "localhost/x", "localhost/X:1", "localhost/x:1;rm", "x:1"])
def test_only_local_refs(ref: str) -> None:
    with pytest.raises(image.ImageError, match="localhost/NAME:TAG"):
        image.validate_ref(ref)


@pytest.mark.parametrize(
    ("detail", "fix"),
    [
        ("Error: localhost/twin-workload:x: image not known", "build-image.sh"),
        ("error setting rlimit type 7: operation not permitted", "install.sh"),
        ("crun: cgroups in hybrid mode not supported", "runc"),
        ("Error: no container with name or ID \"x\" found: no such container", "podman ps -a"),
        ("something new", "podman logs"),
    ],
)
def test_podman_errors_come_with_a_fix(detail: str, fix: str) -> None:
    assert fix in c._fix_for(detail)
