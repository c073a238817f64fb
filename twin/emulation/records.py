"""Records of what a run made, so that ``twin clean`` removes exactly that and nothing else.

Every run writes ``/run/twin/<run-id>/record.json`` before it creates anything
and updates it as it goes: the OVS bridges (also tagged in OVSDB with
``external_ids:twin-run=<run-id>``), the processes it started (PID plus the
process start time from ``/proc/PID/stat``, so a reused PID is never killed),
and the interfaces it made in the root namespace. Mininet hosts live in
namespaces held by their shell processes, so ending those processes removes the
namespaces and every veth with an end inside them. Workload containers carry the
podman label ``twin-run=<run-id>``; their names are recorded before they are
created, and cleaning removes every container with the run's label. A run with
realtime services also owns the cgroup ``tw-<run-id>`` (the parent of those
containers, holding their realtime CPU budget) in each cgroup v1 hierarchy.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RECORD_ROOT = Path(os.environ.get("TWIN_RECORD_DIR", "/run/twin"))
OVS_TAG = "twin-run"
# Open vSwitch's global other_config keys a run may set, each with a marker in the
# Open_vSwitch table's external_ids (``twin-<key>=<value>``), so the last run to stop, or
# ``twin clean`` after a kill, can tell a setting the twin made from one an operator made.
OVS_GLOBAL_KEYS = ("pmd-maxsleep", "pmd-cpu-mask")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# A run's own cgroup: tw-<run id> (the run id format of RunRecord.create).
_RUN_CGROUP = re.compile(r"^tw-(\d{8}-\d{6}-[0-9a-f]{6})$")


def run_cgroup(run_id: str) -> str:
    """The cgroup path (from a hierarchy's root) a run's realtime containers live under."""
    return f"/tw-{run_id}"


def run_cgroups(root: Path | None = None) -> dict[Path, str]:
    """Every run cgroup directory in the v1 hierarchies (and the v2 one) -> its run id."""
    root = root or CGROUP_ROOT
    found: dict[Path, str] = {}
    if not root.is_dir():
        return found
    for hierarchy in sorted(root.iterdir()):
        if not hierarchy.is_dir():
            continue
        for child in sorted(hierarchy.iterdir()):
            match = _RUN_CGROUP.match(child.name)
            if match and child.is_dir():
                found.setdefault(child.resolve(), match.group(1))  # cpu and cpu,cpuacct are one directory
    return found


def remove_cgroup_tree(path: Path, wait_s: float = 10.0) -> bool:
    """rmdir a cgroup and the cgroups under it, deepest first; False if one still holds tasks
    after ``wait_s`` (a just-removed container's processes take a moment to be gone)."""
    deadline = time.monotonic() + wait_s
    while True:
        for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                child.rmdir()
            except OSError:
                pass
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as err:
            if time.monotonic() >= deadline:
                log.warning("cgroup %s not removed: %s", path, err.strerror or err)
                return False
        time.sleep(0.05)


def remove_run_cgroups(run_id: str | None = None, keep: set[str] = frozenset()) -> list[str]:
    """Remove the run cgroups of ``run_id`` (None: of every run not in ``keep``); returns those removed."""
    removed = []
    for path, owner in run_cgroups().items():
        if (owner == run_id if run_id is not None else owner not in keep) and remove_cgroup_tree(path):
            removed.append(str(path))
    return removed


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None  # exited; only its parent's wait() is missing
    return int(fields[19])


@dataclass
class ProcessRecord:
    pid: int
    start_time: int | None
    what: str

    def alive(self) -> bool:
        return self.start_time is not None and process_start_time(self.pid) == self.start_time


@dataclass
class RunRecord:
    run_id: str
    created: float = field(default_factory=time.time)
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = field(default_factory=lambda: process_start_time(os.getpid()))
    bridges: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    workload_cpus: list[int] | None = None  # CPUs the run leaves to workloads (TwinSession's CPU plan)
    path: Path | None = None

    @classmethod
    def create(cls, *, workload_cpus: list[int] | None = None) -> "RunRecord":
        record = cls(run_id=time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6], workload_cpus=workload_cpus)
        record.path = RECORD_ROOT / record.run_id / "record.json"
        record.path.parent.mkdir(parents=True, exist_ok=True)
        record.save()
        return record

    @property
    def directory(self) -> Path:
        assert self.path is not None
        return self.path.parent

    def save(self) -> None:
        assert self.path is not None
        data = asdict(self)
        data.pop("path")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> "RunRecord":
        data = json.loads(path.read_text())
        data["processes"] = [ProcessRecord(**p) for p in data.get("processes", [])]
        record = cls(**data)
        record.path = path
        return record

    def add_process(self, pid: int, what: str) -> None:
        self.processes.append(ProcessRecord(pid, process_start_time(pid), what))
        self.save()

    def add_bridge(self, name: str) -> None:
        self.bridges.append(name)
        self.save()

    def add_interface(self, name: str) -> None:
        self.interfaces.append(name)
        self.save()

    def add_container(self, name: str) -> None:
        self.containers.append(name)
        self.save()


def _ovs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True)


