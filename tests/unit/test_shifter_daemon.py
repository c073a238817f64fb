"""The shifting daemon against a fake runtime and a scripted policy (no root, no network)."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass

import pytest

from twin.model.power import SiteSignal
from twin.model.schema import Event
from twin.shifter.daemon import InstantClock, RetryPolicy, ScenarioClock, ShiftingDaemon
from twin.shifter.interfaces import (
    ControllerUnavailable,
    MigrationFailed,
    MigrationOutcome,
)

SITES = ("a", "b", "c")


@dataclass
class Move:
    service: str
    from_site: str
    to_site: str
    reason: str
    scores: dict


class ScriptedPolicy:
    """Sends each service to the site the script names for that decision time."""

    def __init__(self, script: dict[float, dict[str, str]]):
        self.script = script
        self.inputs = []

    def decide(self, inp):
        self.inputs.append(inp)
        wanted = self.script.get(inp.t, {})
        moves = []
        for service in inp.services:
            here = inp.placements[service.id]
            there = wanted.get(service.id, here)
            if there not in inp.feasible[service.id]:
                there = here
            moves.append(Move(service.id, here, there, f"script says {there}", {there: 1.0}))
        return moves


class FlatSeries:
    def __init__(self, surplus_mw: float):
        self.signal = SiteSignal(surplus_mw=surplus_mw, renewable_share=0.5, carbon_g_per_kwh=400.0,
                                 price_yen_per_kwh=None)

    def at(self, t: float) -> SiteSignal:
        return self.signal


class FakeRuntime:
    """Keeps placements in a dict; can fail migrations or pretend the controller is down."""

    def __init__(self, placements: dict[str, str]):
        self.where = dict(placements)
        self.down_calls = 0  # the next N calls raise ControllerUnavailable
        self.fail_migrations: set[str] = set()
        self.lose: set[str] = set()  # services whose instance vanishes on the next placements()
        self.calls: list[tuple] = []
        self.events: list[tuple] = []

    def _maybe_down(self, what: str) -> None:
        self.calls.append((what,))
        if self.down_calls > 0:
            self.down_calls -= 1
            raise ControllerUnavailable("controller API at 127.0.0.1:1 refused the connection")

    async def placements(self) -> dict[str, str]:
        self._maybe_down("placements")
        for service in self.lose:
            self.where.pop(service, None)
        self.lose.clear()
        return dict(self.where)

    async def migrate(self, service: str, src: str, dst: str) -> MigrationOutcome:
        self._maybe_down("migrate")
        assert self.where[service] == src, "daemon must migrate from where the service really is"
        await asyncio.sleep(0)
        if service in self.fail_migrations:
            raise MigrationFailed(f"{service}: destination {dst} never became ready")
        self.where[service] = dst
        return MigrationOutcome(service, src, dst, "make-before-break", True, duration_s=1.0,
                                state_bytes=1024, transfer_s=0.1, interruption_ms=2.0)

    async def ensure_running(self, service: str, site: str) -> None:
        self._maybe_down("ensure")
        self.where[service] = site

    async def apply_event(self, kind, span, site) -> dict:
        self.events.append((kind, span, site))
        return {"applied": kind}


def make_services(make_scenario_service, ids=("svc1",), initial="a"):
    return [make_scenario_service(i, initial) for i in ids]


@pytest.fixture
def make_scenario_service():
    from twin.model.schema import Service

    def make(service_id: str, initial: str) -> Service:
        return Service.model_validate({
            "id": service_id, "model": "echo", "slo": {"latency": "50ms"}, "request_size": "1000B",
            "response_size": "100B", "service_time": "1ms", "initial_site": initial,
            "demand": [{"region": "a", "rate": "1/s"}]})
    return make


def build(services, policy, runtime, *, events=(), feasible=None, duration=4 * 1800.0, clock=None):
    emitted: list[dict] = []
    feasible = feasible or (lambda service, down, cut: frozenset(s for s in SITES if s not in down))
    daemon = ShiftingDaemon(
        services=services, policy=policy, signals={s: FlatSeries(100.0) for s in SITES}, runtime=runtime,
        feasible_sites=feasible, capacity={s: (8.0, 16e9) for s in SITES}, decision_interval_s=1800.0,
        duration_s=duration, clock=clock or InstantClock(), emit=emitted.append, events=events,
        retry=RetryPolicy(initial_s=0.001, max_s=0.002, max_attempts=4))
    return daemon, emitted


async def test_daemon_follows_the_policy_and_logs_every_decision(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    policy = ScriptedPolicy({1800.0: {"svc1": "b"}, 5400.0: {"svc1": "c"}})
    daemon, emitted = build(services, policy, runtime)
    result = await daemon.run()
    assert runtime.where == {"svc1": "c"}
    assert result.decisions == 4 and result.migrations == 2 and not result.stopped_early
    decisions = [e for e in emitted if e["kind"] == "decision"]
    assert [d["t"] for d in decisions] == [0.0, 1800.0, 3600.0, 5400.0]
    assert all(d["reason"] for d in decisions)
    migrations = [e for e in emitted if e["kind"] == "migration"]
    assert [(m["from"], m["to"], m["t"]) for m in migrations] == [("a", "b", 1800.0), ("b", "c", 5400.0)]
    assert policy.inputs[2].last_move["svc1"] == 1800.0


async def test_failed_migration_keeps_the_service_at_its_source(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    runtime.fail_migrations.add("svc1")
    daemon, emitted = build(services, ScriptedPolicy({0.0: {"svc1": "b"}}), runtime, duration=1800.0)
    result = await daemon.run()
    assert runtime.where == {"svc1": "a"}
    assert result.failed_migrations == 1 and result.migrations == 0
    failed = [e for e in emitted if e["kind"] == "migration"]
    assert failed and failed[0]["ok"] is False and "never became ready" in failed[0]["error"]


async def test_controller_outage_is_retried_then_reconciled(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    runtime.down_calls = 2  # fewer than max_attempts: the step goes through
    daemon, _ = build(services, ScriptedPolicy({0.0: {"svc1": "b"}}), runtime, duration=1800.0)
    result = await daemon.run()
    assert runtime.where == {"svc1": "b"} and result.skipped_steps == 0


async def test_long_controller_outage_skips_the_step_and_recovers(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    runtime.down_calls = 4  # all attempts of the first step fail
    daemon, emitted = build(services, ScriptedPolicy({0.0: {"svc1": "b"}, 1800.0: {"svc1": "c"}}), runtime,
                            duration=3600.0)
    result = await daemon.run()
    assert result.skipped_steps == 1
    assert any(e["kind"] == "warning" and "skipped" in e["message"] for e in emitted)
    assert runtime.where == {"svc1": "c"}  # the next step starts from a fresh reconciliation


async def test_a_vanished_instance_is_restarted(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    runtime.lose.add("svc1")
    daemon, emitted = build(services, ScriptedPolicy({}), runtime, duration=1800.0)
    await daemon.run()
    assert runtime.where == {"svc1": "a"}
    assert any("no running instance" in e.get("message", "") for e in emitted)


async def test_events_change_what_is_feasible(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    events = [Event(at="30min", kind="site-down", site="b"), Event(at="1h", kind="site-up", site="b")]
    # b is wanted all day but is down from 1800 to 3600
    policy = ScriptedPolicy({1800.0: {"svc1": "b"}, 3600.0: {"svc1": "b"}})
    daemon, emitted = build(services, policy, runtime, events=events, duration=3 * 1800.0)
    await daemon.run()
    assert [e[0] for e in runtime.events] == ["site-down", "site-up"]
    assert "b" not in policy.inputs[1].feasible["svc1"] and "b" in policy.inputs[1].down_sites
    moves = [(e["t"], e["to"]) for e in emitted if e["kind"] == "migration"]
    assert moves == [(3600.0, "b")]


async def test_sigterm_stops_the_daemon_between_steps(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    # 1800 scenario s per 0.05 wall s: 100 steps would take 5 s; SIGTERM comes after 0.12 s
    clock = ScenarioClock(compression=1800.0 / 0.05)
    daemon, _ = build(services, ScriptedPolicy({}), runtime, duration=100 * 1800.0, clock=clock)
    daemon.install_signal_handlers()
    try:
        asyncio.get_running_loop().call_later(0.12, os.kill, os.getpid(), signal.SIGTERM)
        result = await asyncio.wait_for(daemon.run(), timeout=5)
    finally:
        daemon.remove_signal_handlers()
    assert result.stopped_early and 1 <= result.decisions < 10


class SlowClock(InstantClock):
    """Each migration costs three intervals of scenario time."""

    def __init__(self, runtime: "FakeRuntime"):
        super().__init__()
        self.runtime = runtime

    def now(self) -> float:
        moves = sum(1 for c in self.runtime.calls if c == ("migrate",))
        return self.t + moves * 3 * 1800.0


async def test_a_slow_step_skips_stale_decisions(make_scenario_service):
    services = make_services(make_scenario_service)
    runtime = FakeRuntime({"svc1": "a"})
    clock = SlowClock(runtime)
    daemon, emitted = build(services, ScriptedPolicy({0.0: {"svc1": "b"}}), runtime, duration=10 * 1800.0,
                            clock=clock)
    result = await daemon.run()
    decided_at = [e["t"] for e in emitted if e["kind"] == "decision"]
    assert 1800.0 not in decided_at and 3600.0 not in decided_at  # skipped, not replayed late
    assert result.skipped_steps >= 2
    assert any("skipped" in e.get("message", "") for e in emitted)
