"""Wavelengths of one span are separate channels (root, OVS, Mininet, iperf3; three-site ring).

Each span is one trunk port per end with the wavelengths as VLANs; the link
backend must still give every wavelength its own queue and its own rate. Here a
lightpath a-b on wavelength 0 is flooded with UDP at twice its rate while a
lightpath a-b-c on wavelength 1 (same a-b span, same trunk ports) is probed: a
shared queue would add the shaper's whole backlog (milliseconds) to the probes.
Thresholds are loose for noisy CI machines; precision is in benchmarks/network.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from twin.emulation.network import in_host
from twin.emulation.records import stop_child
from twin.emulation.session import TwinSession
from twin.model import addressing as ad

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = str(REPO / "topologies" / "triangle.yaml")
IPERF_PORT = 5231
RATE_MBPS = 50.0   # triangle.yaml: every wavelength 50 Mbit/s


@pytest.fixture(scope="module")
def session():
    if not shutil.which("iperf3"):
        pytest.skip("needs iperf3 (scripts/install.sh installs it)")
    with TwinSession(TRIANGLE) as s:
        yield s


def iperf(session: TwinSession, src: str, dst: str, *args: str, seconds: float = 4.0):
    """Start iperf3 from src's compute host to dst's compute host; returns (server, client)."""
    net = session.network
    server_ip = net.host_ip(dst, ad.COMPUTE)
    server = subprocess.Popen(in_host(net.host_pid(ad.host_name(dst, ad.COMPUTE)),
                                      ["iperf3", "-s", "-1", "-B", server_ip, "-p", str(IPERF_PORT)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    client = subprocess.Popen(in_host(net.host_pid(ad.host_name(src, ad.COMPUTE)),
                                      ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                                       *args]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return server, client


def finish(server, client, seconds: float = 4.0) -> dict:
    try:
        out, err = client.communicate(timeout=seconds + 20)
    finally:
        stop_child(client)
        stop_child(server)
    doc = json.loads(out)
    assert "error" not in doc, doc.get("error")
    return doc["end"]


def test_a_flooded_wavelength_does_not_delay_another_on_the_same_span(session):
    client = session.client
    flooded = client.create_lightpath("a", "b", route=["a", "b"], wavelength=0)
    probed = client.create_lightpath("a", "c", route=["a", "b", "c"], wavelength=1)
    # A slow wavelength 0 (10 Mbit/s) keeps the flood cheap for the CPU while its shaper
    # stays full: a queue shared with wavelength 1 would hold every probe for up to the
    # shaper's 20 ms limit, or drop it.
    flood_rate_mbps = 10.0
    session.network.set_wavelength_rate("a", "b", 0, flood_rate_mbps * 1e6)
    try:
        quiet = session.probe("a", "c", count=300, rate=300)
        server, iperf_client = iperf(session, "a", "b", "-u", "-b", f"{2 * flood_rate_mbps:g}M", "-l", "1400")
        try:
            time.sleep(1.0)   # the wavelength-0 shaper is full from here on
            loaded = session.probe("a", "c", count=600, rate=300)
        finally:
            end = finish(server, iperf_client)
        received_mbps = end["sum"]["bits_per_second"] * (1 - end["sum"]["lost_percent"] / 100) / 1e6
    finally:
        session.network.set_wavelength_rate("a", "b", 0, RATE_MBPS * 1e6)
        client.delete_lightpath(probed["id"])
        client.delete_lightpath(flooded["id"])
    # The flood was real and was held to wavelength 0's rate by its own shaper ...
    assert end["sum"]["lost_percent"] > 25, end["sum"]
    assert 0.6 * flood_rate_mbps < received_mbps < 1.15 * flood_rate_mbps, received_mbps
    # ... while wavelength 1 lost nothing, kept order and saw no shaper backlog (a shared
    # queue would add ~20 ms to every probe; CPU noise on a busy machine moves the median
    # but not the fastest probes).
    assert loaded.lost == 0 and loaded.reordered == 0
    assert loaded.forward_us.min < quiet.forward_us.min + 2000, (loaded.forward_us, quiet.forward_us)
    assert loaded.forward_us.median < quiet.forward_us.median + 10_000, (loaded.forward_us, quiet.forward_us)


def test_tcp_on_one_wavelength_gets_its_configured_rate_and_a_new_rate_applies(session):
    client = session.client
    lp = client.create_lightpath("a", "b", route=["a", "b"], wavelength=0)
    try:
        end = finish(*iperf(session, "a", "b"))
        configured_mbps = end["sum_received"]["bits_per_second"] / 1e6
        session.network.set_wavelength_rate("a", "b", 0, 10e6)
        try:
            end = finish(*iperf(session, "a", "b"))
            reduced_mbps = end["sum_received"]["bits_per_second"] / 1e6
        finally:
            session.network.set_wavelength_rate("a", "b", 0, RATE_MBPS * 1e6)
    finally:
        client.delete_lightpath(lp["id"])
    assert 0.6 * RATE_MBPS < configured_mbps < 1.05 * RATE_MBPS, configured_mbps
    assert 5 < reduced_mbps < 10.5, reduced_mbps
