"""Controller state and its lifecycle operations, testable without a switch.

:class:`ControllerState` owns wavelength occupancy (the model layer's
:class:`~twin.model.rwa.Occupancy`, shared with ``twin plan``), the lightpaths
in creation order and the service VIPs. Every change goes through
:meth:`ControllerState._converge`: recompute the desired flows of every switch,
diff against what was installed, push. The switch side is a :class:`FlowPusher`
(the os-ken app in production, a fake in unit tests).

Errors carry an HTTP status so the API layer maps them without guessing.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from controllers.flowplan import FlowDiff, FlowSpec, desired_flows, diff
from twin.errors import NoPathError, TwinError
from twin.model.optics import OpticalNetwork, span_key
from twin.model.portmap import PortMap
from twin.model.rwa import Blocked, Lightpath, Occupancy, assign

LOG = logging.getLogger(__name__)


class ControllerError(TwinError):
    """An API-visible error; ``status`` is the HTTP status code."""

    status = 500


class BadRequest(ControllerError):
    status = 400


class NotFound(ControllerError):
    status = 404


class Conflict(ControllerError):
    status = 409


class Unavailable(ControllerError):
    """A switch refused or did not confirm a change; the state was rolled back."""

    status = 503


class PushError(TwinError):
    """Raised by a :class:`FlowPusher` when a switch rejects or does not confirm a bundle."""


class FlowPusher(Protocol):
    """What the state needs from the switches; each call is one atomic bundle on one switch.

    Both return False when the switch is not connected (it is reconciled when it
    connects) and raise :class:`PushError` when it rejects the change; they
    return only when the switch has committed the change.
    """

    def apply(self, site: str, change: FlowDiff) -> bool: ...

    def replace(self, site: str, flows: frozenset[FlowSpec]) -> bool: ...

    def settled(self) -> None:
        """Called once a change set is in on every switch it touched (optional)."""


@dataclass(frozen=True)
class RestorationPlan:
    """What a span cut does to the lightpaths: the new list, who moved, who could not."""

    lightpaths: list[Lightpath]                     # creation order kept; restored in place, blocked gone
    restored: list[tuple[Lightpath, Lightpath]]     # (before the cut, after)
    blocked: list[tuple[Lightpath, str]]            # (before the cut, why no route is left)

    @property
    def transit_sites(self) -> list[str]:
        """Transit sites of the new routes: their cross-connects go in before the ends switch over."""
        sites: list[str] = []
        for _, new in self.restored:
            sites += [s for s in new.route.sites[1:-1] if s not in sites]
        return sites


def plan_restoration(occupancy: Occupancy, lightpaths: list[Lightpath], span: tuple[str, str]) -> RestorationPlan:
    """Re-route every lightpath crossing the cut ``span`` with the model's RWA; updates ``occupancy``.

    The span must already be marked down in ``occupancy.network``. All hit
    lightpaths are released first (their light is gone; their wavelengths on
    the surviving spans are free for the new routes), then re-assigned in
    creation order under the same id and the same direction. A lightpath for
    which no route and wavelength is left is reported blocked and stays released.
    """
    span = span_key(*span)
    hit = [lp for lp in lightpaths if span in lp.route.spans]
    for lp in hit:
        occupancy.release(lp.id)
    new: dict[str, Lightpath] = {}
    blocked = []
    for lp in hit:
        try:
            new[lp.id] = assign(occupancy, lp.src, lp.dst, lightpath_id=lp.id)
        except (Blocked, NoPathError) as err:
            blocked.append((lp, str(err)))
    gone = {lp.id for lp, _ in blocked}
    return RestorationPlan([new.get(lp.id, lp) for lp in lightpaths if lp.id not in gone],
                           [(lp, new[lp.id]) for lp in hit if lp.id in new], blocked)


class ControllerState:
    """Lightpaths, occupancy and VIPs of one controller; thread-safe (one lock)."""

    def __init__(self, network: OpticalNetwork, portmap: PortMap, pusher: FlowPusher):
        missing = {s.id for s in network.topology.sites} - set(portmap.switches)
        if missing:
            raise TwinError(f"port map has no switch for site(s) {', '.join(sorted(missing))}; "
                            "was it written for another topology?")
        self.network = network
        self.portmap = portmap
        self.pusher = pusher
        self.occupancy = Occupancy(network)
        self.lightpaths: list[Lightpath] = []   # creation order: the oldest of a pair carries traffic
        self.vip_sites: dict[str, str] = {}            # VIP -> site new connections go to
        self.vip_draining: dict[str, set[str]] = {}    # VIP -> sites still serving their old connections
        # What each switch holds as far as we know; None = unknown (not connected
        # since start, or disconnected): such a switch is replaced whole on connect.
        self.installed: dict[str, frozenset[FlowSpec] | None] = {s: None for s in portmap.switches}
        self.connected: set[str] = set()
        self.lock = threading.RLock()
        self._ids = itertools.count(1)

    # -- queries ---------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.portmap.switches)

    def desired(self) -> dict[str, frozenset[FlowSpec]]:
        return desired_flows(self.portmap, self.network, self.lightpaths, self.vip_sites, self.vip_draining)

    def get_lightpath(self, lightpath_id: str) -> Lightpath:
        with self.lock:
            for lightpath in self.lightpaths:
                if lightpath.id == lightpath_id:
                    return lightpath
        raise NotFound(f"no lightpath {lightpath_id!r}; GET /lightpaths lists them")

    def list_lightpaths(self) -> list[Lightpath]:
        with self.lock:
            return list(self.lightpaths)

    def health(self) -> dict:
        with self.lock:
            expected = self.sites
            connected = [s for s in expected if s in self.connected]
            return {"status": "ok" if len(connected) == len(expected) else "degraded",
                    "switches_connected": len(connected), "switches_expected": len(expected),
                    "connected": connected, "missing": [s for s in expected if s not in self.connected]}

    # -- lightpaths ------------------------------------------------------------------------
    def create_lightpath(self, src: object, dst: object, *, route: object = None, wavelength: object = None,
                         lightpath_id: object = None) -> Lightpath:
        """Find a route and wavelength (RWA), install the cross-connects, return the lightpath.

        Raises:
            BadRequest: unknown site, same site twice, malformed route/wavelength/id.
            Conflict: blocked (no free wavelength, span cut, id taken) or not connected.
            Unavailable: a switch rejected the flows; nothing changed.
        """
        src, dst = self._site(src, "src"), self._site(dst, "dst")
        if src == dst:
            raise BadRequest(f"src and dst are both {src!r}; a lightpath joins two different sites")
        if route is not None:
            if not isinstance(route, list) or not all(isinstance(s, str) for s in route):
                raise BadRequest("route must be a list of site ids, e.g. [\"a\", \"b\", \"c\"]")
            for site in route:
                self._site(site, "route")
            try:
                self.network.route(route)
            except TwinError as err:
                raise BadRequest(str(err)) from None
        if wavelength is not None and (isinstance(wavelength, bool) or not isinstance(wavelength, int)
                                       or wavelength < 0):
            raise BadRequest("wavelength must be a non-negative integer (0-based index)")
        if lightpath_id is not None and (not isinstance(lightpath_id, str) or not lightpath_id
                                         or len(lightpath_id) > 64 or "/" in lightpath_id):
            raise BadRequest("id must be a non-empty string of at most 64 characters without '/'")
        with self.lock:
            if lightpath_id is None:
                lightpath_id = self._next_id()
            try:
                lightpath = assign(self.occupancy, src, dst, lightpath_id=lightpath_id,
                                   route=route, wavelength=wavelength)
            except (Blocked, NoPathError) as err:
                raise Conflict(str(err)) from None
            self.lightpaths.append(lightpath)
            try:
                # Cross-connects first, then the ends that start sending into them.
                self._converge(first=lightpath.route.sites[1:-1])
            except PushError as err:
                self.lightpaths.remove(lightpath)
                self.occupancy.release(lightpath.id)
                self._converge_best_effort()
                raise Unavailable(f"lightpath {lightpath.id} not set up: {err}") from None
            LOG.info("lightpath %s up: %s on wavelength %d", lightpath.id, "-".join(lightpath.route.sites),
                     lightpath.wavelength)
            return lightpath

    def delete_lightpath(self, lightpath_id: str) -> Lightpath:
        """Remove a lightpath's flows and free its wavelength.

        Raises:
            NotFound: no such lightpath.
            Unavailable: a switch rejected the change; the lightpath stays.
        """
        with self.lock:
            lightpath = self.get_lightpath(lightpath_id)
            position = self.lightpaths.index(lightpath)
            self.lightpaths.remove(lightpath)
            self.occupancy.release(lightpath_id)
            try:
                # Ends stop sending first; the cross-connects go last.
                self._converge(last=lightpath.route.sites[1:-1])
            except PushError as err:
                self.occupancy.allocate(lightpath)
                self.lightpaths.insert(position, lightpath)
                self._converge_best_effort()
                raise Unavailable(f"lightpath {lightpath_id} not deleted: {err}") from None
            LOG.info("lightpath %s down", lightpath_id)
            return lightpath

    # -- services --------------------------------------------------------------------------
    def set_service_site(self, vip: object, site: object, *, force: bool = False) -> dict:
        """Point a service VIP's NEW connections at ``site``, make-before-break.

        Connections open now keep going to the site they started at: the old
        site becomes "draining" and keeps its rules until :meth:`service_drained`
        says it has finished (connection affinity, see
        :func:`controllers.flowplan.vip_flows`). The new site's rules go in
        first, then the other sites'; no rule is deleted before every new one is
        in. Moving is refused while a site that reaches the service now would
        lose it (no lightpath to the new site): set those up first, or pass
        ``force``.

        Raises:
            BadRequest: not a VIP (10.3.0.0/24) or unknown site.
            Conflict: the move would cut sites off (listed).
            Unavailable: a switch rejected the change; nothing changed.
        """
        vip = self._vip(vip)
        site = self._site(site, "site")
        with self.lock:
            old = self.vip_sites.get(vip)
            if old == site:
                return self._service(vip)
            if old is not None and not force:
                lost = sorted(set(self._reach(vip)) - set(self._reach(vip, site)))
                if lost:
                    raise Conflict(f"moving {vip} from {old} to {site} would cut off site(s) {', '.join(lost)}: "
                                   f"no lightpath to {site}; create those lightpaths first")
            draining_before = set(self.vip_draining.get(vip, ()))
            self.vip_sites[vip] = site
            draining = (draining_before | ({old} if old else set())) - {site}
            self._set_draining(vip, draining)
            try:
                self._converge(first=[site], last=[old] if old else ())
            except PushError as err:
                if old is None:
                    del self.vip_sites[vip]
                else:
                    self.vip_sites[vip] = old
                self._set_draining(vip, draining_before)
                self._converge_best_effort()
                raise Unavailable(f"service {vip} not moved: {err}") from None
            LOG.info("service %s: new connections to %s (was %s); draining %s", vip, site, old,
                     ", ".join(sorted(draining)) or "none")
            return self._service(vip)

    def service_drained(self, vip: object, site: object) -> dict:
        """The service at a draining ``site`` has no connections left: remove its rules.

        Connections still marked for it (if any) then go to the hosting site.

        Raises:
            BadRequest: not a VIP or unknown site.
            NotFound: no such service.
            Conflict: ``site`` is not draining (e.g. it is where new connections go).
            Unavailable: a switch rejected the change; the site stays draining.
        """
        vip = self._vip(vip)
        site = self._site(site, "site")
        with self.lock:
            if vip not in self.vip_sites:
                raise NotFound(f"no service VIP {vip}; GET /services lists them")
            draining = set(self.vip_draining.get(vip, ()))
            if site not in draining:
                what = "hosts it (new connections go there)" if site == self.vip_sites[vip] else "is not draining"
                raise Conflict(f"site {site} {what} for {vip}; draining: {', '.join(sorted(draining)) or 'none'}")
            self._set_draining(vip, draining - {site})
            try:
                self._converge(last=[site])
            except PushError as err:
                self._set_draining(vip, draining)
                self._converge_best_effort()
                raise Unavailable(f"service {vip} at {site} not released: {err}") from None
            LOG.info("service %s: %s drained", vip, site)
            return self._service(vip)

    def _set_draining(self, vip: str, sites: set[str]) -> None:
        if sites:
            self.vip_draining[vip] = set(sites)
        else:
            self.vip_draining.pop(vip, None)

    def delete_service(self, vip: object) -> None:
        vip = self._vip(vip)
        with self.lock:
            if vip not in self.vip_sites:
                raise NotFound(f"no service VIP {vip}; GET /services lists them")
            site = self.vip_sites.pop(vip)
            draining = self.vip_draining.pop(vip, set())
            try:
                self._converge(last=[site, *sorted(draining)])
            except PushError as err:
                self.vip_sites[vip] = site
                self._set_draining(vip, draining)
                self._converge_best_effort()
                raise Unavailable(f"service {vip} not removed: {err}") from None

    def services(self) -> dict[str, dict]:
        with self.lock:
            return {vip: self._service(vip) for vip in sorted(self.vip_sites, key=ipaddress.ip_address)}

    def _service(self, vip: str) -> dict:
        return {"vip": vip, "site": self.vip_sites[vip], "draining": sorted(self.vip_draining.get(vip, ())),
                "reachable_from": self._reach(vip)}

    def _reach(self, vip: str, site: str | None = None) -> list[str]:
        """Sites whose users reach the VIP when it is hosted at ``site`` (default: where it is now)."""
        host = site or self.vip_sites.get(vip)
        if host is None:
            return []
        ends = {frozenset((lp.src, lp.dst)) for lp in self.lightpaths}
        return [s for s in self.sites if s == host or frozenset((s, host)) in ends]

    # -- fibre cuts --------------------------------------------------------------------------
    def cut_span(self, a: object, b: object) -> dict:
        """A span is cut: mark it down and restore every lightpath that crossed it, make-before-break.

        New routes come from the model's RWA (:func:`plan_restoration`); their
        cross-connects go in first, then the ends switch over, then the dead
        rules go. The packet network re-routes around the span in the same
        change. Per lightpath the answer gives ``restored_ms`` (from this call
        to every switch having committed) or ``blocked`` with the reason.

        Raises:
            BadRequest: unknown site. NotFound: no such span. Conflict: already cut.
            Unavailable: a switch rejected the change; the span stays marked cut,
                the lightpaths keep their old (dead) routes.
        """
        t0 = time.monotonic()
        span = self._span(a, b)
        with self.lock:
            if span in self.network.down:
                raise Conflict(f"span {span[0]}-{span[1]} is already cut; POST /spans/{span[0]}/{span[1]}/repair first")
            self.network.set_span_down(*span)
            before = (list(self.lightpaths), dict(self.occupancy.holder), dict(self.occupancy.lightpaths))
            plan = plan_restoration(self.occupancy, self.lightpaths, span)
            self.lightpaths = plan.lightpaths
            try:
                self._converge(first=plan.transit_sites)
            except PushError as err:
                self.lightpaths = before[0]
                self.occupancy.holder, self.occupancy.lightpaths = before[1], before[2]
                self._converge_best_effort()
                raise Unavailable(f"span {span[0]}-{span[1]} marked cut but lightpaths not restored: {err}") from None
            done_ms = round((time.monotonic() - t0) * 1e3, 3)
            report = [{"id": new.id, "old_route": list(old.route.sites), "route": list(new.route.sites),
                       "wavelength": new.wavelength, "one_way_ms": round(new.route.one_way_s * 1e3, 4),
                       "restored_ms": done_ms} for old, new in plan.restored]
            report += [{"id": old.id, "old_route": list(old.route.sites), "blocked": why}
                       for old, why in plan.blocked]
            LOG.warning("span %s-%s cut: %d lightpath(s) restored in %.1f ms, %d blocked", *span,
                        len(plan.restored), done_ms, len(plan.blocked))
            return {"span": f"{span[0]}-{span[1]}", "down": True, "lightpaths": report, "converge_ms": done_ms}

    def repair_span(self, a: object, b: object) -> dict:
        """The span works again: new lightpaths and the packet network may use it.

        Restored lightpaths stay on their new routes (non-revertive, so a repair
        never interrupts traffic).

        Raises:
            BadRequest: unknown site. NotFound: no such span. Conflict: not cut.
            Unavailable: a switch rejected the change; the span stays down.
        """
        span = self._span(a, b)
        with self.lock:
            if span not in self.network.down:
                raise Conflict(f"span {span[0]}-{span[1]} is not cut")
            self.network.set_span_down(*span, False)
            try:
                self._converge()
            except PushError as err:
                self.network.set_span_down(*span)
                self._converge_best_effort()
                raise Unavailable(f"span {span[0]}-{span[1]} not repaired: {err}") from None
            LOG.info("span %s-%s repaired", *span)
            return {"span": f"{span[0]}-{span[1]}", "down": False}

    def _span(self, a: object, b: object) -> tuple[str, str]:
        a, b = self._site(a, "a"), self._site(b, "b")
        try:
            self.network.span(a, b)
        except TwinError:
            raise NotFound(f"no span between {a} and {b}; GET /topology lists the spans") from None
        return span_key(a, b)

    # -- switches --------------------------------------------------------------------------
    def switch_up(self, site: str) -> None:
        """A switch connected (or reconnected, or the controller restarted): replace its flows whole."""
        with self.lock:
            self.connected.add(site)
            flows = self.desired()[site]
            if self.pusher.replace(site, flows):
                self.installed[site] = flows

    def switch_down(self, site: str) -> None:
        with self.lock:
            self.connected.discard(site)
            self.installed[site] = None

    # -- the one path by which flows change ------------------------------------------------
    def _converge(self, first: Iterable[str] = (), last: Iterable[str] = ()) -> None:
        """Bring every known switch to the desired flows, make-before-break.

        Phase 1 pushes every switch's adds and modifies, phase 2 every switch's
        deletes, so across the network no old rule goes before all new ones are
        in. Within a phase switches go in the order first, the rest, last.
        """
        desired = self.desired()
        first, last = list(first), [s for s in last if s]
        order = first + [s for s in self.sites if s not in first and s not in last] + \
            [s for s in last if s not in first]
        changes = {}
        for site in order:
            installed = self.installed[site]
            if installed is not None:
                change = diff(installed, desired[site])
                if change:
                    changes[site] = change
        for site in order:  # phase 1: make
            change = changes.get(site)
            if change and (change.adds or change.modifies):
                self._push(site, FlowDiff(change.adds, change.modifies, ()), desired[site], final=not change.deletes)
        for site in order:  # phase 2: break
            change = changes.get(site)
            if change and change.deletes:
                self._push(site, FlowDiff((), (), change.deletes), desired[site], final=True)
        settled = getattr(self.pusher, "settled", None)
        if changes and settled is not None:
            settled()

    def _push(self, site: str, change: FlowDiff, desired: frozenset[FlowSpec], *, final: bool) -> None:
        if not self.pusher.apply(site, change):
            self.installed[site] = None   # it will be replaced whole when it connects
            return
        if final:
            self.installed[site] = desired
        else:
            replaced = {f.key for f in change.modifies}
            kept = {f for f in self.installed[site] or () if f.key not in replaced}
            self.installed[site] = frozenset(kept | set(change.adds) | set(change.modifies))

    def _converge_best_effort(self) -> None:
        """After a failed push and a rolled-back state: take back what other switches took."""
        try:
            self._converge()
        except PushError as err:
            # Bundles are atomic, so the failing switch kept its previous flows and
            # self.installed still describes it; the next change retries.
            LOG.error("could not restore flows after a failed change: %s", err)

    # -- validation helpers ----------------------------------------------------------------
    def _site(self, site: object, what: str) -> str:
        if not isinstance(site, str) or site not in self.portmap.switches:
            raise BadRequest(f"{what}: unknown site {site!r}; use one of {', '.join(self.sites)}")
        return site

    @staticmethod
    def _vip(vip: object) -> str:
        try:
            address = ipaddress.IPv4Address(vip)  # type: ignore[arg-type]
        except (ipaddress.AddressValueError, ValueError, TypeError):
            raise BadRequest(f"{vip!r} is not an IPv4 address; service VIPs are 10.3.0.k") from None
        if address not in ipaddress.ip_network("10.3.0.0/24") or str(address) in ("10.3.0.0", "10.3.0.255"):
            raise BadRequest(f"{vip} is not a service VIP; use 10.3.0.1 .. 10.3.0.250 (see twin.model.addressing)")
        return str(address)

    def _next_id(self) -> str:
        while True:
            candidate = f"lp{next(self._ids)}"
            if candidate not in self.occupancy.lightpaths:
                return candidate
