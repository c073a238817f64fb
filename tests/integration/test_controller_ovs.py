"""The controller against real Open vSwitch: three netdev bridges joined by patch ports, no Mininet.

Creates bridges ``twt<tag><site>`` (tag from this process id) and the controller
process; the fixture removes exactly those, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from twin.emulation.controller import ControllerError, ControllerProcess, free_port
from twin.emulation.testbed import PatchTestbed
from twin.model.validate import load_topology

pytestmark = pytest.mark.root

TRIANGLE = Path(__file__).resolve().parents[2] / "topologies" / "triangle.yaml"


@pytest.fixture
def lab():
    ofp_port = free_port()
    controller = ControllerProcess(TRIANGLE, ofp_port=ofp_port)
    testbed = PatchTestbed(load_topology(TRIANGLE), prefix=f"twt{os.getpid() % 4096:03x}", controller_port=ofp_port)
    try:
        controller.start()
        testbed.build()
        controller.client.wait_switches(3, timeout=30)
        yield controller, testbed
    finally:
        controller.stop()
        testbed.teardown()


def app_flows(testbed, site):
    return [f for f in testbed.dump_flows(site) if "cookie=0x7477" in f]


def has(flows, text):
    return any(text in f for f in flows)


def wait_reconciled(controller, testbed, timeout=10.0):
    """True once every bridge holds exactly as many of our flows as the controller wants."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wanted = controller.client.request("GET", "/flows")
        if all(len(app_flows(testbed, s)) == len(wanted[s]) for s in wanted):
            return True
        time.sleep(0.1)
    return False


def test_lightpath_flows_appear_and_go(lab):
    controller, testbed = lab
    pm = testbed.portmap.switches
    baseline = {s: sorted(app_flows(testbed, s)) for s in pm}
    assert all(has(baseline[s], "priority=0 actions=drop") for s in pm)

    lp = controller.client.create_lightpath("a", "c", route=["a", "b", "c"])
    w = lp["wavelength"]
    (b_west, vid), (b_east, _) = pm["b"].wavelength_channel("a", w), pm["b"].wavelength_channel("c", w)
    b = app_flows(testbed, "b")
    # Transit: port and VLAN in, the other trunk out, tag kept.
    assert has(b, f"priority=300,in_port={b_west},dl_vlan={vid} actions=output:{b_east}")
    assert has(b, f"priority=300,in_port={b_east},dl_vlan={vid} actions=output:{b_west}")
    a_trunk, c_trunk = pm["a"].trunk_port("b").number, pm["c"].trunk_port("b").number
    # Add: tag with the wavelength's VLAN, out of the trunk. Drop: pop and look up again.
    assert has(app_flows(testbed, "a"), f"priority=200,ip,nw_dst=10.1.3.0/24 actions=push_vlan:0x8100,"
                                        f"set_field:{0x1000 | vid}->vlan_vid,output:{a_trunk}")
    assert has(app_flows(testbed, "c"), f"priority=200,ip,nw_dst=10.1.1.0/24 actions=push_vlan:0x8100,"
                                        f"set_field:{0x1000 | vid}->vlan_vid,output:{c_trunk}")
    assert has(app_flows(testbed, "c"), f"priority=300,in_port={c_trunk},dl_vlan={vid} actions=pop_vlan,resubmit(,0)")
    # A packet from a's users to c's compute host crosses b on the wavelength and is delivered.
    trace = testbed.trace("a", "in_port=2,ip,nw_dst=10.1.3.1")
    sections = trace.split("bridge(")
    at_b = next(x for x in sections if x.startswith(f'"{testbed.bridge["b"]}"'))
    at_c = next(x for x in sections if x.startswith(f'"{testbed.bridge["c"]}"'))
    assert f"output:{b_east}" in at_b
    assert "pop_vlan" in at_c and "set_field:02:00:00:03:00:01->eth_dst" in at_c and "output:1" in at_c

    controller.client.delete_lightpath(lp["id"])
    assert {s: sorted(app_flows(testbed, s)) for s in pm} == baseline
    with pytest.raises(ControllerError) as err:
        controller.client.delete_lightpath(lp["id"])
    assert err.value.status == 404


def test_restart_after_sigkill_reconciles(lab):
    controller, testbed = lab
    controller.client.create_lightpath("a", "c", route=["a", "b", "c"])
    controller.client.set_service_site("10.3.0.1", "c")
    # A flow someone else owns (cookie 0) must survive our reconciliation.
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "add-flow", testbed.bridge["b"],
                    "priority=5,udp,tp_dst=9,actions=drop"], check=True)
    pid = controller.pid
    controller.kill()
    assert controller.pid is None
    with pytest.raises(OSError):
        os.kill(pid, 0)
    # Stale flows of the dead controller are still in the switches (fail_mode secure keeps them).
    assert has(app_flows(testbed, "b"), "priority=300")

    controller.start()
    controller.client.wait_switches(3, timeout=30)
    assert controller.client.lightpaths() == []
    assert wait_reconciled(controller, testbed)
    for site in testbed.portmap.switches:
        flows = app_flows(testbed, site)
        assert not has(flows, "priority=300") and not has(flows, "priority=200") and not has(flows, "10.3.0.1")
    assert has(testbed.dump_flows("b"), "tp_dst=9")

    # And the restarted controller works as before.
    lp = controller.client.create_lightpath("a", "c")
    port, vid = testbed.portmap.switches["a"].wavelength_channel("c", lp["wavelength"])
    assert has(app_flows(testbed, "a"), f"set_field:{0x1000 | vid}->vlan_vid,output:{port}")
