"""Placement policies: where each service should run for the next decision interval.

Pure functions of a :class:`DecisionInput` (power signals, current placements,
feasible sites, capacity, down sites); the daemon and the model-only simulator
both call :meth:`Policy.decide` and get one :class:`Decision` per service, with a
reason a person can read.

Rules every policy keeps:

- a service is only placed where its latency SLO holds for all its user regions
  (``feasible``) and never at a down site;
- capacity: the CPUs and memory of the services at a site never exceed the
  site's ``compute`` (a service may always stay where it already is);
- a service whose site is down or no longer meets its SLO is moved to the best
  feasible site that fits (reason ``forced: ...``); if there is none it stays and
  the reason says so;
- deterministic: services are decided in the order given (earlier ones take
  capacity first), ties go to the current site, then to the earlier site in
  ``capacity`` order (the topology's site order).

Policies:

``static``
    never moves unless forced; a forced move goes to the lowest-latency site.
``greedy-surplus``
    the site with the most surplus MW; ties: lower carbon intensity.
``greedy-carbon``
    the site with the lowest grid carbon intensity; ties: more surplus.
``hysteresis``
    the greedy-surplus score normalised to 0..1 (surplus / largest surplus of any
    site now); moves only when ``best - migration_cost > current + hysteresis``
    and at least ``min_dwell`` seconds after the service's last move.
``oracle``
    offline: knows the whole timeline (signals, feasibility, down sites) and plans
    every service by dynamic programming over the slots, see :func:`plan_oracle`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Mapping, Protocol, Sequence

import numpy as np

from twin.errors import TwinError
from twin.model.plan import service_round_trips, slo_feasibility
from twin.model.schema import Policy as PolicyConfig
from twin.model.schema import Service, Topology

POLICY_NAMES = ("static", "greedy-surplus", "greedy-carbon", "hysteresis", "oracle")
_CAPACITY_SLACK = 1e-9  # float sums of fractional CPUs (0.1 + 0.2) must still fit 0.3


class SignalLike(Protocol):
    """What a policy reads of a site's power signal (twin.model.power.SiteSignal)."""

    surplus_mw: float
    carbon_g_per_kwh: float


@dataclass(frozen=True)
class DecisionInput:
    """Everything a policy may look at, at scenario time ``t`` (seconds).

    ``capacity`` lists every site as ``(cpus, memory_bytes)``; its key order is the
    site order used to break ties. ``latency_ms`` (optional) is each service's
    worst-region expected latency per site, used to pick the nearest site when a
    policy that ignores power has to move.
    """

    t: float
    signals: Mapping[str, SignalLike]
    placements: Mapping[str, str]
    last_move: Mapping[str, float | None]
    feasible: Mapping[str, frozenset[str]]
    capacity: Mapping[str, tuple[float, float]]
    services: Sequence[Service]
    down_sites: frozenset[str] = frozenset()
    latency_ms: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """One service's placement for the next interval; ``to_site == from_site`` means stay."""

    service: str
    from_site: str
    to_site: str
    reason: str
    scores: dict[str, float]
    forced: bool = False

    @property
    def moves(self) -> bool:
        return self.to_site != self.from_site


# --------------------------------------------------------------------------- feasibility


def feasible_sites(service: Service, topology: Topology,
                   rtt_overrides_ms: Mapping[tuple[str, str], float] | None = None, *,
                   cut_spans: frozenset[frozenset[str]] | set = frozenset()) -> frozenset[str]:
    """Sites where, for every demand region, RTT + service time <= the SLO latency budget.

    RTT is the model's (``plan.slo_feasibility``: 2 x the fastest route's one-way
    delay, 0 within a site) over the spans that are not cut, unless
    ``rtt_overrides_ms[(region, site)]`` gives a measured one. A site that some
    region cannot reach at all is not feasible.
    """
    rtt = model_rtt_ms([service], topology, cut_spans)
    return feasible_from_rtt(service, [s.id for s in topology.sites], rtt, rtt_overrides_ms)


