"""The northbound HTTP JSON API as a pure request -> response function.

The HTTP server (in :mod:`controllers.apn_controller`) only moves bytes; every
decision (routing, validation, status codes, JSON bodies) is here, so unit tests
call :func:`handle` with a fake flow pusher behind the state. Documented in
docs/controller-api.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import unquote

from controllers.flowplan import describe
from controllers.state import BadRequest, ControllerError, ControllerState, NotFound
from twin.model.optics import span_key

LOG = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Response:
    status: int
    body: object = None   # JSON-serialisable; None means no body (204)

    def encode(self) -> bytes:
        return b"" if self.body is None else (json.dumps(self.body, indent=1) + "\n").encode()


class MethodNotAllowed(ControllerError):
    status = 405


def _json_body(body: bytes) -> dict:
    if len(body) > MAX_BODY:
        raise BadRequest(f"request body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _only(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def topology(state: ControllerState) -> dict:
    network = state.network
    sites = []
    for site in network.topology.sites:
        sw = state.portmap.switches[site.id]
        sites.append({"id": site.id, "name": site.name, "area": site.area, "index": sw.index,
                      "dpid": f"{sw.dpid:016x}", "connected": site.id in state.connected})
    spans = []
    for span in network.topology.spans:
        a, b = span.ends
        spans.append({"a": a, "b": b, "length_km": round(span.length, 3), "wavelengths": span.wavelengths,
                      "one_way_ms": round(network.span_delay(a, b) * 1e3, 4),
                      "down": span_key(a, b) in network.down})
    return {"name": network.topology.name, "sites": sites, "spans": spans}


def handle(state: ControllerState, method: str, path: str, body: bytes = b"") -> Response:
    """Answer one request; every error is a JSON ``{"error": message}`` with its status."""
    try:
        return _route(state, method.upper(), path, body)
    except ControllerError as err:
        return Response(err.status, {"error": str(err)})
    except Exception as err:  # a bug: still answer JSON, keep the traceback in the log
        LOG.exception("error handling %s %s", method, path)
        return Response(500, {"error": f"internal error: {type(err).__name__}: {err}"})


def _route(state: ControllerState, method: str, path: str, body: bytes) -> Response:
    path = path.split("?", 1)[0].rstrip("/") or "/"
    parts = [unquote(p) for p in path.strip("/").split("/")] if path != "/" else []

    def allow(*methods: str) -> None:
        if method not in methods:
            raise MethodNotAllowed(f"{method} not allowed on {path}; use {', '.join(methods)}")

    match parts:
        case ["health"]:
            allow("GET")
            return Response(200, state.health())
        case ["topology"]:
            allow("GET")
            with state.lock:
                return Response(200, topology(state))
        case ["occupancy"]:
            allow("GET")
            with state.lock:
                return Response(200, state.occupancy.table())
        case ["lightpaths"]:
            allow("GET", "POST")
            if method == "GET":
                return Response(200, [lp.to_dict() for lp in state.list_lightpaths()])
            data = _json_body(body)
            _only(data, {"src", "dst", "route", "wavelength", "id"})
            for key in ("src", "dst"):
                if key not in data:
                    raise BadRequest(f"missing key {key!r}; send {{\"src\": SITE, \"dst\": SITE}}")
            lightpath = state.create_lightpath(data["src"], data["dst"], route=data.get("route"),
                                               wavelength=data.get("wavelength"), lightpath_id=data.get("id"))
            return Response(201, lightpath.to_dict())
        case ["lightpaths", lightpath_id]:
            allow("GET", "DELETE")
            if method == "GET":
                return Response(200, state.get_lightpath(lightpath_id).to_dict())
            state.delete_lightpath(lightpath_id)
            return Response(204)
        case ["services"]:
            allow("GET")
            return Response(200, state.services())
        case ["services", vip]:
            allow("GET", "PUT", "DELETE")
            if method == "GET":
                services = state.services()
                if vip not in services:
                    raise NotFound(f"no service VIP {vip}; GET /services lists them")
                return Response(200, services[vip])
            if method == "DELETE":
                state.delete_service(vip)
                return Response(204)
            data = _json_body(body)
            _only(data, {"site", "force"})
            if "site" not in data:
                raise BadRequest("missing key 'site'; send {\"site\": SITE}")
            force = data.get("force", False)
            if not isinstance(force, bool):
                raise BadRequest("force must be true or false")
            return Response(200, state.set_service_site(vip, data["site"], force=force))
        case ["services", vip, "drained"]:
            allow("POST")
            data = _json_body(body)
            _only(data, {"site"})
            if "site" not in data:
                raise BadRequest("missing key 'site'; send {\"site\": DRAINING_SITE}")
            return Response(200, state.service_drained(vip, data["site"]))
        case ["spans", a, b, ("cut" | "repair") as action]:
            allow("POST")
            _only(_json_body(body), set())
            if action == "cut":
                return Response(200, state.cut_span(a, b))
            return Response(200, state.repair_span(a, b))
        case ["flows"]:
            allow("GET")
            with state.lock:
                desired = state.desired()
                return Response(200, {site: [describe(f) for f in sorted(flows)] for site, flows in desired.items()})
        case _:
            raise NotFound(f"no endpoint {path}; see docs/controller-api.md")
