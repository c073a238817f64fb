"""``twin report``: a synthetic run directory in, plots and a self-contained report.html out.

The run directories are written here by :func:`write_run_dir` straight from the
contract (docs/run-directory.md), not by the runner, so the report is tested on its
own and a change to the contract shows up as a failure here.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest

from twin.cli import main
from twin.errors import TwinError
from twin.experiment.report import build_report
from twin.experiment.rundata import load_run

HOSTILE = '<script>alert("x")</script>'
SITES = [
    {"id": "fuk", "name": "Fukuoka", "area": "kyushu", "lat": 33.59, "lon": 130.40, "cpus": 16, "pue": 1.3},
    {"id": "osa", "name": "Osaka", "area": "kansai", "lat": 34.69, "lon": 135.50, "cpus": 32, "pue": 1.4},
    {"id": "hkd", "name": "Ishikari", "area": "hokkaido", "lat": 43.17, "lon": 141.32, "cpus": 16, "pue": 1.2},
]
SLOT_S = 1800
SLOTS = 48          # a day at 30-minute decision intervals
# farm follows the surplus: osa -> fuk at 10:00 (Kyushu solar), fuk -> hkd at 20:00 (Hokkaido wind).
FARM_MOVES = [(10 * 3600, "osa", "fuk"), (20 * 3600, "fuk", "hkd")]


def farm_site(t_s: int) -> str:
    site = "osa"
    for start, _, dst in FARM_MOVES:
        if t_s >= start:
            site = dst
    return site


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_run_dir(root: Path, *, mode: str = "model-only", requests: bool = False, probes: bool = False,
                  scenario: str = "spring-day") -> Path:
    """A small complete run directory: 3 sites, 2 services, one day, two migrations of farm."""
    emulated = mode == "emulated"
    root.mkdir(parents=True, exist_ok=True)
    services = [
        {"id": "drive-assist", "model": "sensor-fusion-mlp",
         "slo": {"latency_ms": 8.0, "percentile": 99.9, "jitter_ms": 1.0},
         "initial_site": "fuk", "demand": [{"region": "fuk", "rate": 50.0}]},
        {"id": "farm", "model": "crop-cnn", "slo": {"latency_ms": 200.0, "percentile": 99.0},
         "initial_site": "osa", "demand": [{"region": "osa", "rate": 5.0}, {"region": "fuk", "rate": 2.0}]},
    ]
    run = {
        "format": 1, "scenario": scenario, "topology": "kyushu-kansai-hokkaido", "mode": mode,
        "description": f"hostile {HOSTILE}",
        "policy": {"name": "hysteresis", "decision_interval": SLOT_S, "min_dwell": 3600,
                   "hysteresis": 0.1, "migration_cost": 0.05},
        "duration": SLOTS * SLOT_S, "time_compression": 288 if emulated else None,
        "started": "2026-11-27T10:00:00Z", "wall_seconds": 312.5 if emulated else 0.4,
        "link_backend": "userspace" if emulated else None,
        "container_engine": "podman 4.3.1 (runc)" if emulated else None,
        "sites": SITES,
        "spans": [{"ends": ["fuk", "osa"], "length_km": 600, "wavelengths": 8},
                  {"ends": ["osa", "hkd"], "length_km": 1300, "wavelengths": 8}],
        "lightpaths": [
            {"src": "fuk", "dst": "osa", "route": ["fuk", "osa"], "wavelength": 0, "one_way_ms": 3.1},
            {"src": "osa", "dst": "hkd", "route": ["osa", "hkd"], "wavelength": 0, "one_way_ms": 6.5},
            {"src": "fuk", "dst": "hkd", "route": ["fuk", "osa", "hkd"], "wavelength": 1, "one_way_ms": 9.6},
        ],
        "services": services,
    }
    (root / "run.json").write_text(json.dumps(run, indent=2))

    signals, placements, latency, events = [], [], [], []
    for slot in range(SLOTS):
        t = slot * SLOT_S
        hour = t / 3600
        solar = max(0.0, 400.0 * (1 - abs(hour - 12.5) / 3.5))      # Kyushu curtails around midday
        wind = 150.0 if hour >= 19 else 0.0                        # Hokkaido wind at night
        signals += [[t, "fuk", "kyushu", solar, 0.3 + solar / 1000, 480 - solar / 2, ""],
                    [t, "osa", "kansai", 0.0, 0.15, 520, 12.5],
                    [t, "hkd", "hokkaido", wind, 0.25, 600 - wind, ""]]
        placements += [[t, "drive-assist", "fuk"], [t, "farm", farm_site(t)]]
        latency.append([t, "drive-assist", "fuk", "fuk", 90000, 0, 1.1, 1.3, 1.6, 2.0 + slot / 100, 8.0])
        site = farm_site(t)
        far = 9.0 if site == "hkd" else 3.0
        latency += [[t, "farm", "osa", site, 9000, 0, 40 + far, 55 + far, 70 + far, 90 + far, 200.0],
                    [t, "farm", "fuk", site, 3600, 0, 41 + far, 56 + far, 71 + far, 100 + far + slot, 200.0]]
        stay = all(start != t for start, _, _ in FARM_MOVES)
        events.append({"t": t, "kind": "decision", "service": "drive-assist", "from": "fuk", "to": "fuk",
                       "reason": "only fuk meets p99.9 8 ms", "scores": {"fuk": 0.5}, "feasible": ["fuk"]})
        if stay:
            events.append({"t": t, "kind": "decision", "service": "farm", "from": site, "to": site,
                           "reason": "min dwell", "scores": {site: 0.2}, "feasible": ["fuk", "osa", "hkd"]})
    for start, src, dst in FARM_MOVES:
        events.append({"t": start, "kind": "decision", "service": "farm", "from": src, "to": dst,
                       "reason": f"surplus at {dst} {HOSTILE}", "scores": {dst: 0.9, src: 0.1},
                       "feasible": ["fuk", "osa", "hkd"]})
        events.append({"t": start + 1, "kind": "migration", "service": "farm", "from": src, "to": dst,
                       "strategy": "make-before-break", "started": start + 1, "finished": start + 3.1,
                       "duration_s": 2.1, "state_bytes": 1048576, "transfer_s": 0.4,
                       "interruption_ms": 3.2, "failed_requests": 0, "ok": True, "error": None})
    events.append({"t": 43200, "kind": "event", "event": "fibre-cut", "span": ["osa", "hkd"]})
    events.append({"t": 43300, "kind": "warning", "message": f"probe late {HOSTILE}"})
    events.sort(key=lambda e: e["t"])
    if emulated:
        for e in events:
            e["wall"] = 1_790_000_000 + e["t"] / 288
    (root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))

    write_csv(root / "signals.csv", ["t", "site", "area", "surplus_mw", "renewable_share",
                                     "carbon_g_per_kwh", "price_yen_per_kwh"], signals)
    write_csv(root / "placements.csv", ["t", "service", "site"], placements)
    write_csv(root / "latency.csv", ["t", "service", "region", "site", "requests", "failed", "p50_ms",
                                     "p95_ms", "p99_ms", "p999_ms", "slo_ms"], latency)

    summary = {
        "format": 1, "scenario": scenario, "mode": mode, "policy": "hysteresis", "wall_seconds": 312.5,
        "services": {
            "drive-assist": {"requests": 4_320_000, "failed": 0, "failed_by_migration": 0,
                             "p50_ms": 1.1, "p95_ms": 1.3, "p99_ms": 1.6, "p999_ms": 2.47,
                             "jitter_sd_ms": 0.2, "jitter_p99_p50_ms": 0.5, "slo": services[0]["slo"],
                             "slo_met": True, "goodput": 0.9999, "migrations": 0,
                             "interruption_ms_max": 0.0, "sites": {"fuk": 1.0}},
            "farm": {"requests": 604_800, "failed": 3, "failed_by_migration": 0,
                     "p50_ms": 44.0, "p95_ms": 59.0, "p99_ms": 79.0, "p999_ms": 156.0,
                     "jitter_sd_ms": 5.0, "jitter_p99_p50_ms": 35.0, "slo": services[1]["slo"],
                     "slo_met": False, "goodput": 0.98, "migrations": 2, "interruption_ms_max": 3.2,
                     "sites": {"osa": 20 / 48, "fuk": 20 / 48, "hkd": 8 / 48}},
        },
        "energy": {"policy": {"kwh": 12.3, "surplus_kwh": 5.1, "kg_co2": 3.2},
                   "static": {"kwh": 12.3, "surplus_kwh": 0.8, "kg_co2": 4.9},
                   "oracle": {"kwh": 12.3, "surplus_kwh": 6.0, "kg_co2": 2.9}},
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))

    if requests:
        for service, site, base in (("drive-assist", "fuk", 1.0), ("farm", "osa", 40.0)):
            rows = [[i * 60, site, site, base + (i % 17) / 10, "ok"] for i in range(1000)]
            rows += [[61_000, site, "", "", "timeout"], [61_100, site, "", "", "refused"]]
            write_csv(root / "requests" / f"{service}.csv", ["t", "region", "site", "latency_ms", "outcome"],
                      rows)
    if probes:
        rows = []
        for i in range(200):
            rows.append([i * 400, "fuk", "osa", "apn", 3.15 + (i % 5) / 100, 3.14, 6.3])
            rows.append([i * 400, "fuk", "osa", "packet", 3.6 + (i % 7) / 10, 3.7, 7.4])
        write_csv(root / "probes.csv", ["t", "src", "dst", "plane", "forward_ms", "backward_ms", "rtt_ms"], rows)
    return root


def read_html(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


EXTERNAL = re.compile(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//""",
                      re.IGNORECASE)


