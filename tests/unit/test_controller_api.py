"""The HTTP API handlers (controllers.api.handle) with a fake switch side: statuses and JSON errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controllers.api import handle
from controllers.state import ControllerState, PushError
from twin.model.optics import OpticalNetwork
from twin.model.portmap import build_port_map
from twin.model.validate import load_topology

TRIANGLE = Path(__file__).resolve().parents[2] / "topologies" / "triangle.yaml"


class FakePusher:
    def __init__(self):
        self.fail = False

    def apply(self, site, change):
        if self.fail:
            raise PushError(f"switch {site}: refused")
        return True

    def replace(self, site, flows):
        return True


@pytest.fixture
def state():
    topology = load_topology(TRIANGLE)
    st = ControllerState(OpticalNetwork(topology), build_port_map(topology), FakePusher())
    for site in st.sites:
        st.switch_up(site)
    return st


def call(state, method, path, body=None):
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    response = handle(state, method, path, raw)
    decoded = json.loads(response.encode()) if response.body is not None else None
    return response.status, decoded


def test_create_returns_201_with_the_lightpath(state):
    status, body = call(state, "POST", "/lightpaths", {"src": "a", "dst": "c", "id": "x1"})
    assert status == 201
    assert body == {"id": "x1", "src": "a", "dst": "c", "route": ["a", "c"], "wavelength": 0,
                    "length_km": 306.122, "one_way_ms": 1.5, "rtt_ms": 3.0}
    assert call(state, "GET", "/lightpaths/x1") == (200, body)
    assert call(state, "GET", "/lightpaths") == (200, [body])


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", {"src": "a"}, {"src": "a", "dst": "zz"}, {"src": "a", "dst": "a"},
    {"src": 1, "dst": "c"}, {"src": "a", "dst": "c", "wavelength": "0"}, {"src": "a", "dst": "c", "wavelength": -1},
    {"src": "a", "dst": "c", "wavelength": True}, {"src": "a", "dst": "c", "route": "a-c"},
    {"src": "a", "dst": "c", "route": ["a", "q", "c"]}, {"src": "a", "dst": "c", "colour": "red"},
    {"src": "a", "dst": "c", "id": ""}, {"src": "a", "dst": "c", "id": "a/b"},
])
def test_bad_input_is_400_with_a_json_error(state, body):
    status, answer = call(state, "POST", "/lightpaths", body)
    assert status == 400
    assert isinstance(answer["error"], str) and answer["error"]
    assert state.occupancy.holder == {}


def test_blocked_is_409_with_the_reason(state):
    for _ in range(4):   # 2 wavelengths direct + 2 via b
        assert call(state, "POST", "/lightpaths", {"src": "a", "dst": "c"})[0] == 201
    status, body = call(state, "POST", "/lightpaths", {"src": "a", "dst": "c"})
    assert status == 409 and "no lightpath a->c" in body["error"]


def test_duplicate_id_is_409(state):
    assert call(state, "POST", "/lightpaths", {"src": "a", "dst": "b", "id": "same"})[0] == 201
    status, body = call(state, "POST", "/lightpaths", {"src": "b", "dst": "c", "id": "same"})
    assert status == 409 and "already exists" in body["error"]


def test_wavelength_pinned_but_taken_is_409(state):
    call(state, "POST", "/lightpaths", {"src": "a", "dst": "c", "wavelength": 1, "route": ["a", "c"]})
    status, body = call(state, "POST", "/lightpaths", {"src": "a", "dst": "c", "wavelength": 1, "route": ["a", "c"]})
    assert status == 409 and "wavelength 1" in body["error"]


def test_delete_is_204_then_404(state):
    call(state, "POST", "/lightpaths", {"src": "a", "dst": "b", "id": "d1"})
    assert call(state, "DELETE", "/lightpaths/d1") == (204, None)
    status, body = call(state, "DELETE", "/lightpaths/d1")
    assert status == 404 and "d1" in body["error"]
    assert call(state, "GET", "/lightpaths/d1")[0] == 404


def test_occupancy_names_holders(state):
    call(state, "POST", "/lightpaths", {"src": "a", "dst": "c", "route": ["a", "b", "c"], "id": "t"})
    status, body = call(state, "GET", "/occupancy")
    assert status == 200
    assert body == {"a-b": ["t", None], "a-c": [None, None], "b-c": ["t", None]}


def test_health_and_topology(state):
    assert call(state, "GET", "/health")[1]["switches_connected"] == 3
    status, body = call(state, "GET", "/topology")
    assert status == 200 and [s["id"] for s in body["sites"]] == ["a", "b", "c"]
    assert {(s["a"], s["b"]) for s in body["spans"]} == {("a", "b"), ("b", "c"), ("a", "c")}


def test_services_put_get_delete(state):
    call(state, "POST", "/lightpaths", {"src": "a", "dst": "c"})
    status, body = call(state, "PUT", "/services/10.3.0.1", {"site": "c"})
    assert status == 200 and body == {"vip": "10.3.0.1", "site": "c", "draining": [], "reachable_from": ["a", "c"]}
    assert call(state, "GET", "/services")[1] == {"10.3.0.1": body}
    status, body = call(state, "PUT", "/services/10.3.0.1", {"site": "b"})
    assert status == 409 and "cut off" in body["error"]
    assert call(state, "PUT", "/services/10.3.0.1", {"site": "nowhere"})[0] == 400
    assert call(state, "PUT", "/services/10.9.9.9", {"site": "a"})[0] == 400
    assert call(state, "PUT", "/services/10.3.0.1", {"site": "b", "force": "yes"})[0] == 400
    assert call(state, "DELETE", "/services/10.3.0.1") == (204, None)
    assert call(state, "GET", "/services/10.3.0.1")[0] == 404


def test_switch_failure_is_503_and_nothing_changes(state):
    state.pusher.fail = True
    status, body = call(state, "POST", "/lightpaths", {"src": "a", "dst": "c"})
    assert status == 503 and "refused" in body["error"]
    assert call(state, "GET", "/lightpaths") == (200, [])


def test_unknown_path_404_and_wrong_method_405(state):
    status, body = call(state, "GET", "/nope")
    assert status == 404 and "error" in body
    status, body = call(state, "PATCH", "/lightpaths")
    assert status == 405 and "GET, POST" in body["error"]


def test_repoint_then_drained(state):
    for pair in (("a", "b"), ("a", "c"), ("b", "c")):
        call(state, "POST", "/lightpaths", {"src": pair[0], "dst": pair[1]})
    call(state, "PUT", "/services/10.3.0.1", {"site": "c"})
    status, body = call(state, "PUT", "/services/10.3.0.1", {"site": "b"})
    assert status == 200 and body["site"] == "b" and body["draining"] == ["c"]
    status, body = call(state, "POST", "/services/10.3.0.1/drained", {"site": "b"})
    assert status == 409 and "hosts it" in body["error"]
    assert call(state, "POST", "/services/10.3.0.1/drained", {})[0] == 400
    assert call(state, "POST", "/services/10.3.0.1/drained", {"site": "c", "now": True})[0] == 400
    assert call(state, "GET", "/services/10.3.0.1/drained")[0] == 405
    assert call(state, "POST", "/services/10.3.0.7/drained", {"site": "c"})[0] == 404
    status, body = call(state, "POST", "/services/10.3.0.1/drained", {"site": "c"})
    assert status == 200 and body == {"vip": "10.3.0.1", "site": "b", "draining": [],
                                      "reachable_from": ["a", "b", "c"]}


def test_span_cut_and_repair(state):
    call(state, "POST", "/lightpaths", {"src": "a", "dst": "c", "id": "ac"})
    status, body = call(state, "POST", "/spans/c/a/cut")
    assert status == 200 and body["span"] == "a-c" and body["down"] is True
    [entry] = body["lightpaths"]
    assert entry["id"] == "ac" and entry["route"] == ["a", "b", "c"] and entry["restored_ms"] >= 0
    assert call(state, "GET", "/lightpaths/ac")[1]["route"] == ["a", "b", "c"]
    assert next(s for s in call(state, "GET", "/topology")[1]["spans"] if (s["a"], s["b"]) == ("a", "c"))["down"]
    assert call(state, "POST", "/spans/a/c/cut")[0] == 409
    assert call(state, "POST", "/spans/a/zz/cut")[0] == 400
    assert call(state, "POST", "/spans/a/c/cut", {"x": 1})[0] == 400
    assert call(state, "GET", "/spans/a/c/cut")[0] == 405
    assert call(state, "POST", "/spans/a/c/repair") == (200, {"span": "a-c", "down": False})
    assert call(state, "POST", "/spans/a/c/repair")[0] == 409
