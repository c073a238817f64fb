"""The emulated runtime's migration logic with a fake controller, network and launcher.

The real thing (podman, Mininet, the controller) is exercised by
tests/integration/test_migration.py; here each step's order and every rollback
path is checked one at a time, which the real system cannot be forced into.
"""

from __future__ import annotations

import pytest

from twin.emulation.controller import ControllerError
from twin.model.schema import Scenario
from twin.shifter.interfaces import ControllerUnavailable, MigrationFailed
from twin.workloads import site_runtime as sr


class FakeClient:
    def __init__(self, log):
        self.log = log
        self.vips: dict[str, dict] = {}
        self.down = False
        self.paths = [{"src": "a", "dst": "b"}]

    def _check(self):
        if self.down:
            raise ControllerError("controller API GET /services at 127.0.0.1:1: refused", None)

    def lightpaths(self):
        self._check()
        return self.paths

    def create_lightpath(self, a, b):
        self._check()
        self.paths.append({"id": f"lp{len(self.paths)}", "src": a, "dst": b})
        self.log.append(("lightpath", a, b))
        return self.paths[-1]

    def delete_lightpath(self, lightpath_id):
        self._check()
        self.paths = [p for p in self.paths if p.get("id") != lightpath_id]
        self.log.append(("release", lightpath_id))

    def services(self):
        self._check()
        return self.vips

    def set_service_site(self, vip, site, force=False):
        self._check()
        self.log.append(("point", site))
        self.vips[vip] = {"site": site}
        return self.vips[vip]

    def service_drained(self, vip, site):
        self._check()
        self.log.append(("drained", site))


class FakeNetwork:
    def host_pid(self, name):
        return 1000 + sum(map(ord, name))

    def host_ip(self, site, role, plane=1):
        return f"10.1.{ord(site) - 96}.{role}"


class FakeRecord:
    run_id = "20261127-000000-abcdef"


class FakeSession:
    def __init__(self, log):
        self.client = FakeClient(log)
        self.network = FakeNetwork()
        self.record = FakeRecord()


class FakeLauncher:
    def __init__(self, log):
        self.log = log
        self.running: set[str] = set()
        self.fail_start: set[str] = set()

    def start(self, *, name, service, site, netns_pid, server_args):
        if site in self.fail_start:
            raise sr.TwinError(f"containers: {name} exited before it was ready")
        self.log.append(("start", site))
        self.running.add(site)
        return site

    def stop(self, handle, *, grace_s=10.0):
        self.log.append(("stop", handle))
        self.running.discard(handle)

    def alive(self, handle):
        return handle in self.running

    def describe(self):
        return "fake"


@pytest.fixture
def world(monkeypatch):
    log: list[tuple] = []
    session = FakeSession(log)
    launcher = FakeLauncher(log)
    scenario = Scenario.model_validate({
        "kind": "scenario", "name": "t", "topology": "x.yaml", "duration": "1h",
        "services": [{"id": "svc", "model": "sensor-fusion-mlp", "slo": {"latency": "50ms"},
                      "request_size": "1KiB", "response_size": "100B", "state_size": "1MiB",
                      "service_time": "1ms", "initial_site": "a", "demand": [{"region": "a", "rate": "5/s"}]}]})
    calls = {"copy_fail": False, "vips": []}

    def netcall(self, site, port, method, path, **kw):
        log.append((f"{method} {path}", site))
        return {"status": 200}

    def copy_state(self, state, src, dst):
        log.append(("copy", src, dst))
        if calls["copy_fail"]:
            raise MigrationFailed(f"state copy {src} -> {dst} failed: PUT: HTTP 409")
        return {"bytes": 1 << 20, "network_seconds": 0.1}

    def set_vip(self, site, vip, present):
        calls["vips"].append((site, present))

    monkeypatch.setattr(sr.EmulatedRuntime, "_netcall", netcall)
    monkeypatch.setattr(sr.EmulatedRuntime, "_copy_state", copy_state)
    monkeypatch.setattr(sr.EmulatedRuntime, "_set_vip_address", set_vip)
    runtime = sr.EmulatedRuntime(session, scenario, launcher, run_id=FakeRecord.run_id)
    return runtime, session, launcher, log, calls


async def test_make_before_break_order(world):
    runtime, session, launcher, log, _ = world
    await runtime.deploy_all()
    log.clear()
    outcome = await runtime.migrate("svc", "a", "b")
    steps = [entry[0] for entry in log]
    # destination up and warm, state over, steer, then the source drains and goes
    assert steps == ["start", "GET /readyz", "copy", "point", "POST /drain", "drained", "stop"]
    assert outcome.ok and outcome.state_bytes == 1 << 20 and outcome.strategy == "make-before-break"
    assert await runtime.placements() == {"svc": "b"}
    assert launcher.running == {"b"}


async def test_failed_state_copy_rolls_back_to_the_source(world):
    runtime, session, launcher, log, calls = world
    await runtime.deploy_all()
    calls["copy_fail"] = True
    with pytest.raises(MigrationFailed, match="state copy"):
        await runtime.migrate("svc", "a", "b")
    assert launcher.running == {"a"}  # destination stopped, source untouched
    assert session.client.vips["10.3.0.1"]["site"] == "a"
    assert ("b", False) in calls["vips"]  # the VIP left the destination host
    assert await runtime.placements() == {"svc": "a"}