def _tagged_rows(table: str, key_column: str) -> dict[str, str]:
    """``key_column`` value -> run id, for every row of an OVSDB table a twin run tagged
    (``external_ids:twin-run``); empty when OVS does not answer."""
    proc = _ovs("--format=json", f"--columns={key_column},external_ids", "list", table)
    if proc.returncode != 0:
        return {}
    result = {}
    for key, ids in json.loads(proc.stdout).get("data", []):
        mapping = dict(ids[1]) if isinstance(ids, list) and ids and ids[0] == "map" else {}
        if OVS_TAG in mapping:
            # a uuid column comes as ["uuid", "..."]
            result[key[1] if isinstance(key, list) and len(key) == 2 else key] = mapping[OVS_TAG]
    return result


def tagged_bridges() -> dict[str, str]:
    """OVS bridge -> run id, for every bridge a twin run tagged."""
    return _tagged_rows("Bridge", "name")


def tagged_qos() -> dict[str, str]:
    """OVS QoS row uuid -> run id, for every QoS row a twin run made (the netem backend's
    ``linux-noop`` rows). QoS is a root table: its rows outlive the ports that used them."""
    return _tagged_rows("QoS", "_uuid")


def destroy_qos(uuids: Sequence[str]) -> str | None:
    """Destroy QoS rows in one transaction (after the ports using them are gone: OVSDB
    checks references before it collects deleted ports). Returns ovs-vsctl's error, or None."""
    if not uuids:
        return None
    args: list[str] = []
    for row in uuids:
        args += ["--", "--if-exists", "destroy", "QoS", row]
    proc = _ovs(*args)
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


def delete_interfaces(names: Sequence[str]) -> list[str]:
    """Delete the root-namespace interfaces of ``names`` that exist (a veth takes its peer
    with it); returns the ones deleted."""
    gone = []
    for name in names:
        if Path(f"/sys/class/net/{name}").exists():
            subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)
            gone.append(name)
    return gone


