"""Workload containers at emulated sites, run with podman.

Each workload is one rootful podman container with its own PID, mount and UTS
namespaces (podman's default), joined to a site host's network namespace
(``--network ns:/proc/PID/ns/net``), with CPU, memory and PID limits, a
read-only root filesystem and a writable ``/state`` (tmpfs unless a host
directory is given). The runtime only runs containers; exporting and importing
a service's state is the server's HTTP API's business.

Nothing is left behind: every container carries the label ``twin-run=<run id>``
and is named ``tw-<run id>-<name>``; :meth:`ContainerRuntime.cleanup_run`
removes by that label (never by a name pattern), and a run record lists the
names before they are created so that ``twin clean`` finds them after a crash.

Facts this module works around (measured on Debian 12, podman 4.3.1): crun
refuses the hybrid cgroup layout (cgroup v1 controllers + an empty v2
hierarchy), so runc is used there; root lacks CAP_SYS_RESOURCE, so podman's
default nofile limit cannot be set and the ulimits are passed explicitly (and
set in /etc/containers/containers.conf.d/twin.conf by the installer).
"""

from __future__ import annotations

import ctypes
import functools
import http.client
import json
import logging
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from twin.emulation.records import CGROUP_ROOT, remove_containers, remove_run_cgroups, run_cgroup
from twin.errors import TwinError
from twin.workloads.image import validate_ref

log = logging.getLogger(__name__)

RUN_LABEL = "twin-run"
NAME_LABEL = "twin-container"
NAME_PREFIX = "tw-"
STATE_DIR = "/state"
#: Passed on every create: podman's default nofile (1048576) needs CAP_SYS_RESOURCE.
ULIMITS = ("nofile=20000:20000", "nproc=4096:4096")
DEFAULT_PIDS_LIMIT = 512
DEFAULT_STATE_BYTES = 256 * 1024 * 1024
# Realtime containers (ContainerSpec.rt_priority) where the kernel budgets realtime CPU
# per cgroup (cgroup v1 with RT group scheduling, as here): each may use its cpus, at
# most RT_MAX_SHARE of a CPU, per RT_PERIOD_US at realtime priority, and the run's
# cgroup holds RT_RUN_SHARE: three instances at once fit (one realtime service mid-move
# beside another). A server past its budget is held until the next period: drive-assist
# uses 6-8 % of a CPU on average, but with a 15 % cap its p99.9 rose from 7-9 to 34 ms.
# The kernel lets all groups together have 95 % of each CPU, so a killed run's cgroup
# blocks the next realtime run until twin clean removes it (the error says so).
RT_PERIOD_US = 100_000
RT_MAX_SHARE = 0.3
RT_RUN_SHARE = 0.9

