"""``twin report DIR``: plots and a self-contained report.html from a run directory.

Reads only the run directory's files (docs/run-directory.md, via
:mod:`twin.experiment.rundata`), so a model-only sweep and an emulated run give the
same report. The HTML loads nothing from anywhere: CSS is inline, plots are PNGs
inlined as base64 data URIs, the site map is inline SVG, and there is no script.
Every string taken from a file is escaped before it reaches the page.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from twin.experiment.plots import (ENERGY_METRICS, ENERGY_RUNS, MAX_POINTS, make_plots, migrations,
                                   service_colours, slo_of)
from twin.experiment.rundata import OUTCOMES, RunData, RunDirError, load_run

__all__ = ["build_report", "RunDirError"]

DECISION_LOG_ROWS = 400       # a year of 30-min decisions is 17,520 per service: show the ones that matter
MAP_WIDTH, MAP_HEIGHT, MAP_PAD = 720, 520, 60


def build_report(run_dir: Path) -> Path:
    """Write ``plots/*.png`` and ``report.html`` into ``run_dir``; returns the path of report.html.

    Raises:
        RunDirError: the run directory or one of its files is missing or malformed.
    """
    run_dir = Path(run_dir)
    data = load_run(run_dir)
    plots = make_plots(data, run_dir / "plots")
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(data, plots), encoding="utf-8")
    tmp.replace(path)     # a reader never sees half a report
    return path


# --------------------------------------------------------------------------- formatting


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def num(value: object, fmt: str = ".3g", unit: str = "") -> str:
    """A number formatted, anything else escaped, missing shown as a dash."""
    if value is None:
        return "&ndash;"
    if _is_num(value):
        return f"{value:{fmt}}{unit}"
    return esc(value)


def hours(t_s: object) -> str:
    if not _is_num(t_s):
        return esc(t_s)
    t_s = float(t_s)
    days, rest = divmod(t_s, 86400)
    h, rest = divmod(rest, 3600)
    clock = f"{int(h):02d}:{int(rest // 60):02d}"
    return f"d{int(days)} {clock}" if days else clock


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Rows hold HTML already escaped by the caller."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


# --------------------------------------------------------------------------- sections


def _header(data: RunData) -> str:
    run = data.run
    policy = run.get("policy")
    if isinstance(policy, dict):
        params = ", ".join(f"{esc(k)} {num(v, 'g')}" for k, v in policy.items() if k != "name")
        policy_text = esc(policy.get("name", "?")) + (f" ({params})" if params else "")
    else:
        policy_text = esc(policy if policy is not None else data.summary.get("policy", "?"))
    wall = run.get("wall_seconds", data.summary.get("wall_seconds"))
    rows = [
        ("scenario", esc(run.get("scenario"))),
        *([("description", esc(run["description"]))] if run.get("description") else []),
        ("topology", esc(run.get("topology", "?"))),
        ("mode", esc(run.get("mode"))),
        ("policy", policy_text),
        ("link backend", esc(run.get("link_backend") or "none (model-only)")),
        ("container engine", esc(run.get("container_engine") or "none (model-only)")),
        ("scenario duration", f"{data.duration_s / 3600:.4g} h"),
        ("time compression", num(run.get("time_compression"), "g", "&times;")),
        ("started", esc(run.get("started", "?"))),
        ("wall time", num(wall, ".1f", " s")),
        ("sites / services", f"{len(data.site_ids)} / {len(data.service_ids)}"),
    ]
    cells = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="facts">{cells}</table>'


def _headline(data: RunData) -> str:
    services = data.summary.get("services", {})
    met = [s for s, v in services.items() if v.get("slo_met") is True]
    missed = [s for s, v in services.items() if v.get("slo_met") is False]
    moves = migrations(data)
    failed_moves = sum(1 for m in moves if not m[2])
    parts = [f"{len(met)} of {len(services)} services met their SLO"
             + (f" (missed: {esc(', '.join(missed))})" if missed else ""),
             f"{len(moves)} migration{'s' if len(moves) != 1 else ''}"
             + (f", {failed_moves} failed" if failed_moves else ""),
             _energy_words(data)]
    warnings = sum(1 for e in data.events if e.get("kind") == "warning")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''} in the log")
    return "<p class=\"headline\">" + ". ".join(p for p in parts if p) + ".</p>"


def site_map_svg(data: RunData, colours: dict[str, str]) -> str:
    """Sites, fibre spans, lightpaths, service shares and migration arrows, equirectangular."""
    sites = {str(s["id"]): s for s in data.run.get("sites", [])
             if _is_num(s.get("lat")) and _is_num(s.get("lon"))}
    if not sites:
        return '<svg id="map" width="200" height="40"><text x="4" y="24">no site coordinates in run.json</text></svg>'
    lats = [float(s["lat"]) for s in sites.values()]
    lons = [float(s["lon"]) for s in sites.values()]
    kx = math.cos(math.radians(sum(lats) / len(lats)))   # keep shapes true near the middle latitude
    span_x = max((max(lons) - min(lons)) * kx, 1e-6)
    span_y = max(max(lats) - min(lats), 1e-6)
    scale = min((MAP_WIDTH - 2 * MAP_PAD) / span_x, (MAP_HEIGHT - 2 * MAP_PAD) / span_y)
    off_x = (MAP_WIDTH - span_x * scale) / 2
    off_y = (MAP_HEIGHT - span_y * scale) / 2
    pos = {sid: (off_x + (float(s["lon"]) - min(lons)) * kx * scale,
                 off_y + (max(lats) - float(s["lat"])) * scale) for sid, s in sites.items()}

    out = [f'<svg id="map" viewBox="0 0 {MAP_WIDTH} {MAP_HEIGHT}" width="{MAP_WIDTH}" height="{MAP_HEIGHT}" '
           f'role="img" aria-label="map of sites, fibre spans, lightpaths and placements">',
           '<rect width="100%" height="100%" fill="#f7f9fb"/>', "<defs>"]
    for i, service in enumerate(data.service_ids):
        out.append(f'<marker id="arrow{i}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                   f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
                   f'fill="{colours[service]}"/></marker>')
    out.append("</defs>")

    out.append('<g class="spans">')
    for span in data.run.get("spans", []):
        ends = [str(e) for e in span.get("ends", [])] if isinstance(span, dict) else []
        if len(ends) != 2 or not all(e in pos for e in ends):
            continue
        (x1, y1), (x2, y2) = pos[ends[0]], pos[ends[1]]
        tip = f"{ends[0]}-{ends[1]}: {num(span.get('length_km'), '.0f')} km, {num(span.get('wavelengths'))} wavelengths"
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#9aa5b1" '
                   f'stroke-width="6" stroke-linecap="round"><title>{esc(tip)}</title></line>')
    out.append("</g>")

    out.append('<g class="lightpaths">')
    for lp in data.run.get("lightpaths", []):
        route = [str(r) for r in lp.get("route", [])] if isinstance(lp, dict) else []
        if len(route) < 2 or not all(r in pos for r in route):
            continue
        lane = (lp.get("wavelength", 0) if _is_num(lp.get("wavelength")) else 0) % 6
        shift = 1.6 * (lane - 2.5)    # one lane per wavelength beside the span
        segments = []
        for a, b in zip(route, route[1:]):
            (x1, y1), (x2, y2) = pos[a], pos[b]
            length = math.hypot(x2 - x1, y2 - y1) or 1.0
            nx, ny = -(y2 - y1) / length * shift, (x2 - x1) / length * shift
            segments.append(f"M{x1 + nx:.1f},{y1 + ny:.1f} L{x2 + nx:.1f},{y2 + ny:.1f}")
        tip = (f"lightpath {lp.get('src')}-{lp.get('dst')} via {'-'.join(route)}, "
               f"wavelength {lp.get('wavelength')}, one way {num(lp.get('one_way_ms'), '.3g')} ms")
        out.append(f'<path d="{" ".join(segments)}" stroke="#1d6fa5" stroke-width="1" fill="none" '
                   f'opacity="0.7"><title>{esc(tip)}</title></path>')
    out.append("</g>")

    # Migration arrows: one curve per (service, from, to), width by count, bent so A->B and B->A differ.
    moves: dict[tuple[str, str, str], int] = {}
    for e in data.events:
        if e.get("kind") == "migration":
            key = (str(e.get("service")), str(e.get("from")), str(e.get("to")))
            moves[key] = moves.get(key, 0) + 1
    index = {s: i for i, s in enumerate(data.service_ids)}
    out.append('<g class="migrations">')
    for (service, src, dst), count in sorted(moves.items()):
        if src not in pos or dst not in pos or src == dst or service not in index:
            continue
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        length = math.hypot(x2 - x1, y2 - y1) or 1.0
        bend = 0.18 * length + 6 * index[service]
        cx = (x1 + x2) / 2 - (y2 - y1) / length * bend
        cy = (y1 + y2) / 2 + (x2 - x1) / length * bend
        width = 1.2 + min(3.0, math.log2(count))
        tip = f"{service}: {src} to {dst}, {count} migration{'s' if count != 1 else ''}"
        out.append(f'<path d="M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}" fill="none" '
                   f'stroke="{colours[service]}" stroke-width="{width:.1f}" opacity="0.8" '
                   f'marker-end="url(#arrow{index[service]})"><title>{esc(tip)}</title></path>')
    out.append("</g>")

    # Where each service ran: a disc per (service, site) around the site, area by share of intervals.
    out.append('<g class="placements">')
    n = max(len(data.service_ids), 1)
    for i, service in enumerate(data.service_ids):
        for site, share in data.placement_share.get(service, {}).items():
            if site not in pos or share <= 0:
                continue
            angle = 2 * math.pi * i / n - math.pi / 2
            x, y = pos[site][0] + 16 * math.cos(angle), pos[site][1] + 16 * math.sin(angle)
            radius = 3 + 11 * math.sqrt(share)
            tip = f"{service} at {site}: {share:.0%} of the time"
            out.append(f'<circle class="svc" cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" '
                       f'fill="{colours[service]}" fill-opacity="0.65" stroke="#fff" stroke-width="0.8">'
                       f'<title>{esc(tip)}</title></circle>')
    out.append("</g>")

    out.append('<g class="sites">')
    for sid, (x, y) in pos.items():
        s = sites[sid]
        tip = f"{sid} {s.get('name', '')} ({s.get('area', '')}): {s.get('cpus', '?')} CPUs, PUE {s.get('pue', '?')}"
        anchor, dx = ("end", -9) if x > MAP_WIDTH - 90 else ("start", 9)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#222"><title>{esc(tip)}</title></circle>'
                   f'<text x="{x + dx:.1f}" y="{y - 8:.1f}" text-anchor="{anchor}" class="site-label">'
                   f'{esc(sid)}</text>')
    out.append("</g></svg>")
    return "\n".join(out)


def _legend(data: RunData, colours: dict[str, str]) -> str:
    items = "".join(f'<li><span class="swatch" style="background:{colours[s]}"></span>{esc(s)}</li>'
                    for s in data.service_ids)
    return (f'<ul class="legend">{items}</ul><p class="note">Discs around a site: share of decision '
            f'intervals the service ran there (area proportional). Curved arrows: migrations, thicker '
            f'for more. Thin blue lines: lightpaths, one lane per wavelength; grey: fibre spans.</p>')


def _lightpaths_table(data: RunData) -> str:
    rows = []
    for lp in data.run.get("lightpaths", []):
        if not isinstance(lp, dict):
            continue
        rows.append([esc(lp.get("src")), esc(lp.get("dst")), esc("-".join(map(str, lp.get("route", [])))),
                     num(lp.get("wavelength"), "d") if isinstance(lp.get("wavelength"), int) else num(lp.get("wavelength")),
                     num(lp.get("one_way_ms"), ".3f")])
    if not rows:
        return "<p>No lightpaths in run.json.</p>"
    return ("<details><summary>" + f"{len(rows)} lightpaths" + "</summary>"
            + _table(["from", "to", "route", "wavelength", "one way (ms)"], rows) + "</details>")


def _services_table(data: RunData) -> str:
    services = data.summary.get("services", {})
    colours = service_colours(data.service_ids)
    rows = []
    for service in data.service_ids:
        s = services.get(service, {})
        slo = s.get("slo") if isinstance(s.get("slo"), dict) else {}
        budget, pct = slo_of(data, service)
        slo_text = (f"{pct} &le; {num(budget, 'g')} ms" if budget is not None else "&ndash;")
        if _is_num(slo.get("jitter_ms")):
            slo_text += f", jitter &le; {num(slo['jitter_ms'], 'g')} ms"
        met = s.get("slo_met")
        met_text = ('<span class="ok">met</span>' if met is True else
                    '<span class="bad">missed</span>' if met is False else "&ndash;")
        rows.append([
            f'<span class="swatch" style="background:{colours[service]}"></span>'
            f'{esc(service)}',
            num(s.get("requests"), ","), num(s.get("failed"), ","), num(s.get("failed_by_migration"), ","),
            num(s.get("p50_ms")), num(s.get("p95_ms")), num(s.get("p99_ms")), num(s.get("p999_ms")),
            f'{num(s.get("jitter_sd_ms"))} / {num(s.get("jitter_p99_p50_ms"))}',
            slo_text, met_text,
            num(s.get("goodput"), ".4f") if _is_num(s.get("goodput")) else num(s.get("goodput")),
            num(s.get("migrations"), ","), num(s.get("interruption_ms_max"), ".3g"),
        ])
    return _table(["service", "requests", "failed", "failed by migration", "p50 ms", "p95 ms", "p99 ms",
                   "p99.9 ms", "jitter sd / p99&minus;p50 ms", "SLO", "SLO", "goodput", "migrations",
                   "max interruption ms"], rows, "num")


def _regions_table(data: RunData) -> str:
    """Per service and user region (summary.json ``regions``): which users the SLO holds for."""
    services = data.summary.get("services", {})
    rows = []
    for service in data.service_ids:
        s = services.get(service, {})
        regions = s.get("regions") if isinstance(s.get("regions"), dict) else {}
        for region, r in regions.items():
            if not isinstance(r, dict):
                continue
            met = r.get("slo_met")
            rows.append([esc(service), esc(region), num(r.get("requests"), ","), num(r.get("failed"), ","),
                         num(r.get("p50_ms")), num(r.get("p99_ms")), num(r.get("p999_ms")),
                         num(r.get("slo_percentile_ms")),
                         '<span class="ok">met</span>' if met is True else
                         '<span class="bad">missed</span>' if met is False else "&ndash;"])
    if not rows:
        return ""
    return ("<h3>By user region</h3>"
            + _table(["service", "users in", "requests", "failed", "p50 ms", "p99 ms", "p99.9 ms",
                      "at the SLO percentile ms", "SLO"], rows, "num"))


def _energy(data: RunData) -> dict[str, dict[str, float | None]]:
    energy = data.summary.get("energy", {})
    values = {}
    for run in ENERGY_RUNS:
        entry = energy.get(run) if isinstance(energy.get(run), dict) else {}
        values[run] = {key: (float(entry[key]) if _is_num(entry.get(key)) else None)
                       for key, _ in ENERGY_METRICS}
    return values


def _energy_words(data: RunData) -> str:
    """The gain in one or two sentences: surplus absorbed and CO2, against static and the oracle."""
    values = _energy(data)
    pol, sta, ora = values["policy"], values["static"], values["oracle"]
    sentences = []
    if None not in (pol["surplus_kwh"], sta["surplus_kwh"]):
        delta = pol["surplus_kwh"] - sta["surplus_kwh"]
        text = (f"the policy drew {pol['surplus_kwh']:.4g} kWh from absorbed surplus, "
                f"{abs(delta):.3g} kWh {'more' if delta >= 0 else 'less'} than static ({sta['surplus_kwh']:.4g} kWh)")
        if ora["surplus_kwh"] is not None and ora["surplus_kwh"] - sta["surplus_kwh"] > 1e-12:
            captured = delta / (ora["surplus_kwh"] - sta["surplus_kwh"])
            text += f", {captured:.0%} of what the oracle gained over static ({ora['surplus_kwh']:.4g} kWh)"
        sentences.append(text)
    if None not in (pol["kg_co2"], sta["kg_co2"]):
        if sta["kg_co2"] > 0:
            change = (sta["kg_co2"] - pol["kg_co2"]) / sta["kg_co2"]
            text = (f"it emitted {pol['kg_co2']:.4g} kg CO2, {abs(change):.1%} "
                    f"{'less' if change >= 0 else 'more'} than static")
        else:
            text = f"it emitted {pol['kg_co2']:.4g} kg CO2 (static {sta['kg_co2']:.4g})"
        if ora["kg_co2"] is not None:
            text += f" (oracle {ora['kg_co2']:.4g} kg)"
        sentences.append(text)
    if not sentences:
        return "energy figures are missing from summary.json"
    words = "; ".join(sentences)
    return words[0].upper() + words[1:]


def _energy_section(data: RunData, plots: dict[str, Path]) -> str:
    values = _energy(data)
    rows = [[esc(run)] + [num(values[run][key], ".4g") for key, _ in ENERGY_METRICS] for run in ENERGY_RUNS]
    return (f'<p class="headline">{_energy_words(data)}.</p>'
            + _table(["run", *(title for _, title in ENERGY_METRICS)], rows, "num")
            + '<p class="note">static: every service stays at its initial site; oracle: the best placement '
              'knowing the whole scenario in advance; both computed on the same signals.</p>'
            + _img(plots["energy"], "energy: policy, static and oracle"))


def _requests_section(data: RunData, plots: dict[str, Path]) -> str:
    if not data.requests:
        return ""
    rows = []
    for service in sorted(data.requests, key=lambda s: (s not in data.service_ids, s)):
        stats = data.requests[service]
        total = sum(stats.outcomes.values())
        lat = stats.latency_ms
        q = (np.percentile(lat, [50, 99, 99.9]) if len(lat) else [None] * 3)
        rows.append([esc(service), num(total, ","), *(num(stats.outcomes[o], ",") for o in OUTCOMES),
                     *(num(float(v)) if v is not None else "&ndash;" for v in q)])
    body = _table(["service", "requests", *OUTCOMES, "p50 ms", "p99 ms", "p99.9 ms"], rows, "num")
    if "requests" in plots:
        body += _img(plots["requests"], "latency CDF of every request")
    return "<section><h2>Requests (every request recorded)</h2>" + body + "</section>"


def _engine_section(data: RunData, plots: dict[str, Path]) -> str:
    late = data.engine
    if late is None:
        return ""
    share = late.late_frames / late.frames if late.frames else 0.0
    body = (f"<p>The userspace delay engine forwarded {late.frames:,} frames on the run's spans; "
            f"{late.late_frames:,} ({share:.1%}) left more than 0.5 ms after their time, the worst "
            f"{late.max_late_ms:.1f} ms late. The engine runs behind when the CPU it shares with the switches' "
            "packet path is short, so a request under way then may carry the emulator's own delay on top of the "
            "modelled network's, even on a span without late frames; <code>benchmarks/slo_tail.py --engine</code> "
            "counts those requests.</p>")
    worst = sorted(((n, d) for d, n in late.late_by_direction.items() if n), reverse=True)[:5]
    if worst:
        body += _table(["span direction", "late frames"], [[esc(d), num(n, ",")] for n, d in worst], "num")
    if "engine" in plots:
        body += _img(plots["engine"], "episodes of frames the delay engine sent late")
    return "<section><h2>Emulator</h2>" + body + "</section>"


def _probes_section(data: RunData) -> str:
    if not data.probes:
        return ""
    model = {}
    for lp in data.run.get("lightpaths", []):
        if isinstance(lp, dict) and _is_num(lp.get("one_way_ms")):
            model[(str(lp.get("src")), str(lp.get("dst")))] = float(lp["one_way_ms"])
            model[(str(lp.get("dst")), str(lp.get("src")))] = float(lp["one_way_ms"])
    rows = []
    for (src, dst, plane), p in sorted(data.probes.items()):
        one_way = np.concatenate([p.forward_ms, p.backward_ms])
        one_way = one_way[~np.isnan(one_way)]
        stats = np.percentile(one_way, [50, 99]) if len(one_way) else [None, None]
        sd = float(np.std(one_way)) if len(one_way) else None
        expect = model.get((src, dst)) if plane == "apn" else None
        rows.append([esc(src), esc(dst), esc(plane), num(len(p.t_s), ","),
                     *(num(float(v), ".3f") if v is not None else "&ndash;" for v in stats),
                     num(sd, ".3f"), num(expect, ".3f")])
    return ("<section><h2>Probes</h2>"
            + _table(["from", "to", "plane", "samples", "one way p50 ms", "one way p99 ms", "sd ms",
                      "model ms"], rows, "num") + "</section>")


def _event_row(e: dict) -> list[str]:
    kind = str(e.get("kind"))
    t = hours(e.get("t"))
    if kind == "decision":
        stay = e.get("to") == e.get("from")
        what = f"stay at {esc(e.get('to'))}" if stay else f"{esc(e.get('from'))} &rarr; {esc(e.get('to'))}"
        scores = e.get("scores")
        detail = esc(e.get("reason", ""))
        if isinstance(scores, dict) and scores:
            top = sorted(((v, k) for k, v in scores.items() if _is_num(v)), reverse=True)[:4]
            detail += f' <span class="note">scores {", ".join(f"{esc(k)} {v:.3g}" for v, k in top)}</span>'
        if isinstance(e.get("feasible"), list):
            detail += f' <span class="note">feasible {esc(", ".join(map(str, e["feasible"])))}</span>'
        return [t, "decision", esc(e.get("service", "")), what, detail]
    if kind == "migration":
        ok = e.get("ok") is not False
        what = f"{esc(e.get('from'))} &rarr; {esc(e.get('to'))}"
        detail = (f"{esc(e.get('strategy', ''))}: {num(e.get('duration_s'), '.3g', ' s')} total, "
                  f"state {num(e.get('state_bytes'), ',', ' B')} in {num(e.get('transfer_s'), '.3g', ' s')}, "
                  f"interruption {num(e.get('interruption_ms'), '.3g', ' ms')}, "
                  f"{num(e.get('failed_requests'), ',')} failed requests")
        if not ok:
            detail = f'<span class="bad">failed: {esc(e.get("error"))}</span> ' + detail
        return [t, "migration", esc(e.get("service", "")), what, detail]
    if kind == "event":
        rest = {k: v for k, v in e.items() if k not in ("t", "kind", "wall", "event")}
        return [t, "event", "", esc(e.get("event", "")), esc(", ".join(f"{k} {v}" for k, v in rest.items()))]
    if kind == "warning":
        return [t, '<span class="bad">warning</span>', esc(e.get("service", "")), "", esc(e.get("message", ""))]
    rest = {k: v for k, v in e.items() if k not in ("t", "kind", "wall")}
    return [t, esc(kind), "", "", esc(rest)]


def _decision_log(data: RunData) -> str:
    """Warnings, events, migrations and moving decisions first; 'stay' decisions fill what room is left."""
    def rank(e: dict) -> int:
        kind = e.get("kind")
        if kind in ("warning", "event"):
            return 0
        if kind == "migration":
            return 1
        if kind == "decision" and e.get("to") != e.get("from"):
            return 2
        return 3

    indexed = sorted(range(len(data.events)), key=lambda i: (rank(data.events[i]), i))
    shown = sorted(indexed[:DECISION_LOG_ROWS], key=lambda i: (data.events[i]["t"], i))
    rows = [_event_row(data.events[i]) for i in shown]
    note = ""
    if len(data.events) > len(shown):
        left = {}
        for i in indexed[DECISION_LOG_ROWS:]:
            e = data.events[i]
            kind = "stay decision" if rank(e) == 3 and e.get("kind") == "decision" else str(e.get("kind"))
            left[kind] = left.get(kind, 0) + 1
        detail = ", ".join(f"{n:,} {esc(k)}" for k, n in sorted(left.items()))
        note = (f'<p class="note">Showing {len(shown):,} of {len(data.events):,} entries (warnings, '
                f'scenario events, migrations and moves first); not shown: {detail}. '
                f'The full log is events.jsonl.</p>')
    return note + _table(["time", "kind", "service", "what", "reason / figures"], rows, "log")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1180px;
padding:1rem 1.5rem;color:#1b1f23}
h1{font-size:1.5rem;margin:.2rem 0 .8rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:13px}
th,td{border:1px solid #d8dde3;padding:3px 7px;vertical-align:top}th{background:#f0f3f6;text-align:left}
table.num td{text-align:right}table.num td:first-child{text-align:left}
table.facts th{width:11rem}table.log td:nth-child(5){max-width:40rem}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.35em;border-radius:2px;vertical-align:-1px}
ul.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.3rem 1rem}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}.note{color:#57606a;font-size:12px}
.headline{font-size:15px}img{max-width:100%;display:block;margin:.5rem 0}
.site-label{font:600 12px system-ui,sans-serif;fill:#111;paint-order:stroke;stroke:#f7f9fb;stroke-width:3px}
.map{display:flex;gap:1.5rem;flex-wrap:wrap;align-items:flex-start}
"""


def render_html(data: RunData, plots: dict[str, Path]) -> str:
    colours = service_colours(data.service_ids)
    title = f"{data.run.get('scenario')} on {data.run.get('topology', '?')} ({data.run.get('mode')})"
    migrate_note = ('<p class="note">Vertical lines: migrations (red: failed). Latency is the worst '
                    'region per decision interval; long runs are binned to at most '
                    f'{MAX_POINTS:,} points per line, keeping the worst value of each bin for latency and the '
                    'mean for signals.</p>')
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>twin report: {esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        _header(data),
        _headline(data),
        "<section><h2>Sites, lightpaths and where the services ran</h2><div class=\"map\">",
        site_map_svg(data, colours),
        "<div>" + _legend(data, colours) + _lightpaths_table(data) + "</div></div></section>",
        "<section><h2>Services</h2>", _services_table(data), _regions_table(data), "</section>",
        "<section><h2>Timelines</h2>", migrate_note,
        _img(plots["latency"], "latency percentiles per service"),
        _img(plots["placements"], "placements over time"),
        _img(plots["power"], "power signals per area"),
        "</section>",
        "<section><h2>Energy</h2>", _energy_section(data, plots), "</section>",
        _requests_section(data, plots),
        _engine_section(data, plots),
        _probes_section(data),
        "<section><h2>Decision log</h2>", _decision_log(data), "</section>",
        f'<p class="note">Made by twin report from {esc(data.run_dir.name)}/ '
        f'(run.json, events.jsonl, signals.csv, placements.csv, latency.csv, summary.json'
        f'{", requests/" if data.requests else ""}{", probes.csv" if data.probes else ""}'
        f'{", engine.json" if data.engine else ""}).</p>',
        "</body></html>",
    ]
    return "\n".join(parts)
