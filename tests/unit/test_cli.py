"""The ``twin`` command line: exit codes, one-line errors, JSON keys, schema, shipped files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from twin.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "topologies").glob("*.yaml")) + sorted((REPO / "scenarios").glob("*.yaml"))
FIXTURES = REPO / "tests" / "fixtures" / "zoo"

BAD = """\
kind: topology
name: t
packet_network: {router_delay: 0us, jitter: 1ms, capacity: 1Gbit}
sites:
  - {id: a, name: A, area: x, lat: 0, lon: 0, compute: {cpus: 1, memory: 1GiB}}
  - {id: B, name: B, area: x, lat: 0, lon: 1, compute: {cpus: 1, memory: 1GiB}}
spans:
  - {ends: [a, b], length: 10km, wavelengths: 2, rate: 10Mbit}
"""


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twin", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_file_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_shipped_files_exist():
    names = {p.name for p in SHIPPED}
    assert {"japan.yaml", "fukuoka-osaka.yaml", "triangle.yaml", "spring-day.yaml"} <= names


def test_validate_exit_2_with_one_line_per_problem(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(BAD)
    assert main(["validate", "bad.yaml", str(REPO / "topologies" / "triangle.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "bad.yaml:6: sites.1.id: site id 'B' is not allowed; use 1-5 characters of lowercase letters, "
        "digits and '-', starting with a letter and not ending with '-' (ids become Linux interface and "
        "process names, limited to 15 characters)",
    ]
    assert "triangle.yaml: ok" in captured.out


def test_validate_reports_cross_field_problems_together(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(BAD.replace("id: B", "id: c"))
    assert main(["validate", "-q", "bad.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "bad.yaml:8: spans.0.ends.1: unknown site 'b'; use one of the site ids: a, c",
        "bad.yaml:3: packet_network.jitter: jitter needs a delay to vary around; "
        "set packet_network.router_delay above 0",
    ]


def test_no_traceback_without_verbose_and_one_with_it(tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD)
    quiet = run("plan", "bad.yaml", cwd=tmp_path)
    assert quiet.returncode == 2
    assert "Traceback" not in quiet.stderr
    assert len(quiet.stderr.splitlines()) == 1
    loud = run("-v", "plan", "bad.yaml", cwd=tmp_path)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_other_errors_exit_1_with_one_line(capsys):
    assert main(["plan", str(REPO / "topologies" / "triangle.yaml"), "--pairs", "a:z"]) == 1
    err = capsys.readouterr().err
    assert err == "twin: error: --pairs: unknown site 'z'; use one of a, b, c\n"


def test_missing_file_exits_2(capsys):
    assert main(["validate", "no/such/file.yaml"]) == 2
    assert capsys.readouterr().err.startswith("no/such/file.yaml: (top level): cannot read file")


def test_plan_json_keys(capsys):
    triangle = str(REPO / "topologies" / "triangle.yaml")
    assert main(["plan", triangle, "--json", "--pairs", "a:c,a:c,a:c,a:c,a:b"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, list) and len(doc) == 5
    for entry in doc[:4]:
        assert set(entry) == {"src", "dst", "route", "wavelength", "length_km", "one_way_ms", "rtt_ms"}
    assert set(doc[4]) == {"src", "dst", "blocked"}
    assert doc[0] == {"src": "a", "dst": "c", "route": ["a", "c"], "wavelength": 0, "length_km": 306.122,
                      "one_way_ms": 1.5, "rtt_ms": 3.0}


def test_plan_json_with_scenario(capsys):
    assert main(["plan", str(REPO / "topologies" / "japan.yaml"), "--json",
                 "--scenario", str(REPO / "scenarios" / "spring-day.yaml")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"lightpaths", "order", "slo"}
    assert len(doc["lightpaths"]) == 45 and doc["order"] == "file"
    assert set(doc["slo"][0]) == {"service", "region", "site", "rtt_ms", "expected_ms", "budget_ms", "meets"}


def test_plan_table_states_order_and_blocking(capsys):
    assert main(["plan", str(REPO / "topologies" / "japan.yaml"), "--order", "longest-first"]) == 0
    out = capsys.readouterr().out
    assert "allocated in longest-first order on one occupancy map" in out
    assert "blocked by the lightpaths allocated before them" in out


def test_plan_with_scenario_prints_slo_table(capsys):
    assert main(["plan", str(REPO / "topologies" / "japan.yaml"),
                 "--scenario", str(REPO / "scenarios" / "spring-day.yaml")]) == 0
    out = capsys.readouterr().out
    assert "Sites meeting each service's latency SLO" in out
    assert "drive-assist  fuk       12         fuk(1.0) hij(6.4) tak(9.8)" in out  # 2 round trips for 16 KiB, kept alive


def test_schema_matches_checked_in_files(tmp_path, capsys):
    assert main(["schema", "-o", str(tmp_path)]) == 0
    for kind in ("topology", "scenario"):
        generated = (tmp_path / f"{kind}.schema.json").read_text()
        checked_in = (REPO / "topologies" / f"{kind}.schema.json").read_text()
        assert generated == checked_in, f"run `twin schema` to regenerate topologies/{kind}.schema.json"


def test_import_zoo_writes_a_valid_topology(tmp_path, capsys):
    out = tmp_path / "mini.yaml"
    assert main(["import", "zoo", str(FIXTURES / "mini.graphml"), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert main(["validate", str(out)]) == 0


def test_import_zoo_without_coordinates_fails_then_succeeds_with_edge_length(tmp_path, capsys):
    out = tmp_path / "nc.yaml"
    assert main(["import", "zoo", str(FIXTURES / "nocoords.graphml"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '"Hidden PoP", "Secret Site"' in err
    assert not out.exists()
    assert main(["import", "zoo", str(FIXTURES / "nocoords.graphml"), "-o", "-", "--edge-length", "80"]) == 0
    assert capsys.readouterr().out.startswith("# Imported from the Internet Topology Zoo")


def test_usage_errors_exit_2():
    result = run("plan")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_run_summary_states_the_engine_running_behind(tmp_path):
    from twin.cli import format_run_summary

    summary = {"services": {}, "energy": {},
               "engine": {"frames": 1253199, "late_frames": 47162, "max_lateness_ms": 8.801}}
    text = format_run_summary(summary, tmp_path)
    assert "delay engine: 47,162 of 1,253,199 frames sent over 0.5 ms late (worst 8.8 ms)" in text
    assert "delay engine" not in format_run_summary({"services": {}, "energy": {}}, tmp_path)


def test_run_summary_says_which_slow_requests_met_the_engine_behind(tmp_path):
    from twin.cli import format_run_summary

    regions = {"fuk": {"slo_percentile_ms": 9.9, "slo_met": True, "over_budget": 0, "over_budget_engine_behind": 0},
               "hij": {"slo_percentile_ms": 16.1, "slo_met": False, "over_budget": 58,
                       "over_budget_engine_behind": 51}}
    summary = {"services": {"drive": {"requests": 10, "slo": {"latency_ms": 12.0, "percentile": 99.9},
                                      "regions": regions}}, "energy": {}}
    text = format_run_summary(summary, tmp_path)
    assert "fuk p99.9 9.90 ms met; hij p99.9 16.10 ms MISSED (58 over budget, 51 of them while the delay " \
           "engine ran behind on some span)" in text


def test_up_check_without_the_workload_image_fails_before_bring_up(monkeypatch, capsys):
    """The migration check needs the image: a missing one is said in one line before the network
    comes up (it used to come after a minute of bring-up and probing), and only then."""
    import twin.emulation.session as session_mod
    import twin.workloads.image as image_mod
    from twin.errors import TwinError

    started = []

    class NoSession:
        def __init__(self, *args, **kwargs):
            started.append(args)
            raise TwinError("bring-up reached")

    monkeypatch.delenv("TWIN_IMAGE", raising=False)
    monkeypatch.setattr(image_mod, "image_exists", lambda ref, podman="podman": False)
    monkeypatch.setattr(session_mod, "TwinSession", NoSession)
    topo = str(REPO / "topologies" / "triangle.yaml")
    assert main(["up", topo, "--check"]) == 1
    err = capsys.readouterr().err
    assert "is not built; fix: sudo scripts/build-image.sh" in err and len(err.strip().splitlines()) == 1, err
    assert started == []
    # without the migration check nothing needs the image
    assert main(["up", topo, "--check", "--no-migration-check"]) == 1
    assert "bring-up reached" in capsys.readouterr().err and len(started) == 1


def test_image_check_without_podman_is_one_line():
    from twin.workloads.image import ImageError, image_exists

    with pytest.raises(ImageError, match=r"no-such-podman not found, so no workload can run here; fix: "):
        image_exists("localhost/twin-workload:0", podman="no-such-podman")