_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_SHORT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_FULL_NAME = re.compile(r"^tw-[a-z0-9][a-z0-9-]{0,31}-[a-z][a-z0-9-]{0,23}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9._-]{0,62}$")
_CGROUP_PARENT = re.compile(r"^/?[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


class ContainerError(TwinError):
    """A container could not be made, run, reached or removed."""


# --------------------------------------------------------------------------- specs


def validate_run_id(run_id: str) -> str:
    """Run ids go into container names and labels: lower-case letters, digits, '-'.

    Raises:
        ContainerError: ``run_id`` is not 1-32 of [a-z0-9-] starting with a letter or digit.
    """
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ContainerError(
            f"containers: run id {run_id!r} is not valid; fix: use 1-32 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return run_id


def validate_name(name: str) -> str:
    """A container's short name (the part after ``tw-<run id>-``), also its hostname.

    Raises:
        ContainerError: ``name`` is not 1-24 of [a-z0-9-] starting with a letter.
    """
    if not isinstance(name, str) or not _SHORT_NAME.match(name):
        raise ContainerError(
            f"containers: name {name!r} is not valid; fix: use 1-24 characters of a-z, 0-9 and '-', "
            "starting with a letter"
        )
    return name


def full_name(run_id: str, name: str) -> str:
    """``tw-<run id>-<name>``, the podman name of a container of run ``run_id``."""
    return f"{NAME_PREFIX}{validate_run_id(run_id)}-{validate_name(name)}"


def _check_full_name(name: str) -> str:
    if not isinstance(name, str) or not _FULL_NAME.match(name):
        raise ContainerError(
            f"containers: {name!r} is not a twin container name; fix: pass the name create() returned "
            "(tw-<run id>-<name>)"
        )
    return name


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted into the container (read-only unless said otherwise)."""

    source: Path
    target: str
    read_only: bool = True

    def argument(self) -> str:
        source = Path(self.source)
        if not source.is_absolute() or not source.exists():
            raise ContainerError(f"containers: mount source {source} does not exist; fix: create it or give an absolute path")
        if not self.target.startswith("/") or "," in self.target or "," in str(source) or ".." in self.target.split("/"):
            raise ContainerError(f"containers: mount target {self.target!r} is not valid; fix: an absolute path without ',' or '..'")
        opts = ",ro" if self.read_only else ""
        return f"type=bind,src={source},dst={self.target}{opts}"


@dataclass(frozen=True)
class ContainerSpec:
    """What to run and with which limits. ``name`` is the short name (see :func:`validate_name`).

    ``netns_pid``: a process whose network namespace the container joins (a
    Mininet host's shell, or any process holding a namespace); None means no
    network at all. ``cpus`` is in cores (0.5 = half a core), ``memory_bytes``
    the hard memory limit (swap included). ``state_dir``: a host directory bound
    at /state instead of the default tmpfs of ``state_bytes``.
    """

    name: str
    image: str
    command: tuple[str, ...]
    netns_pid: int | None = None
    cpus: float | None = None
    #: relative CPU weight when cores are contended (cgroup cpu.shares / cpu.weight); None = default 1024
    cpu_shares: int | None = None
    #: CPUs the container may run on (cgroup cpuset), e.g. (0,) to keep it off the emulated network's CPU
    cpuset: tuple[int, ...] | None = None
    memory_bytes: int | None = None
    pids_limit: int = DEFAULT_PIDS_LIMIT
    read_only_root: bool = True
    state_bytes: int = DEFAULT_STATE_BYTES
    state_dir: Path | None = None
    mounts: tuple[Mount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str | None = None
    #: may run SCHED_FIFO (the server chooses this priority): CAP_SYS_NICE and a realtime CPU budget
    rt_priority: int | None = None
    stop_grace_s: float = 5.0
    #: catatonit as PID 1: forwards SIGTERM to the workload (a PID 1 without a
    #: handler ignores it, so every stop would wait the whole grace period) and reaps zombies.
    init: bool = True

    def validate(self) -> None:
        """Raises ContainerError naming the first bad field and the fix."""
        validate_name(self.name)
        try:
            validate_ref(self.image)
        except TwinError as err:
            raise ContainerError(f"containers: {self.name}: {err}") from None
        if not self.command or not all(isinstance(a, str) and a and "\0" not in a for a in self.command):
            raise ContainerError(f"containers: {self.name}: command must be a non-empty list of non-empty strings")
        if self.netns_pid is not None and (not isinstance(self.netns_pid, int) or self.netns_pid <= 0):
            raise ContainerError(f"containers: {self.name}: netns_pid {self.netns_pid!r} is not a PID; fix: a positive int")
        if self.cpus is not None and not (0.01 <= self.cpus <= 1024):
            raise ContainerError(f"containers: {self.name}: cpus {self.cpus} out of range; fix: 0.01 to 1024 cores")
        if self.cpu_shares is not None and not (2 <= self.cpu_shares <= 262144):
            raise ContainerError(f"containers: {self.name}: cpu_shares {self.cpu_shares} out of range; fix: 2 to 262144")
        if self.cpuset is not None and (not self.cpuset or not all(isinstance(c, int) and 0 <= c < 4096
                                                                   for c in self.cpuset)):
            raise ContainerError(f"containers: {self.name}: cpuset {self.cpuset!r} is not a list of CPU numbers; "
                                 "fix: e.g. (0,) or (0, 1)")
        if self.memory_bytes is not None and self.memory_bytes < 6 * 1024 * 1024:
            raise ContainerError(f"containers: {self.name}: memory_bytes {self.memory_bytes} below 6 MiB (podman's minimum); fix: raise it")
        if not (1 <= self.pids_limit <= 4_194_304):
            raise ContainerError(f"containers: {self.name}: pids_limit {self.pids_limit} out of range; fix: 1 to 4194304")
        if self.state_bytes < 4096:
            raise ContainerError(f"containers: {self.name}: state_bytes {self.state_bytes} too small; fix: at least 4096")
        if self.stop_grace_s < 0:
            raise ContainerError(f"containers: {self.name}: stop_grace_s must not be negative")
        for key, value in self.env.items():
            if not _ENV_KEY.match(key) or "\0" in str(value):
                raise ContainerError(f"containers: {self.name}: environment variable {key!r} is not valid; fix: [A-Za-z_][A-Za-z0-9_]*")
        for key, value in self.labels.items():
            if not _LABEL_KEY.match(key) or key in (RUN_LABEL, NAME_LABEL) or "\0" in str(value) or "\n" in str(value):
                raise ContainerError(
                    f"containers: {self.name}: label {key!r} is not valid or reserved; fix: [a-z][a-z0-9._-]*, not {RUN_LABEL}/{NAME_LABEL}"
                )
        if self.rt_priority is not None and not (1 <= self.rt_priority <= 98):
            raise ContainerError(f"containers: {self.name}: rt_priority {self.rt_priority} out of range; fix: 1 to 98")
        if self.cgroup_parent is not None and (
            not _CGROUP_PARENT.match(self.cgroup_parent) or ".." in self.cgroup_parent.split("/")
        ):
            raise ContainerError(f"containers: {self.name}: cgroup_parent {self.cgroup_parent!r} is not valid; fix: e.g. /h1")


def rt_runtime_us(spec: ContainerSpec) -> int:
    """Realtime CPU time per RT_PERIOD_US a realtime container may use: its cpus, at most RT_MAX_SHARE."""
    return int(min(spec.cpus if spec.cpus is not None else 1.0, RT_MAX_SHARE) * RT_PERIOD_US)


def create_args(spec: ContainerSpec, run_id: str, oci_runtime: str | None, rt_budget: bool = False) -> list[str]:
    """The ``podman create`` argument list (after ``podman``) for ``spec`` in run ``run_id``.

    ``rt_budget``: the host budgets realtime CPU per cgroup, so a realtime container
    goes under the run's cgroup (:func:`twin.emulation.records.run_cgroup`) with a
    budget of its own (:func:`rt_runtime_us`).
    """
    spec.validate()
    name = full_name(run_id, spec.name)
    args = ["create", "--name", name, "--hostname", spec.name, "--pull=never"]
    if oci_runtime:
        args += ["--runtime", oci_runtime]
    args += ["--label", f"{RUN_LABEL}={run_id}", "--label", f"{NAME_LABEL}={spec.name}"]
    for key in sorted(spec.labels):
        args += ["--label", f"{key}={spec.labels[key]}"]
    if spec.netns_pid is None:
        args += ["--network", "none"]
    else:
        args += ["--network", f"ns:/proc/{spec.netns_pid}/ns/net"]
    if spec.cpus is not None:
        args += ["--cpus", f"{spec.cpus:g}"]
    if spec.cpu_shares is not None:
        args += ["--cpu-shares", str(spec.cpu_shares)]
    if spec.cpuset is not None:
        args += ["--cpuset-cpus", ",".join(str(c) for c in sorted(set(spec.cpuset)))]
    if spec.memory_bytes is not None:
        # Swap limit = memory limit: the container never swaps past its budget.
        args += ["--memory", str(spec.memory_bytes), "--memory-swap", str(spec.memory_bytes)]
    args += ["--pids-limit", str(spec.pids_limit)]
    if spec.init:
        args += ["--init"]
    for ulimit in ULIMITS:
        args += ["--ulimit", ulimit]
    if spec.rt_priority is not None:
        # CAP_SYS_NICE lifts the rtprio limit too; raising that limit itself needs CAP_SYS_RESOURCE,
        # which root here lacks (see ULIMITS).
        args += ["--cap-add", "SYS_NICE"]
        if rt_budget:
            if spec.cgroup_parent is not None:
                raise ContainerError(f"containers: {spec.name}: a realtime container lives under the run's "
                                     "cgroup; fix: leave cgroup_parent unset")
            args += ["--cgroup-parent", run_cgroup(run_id), "--cpu-rt-period", str(RT_PERIOD_US),
                     "--cpu-rt-runtime", str(rt_runtime_us(spec))]
    if spec.cgroup_parent is not None:
        args += ["--cgroup-parent", spec.cgroup_parent]
    if spec.read_only_root:
        args += ["--read-only"]
    if spec.state_dir is not None:
        args += ["--mount", Mount(Path(spec.state_dir), STATE_DIR, read_only=False).argument()]
    else:
        args += ["--tmpfs", f"{STATE_DIR}:rw,size={spec.state_bytes},mode=1777"]
    for mount in spec.mounts:
        args += ["--mount", mount.argument()]
    for key in sorted(spec.env):
        args += ["--env", f"{key}={spec.env[key]}"]
    args += ["--workdir", STATE_DIR, "--stop-signal", "SIGTERM", "--stop-timeout", str(math.ceil(spec.stop_grace_s))]
    args += [spec.image, *spec.command]
    return args


# --------------------------------------------------------------------------- host facts


def cgroup_layout(mountinfo: str) -> str:
    """'v2', 'hybrid' (v1 controllers + a v2 hierarchy at unified/) or 'v1', from /proc/self/mountinfo text."""
    types = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts = left.split()
        if len(parts) >= 5 and right:
            types[parts[4]] = right.split()[0]
    if types.get("/sys/fs/cgroup") == "cgroup2":
        return "v2"
    if types.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "hybrid"
    return "v1"


def choose_oci_runtime(default_runtime: str, layout: str, runc_present: bool) -> tuple[str | None, str]:
    """Which ``--runtime`` to pass (None: podman's default) and why.

    Raises:
        ContainerError: crun is the default, the layout is hybrid and runc is missing.
    """
    if default_runtime == "crun" and layout == "hybrid":
        if not runc_present:
            raise ContainerError(
                "containers: crun cannot run containers on the hybrid cgroup layout and runc is missing; "
                "fix: apt-get install runc (scripts/install.sh does)"
            )
        return "runc", "crun refuses the hybrid cgroup layout"
    return None, f"podman's default ({default_runtime})"


@dataclass(frozen=True)
class Engine:
    """What runs the containers, for every result: ``podman 4.3.1 (runc, cgroup v1)``."""

    podman_version: str
    oci_runtime: str
    runtime_arg: str | None
    runtime_reason: str
    cgroup_version: str
    cgroup_layout: str
    cgroup_manager: str

    def __str__(self) -> str:
        return f"podman {self.podman_version} ({self.oci_runtime}, cgroup {self.cgroup_version})"


@dataclass(frozen=True)
class AppliedLimits:
    """Limits read back from the container's cgroup files (None: unlimited or not found)."""

    cgroup_version: str
    cpu_quota_us: int | None
    cpu_period_us: int | None
    memory_bytes: int | None
    pids_max: int | None

    @property
    def cpus(self) -> float | None:
        if self.cpu_quota_us is None or not self.cpu_period_us:
            return None
        return self.cpu_quota_us / self.cpu_period_us


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return None if text in ("max", "-1") else int(text)


def read_limits(pid: int, cgroup_root: Path = Path("/sys/fs/cgroup"), proc_root: Path = Path("/proc")) -> AppliedLimits:
    """Read CPU quota, memory and pids limits of the cgroup(s) process ``pid`` is in.

    Uses the v1 controller hierarchies where they are mounted (cpu, memory, pids),
    else the unified v2 files.
    """
    v1: dict[str, str] = {}
    v2_path = None
    for line in (proc_root / str(pid) / "cgroup").read_text().splitlines():
        hier, controllers, path = line.split(":", 2)
        if hier == "0":
            v2_path = path
        for c in controllers.split(","):
            v1[c] = path
    if "memory" in v1 and (cgroup_root / "memory").is_dir():
        cpu_dir = cgroup_root / "cpu" / v1.get("cpu", "/").lstrip("/")
        mem_dir = cgroup_root / "memory" / v1["memory"].lstrip("/")
        pids_dir = cgroup_root / "pids" / v1.get("pids", "/").lstrip("/")
        quota = _read_int(cpu_dir / "cpu.cfs_quota_us")
        memory = _read_int(mem_dir / "memory.limit_in_bytes")
        # v1 reports "no limit" as a huge page-aligned number.
        if memory is not None and memory >= 2**62:
            memory = None
        return AppliedLimits("v1", quota, _read_int(cpu_dir / "cpu.cfs_period_us"), memory, _read_int(pids_dir / "pids.max"))
    base = cgroup_root / (v2_path or "/").lstrip("/")
    quota = period = None
    try:
        q, p = (base / "cpu.max").read_text().split()
        quota, period = (None if q == "max" else int(q)), int(p)
    except (OSError, ValueError):
        pass
    return AppliedLimits("v2", quota, period, _read_int(base / "memory.max"), _read_int(base / "pids.max"))


# --------------------------------------------------------------------------- network namespaces

_CLONE_NEWNET = 0x40000000


def _setns_net(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def run_in_netns(pid: int, fn, *args):
    """Call ``fn(*args)`` in a fresh thread that joined the network namespace of ``pid``.

    setns(CLONE_NEWNET) changes only the calling thread, and the thread ends
    afterwards, so the rest of the process stays where it was.
    """
    result: list = []

    def body() -> None:
        try:
            _setns_net(pid)
            result.append((True, fn(*args)))
        except BaseException as err:  # handed back to the caller
            result.append((False, err))

    thread = threading.Thread(target=body, name=f"netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """GET ``url`` (http only); returns (status, body)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ContainerError(f"containers: readiness URL {url!r} is not http://HOST:PORT/PATH; fix it")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- the runtime


def _fix_for(detail: str) -> str:
    """The likely fix for a podman error line."""
    if "image not known" in detail:
        return "build the workload image: sudo scripts/build-image.sh"
    if "rlimit" in detail or "setrlimit" in detail:
        return "sudo scripts/install.sh (writes /etc/containers/containers.conf.d/twin.conf)"
    if "cgroups in hybrid mode" in detail or "crun" in detail:
        return "apt-get install runc, or set TWIN_OCI_RUNTIME=runc"
    if "no such container" in detail or "no container with name" in detail:
        return "the container is gone; list them with podman ps -a --filter label=twin-run"
    if "cpu.rt_runtime_us" in detail:
        return (f"fewer realtime services at once, or lower their cpus (the run's realtime CPU budget is "
                f"used up; each realtime instance takes up to {RT_MAX_SHARE:g} CPU)")
    if "already in use" in detail:
        return "a container of that name exists; remove it (twin clean) or choose another name"
    return "see podman ps -a and podman logs NAME"


@dataclass
class Container:
    """A created container: its podman name and what it was made from."""

    name: str
    spec: ContainerSpec
    id: str = ""


class ContainerRuntime:
    """Runs a run's workload containers with podman; a context manager that removes them all on exit.

    ``record`` (a :class:`twin.emulation.records.RunRecord` or anything with
    ``run_id`` and ``add_container(name)``) learns each name before the
    container exists, so ``twin clean`` removes it after a crash.
    """

    def __init__(self, run_id: str, *, record=None, podman: str = "podman", command_timeout_s: float = 120.0):
        self.run_id = validate_run_id(run_id)
        self.record = record
        self.podman = podman
        self.command_timeout_s = command_timeout_s
        self.containers: dict[str, Container] = {}

    # -- plumbing
    def _podman(self, *args: str, check: bool = True, timeout_s: float | None = None) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(
                [self.podman, *args],
                capture_output=True,
                text=True,
                timeout=timeout_s or self.command_timeout_s,
            )
        except FileNotFoundError as err:
            raise ContainerError("containers: podman not found; fix: sudo scripts/install.sh") from err
        except subprocess.TimeoutExpired as err:
            raise ContainerError(f"containers: podman {' '.join(args[:2])} took over {err.timeout:.0f} s; fix: check `podman ps`") from err
        if check and proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            detail = lines[-1] if lines else f"exit {proc.returncode}"
            subject = next((a for a in args if _FULL_NAME.match(a)), "")
            raise ContainerError(f"containers: podman {args[0]} {subject}: {detail}; fix: {_fix_for(detail)}".replace("  ", " "))
        return proc

    @functools.cached_property
    def engine(self) -> Engine:
        """Detected once: podman version, the OCI runtime to use and the cgroup version."""
        info = json.loads(self._podman("info", "--format", "json").stdout)
        host = info.get("host", {})
        default_runtime = host.get("ociRuntime", {}).get("name", "crun")
        layout = cgroup_layout(Path("/proc/self/mountinfo").read_text())
        override = os.environ.get("TWIN_OCI_RUNTIME")
        if override:
            runtime_arg, reason = override, "TWIN_OCI_RUNTIME"
        else:
            runtime_arg, reason = choose_oci_runtime(default_runtime, layout, shutil.which("runc") is not None)
        return Engine(
            podman_version=info.get("version", {}).get("Version", "?"),
            oci_runtime=runtime_arg or default_runtime,
            runtime_arg=runtime_arg,
            runtime_reason=reason,
            cgroup_version=host.get("cgroupVersion", "?"),
            cgroup_layout=layout,
            cgroup_manager=host.get("cgroupManager", "?"),
        )

    def describe(self) -> str:
        """``podman 4.3.1 (runc, cgroup v1)``: the engine line every result states."""
        return str(self.engine)

    def _known(self, name: str) -> str:
        _check_full_name(name)
        if not name.startswith(f"{NAME_PREFIX}{self.run_id}-"):
            raise ContainerError(f"containers: {name} belongs to another run than {self.run_id}; fix: use that run's runtime")
        return name

    # -- lifecycle
    @functools.cached_property
    def rt_budget(self) -> bool:
        """Whether realtime CPU is budgeted per cgroup here (cgroup v1 with RT group scheduling,
        cgroupfs manager): then realtime containers need the run's cgroup (:meth:`_ensure_run_cgroup`)."""
        return (CGROUP_ROOT / "cpu" / "cpu.rt_runtime_us").exists() and self.engine.cgroup_manager == "cgroupfs"

    def _ensure_run_cgroup(self) -> None:
        """Create the run's cgroup with a realtime budget (RT_RUN_SHARE of each CPU) for its containers."""
        path = CGROUP_ROOT / "cpu" / run_cgroup(self.run_id).lstrip("/")
        try:
            path.mkdir(exist_ok=True)
            period = int((path / "cpu.rt_period_us").read_text())
            budget = path / "cpu.rt_runtime_us"
            if int(budget.read_text()) == 0:
                budget.write_text(str(int(period * RT_RUN_SHARE)))
        except (OSError, ValueError) as err:
            # EINVAL: other cgroups already hold the realtime time the kernel lets groups have,
            # e.g. a killed run's tw-<run id> (twin clean removes it).
            raise ContainerError(f"containers: cannot give run {self.run_id} a realtime CPU budget in {path}: "
                                 f"{getattr(err, 'strerror', None) or err}; fix: sudo twin clean (a killed run's "
                                 "cgroup holds it), else free the realtime budget other cgroups hold "
                                 "(*/cpu.rt_runtime_us under /sys/fs/cgroup/cpu), or set the services' "
                                 "cpu_priority: normal") from err

    def create(self, spec: ContainerSpec) -> Container:
        """``podman create``; the name is recorded first. Returns the container (not started)."""
        rt_budget = spec.rt_priority is not None and self.rt_budget
        args = create_args(spec, self.run_id, self.engine.runtime_arg, rt_budget=rt_budget)
        if rt_budget:
            self._ensure_run_cgroup()
        name = full_name(self.run_id, spec.name)
        if self.record is not None:
            self.record.add_container(name)
        container = Container(name, spec)
        self.containers[name] = container
        container.id = self._podman(*args).stdout.strip()
        log.info("created %s (%s)", name, container.id[:12])
        return container

    def start(self, name: str) -> None:
        self._podman("start", self._known(name))

    def run(self, spec: ContainerSpec, ready_url: str | None = None, timeout_s: float = 30.0) -> Container:
        """create + start + wait_ready; removes the container if any step fails."""
        container = self.create(spec)
        try:
            self.start(container.name)
            self.wait_ready(container.name, ready_url, timeout_s=timeout_s)
        except BaseException:
            self.remove(container.name)
            raise
        return container

    def inspect(self, name: str) -> dict:
        return json.loads(self._podman("container", "inspect", self._known(name)).stdout)[0]

    def state(self, name: str) -> str:
        """podman's status: created, running, exited, ..."""
        return self._podman("container", "inspect", "--format", "{{.State.Status}}", self._known(name)).stdout.strip()

    def pid(self, name: str) -> int:
        """Host PID of the container's first process (0 when not running)."""
        return int(self._podman("container", "inspect", "--format", "{{.State.Pid}}", self._known(name)).stdout.strip() or 0)

    def wait_ready(self, name: str, url: str | None = None, timeout_s: float = 30.0, interval_s: float = 0.02) -> float:
        """Wait until the container runs and, with ``url``, answers it with 2xx from inside its network namespace.

        Returns the seconds waited.

        Raises:
            ContainerError: the container exited, or did not get ready within ``timeout_s``
                (its last log lines are in the message).
        """
        start = time.monotonic()
        container = self.containers.get(self._known(name))
        netns_pid = container.spec.netns_pid if container else None
        if url is not None and netns_pid is None:
            raise ContainerError(f"containers: {name} has no network namespace to reach {url} in; fix: give netns_pid")
        last = "not started"
        next_state_check = 0.0
        while True:
            if url is not None:
                # The URL first: a podman call costs ~50 ms, a refused connect microseconds.
                try:
                    code, _ = run_in_netns(netns_pid, http_get, url, 1.0)
                    if 200 <= code < 300:
                        return time.monotonic() - start
                    last = f"HTTP {code}"
                except OSError as err:
                    last = str(err) or type(err).__name__
            if time.monotonic() >= next_state_check:
                status = self.state(name)
                if status in ("exited", "stopped", "dead"):
                    raise ContainerError(f"containers: {name} exited before it was ready; its log ends: {self._log_tail(name)}")
                if status == "running" and url is None:
                    return time.monotonic() - start
                next_state_check = time.monotonic() + 0.25
            if time.monotonic() - start > timeout_s:
                raise ContainerError(
                    f"containers: {name} not ready after {timeout_s:g} s (last: {last}); its log ends: {self._log_tail(name)}"
                )
            time.sleep(interval_s)

    def exec(self, name: str, argv: Sequence[str], timeout_s: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """``podman exec NAME argv...``; the completed process (stdout/stderr as text)."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ContainerError("containers: exec needs a non-empty list of strings")
        return self._podman("exec", self._known(name), *argv, check=check, timeout_s=timeout_s)

    def logs(self, name: str) -> str:
        proc = self._podman("logs", self._known(name), check=False)
        return proc.stdout + proc.stderr

    def _log_tail(self, name: str, lines: int = 3) -> str:
        tail = self.logs(name).strip().splitlines()[-lines:]
        return " | ".join(tail) or "(empty)"

    def limits(self, name: str) -> AppliedLimits:
        """CPU, memory and pids limits as the kernel holds them for the running container."""
        pid = self.pid(name)
        if pid <= 0:
            raise ContainerError(f"containers: {name} is not running; fix: start it first")
        return read_limits(pid)

    def stop(self, name: str, grace_s: float | None = None) -> None:
        """SIGTERM, wait up to the grace period (default: the spec's), then SIGKILL."""
        name = self._known(name)
        container = self.containers.get(name)
        grace = grace_s if grace_s is not None else (container.spec.stop_grace_s if container else 5.0)
        self._podman("stop", "--time", str(math.ceil(grace)), name, timeout_s=grace + self.command_timeout_s)

    def remove(self, name: str) -> None:
        """Remove (killing it if it runs) with its anonymous volumes; no error if already gone."""
        name = self._known(name)
        left = remove_containers([name], podman=self.podman)
        if left:
            raise ContainerError(f"containers: podman rm {name} failed; fix: podman rm --force {name}")
        self.containers.pop(name, None)

    def list_run(self) -> list[str]:
        """Names of every container (any state) labelled with this run."""
        return list_run_containers(self.run_id, podman=self.podman)

    def cleanup_run(self) -> list[str]:
        """Remove every container labelled ``twin-run=<run id>``; returns their names."""
        if shutil.which(self.podman) is None:
            return []  # no podman: no container can have been made (and __enter__ said so)
        removed = remove_run_containers(self.run_id, podman=self.podman)
        self.containers.clear()
        remove_run_cgroups(self.run_id)
        return removed

    # -- checkpoint / restore (CRIU)
    def criu_available(self) -> tuple[bool, str]:
        return criu_available()

    def checkpoint(self, name: str, export_path: Path, leave_running: bool = False) -> Path:
        """``podman container checkpoint --export``: the container's processes and root fs changes to a tar.gz.

        Raises:
            ContainerError: CRIU is not usable here (the reason is in the message) or podman failed.
        """
        ok, reason = criu_available()
        if not ok:
            raise ContainerError(f"containers: checkpoint/restore is not available here: {reason}")
        args = ["container", "checkpoint", "--export", str(export_path)]
        if leave_running:
            args.append("--leave-running")
        self._podman(*args, self._known(name))
        return Path(export_path)

    def restore(self, export_path: Path, name: str | None = None) -> str:
        """``podman container restore --import``, optionally under a new short ``name`` of this run.

        The restored container keeps the network namespace setting it was checkpointed with.
        """
        ok, reason = criu_available()
        if not ok:
            raise ContainerError(f"containers: checkpoint/restore is not available here: {reason}")
        args = ["container", "restore", "--import", str(export_path)]
        new = None
        if name is not None:
            new = full_name(self.run_id, name)
            if self.record is not None:
                self.record.add_container(new)
            args += ["--name", new]
        proc = self._podman(*args)
        return new or proc.stdout.strip()

    # -- context manager
    def __enter__(self) -> "ContainerRuntime":
        if shutil.which(self.podman) is None:
            raise ContainerError(f"containers: {self.podman} not found, so no workload can run here; fix: "
                                 f"sudo scripts/install.sh (or leave the workloads out, e.g. twin up --check "
                                 f"--no-migration-check)")
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup_run()


def list_run_containers(run_id: str, podman: str = "podman") -> list[str]:
    """Names of all containers labelled ``twin-run=<run_id>`` (podman ps -a by label)."""
    validate_run_id(run_id)
    proc = subprocess.run(
        [podman, "ps", "--all", "--filter", f"label={RUN_LABEL}={run_id}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise ContainerError(f"containers: podman ps failed: {proc.stderr.strip()}")
    return [line for line in proc.stdout.split() if line]


def remove_run_containers(run_id: str, podman: str = "podman") -> list[str]:
    """Force-remove all containers labelled with ``run_id`` (never by name pattern)."""
    names = list_run_containers(run_id, podman)
    left = remove_containers(names, podman=podman)
    if left:
        raise ContainerError(f"containers: could not remove {', '.join(left)}; fix: podman rm --force NAME")
    return names


@functools.lru_cache(maxsize=1)
def criu_available() -> tuple[bool, str]:
    """(True, version) when ``criu check`` passes here, else (False, why): checked once per process."""
    criu = shutil.which("criu")
    if criu is None:
        return False, (
            "criu is not installed: no CRIU 4.x in the reachable package registries "
            "(Debian 12's 3.17 fails `criu check` on this kernel); checkpoint/restore runs in the VM (vagrant/)"
        )
    version = subprocess.run([criu, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    proc = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60)
    first = version[0] if version else "criu"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"{first}: `criu check` failed: {lines[-1] if lines else proc.returncode}"
    return True, f"{first}: `criu check` passed"