async def test_destination_that_never_starts_is_a_failed_migration(world):
    runtime, session, launcher, log, calls = world
    await runtime.deploy_all()
    launcher.fail_start.add("b")
    with pytest.raises(MigrationFailed, match="could not start at b"):
        await runtime.migrate("svc", "a", "b")
    assert launcher.running == {"a"} and ("b", False) in calls["vips"]


async def test_cold_rollback_resumes_the_source(world):
    runtime, session, launcher, log, calls = world
    runtime.strategy = "cold"
    await runtime.deploy_all()
    calls["copy_fail"] = True
    log.clear()
    with pytest.raises(MigrationFailed):
        await runtime.migrate("svc", "a", "b")
    steps = [entry[0] for entry in log]
    assert steps[0] == "POST /drain" and steps[-1] == "POST /resume"
    assert launcher.running == {"a"}


async def test_controller_down_is_unavailable_not_failed(world):
    runtime, session, launcher, log, calls = world
    await runtime.deploy_all()
    session.client.down = True
    with pytest.raises(ControllerUnavailable):
        await runtime.placements()


async def test_placements_reconcile_a_controller_that_forgot_the_vip(world):
    runtime, session, launcher, log, calls = world
    await runtime.deploy_all()
    session.client.vips.clear()  # a restarted controller lost its service table
    log.clear()
    assert await runtime.placements() == {"svc": "a"}
    assert ("point", "a") in log and session.client.vips["10.3.0.1"]["site"] == "a"


async def test_a_dead_instance_is_not_a_placement(world):
    runtime, session, launcher, log, calls = world
    await runtime.deploy_all()
    launcher.running.clear()
    assert await runtime.placements() == {}
    await runtime.ensure_running("svc", "a")
    assert await runtime.placements() == {"svc": "a"}


def test_service_ports_differ_per_service():
    assert sr.service_port(1) != sr.service_port(2)


async def test_lightpaths_follow_the_service_on_demand(world):
    runtime, session, launcher, log, calls = world
    service = runtime.services["svc"].service
    service.demand.append(service.demand[0].model_copy(update={"region": "c"}))
    await runtime.deploy_all()
    pairs = lambda: {frozenset((p["src"], p["dst"])) for p in session.client.paths}  # noqa: E731
    assert frozenset(("c", "a")) in pairs()
    await runtime.migrate("svc", "a", "b")
    # the users in c now need b; their path to a is released; a-b (not ours) stays
    assert frozenset(("c", "b")) in pairs() and frozenset(("c", "a")) not in pairs()
    assert frozenset(("a", "b")) in pairs()
    assert [e[0] for e in log].count("release") == 1


def test_cpu_weight_follows_the_latency_budget(world):
    runtime, *_ = world
    service = runtime.services["svc"].service  # 50 ms budget
    tight = service.model_copy(update={"slo": service.slo.model_copy(update={"latency": 0.008})})
    loose = service.model_copy(update={"slo": service.slo.model_copy(update={"latency": 1.5})})
    assert sr.cpu_shares_for(tight) > sr.cpu_shares_for(service) > sr.cpu_shares_for(loose) >= 2


def test_realtime_services_ask_their_server_and_container_for_sched_fifo(world, monkeypatch):
    runtime, *_ = world
    state = runtime.services["svc"]
    assert "--rt-priority" not in runtime._server_args(state, "a")
    state.service = state.service.model_copy(update={"cpu_priority": "realtime"})
    args = runtime._server_args(state, "a")
    assert args[args.index("--rt-priority") + 1] == str(sr.SERVICE_RT_PRIORITY)
    assert 0 < sr.SERVICE_RT_PRIORITY < sr.LOADGEN_RT_PRIORITY  # the clients measure; they go first

    specs = []

    class Containers:
        def run(self, spec, **_kw):
            specs.append(spec)
            return type("C", (), {"name": spec.name})()

    launcher = sr.PodmanLauncher(Containers(), "localhost/twin-workload:abc")
    launcher.start(name="n", service=state.service, site="a", netns_pid=1, server_args=args)
    launcher.start(name="n", service=runtime.services["svc"].service.model_copy(update={"cpu_priority": "normal"}),
                   site="a", netns_pid=1, server_args=["--port", "8001"])
    assert [s.rt_priority for s in specs] == [sr.SERVICE_RT_PRIORITY, None]


def test_cpu_shares_reach_podman():
    from twin.workloads.containers import ContainerSpec, create_args

    spec = ContainerSpec(name="s-x-a", image="localhost/twin-workload:abc", command=("true",), cpu_shares=4096)
    args = create_args(spec, "20261127-000000-abcdef", "runc")
    assert args[args.index("--cpu-shares") + 1] == "4096"
    bad = ContainerSpec(name="s-x-a", image="localhost/twin-workload:abc", command=("true",), cpu_shares=1)
    with pytest.raises(sr.TwinError, match="cpu_shares"):
        create_args(bad, "20261127-000000-abcdef", "runc")


# --- twin shift on a partitioned 'twin up' -------------------------------------------------------

def test_attached_run_leaves_workloads_the_cpus_of_its_plan():
    import os

    from twin.emulation.records import RunRecord
    from twin.workloads.attach import workload_cpus_of

    allowed = os.sched_getaffinity(0)
    assert workload_cpus_of(RunRecord(run_id="t")) is None               # shared CPUs: nothing pinned
    assert workload_cpus_of(RunRecord(run_id="t", workload_cpus=[min(allowed)])) == {min(allowed)}
    assert workload_cpus_of(RunRecord(run_id="t", workload_cpus=[max(allowed) + 1])) is None  # not ours to use