def feasible_from_rtt(service: Service, sites: Sequence[str], rtt_ms: Mapping[tuple[str, str], float],
                      rtt_overrides_ms: Mapping[tuple[str, str], float] | None = None) -> frozenset[str]:
    """:func:`feasible_sites` on RTTs already known: ``rtt_ms[(region, site)]``, missing = unreachable."""
    overrides = rtt_overrides_ms or {}
    budget_ms = service.slo.latency * 1e3
    service_ms = service.service_time * 1e3
    trips = service_round_trips(service)
    feasible = set()
    for site in sites:
        ok = True
        for demand in service.demand:
            measured = overrides.get((demand.region, site))
            value = measured if measured is not None else rtt_ms.get((demand.region, site))
            if value is None or value * trips + service_ms > budget_ms:
                ok = False
                break
        if ok:
            feasible.add(site)
    return frozenset(feasible)


def model_rtt_ms(services: Sequence[Service], topology: Topology,
                 cut_spans: frozenset[frozenset[str]] | set = frozenset()) -> dict[tuple[str, str], float]:
    """Model RTT (ms) from each demand region of ``services`` to each reachable site.

    Reuses ``plan.slo_feasibility``; cut spans are left out of the topology it sees.
    """
    if cut_spans:
        cut = {frozenset(s) for s in cut_spans}
        topology = topology.model_copy(update={"spans": [s for s in topology.spans if frozenset(s.ends) not in cut]})
    rows = slo_feasibility(SimpleNamespace(services=list(services)), topology)
    return {(row.region, row.site): row.rtt_ms for row in rows}


# --------------------------------------------------------------------------- helpers


def format_duration(seconds: float) -> str:
    """Short human duration: ``1h``, ``30 min``, ``1h30``, ``45 s``.

    >>> format_duration(3600), format_duration(1800), format_duration(5400), format_duration(45)
    ('1h', '30 min', '1h30', '45 s')
    """
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h" if minutes == 0 else f"{hours}h{minutes:02d}"


def _mw(value: float) -> str:
    return f"{value:.0f} MW" if value >= 10 or value == 0 else f"{value:.1f} MW"


class _Usage:
    """CPUs and memory still free per site while services are decided one after another."""

    def __init__(self, inp: DecisionInput, by_id: Mapping[str, Service]):
        # Free capacity plus the float slack, so "fits" is one comparison per resource.
        self.cpus = {site: cpus + _CAPACITY_SLACK for site, (cpus, _) in inp.capacity.items()}
        self.memory = {site: memory + _CAPACITY_SLACK for site, (_, memory) in inp.capacity.items()}
        for service_id, site in inp.placements.items():
            service = by_id.get(service_id)
            if service is not None and site in self.cpus:
                self.add(service, site)

    def add(self, service: Service, site: str, sign: float = 1.0) -> None:
        self.cpus[site] -= sign * service.cpus
        self.memory[site] -= sign * service.memory

    def fits(self, service: Service, site: str) -> bool:
        return self.cpus[site] >= service.cpus and self.memory[site] >= service.memory


# --------------------------------------------------------------------------- policies


