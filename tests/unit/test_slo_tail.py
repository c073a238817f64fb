"""benchmarks/slo_tail.py on a hand-made run directory: the split around migrations and the errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import slo_tail  # noqa: E402


def make_run(path: Path, mode: str = "emulated") -> Path:
    path.mkdir()
    (path / "run.json").write_text(json.dumps({
        "mode": mode, "time_compression": 100,
        "services": [{"id": "drive", "slo": {"latency_ms": 10.0, "percentile": 99.9}}]}))
    # a migration from t=1000 to t=1500 (scenario s): with a 2 s margin at 100x, 800..1700 is "in"
    (path / "events.jsonl").write_text(json.dumps({"t": 1000, "kind": "migration", "started": 1000.0,
                                                   "finished": 1500.0}) + "\n")
    (path / "requests").mkdir()
    rows = ["t,region,site,latency_ms,outcome"]
    rows += [f"{t},fuk,fuk,2.0,ok" for t in range(0, 3000, 10)]            # 300 near users, all fast
    rows += [f"{t},hij,fuk,{30.0 if 900 <= t <= 1600 else 5.0},ok" for t in range(0, 3000, 10)]
    rows += ["2500,hij,,,timeout"]
    (path / "requests" / "drive.csv").write_text("\n".join(rows) + "\n")
    return path


def test_tail_is_split_around_migrations(tmp_path):
    rows = {(r["region"], r["part"]): r for r in slo_tail.tail_table(make_run(tmp_path / "run"))}
    assert rows[("fuk", "all")]["requests"] == 300 and rows[("fuk", "all")]["over_budget"] == 0
    slow = rows[("hij", "in migrations")]
    assert slow["requests"] == 91 and slow["over_budget"] == 71 and slow["p50_ms"] == 30.0  # t 800..1700
    calm = rows[("hij", "outside migrations")]
    assert calm["over_budget"] == 0 and calm["p999_ms"] == 5.0 and calm["unanswered"] == 1
    assert rows[("hij", "all")]["requests"] == 301


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "tail.json"
    assert slo_tail.main([str(make_run(tmp_path / "run")), "--margin", "0", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "in migrations" in table and "(> 10 ms)" in table
    rows = json.loads(out.read_text())["rows"]
    assert next(r for r in rows if r["region"] == "hij" and r["part"] == "in migrations")["requests"] == 51


@pytest.mark.parametrize("setup, message", [
    (lambda p: make_run(p, mode="model-only"), "give an emulated run"),
    (lambda p: p, "not a readable run directory"),
])
def test_bad_run_directory_is_one_line_exit_2(tmp_path, capsys, setup, message):
    run = setup(tmp_path / "run")
    assert slo_tail.main([str(run), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def add_engine_and_load(run: Path, start_unix: float = 1_000_000.0) -> Path:
    """Load rows in Unix time (one warm-up row before the start) and an engine that fell
    behind once, at start + 5 s; the t=1000 event's wall clock fixes the start (100x)."""
    (run / "events.jsonl").write_text(json.dumps({"t": 1000, "kind": "migration", "wall": start_unix + 10.0,
                                                  "started": 1000.0, "finished": 1500.0}) + "\n")
    (run / "load").mkdir()
    rows = ["send_unix,region,site,instance,latency_ms,service_time_us,outcome,status",
            f"{start_unix - 1.0},hij,fuk,i,50.0,800,ok,200"]                       # warm-up: left out
    rows += [f"{start_unix + k * 0.1},hij,fuk,i,{30.0 if k in (50, 51) else 5.0},800,ok,200" for k in range(100)]
    rows += [f"{start_unix + 2.0},hij,,,,,timeout,"]
    (run / "load" / "drive.hij.csv").write_text("\n".join(rows) + "\n")
    # two episodes, inside requests 50 and 51 only; the second on the other direction
    first = [[start_unix + 5.0, start_unix + 5.002, 3, 900.0]]
    second = [[start_unix + 5.1, start_unix + 5.101, 2, 700.0]]
    (run / "engine.json").write_text(json.dumps({"links": {"fuk_hij": {
        "a->b": {"frames": 10, "late_frames": 3, "late_episodes": first, "max_lateness_us": 900.0},
        "b->a": {"frames": 10, "late_frames": 2, "late_episodes": second, "max_lateness_us": 700.0}}}}))
    return run


def test_engine_overlap_counts_requests_that_met_late_frames(tmp_path, capsys):
    run = add_engine_and_load(make_run(tmp_path / "run"))
    (row,) = slo_tail.engine_overlap(run)
    assert row["region"] == "hij" and row["requests"] == 100  # warm-up and the timeout left out
    assert row["over_budget"] == 2 and row["over_budget_meeting_late"] == 2
    # request 49 (4.9 s + 5 ms) ends before the first late frame; 50 and 51 span them
    assert row["requests_meeting_late"] == 2
    out = tmp_path / "tail.json"
    assert slo_tail.main([str(run), "--engine", "--out", str(out)]) == 0
    assert "2 of 2 (100 %)" in capsys.readouterr().out
    assert json.loads(out.read_text())["engine_overlap"] == [row]


def test_engine_overlap_without_engine_json_is_one_line_exit_2(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert slo_tail.main([str(run), "--engine", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "engine.json" in err and "userspace" in err and "\n" not in err
