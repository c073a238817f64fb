"""Plain-text tables for the terminal (no dependencies; columns sized to content)."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

from twin.model.plan import PlanEntry, SloFeasibility
from twin.model.schema import Topology


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def print_plan(topology: Topology, entries: list[PlanEntry], order: str) -> None:
    print(f"Lightpath plan for {topology.name}: {len(entries)} pairs, allocated in {order} order "
          f"on one occupancy map (k={topology.apn.k_paths} shortest routes, first-fit wavelength)")
    rows = []
    for e in entries:
        if e.lightpath is None:
            rows.append([f"{e.src}-{e.dst}", "BLOCKED", "", "", "", ""])
        else:
            d = e.lightpath.to_dict()
            rows.append([f"{e.src}-{e.dst}", "-".join(d["route"]), d["wavelength"],
                         f"{d['length_km']:.0f}", f"{d['one_way_ms']:.3f}", f"{d['rtt_ms']:.3f}"])
    print(format_table(["pair", "route", "λ", "km", "one-way ms", "RTT ms"], rows))
    blocked = [e for e in entries if e.lightpath is None]
    if blocked:
        print(f"\n{len(blocked)} pair(s) blocked by the lightpaths allocated before them:")
        for e in blocked:
            print(f"  {e.src}-{e.dst}: {e.blocked}")


def print_slo(rows: list[SloFeasibility]) -> None:
    print("\nSites meeting each service's latency SLO (fastest-route RTT + service time <= budget):")
    grouped: dict[tuple[str, str], list[SloFeasibility]] = defaultdict(list)
    for row in rows:
        grouped[(row.service, row.region)].append(row)
    table = []
    for (service, region), items in grouped.items():
        ok = [f"{r.site}({r.expected_ms:.1f})" for r in sorted(items, key=lambda r: r.expected_ms) if r.meets]
        table.append([service, region, f"{items[0].budget_ms:g}", " ".join(ok) or "none"])
    print(format_table(["service", "users in", "budget ms", "sites (expected ms)"], table))
