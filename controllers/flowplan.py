"""Flow planning: the complete desired OpenFlow state of every switch, as plain data.

Pure (no os-ken import) so that every rule is unit-tested without a switch. The
controller never edits flows one by one: after any change it recomputes
:func:`desired_flows` from its whole state (lightpaths, service VIPs) and pushes
the :func:`diff` against what it installed. Deleting a lightpath therefore can
never leave a stale rule behind, and a restarted controller converges by
replacing everything with the desired set.

Rules per switch of site ``s`` with index ``i`` (addresses: :mod:`twin.model.addressing`)

======== =================================================== ============================================
priority match                                               actions
======== =================================================== ============================================
0        table miss                                          drop (ARP is static: nothing to learn)
100      ip, nw_dst = each local host's APN and packet IP    set eth_dst host MAC, output host port
100      ip, nw_dst = 10.2.j.0/24 (j != i)                   output trunk port to the next hop (by delay),
                                                             untagged: the packet network's frames
200      ip, nw_dst = 10.1.j.0/24, at each END of a lightpath push VLAN of the lightpath's wavelength,
                                                             output its trunk port (lightpath_out_actions)
250      ip, nw_dst = VIP (at a home: host or draining site) set eth_dst compute MAC, output compute port
250      ip, nw_src = VIP, nw_dst = a local host's APN IP    ct(zone) (replies seen by conntrack), deliver
260      in_port = local host port, ip, nw_dst = VIP         ct(zone, table=1): connection affinity, see
                                                             :func:`vip_flows` (table 1: ct_mark -> site)
290      in_port = trunk, any VLAN                           drop (a dark wavelength carries nothing)
300      in_port = trunk, vlan_vid = w (TRANSIT)             output the trunk to the next site (tag kept)
300      in_port = trunk, vlan_vid = w (END: drop)           pop VLAN, resubmit to table 0 (then local
                                                             delivery or VIP rules decide the host)
======== =================================================== ============================================

A wavelength is a VLAN id on a span's trunk port (:mod:`twin.model.portmap`).
Transit rules match only the port and the VLAN id: a ROADM cross-connects light
without looking at packets, so everything on that wavelength passes and nothing
else can enter it. End rules (add/drop) and VIP rules are the only places where
IP decides a wavelength. Without a lightpath between two sites their APN
addresses are unreachable (layer-1 faithful: no electrical hop-by-hop relay).
Between one pair several lightpaths may exist; the oldest (first created)
carries the pair's traffic, so the choice is deterministic and does not move
when a newer one comes or goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from twin.model import addressing as ad
from twin.model.optics import OpticalNetwork, span_key
from twin.model.portmap import PortMap
from twin.model.rwa import Lightpath

# The top 16 bits mark flows this app owns ("tw"); reconciliation deletes only
# those, so flows another tool put in the switch survive a controller restart.
COOKIE_APP = 0x7477 << 48
COOKIE_MASK = 0xFFFF << 48

# The low bits say which rule family a flow belongs to (readable in dump-flows).
KIND_MISS, KIND_LOCAL, KIND_PACKET, KIND_ADD_DROP, KIND_VIP, KIND_TRANSIT = 1, 2, 3, 4, 5, 6

PRIO_MISS = 0
PRIO_LOCAL = 100
PRIO_PACKET = 100
PRIO_ADD_DROP = 200
PRIO_VIP = 250
PRIO_TRANSIT = 300
PRIO_DARK = 290
KIND_LP_DROP, KIND_DARK = 16, 17   # lightpath drop at an end; guard against tagged frames of no lightpath
OFPVID_PRESENT = 0x1000
ETH_TYPE_VLAN = 0x8100

TABLE = 0
ETH_TYPE_IPV4 = 0x0800

Match = tuple[tuple[str, object], ...]
Action = tuple[str, object]


@dataclass(frozen=True, order=True)
class FlowSpec:
    """One flow entry. ``match`` is a sorted tuple of (OXM field, value) pairs.

    Field names are os-ken's OFPMatch keywords (``in_port``, ``eth_type``,
    ``ipv4_dst``); an IPv4 prefix is written ``"10.1.2.0/24"``; ``ct_state`` is a
    (value, mask) pair. Actions are ``("set_eth_dst", mac)``, ``("output", port)``,
    ``("ct_recirc", (zone, table))`` (through conntrack, then on in ``table``),
    ``("ct_track", zone)`` (through conntrack, carry on) and ``("ct_commit", (zone,
    mark))`` (commit the connection with ``ct_mark = mark``); an empty tuple drops.
    VLANs: match ``vlan_vid`` as OpenFlow writes it (``OFPVID_PRESENT | vid``, or a
    (value, mask) pair); actions ``("push_vlan", 0x8100)``, ``("set_vlan_vid", vid)``
    (plain id), ``("pop_vlan", 0)`` and ``("resubmit", table)`` (look the packet up
    again in ``table``, in_port unchanged).
    """

    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...]
    cookie: int

    @property
    def key(self) -> tuple[int, int, Match]:
        """What identifies a flow entry in OpenFlow (table, priority, match)."""
        return (self.table, self.priority, self.match)

    def output_port(self) -> int | None:
        for name, value in self.actions:
            if name == "output":
                return int(value)  # type: ignore[arg-type]
        return None


def flow(priority: int, kind: int, match: Mapping[str, object], actions: Iterable[Action] = ()) -> FlowSpec:
    return FlowSpec(TABLE, priority, tuple(sorted(match.items())), tuple(actions), COOKIE_APP | kind)


def _ip(dst: str) -> dict[str, object]:
    return {"eth_type": ETH_TYPE_IPV4, "ipv4_dst": dst}


def carriers(lightpaths: Iterable[Lightpath]) -> dict[tuple[str, str], Lightpath]:
    """For each site pair (canonical order) the lightpath that carries its traffic: the oldest."""
    result: dict[tuple[str, str], Lightpath] = {}
    for lightpath in lightpaths:  # creation order
        result.setdefault(span_key(lightpath.src, lightpath.dst), lightpath)
    return result


def end_channel(portmap: PortMap, lightpath: Lightpath, site: str) -> tuple[int, int]:
    """(trunk port, VLAN id) through which ``site`` (one end of the lightpath) sends into it.

    Raises:
        ValueError: ``site`` is not an end of the lightpath.
    """
    sites = lightpath.route.sites
    if site == sites[0]:
        nxt = sites[1]
    elif site == sites[-1]:
        nxt = sites[-2]
    else:
        raise ValueError(f"{site} is not an end of lightpath {lightpath.id}")
    return portmap.switches[site].wavelength_channel(nxt, lightpath.wavelength)


def end_port(portmap: PortMap, lightpath: Lightpath, site: str) -> int:
    """The trunk port through which ``site`` (one end of the lightpath) sends into it."""
    return end_channel(portmap, lightpath, site)[0]


def lightpath_out_actions(portmap: PortMap, lightpath: Lightpath, site: str) -> tuple[Action, ...]:
    """Actions that put a packet onto ``lightpath`` at ``site``, one of its ends: tag it with the
    wavelength's VLAN and send it out of the trunk (for add rules and service steering).

    Raises:
        ValueError: ``site`` is not an end of the lightpath.
    """
    port, vid = end_channel(portmap, lightpath, site)
    return (("push_vlan", ETH_TYPE_VLAN), ("set_vlan_vid", vid), ("output", port))


def lightpath_flows(portmap: PortMap, lightpath: Lightpath) -> dict[str, set[FlowSpec]]:
    """Cross-connects at transit sites and drop rules at both ends of one lightpath, per site."""
    out: dict[str, set[FlowSpec]] = {}
    sites = lightpath.route.sites
    w = lightpath.wavelength
    for prev, here, nxt in zip(sites, sites[1:], sites[2:]):
        sw = portmap.switches[here]
        (a, vid_a), (b, vid_b) = sw.wavelength_channel(prev, w), sw.wavelength_channel(nxt, w)
        rules = out.setdefault(here, set())
        rules.add(flow(PRIO_TRANSIT, KIND_TRANSIT, {"in_port": a, "vlan_vid": OFPVID_PRESENT | vid_a},
                       (("set_vlan_vid", vid_b), ("output", b)) if vid_a != vid_b else (("output", b),)))
        rules.add(flow(PRIO_TRANSIT, KIND_TRANSIT, {"in_port": b, "vlan_vid": OFPVID_PRESENT | vid_b},
                       (("set_vlan_vid", vid_a), ("output", a)) if vid_a != vid_b else (("output", a),)))
    for end in (sites[0], sites[-1]):
        port, vid = end_channel(portmap, lightpath, end)
        out.setdefault(end, set()).add(flow(PRIO_TRANSIT, KIND_LP_DROP,
                                            {"in_port": port, "vlan_vid": OFPVID_PRESENT | vid},
                                            (("pop_vlan", 0), ("resubmit", TABLE))))
    return out


def packet_next_hops(network: OpticalNetwork) -> dict[str, dict[str, str]]:
    """site -> destination site -> next-hop site on the fastest working route of the packet network.

    The conventional network runs over the same fibre, so a cut span is gone for it too.
    Unreachable destinations are absent.
    """
    usable = nx.subgraph_view(network.graph, filter_edge=lambda a, b: span_key(a, b) not in network.down)
    hops: dict[str, dict[str, str]] = {}
    for src, paths in nx.all_pairs_dijkstra_path(usable, weight="delay_s"):
        hops[src] = {dst: path[1] for dst, path in paths.items() if dst != src}
    return hops


def desired_flows(portmap: PortMap, network: OpticalNetwork, lightpaths: Iterable[Lightpath],
                  vip_sites: Mapping[str, str],
                  vip_draining: Mapping[str, Iterable[str]] | None = None) -> dict[str, frozenset[FlowSpec]]:
    """The complete flow table every switch should hold for this controller state.

    ``lightpaths`` in creation order (the oldest of a pair carries its traffic);
    ``vip_sites`` maps a service VIP to the site hosting it (new connections go
    there); ``vip_draining`` maps a VIP to sites that still serve the
    connections they already have (see :func:`vip_flows`).
    """
    lightpaths = list(lightpaths)
    flows: dict[str, set[FlowSpec]] = {site: set() for site in portmap.switches}
    index = {site: sw.index for site, sw in portmap.switches.items()}
    hops = packet_next_hops(network)

    for site, sw in portmap.switches.items():
        table = flows[site]
        table.add(flow(PRIO_MISS, KIND_MISS, {}))
        for port in sw.host_ports():
            for ip in port.ips:
                table.add(flow(PRIO_LOCAL, KIND_LOCAL, _ip(ip), (("set_eth_dst", port.mac), ("output", port.number))))
        for other, other_index in index.items():
            nxt = hops.get(site, {}).get(other)
            if other != site and nxt is not None:
                table.add(flow(PRIO_PACKET, KIND_PACKET, _ip(ad.site_prefix(ad.PACKET_PLANE, other_index)),
                               (("output", sw.packet_port(nxt).number),)))
        for trunk in sw.trunk_ports():
            table.add(flow(PRIO_DARK, KIND_DARK, {"in_port": trunk.number,
                                                  "vlan_vid": (OFPVID_PRESENT, OFPVID_PRESENT)}))

    for lightpath in lightpaths:
        for here, rules in lightpath_flows(portmap, lightpath).items():
            flows[here] |= rules

    carrier = carriers(lightpaths)
    for lightpath in carrier.values():
        for here, there in ((lightpath.src, lightpath.dst), (lightpath.dst, lightpath.src)):
            prefix = ad.site_prefix(ad.APN_PLANE, index[there])
            flows[here].add(flow(PRIO_ADD_DROP, KIND_ADD_DROP, _ip(prefix),
                                 lightpath_out_actions(portmap, lightpath, here)))

    for site, table in flows.items():
        table.update(vip_flows(portmap, carrier, site, vip_sites, vip_draining or {}))

    return {site: frozenset(table) for site, table in flows.items()}


@dataclass(frozen=True)
class FlowDiff:
    """What turns one switch's installed flows into the desired ones.

    Apply ``adds`` and ``modifies`` before ``deletes`` (make-before-break): a
    packet then always finds either its old rule or its new one.
    """

    adds: tuple[FlowSpec, ...]
    modifies: tuple[FlowSpec, ...]
    deletes: tuple[FlowSpec, ...]

    def __bool__(self) -> bool:
        return bool(self.adds or self.modifies or self.deletes)


def diff(installed: Iterable[FlowSpec], desired: Iterable[FlowSpec]) -> FlowDiff:
    """Flows to add, modify (same table/priority/match, other actions) and delete; each sorted."""
    have = {f.key: f for f in installed}
    want = {f.key: f for f in desired}
    adds = sorted(f for k, f in want.items() if k not in have)
    modifies = sorted(f for k, f in want.items() if k in have and have[k] != f)
    deletes = sorted(f for k, f in have.items() if k not in want)
    return FlowDiff(tuple(adds), tuple(modifies), tuple(deletes))


def describe(spec: FlowSpec) -> dict:
    """JSON-friendly form of a flow (for the API and logs)."""
    return {"table": spec.table, "priority": spec.priority, "match": dict(spec.match),
            "actions": [list(a) for a in spec.actions], "cookie": hex(spec.cookie)}


# -- service steering with connection affinity ------------------------------------------------------
#
# A VIP's traffic enters the APN at the switch of the client's own site. There it goes
# through Open vSwitch's connection tracker (zone CT_ZONE) and on to table TABLE_STEER:
# a connection the tracker has not seen before is committed with ct_mark = index of the
# site hosting the service at that moment and sent there; every later packet of it goes
# to the site in its mark for as long as that site is a home of the service (the hosting
# site or a draining one). Replies to the client pass through the same zone so the TCP
# state machine sees both directions. A site that stops being a home loses its rules;
# connections still marked for it then fall to the commit rule and move to the host.

TABLE_STEER = 1
CT_ZONE = 0x7477                 # "tw": our conntrack zone, separate from anyone else's
CT_TRACKED = 0x20                # ct_state bit +trk (nicira_ext: NX_CT_STATE_TRK)
KIND_VIP_ENTRY, KIND_VIP_REPLY, KIND_VIP_STEER, KIND_STEER_MISS = 7, 8, 9, 10
PRIO_VIP_ENTRY = 260             # above PRIO_VIP: a local client's packets are tracked first
PRIO_VIP_REPLY = 250
PRIO_STEER_AFFINITY = 20         # table TABLE_STEER: a committed connection keeps its site
PRIO_STEER_NEW = 10              # table TABLE_STEER: anything else is committed to the host


def steer_flow(priority: int, kind: int, match: Mapping[str, object], actions: Iterable[Action] = ()) -> FlowSpec:
    return FlowSpec(TABLE_STEER, priority, tuple(sorted(match.items())), tuple(actions), COOKIE_APP | kind)


def vip_homes(vip: str, vip_sites: Mapping[str, str], vip_draining: Mapping[str, Iterable[str]]) -> list[str]:
    """Sites that still serve a VIP: the host (new connections) first, then the draining ones, sorted."""
    host = vip_sites[vip]
    return [host] + sorted(set(vip_draining.get(vip, ())) - {host})


def _compute_port(portmap: PortMap, site: str):
    return next(p for p in portmap.switches[site].host_ports() if p.role == ad.COMPUTE)


def _towards(portmap: PortMap, carrier: Mapping[tuple[str, str], Lightpath], site: str,
             home: str) -> tuple[Action, ...] | None:
    """Actions at ``site`` that deliver a VIP packet to ``home``'s compute host (None: no way there)."""
    if home == site:
        compute = _compute_port(portmap, site)
        return (("set_eth_dst", compute.mac), ("output", compute.number))
    lightpath = carrier.get(span_key(site, home))
    if lightpath is None:
        return None
    return lightpath_out_actions(portmap, lightpath, site)


