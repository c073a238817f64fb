"""PNG plots of a run directory (matplotlib on the Agg canvas, never pyplot).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas so the report
never touches matplotlib's global backend (a user's notebook keeps its own). Every
timeline shares the same x axis (scenario hours), figure width and margins, so they
line up one under another in report.html. Long runs are binned to at most
``MAX_POINTS`` points per line: latency keeps the worst value of each bin, signals
the mean, placements are exact (drawn only at their changes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from twin.experiment.rundata import PERCENTILES, RunData

MAX_POINTS = 800      # about one per pixel column of the plot area at 11 in x 100 dpi
WIDTH_IN = 11.0
MARGINS = dict(left=0.09, right=0.84)   # room on the right for legends outside the axes
DPI = 100
PERCENTILE_STYLE = {"p50_ms": ("p50", ":", 0.9), "p95_ms": ("p95", "-.", 0.9),
                    "p99_ms": ("p99", "--", 1.0), "p999_ms": ("p99.9", "-", 1.4)}


def service_colours(service_ids: list[str]) -> dict[str, str]:
    """One stable colour per service (tab10, then tab20 for more), shared by PNGs and the SVG map."""
    cmap = colormaps["tab10" if len(service_ids) <= 10 else "tab20"]
    return {s: to_hex(cmap(i % cmap.N)) for i, s in enumerate(service_ids)}


def site_colours(site_ids: list[str]) -> dict[str, str]:
    cmap = colormaps["Dark2" if len(site_ids) <= 8 else "tab20b"]
    return {s: to_hex(cmap(i % cmap.N)) for i, s in enumerate(site_ids)}


def migrations(data: RunData) -> list[tuple[float, str, bool]]:
    """(start in scenario hours, service, ok) of every migration in events.jsonl."""
    out = []
    for e in data.events:
        if e.get("kind") != "migration":
            continue
        start = e.get("started")
        t = start if isinstance(start, (int, float)) and not isinstance(start, bool) else e["t"]
        out.append((t / 3600.0, str(e.get("service", "")), e.get("ok") is not False))
    return out


def _bin_starts(n: int) -> np.ndarray:
    step = max(1, math.ceil(n / MAX_POINTS))
    return np.arange(0, n, step)


def _with_end(t_h: np.ndarray, values: np.ndarray, end_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Repeat the last value at the end of the run so a steps-post line covers the last interval."""
    if not len(t_h) or end_h <= t_h[-1]:
        return t_h, values
    return np.r_[t_h, end_h], np.r_[values, values[-1]]


