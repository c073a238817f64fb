"""Attach to a network that ``twin up`` is running (for ``twin shift``).

``twin up`` keeps its run record in ``/run/twin/<run id>/``: the record (with
the PID of every Mininet host shell), the port map and the controller's config
(API address). That is all the emulated runtime needs: host PIDs to enter a
site's namespaces, addresses (derived from the port map) and the controller
API. Only a run whose owner process is still alive is attached to.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from twin.emulation.controller import ControllerClient
from twin.emulation.records import RECORD_ROOT, RunRecord, owner_alive
from twin.errors import TwinError
from twin.model import addressing as ad
from twin.model.portmap import PortMap
from twin.model.validate import load_topology

HOST_PREFIX = "mininet host "


@dataclass
class AttachedNetwork:
    port_map: PortMap
    hosts: dict[str, int]
    link_backend: str = "attached"

    def host_pid(self, name: str) -> int:
        if name not in self.hosts:
            raise TwinError(f"host {name} is not in the attached run; is it the scenario's topology?")
        return self.hosts[name]

    def host_ip(self, site: str, role: int, plane: int = ad.APN_PLANE) -> str:
        return ad.host_ip(plane, self.port_map.switches[site].index, role)


@dataclass
class AttachedSession:
    """What :class:`twin.workloads.site_runtime.EmulatedRuntime` uses of a TwinSession."""

    record: RunRecord
    network: AttachedNetwork
    client: ControllerClient
    topology_path: Path
    topology: object = field(init=False)
    workload_cpus: set[int] | None = None  # None: the run's network shares every CPU (see workload_cpus_of)

    def __post_init__(self) -> None:
        self.topology = load_topology(self.topology_path)


def live_runs(root: Path = RECORD_ROOT) -> list[RunRecord]:
    runs = []
    for path in sorted(root.glob("*/record.json")) if root.is_dir() else []:
        try:
            record = RunRecord.load(path)
        except (OSError, ValueError, TypeError):
            continue
        if owner_alive(record) and (path.parent / "controller.json").is_file():
            runs.append(record)
    return runs


def attach(run_id: str | None = None, root: Path = RECORD_ROOT) -> AttachedSession:
    """The live ``twin up`` run ``run_id`` (or the only one).

    Raises:
        TwinError: no live run, several without ``run_id``, or an unknown ``run_id``.
    """
    runs = live_runs(root)
    if run_id is not None:
        runs = [r for r in runs if r.run_id == run_id]
        if not runs:
            raise TwinError(f"no live twin run {run_id!r} in {root}; start one with 'sudo twin up TOPOLOGY'")
    if not runs:
        raise TwinError(f"no live twin run in {root}; start one with 'sudo twin up TOPOLOGY' in another terminal")
    if len(runs) > 1:
        raise TwinError(f"{len(runs)} live twin runs ({', '.join(r.run_id for r in runs)}); choose one with --run")
    record = runs[0]
    config = json.loads((record.directory / "controller.json").read_text())
    port_map = PortMap.load(config["portmap_path"])
    hosts = {p.what.removeprefix(HOST_PREFIX): p.pid for p in record.processes if p.what.startswith(HOST_PREFIX)}
    client = ControllerClient(config["api_host"], int(config["api_port"]))
    return AttachedSession(record, AttachedNetwork(port_map, hosts), client, Path(config["topology_path"]),
                           workload_cpus=workload_cpus_of(record))


def workload_cpus_of(record: RunRecord) -> set[int] | None:
    """The CPUs a live run leaves to workloads (its CPU plan, in its record), limited to
    the CPUs this process may use; None when the run shares every CPU."""
    if not record.workload_cpus:
        return None
    return (set(record.workload_cpus) & os.sched_getaffinity(0)) or None
