"""Service steering with connection affinity, and restoration after a fibre cut, on ring4 (root).

Real OVS conntrack in the userspace datapath, real TCP between Mininet hosts, real
link-down on the cut span's switch ports. Figures are printed (pytest -s) and
measured properly in benchmarks; asserted bounds here are loose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twin.emulation import faults, records
from twin.emulation.network import in_host
from twin.emulation.probe import wait_reflector_ready
from twin.emulation.session import PROBE_PORT, TwinSession
from twin.emulation.vip import add_vip
from twin.model import addressing as ad

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
RING4 = str(HERE.parent / "fixtures" / "topologies" / "ring4.yaml")
HELPER = str(HERE / "vip_tcp.py")
VIP, PORT = "10.3.0.1", 8700
CLIENT, OLD, NEW = "ra", "rb", "rd"
_clients: list[subprocess.Popen] = []   # ended before the network goes, see lab()


@pytest.fixture(scope="module")
def lab():
    before = ours(records.host_state())
    servers: list[subprocess.Popen] = []
    with TwinSession(RING4) as session:
        try:
            for site in (OLD, NEW):
                session.client.create_lightpath(CLIENT, site)
                add_vip(session.network, site, VIP)
                pid = session.network.host_pid(ad.host_name(site, ad.COMPUTE))
                servers.append(subprocess.Popen(in_host(pid, [sys.executable, HELPER, "serve", "--bind", VIP,
                                                              "--port", str(PORT), "--site", site]),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            time.sleep(0.5)
            assert all(s.poll() is None for s in servers), "a VIP server did not start"
            yield session
        finally:
            # End every TCP end while the network still carries the FINs: a socket orphaned
            # with an unacknowledged FIN keeps its network namespace (and veth) for minutes.
            for proc in _clients + servers:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(5)
            time.sleep(0.5)
    assert ours(records.host_state()) == before, "left behind"


def ours(state: dict) -> dict:
    """The part of the host's state that ring4 names (other topologies may be up at the same time)."""
    sites = ("ra", "rb", "rc", "rd")
    return {kind: {n for n in names if n.split("_")[0] in sites} for kind, names in state.items()
            if kind in ("bridges", "veths")}


def client(session, *args: str, **popen) -> subprocess.Popen:
    pid = session.network.host_pid(ad.host_name(CLIENT, ad.USERS))
    proc = subprocess.Popen(in_host(pid, [sys.executable, HELPER, *args, "--dst", VIP, "--port", str(PORT)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    _clients.append(proc)
    return proc


def result(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-1000:]
    return json.loads(out)


def one_request_site(session) -> str:
    outcome = result(client(session, "load", "--rate", "1", "--duration", "1", "--size", "2000"))
    assert outcome["failures"] == [], outcome
    [site] = outcome["sites"]
    return site


def test_open_connection_stays_while_new_ones_move_then_drain(lab):
    c = lab.client
    c.set_service_site(VIP, OLD)
    assert one_request_site(lab) == OLD
    held = client(lab, "hold", "--duration", "5", "--interval", "0.05")
    time.sleep(1.5)
    answer = c.set_service_site(VIP, NEW, force=True)  # rb's own users are not clients here
    assert answer["site"] == NEW and answer["draining"] == [OLD]
    assert one_request_site(lab) == NEW            # a new connection reaches the new site
    outcome = result(held)
    assert outcome["error"] is None, outcome["error"]
    sites = {site for _, site in outcome["replies"]}
    assert sites == {OLD} and outcome["replies"][-1][0] > 4.5   # the open one kept working at the old site
    print(f"\nopen connection: {len(outcome['replies'])} replies, all from {OLD}, across the re-point")
    c.service_drained(VIP, OLD)
    assert c.services()[VIP]["draining"] == []
    after = result(client(lab, "hold", "--duration", "1", "--interval", "0.05"))
    assert after["error"] is None and {s for _, s in after["replies"]} == {NEW}
    assert one_request_site(lab) == NEW


def test_repoint_under_steady_uploads_loses_nothing(lab):
    c = lab.client
    here = c.services()[VIP]["site"]
    there = OLD if here == NEW else NEW
    load = client(lab, "load", "--rate", "200", "--duration", "3", "--size", "20000")
    time.sleep(1.5)
    t0 = time.monotonic()
    c.set_service_site(VIP, there, force=True)
    repoint_ms = (time.monotonic() - t0) * 1e3
    outcome = result(load)
    print(f"\nuploads: sent {outcome['sent']}, answered by {outcome['sites']}, "
          f"failures {len(outcome['failures'])}; re-point took {repoint_ms:.1f} ms")
    assert outcome["failures"] == [], outcome["failures"][:5]
    assert sum(outcome["sites"].values()) == outcome["sent"] == 600
    assert set(outcome["sites"]) == {here, there}  # both answered: the move happened mid-run
    c.service_drained(VIP, here)


def test_cut_span_restores_the_lightpath(lab):
    c = lab.client
    lp = next(x for x in c.lightpaths() if {x["src"], x["dst"]} == {CLIENT, OLD})
    assert lp["route"] in ([CLIENT, OLD], [OLD, CLIENT])
    net = lab.network
    rate, count = 1000.0, 3000
    dst_ip = net.host_ip(OLD, ad.COMPUTE)
    reflector = subprocess.Popen(in_host(net.host_pid(ad.host_name(OLD, ad.COMPUTE)),
                                         [sys.executable, "-m", "twin.emulation.probe", "reflect", "--bind", dst_ip,
                                          "--port", str(PROBE_PORT)]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_reflector_ready(reflector, f"at {OLD}")
        sender = subprocess.Popen(in_host(net.host_pid(ad.host_name(CLIENT, ad.USERS)),
                                          [sys.executable, "-m", "twin.emulation.probe", "send", "--dst", dst_ip,
                                           "--port", str(PROBE_PORT), "--rate", str(rate), "--count", str(count),
                                           "--json", "--samples"]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        faults.cut_span(net.port_map, CLIENT, OLD)          # the fibre goes dark...
        answer = c.cut_span(CLIENT, OLD)                     # ...and the controller is told
        out, err = sender.communicate(timeout=60)
        assert sender.returncode == 0, err
    finally:
        reflector.terminate()
        reflector.wait(5)
        faults.repair_span(net.port_map, CLIENT, OLD)
        c.repair_span(CLIENT, OLD)
    [entry] = [e for e in answer["lightpaths"] if e["id"] == lp["id"]]
    assert entry["route"] in (["ra", "rd", "rc", "rb"], ["rb", "rc", "rd", "ra"]), entry
    data = json.loads(out)
    seqs = sorted(s[0] for s in data["samples"])
    gaps = [b - a - 1 for a, b in zip(seqs, seqs[1:])]
    outage_ms = (max(gaps) + 1) / rate * 1e3
    lost = count - len(seqs)
    print(f"\nrestoration: controller {entry['restored_ms']:.1f} ms (cut request to flows committed); "
          f"probe gap {outage_ms:.0f} ms ({lost} of {count} probes lost) at {rate:.0f}/s")
    assert seqs[-1] >= count - 10                           # probes flow again over the new route
    assert outage_ms < 2000
    forward = {s[0]: s[2] for s in data["samples"]}
    before = sorted(forward[s] for s in seqs if s < 900)
    after = sorted(forward[s] for s in seqs if s > count - 500)
    # Three spans instead of one: about 2 ms more one way.
    assert after[len(after) // 2] - before[len(before) // 2] > 1500, (before[len(before) // 2], after[len(after) // 2])