class Policy:
    """Base: the shared rules (feasibility, capacity, forced moves); subclasses rank sites."""

    name = "policy"

    def decide(self, inp: DecisionInput, *, forced_only: bool = False) -> list[Decision]:
        """One decision per service of ``inp.services``, in that order.

        ``forced_only``: decide only services whose site is down or fails its SLO
        (used when an event happens between decision times); the others stay.
        """
        by_id = {s.id: s for s in inp.services}
        usage = _Usage(inp, by_id)
        order = {site: i for i, site in enumerate(inp.capacity)}
        self._prepare(inp)
        decisions = []
        down_sites = inp.down_sites
        sites = list(inp.capacity)
        allowed_cache: dict[frozenset[str], list[str]] = {}
        for service in inp.services:
            current = inp.placements[service.id]
            if current in usage.cpus:
                usage.add(service, current, -1.0)  # its own share is free to reuse
            feasible = inp.feasible.get(service.id, frozenset())
            allowed = allowed_cache.get(feasible)
            if allowed is None:
                allowed = allowed_cache[feasible] = [s for s in sites if s in feasible and s not in down_sites]
            need_cpus, need_memory = service.cpus, service.memory
            free_cpus, free_memory = usage.cpus, usage.memory
            candidates = [s for s in allowed
                          if s == current or (free_cpus[s] >= need_cpus and free_memory[s] >= need_memory)]
            scores = self._scores(service, allowed, inp)
            down = current in inp.down_sites
            infeasible = current not in feasible
            forced = down or infeasible
            why = f"site {current} down" if down else f"SLO not met at {current}"
            if not forced and forced_only:
                decision = Decision(service.id, current, current, "stay: not affected by the event", scores)
            elif not candidates or (not forced and candidates == [current]):
                full = [s for s in allowed if s not in candidates]
                detail = f"; {', '.join(full)} full" if full else ""
                if forced and full:
                    reason = f"stay: {why} and every other feasible site is full ({', '.join(full)})"
                elif forced:
                    reason = f"stay: {why} and no other site that is up meets the SLO"
                else:
                    reason = f"stay: no other feasible site{detail}"
                decision = Decision(service.id, current, current, reason, scores, forced)
            elif forced:
                best = min(candidates, key=lambda s: (self._forced_key(service, s, scores, inp), order[s]))
                reason = f"forced: {why}; moved to {best} ({self._describe(best, scores, inp)})"
                decision = Decision(service.id, current, best, reason, scores, True)
            else:
                to_site, reason = self._choose(service, current, candidates, scores, inp, order)
                decision = Decision(service.id, current, to_site, reason, scores)
            if decision.to_site in usage.cpus:
                usage.add(service, decision.to_site)
            decisions.append(decision)
        return decisions

    # -- to override -------------------------------------------------------------------
    def _prepare(self, inp: DecisionInput) -> None:
        """Per-call precomputation (e.g. normalisation) before the services are decided."""

    def _scores(self, service: Service, sites: list[str], inp: DecisionInput) -> dict[str, float]:
        return {}

    def _forced_key(self, service: Service, site: str, scores: dict[str, float], inp: DecisionInput):
        """Smaller is better: by default the highest score."""
        return -scores.get(site, 0.0)

    def _describe(self, site: str, scores: dict[str, float], inp: DecisionInput) -> str:
        return f"score {scores.get(site, 0.0):.3g}"

    def _choose(self, service: Service, current: str, candidates: list[str], scores: dict[str, float],
                inp: DecisionInput, order: Mapping[str, int]) -> tuple[str, str]:
        raise NotImplementedError


class StaticPolicy(Policy):
    """Never moves unless forced; then to the site with the lowest expected latency."""

    name = "static"

    def _scores(self, service, sites, inp):
        latency = inp.latency_ms.get(service.id, {})
        return {s: -latency[s] for s in sites if s in latency}

    def _describe(self, site, scores, inp):
        return f"{-scores[site]:.2f} ms" if site in scores else "first feasible site"

    def _choose(self, service, current, candidates, scores, inp, order):
        return current, "stay: static placement"