# --------------------------------------------------------------------------- the report


@pytest.mark.parametrize("mode,requests,probes", [("model-only", False, False), ("emulated", True, True),
                                                  ("emulated", False, True)])
def test_report_is_self_contained_and_names_everything(tmp_path, mode, requests, probes):
    run_dir = write_run_dir(tmp_path / "run", mode=mode, requests=requests, probes=probes)
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    html = read_html(run_dir)
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    for service in ("drive-assist", "farm"):
        assert service in html
    for site in SITES:
        assert f">{site['id']}</text>" in html          # labelled on the map
    assert '<svg id="map"' in html
    assert f"<td>{mode}</td>" in html
    if mode == "emulated":
        assert "podman 4.3.1 (runc)" in html and "userspace" in html
    else:
        assert "none (model-only)" in html
    assert ("Requests (every request recorded)" in html) == requests
    assert ("<h2>Probes</h2>" in html) == probes


def test_every_image_is_an_inlined_png(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", mode="emulated", requests=True, probes=True)
    build_report(run_dir)
    html = read_html(run_dir)
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 5                       # latency, placements, power, energy, requests
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert plots == ["energy.png", "latency.png", "placements.png", "power.png", "requests.png"]
    for png in (run_dir / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_only_run_has_no_requests_plot(tmp_path):
    run_dir = write_run_dir(tmp_path / "run")
    build_report(run_dir)
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "energy.png", "latency.png", "placements.png", "power.png"]


def test_hostile_strings_are_escaped(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", scenario=f"day {HOSTILE}")
    build_report(run_dir)
    html = read_html(run_dir)
    assert "<script" not in html.lower()
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert html.count(escaped) >= 4   # title, heading, header table, decision reasons, warning


def test_report_rebuilds_over_an_old_one(tmp_path):
    run_dir = write_run_dir(tmp_path / "run")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "latency.png").write_bytes(b"stale")
    (run_dir / "report.html").write_text("stale")
    build_report(run_dir)
    assert read_html(run_dir).startswith("<!DOCTYPE html>")
    assert (run_dir / "plots" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run_dir / "report.html.tmp").exists()


def test_services_table_shows_summary_figures(tmp_path):
    run_dir = write_run_dir(tmp_path / "run")
    build_report(run_dir)
    html = read_html(run_dir)
    table = html.split("<h2>Services</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    farm = next(r for r in rows if "farm" in r)
    drive = next(r for r in rows if "drive-assist" in r)
    assert "604,800" in farm and ">156<" in farm and ">missed<" in farm and ">0.9800<" in farm
    assert "p99 &le; 200 ms" in farm
    assert "4,320,000" in drive and ">2.47<" in drive and ">met<" in drive
    assert "p99.9 &le; 8 ms, jitter &le; 1 ms" in drive


def test_energy_gain_is_stated_in_words(tmp_path):
    run_dir = write_run_dir(tmp_path / "run")
    build_report(run_dir)
    html = read_html(run_dir)
    # policy 5.1 vs static 0.8 kWh from surplus: 4.3 more, (5.1-0.8)/(6.0-0.8) = 83 % of the oracle's gain;
    # CO2 3.2 vs 4.9 kg: (4.9-3.2)/4.9 = 34.7 % less.
    assert "5.1 kWh from absorbed surplus, 4.3 kWh more than static (0.8 kWh)" in html
    assert "83% of what the oracle gained over static" in html
    assert "34.7% less than static" in html


def test_decision_log_lists_migrations_and_moves(tmp_path):
    run_dir = write_run_dir(tmp_path / "run")
    build_report(run_dir)
    log = read_html(run_dir).split("<h2>Decision log</h2>", 1)[1]
    assert log.count("<td>migration</td>") == 2
    assert "osa &rarr; fuk" in log and "fuk &rarr; hkd" in log
    assert "3.2 ms" in log and "1,048,576 B" in log
    assert "fibre-cut" in log
    assert "Showing" not in log     # 48 + 46 + 2 + 2 + 2 entries fit under the cap


def test_decision_log_is_capped_with_a_note(tmp_path, monkeypatch):
    from twin.experiment import report

    monkeypatch.setattr(report, "DECISION_LOG_ROWS", 10)
    run_dir = write_run_dir(tmp_path / "run")
    build_report(run_dir)
    log = read_html(run_dir).split("<h2>Decision log</h2>", 1)[1]
    total = len((run_dir / "events.jsonl").read_text().splitlines())
    assert f"Showing 10 of {total} entries" in log
    assert len(re.findall(r"<tr><td>", log)) == 10
    # what matters is kept: both migrations, both moves, the event and the warning
    assert log.count("<td>migration</td>") == 2 and "fibre-cut" in log and "warning" in log


def test_map_shows_shares_and_migration_arrows(tmp_path):
    run_dir = write_run_dir(tmp_path / "run")
    build_report(run_dir)
    svg = read_html(run_dir).split('<svg id="map"', 1)[1].split("</svg>", 1)[0]
    assert "farm at osa: 42% of the time" in svg and "farm at hkd: 17% of the time" in svg
    assert "drive-assist at fuk: 100% of the time" in svg
    assert "farm: osa to fuk, 1 migration" in svg and "farm: fuk to hkd, 1 migration" in svg
    assert svg.count("lightpath ") == 3
    assert "fuk-osa: 600 km, 8 wavelengths" in svg


# --------------------------------------------------------------------------- reading the run directory


def test_latency_keeps_the_worst_region_per_interval(tmp_path):
    data = load_run(write_run_dir(tmp_path / "run"))
    farm = data.latency["farm"]
    assert len(farm.t_s) == SLOTS
    slot = 30
    # regions osa (90 + far) and fuk (100 + far + slot) at the same t: the fuk row is worse
    far = 9.0 if farm_site(slot * SLOT_S) == "hkd" else 3.0
    assert farm.percentiles_ms["p999_ms"][slot] == 100 + far + slot
    assert farm.percentiles_ms["p50_ms"][slot] == 41 + far
    assert farm.requests[slot] == 9000 + 3600


def test_placements_are_read_as_changes_and_shares(tmp_path):
    data = load_run(write_run_dir(tmp_path / "run"))
    assert data.placements["farm"] == [(0.0, "osa"), (36000.0, "fuk"), (72000.0, "hkd")]
    assert data.placement_share["farm"] == {"osa": 20 / 48, "fuk": 20 / 48, "hkd": 8 / 48}
    assert data.service_ids == ["drive-assist", "farm"]
    assert data.duration_s == SLOTS * SLOT_S


def test_empty_price_cells_read_as_nan(tmp_path):
    data = load_run(write_run_dir(tmp_path / "run"))
    assert data.signals["osa"].price_yen_per_kwh[0] == 12.5
    assert data.signals["fuk"].price_yen_per_kwh[0] != data.signals["fuk"].price_yen_per_kwh[0]


# --------------------------------------------------------------------------- malformed run directories


def broken(tmp_path: Path, name: str, content: str | None) -> Path:
    run_dir = write_run_dir(tmp_path / "run")
    if content is None:
        (run_dir / name).unlink()
    else:
        (run_dir / name).write_text(content)
    return run_dir


@pytest.mark.parametrize("name,content,expected", [
    ("summary.json", None, "summary.json: missing; run `twin run SCENARIO --out DIR` again"),
    ("run.json", None, "run.json: missing"),
    ("events.jsonl", None, "events.jsonl: missing"),
    ("signals.csv", None, "signals.csv: missing"),
    ("summary.json", "{not json", "summary.json: not valid JSON"),
    ("summary.json", "[1, 2]", "summary.json: expected a JSON object"),
    ("summary.json", '{"services": {}}', "summary.json: missing key(s) energy"),
    ("run.json", '{"scenario": "s", "mode": "m", "sites": [{"name": "x"}], "services": []}',
     "run.json: 'sites' must be a list of objects with an 'id'"),
    ("latency.csv", "t,service,p50_ms\n0,farm,1\n",
     "latency.csv:1: header lacks region, site, requests, failed, p95_ms, p99_ms, p999_ms, slo_ms; "
     "the header must be t,service,region,site,requests,failed,p50_ms,p95_ms,p99_ms,p999_ms,slo_ms"),
    ("placements.csv", "", "placements.csv: empty, expected the header t,service,site"),
    ("placements.csv", "t,service,site\n0,farm,osa\n1800,farm\n", "placements.csv:3: 2 fields where the header has 3"),
    ("placements.csv", "t,service,site\n0,farm,osa\nsoon,farm,fuk\n", "placements.csv:3: column t: 'soon' is not a number"),
    ("events.jsonl", '{"t": 0, "kind": "decision"}\nnot json\n', "events.jsonl:2: not a JSON object"),
    ("events.jsonl", '{"kind": "decision"}\n', "events.jsonl:1: each line needs a number 't' and a 'kind'"),
])
def test_malformed_run_directory_names_the_file(tmp_path, name, content, expected):
    run_dir = broken(tmp_path, name, content)
    with pytest.raises(TwinError) as err:
        build_report(run_dir)
    message = str(err.value)
    assert message.startswith(str(run_dir / name))
    assert expected in message
    assert "\n" not in message
    assert not (run_dir / "report.html").exists()


def test_latency_number_error_names_the_line(tmp_path):
    run_dir = write_run_dir(tmp_path / "run")
    lines = (run_dir / "latency.csv").read_text().splitlines()
    lines[5] = lines[5].replace(",0,", ",x,", 1)
    (run_dir / "latency.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(TwinError, match=r"latency\.csv:6: column failed: 'x' is not a number"):
        build_report(run_dir)


def test_bad_request_outcome_is_rejected(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", mode="emulated", requests=True)
    with (run_dir / "requests" / "farm.csv").open("a") as f:
        f.write("62000,osa,,,lost\n")
    with pytest.raises(TwinError, match=r"requests/farm\.csv: outcome 'lost' is not one of ok, timeout"):
        build_report(run_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(TwinError, match="no such run directory"):
        build_report(tmp_path / "nope")


# --------------------------------------------------------------------------- the CLI


def test_cli_report_prints_the_path(tmp_path, capsys):
    run_dir = write_run_dir(tmp_path / "run")
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    assert (run_dir / "report.html").is_file()


def test_cli_report_error_is_one_line_exit_2(tmp_path, capsys):
    run_dir = broken(tmp_path, "summary.json", None)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"twin: error: {run_dir / 'summary.json'}: missing; ")


def test_long_runs_are_binned_and_keep_the_worst_latency(tmp_path):
    from twin.experiment.plots import MAX_POINTS, latency_figure, service_colours

    run_dir = write_run_dir(tmp_path / "run")
    slots = 5000      # more than MAX_POINTS: the plot bins them
    rows = [[i * SLOT_S, "farm", "osa", "osa", 10, 0, 1.0, 2.0, 3.0, 4.0 if i != 2345 else 99.0, 200.0]
            for i in range(slots)]
    write_csv(run_dir / "latency.csv", ["t", "service", "region", "site", "requests", "failed", "p50_ms",
                                        "p95_ms", "p99_ms", "p999_ms", "slo_ms"], rows)
    run = json.loads((run_dir / "run.json").read_text())
    run["duration"] = slots * SLOT_S
    (run_dir / "run.json").write_text(json.dumps(run))
    data = load_run(run_dir)
    fig = latency_figure(data, service_colours(data.service_ids))
    farm_axes = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("farm"))
    p999 = next(line for line in farm_axes.lines if line.get_label() == "p99.9")
    assert len(p999.get_ydata()) <= MAX_POINTS + 1
    assert max(p999.get_ydata()) == 99.0          # a one-interval spike survives the binning
    assert p999.get_xdata()[-1] == data.duration_s / 3600


# --------------------------------------------------------------------------- the delay engine's account


def write_engine(run_dir: Path, start_unix: float = 1_800_000_000.0) -> Path:
    """engine.json with two late episodes on one span, 1 h and 2 h into the day (288x)."""
    run = json.loads((run_dir / "run.json").read_text())
    run["start_unix"] = start_unix
    (run_dir / "run.json").write_text(json.dumps(run))
    at = [start_unix + h * 3600 / 288 for h in (1, 2)]
    (run_dir / "engine.json").write_text(json.dumps({"links": {
        "fuk_osa": {"a->b": {"frames": 9000, "late_frames": 40, "max_lateness_us": 3100.0,
                             "late_episodes": [[at[0], at[0] + 0.004, 30, 3100.0],
                                               [at[1], at[1] + 0.001, 10, 900.0],
                                               [start_unix - 1.0, start_unix - 1.0, 1, 600.0]]},  # warm-up
                    "b->a": {"frames": 1000, "late_frames": 0, "max_lateness_us": 90.0, "late_episodes": []}}},
        "transit": {"transit_carry": True, "carried_frames": 0}}))
    return run_dir


def test_engine_account_is_read_in_scenario_time_and_reported(tmp_path):
    run_dir = write_engine(write_run_dir(tmp_path / "run", mode="emulated", requests=True, probes=True))
    engine = load_run(run_dir).engine
    assert (engine.frames, engine.late_frames, engine.max_late_ms) == (10000, 40, 3.1)
    assert engine.t_s.tolist() == pytest.approx([3600.0, 7200.0])  # the warm-up episode left out
    assert engine.late_ms.tolist() == [3.1, 0.9] and engine.episode_frames.tolist() == [30, 10]
    assert engine.late_by_direction == {"fuk_osa:a->b": 40, "fuk_osa:b->a": 0}
    build_report(run_dir)
    html = read_html(run_dir)
    assert "<h2>Emulator</h2>" in html and "40 (0.4%)" in html and "3.1 ms late" in html
    assert "fuk_osa:a-&gt;b" in html and "fuk_osa:b-&gt;a" not in html  # only directions that ran late
    assert (run_dir / "plots" / "engine.png").stat().st_size > 1000


def test_no_engine_json_no_emulator_section(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", mode="emulated", requests=True)
    build_report(run_dir)
    assert "<h2>Emulator</h2>" not in read_html(run_dir)
    assert not (run_dir / "plots" / "engine.png").exists()


def test_malformed_engine_json_names_the_file(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", mode="emulated")
    (run_dir / "engine.json").write_text(json.dumps({"links": {"fuk_osa": {"a->b": {"late_frames": 1}}}}))
    with pytest.raises(TwinError) as err:
        build_report(run_dir)
    assert str(err.value).startswith(str(run_dir / "engine.json")) and "delay engine" in str(err.value)