def vip_flows(portmap: PortMap, carrier: Mapping[tuple[str, str], Lightpath], site: str,
              vip_sites: Mapping[str, str], vip_draining: Mapping[str, Iterable[str]]) -> set[FlowSpec]:
    """Every service-steering flow of one switch (tables TABLE and TABLE_STEER).

    Per VIP: at each home (host or draining) site, packets arriving for the VIP
    go to the compute host. At every site that can reach a home, packets from
    its own hosts enter conntrack; in TABLE_STEER a connection marked for a home
    still reachable from here goes there, anything else is committed with the
    host's index and sent to the host; replies to the site's hosts pass conntrack
    on their way out. Without a draining site this is exactly the set the
    service would have had if it had always been at its host.
    """
    sw = portmap.switches[site]
    index = {s: other.index for s, other in portmap.switches.items()}
    table: set[FlowSpec] = {steer_flow(PRIO_MISS, KIND_STEER_MISS, {})}
    for vip in vip_sites:
        homes = vip_homes(vip, vip_sites, vip_draining)
        host = homes[0]
        if site in homes:
            compute = _compute_port(portmap, site)
            table.add(flow(PRIO_VIP, KIND_VIP, _ip(vip), (("set_eth_dst", compute.mac), ("output", compute.number))))
        steer: set[FlowSpec] = set()
        for home in homes:
            actions = _towards(portmap, carrier, site, home)
            if actions is None:
                continue
            tracked = {**_ip(vip), "ct_state": (CT_TRACKED, CT_TRACKED)}
            steer.add(steer_flow(PRIO_STEER_AFFINITY, KIND_VIP_STEER, {**tracked, "ct_mark": index[home]}, actions))
            if home == host:
                steer.add(steer_flow(PRIO_STEER_NEW, KIND_VIP_STEER, tracked,
                                     (("ct_commit", (CT_ZONE, index[host])),) + actions))
        if not steer:
            continue   # no home reachable from here: no route (layer-1 faithful)
        table |= steer
        for port in sw.host_ports():
            table.add(flow(PRIO_VIP_ENTRY, KIND_VIP_ENTRY, {**_ip(vip), "in_port": port.number},
                           (("ct_recirc", (CT_ZONE, TABLE_STEER)),)))
            for ip in port.ips:
                if ad.plane_of(ip) == ad.APN_PLANE:
                    table.add(flow(PRIO_VIP_REPLY, KIND_VIP_REPLY, {"eth_type": ETH_TYPE_IPV4, "ipv4_src": vip,
                                                                    "ipv4_dst": ip},
                                   (("ct_track", CT_ZONE), ("set_eth_dst", port.mac), ("output", port.number))))
    return table
