"""The optical layer as a graph: sites are ROADMs, spans are fibre with W wavelengths.

Delay model (one way), used identically by the emulation so model and packets agree:

- a span's delay is ``length_km x propagation + node_delay`` (the node delay is
  that of the ROADM the light enters at the far end);
- a lightpath's delay is the sum of the delays of its spans.

>>> from twin.model.schema import Topology
>>> topo = Topology.model_validate({
...     "name": "t", "packet_network": {"router_delay": "50us", "capacity": "1Gbit"},
...     "apn": {"node_delay": "10us"},
...     "sites": [{"id": s, "name": s, "area": "x", "lat": 0, "lon": 0,
...                "compute": {"cpus": 1, "memory": "1GiB"}} for s in ("a", "b")],
...     "spans": [{"ends": ["a", "b"], "length": "100km", "wavelengths": 4, "rate": "100Mbit"}]})
>>> round(OpticalNetwork(topo).span_delay("a", "b") * 1e6, 3)   # 100 km x 4.9 us + 10 us
500.0
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import networkx as nx

from twin.errors import NoPathError, TwinError
from twin.model.schema import Span, Topology


_INF = float("inf")


def span_key(a: str, b: str) -> tuple[str, str]:
    """Canonical (undirected) key of the span between two sites."""
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class Route:
    """A path through the fibre graph with its physical length and one-way delay."""

    sites: tuple[str, ...]
    length_km: float
    one_way_s: float

    @property
    def spans(self) -> list[tuple[str, str]]:
        return [span_key(a, b) for a, b in zip(self.sites, self.sites[1:])]

    @property
    def hops(self) -> int:
        return len(self.sites) - 1


class OpticalNetwork:
    """Fibre graph of a topology; answers delays and k shortest routes by delay."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.graph = nx.Graph()
        apn = topology.apn
        for site in topology.sites:
            self.graph.add_node(site.id, site=site)
        for span in topology.spans:
            a, b = span.ends
            delay = span.length * apn.propagation + apn.node_delay
            self.graph.add_edge(a, b, span=span, length_km=span.length, delay_s=delay)
        self.down: set[tuple[str, str]] = set()
        # Plain adjacency for the route search: networkx's generic k-shortest-paths on a
        # filtered view cost ~30 ms a pair, too slow for all pairs of a 100-site network.
        self._adjacency: dict[str, list[tuple[str, float, tuple[str, str]]]] = {
            node: [(nbr, data["delay_s"], span_key(node, nbr)) for nbr, data in self.graph.adj[node].items()]
            for node in self.graph
        }
        self._routes: dict[tuple[str, str, int, frozenset], list[Route]] = {}

    # -- spans ---------------------------------------------------------------------------
    def span(self, a: str, b: str) -> Span:
        try:
            return self.graph.edges[a, b]["span"]
        except KeyError:
            raise TwinError(f"no span between {a!r} and {b!r}; check the topology's spans") from None

    def span_delay(self, a: str, b: str) -> float:
        """One-way delay of a span in seconds; an edge without a delay is an error, never weight 1."""
        data = self.graph.edges.get((a, b))
        if data is None:
            raise TwinError(f"no span between {a!r} and {b!r}; check the topology's spans")
        if data.get("delay_s") is None:
            raise TwinError(f"span {a}-{b} has no delay; give it a length")
        return data["delay_s"]

    def spans(self) -> list[tuple[str, str]]:
        return [span_key(a, b) for a, b in self.graph.edges]

    def set_span_down(self, a: str, b: str, down: bool = True) -> None:
        """Mark a span cut (routes avoid it) or repaired."""
        self.span(a, b)
        (self.down.add if down else self.down.discard)(span_key(a, b))
        self._routes.clear()  # cached routes may cross the span (or now could)

    # -- routes --------------------------------------------------------------------------
    def route(self, sites: list[str] | tuple[str, ...]) -> Route:
        """A route through the given sites; every consecutive pair must share a span."""
        if len(sites) < 2:
            raise TwinError("a route needs at least two sites")
        if len(set(sites)) != len(sites):
            raise TwinError(f"route {'-'.join(sites)} visits a site twice")
        hops = list(zip(sites, sites[1:]))
        delay = sum(self.span_delay(a, b) for a, b in hops)  # raises on a missing span
        length = sum(self.graph.edges[a, b]["length_km"] for a, b in hops)
        return Route(tuple(sites), length, delay)

    def k_shortest_routes(self, src: str, dst: str, k: int | None = None) -> list[Route]:
        """Up to k loop-free routes in increasing one-way delay, avoiding cut spans.

        Raises:
            NoPathError: the sites are unknown or not connected.
        """
        for site in (src, dst):
            if site not in self.graph:
                raise NoPathError(f"unknown site {site!r}; use one of {', '.join(sorted(self.graph))}")
        if src == dst:
            raise NoPathError(f"a lightpath needs two different sites, got {src!r} twice")
        k = k or self.topology.apn.k_paths
        # The cut set is part of the key: callers may edit self.down directly.
        key = (src, dst, k, frozenset(self.down))
        if key not in self._routes:
            paths = self._yen(src, dst, k)
            if not paths:
                cut = f" ({len(self.down)} span(s) cut)" if self.down else ""
                raise NoPathError(f"no fibre route between {src!r} and {dst!r}{cut}")
            self._routes[key] = [self.route(p) for p in paths]
        return list(self._routes[key])

    def _cost(self, path: tuple[str, ...]) -> float:
        # Summed hop by hop in path order, exactly as route() does, so ties compare equal.
        return sum(self.graph.edges[a, b]["delay_s"] for a, b in zip(path, path[1:]))

    def _dijkstra(self, src: str, dst: str, banned_nodes: set[str],
                  banned_spans: set[tuple[str, str]]) -> tuple[str, ...] | None:
        """Fastest path avoiding the given sites and spans (None if there is none)."""
        dist = {src: 0.0}
        previous: dict[str, str] = {}
        heap: list[tuple[float, str]] = [(0.0, src)]
        done = set(banned_nodes)  # a banned site is treated as already settled: never entered
        adjacency = self._adjacency
        while heap:
            d, node = heapq.heappop(heap)
            if node in done:
                continue
            if node == dst:
                path = [dst]
                while path[-1] != src:
                    path.append(previous[path[-1]])
                return tuple(reversed(path))
            done.add(node)
            for nbr, delay, key in adjacency[node]:
                if nbr in done or (banned_spans and key in banned_spans):
                    continue
                nd = d + delay
                if nd < dist.get(nbr, _INF):
                    dist[nbr] = nd
                    previous[nbr] = node
                    heapq.heappush(heap, (nd, nbr))
        return None

    def _yen(self, src: str, dst: str, k: int) -> list[tuple[str, ...]]:
        """Yen's k shortest loop-free paths by delay (equal-delay candidates: fewer hops, then ids)."""
        first = self._dijkstra(src, dst, set(), self.down)
        if first is None:
            return []
        found = [first]
        candidates: list[tuple[float, int, tuple[str, ...]]] = []
        seen = {first}
        while len(found) < k:
            last = found[-1]
            for i in range(len(last) - 1):
                root = last[: i + 1]
                banned_spans = set(self.down)
                for path in found:
                    if path[: i + 1] == root:
                        banned_spans.add(span_key(path[i], path[i + 1]))
                spur = self._dijkstra(last[i], dst, set(root[:-1]), banned_spans)
                if spur is None:
                    continue
                path = root[:-1] + spur
                if path not in seen:
                    seen.add(path)
                    # Delays equal to the picosecond are a tie (float sums differ in the last
                    # bit by summation order): prefer fewer hops, then site ids, so the choice
                    # is stable rather than an artefact of rounding.
                    heapq.heappush(candidates, (round(self._cost(path), 12), len(path), path))
            if not candidates:
                break
            found.append(heapq.heappop(candidates)[2])
        return found

    def shortest_delay(self, src: str, dst: str) -> float:
        """One-way delay of the fastest route (ignoring wavelength occupancy)."""
        if src == dst:
            return 0.0
        return self.k_shortest_routes(src, dst, 1)[0].one_way_s