def labelled_containers(podman: str = "podman") -> dict[str, str]:
    """podman container name -> run id, for every container (any state) a twin run labelled.

    Empty where podman is not installed.
    """
    if shutil.which(podman) is None:
        return {}
    proc = subprocess.run(
        [podman, "ps", "--all", "--filter", f"label={OVS_TAG}", "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        log.warning("podman ps failed: %s", proc.stderr.strip())
        return {}
    result = {}
    for entry in json.loads(proc.stdout or "[]"):
        names = entry.get("Names") or []
        run_id = (entry.get("Labels") or {}).get(OVS_TAG)
        if names and run_id:
            result[names[0]] = run_id
    return result


def remove_containers(names: list[str], podman: str = "podman", attempts: int = 3) -> list[str]:
    """Force-remove containers by exact name (killing them if they run), with their anonymous volumes.

    Returns the names still there afterwards. Retried because when a container's
    conmon was killed, the first ``rm --force`` only notices that the container
    stopped ("container state improper") and the next one removes it.
    """
    left = list(names)
    for _ in range(attempts):
        if not left:
            break
        proc = subprocess.run(
            [podman, "rm", "--force", "--volumes", "--time", "0", "--ignore", *left],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode == 0:
            return []
        present = subprocess.run(
            [podman, "ps", "--all", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=60
        ).stdout.split()
        left = [name for name in left if name in present]
    if left:
        log.warning("could not remove containers %s", ", ".join(left))
    return left


def terminate(processes: list[ProcessRecord], grace_s: float = 3.0, first_signal: int = signal.SIGTERM) -> int:
    """Signal recorded processes that are still the same processes, then SIGKILL stragglers."""
    live = [p for p in processes if p.alive()]
    for p in live:
        try:
            os.kill(p.pid, first_signal)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.alive() for p in live):
        time.sleep(0.05)
    for p in live:
        if p.alive():
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return len(live)


def clean_record(record: RunRecord) -> list[str]:
    """Remove everything one record lists; returns what was removed (for the user)."""
    removed = []
    if record.containers:
        # By the run's label, not the recorded names: a restore may have named one we never saw.
        ours = sorted(name for name, run_id in labelled_containers().items() if run_id == record.run_id)
        remove_containers(ours)
        removed += [f"container {name}" for name in ours]
    removed += [f"cgroup {path}" for path in remove_run_cgroups(record.run_id)]
    if terminate(record.processes):
        removed.append(f"{len(record.processes)} process(es)")
    bridges = tagged_bridges()
    for name in record.bridges:
        if bridges.get(name) == record.run_id:
            _ovs("--if-exists", "del-br", name)
            removed.append(f"bridge {name}")
    ours = sorted(row for row, run_id in tagged_qos().items() if run_id == record.run_id)
    if ours and destroy_qos(ours) is None:
        removed.append(f"{len(ours)} OVS QoS row(s)")
    removed += [f"interface {name}" for name in delete_interfaces(record.interfaces)]
    if record.path is not None and record.directory.is_dir():
        for child in sorted(record.directory.iterdir(), reverse=True):
            if child.is_file():
                child.unlink()
        try:
            record.directory.rmdir()
        except OSError:
            pass
    return removed


def ovs_global(table_column: str, key: str) -> str | None:
    """One key of the Open_vSwitch table's ``other_config`` or ``external_ids``; None when unset."""
    proc = _ovs("get", "Open_vSwitch", ".", f"{table_column}:{key}")
    return proc.stdout.strip().strip('"') if proc.returncode == 0 and proc.stdout.strip() else None


def set_ovs_global(key: str, value: str) -> bool:
    """Set a global OVS ``other_config`` key for twin runs, marked as the twin's.

    A value an operator set (present, without the twin's marker) is left alone: returns
    False. Otherwise sets it (the newest run's value wins) and returns True.
    """
    if key not in OVS_GLOBAL_KEYS:
        raise ValueError(f"unknown OVS setting {key!r}")
    current, marker = ovs_global("other_config", key), ovs_global("external_ids", f"twin-{key}")
    if current is not None and marker != current:
        return False
    proc = _ovs("set", "Open_vSwitch", ".", f"other_config:{key}={value}", f"external_ids:twin-{key}={value}")
    if proc.returncode != 0:
        raise RuntimeError(f"ovs-vsctl could not set other_config:{key}: {proc.stderr.strip()}")
    return True


def release_ovs_globals() -> list[str]:
    """Remove the global OVS settings twin runs made once no twin port needs them any more
    (no interface of type afxdp is left); a setting someone changed since is left alone."""
    left = _ovs("--bare", "--columns=name", "find", "Interface", "type=afxdp")
    if left.returncode != 0 or left.stdout.strip():
        return []
    removed = []
    for key in OVS_GLOBAL_KEYS:
        marker = ovs_global("external_ids", f"twin-{key}")
        if marker is None:
            continue
        if ovs_global("other_config", key) == marker:
            _ovs("remove", "Open_vSwitch", ".", "other_config", key)
            removed.append(f"OVS other_config:{key}={marker}")
        _ovs("remove", "Open_vSwitch", ".", "external_ids", f"twin-{key}")
    return removed


def clean_all(include_live: bool = False) -> list[str]:
    """``twin clean``: remove what runs left behind (runs whose owner died, unless ``include_live``)."""
    removed = []
    if RECORD_ROOT.is_dir():
        for path in sorted(RECORD_ROOT.glob("*/record.json")):
            try:
                record = RunRecord.load(path)
            except (OSError, ValueError, TypeError) as err:
                log.warning("skipping unreadable record %s: %s", path, err)
                continue
            if not include_live and _owner_alive(record):
                log.info("run %s is still running (pid %s); leaving it", record.run_id, record.owner_pid)
                continue
            removed += clean_record(record)
    # Bridges tagged by a run whose record is gone are still ours: the tag says so.
    live_runs = {RunRecord.load(p).run_id for p in RECORD_ROOT.glob("*/record.json")} if RECORD_ROOT.is_dir() else set()
    for name, run_id in tagged_bridges().items():
        if run_id not in live_runs:
            _ovs("--if-exists", "del-br", name)
            removed.append(f"bridge {name} (run {run_id}, no record)")
    orphans = sorted(row for row, run_id in tagged_qos().items() if run_id not in live_runs)
    if orphans and destroy_qos(orphans) is None:
        removed.append(f"{len(orphans)} OVS QoS row(s) (no record)")
    # Containers labelled by a run whose record is gone, likewise.
    orphans = sorted(name for name, run_id in labelled_containers().items() if run_id not in live_runs)
    remove_containers(orphans)
    removed += [f"container {name} (no record)" for name in orphans]
    removed += [f"cgroup {path} (no record)" for path in remove_run_cgroups(keep=live_runs)]
    removed += release_ovs_globals()
    return removed


def _owner_alive(record: RunRecord) -> bool:
    # The start time tells a live owner from a new process that reused its PID.
    return record.owner_start is not None and process_start_time(record.owner_pid) == record.owner_start


def host_state() -> dict[str, set[str]]:
    """What exists now that a twin run could leave behind: tagged bridges and QoS rows, global OVS
    settings marked as the twin's, veths in this namespace, run records. Tests compare it before and after a run."""
    links = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
    settings = {f"{key}={ovs_global('other_config', key)}" for key in OVS_GLOBAL_KEYS
                if ovs_global("external_ids", f"twin-{key}") is not None}
    return {
        "bridges": set(tagged_bridges()),
        "qos": set(tagged_qos()),
        "ovs_settings": settings,
        "veths": {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ":" in line},
        "runs": {p.name for p in RECORD_ROOT.iterdir()} if RECORD_ROOT.is_dir() else set(),
        "cgroups": {str(path) for path in run_cgroups()},
    }


def stop_child(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """End a child we started: SIGTERM, wait, SIGKILL if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def owner_alive(record: RunRecord) -> bool:
    """Whether the process that made ``record`` still runs (``twin shift`` attaches only to those)."""
    return _owner_alive(record)
