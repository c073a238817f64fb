"""The shifting daemon: every decision interval, signals -> policy -> migrations.

One loop, in scenario time. At each decision time ``t`` it

1. applies the scenario events due by ``t`` (fibre cut, site down ...),
2. asks the runtime where every service runs (so a restarted controller or a
   migration that half-failed is reconciled, never assumed),
3. reads the power signals of the slot containing ``t`` and asks the policy,
4. executes the moves one service at a time through the runtime, and
5. logs every decision with its inputs and reason, and every migration with
   what it cost, as JSON lines.

Calls that fail with :class:`ControllerUnavailable` are retried with
exponential backoff until the next decision is due; then that decision is
skipped (logged) and the next one starts from a fresh reconciliation. A failed
migration leaves the service at its source (the runtime's contract); the daemon
checks that every service still runs somewhere after each step and restarts it
at its last known site if not. SIGINT/SIGTERM stop the loop between steps; a
migration under way is finished (or rolled back by the runtime), not cut.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from twin.model.policies import DecisionInput
from twin.model.power import SignalSeries
from twin.model.schema import Event, Service
from twin.shifter.interfaces import ControllerUnavailable, MigrationFailed, Runtime

log = logging.getLogger(__name__)

EventSink = Callable[[dict], None]
# service id, down sites, cut spans -> sites where the service meets its SLO now
FeasibleSites = Callable[[str, frozenset[str], frozenset[tuple[str, str]]], frozenset[str]]


class ScenarioClock:
    """Scenario seconds from a wall-clock start, ``compression`` scenario seconds per wall second."""

    def __init__(self, compression: float, *, start_wall: float | None = None):
        if compression <= 0:
            raise ValueError("time compression must be positive")
        self.compression = compression
        self.start_wall = time.monotonic() if start_wall is None else start_wall

    def now(self) -> float:
        return (time.monotonic() - self.start_wall) * self.compression

    def wall_of(self, t: float) -> float:
        return self.start_wall + t / self.compression

    async def sleep_until(self, t: float, stop: asyncio.Event) -> bool:
        """Wait until scenario time ``t``; False if ``stop`` was set first."""
        delay = self.wall_of(t) - time.monotonic()
        if delay <= 0:
            return not stop.is_set()
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            return True
        return False


class InstantClock:
    """A clock that jumps to each decision time at once (model-speed runs and tests)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, t: float, stop: asyncio.Event) -> bool:
        await asyncio.sleep(0)
        self.t = max(self.t, t)
        return not stop.is_set()


@dataclass
class RetryPolicy:
    """Exponential backoff for calls that hit an unavailable controller."""

    initial_s: float = 0.2
    factor: float = 2.0
    max_s: float = 5.0
    # Without a wall-clock deadline (instant clocks) give up after this many tries.
    max_attempts: int = 6


@dataclass
class DaemonResult:
    decisions: int = 0
    migrations: int = 0
    failed_migrations: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False
    placements: dict[str, str] = field(default_factory=dict)


