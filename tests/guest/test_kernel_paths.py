"""The twin's kernel paths, in a kernel that has them: the netem link backend (htb class +
netem leaf per VLAN, flower filters) and OVS's kernel datapath.

Runs only inside the guest of scripts/netem-guest.sh (tests/conftest.py), which
tests/integration/test_netem_guest.py boots. Where the host cannot virtualise,
the guest's CPU is emulated (TCG) and every packet costs tens of microseconds
more, so the delay bounds here check that netem really holds each frame for its
span's delay, not the accuracy a real VM reaches (benchmarks/network.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twin.emulation import records
from twin.emulation.link_backends import netem_available, netem_limit
from twin.emulation.network import in_host, userspace_datapath
from twin.emulation.records import stop_child
from twin.emulation.session import TwinSession
from twin.model import addressing as ad

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = str(REPO / "topologies" / "triangle.yaml")
# Emulated-CPU slack on a one-way median; without netem every pair measured ~0.08 ms
# against a model of 1.0-1.5 ms, so the lower bound is what catches a missing delay.
SLACK_MS = 1.5
IPERF_PORT = 5231


def test_this_kernel_has_the_paths_under_test():
    assert netem_available(), "no sch_netem: this is not the netem guest"
    assert not userspace_datapath(), "no openvswitch module: this is not the netem guest"


def test_check_delays_every_pair_by_its_span_and_leaves_nothing():
    before = records.host_state()
    out = subprocess.run([sys.executable, "-m", "twin", "up", TRIANGLE, "--check", "--json", "--count", "300",
                          "--link-backend", "netem", "--no-migration-check", "--tolerance-us", str(SLACK_MS * 1e3)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.stdout, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["link_backend"] == "netem" and doc["ovs_port_type"] == "system"
    assert {p["src"] + p["dst"] for p in doc["pairs"]} == {"ab", "ac", "bc"}
    for pair in doc["pairs"]:
        # netem held every frame for the span's delay (lower bound), and no more than the slack
        assert pair["model_one_way_ms"] - 0.05 <= pair["measured_one_way_ms"] \
            <= pair["model_one_way_ms"] + SLACK_MS, pair
        # OVS's kernel datapath sends a new flow's first packets via ovs-vswitchd; the probes'
        # warm-up keeps them from being overtaken
        assert pair["lost"] == 0 and pair["reordered"] == 0, pair
    for path in doc["packet_network"]:
        assert path["measured_one_way_ms"] >= path["model_min_one_way_ms"] - 0.05, path
    assert out.returncode == 0 and doc["ok"], out.stderr[-2000:]
    # the QoS rows that keep OVS off the qdiscs, and the switch-to-switch veths, went too
    assert records.host_state() == before


def test_sigkill_then_twin_clean_leaves_nothing():
    # Before the module's session exists: two runs of one topology cannot coexist.
    before = records.host_state()
    script = ("import time\nfrom twin.emulation.session import TwinSession\n"
              f"s = TwinSession({TRIANGLE!r}, backend='netem'); s.__enter__()\n"
              "print('UP', flush=True)\ntime.sleep(900)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert "UP" in line, proc.stderr.read()[-2000:] if proc.poll() is not None else line
        during = records.host_state()
        assert len(during["bridges"] - before["bridges"]) == 3
        assert len(during["qos"] - before["qos"]) == 1
        assert {"a_b", "b_a", "a_c", "c_a", "b_c", "c_b"} <= during["veths"] - before["veths"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    clean = subprocess.run([sys.executable, "-m", "twin", "clean"], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert records.host_state() == before


@pytest.fixture(scope="module")
def session():
    with TwinSession(TRIANGLE, backend="netem") as s:
        yield s


def _tc_class_drops(ifname: str) -> dict[str, int]:
    text = subprocess.run(["tc", "-s", "class", "show", "dev", ifname], capture_output=True, text=True,
                          check=True).stdout
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"class htb (\S+) .*?\n\s*Sent \d+ bytes \d+ pkt \(dropped (\d+)", text)}


def test_a_flooded_wavelength_does_not_delay_another_on_the_same_span(session):
    client, net = session.client, session.network
    flooded = client.create_lightpath("a", "b", route=["a", "b"], wavelength=0)
    probed = client.create_lightpath("a", "c", route=["a", "b", "c"], wavelength=1)
    flood_mbps = 10.0
    net.set_wavelength_rate("a", "b", 0, flood_mbps * 1e6)   # netem: the class and leaf change in place
    drops_before = _tc_class_drops("a_b")
    server_ip = net.host_ip("b", ad.COMPUTE)
    server = subprocess.Popen(in_host(net.host_pid(ad.host_name("b", ad.COMPUTE)),
                                      ["iperf3", "-s", "-1", "-B", server_ip, "-p", str(IPERF_PORT)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        quiet = session.probe("a", "c", count=300, rate=300)
        time.sleep(1.0)
        iperf = subprocess.Popen(in_host(net.host_pid(ad.host_name("a", ad.COMPUTE)),
                                         ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", "5", "-J", "-u",
                                          "-b", f"{2 * flood_mbps:g}M", "-l", "1400"]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)   # wavelength 0's class is full from here on
            loaded = session.probe("a", "c", count=600, rate=300)
            report, _err = iperf.communicate(timeout=120)
        finally:
            stop_child(iperf)
    finally:
        stop_child(server)
        client.delete_lightpath(probed["id"])
        client.delete_lightpath(flooded["id"])
    end = json.loads(report)["end"]["sum"]
    received_mbps = end["bits_per_second"] * (1 - end["lost_percent"] / 100) / 1e6
    drops = {cls: n - drops_before.get(cls, 0) for cls, n in _tc_class_drops("a_b").items()}
    # The flood was held to its wavelength's new rate by that wavelength's own class (plus what
    # its netem queue, sized to the bandwidth-delay product but at least 1,000 frames, still
    # held when the sender stopped) ...
    drain_s = netem_limit(1000.0, 0.0, flood_mbps * 1e6) * 1446 * 8 / (flood_mbps * 1e6)
    assert 0.6 * flood_mbps < received_mbps < 1.15 * flood_mbps * (1 + drain_s / end["seconds"]), \
        (received_mbps, end)
    assert drops.get("1:1", 0) > 100, drops
    # ... and the other wavelength's class on the same trunk dropped nothing and queued nothing:
    # its probes kept their delay (a shared queue would add the flood's backlog, milliseconds).
    assert drops.get("1:2", 0) == 0, drops
    assert loaded.lost == 0 and loaded.reordered == 0
    assert loaded.forward_us.min < quiet.forward_us.min + 2000, (loaded.forward_us, quiet.forward_us)
    assert loaded.forward_us.median < quiet.forward_us.median + 5000, (loaded.forward_us, quiet.forward_us)
