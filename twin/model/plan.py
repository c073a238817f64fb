"""What the optical model would set up: lightpaths for site pairs, and SLO-feasible sites.

Pairs are allocated one after another on a single occupancy map, as the
controller does when it sets them up together, so a later pair can be blocked by
earlier ones. The order is stated in the output:

- ``file`` (default): sites in file order, pairs (i, j) with i before j;
- ``longest-first``: pairs by decreasing shortest-route delay (the usual
  heuristic to reduce blocking: long paths are the hardest to fit);
- ``given``: the order of ``--pairs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from twin.errors import NoPathError, TwinError
from twin.model.optics import OpticalNetwork
from twin.model.rwa import Blocked, Lightpath, Occupancy, assign
from twin.model.schema import Scenario, Topology

ORDERS = ("file", "longest-first")


@dataclass(frozen=True)
class PlanEntry:
    src: str
    dst: str
    lightpath: Lightpath | None
    blocked: str | None = None

    def to_dict(self) -> dict:
        if self.lightpath is None:
            return {"src": self.src, "dst": self.dst, "blocked": self.blocked}
        data = self.lightpath.to_dict()
        data.pop("id")
        return data


def parse_pairs(text: str, topology: Topology) -> list[tuple[str, str]]:
    """``"fuk:osa,tyo:hkd"`` -> pairs; unknown sites are a one-line error."""
    known = {s.id for s in topology.sites}
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise TwinError(f"--pairs: {item!r} is not a pair; write SRC:DST, e.g. fuk:osa")
        for site in (a, b):
            if site not in known:
                raise TwinError(f"--pairs: unknown site {site!r}; use one of {', '.join(sorted(known))}")
        if a == b:
            raise TwinError(f"--pairs: {item!r} joins a site to itself; name two different sites")
        pairs.append((a, b))
    if not pairs:
        raise TwinError("--pairs is empty; write SRC:DST[,SRC:DST...]")
    return pairs


def default_pairs(topology: Topology, order: str = "file") -> list[tuple[str, str]]:
    ids = [s.id for s in topology.sites]
    pairs = list(combinations(ids, 2))
    if order == "longest-first":
        network = OpticalNetwork(topology)

        def delay(pair: tuple[str, str]) -> float:
            try:
                return network.shortest_delay(*pair)
            except NoPathError:
                return float("inf")

        pairs.sort(key=delay, reverse=True)
    elif order != "file":
        raise TwinError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
    return pairs


def plan_lightpaths(topology: Topology, pairs: list[tuple[str, str]]) -> list[PlanEntry]:
    """Allocate one lightpath per pair, in order, on one occupancy map."""
    occupancy = Occupancy(OpticalNetwork(topology))
    entries = []
    for index, (src, dst) in enumerate(pairs):
        try:
            lightpath = assign(occupancy, src, dst, lightpath_id=f"lp{index}")
            entries.append(PlanEntry(src, dst, lightpath))
        except (Blocked, NoPathError) as err:
            entries.append(PlanEntry(src, dst, None, str(err)))
    return entries


# TCP as the clients use it: initial window 10 segments of 1448 bytes (RFC 6928),
# doubling each round trip (slow start). A kept-alive connection that sat idle
# longer than its retransmission timeout starts again from the initial window
# (RFC 5681 section 4.1, Linux's default), so the model counts a reused
# connection's request from that window too: an upper bound for busy connections.
TCP_MSS_BYTES = 1448
TCP_INITIAL_WINDOW = 10


def request_round_trips(request_bytes: float, *, keep_alive: bool = False) -> int:
    """Round trips one request costs before its answer is back.

    The slow-start rounds that carry the request (the last one's half trip out
    plus the answer's half trip back make one more), plus one for the handshake
    on a new connection: 8 KiB -> 2, 16 KiB -> 3, 200 KB -> 5. On a kept-alive
    connection there is no handshake: 8 KiB -> 1, 16 KiB -> 2.

    >>> [request_round_trips(n) for n in (100, 14480, 16384, 200_000)]
    [2, 2, 3, 5]
    >>> [request_round_trips(n, keep_alive=True) for n in (100, 14480, 16384, 200_000)]
    [1, 1, 2, 4]
    """
    segments = max(1, -(-int(request_bytes) // TCP_MSS_BYTES))
    rounds, window, sent = 0, TCP_INITIAL_WINDOW, 0
    while sent < segments:
        sent += window
        window *= 2
        rounds += 1
    return rounds if keep_alive else 1 + rounds


def service_round_trips(service) -> int:
    """:func:`request_round_trips` of one of ``service``'s requests, on its kind of connection."""
    return request_round_trips(service.request_size, keep_alive=service.connection == "keep-alive")


def expected_latency_s(rtt_s: float, service) -> float:
    """What a client of ``service`` waits at ``rtt_s`` round-trip time: round trips + service time."""
    return rtt_s * service_round_trips(service) + service.service_time


@dataclass(frozen=True)
class SloFeasibility:
    service: str
    region: str
    site: str
    rtt_ms: float
    expected_ms: float
    budget_ms: float

    @property
    def meets(self) -> bool:
        return self.expected_ms <= self.budget_ms


def slo_feasibility(scenario: Scenario, topology: Topology) -> list[SloFeasibility]:
    """For each service, user region and candidate site: network round trips + service time vs budget.

    The network part is the round trip over the fastest lightpath route, times the
    round trips a request costs on the service's kind of connection (:func:`service_round_trips`); the same
    site as the region costs no fibre. Measured latencies later correct this.
    """
    network = OpticalNetwork(topology)
    rows = []
    for service in scenario.services:
        for demand in service.demand:
            for site in topology.sites:
                try:
                    rtt = 2 * network.shortest_delay(demand.region, site.id)
                except NoPathError:
                    continue
                expected = expected_latency_s(rtt, service)
                rows.append(SloFeasibility(service.id, demand.region, site.id, rtt * 1e3,
                                           expected * 1e3, service.slo.latency * 1e3))
    return rows