class GreedyPolicy(Policy):
    """Best site now by a signal; moves whenever another site is strictly better."""

    def __init__(self, by: str):
        if by not in ("surplus", "carbon"):
            raise TwinError(f"greedy policy ranks by 'surplus' or 'carbon', not {by!r}")
        self.by = by
        self.name = f"greedy-{by}"

    def _prepare(self, inp):
        if self.by == "surplus":
            self._keys = {s: (sig.surplus_mw, -sig.carbon_g_per_kwh) for s, sig in inp.signals.items()}
        else:
            self._keys = {s: (-sig.carbon_g_per_kwh, sig.surplus_mw) for s, sig in inp.signals.items()}

    def _key(self, site: str, inp: DecisionInput) -> tuple[float, float]:
        return self._keys[site]

    def _best(self, candidates: list[str]) -> str:
        # Candidates come in site order and max() keeps the first of equal keys: the earlier site.
        return max(candidates, key=self._keys.__getitem__)

    def _scores(self, service, sites, inp):
        keys = self._keys
        return {s: keys[s][0] for s in sites}

    def _forced_key(self, service, site, scores, inp):
        return tuple(-v for v in self._key(site, inp))

    def _describe(self, site, scores, inp):
        signal = inp.signals[site]
        if self.by == "surplus":
            return f"surplus {_mw(signal.surplus_mw)}"
        return f"{signal.carbon_g_per_kwh:.0f} g/kWh"

    def _choose(self, service, current, candidates, scores, inp, order):
        best = self._best(candidates)
        if best == current or self._key(best, inp) <= self._key(current, inp):
            return current, f"stay: {current} is best ({self._describe(current, scores, inp)})"
        verb = "beats" if self.by == "surplus" else "is cleaner than"
        return best, (f"{best} {self._describe(best, scores, inp)} {verb} "
                      f"{current} {self._describe(current, scores, inp)}")


class HysteresisPolicy(GreedyPolicy):
    """Greedy on normalised surplus, moving only past a margin and after a minimum dwell."""

    name = "hysteresis"

    def __init__(self, *, min_dwell_s: float, hysteresis: float, migration_cost: float):
        super().__init__("surplus")
        self.name = "hysteresis"
        self.min_dwell_s = min_dwell_s
        self.hysteresis = hysteresis
        self.migration_cost = migration_cost
        self._max_surplus = 0.0

    def _prepare(self, inp):
        super()._prepare(inp)
        top = max((sig.surplus_mw for sig in inp.signals.values()), default=0.0)
        self._normalised = {s: (sig.surplus_mw / top if top > 0 else 0.0) for s, sig in inp.signals.items()}

    def _scores(self, service, sites, inp):
        normalised = self._normalised
        return {s: normalised[s] for s in sites}

    def _choose(self, service, current, candidates, scores, inp, order):
        last = inp.last_move.get(service.id)
        if last is not None and inp.t - last < self.min_dwell_s:
            return current, (f"stay: min dwell {format_duration(self.min_dwell_s)} not over "
                             f"(moved {format_duration(inp.t - last)} ago)")
        best = self._best(candidates)
        margin = self.hysteresis + self.migration_cost
        here = scores.get(current, 0.0)
        there = scores.get(best, 0.0)
        signal = inp.signals
        what = (f"{best} surplus {_mw(signal[best].surplus_mw)} vs {current} "
                f"{_mw(signal[current].surplus_mw)}")
        margins = f"hysteresis {self.hysteresis:.0%} + migration cost {self.migration_cost:.0%}"
        if best == current:
            return current, f"stay: {current} is best (surplus {_mw(signal[current].surplus_mw)})"
        if there - here > margin:
            return best, (f"{best} surplus {_mw(signal[best].surplus_mw)} beats {current} "
                          f"{_mw(signal[current].surplus_mw)} by more than {margins}")
        return current, f"stay: {what} is within {margins}"


class OraclePolicy(Policy):
    """Replays a plan made by :func:`plan_oracle` over the whole timeline."""

    name = "oracle"

    def __init__(self, plan: "OraclePlan"):
        self.plan = plan

    def _scores(self, service, sites, inp):
        slot = self.plan.slot_of(inp.t)
        costs = self.plan.costs.get(service.id)
        if costs is None:
            return {}
        index = self.plan.site_index
        return {s: -float(costs[slot, index[s]]) for s in sites if math.isfinite(costs[slot, index[s]])}

    def _describe(self, site, scores, inp):
        return f"grid {-scores[site]:.4g} kWh this slot" if site in scores else "no cost known"

    def _choose(self, service, current, candidates, scores, inp, order):
        slot = self.plan.slot_of(inp.t)
        planned = self.plan.sites[service.id][slot]
        if planned == current:
            return current, f"stay: the oracle plan keeps {current} for this slot"
        if planned in candidates:
            return planned, (f"oracle plan: {planned} ({self._describe(planned, scores, inp)}) over "
                             f"{current} ({self._describe(current, scores, inp)}), {self.plan.objective}")
        return current, f"stay: the oracle planned {planned} but it is not feasible or full now"


