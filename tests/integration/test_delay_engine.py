"""The userspace delay engine between two namespaces: delay, order, loss, and clean teardown.

Needs root, iproute2 and ethtool. Every object is named ``twt-*`` and removed by
the fixtures, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twin.emulation.delay_engine import OVERLOAD_NS, DelayEngineProcess
from twin.emulation.delay_schedule import ChannelSpec, LinkSpec
from twin.emulation.probe import ProbeSummary, percentile, wait_reflector_ready
from twin.emulation.records import stop_child

pytestmark = pytest.mark.root

NS_A, NS_B = "twt-a", "twt-b"
ROOT_A, ROOT_B = "twt-ra", "twt-rb"
PORT = 8621
ENGINE_RT = 10  # SCHED_FIFO priority of engines whose timing a test asserts (the twin runs it at FIFO too)
DELAY_US = 2000.0
NS_SW = "twt-sw"
SPAN_US, TRANSIT_US = 1000.0, 500.0


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def _ns_exec(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def _our_links() -> list[str]:
    return [name for name in os.listdir("/sys/class/net") if name.startswith("twt-")]


def _our_namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines()
            if line.startswith("twt-")]


@contextlib.contextmanager
def _hosts(*hosts: tuple[str, str, str]):
    """Namespaces, each with a veth to the root namespace: (namespace, root-side end, address)."""
    made_ns: list[str] = []
    try:
        for ns, root_end, addr in hosts:
            _run("ip", "netns", "add", ns)
            made_ns.append(ns)
            _run("ip", "link", "add", root_end, "type", "veth", "peer", "name", ns, "netns", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", addr, "dev", ns)
            _run("ip", "-n", ns, "link", "set", ns, "up")
            # Frames into the engine must be <= MTU and carry full checksums.
            _run(*_ns_exec(ns, "ethtool", "-K", ns, "tso", "off", "gso", "off", "tx", "off"), check=False)
        yield
    finally:
        for _ns, root_end, _addr in hosts:
            if Path(f"/sys/class/net/{root_end}").exists():
                _run("ip", "link", "del", root_end, check=False)
        for ns in made_ns:
            _run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def two_hosts():
    """Namespaces twt-a (10.251.0.1) and twt-b (10.251.0.2), each with a veth to the root namespace."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, raw sockets)")
    for tool in ("ip", "ethtool"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    leftovers = _our_namespaces() + _our_links()
    assert not leftovers, f"objects from an earlier run: {leftovers}; remove them first"
    with _hosts((NS_A, ROOT_A, "10.251.0.1/24"), (NS_B, ROOT_B, "10.251.0.2/24")):
        yield


@pytest.fixture
def two_more_hosts(two_hosts):
    """Namespaces twt-c (10.251.1.1) and twt-d (10.251.1.2): a second link's ends."""
    with _hosts(("twt-c", "twt-rc", "10.251.1.1/24"), ("twt-d", "twt-rd", "10.251.1.2/24")):
        yield


@pytest.fixture
def reflector(two_hosts):
    proc = subprocess.Popen(_ns_exec(NS_B, sys.executable, "-m", "twin.emulation.probe", "reflect",
                                     "--bind", "10.251.0.2", "--port", str(PORT)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_reflector_ready(proc, f"in {NS_B}")
        yield proc
    finally:
        stop_child(proc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_engine_delays_without_reordering_or_loss_and_leaves_nothing(reflector, tmp_path):
    link = LinkSpec("l1", ROOT_A, ROOT_B, delay_us=DELAY_US)
    # SCHED_FIFO, as the twin runs it: on a host whose idle vCPUs wake slowly (2026-11-28: half
    # the timer wake-ups over 70 us late) an ordinary-priority engine sent the median frame
    # 100-270 us late, which says more about the scheduler than about the engine.
    engine = DelayEngineProcess([link], workdir=tmp_path, ready_timeout_s=15, rt_priority=ENGINE_RT)
    with engine:
        pid = engine.pid
        out = _run(*_ns_exec(NS_A, sys.executable, "-m", "twin.emulation.probe", "send", "--dst", "10.251.0.2",
                             "--port", str(PORT), "--rate", "500", "--count", "500", "--json"))
        summary = ProbeSummary.from_json(out.stdout)
    assert summary.lost == 0, summary
    assert summary.reordered == summary.reordered_forward == summary.reordered_backward == 0
    assert summary.duplicates == 0
    # Loose bound (noisy CI machines); benchmarks/delay_engine.py checks the tight targets.
    assert abs(summary.forward_us.median - DELAY_US) < 100, summary.forward_us
    assert abs(summary.backward_us.median - DELAY_US) < 100, summary.backward_us

    # The engine wrote its stats on SIGTERM and is gone.
    assert engine.stats is not None
    stats = engine.stats["links"]["l1"]
    assert stats["a->b"]["frames"] >= 500 and stats["b->a"]["frames"] >= 500
    assert stats["a->b"]["drops"] == 0
    assert not _pid_alive(pid)


def test_late_frames_are_logged_with_their_time(reflector, tmp_path):
    """A stalled engine (SIGSTOP for 50 ms) sends the frames it held late: they are counted and
    logged with their intended departure, so a run can line them up with slow requests."""
    import signal

    link = LinkSpec("l1", ROOT_A, ROOT_B, delay_us=DELAY_US)
    engine = DelayEngineProcess([link], workdir=tmp_path, ready_timeout_s=15)
    with engine:
        sender = subprocess.Popen(_ns_exec(NS_A, sys.executable, "-m", "twin.emulation.probe", "send", "--dst",
                                           "10.251.0.2", "--port", str(PORT), "--rate", "500", "--count", "500",
                                           "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.4)
        stalled_at = time.time()
        os.kill(engine.pid, signal.SIGSTOP)
        time.sleep(0.05)
        os.kill(engine.pid, signal.SIGCONT)
        out, err = sender.communicate(timeout=30)
        assert sender.returncode == 0, err
    stats = engine.stats["links"]["l1"]
    episodes = stats["a->b"]["late_episodes"] + stats["b->a"]["late_episodes"]
    assert stats["a->b"]["late_frames"] + stats["b->a"]["late_frames"] == sum(n for _f, _l, n, _w in episodes)
    # Logged by intended departure: the frames held in the stall make an episode inside it, give
    # or take the probe's 2 ms delay (a busy host may add an episode elsewhere).
    # The lead allows for the host itself having held the engine just before (stalls up to 20 ms).
    in_stall = [e for e in episodes if stalled_at - 0.03 < e[0] <= e[1] < stalled_at + 0.1]
    assert any(n >= 10 for _f, _l, n, _w in in_stall), episodes
    assert max(w for *_, w in in_stall) == max(w for *_, w in episodes) > 30_000, (stalled_at, episodes)  # us
    assert ProbeSummary.from_json(out).lost == 0


BULK_VID = 100
FLOOD_PPS = 80_000  # over what the engine sends (about 60k frames/s here), under what it receives


def _probes_beside_a_flood(tmp_path: Path, turns: bool) -> tuple[ProbeSummary, list, dict]:
    """500 probes at 500/s on the untagged channel while VLAN BULK_VID is flooded;
    (probes, their samples, engine stats)."""
    link = LinkSpec("l1", ROOT_A, ROOT_B, channels=(ChannelSpec(None, "probe", delay_us=DELAY_US),
                                                     ChannelSpec(BULK_VID, "bulk", delay_us=DELAY_US)))
    # The engine alone on the last CPU, as TwinSession runs it; the flood at the lowest priority
    # beside the probes, so what delays the probes is the engine's own backlog.
    engine_cpu = max(os.sched_getaffinity(0))
    others = ",".join(str(c) for c in sorted(os.sched_getaffinity(0) - {engine_cpu}) or [engine_cpu])
    with DelayEngineProcess([link], workdir=tmp_path / f"turns-{turns}", ready_timeout_s=15, turns=turns,
                            rt_priority=ENGINE_RT, cpus={engine_cpu}) as engine:
        flood = subprocess.Popen(["taskset", "-c", others, "nice", "-n", "19",
                                  *_ns_exec(NS_A, sys.executable, "-m", "twin.emulation.probe", "flood",
                                            "--iface", NS_A, "--vid", str(BULK_VID), "--pps", str(FLOOD_PPS),
                                            "--seconds", "3")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            out = _run(*_ns_exec(NS_A, sys.executable, "-m", "twin.emulation.probe", "send", "--dst", "10.251.0.2",
                                 "--port", str(PORT), "--rate", "500", "--count", "500", "--json", "--samples"))
        finally:
            stop_child(flood)
    return ProbeSummary.from_json(out.stdout), json.loads(out.stdout)["samples"], engine.stats["links"]["l1"]


def test_a_flood_on_one_wavelength_barely_delays_another(reflector, tmp_path):
    """The engine overloaded by one wavelength: the probes on another wait for about one flood
    frame per send (FairDepartures) and the flood's hopeless frames are shed, instead of the
    probes queueing behind the flood's whole backlog (departure order, measured as the control)."""
    fair, fair_samples, stats = _probes_beside_a_flood(tmp_path, turns=True)
    strict, strict_samples, strict_stats = _probes_beside_a_flood(tmp_path, turns=False)

    def p95_forward(samples: list) -> float:
        return percentile([s[2] for s in samples], 95)

    def late_share(st: dict, channel: str) -> float:
        ch = st["a->b"]["channels"][channel]
        return ch["late_frames"] / ch["frames"]

    for st in (stats, strict_stats):
        # The flood really overloaded the engine: a good share of its frames left over 0.5 ms
        # late, none later than the engine's shedding bound (OVERLOAD_NS; those are dropped).
        assert st["a->b"]["channels"]["100"]["frames"] > 50_000 and late_share(st, "100") > 0.2, st["a->b"]
        assert st["a->b"]["max_lateness_us"] <= OVERLOAD_NS / 1000 + 100, st["a->b"]
    # Lane by lane, the probes' wavelength hardly bears it (measured: 0-10 % of its frames over
    # 0.5 ms late, p99 0.2-0.9 ms over the model); in departure order it shares the lateness
    # (8-97 %, p99 1.6-100 ms over). The tail is judged at p95: one stall of the host itself
    # (2026-11-28: up to 15-20 ms, a few a second) holds the ~10 probes in flight, which decides
    # a p99 of 500 probes whatever the engine does.
    assert late_share(stats, "untagged") < 0.15, stats["a->b"]["channels"]
    assert fair.lost == 0 and fair.reordered == 0, fair
    assert p95_forward(fair_samples) - DELAY_US < 3_000, fair.forward_us
    assert late_share(strict_stats, "untagged") > late_share(stats, "untagged"), \
        (stats["a->b"]["channels"], strict_stats["a->b"]["channels"])
    assert p95_forward(strict_samples) > p95_forward(fair_samples), (fair.forward_us, strict.forward_us)


def test_an_engine_kept_busy_pauses_instead_of_being_throttled(reflector, two_more_hosts, tmp_path):
    """TCP as fast as it goes through a second link keeps the real-time engine busy for seconds.
    Were it never to sleep, the kernel's RT throttling would stop it for 50 ms every second and
    the probes on the first link would carry those stalls (p99 31-42 ms over the model in
    benchmarks/delay_engine.py); it pauses 0.1 ms after every busy 1 ms instead (BUSY_SLICE_NS)."""
    if not shutil.which("iperf3"):
        pytest.skip("needs iperf3")
    links = [LinkSpec("l1", ROOT_A, ROOT_B, delay_us=DELAY_US), LinkSpec("l2", "twt-rc", "twt-rd", delay_us=DELAY_US)]
    engine_cpu = max(os.sched_getaffinity(0))
    server = subprocess.Popen(_ns_exec("twt-d", "iperf3", "-s", "-1", "-p", "5299"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        with DelayEngineProcess(links, workdir=tmp_path, ready_timeout_s=15, rt_priority=10,
                                cpus={engine_cpu}) as engine:
            time.sleep(0.3)
            client = subprocess.Popen(_ns_exec("twt-c", "iperf3", "-c", "10.251.1.2", "-p", "5299", "-t", "4"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(1.5)  # past slow start, and past a first second of the engine busy
                out = _run(*_ns_exec(NS_A, sys.executable, "-m", "twin.emulation.probe", "send", "--dst",
                                     "10.251.0.2", "--port", str(PORT), "--rate", "500", "--count", "1000",
                                     "--json"))
            finally:
                stop_child(client)
    finally:
        stop_child(server)
    probes = ProbeSummary.from_json(out.stdout)
    busy = engine.stats["links"]["l2"]["a->b"]
    assert busy["frames"] > 50_000 and busy["late_frames"] > 1_000, busy  # the engine was over its capacity
    assert probes.lost == 0, probes
    assert probes.forward_us.p99 - DELAY_US < 15_000, probes.forward_us


@pytest.fixture
def slow_transit(two_hosts):
    """A "switch" namespace twt-sw between two root-side interfaces twt-x1 and twt-x2, whose
    transit between them is a second delay engine holding frames TRANSIT_US: a stand-in
    for a switch that takes its time, which the engine under test knows nothing about."""
    made_links = []
    try:
        _run("ip", "netns", "add", NS_SW)
        for root_end, sw_end in (("twt-x1", "twt-x1p"), ("twt-x2", "twt-x2p")):
            _run("ip", "link", "add", root_end, "type", "veth", "peer", "name", sw_end, "netns", NS_SW)
            made_links.append(root_end)
            _run("ip", "link", "set", root_end, "up")
            _run("ip", "-n", NS_SW, "link", "set", sw_end, "up")
        yield LinkSpec("transit", "twt-x1p", "twt-x2p", delay_us=TRANSIT_US)
    finally:
        for root_end in made_links:
            _run("ip", "link", "del", root_end, check=False)
        _run("ip", "netns", "del", NS_SW, check=False)


def _one_way_through_transit(tmp_path: Path, transit_link: LinkSpec, carry: bool) -> tuple[ProbeSummary, dict]:
    spans = [LinkSpec("l1", ROOT_A, "twt-x1", delay_us=SPAN_US), LinkSpec("l2", "twt-x2", ROOT_B, delay_us=SPAN_US)]
    switch = DelayEngineProcess([transit_link], workdir=tmp_path / f"sw-{carry}", ready_timeout_s=15,
                                exec_prefix=["ip", "netns", "exec", NS_SW], transit_carry=False,
                                rt_priority=ENGINE_RT)
    engine = DelayEngineProcess(spans, workdir=tmp_path / f"spans-{carry}", ready_timeout_s=15,
                                transit_carry=carry, rt_priority=ENGINE_RT)
    with switch, engine:
        out = _run(*_ns_exec(NS_A, sys.executable, "-m", "twin.emulation.probe", "send", "--dst", "10.251.0.2",
                             "--port", str(PORT), "--rate", "500", "--count", "400", "--json"))
    return ProbeSummary.from_json(out.stdout), engine.stats


def test_transit_carry_absorbs_time_spent_between_spans(reflector, slow_transit, tmp_path):
    """Two spans with a slow switch between them: with carry-over the second span is scheduled
    from the first span's intended departure, so the switch's time disappears into the second
    span's hold; without it, it adds up (what made long routes late)."""
    carried, stats = _one_way_through_transit(tmp_path, slow_transit, carry=True)
    assert carried.lost == 0 and carried.reordered == 0, carried
    assert stats["transit"] == {"transit_carry": True, "carried_frames": stats["transit"]["carried_frames"]}
    assert stats["transit"]["carried_frames"] >= 2 * 400  # every probe and every answer, on its second span
    model = 2 * SPAN_US
    assert model <= carried.forward_us.median < model + TRANSIT_US / 2, carried.forward_us
    assert model <= carried.backward_us.median < model + TRANSIT_US / 2, carried.backward_us

    plain, stats = _one_way_through_transit(tmp_path, slow_transit, carry=False)
    assert stats["transit"]["carried_frames"] == 0
    assert plain.forward_us.median >= model + TRANSIT_US, plain.forward_us
    assert plain.forward_us.median - carried.forward_us.median > TRANSIT_US * 0.8


def test_engine_start_failure_reports_stderr(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    engine = DelayEngineProcess([LinkSpec("l1", "twt-nosuch0", "twt-nosuch1", delay_us=1)], workdir=tmp_path,
                                prepare=False)
    with pytest.raises(Exception, match="twt-nosuch0"):
        engine.start()
    assert engine.proc is not None and engine.proc.poll() is not None


def test_nothing_left_behind():
    """Runs after the tests above (file order): no twt- namespaces or interfaces remain."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    assert _our_namespaces() == []
    assert _our_links() == []
