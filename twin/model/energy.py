"""Energy and carbon of the twin's services, attributed to absorbed surplus first.

Server power per CPU core is linear in utilisation (the usual SPECpower-style
model), and the facility draws PUE times that::

    power_kw = cpus x (idle_w + (peak_w - idle_w) x utilisation) x pue / 1000
    utilisation = min(1, sum(demand rates) x service_time / cpus)

An interval's energy goes first to the area's surplus (curtailed solar and wind
that the data centre absorbs instead of it being thrown away), up to the surplus
energy of that interval, and the rest to the grid mix::

    energy_kwh  = power_kw x seconds / 3600
    surplus_kwh = min(energy_kwh, surplus_mw x 1000 x seconds / 3600)
    kg_co2      = (surplus_kwh x surplus_g + (energy_kwh - surplus_kwh) x grid_g) / 1000

where ``surplus_g`` is the lifecycle intensity of the curtailed mix (absorbing
curtailed solar is not free of emissions: the panels were built) and ``grid_g``
the slot's production-based lifecycle intensity (see :mod:`twin.model.power`).

>>> from twin.model.power import SiteSignal
>>> from twin.model.schema import Site
>>> site = Site.model_validate({"id": "a", "name": "A", "area": "kyushu", "lat": 0, "lon": 0, "pue": 1.5,
...     "compute": {"cpus": 4, "memory": "1GiB"}, "server_idle": "100W", "server_peak": "300W"})
>>> service_power_kw(site, 2, 0.5)           # 2 x (100 + 200 x 0.5) W x 1.5
0.6
>>> account_interval(site, 0.6, 3600, SiteSignal(0.0, 0.2, 500.0, None))
EnergyTotals(kwh=0.6, surplus_kwh=0.0, kg_co2=0.3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from twin.errors import TwinError
from twin.model.power import SLOT_SECONDS, SignalSeries, SiteSignal
from twin.model.schema import Scenario, Service, Site, Topology


@dataclass(frozen=True)
class EnergyTotals:
    """Facility energy (kWh), the part of it from absorbed surplus (kWh), and lifecycle kg CO2-eq."""

    kwh: float = 0.0
    surplus_kwh: float = 0.0
    kg_co2: float = 0.0

    def __add__(self, other: EnergyTotals) -> EnergyTotals:
        if not isinstance(other, EnergyTotals):
            return NotImplemented
        return EnergyTotals(self.kwh + other.kwh, self.surplus_kwh + other.surplus_kwh,
                            self.kg_co2 + other.kg_co2)

    def scaled(self, factor: float) -> EnergyTotals:
        return EnergyTotals(self.kwh * factor, self.surplus_kwh * factor, self.kg_co2 * factor)

    @property
    def surplus_share(self) -> float:
        """Share of the energy that came from absorbed surplus (0 when no energy)."""
        return self.surplus_kwh / self.kwh if self.kwh > 0 else 0.0


def utilisation(service: Service) -> float:
    """Mean CPU utilisation of a service's cores: offered load / cores, at most 1.

    >>> from twin.model.schema import Service
    >>> svc = Service.model_validate({"id": "s", "model": "echo", "slo": {"latency": "1s"},
    ...     "request_size": "1KiB", "response_size": "1KiB", "service_time": "100ms", "cpus": 2,
    ...     "initial_site": "a", "demand": [{"region": "a", "rate": "5/s"}, {"region": "b", "rate": "3/s"}]})
    >>> utilisation(svc)                          # 8/s x 0.1 s / 2 cores
    0.4
    """
    offered = sum(d.rate for d in service.demand) * service.service_time
    return min(1.0, offered / service.cpus)


def service_power_kw(site: Site, cpus: float, utilisation: float) -> float:
    """Facility power (kW) of ``cpus`` cores at ``site`` running at ``utilisation`` (0..1).

    Raises:
        TwinError: negative cores or a utilisation outside 0..1.
    """
    if cpus < 0 or not 0.0 <= utilisation <= 1.0:
        raise TwinError(f"site {site.id}: cpus={cpus}, utilisation={utilisation} out of range; "
                        f"use cpus >= 0 and utilisation in 0..1")
    per_core_w = site.server_idle + (site.server_peak - site.server_idle) * utilisation
    return cpus * per_core_w * site.pue / 1000.0


def account_interval(site: Site, power_kw: float, seconds: float, signal: SiteSignal) -> EnergyTotals:
    """Energy and carbon of ``power_kw`` drawn at ``site`` for ``seconds`` under ``signal``.

    Call it once per site and interval with the site's total power: the surplus
    cap applies to what is passed in.

    Raises:
        TwinError: negative power or duration.
    """
    if power_kw < 0 or seconds < 0 or math.isnan(power_kw) or math.isnan(seconds):
        raise TwinError(f"site {site.id}: power {power_kw} kW for {seconds} s; both must be >= 0")
    kwh = power_kw * seconds / 3600.0
    surplus_cap_kwh = max(0.0, signal.surplus_mw) * 1000.0 * seconds / 3600.0
    surplus_kwh = min(kwh, surplus_cap_kwh)
    grams = surplus_kwh * signal.surplus_carbon_g_per_kwh + (kwh - surplus_kwh) * signal.carbon_g_per_kwh
    return EnergyTotals(kwh=kwh, surplus_kwh=surplus_kwh, kg_co2=grams / 1000.0)


Placement = Mapping[str, "str | Iterable[str] | None"]


def _sites_of(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def account_services(placements_by_slot: Sequence[Placement], scenario: Scenario, topology: Topology,
                     signals: Mapping[str, SignalSeries]) -> dict[str, EnergyTotals]:
    """Per-service energy over a run; ``placements_by_slot[i]`` maps service id -> site during slot i.

    Slot i covers scenario time [i x 1800 s, (i+1) x 1800 s), the last one cut at
    the scenario's duration. A value may be None (not running) or several sites
    (instances running side by side, e.g. during a make-before-break migration;
    each draws the service's full power). Sites draw power only for the services
    placed on them (idle machines are assumed switched off or serving others).
    Services sharing a site share its area's surplus; sites sharing an area
    (sdj and kij in Tohoku) share the area's surplus too, in site order.

    Raises:
        TwinError: more slots than the scenario's duration, an unknown service or
            site, or a site without signals.
    """
    services = {s.id: s for s in scenario.services}
    sites = {s.id: s for s in topology.sites}
    n_slots = max(1, math.ceil(scenario.duration / SLOT_SECONDS - 1e-9))
    if len(placements_by_slot) > n_slots:
        raise TwinError(f"{len(placements_by_slot)} placement slots for a {scenario.duration / 3600:g} h "
                        f"scenario ({n_slots} slots); pass one placement per 30-minute slot")
    utilisations = {sid: utilisation(svc) for sid, svc in services.items()}
    kw_cache: dict[tuple[str, str], float] = {}
    site_order = {site_id: k for k, site_id in enumerate(sites)}
    # accumulate plain floats: a year of slots x tens of services must stay fast
    kwh = dict.fromkeys(services, 0.0)
    surplus = dict.fromkeys(services, 0.0)
    grams = dict.fromkeys(services, 0.0)
    for slot, placement in enumerate(placements_by_slot):
        seconds = min(SLOT_SECONDS, scenario.duration - slot * SLOT_SECONDS)
        if seconds <= 0:
            break
        hours = seconds / 3600.0
        per_site: dict[str, list[tuple[str, float]]] = {}
        for service_id, value in placement.items():
            for site_id in _sites_of(value):
                kw = kw_cache.get((service_id, site_id))
                if kw is None:
                    kw = kw_cache[(service_id, site_id)] = _checked_power(service_id, site_id, slot, services,
                                                                          sites, utilisations)
                per_site.setdefault(site_id, []).append((service_id, kw))
            if not value and service_id not in services:
                raise TwinError(f"slot {slot}: unknown service {service_id!r}; use one of {', '.join(services)}")
        used_mw_by_area: dict[str, float] = {}
        # topology order: a deterministic sharing of an area's surplus between its sites
        for site_id in sorted(per_site, key=site_order.__getitem__):
            series = signals.get(site_id)
            if series is None:
                raise TwinError(f"site {site_id} has no power signal; load signals for every site")
            site = sites[site_id]
            slots = series.slots
            signal = slots[slot] if slot < len(slots) else series.at(slot * SLOT_SECONDS)
            area = site.area.lower()
            used_mw = used_mw_by_area.get(area, 0.0)
            site_kw = sum(kw for _, kw in per_site[site_id])
            site_kwh = site_kw * hours
            site_surplus = min(site_kwh, max(0.0, signal.surplus_mw - used_mw) * 1000.0 * hours)
            used_mw_by_area[area] = used_mw + site_surplus / hours / 1000.0
            site_grams = (site_surplus * signal.surplus_carbon_g_per_kwh
                          + (site_kwh - site_surplus) * signal.carbon_g_per_kwh)
            for service_id, kw in per_site[site_id]:
                share = kw / site_kw if site_kw > 0 else 0.0
                kwh[service_id] += site_kwh * share
                surplus[service_id] += site_surplus * share
                grams[service_id] += site_grams * share
    return {sid: EnergyTotals(kwh[sid], surplus[sid], grams[sid] / 1000.0) for sid in services}


def _checked_power(service_id: str, site_id: str, slot: int, services: dict[str, Service],
                   sites: dict[str, Site], utilisations: dict[str, float]) -> float:
    if service_id not in services:
        raise TwinError(f"slot {slot}: unknown service {service_id!r}; use one of {', '.join(services)}")
    if site_id not in sites:
        raise TwinError(f"slot {slot}: service {service_id} placed at unknown site {site_id!r}; "
                        f"use one of {', '.join(sites)}")
    svc = services[service_id]
    return service_power_kw(sites[site_id], svc.cpus, utilisations[service_id])


def account_placements(placements_by_slot: Sequence[Placement], scenario: Scenario, topology: Topology,
                       signals: Mapping[str, SignalSeries]) -> EnergyTotals:
    """Energy of a whole run (see :func:`account_services`), so that static,
    oracle and policy runs are compared on the same signals."""
    total = EnergyTotals()
    for totals in account_services(placements_by_slot, scenario, topology, signals).values():
        total = total + totals
    return total