class ShiftingDaemon:
    """Runs the decision loop of one scenario against a :class:`Runtime`."""

    def __init__(self, *, services: Sequence[Service], policy, signals: Mapping[str, SignalSeries],
                 runtime: Runtime, feasible_sites: FeasibleSites, capacity: Mapping[str, tuple[float, float]],
                 decision_interval_s: float, duration_s: float, clock, emit: EventSink,
                 events: Sequence[Event] = (), retry: RetryPolicy | None = None,
                 on_step: Callable[[float, dict[str, str]], None] | None = None):
        if decision_interval_s <= 0:
            raise ValueError("decision interval must be positive")
        self.services = list(services)
        self.policy = policy
        self.signals = signals
        self.runtime = runtime
        self.feasible_sites = feasible_sites
        self.capacity = dict(capacity)
        self.interval_s = decision_interval_s
        self.duration_s = duration_s
        self.clock = clock
        self.emit = emit
        self.pending_events = sorted(events, key=lambda e: e.at)
        self.retry = retry or RetryPolicy()
        self.on_step = on_step
        self.down_sites: set[str] = set()
        self.cut_spans: set[tuple[str, str]] = set()
        self.last_move: dict[str, float | None] = {s.id: None for s in self.services}
        self.known_sites: dict[str, str] = {s.id: s.initial_site for s in self.services}
        self.result = DaemonResult()
        self._stop = asyncio.Event()

    # -- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end after the current step."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    async def run(self) -> DaemonResult:
        """Decide at 0, interval, 2 x interval ... until the scenario's end or stop()."""
        t = 0.0
        while t < self.duration_s:
            if not await self.clock.sleep_until(t, self._stop):
                self.result.stopped_early = True
                break
            await self.step(t)
            if self._stop.is_set():
                self.result.stopped_early = True
                break
            t += self.interval_s
            # A step that took longer than an interval (a slow migration) must not make the
            # daemon replay stale decisions: jump to the slot the scenario is in now.
            behind = int((self.clock.now() - t) // self.interval_s)
            if behind > 0:
                self.result.skipped_steps += behind
                self.emit({"t": t, "kind": "warning",
                           "message": f"{behind} decision(s) from t={t:.0f}s skipped: the previous step "
                                      f"took longer than the {self.interval_s:.0f}s interval"})
                t += behind * self.interval_s
        return self.result

    # -- one decision ----------------------------------------------------------------------
    async def step(self, t: float) -> None:
        deadline = self.clock.wall_of(t + self.interval_s) if hasattr(self.clock, "wall_of") else None
        try:
            await self._apply_due_events(t, deadline)
            placements = await self._call(self.runtime.placements, deadline)
            placements = await self._restore_missing(t, placements, deadline)
            decisions = self._decide(t, placements)
            for decision in decisions:
                self._log_decision(t, decision)
                if decision.to_site != decision.from_site:
                    await self._migrate(t, decision, deadline)
            placements = await self._call(self.runtime.placements, deadline)
            placements = await self._restore_missing(t, placements, deadline)
        except ControllerUnavailable as err:
            self.result.skipped_steps += 1
            self.emit({"t": t, "kind": "warning", "message": f"decision at t={t:.0f}s skipped: {err}"})
            return
        self.known_sites.update(placements)
        self.result.placements = dict(placements)
        if self.on_step is not None:
            self.on_step(t, dict(placements))

    def _decide(self, t: float, placements: dict[str, str]):
        signals = {site: series.at(t) for site, series in self.signals.items()}
        down = frozenset(self.down_sites)
        cut = frozenset(self.cut_spans)
        feasible = {s.id: self.feasible_sites(s.id, down, cut) for s in self.services}
        inp = DecisionInput(t=t, signals=signals, placements=dict(placements), last_move=dict(self.last_move),
                            feasible=feasible, capacity=self.capacity, services=self.services, down_sites=down)
        self.result.decisions += 1
        return self.policy.decide(inp)

    def _log_decision(self, t: float, decision) -> None:
        self.emit({"t": t, "kind": "decision", "service": decision.service, "from": decision.from_site,
                   "to": decision.to_site, "reason": decision.reason,
                   "scores": {k: round(v, 6) for k, v in decision.scores.items()},
                   "feasible": sorted(decision.scores) if decision.scores else []})

    async def _migrate(self, t: float, decision, deadline: float | None) -> None:
        started = self.clock.now()
        try:
            outcome = await self._call(
                lambda: self.runtime.migrate(decision.service, decision.from_site, decision.to_site), deadline)
        except MigrationFailed as err:
            self.result.failed_migrations += 1
            self.emit({"t": t, "kind": "migration", "service": decision.service, "from": decision.from_site,
                       "to": decision.to_site, "ok": False, "error": str(err), "started": started,
                       "finished": self.clock.now()})
            return
        event = outcome.to_event()
        event.update({"t": t, "kind": "migration", "started": started, "finished": self.clock.now()})
        self.emit(event)
        if outcome.ok:
            self.result.migrations += 1
            self.last_move[decision.service] = t
        else:
            self.result.failed_migrations += 1

    async def _apply_due_events(self, t: float, deadline: float | None) -> None:
        while self.pending_events and self.pending_events[0].at <= t:
            event = self.pending_events.pop(0)
            span = tuple(event.span) if event.span else None
            if event.kind == "fibre-cut":
                self.cut_spans.add(span)
            elif event.kind == "fibre-repair":
                self.cut_spans.discard(span)
            elif event.kind == "site-down":
                self.down_sites.add(event.site)
            elif event.kind == "site-up":
                self.down_sites.discard(event.site)
            detail = await self._call(lambda e=event, s=span: self.runtime.apply_event(e.kind, s, e.site), deadline)
            self.emit({"t": t, "kind": "event", "event": event.kind, "at": event.at,
                       "span": list(span) if span else None, "site": event.site, "detail": detail})

    async def _restore_missing(self, t: float, placements: dict[str, str], deadline: float | None) -> dict[str, str]:
        """A service with no instance anywhere is a bug somewhere below: restart it and say so."""
        for service in self.services:
            if service.id in placements:
                continue
            site = self.known_sites[service.id]
            if site in self.down_sites:
                candidates = sorted(self.feasible_sites(service.id, frozenset(self.down_sites),
                                                        frozenset(self.cut_spans)))
                site = candidates[0] if candidates else site
            self.emit({"t": t, "kind": "warning",
                       "message": f"service {service.id} had no running instance; restarting it at {site}"})
            await self._call(lambda sid=service.id, at=site: self.runtime.ensure_running(sid, at), deadline)
            placements[service.id] = site
        return placements

    async def _call(self, make_call: Callable[[], Awaitable], deadline: float | None):
        """Await ``make_call()``, retrying ControllerUnavailable with backoff until ``deadline``."""
        wait_s = self.retry.initial_s
        attempt = 0
        while True:
            try:
                return await make_call()
            except ControllerUnavailable as err:
                attempt += 1
                now = time.monotonic()
                out_of_time = deadline is not None and now + wait_s > deadline
                out_of_tries = deadline is None and attempt >= self.retry.max_attempts
                if self._stop.is_set() or out_of_time or out_of_tries:
                    raise
                log.warning("attempt %d failed (%s); retrying in %.1fs", attempt, err, wait_s)
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=wait_s)
                except TimeoutError:
                    pass
                wait_s = min(wait_s * self.retry.factor, self.retry.max_s)
