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

from dataclasses import dataclass
from itertools import islice

import networkx as nx

from twin.errors import NoPathError, TwinError
from twin.model.schema import Span, Topology


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
        usable = nx.subgraph_view(self.graph, filter_edge=lambda a, b: span_key(a, b) not in self.down)
        try:
            paths = list(islice(nx.shortest_simple_paths(usable, src, dst, weight="delay_s"), k))
        except nx.NetworkXNoPath:
            cut = f" ({len(self.down)} span(s) cut)" if self.down else ""
            raise NoPathError(f"no fibre route between {src!r} and {dst!r}{cut}") from None
        return [self.route(p) for p in paths]

    def shortest_delay(self, src: str, dst: str) -> float:
        """One-way delay of the fastest route (ignoring wavelength occupancy)."""
        if src == dst:
            return 0.0
        return self.k_shortest_routes(src, dst, 1)[0].one_way_s
