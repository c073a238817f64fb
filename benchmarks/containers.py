"""Benchmark: workload container lifecycle times and workload image build times.

Needs root and podman (scripts/install.sh). Lifecycle: N times, in a network
namespace of its own (``unshare --net`` around a sleeper; no Mininet), time
``podman create``, ``podman start``, ready (``/readyz`` answered from inside
the namespace, i.e. the model loaded and warmed), stop (SIGTERM, the server
drains and exits) and remove, for the inference server (sensor-fusion MLP) and
for a bare ``sleep`` (the engine's own cost, ready = running).

Image build (``scripts/build-image.sh`` on a frozen copy of the checkout's
sources, so edits made meanwhile do not count): nothing changed (the skip
path), one source file changed (code layer only), base rebuilt from the cached
debootstrap tarball and wheels, and with ``--cold`` the base from nothing
(debootstrap from the Debian mirror, in a scratch cache). The copies' images
are removed afterwards.

Usage: ``sudo .venv/bin/python benchmarks/containers.py [--runs 10] [--no-build] [--cold] [--out PATH]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import percentile, write_result  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.emulation.records import RunRecord, clean_record, stop_child  # noqa: E402
from twin.workloads import containers as c  # noqa: E402
from twin.workloads import image  # noqa: E402
from twin.workloads.image import SOURCE_DIRS, SOURCE_FILES, ImageError, require_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PORT = 8080


def summary(samples_s: list[float]) -> dict:
    ms = [s * 1e3 for s in samples_s]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p90_ms": round(percentile(ms, 90), 1),
            "mean_ms": round(statistics.fmean(ms), 1), "max_ms": round(max(ms), 1)}


def _image() -> str:
    try:
        return require_image()
    except ImageError:
        out = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], capture_output=True, text=True, check=True)
        return out.stdout.split()[-1]


def lifecycle(image: str, runs: int) -> tuple[str, dict[str, dict[str, dict]]]:
    sleeper = subprocess.Popen(["unshare", "--net", "--", "sleep", "3600"])
    record = RunRecord.create()
    rt = c.ContainerRuntime(record.run_id, record=record)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        time.sleep(0.2)
        subprocess.run(["nsenter", f"--net=/proc/{sleeper.pid}/ns/net", "ip", "link", "set", "lo", "up"], check=True)
        server = ("python", "-m", "twin.workloads.server", "--service", "bench", "--model", "sensor-fusion-mlp",
                  "--site", "here", "--port", str(PORT), "--bind", "127.0.0.1")
        cases = {
            "inference server": (server, f"http://127.0.0.1:{PORT}/readyz"),
            "sleep (engine only)": (("sleep", "3600"), None),
        }
        for case, (command, url) in cases.items():
            phases: dict[str, list[float]] = {k: [] for k in ("create", "start", "ready", "create to ready", "stop", "remove")}
            for i in range(runs):
                spec = c.ContainerSpec(f"b{i}", image, command, netns_pid=sleeper.pid, cpus=1.0, memory_bytes=512 * 2**20)
                t0 = time.perf_counter()
                container = rt.create(spec)
                t1 = time.perf_counter()
                rt.start(container.name)
                t2 = time.perf_counter()
                rt.wait_ready(container.name, url, timeout_s=60, interval_s=0.005)
                t3 = time.perf_counter()
                rt.stop(container.name, grace_s=10)
                t4 = time.perf_counter()
                rt.remove(container.name)
                t5 = time.perf_counter()
                for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, t4 - t3, t5 - t4)):
                    phases[key].append(value)
            results[case] = phases
        engine = rt.describe()
    finally:
        rt.cleanup_run()
        clean_record(record)
        stop_child(sleeper)
    return engine, {case: {k: summary(v) for k, v in phases.items()} for case, phases in results.items()}


def _snapshot(dest: Path) -> None:
    """Copy what the image is built from, plus a link to the venv that runs the build."""
    for name in SOURCE_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in SOURCE_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")


def _build(repo: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([str(repo / "scripts" / "build-image.sh")], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=3600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build-image.sh failed:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout.split()[-1]


def image_builds(cold: bool) -> dict[str, float]:
    made: list[str] = []
    times: dict[str, float] = {}
    existing = set(_images("localhost/twin-workload")) | set(_images("localhost/twin-workload-base"))
    env = {"TWIN_IMAGE_NO_PRUNE": "1"}
    with tempfile.TemporaryDirectory(prefix="twin-bench-image-") as tmp:
        repo = Path(tmp) / "repo"
        _snapshot(repo)
        try:
            _, ref = _build(repo, env)  # whatever it takes: the snapshot's image now exists
            made.append(ref)
            times["nothing changed (skip)"], _ = _build(repo, env)
            with open(repo / "twin" / "workloads" / "image.py", "a") as f:
                f.write("\n# benchmark edit\n")
            times["one source file changed (code layer)"], ref = _build(repo, env)
            made.append(ref)
            _bump_base_recipe(repo, 1000)
            base_before = set(_base_images())
            times["base rebuilt from cached tarball + wheels"], ref = _build(repo, env)
            made.append(ref)
            made += sorted(set(_base_images()) - base_before)
            if cold:
                _bump_base_recipe(repo, 2000)
                cache = Path(tmp) / "cache"
                base_before = set(_base_images())
                times["cold: debootstrap + wheels + base + code"], ref = _build(repo, {**env, "TWIN_IMAGE_CACHE": str(cache)})
                made.append(ref)
                made += sorted(set(_base_images()) - base_before)
        finally:
            # Only what the copies added: the first build may have found the checkout's own image.
            for ref in made:
                if ref not in existing:
                    subprocess.run(["podman", "rmi", ref], capture_output=True)
    return times


def _bump_base_recipe(repo: Path, by: int) -> None:
    """Change the copy's BASE_RECIPE_VERSION so that its base image is rebuilt."""
    path = repo / "twin" / "workloads" / "image.py"
    text = path.read_text()
    old = f"BASE_RECIPE_VERSION = {image.BASE_RECIPE_VERSION}\n"
    assert old in text, "BASE_RECIPE_VERSION line not found"
    path.write_text(text.replace(old, f"BASE_RECIPE_VERSION = {image.BASE_RECIPE_VERSION + by}\n"))


def _images(repository: str) -> list[str]:
    out = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
                          "--filter", f"reference={repository}"], capture_output=True, text=True)
    return out.stdout.split()


def _base_images() -> list[str]:
    return _images("localhost/twin-workload-base")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-build", action="store_true", help="skip the image build timings")
    parser.add_argument("--cold", action="store_true", help="also time a build from nothing (downloads ~100 MB)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "containers.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: sudo .venv/bin/python benchmarks/containers.py", file=sys.stderr)
        return 2

    image = _image()
    engine, life = lifecycle(image, args.runs)
    print(f"engine: {engine}; image {image}; {args.runs} runs each")
    print(f"{'case':22} {'phase':16} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    for case, phases in life.items():
        for phase, s in phases.items():
            print(f"{case:22} {phase:16} {s['p50_ms']:8.1f} {s['p90_ms']:8.1f} {s['max_ms']:8.1f}")
    builds = {} if args.no_build else image_builds(args.cold)
    if builds:
        print(f"\n{'image build':48} {'s':>7}")
        for case, seconds in builds.items():
            print(f"{case:48} {seconds:7.2f}")
    report = {
        "benchmark": "containers",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "engine": engine,
        "image": image,
        "runs": args.runs,
        "lifecycle": life,
        "image_build_s": {k: round(v, 2) for k, v in builds.items()},
    }
    write_result(args.out, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
