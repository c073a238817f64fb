"""`twin run` end to end: the two-site day on the emulated twin, beside the same day on the model.

One emulated run (about 3 minutes: bring-up, a day compressed into 2 minutes,
teardown) feeds every test in this module; the model-only run of the same
scenario is the reference it is compared with.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from twin.emulation.records import host_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_report_browser import open_in_chromium  # noqa: E402

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "fukuoka-osaka-day.yaml"
SERVICES = ("fusion", "assist")


def twin(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twin", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    before = host_state()
    emulated = twin("run", str(SCENARIO), "--out", str(base / "emulated"), "-q", timeout=600)
    after = host_state()
    model = twin("run", str(SCENARIO), "--model-only", "--out", str(base / "model"), "-q", timeout=120)
    return {"emulated": emulated, "model": model, "dir": base, "before": before, "after": after}


def load(run_dir: Path, name: str):
    path = run_dir / name
    if name.endswith(".json"):
        return json.loads(path.read_text())
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_both_runs_succeed(runs):
    for mode in ("emulated", "model"):
        proc = runs[mode]
        assert proc.returncode == 0, f"{mode}: {proc.stderr[-3000:]}"
        for service in SERVICES:
            assert service in proc.stdout


def test_emulated_run_directory_is_complete(runs):
    run_dir = runs["dir"] / "emulated"
    for name in ("run.json", "events.jsonl", "signals.csv", "placements.csv", "latency.csv", "summary.json",
                 "report.html", "probes.csv"):
        assert (run_dir / name).is_file(), name
    for service in SERVICES:
        rows = load(run_dir, f"requests/{service}.csv")
        assert len(rows) > 100, service  # every request recorded
    run = load(run_dir, "run.json")
    assert run["mode"] == "emulated" and run["link_backend"] in ("userspace", "netem")
    if run["link_backend"] == "userspace":  # the engine's own account of every span it forwarded
        links = load(run_dir, "engine.json")["links"]
        assert set(links) >= {"fuk_osa"}
        assert links["fuk_osa"]["a->b"]["frames"] > 100
        for direction in (d for span in links.values() for d in span.values()):
            episodes = direction["late_episodes"]
            assert len(episodes) == 5000 or sum(e[2] for e in episodes) == direction["late_frames"]
        for service in load(run_dir, "summary.json")["services"].values():
            for region in service["regions"].values():
                assert 0 <= region["over_budget_engine_behind"] <= region["over_budget"]
        engine = load(run_dir, "summary.json")["engine"]
        assert engine["frames"] == sum(d["frames"] for span in links.values() for d in span.values())
        assert "<h2>Emulator</h2>" in (run_dir / "report.html").read_text()
        assert run["start_unix"] > 1.7e9
    assert run["container_engine"].startswith("podman")


def test_migrations_happened_and_lost_no_request(runs):
    run_dir = runs["dir"] / "emulated"
    summary = load(run_dir, "summary.json")
    migrations = [e for e in load(run_dir, "events.jsonl") if e["kind"] == "migration"]
    assert migrations, "the policy should move 'fusion' to Kyushu's midday surplus"
    assert all(m["ok"] for m in migrations), migrations
    assert all(m["failed_requests"] == 0 for m in migrations), migrations
    assert all(m["strategy"] == "make-before-break" for m in migrations)
    for m in migrations:  # state really crossed the network
        assert m["state_bytes"] == 4 * 1024 * 1024 and m["transfer_s"] > 0
    fusion = summary["services"]["fusion"]
    assert fusion["migrations"] == len(migrations) and fusion["failed_by_migration"] == 0
    answered_by = {row["site"] for row in load(run_dir, "requests/fusion.csv") if row["outcome"] == "ok"}
    assert answered_by == {"fuk", "osa"}  # the answering site changed
    # fusion's clients keep their connections: after each move they reach the new site
    # only because the drain closed their old ones, and nothing was lost on the way
    assert 0 < fusion["connections"] < fusion["requests"] / 10
    assert summary["services"]["assist"]["connections"] >= summary["services"]["assist"]["requests"]
    # The clients, the measuring instrument, ran realtime; fusion's moves started and stopped
    # realtime containers (their run cgroup is gone: host_state compares it above).
    assert all(s["client_scheduling"] == ["fifo 5"] for s in summary["services"].values())
    assert summary["warm_up"]["requests"] > 0 and summary["warm_up"]["failed"] == 0
    # the latency-critical service never left the only site that meets its budget
    assert {row["site"] for row in load(run_dir, "placements.csv") if row["service"] == "assist"} == {"fuk"}


def test_emulated_and_model_only_agree(runs):
    emulated, model = runs["dir"] / "emulated", runs["dir"] / "model"

    def moves(run_dir: Path) -> list[tuple[str, str, str]]:
        return [(e["service"], e["from"], e["to"]) for e in load(run_dir, "events.jsonl")
                if e["kind"] == "migration" and e.get("ok", True)]

    assert moves(emulated) == moves(model)
    e_energy = load(emulated, "summary.json")["energy"]
    m_energy = load(model, "summary.json")["energy"]
    for key in ("static", "oracle"):
        assert e_energy[key] == m_energy[key]  # same signals, same model
    # placements can lag a little in emulation (a migration takes seconds of wall clock)
    assert e_energy["policy"]["kwh"] == pytest.approx(m_energy["policy"]["kwh"], rel=0.05)
    assert e_energy["policy"]["surplus_kwh"] == pytest.approx(m_energy["policy"]["surplus_kwh"], rel=0.2)
    assert e_energy["policy"]["surplus_kwh"] > e_energy["static"]["surplus_kwh"]


def test_report_names_every_service_and_renders(runs, tmp_path):
    report = runs["dir"] / "emulated" / "report.html"
    html = report.read_text()
    for service in SERVICES:
        assert service in html
    dom, console = open_in_chromium(report.as_uri(), tmp_path / "profile")
    assert not console, console
    assert all(service in dom for service in SERVICES)


def test_nothing_left_behind(runs):
    before, after = runs["before"], runs["after"]
    for kind in after:
        assert after[kind] - before[kind] == set(), f"left behind: {kind} {after[kind] - before[kind]}"
    left = subprocess.run(["podman", "ps", "-a", "--filter", "label=twin-run", "--format", "{{.Names}}"],
                          capture_output=True, text=True).stdout.split()
    assert left == []
