"""The model-only run: a scenario stepped through its decision intervals without emulation.

Each decision interval (``scenario.policy.decision_interval``, from t = 0 to the
duration) the policy gets the power signals of that moment, the SLO-feasible sites
of every service (model RTT over the spans not cut), the down sites and the
capacity, and places every service. Scenario events (fibre cut/repair, site
down/up) take effect at their time; an event between two decision times triggers
a decision for the services it hits only (``forced_only``), as the daemon would.

What the model assumes (the emulated run measures all of it instead):

- Migrations are instantaneous make-before-break: the destination serves from
  the decision time and no request fails. The interruption a real migration
  would cause is modelled as one RTT between the two sites plus one service time
  and recorded on the migration event; it is not added to request latency.
- Request latency = model RTT (2 x the fastest route's one-way delay, 0 within a
  site) + a service time ``S = service_time x (1 - CV + CV x E)`` with ``E``
  standard exponential and ``CV`` = :data:`SERVICE_TIME_CV`: mean
  ``service_time``, a short exponential tail (p99.9 = 1.59 x service_time).
- Requests per service, region and interval: Poisson with mean rate x seconds
  (numpy, seeded). Requests arriving while the service's site is down with
  nowhere to go, or from a region that no fibre route reaches, fail.
- Per-interval percentiles are drawn, not computed from millions of samples: the
  k-th smallest of n service times (k = ceil(p n)) is the inverse CDF of a
  Beta(k, n - k + 1) variate, which is exactly how an order statistic is
  distributed; the four percentiles of a cell are then made non-decreasing.
  Vectorised over all cells, so a year costs well under a second.
- Whole-run percentiles, jitter and goodput in the summary are exact for the model:
  quantiles of the request-weighted mixture of the cells' latency distributions.

Energy of the policy's placements, of the static placement (initial sites, moved
only when forced) and of the oracle's plan are accounted on the same signals by
:func:`twin.model.energy.account_placements`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from twin.errors import NoPathError
from twin.model import energy
from twin.model.plan import service_round_trips
from twin.model.optics import OpticalNetwork
from twin.model.policies import (
    Decision,
    DecisionInput,
    OraclePlan,
    Policy,
    StaticPolicy,
    Timeline,
    feasible_from_rtt,
    make_policy,
    model_rtt_ms,
    plan_oracle,
)
from twin.model.power import SLOT_SECONDS, SignalSeries, SiteSignal
from twin.model.schema import Scenario, Service, Topology

SERVICE_TIME_CV = 0.1   # coefficient of variation of the modelled service time (assumption)
PERCENTILES = (50.0, 95.0, 99.0, 99.9)
PERCENTILE_KEYS = ("p50_ms", "p95_ms", "p99_ms", "p999_ms")


# --------------------------------------------------------------------------- world states


@dataclass
class _World:
    """What the network looks like between two events: cut spans and down sites."""

    cut: frozenset[frozenset[str]]
    down: frozenset[str]
    rtt_ms: np.ndarray                          # region-site x site, inf where unreachable
    feasible: dict[str, frozenset[str]]
    latency_ms: dict[str, dict[str, float]]     # per service: worst-region RTT + service time per site
    usable: dict[str, list[str]]                # per service: feasible sites that are up, sorted


class _Worlds:
    """Builds each distinct world once (events repeat states, e.g. a cut and its repair)."""

    def __init__(self, scenario: Scenario, topology: Topology):
        self.scenario = scenario
        self.topology = topology
        self.sites = tuple(s.id for s in topology.sites)
        self.index = {s: i for i, s in enumerate(self.sites)}
        self._rtt: dict[frozenset, np.ndarray] = {}
        self._cache: dict[tuple, _World] = {}

    def get(self, cut: frozenset, down: frozenset) -> _World:
        key = (cut, down)
        world = self._cache.get(key)
        if world is not None:
            return world
        rtt = self._rtt.get(cut)
        if rtt is None:
            rtt = self._rtt[cut] = self._all_pairs_rtt(cut)
        pairs = model_rtt_ms(self.scenario.services, self.topology, cut)
        feasible = {svc.id: feasible_from_rtt(svc, self.sites, pairs) for svc in self.scenario.services}
        latency = {}
        for svc in self.scenario.services:
            rows = rtt[[self.index[d.region] for d in svc.demand]] * service_round_trips(svc)
            worst = rows.max(axis=0) + svc.service_time * 1e3
            latency[svc.id] = {s: float(worst[i]) for i, s in enumerate(self.sites) if math.isfinite(worst[i])}
        usable = {sid: sorted(s for s in sites if s not in down) for sid, sites in feasible.items()}
        world = _World(cut, down, rtt, feasible, latency, usable)
        self._cache[key] = world
        return world

    def _all_pairs_rtt(self, cut: frozenset) -> np.ndarray:
        """Model RTT (ms) between every two sites over the uncut spans (also between sites that are
        no service's region: migrations go there); inf where no route is left."""
        network = OpticalNetwork(self.topology)
        for span in cut:
            network.set_span_down(*sorted(span))
        rtt = np.full((len(self.sites), len(self.sites)), np.inf)
        for i, a in enumerate(self.sites):
            for j, b in enumerate(self.sites):
                try:
                    rtt[i, j] = 2e3 * network.shortest_delay(a, b)
                except NoPathError:
                    pass
        return rtt


# --------------------------------------------------------------------------- the run


@dataclass
class Segment:
    """A stretch of scenario time with one world and one placement of every service."""

    start: float
    end: float
    slot: int
    world: _World
    sites: tuple[str, ...]      # per service, in scenario order


@dataclass
class PolicyRun:
    placements: list[tuple[str, ...]]           # per slot, per service: the site serving from the slot start
    segments: list[Segment]
    events: list[dict]
    migrations: dict[str, list[dict]]


@dataclass
class SimulationResult:
    """Everything the run directory needs (see docs/run-directory.md)."""

    scenario: Scenario
    topology: Topology
    policy: str
    interval_s: float
    times: np.ndarray
    signals: list[dict[str, SiteSignal]]
    placements: list[tuple[str, ...]]
    events: list[dict]
    latency: dict[str, dict[str, dict[str, np.ndarray]]]   # service -> region -> column -> per slot
    summary: dict
    oracle_plan: OraclePlan | None = None
    static_placements: list[tuple[str, ...]] = field(default_factory=list)
    oracle_placements: list[tuple[str, ...]] = field(default_factory=list)


def _slot_times(duration: float, interval: float) -> np.ndarray:
    n = max(1, math.ceil(duration / interval - 1e-9))
    return np.arange(n, dtype=float) * interval


def _event_fields(event) -> dict:
    data = {"kind": "event", "event": event.kind}
    if event.span is not None:
        data["span"] = list(event.span)
    if event.site is not None:
        data["site"] = event.site
    return data


def _apply(event, cut: frozenset, down: frozenset) -> tuple[frozenset, frozenset]:
    if event.kind == "fibre-cut":
        return cut | {frozenset(event.span)}, down
    if event.kind == "fibre-repair":
        return cut - {frozenset(event.span)}, down
    if event.kind == "site-down":
        return cut, down | {event.site}
    return cut, down - {event.site}


def run_policy(policy: Policy, scenario: Scenario, worlds: _Worlds, times: np.ndarray,
               signals: Sequence[Mapping[str, SiteSignal]], capacity: Mapping[str, tuple[float, float]], *,
               log: bool = True, progress: Callable[[float], None] | None = None) -> PolicyRun:
    """Step ``policy`` through the slots and events; decisions and migrations as run-directory events."""
    services = list(scenario.services)
    ids = [s.id for s in services]
    duration = scenario.duration
    interval = float(times[1] - times[0]) if len(times) > 1 else duration
    placements = {s.id: s.initial_site for s in services}
    last_move: dict[str, float | None] = {s.id: None for s in services}
    cut: frozenset = frozenset()
    down: frozenset = frozenset()
    pending = sorted(scenario.events, key=lambda e: e.at)
    next_event = 0
    events: list[dict] = []
    migrations: dict[str, list[dict]] = {s: [] for s in ids}
    per_slot: list[tuple[str, ...]] = []
    segments: list[Segment] = []
    # Static never moves unless a world change forces it: decide only when the world changes.
    lazy = isinstance(policy, StaticPolicy) and not log
    decided_world = None
    progress_every = max(1, len(times) // 200)

    def decide(t: float, world: _World, slot_signals, forced_only: bool) -> None:
        inp = DecisionInput(t=t, signals=slot_signals, placements=placements, last_move=last_move,
                            feasible=world.feasible, capacity=capacity, services=services,
                            down_sites=world.down, latency_ms=world.latency_ms)
        for d in policy.decide(inp, forced_only=forced_only):
            if log and (not forced_only or d.forced):
                events.append(_decision_event(t, d, world))
            if d.moves:
                migration = _migration_event(t, d, world, worlds, services[ids.index(d.service)])
                migrations[d.service].append(migration)
                if log:
                    events.append(migration)
                placements[d.service] = d.to_site
                last_move[d.service] = t

    for k, t in enumerate(times.tolist()):
        while next_event < len(pending) and pending[next_event].at <= t:
            event = pending[next_event]
            cut, down = _apply(event, cut, down)
            if log:
                events.append({"t": float(event.at), **_event_fields(event)})
            next_event += 1
        world = worlds.get(cut, down)
        if not lazy or world is not decided_world:
            decide(t, world, signals[k], forced_only=False)
            decided_world = world
        per_slot.append(tuple(placements[i] for i in ids))
        end = min(t + interval, duration)
        start = t
        # Events strictly inside this slot: apply, then decide only for the services they hit.
        while next_event < len(pending) and pending[next_event].at < end:
            event = pending[next_event]
            segments.append(Segment(start, event.at, k, world, tuple(placements[i] for i in ids)))
            cut, down = _apply(event, cut, down)
            if log:
                events.append({"t": float(event.at), **_event_fields(event)})
            world = worlds.get(cut, down)
            decide(event.at, world, signals[k], forced_only=True)
            start = event.at
            next_event += 1
        segments.append(Segment(start, end, k, world, tuple(placements[i] for i in ids)))
        if progress is not None and (k % progress_every == 0 or k == len(times) - 1):
            progress(end)
    # Events at the very end (at == duration) are still recorded.
    while next_event < len(pending):
        event = pending[next_event]
        if log:
            events.append({"t": float(event.at), **_event_fields(event)})
        next_event += 1
    return PolicyRun(per_slot, segments, events, migrations)


def _decision_event(t: float, d: Decision, world: _World) -> dict:
    return {"t": t, "kind": "decision", "service": d.service, "from": d.from_site, "to": d.to_site,
            "reason": d.reason, "scores": d.scores, "feasible": world.usable[d.service]}


def _migration_event(t: float, d: Decision, world: _World, worlds: _Worlds, service: Service) -> dict:
    rtt = float(world.rtt_ms[worlds.index[d.from_site], worlds.index[d.to_site]])
    interruption_ms = (rtt if math.isfinite(rtt) else 0.0) + service.service_time * 1e3
    return {"t": t, "kind": "migration", "service": d.service, "from": d.from_site, "to": d.to_site,
            "strategy": "model", "started": t, "finished": t, "duration_s": 0.0,
            "state_bytes": int(service.state_size), "transfer_s": None,
            "interruption_ms": round(interruption_ms, 3), "failed_requests": 0, "ok": True, "error": None,
            "forced": d.forced}


# --------------------------------------------------------------------------- latency


def _service_time_params(service: Service) -> tuple[float, float]:
    """(floor, exponential scale) of the service time in ms."""
    st_ms = service.service_time * 1e3
    return st_ms * (1 - SERVICE_TIME_CV), st_ms * SERVICE_TIME_CV


def _latency_tables(run: PolicyRun, scenario: Scenario, worlds: _Worlds, n_slots: int,
                    rng: np.random.Generator) -> tuple[dict, dict]:
    """Per service and region, per-slot statistics; and per service the mixture inputs for the summary."""
    seg_slot = np.array([s.slot for s in run.segments])
    seg_len = np.array([s.end - s.start for s in run.segments])
    index = worlds.index
    tables: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    mixtures: dict[str, dict] = {}
    # Distinct worlds get small integer ids so down masks and RTTs can be gathered in bulk.
    world_ids: dict[int, int] = {}
    world_list: list[_World] = []
    for seg in run.segments:
        if id(seg.world) not in world_ids:
            world_ids[id(seg.world)] = len(world_list)
            world_list.append(seg.world)
    seg_world = np.array([world_ids[id(s.world)] for s in run.segments])
    rtt_all = np.stack([w.rtt_ms for w in world_list])                       # world x region x site
    down_all = np.array([[site in w.down for site in worlds.sites] for w in world_list])
    multi = np.bincount(seg_slot, minlength=n_slots) > 1
    for j, service in enumerate(scenario.services):
        seg_site = np.array([index[s.sites[j]] for s in run.segments])
        floor_ms, scale_ms = _service_time_params(service)
        per_region = {}
        mix_rtt, mix_weight, region_counts = [], [], []
        within = 0.0
        budget_ms = service.slo.latency * 1e3
        slo_missed = 0
        site_seconds = np.bincount(seg_site, weights=seg_len, minlength=len(worlds.sites))
        for demand in service.demand:
            r = index[demand.region]
            # the network part of a request: its round trips on its kind of connection
            rtt = rtt_all[seg_world, r, seg_site] * service_round_trips(service)
            ok = ~down_all[seg_world, seg_site] & np.isfinite(rtt)
            served_s = np.where(ok, seg_len, 0.0)
            failed_s = seg_len - served_s
            served = np.bincount(seg_slot, weights=served_s, minlength=n_slots)
            failed = np.bincount(seg_slot, weights=failed_s, minlength=n_slots)
            if multi.any():
                # A slot split by an event: report the site (and RTT) that served longest.
                slot_rtt, slot_site = _majority(seg_slot, served_s, seg_len, rtt, seg_site, n_slots)
            else:
                slot_rtt, slot_site = rtt, seg_site
            n_ok = rng.poisson(demand.rate * served)
            n_failed = rng.poisson(demand.rate * failed)
            has = n_ok > 0
            quantiles = np.full((len(PERCENTILES) + 1, n_slots), np.nan)
            for q, p in enumerate((*PERCENTILES, service.slo.percentile)):
                kth = np.ceil(p / 100 * n_ok[has])
                kth = np.clip(kth, 1, n_ok[has])
                u = rng.beta(kth, n_ok[has] - kth + 1)
                quantiles[q, has] = slot_rtt[has] + floor_ms - scale_ms * np.log1p(-u)
            quantiles[: len(PERCENTILES), has] = np.maximum.accumulate(quantiles[: len(PERCENTILES), has], axis=0)
            slo_missed += int(np.count_nonzero(quantiles[-1, has] > budget_ms))
            per_region[demand.region] = {
                "site": np.array(worlds.sites, dtype=object)[slot_site],
                "requests": n_ok + n_failed, "failed": n_failed,
                **{key: quantiles[q] for q, key in enumerate(PERCENTILE_KEYS)},
            }
            mix_rtt.append(slot_rtt[has])
            mix_weight.append(n_ok[has].astype(float))
            region_counts.append((demand.region, int(n_ok.sum() + n_failed.sum()), int(n_failed.sum())))
            within += float(np.sum(n_ok[has] * _cdf(budget_ms - slot_rtt[has], floor_ms, scale_ms)))
        tables[service.id] = per_region
        mixtures[service.id] = {
            "rtt": np.concatenate(mix_rtt) if mix_rtt else np.zeros(0),
            "weight": np.concatenate(mix_weight) if mix_weight else np.zeros(0),
            "regions": [(region, rtt, weight, requests, failed) for (region, requests, failed), rtt, weight
                        in zip(region_counts, mix_rtt, mix_weight)],
            "requests": sum(c[1] for c in region_counts), "failed": sum(c[2] for c in region_counts),
            "within": within,
            "floor": floor_ms, "scale": scale_ms, "slo_intervals_missed": slo_missed,
            "site_seconds": site_seconds,
        }
    return tables, mixtures


def _majority(seg_slot, served_s, seg_len, rtt, seg_site, n_slots):
    """Per slot, the RTT and site of the segment that served longest (longest overall if none served)."""
    order = np.lexsort((-seg_len, -served_s, seg_slot))
    first = np.ones(len(order), dtype=bool)
    first[1:] = seg_slot[order][1:] != seg_slot[order][:-1]
    chosen = order[first]
    return rtt[chosen], seg_site[chosen]


def _cdf(x_ms: np.ndarray, floor_ms: float, scale_ms: float) -> np.ndarray:
    """P(service time <= x) of the shifted exponential."""
    x = np.asarray(x_ms, dtype=float)
    if scale_ms <= 0:
        return (x >= floor_ms).astype(float)
    return np.where(x >= floor_ms, -np.expm1(-(x - floor_ms) / scale_ms), 0.0)


def mixture_quantiles(rtt_ms: np.ndarray, weight: np.ndarray, floor_ms: float, scale_ms: float,
                      percentiles: Sequence[float]) -> list[float]:
    """Quantiles of the request-weighted mixture of (RTT + service time) distributions, by bisection."""
    if weight.sum() <= 0:
        return [math.nan] * len(percentiles)
    values, inverse = np.unique(rtt_ms, return_inverse=True)
    w = np.bincount(inverse.ravel(), weights=weight) / weight.sum()
    targets = np.array(percentiles, dtype=float) / 100
    lo = np.full(len(targets), values.min() + floor_ms)
    hi = np.full(len(targets), values.max() + floor_ms + scale_ms * 40 + 1e-9)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = (w[None, :] * _cdf(mid[:, None] - values[None, :], floor_ms, scale_ms)).sum(axis=1) >= targets
        hi = np.where(below, mid, hi)
        lo = np.where(below, lo, mid)
    return [float(v) for v in hi]


# --------------------------------------------------------------------------- energy and the oracle


def _energy_matrices(scenario: Scenario, topology: Topology, signals: Sequence[Mapping[str, SiteSignal]],
                     durations: np.ndarray):
    """Per service: (slots x sites) arrays of kWh, grid kWh and kg CO2 if it ran there that slot.

    Every value is :func:`twin.model.energy.account_interval`'s; each distinct
    (signal, slot length) of a site is accounted once, because built-in profiles
    repeat the same signal objects day after day.
    """
    sites = topology.sites
    n_slots = len(signals)
    durations_list = durations.tolist()
    # Per site: slot -> index into its distinct (signal, seconds) pairs.
    distinct: list[list[tuple[SiteSignal, float]]] = []
    slot_index = np.empty((len(sites), n_slots), dtype=np.int64)
    for i, site in enumerate(sites):
        seen: dict[tuple[int, float], int] = {}
        pairs: list[tuple[SiteSignal, float]] = []
        row = slot_index[i]
        for k, slot in enumerate(signals):
            signal = slot[site.id]
            key = (id(signal), durations_list[k])
            index = seen.get(key)
            if index is None:
                index = seen[key] = len(pairs)
                pairs.append((signal, durations_list[k]))
            row[k] = index
        distinct.append(pairs)
    out_kwh, out_grid, out_kg = {}, {}, {}
    for service in scenario.services:
        util = energy.utilisation(service)
        kwh = np.empty((n_slots, len(sites)))
        grid = np.empty_like(kwh)
        kg = np.empty_like(kwh)
        for i, site in enumerate(sites):
            power_kw = energy.service_power_kw(site, service.cpus, util)
            totals = [energy.account_interval(site, power_kw, seconds, signal) for signal, seconds in distinct[i]]
            values = np.array([(t.kwh, t.kwh - t.surplus_kwh, t.kg_co2) for t in totals])
            picked = values[slot_index[i]]
            kwh[:, i], grid[:, i], kg[:, i] = picked[:, 0], picked[:, 1], picked[:, 2]
        out_kwh[service.id], out_grid[service.id], out_kg[service.id] = kwh, grid, kg
    return out_kwh, out_grid, out_kg


def _oracle_worlds(run: PolicyRun, n_slots: int, worlds: _Worlds, services: Sequence[Service]):
    """Per slot, what the oracle must respect: feasible in every world of the slot, down in any."""
    feasible: list[dict[str, frozenset[str]] | None] = [None] * n_slots
    down: list[frozenset[str] | None] = [None] * n_slots
    for seg in run.segments:
        k = seg.slot
        if feasible[k] is None:
            feasible[k], down[k] = seg.world.feasible, seg.world.down
        elif seg.world.feasible is not feasible[k] or seg.world.down is not down[k]:
            feasible[k] = {s.id: feasible[k][s.id] & seg.world.feasible[s.id] for s in services}
            down[k] = down[k] | seg.world.down
    return feasible, down


def simulate(scenario: Scenario, topology: Topology, signals: Mapping[str, SignalSeries], *, seed: int = 0,
             progress: Callable[[float], None] | None = None) -> SimulationResult:
    """Run ``scenario`` on the model: placements, decisions, latency per interval, energy, summary.

    ``signals`` come from :func:`twin.model.power.load_signals`; ``progress`` is called
    with the scenario time reached (seconds) now and then.

    Raises:
        TwinError: from the signals (e.g. data shorter than the duration).
    """
    wall_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    interval = float(scenario.policy.decision_interval)
    times = _slot_times(scenario.duration, interval)
    n_slots = len(times)
    durations = np.minimum(times + interval, scenario.duration) - times
    site_ids = tuple(s.id for s in topology.sites)
    series = [signals[s] for s in site_ids]
    slot_signals = [{s: ser.at(t) for s, ser in zip(site_ids, series)} for t in times.tolist()]
    capacity = {s.id: (s.compute.cpus, s.compute.memory) for s in topology.sites}
    worlds = _Worlds(scenario, topology)
    services = list(scenario.services)
    service_ids = [s.id for s in services]

    static_run = run_policy(StaticPolicy(), scenario, worlds, times, slot_signals, capacity, log=False)
    kwh, grid, kg = _energy_matrices(scenario, topology, slot_signals, durations)
    feasible, down = _oracle_worlds(static_run, n_slots, worlds, services)
    timeline = Timeline(slot_seconds=interval, sites=site_ids, capacity=capacity, services=services,
                        initial={s.id: s.initial_site for s in services}, grid_kwh=grid, kg_co2=kg,
                        energy_kwh=kwh, feasible=feasible, down=down)
    oracle_plan = plan_oracle(timeline, scenario.policy.migration_cost)
    oracle_placements = [tuple(oracle_plan.sites[s.id][k] for s in services) for k in range(n_slots)]

    if scenario.policy.name == "static":
        policy: Policy = StaticPolicy()
    else:
        policy = make_policy(scenario.policy, oracle_plan=oracle_plan)
    run = run_policy(policy, scenario, worlds, times, slot_signals, capacity, log=True, progress=progress)
    latency, mixtures = _latency_tables(run, scenario, worlds, n_slots, rng)

    # The energy model counts in the signals' 30-minute slots: each slot takes the placement
    # in force at its start (the same as per decision when decisions are every 30 minutes).
    n_energy_slots = max(1, math.ceil(scenario.duration / SLOT_SECONDS - 1e-9))
    decision_of_slot = np.minimum((np.arange(n_energy_slots) * SLOT_SECONDS // interval).astype(int),
                                  n_slots - 1).tolist()

    def totals(placements: list[tuple[str, ...]]) -> dict:
        by_slot = [dict(zip(service_ids, placements[k])) for k in decision_of_slot]
        result = energy.account_placements(by_slot, scenario, topology, signals)
        return {"kwh": round(result.kwh, 6), "surplus_kwh": round(result.surplus_kwh, 6),
                "kg_co2": round(result.kg_co2, 6)}

    summary = {
        "format": 1, "scenario": scenario.name, "mode": "model-only", "policy": policy.name,
        "wall_seconds": None, "seed": seed, "intervals": n_slots, "decision_interval": interval,
        "services": {s.id: _service_summary(s, mixtures[s.id], run.migrations[s.id], site_ids)
                     for s in services},
        "energy": {"policy": totals(run.placements), "static": totals(static_run.placements),
                   "oracle": totals(oracle_placements)},
        "model": {"service_time_cv": SERVICE_TIME_CV, "migrations": "instantaneous make-before-break",
                  "oracle": oracle_plan.objective},
    }
    summary["wall_seconds"] = round(time.perf_counter() - wall_start, 3)
    return SimulationResult(scenario, topology, policy.name, interval, times, slot_signals, run.placements,
                            run.events, latency, summary, oracle_plan, static_run.placements, oracle_placements)


def _service_summary(service: Service, mix: dict, migrations: list[dict], site_ids: tuple[str, ...]) -> dict:
    floor, scale = mix["floor"], mix["scale"]
    slo = service.slo
    p50, p95, p99, p999, p_slo = mixture_quantiles(mix["rtt"], mix["weight"], floor, scale,
                                                   (*PERCENTILES, slo.percentile))
    # Jitter is what one user region sees (its latency varies as the service moves), not the
    # spread between regions near and far: the worst region is reported.
    jitter_sd = jitter_spread = math.nan
    regions = {}
    for region, rtt, weight, region_requests, region_failed in mix["regions"]:
        if weight.sum() <= 0:
            regions[region] = {"requests": region_requests, "failed": region_failed, "p50_ms": None,
                               "p99_ms": None, "p999_ms": None, "slo_percentile_ms": None, "slo_met": False}
            continue
        q50, q99, q999, q_slo = mixture_quantiles(rtt, weight, floor, scale, (50.0, 99.0, 99.9, slo.percentile))
        ok_share = (region_requests - region_failed) / region_requests if region_requests else 0.0
        regions[region] = {"requests": region_requests, "failed": region_failed, "p50_ms": round(q50, 3),
                           "p99_ms": round(q99, 3), "p999_ms": round(q999, 3), "slo_percentile_ms": round(q_slo, 3),
                           "slo_met": bool(q_slo <= slo.latency * 1e3 and ok_share >= slo.percentile / 100)}
        mean = float(np.average(rtt, weights=weight))
        var_rtt = float(np.average((rtt - mean) ** 2, weights=weight))
        sd = math.sqrt(scale**2 + var_rtt)
        jitter_sd = sd if math.isnan(jitter_sd) else max(jitter_sd, sd)
        jitter_spread = q99 - q50 if math.isnan(jitter_spread) else max(jitter_spread, q99 - q50)
    requests = mix["requests"]
    goodput = mix["within"] / requests if requests else 0.0
    jitter_ok = slo.jitter is None or (not math.isnan(jitter_spread) and jitter_spread <= slo.jitter * 1e3)
    seconds = mix["site_seconds"]
    shares = {site_ids[i]: round(float(v / seconds.sum()), 4) for i, v in enumerate(seconds) if v > 0}

    def ms(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 3)

    return {
        "requests": requests, "failed": mix["failed"], "failed_by_migration": 0,
        "p50_ms": ms(p50), "p95_ms": ms(p95), "p99_ms": ms(p99), "p999_ms": ms(p999),
        "jitter_sd_ms": ms(jitter_sd), "jitter_p99_p50_ms": ms(jitter_spread),
        "slo": {"latency_ms": round(slo.latency * 1e3, 3), "percentile": slo.percentile,
                "jitter_ms": None if slo.jitter is None else round(slo.jitter * 1e3, 3)},
        "slo_met": bool(requests > 0 and goodput >= slo.percentile / 100 and jitter_ok),
        "slo_percentile_ms": ms(p_slo),
        "slo_intervals_missed": mix["slo_intervals_missed"],
        "goodput": round(goodput, 6),
        "migrations": len(migrations),
        "interruption_ms_max": max((m["interruption_ms"] for m in migrations), default=0.0),
        "sites": shares,
        "regions": dict(sorted(regions.items())),
    }