# --------------------------------------------------------------------------- oracle


@dataclass(frozen=True)
class Timeline:
    """What the oracle knows in advance, per slot ``k`` starting at ``k * slot_seconds``.

    ``grid_kwh[svc]`` and ``kg_co2[svc]`` are (slots x sites) arrays: the service's
    grid energy and emissions if it ran at that site for that slot (from the energy
    model). ``feasible[k][svc]`` and ``down[k]`` may share objects between slots.
    """

    slot_seconds: float
    sites: tuple[str, ...]
    capacity: Mapping[str, tuple[float, float]]
    services: Sequence[Service]
    initial: Mapping[str, str]
    grid_kwh: Mapping[str, np.ndarray]
    kg_co2: Mapping[str, np.ndarray]
    energy_kwh: Mapping[str, np.ndarray]
    feasible: Sequence[Mapping[str, frozenset[str]]]
    down: Sequence[frozenset[str]]

    @property
    def slots(self) -> int:
        return len(self.down)


@dataclass(frozen=True)
class OraclePlan:
    slot_seconds: float
    site_index: Mapping[str, int]
    sites: Mapping[str, list[str]]           # per service, the site of each slot
    costs: Mapping[str, np.ndarray]          # per service, the cost matrix the DP used (inf = not allowed)
    move_cost: Mapping[str, float]           # per service, what one move cost in the DP
    objective: str

    def slot_of(self, t: float) -> int:
        slots = len(next(iter(self.sites.values()))) if self.sites else 1
        return min(max(int(t // self.slot_seconds), 0), slots - 1)


_CO2_TIE_WEIGHT = 1e-6  # kWh per kg CO2: carbon only breaks ties of grid energy


def oracle_costs(timeline: Timeline, service_id: str) -> np.ndarray:
    """The oracle's per-slot cost of each site: grid kWh, plus kg CO2 x 1e-6 to break ties."""
    return timeline.grid_kwh[service_id] + _CO2_TIE_WEIGHT * timeline.kg_co2[service_id]


def oracle_move_cost(timeline: Timeline, service_id: str, migration_cost: float) -> float:
    """One move costs ``migration_cost`` x the service's mean energy per slot (kWh)."""
    return migration_cost * float(np.mean(timeline.energy_kwh[service_id]))


def placement_cost(costs: np.ndarray, sites: Sequence[int], initial: int, move_cost: float) -> float:
    """The oracle objective of a placement sequence (site indices per slot)."""
    total = 0.0
    previous = initial
    for slot, site in enumerate(sites):
        total += costs[slot, site] + (move_cost if site != previous else 0.0)
        previous = site
    return total


def plan_oracle(timeline: Timeline, migration_cost: float) -> OraclePlan:
    """Offline plan: per service, the site sequence of least grid energy plus migration cost.

    Objective per service: sum over slots of the grid kWh it would draw at its site
    (energy not covered by the area's surplus, i.e. maximise absorbed surplus),
    plus ``migration_cost`` x its mean energy per slot for every move (including a
    move away from its initial site at slot 0); grid kg CO2 breaks ties. Found
    exactly by dynamic programming over slots (a move costs the same from any
    site, so each slot costs O(sites)). Constraints per slot: SLO-feasible, site
    up, and capacity left by the services planned before it (services are planned
    in order, so across services the plan is greedy, not a joint optimum).
    Slots where no site is allowed keep the service where it is (nothing counted).
    Minimum dwell is not applied: the oracle is the bar.

    All services are first planned together ignoring each other's capacity use
    (one vectorised pass); only if that overfills a site somewhere are they
    planned again one by one, as described, which gives the same plans whenever
    capacity does not bind.
    """
    sites = timeline.sites
    index = {s: i for i, s in enumerate(sites)}
    n_slots, n_sites = timeline.slots, len(sites)
    services = list(timeline.services)
    cap_cpus = np.array([timeline.capacity[s][0] for s in sites], dtype=float)
    cap_mem = np.array([timeline.capacity[s][1] for s in sites], dtype=float)
    # Feasibility and down sites change only at events: number the distinct states once.
    state_of: dict[tuple[int, int], int] = {}
    states: list[tuple[Mapping[str, frozenset[str]], frozenset[str]]] = []
    slot_state = np.empty(n_slots, dtype=np.int64)
    for k in range(n_slots):
        key = (id(timeline.feasible[k]), id(timeline.down[k]))
        state = state_of.get(key)
        if state is None:
            state = state_of[key] = len(states)
            states.append((timeline.feasible[k], timeline.down[k]))
        slot_state[k] = state

    def allowed_of(service: Service) -> np.ndarray:
        masks = np.array([[s in feasible.get(service.id, ()) and s not in down for s in sites]
                          for feasible, down in states])
        allowed = masks[slot_state]
        allowed &= service.cpus <= cap_cpus + _CAPACITY_SLACK
        allowed &= service.memory <= cap_mem + _CAPACITY_SLACK
        return allowed

    allowed = np.stack([allowed_of(s) for s in services])                       # svc x slot x site
    base = np.stack([oracle_costs(timeline, s.id) for s in services])
    moves = np.array([oracle_move_cost(timeline, s.id, migration_cost) for s in services])
    initial = np.array([index[timeline.initial[s.id]] for s in services])
    paths = _dp_many(np.where(allowed, base, np.inf), allowed, initial, moves)    # svc x slot
    cpus = np.array([s.cpus for s in services])
    memory = np.array([s.memory for s in services])
    used_cpus = np.zeros((n_slots, n_sites))
    used_mem = np.zeros((n_slots, n_sites))
    slot_ix = np.arange(n_slots)
    for j in range(len(services)):
        np.add.at(used_cpus, (slot_ix, paths[j]), cpus[j])
        np.add.at(used_mem, (slot_ix, paths[j]), memory[j])
    if (used_cpus > cap_cpus + _CAPACITY_SLACK).any() or (used_mem > cap_mem + _CAPACITY_SLACK).any():
        used_cpus[:] = 0.0
        used_mem[:] = 0.0
        for j, service in enumerate(services):
            fits = allowed[j] & (used_cpus + service.cpus <= cap_cpus + _CAPACITY_SLACK)
            fits &= used_mem + service.memory <= cap_mem + _CAPACITY_SLACK
            # A path that still fits what the earlier services left is optimal on the smaller
            # allowed set too: re-plan only the services that would overfill a site.
            if not fits[slot_ix, paths[j]].all():
                paths[j] = _dp_one(np.where(fits, base[j], np.inf), fits, int(initial[j]), float(moves[j]))
            used_cpus[slot_ix, paths[j]] += service.cpus
            used_mem[slot_ix, paths[j]] += service.memory
            allowed[j] = fits
    costs = np.where(allowed, base, np.inf)
    return OraclePlan(timeline.slot_seconds, index,
                      {s.id: [sites[i] for i in paths[j].tolist()] for j, s in enumerate(services)},
                      {s.id: costs[j] for j, s in enumerate(services)},
                      {s.id: float(moves[j]) for j, s in enumerate(services)},
                      "minimising grid kWh plus migration cost")


def _dp_one(costs: np.ndarray, allowed: np.ndarray, initial: int, move: float) -> list[int]:
    """:func:`_dp_many` for one service, in plain Python: 3x faster than numpy on ten sites."""
    n_slots, n_sites = costs.shape
    stuck = (~allowed.any(axis=1)).tolist()
    total = [math.inf] * n_sites
    total[initial] = 0.0
    back: list[tuple[int, list[bool] | None]] = []
    for row, is_stuck in zip(costs.tolist(), stuck):
        if is_stuck:
            back.append((0, None))  # nowhere allowed: every path stays, nothing counted
            continue
        best = min(total)
        j = total.index(best)
        via = best + move
        back.append((j, [t <= via for t in total]))
        total = [(t if t <= via else via) + c for t, c in zip(total, row)]
    best = min(total)
    if not math.isfinite(best):
        return [initial] * n_slots
    site = total.index(best)
    path = [0] * n_slots
    for k in range(n_slots - 1, -1, -1):
        path[k] = site
        j, stay = back[k]
        if stay is not None and not stay[site]:
            site = j
    return path


def _dp_many(costs: np.ndarray, allowed: np.ndarray, initial: np.ndarray, move: np.ndarray) -> np.ndarray:
    """Least-cost site sequences for several independent services at once (Viterbi with a
    uniform move cost); ties: stay, then site order. Shapes: costs svc x slot x site."""
    n_svc, n_slots, n_sites = costs.shape
    stuck = ~allowed.any(axis=2)                                   # svc x slot
    rows = np.arange(n_svc)
    total = np.full((n_svc, n_sites), np.inf)
    total[rows, initial] = 0.0
    best_from = np.empty((n_slots, n_svc), dtype=np.int64)
    stayed = np.empty((n_slots, n_svc, n_sites), dtype=bool)
    zero = np.zeros(n_sites)
    any_stuck = bool(stuck.any())
    for k in range(n_slots):
        j = total.argmin(axis=1)
        via_move = total[rows, j] + move
        stay = total <= via_move[:, None]
        step = np.where(stay, total, via_move[:, None]) + costs[:, k]
        # Nowhere allowed: keep every path where it is, paying nothing extra.
        stuck_k = stuck[:, k]
        if any_stuck and stuck_k.any():
            stay[stuck_k] = True
            step[stuck_k] = total[stuck_k] + zero
        stayed[k] = stay
        best_from[k] = j
        total = step
    paths = np.empty((n_svc, n_slots), dtype=np.int64)
    for v in range(n_svc):
        end = int(np.argmin(total[v]))
        if not math.isfinite(total[v, end]):
            paths[v] = initial[v]
            continue
        stayed_v = stayed[:, v, :].tolist()
        from_v = best_from[:, v].tolist()
        path = [0] * n_slots
        site = end
        for k in range(n_slots - 1, -1, -1):
            path[k] = site
            if not stayed_v[k][site]:
                site = from_v[k]
        paths[v] = path
    return paths


# --------------------------------------------------------------------------- factory


def make_policy(policy_cfg: PolicyConfig, *, oracle_plan: OraclePlan | None = None) -> Policy:
    """The policy a scenario names; ``oracle`` needs the plan made by :func:`plan_oracle`.

    Raises:
        TwinError: unknown policy name, or oracle without a plan.
    """
    name = policy_cfg.name
    if name == "static":
        return StaticPolicy()
    if name == "greedy-surplus":
        return GreedyPolicy("surplus")
    if name == "greedy-carbon":
        return GreedyPolicy("carbon")
    if name == "hysteresis":
        return HysteresisPolicy(min_dwell_s=policy_cfg.min_dwell, hysteresis=policy_cfg.hysteresis,
                                migration_cost=policy_cfg.migration_cost)
    if name == "oracle":
        if oracle_plan is None:
            raise TwinError("the oracle policy needs the whole timeline: build it with plan_oracle() first")
        return OraclePolicy(oracle_plan)
    raise TwinError(f"unknown policy {name!r}; use one of {', '.join(POLICY_NAMES)}")