def _nanmean_bins(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(values)
    sums = np.add.reduceat(np.where(ok, values, 0.0), starts)
    counts = np.add.reduceat(ok.astype(float), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _mark_migrations(ax, moves: list[tuple[float, str, bool]], colour: str = "0.35") -> None:
    """Migrations as thin vertical lines (one collection, so thousands stay cheap); failed ones red."""
    ok = [t for t, _, good in moves if good]
    bad = [t for t, _, good in moves if not good]
    alpha = 0.6 if len(ok) < 50 else 0.25
    if ok:
        ax.vlines(ok, 0, 1, transform=ax.get_xaxis_transform(), colors=colour, linewidths=0.7,
                  alpha=alpha, zorder=1)
    if bad:
        ax.vlines(bad, 0, 1, transform=ax.get_xaxis_transform(), colors="#d62728", linewidths=1.2,
                  zorder=1)


def _new_figure(rows: int, row_height_in: float, sharex: bool = True):
    fig = Figure(figsize=(WIDTH_IN, max(1.8, rows * row_height_in + 0.6)), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    fig.subplots_adjust(**MARGINS, hspace=0.35, top=1 - 0.35 / fig.get_figheight(),
                        bottom=0.55 / fig.get_figheight())
    return fig, axes


def _finish_time_axis(data: RunData, axes) -> None:
    end_h = data.duration_s / 3600.0 if data.duration_s > 0 else 1.0
    axes[-1].set_xlim(0, end_h)
    axes[-1].set_xlabel("scenario time (h)")
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)


def slo_of(data: RunData, service: str) -> tuple[float | None, str]:
    """(budget ms, percentile label) from summary.json, falling back to run.json."""
    slo = data.summary.get("services", {}).get(service, {}).get("slo")
    if not isinstance(slo, dict):
        slo = next((s.get("slo") for s in data.run.get("services", []) if str(s.get("id")) == service), None)
    if isinstance(slo, dict) and isinstance(slo.get("latency_ms"), (int, float)):
        pct = slo.get("percentile")
        return float(slo["latency_ms"]), (f"p{pct:g}" if isinstance(pct, (int, float)) else "")
    series = data.latency.get(service)
    if series is not None and np.isfinite(series.slo_ms).any():
        return float(np.nanmin(series.slo_ms)), ""
    return None, ""


def latency_figure(data: RunData, colours: dict[str, str]) -> Figure:
    services = data.service_ids
    fig, axes = _new_figure(len(services), 1.7)
    moves = migrations(data)
    for ax, service in zip(axes, services):
        colour = colours[service]
        series = data.latency.get(service)
        if series is not None and len(series.t_s):
            starts = _bin_starts(len(series.t_s))
            t_h = series.t_s[starts] / 3600.0
            for key in PERCENTILES:
                label, style, width = PERCENTILE_STYLE[key]
                with np.errstate(invalid="ignore"):
                    values = np.fmax.reduceat(series.percentiles_ms[key], starts)
                ax.plot(*_with_end(t_h, values, data.duration_s / 3600.0), linestyle=style, linewidth=width, color=colour, label=label,
                        drawstyle="steps-post")
        else:
            ax.text(0.5, 0.5, "no latency rows", transform=ax.transAxes, ha="center", va="center")
        budget, pct = slo_of(data, service)
        if budget is not None:
            ax.axhline(budget, color="#d62728", linewidth=1.0, label=f"SLO {pct} {budget:g} ms".replace("  ", " "))
        _mark_migrations(ax, [m for m in moves if m[1] == service], colour)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{service}: latency (worst region)", loc="left", fontsize=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
    _finish_time_axis(data, axes)
    return fig


def placements_figure(data: RunData, colours: dict[str, str]) -> Figure:
    sites = data.site_ids
    services = data.service_ids
    fig, axes = _new_figure(1, max(1.6, 0.35 * len(sites) + 0.4))
    ax = axes[0]
    end_s = data.duration_s
    n = len(services)
    spread = min(0.6 / max(n, 1), 0.12)
    index = {s: i for i, s in enumerate(sites)}
    for i, service in enumerate(services):
        steps = data.placements.get(service, [])
        if not steps:
            continue
        t_h = [t / 3600.0 for t, _ in steps] + [max(end_s, steps[-1][0]) / 3600.0]
        y = [index[site] + (i - (n - 1) / 2) * spread for _, site in steps]
        y.append(y[-1])
        ax.step(t_h, y, where="post", color=colours[service], linewidth=1.6, label=service)
    ax.set_yticks(range(len(sites)), sites)
    ax.set_ylim(-0.6, len(sites) - 0.4)
    ax.set_title("placements: site serving each service", loc="left", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
    _mark_migrations(ax, migrations(data))
    _finish_time_axis(data, axes)
    return fig


def power_figure(data: RunData) -> Figure:
    fig, axes = _new_figure(2, 2.0)
    # Sites in one power area share the area's signal: one line per area, labelled with its sites.
    areas: dict[str, list[str]] = {}
    for site, series in data.signals.items():
        areas.setdefault(series.area or site, []).append(site)
    colours = site_colours(list(areas))
    for area, sites in areas.items():
        series = data.signals[sites[0]]
        if not len(series.t_s):
            continue
        starts = _bin_starts(len(series.t_s))
        t_h = series.t_s[starts] / 3600.0
        label = f"{area}: {', '.join(sites)}" if area not in sites else area
        end_h = data.duration_s / 3600.0
        axes[0].plot(*_with_end(t_h, _nanmean_bins(series.surplus_mw, starts), end_h), color=colours[area], label=label,
                     drawstyle="steps-post", linewidth=1.2)
        axes[1].plot(*_with_end(t_h, _nanmean_bins(series.carbon_g_per_kwh, starts), end_h), color=colours[area],
                     label=label, drawstyle="steps-post", linewidth=1.2)
    axes[0].set_ylabel("MW")
    axes[0].set_title("surplus (curtailed) renewable power per area", loc="left", fontsize=9)
    axes[1].set_ylabel("g CO2/kWh")
    axes[1].set_title("carbon intensity of the grid mix per area", loc="left", fontsize=9)
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
        _mark_migrations(ax, migrations(data))
    _finish_time_axis(data, axes)
    return fig


ENERGY_METRICS = (("kwh", "energy (kWh)"), ("surplus_kwh", "from absorbed surplus (kWh)"),
                  ("kg_co2", "emissions (kg CO2)"))
ENERGY_RUNS = ("policy", "static", "oracle")


def energy_figure(data: RunData) -> Figure:
    energy = data.summary.get("energy", {})
    fig = Figure(figsize=(WIDTH_IN, 3.0), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(ENERGY_METRICS))
    fig.subplots_adjust(left=0.06, right=0.98, wspace=0.35, bottom=0.12, top=0.85)
    bar_colours = {"policy": "#1f77b4", "static": "#7f7f7f", "oracle": "#2ca02c"}
    for ax, (key, title) in zip(axes, ENERGY_METRICS):
        values = []
        for run in ENERGY_RUNS:
            value = energy.get(run, {}).get(key) if isinstance(energy.get(run), dict) else None
            values.append(float(value) if isinstance(value, (int, float)) else math.nan)
        bars = ax.bar(ENERGY_RUNS, np.nan_to_num(values), color=[bar_colours[r] for r in ENERGY_RUNS])
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if math.isnan(value) else f"{value:.4g}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.15)
    return fig


def requests_figure(data: RunData, colours: dict[str, str]) -> Figure:
    """Latency CDF of every answered request, per service (log x)."""
    fig = Figure(figsize=(WIDTH_IN, 3.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    fig.subplots_adjust(**MARGINS, bottom=0.16, top=0.9)
    for service in data.service_ids:
        stats = data.requests.get(service)
        if stats is None or not len(stats.latency_ms):
            continue
        values = np.sort(stats.latency_ms)
        # Quantile points are enough for the eye; the tail (last 1 %) is kept in full.
        n = len(values)
        idx = np.unique(np.r_[np.linspace(0, n - 1, min(n, 1500)).astype(int),
                              np.arange(max(0, n - n // 100 - 1), n)])
        ax.plot(values[idx], (idx + 1) / n, color=colours[service], label=service, linewidth=1.3)
        budget, _ = slo_of(data, service)
        if budget is not None:
            ax.axvline(budget, color=colours[service], linestyle=":", linewidth=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("request latency (ms; dotted: SLO)")
    ax.set_ylabel("share of requests")
    ax.set_title("latency of every answered request", loc="left", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
    return fig


def engine_figure(data: RunData) -> Figure:
    """When the delay engine ran behind: each episode of frames sent over 0.5 ms late,
    at its start, by its worst lateness (dot area: its frames), with the migrations."""
    fig, axes = _new_figure(1, 1.9)
    ax = axes[0]
    late = data.engine
    if late is not None and len(late.t_s):
        area = 4 + 40 * np.sqrt(late.episode_frames / max(1, int(late.episode_frames.max())))
        ax.scatter(late.t_s / 3600.0, late.late_ms, s=area, color="#d62728", alpha=0.35, linewidths=0, zorder=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(FixedLocator([0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "none logged: the engine kept time", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="0.4")
    ax.set_ylabel("worst lateness (ms)")
    ax.set_title("delay engine running behind: episodes of frames sent over 0.5 ms late (area: frames)",
                 loc="left", fontsize=9)
    _mark_migrations(ax, migrations(data))
    _finish_time_axis(data, axes)
    return fig


def make_plots(data: RunData, out_dir: Path) -> dict[str, Path]:
    """Write every plot into ``out_dir``; returns name -> path in report order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = service_colours(data.service_ids)
    figures = {
        "latency": lambda: latency_figure(data, colours),
        "placements": lambda: placements_figure(data, colours),
        "power": lambda: power_figure(data),
        "energy": lambda: energy_figure(data),
    }
    if any(len(s.latency_ms) for s in data.requests.values()):
        figures["requests"] = lambda: requests_figure(data, colours)
    if data.engine is not None:
        figures["engine"] = lambda: engine_figure(data)
    paths = {}
    for name, build in figures.items():
        path = out_dir / f"{name}.png"
        build().savefig(path, dpi=DPI)
        paths[name] = path
    return paths
