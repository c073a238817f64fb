"""The APN controller app: a thin os-ken (or Ryu) shell around :class:`ControllerState`.

All decisions live in :mod:`controllers.flowplan`, :mod:`controllers.state` and
:mod:`controllers.api` (pure, unit-tested). This module only

- tracks which switch is which site (datapath id from the port map),
- turns flow diffs into OpenFlow 1.4 bundles (open, add..., commit) and waits for
  the commit reply, so an API call returns once the switch holds its flows,
- replaces a switch's flows whole when it connects (controller restart included),
- serves the JSON API on loopback (stdlib HTTP server: os-ken 4 no longer ships
  its WSGI module, and this way the file runs unchanged under Ryu too).

Configuration: environment variable ``TWIN_CONTROLLER_CONFIG`` names a JSON file
``{"topology_path": ..., "portmap_path": ..., "api_host": "127.0.0.1", "api_port": 8181}``
(``portmap_path`` optional: without it the numbering of
:func:`twin.model.portmap.build_port_map` is assumed). Run it with
``python -m controllers.run`` or ``ryu-manager controllers/apn_controller.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:  # os-ken (maintained fork) first, Ryu where it still installs
    from os_ken.base import app_manager
    from os_ken.controller import ofp_event
    from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
    from os_ken.lib import hub
    from os_ken.ofproto import nicira_ext, ofproto_v1_4
    BaseApp = app_manager.OSKenApp
except ImportError:  # pragma: no cover - exercised only where Ryu is installed
    from ryu.base import app_manager
    from ryu.controller import ofp_event
    from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
    from ryu.lib import hub
    from ryu.ofproto import nicira_ext, ofproto_v1_4
    BaseApp = app_manager.RyuApp

from controllers import api
from controllers.flowplan import COOKIE_APP, COOKIE_MASK, FlowDiff, FlowSpec
from controllers.state import ControllerState, PushError
from twin.errors import TwinError
from twin.model.optics import OpticalNetwork
from twin.model.portmap import PortMap, build_port_map
from twin.model.validate import load_topology

CONFIG_ENV = "TWIN_CONTROLLER_CONFIG"
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8181
# A commit on a loopback OVS takes about a millisecond; seconds mean the switch is gone.
BUNDLE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ControllerConfig:
    topology_path: str
    portmap_path: str | None = None
    api_host: str = DEFAULT_API_HOST
    api_port: int = DEFAULT_API_PORT
    # After each change set, drop Open vSwitch's cached datapath flows (ovs-appctl
    # revalidator/purge on this host). Set by the emulation for OVS's userspace
    # datapath: OVS 3.1 sometimes kept a megaflow's old actions after a rule change
    # (a transit cross-connect replaced by an add/drop on the same port and VLAN sent
    # the new lightpath's frames on to the old next span, for seconds).
    purge_datapath_flows: bool = False

    @classmethod
    def from_env(cls) -> "ControllerConfig":
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise TwinError(f"set {CONFIG_ENV} to a JSON file with topology_path (and optionally "
                            "portmap_path, api_host, api_port)")
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as err:
            raise TwinError(f"cannot read controller config {path}: {err}") from None


class _Bundle:
    """One bundle in flight: done when the commit is acknowledged or any part fails."""

    def __init__(self, site: str):
        self.site = site
        self.done = threading.Event()
        self.error: str | None = None

    def finish(self, error: str | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class APNController(BaseApp):
    """OpenFlow 1.4 app: lightpaths and service steering for the emulated APN."""

    OFP_VERSIONS = [ofproto_v1_4.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = ControllerConfig.from_env()
        topology = load_topology(self.config.topology_path)
        portmap = PortMap.load(self.config.portmap_path) if self.config.portmap_path else build_port_map(topology)
        self.state = ControllerState(OpticalNetwork(topology), portmap, self)
        self.datapaths: dict[str, object] = {}
        self._pending: dict[int, _Bundle] = {}        # xid -> bundle it belongs to
        self._commits: dict[int, _Bundle] = {}        # xid of a commit request -> bundle
        self._send_lock = threading.Lock()            # Datapath.set_xid is not thread-safe
        self._bundle_ids = itertools.count(1)
        self._http: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        thread = super().start()
        self._http = ThreadingHTTPServer((self.config.api_host, self.config.api_port), _handler_for(self.state))
        self._http.daemon_threads = True
        hub.spawn(self._http.serve_forever)
        self.logger.info("API on http://%s:%d, expecting %d switches", self.config.api_host,
                         self.config.api_port, len(self.state.sites))
        return thread

    def stop(self):
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        super().stop()

    # -- switches ----------------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        switch = self.state.portmap.by_dpid(dp.id) if dp.id is not None else None
        if ev.state == MAIN_DISPATCHER:
            if switch is None:
                self.logger.warning("switch with datapath id %s is not in the port map; ignoring it", dp.id)
                return
            self.datapaths[switch.site] = dp
            self.logger.info("switch %s connected (dpid %d)", switch.site, dp.id)
            # Pushing waits for replies, which this event thread delivers: do it in another thread.
            hub.spawn(self.state.switch_up, switch.site)
        elif ev.state == DEAD_DISPATCHER and switch is not None and self.datapaths.get(switch.site) is dp:
            del self.datapaths[switch.site]
            self._fail_pending(switch.site, "switch disconnected")
            self.logger.warning("switch %s disconnected", switch.site)
            hub.spawn(self._switch_down, switch.site)

    def _switch_down(self, site: str) -> None:
        with self.state.lock:
            if site not in self.datapaths:   # not already back on a new connection
                self.state.switch_down(site)

    @set_ev_cls(ofp_event.EventOFPBundleCtrlMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _bundle_reply(self, ev):
        msg = ev.msg
        if msg.type == msg.datapath.ofproto.OFPBCT_COMMIT_REPLY:
            bundle = self._commits.get(msg.xid)
            if bundle is not None:
                bundle.finish()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        msg = ev.msg
        bundle = self._pending.get(msg.xid)
        text = f"switch error type {msg.type} code {msg.code}"
        if bundle is None:
            self.logger.error("%s (xid %d, not ours)", text, msg.xid)
        else:
            bundle.finish(text)

    def _fail_pending(self, site: str, why: str) -> None:
        for bundle in list(self._pending.values()):
            if bundle.site == site:
                bundle.finish(why)

    # -- FlowPusher --------------------------------------------------------------------------
    def apply(self, site: str, change: FlowDiff) -> bool:
        dp = self.datapaths.get(site)
        if dp is None:
            return False
        ofp = dp.ofproto
        mods = [self._flow_mod(dp, f, ofp.OFPFC_ADD) for f in change.adds]
        mods += [self._flow_mod(dp, f, ofp.OFPFC_MODIFY_STRICT) for f in change.modifies]
        mods += [self._flow_mod(dp, f, ofp.OFPFC_DELETE_STRICT) for f in change.deletes]
        self._bundle(site, dp, mods)
        return True

    def settled(self) -> None:
        """A change set is committed on every switch it touched (see ``purge_datapath_flows``)."""
        if not self.config.purge_datapath_flows:
            return
        try:
            proc = subprocess.run(["ovs-appctl", "--timeout=10", "revalidator/purge"], capture_output=True,
                                  text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as err:
            self.logger.warning("purging datapath flows failed: %s", err)
            return
        if proc.returncode != 0:
            self.logger.warning("purging datapath flows failed: %s", proc.stderr.strip())

    def replace(self, site: str, flows: frozenset[FlowSpec]) -> bool:
        dp = self.datapaths.get(site)
        if dp is None:
            return False
        ofp, parser = dp.ofproto, dp.ofproto_parser
        # Only flows carrying our cookie go: anything else in the switch is not ours.
        wipe = parser.OFPFlowMod(dp, cookie=COOKIE_APP, cookie_mask=COOKIE_MASK, table_id=ofp.OFPTT_ALL,
                                 command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY)
        self._bundle(site, dp, [wipe] + [self._flow_mod(dp, f, ofp.OFPFC_ADD) for f in sorted(flows)])
        self.logger.info("switch %s reconciled: %d flows", site, len(flows))
        return True

    def _bundle(self, site: str, dp, mods: list) -> None:
        """Send mods as one atomic bundle and wait for the commit reply."""
        if not mods:
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        bundle = _Bundle(site)
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        flags = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
        messages = [parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_OPEN_REQUEST, flags, [])]
        messages += [parser.OFPBundleAddMsg(dp, bundle_id, flags, mod, []) for mod in mods]
        commit = parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_COMMIT_REQUEST, flags, [])
        messages.append(commit)
        with self._send_lock:
            for message in messages:
                dp.set_xid(message)
                self._pending[message.xid] = bundle
            self._commits[commit.xid] = bundle
        try:
            # No waiting for the open reply: OVS handles one connection's messages in order,
            # and any failure comes back as an error carrying the failing message's xid.
            for message in messages:
                if not dp.send_msg(message):
                    bundle.finish("switch connection closed")
                    break
            if not bundle.done.wait(BUNDLE_TIMEOUT_S):
                bundle.finish(f"no commit reply within {BUNDLE_TIMEOUT_S:g} s")
        finally:
            with self._send_lock:
                for message in messages:
                    self._pending.pop(message.xid, None)
                self._commits.pop(commit.xid, None)
        if bundle.error is not None:
            # A failed bundle is discarded by OVS at commit; an explicit discard covers the rest.
            discard = parser.OFPBundleCtrlMsg(dp, bundle_id, ofp.OFPBCT_DISCARD_REQUEST, flags, [])
            with self._send_lock:
                dp.set_xid(discard)
            dp.send_msg(discard)
            raise PushError(f"switch {site}: {bundle.error}")

    @staticmethod
    def _flow_mod(dp, spec: FlowSpec, command: int):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        match = {}
        for field, value in spec.match:
            if field == "ipv4_dst" and "/" in str(value):
                address, length = str(value).split("/")
                mask = (0xFFFFFFFF << (32 - int(length))) & 0xFFFFFFFF
                value = (address, ".".join(str(mask >> s & 0xFF) for s in (24, 16, 8, 0)))
            match[field] = value
        actions = []
        for name, value in spec.actions:
            if name == "output":
                actions.append(parser.OFPActionOutput(int(value)))
            elif name == "set_eth_dst":
                actions.append(parser.OFPActionSetField(eth_dst=value))
            elif name == "push_vlan":
                actions.append(parser.OFPActionPushVlan(int(value)))
            elif name == "set_vlan_vid":
                # OpenFlow 1.3+ writes vlan_vid with the "present" bit set.
                actions.append(parser.OFPActionSetField(vlan_vid=ofp.OFPVID_PRESENT | int(value)))
            elif name == "pop_vlan":
                actions.append(parser.OFPActionPopVlan())
            elif name == "resubmit":
                # Nicira resubmit(,table): look the packet up again with its new headers. The
                # extension takes OpenFlow 1.0 port numbers: 0xfff8 is OFPP_IN_PORT there.
                actions.append(parser.NXActionResubmitTable(in_port=0xFFF8, table_id=int(value)))
            elif name in ("ct_recirc", "ct_track", "ct_commit"):
                actions.append(_ct_action(parser, name, value))
            else:
                raise ValueError(f"unknown action {name!r} in {spec}")
        # An empty instruction list drops (the table-miss rule).
        instructions = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        return parser.OFPFlowMod(dp, cookie=spec.cookie, table_id=spec.table, command=command,
                                 priority=spec.priority, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                                 match=parser.OFPMatch(**match), instructions=instructions)


def _ct_action(parser, name: str, value):
    """Nicira ct() action: ct_recirc (zone, table), ct_track zone, ct_commit (zone, mark)."""
    # An empty zone_src means zone_ofs_nbits carries the zone itself (an immediate).
    if name == "ct_recirc":
        zone, table = value
        return parser.NXActionCT(flags=0, zone_src="", zone_ofs_nbits=int(zone), recirc_table=int(table),
                                 alg=0, actions=[])
    if name == "ct_track":
        return parser.NXActionCT(flags=0, zone_src="", zone_ofs_nbits=int(value),
                                 recirc_table=nicira_ext.NX_CT_RECIRC_NONE, alg=0, actions=[])
    zone, mark = value
    return parser.NXActionCT(flags=nicira_ext.NX_CT_F_COMMIT, zone_src="", zone_ofs_nbits=int(zone),
                             recirc_table=nicira_ext.NX_CT_RECIRC_NONE, alg=0,
                             actions=[parser.OFPActionSetField(ct_mark=int(mark))])


def _handler_for(state: ControllerState) -> type[BaseHTTPRequestHandler]:
    log = logging.getLogger(__name__ + ".http")

    class Handler(BaseHTTPRequestHandler):
        server_version = "apn-twin-controller"
        protocol_version = "HTTP/1.1"   # keep-alive: the daemon and benchmarks reuse connections
        # Headers and body leave in two writes; with Nagle on, the body waits for the
        # client's delayed ACK (40 ms on Linux) and every JSON answer takes that long.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            response = api.handle(state, self.command, self.path, body)
            data = response.encode()
            self.send_response(response.status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, fmt, *args):  # noqa: D401 - stdlib hook
            log.debug("%s " + fmt, self.address_string(), *args)

    return Handler
