"""Routing and wavelength assignment (RWA) with wavelength continuity.

Without wavelength converters a lightpath keeps one wavelength on every span it
crosses, and two lightpaths sharing a span need different wavelengths. The
baseline used here is the textbook one: try the k shortest routes by delay in
order, and on each the lowest-numbered wavelength free on all of its spans
(first fit). Allocation and release are explicit on an :class:`Occupancy`, so
the planner (``twin plan``) and the controller share this exact code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twin.errors import NoPathError, TwinError
from twin.model.optics import OpticalNetwork, Route, span_key


class Blocked(TwinError):
    """A lightpath request cannot be served; the message says why."""


@dataclass(frozen=True)
class Lightpath:
    """An end-to-end wavelength path: route (site ids) and wavelength index (0-based)."""

    id: str
    route: Route
    wavelength: int

    @property
    def src(self) -> str:
        return self.route.sites[0]

    @property
    def dst(self) -> str:
        return self.route.sites[-1]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "src": self.src,
            "dst": self.dst,
            "route": list(self.route.sites),
            "wavelength": self.wavelength,
            "length_km": round(self.route.length_km, 3),
            "one_way_ms": round(self.route.one_way_s * 1e3, 4),
            "rtt_ms": round(2 * self.route.one_way_s * 1e3, 4),
        }


@dataclass
class Occupancy:
    """Which lightpath holds each (span, wavelength); the single source of truth for RWA."""

    network: OpticalNetwork
    holder: dict[tuple[tuple[str, str], int], str] = field(default_factory=dict)
    lightpaths: dict[str, Lightpath] = field(default_factory=dict)

    def wavelength_count(self, span: tuple[str, str]) -> int:
        return self.network.span(*span).wavelengths

    def free_on_route(self, route: Route) -> list[int]:
        """Wavelengths free on every span of the route (continuity), ascending."""
        common: set[int] | None = None
        for span in route.spans:
            free = {w for w in range(self.wavelength_count(span)) if (span, w) not in self.holder}
            common = free if common is None else common & free
        return sorted(common or ())

    def allocate(self, lightpath: Lightpath) -> None:
        """Reserve the lightpath's wavelength on all its spans, or change nothing and raise."""
        if lightpath.id in self.lightpaths:
            raise Blocked(f"lightpath id {lightpath.id!r} already exists; delete it first or pick another id")
        for span in lightpath.route.spans:
            if span in self.network.down:
                raise Blocked(f"span {span[0]}-{span[1]} is cut")
            if not 0 <= lightpath.wavelength < self.wavelength_count(span):
                raise Blocked(f"wavelength {lightpath.wavelength} does not exist on span {span[0]}-{span[1]} "
                              f"(it has {self.wavelength_count(span)})")
            holder = self.holder.get((span, lightpath.wavelength))
            if holder is not None:
                raise Blocked(f"wavelength {lightpath.wavelength} on span {span[0]}-{span[1]} "
                              f"is held by lightpath {holder}")
        for span in lightpath.route.spans:
            self.holder[(span, lightpath.wavelength)] = lightpath.id
        self.lightpaths[lightpath.id] = lightpath

    def release(self, lightpath_id: str) -> Lightpath:
        """Free a lightpath's wavelengths; raises :class:`TwinError` for an unknown id."""
        try:
            lightpath = self.lightpaths.pop(lightpath_id)
        except KeyError:
            raise TwinError(f"no lightpath {lightpath_id!r}") from None
        for span in lightpath.route.spans:
            del self.holder[(span, lightpath.wavelength)]
        return lightpath

    def used(self, span: tuple[str, str]) -> dict[int, str]:
        """Wavelength -> lightpath id on one span."""
        span = span_key(*span)
        return {w: lp for (s, w), lp in self.holder.items() if s == span}

    def table(self) -> dict[str, list[str | None]]:
        """Per span ``a-b``: the holder of each wavelength (None = free)."""
        result = {}
        for span in sorted(self.network.spans()):
            used = self.used(span)
            result[f"{span[0]}-{span[1]}"] = [used.get(w) for w in range(self.wavelength_count(span))]
        return result


def assign(occupancy: Occupancy, src: str, dst: str, *, lightpath_id: str,
           route: list[str] | None = None, wavelength: int | None = None) -> Lightpath:
    """Find and allocate a lightpath from ``src`` to ``dst`` (first fit on k shortest routes).

    ``route`` and ``wavelength`` pin the choice when given.

    Raises:
        Blocked: no candidate route has a common free wavelength (the reason lists each route).
        NoPathError: the sites are unknown or not connected.
    """
    network = occupancy.network
    if route is not None:
        if route[0] != src or route[-1] != dst:
            raise Blocked(f"route {'-'.join(route)} does not run from {src} to {dst}")
        candidates = [network.route(route)]
    else:
        candidates = network.k_shortest_routes(src, dst)
    reasons = []
    for candidate in candidates:
        cut = [s for s in candidate.spans if s in network.down]
        if cut:
            reasons.append(f"{'-'.join(candidate.sites)}: span {cut[0][0]}-{cut[0][1]} is cut")
            continue
        free = occupancy.free_on_route(candidate)
        if wavelength is not None:
            if wavelength in free:
                chosen = wavelength
            else:
                reasons.append(f"{'-'.join(candidate.sites)}: wavelength {wavelength} not free on every span")
                continue
        elif free:
            chosen = free[0]
        else:
            full = [f"{a}-{b}" for a, b in candidate.spans if not occupancy.free_on_route(network.route([a, b]))]
            why = f"spans {', '.join(full)} full" if full else "no wavelength free on all spans (continuity)"
            reasons.append(f"{'-'.join(candidate.sites)}: {why}")
            continue
        lightpath = Lightpath(lightpath_id, candidate, chosen)
        occupancy.allocate(lightpath)
        return lightpath
    raise Blocked(f"no lightpath {src}->{dst}: " + "; ".join(reasons))


__all__ = ["Blocked", "Lightpath", "NoPathError", "Occupancy", "assign"]
