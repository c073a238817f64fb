"""Benchmark of the whole emulated network: bring-up, delay accuracy, bulk TCP, lightpath set-up.

Needs root, Open vSwitch, Mininet and iperf3. Runs one :class:`TwinSession` on a
topology (default topologies/japan.yaml) with the link backend ``auto`` (the
userspace delay engine on this kernel) and measures, in order:

1. Bring-up and teardown. ``up``: run record + controller process + Mininet
   network (switches, hosts, delay engine) until the controller sees every
   switch; ``switches connected``: the same clock until the last switch
   connects; ``lightpaths``: ``setup_all_lightpaths`` (one lightpath per site
   pair the plan can serve, each through the API, which answers after every
   switch acknowledged its bundle); ``down``: ``TwinSession.stop``. After
   teardown it checks nothing is left: no OVS bridge tagged
   ``external_ids:twin-run``, no /run/twin/<run> directory, no recorded process
   alive, and the same ``ip -o link`` list in the root namespace as before.
   Targets: up < 30 s, down < 10 s, nothing left.

2. Delay accuracy per lightpath at 1,000 probes/s (``twin.emulation.probe``
   from the users host at src to a reflector in the compute host at dst; both
   one-way delays of every probe, forward and backward, are samples).
   ``raw`` error = measured - model (the controller's ``one_way_ms`` of the
   lightpath); ``corrected`` = measured - model - overhead x switches crossed,
   where overhead is the median one-way delay between two hosts on the same
   switch (what :meth:`TwinSession.baseline_one_way_ms` measures; here measured
   with the same probe settings, forward and backward pooled) and switches
   crossed = sites on the route (the rule ``twin up --check`` uses). Targets on
   |corrected|: median <= 30 us, p99 <= 150 us, zero reordering (sender,
   forward and backward reordering counted together). Jitter = standard
   deviation of the one-way samples (the japan APN is configured with none).

3. Bulk TCP alongside. iperf3 (server in the compute host of one lightpath's
   dst, client in the users host of its src, ``mnexec -a PID``) runs TCP for
   ``--iperf-seconds`` over that lightpath ("bulk lightpath") while another
   lightpath (different sender and reflector hosts, sharing a switch when
   possible) is probed. First at the wavelength's configured rate (the delay
   engine's token bucket for that wavelength's VLAN), which gives the throughput
   one wavelength reaches; then with that wavelength's rate on every span of the
   route set to each of ``--rates`` (``ApnNetwork.set_wavelength_rate``, which
   re-shapes the running engine; restored to the configured rate afterwards).
   Accuracy holds at a rate when p99 |corrected| <= 300 us with
   no reordering and no loss on the probed lightpath.

4. Lightpath set-up latency through the API. The lightpath between two
   adjacent sites is deleted; then for N cycles: a sender in the users host at
   src starts sending a probe every 0.5 ms to a reflector in the compute host at
   dst, the benchmark POSTs /lightpaths (T0 = just before the request, CLOCK_REALTIME,
   shared by all namespaces), and the sender stops at the first answer.
   ``api`` = T0 to the HTTP response; ``first through`` = T0 to the
   reflector's kernel receive time of the first probe that crossed (the probe
   cadence adds up to 0.5 ms); ``answer back`` = T0 to the sender's kernel
   receive time of its reply (adds the round trip). Then DELETE, next cycle.

Prints one plain-text table per part and writes one JSON (``--out``).
``--quick``: 500 probes per pair on the first 6 lightpaths, 10 set-up cycles,
two rates, 6 s of iperf3 (for trying the benchmark on topologies/triangle.yaml).

Usage: ``sudo .venv/bin/python benchmarks/network.py [--topology topologies/japan.yaml]
[--out bench-results/network.json] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tqdm import tqdm

from twin.emulation.network import ENGINE_RT_PRIORITY, ENGINE_SPIN_US, PMD_MAXSLEEP_US, in_host
from twin.emulation.probe import ProbeSummary, percentile, wait_reflector_ready
from twin.emulation.records import RECORD_ROOT, stop_child, tagged_bridges
from twin.emulation.session import PLANES, PROBE_WARMUP, TwinSession, switch_passes
from twin.errors import TwinError
from twin.model import addressing as ad
from twin.tables import format_table
from benchmarks import host_noise  # noqa: E402

PY = sys.executable
PROBE_PORT = 8630      # not session.PROBE_PORT, so a reflector of ours never meets one of the session's
SETUP_PORT = 8631
IPERF_PORT = 5211
TARGETS = {"up_s": 30.0, "down_s": 10.0, "median_abs_err_us": 30.0, "p99_abs_err_us": 150.0,
           "p99_abs_err_us_with_bulk": 300.0, "reordered": 0}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

# The set-up latency sender, run inside the users host. One process for all cycles:
# on "go N" it sends a probe every 0.5 ms (sequence numbers N*10^6 + i) until a reply of
# this cycle comes back, then prints the reply's timestamps as JSON.
SETUP_SENDER = r"""
import json, select, socket, sys, time
from twin.emulation.probe import MAGIC, MIN_SIZE, NO_FOLLOW_UP, PROBE_STRUCT, SO_TIMESTAMPNS, VERSION, _kernel_ts
dst, port, interval_ns, timeout_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
sock.connect((dst, port))
sock.setblocking(False)
anc = socket.CMSG_SPACE(16)
buf = bytearray(64)
print("ready", flush=True)
for line in sys.stdin:
    base = int(line.split()[1]) * 1_000_000
    sent, result, i = 0, None, 0
    start = time.monotonic_ns()
    deadline = start + int(timeout_s * 1e9)
    print("started", flush=True)
    while result is None and time.monotonic_ns() < deadline:
        PROBE_STRUCT.pack_into(buf, 0, MAGIC, VERSION, 0, 0, base + i, 0, time.time_ns(), 0, 0, NO_FOLLOW_UP, 0)
        try:
            sock.send(buf)
            sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass
        i += 1
        due = start + i * interval_ns
        while result is None:
            wait = due - time.monotonic_ns()
            if wait <= 0:
                break
            r, _, _ = select.select([sock], [], [], wait / 1e9)
            if not r:
                continue
            while True:
                try:
                    data, a, _f, _x = sock.recvmsg(2048, anc)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                t4 = _kernel_ts(a, time.time_ns())
                if len(data) < MIN_SIZE:
                    continue
                magic, ver, _fl, _p, seq, rseq, t1, t2, t3, _fs, _ft = PROBE_STRUCT.unpack_from(data)
                if magic == MAGIC and seq >= base and result is None:
                    result = {"seq": seq - base, "t1": t1, "t2": t2, "t3": t3, "t4": t4}
    print(json.dumps({"sent": sent, "result": result}), flush=True)
"""


# --------------------------------------------------------------------------- helpers


class Procs:
    """Processes this benchmark started; ``close()`` ends exactly those PIDs."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(args, env=ENV, cwd=ROOT, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        stop_child(proc)

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        self.procs.clear()


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip())


def users_pid(session: TwinSession, site: str) -> int:
    return session.network.host_pid(ad.host_name(site, ad.USERS))


def compute_pid(session: TwinSession, site: str) -> int:
    return session.network.host_pid(ad.host_name(site, ad.COMPUTE))


def compute_ip(session: TwinSession, site: str) -> str:
    return session.network.host_ip(site, ad.COMPUTE, ad.APN_PLANE)


# Probe spacing: Poisson by default (RFC 2330 11.1.1; a periodic stream can lock onto the
# PMD thread's sleep cycle and see one phase of it); --periodic for the old behaviour.
POISSON = ["--poisson"]


def probe_samples(session: TwinSession, procs: Procs, src: str, dst: str, *, count: int,
                  rate: float, plane: str = "apn") -> tuple[ProbeSummary, list[list[float]]]:
    """Like TwinSession.probe, but also returns the per-probe samples."""
    dst_ip = session.network.host_ip(dst, ad.COMPUTE, PLANES[plane])
    reflector = procs.spawn(in_host(compute_pid(session, dst), [PY, "-m", "twin.emulation.probe", "reflect",
                                                                "--bind", dst_ip, "--port", str(PROBE_PORT)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_reflector_ready(reflector, f"at {dst}")
        proc = subprocess.run(in_host(users_pid(session, src), [PY, "-m", "twin.emulation.probe", "send", "--dst",
                                                                dst_ip, "--port", str(PROBE_PORT), "--rate",
                                                                str(rate), "--count", str(count), "--json",
                                                                "--samples", "--warmup", str(PROBE_WARMUP),
                                                                *POISSON]),
                              check=False, capture_output=True, text=True, timeout=count / rate + 30,
                              env=ENV, cwd=ROOT)
    finally:
        procs.stop(reflector)
    if proc.returncode != 0:
        raise TwinError(f"probe {src}->{dst} failed: {proc.stderr.strip()[-500:]}")
    doc = json.loads(proc.stdout)
    return ProbeSummary.from_json(doc), doc["samples"]


def one_way(samples: list[list[float]]) -> list[float]:
    """Forward and backward one-way delays of every reply, pooled (us)."""
    return [s[2] for s in samples] + [s[3] for s in samples]


def sd(values: list[float]) -> float:
    if not values:
        return float("nan")
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def accuracy(lp: dict, summary: ProbeSummary, samples, overhead_us: float, calibrated: bool,
             carried: bool = False) -> dict:
    """Error statistics of one probed lightpath (see the module docstring for definitions)."""
    model_us = lp["one_way_ms"] * 1e3
    switches = switch_passes(lp["route"], calibrated, carried)
    ow = one_way(samples)
    raw = [v - model_us for v in ow]
    corr = [v - model_us - overhead_us * switches for v in ow]
    fw = [s[2] for s in samples]
    nan = float("nan")

    def q(vals, p):
        return round(percentile(vals, p), 1) if vals else nan

    return {
        "id": lp["id"], "pair": f"{lp['src']}-{lp['dst']}", "route": lp["route"], "wavelength": lp["wavelength"],
        "switches": switches, "model_one_way_us": round(model_us, 1), "n": len(ow),
        "median_one_way_us": q(ow, 50), "median_forward_us": q(fw, 50),
        "median_backward_us": q([s[3] for s in samples], 50),
        "raw_median_err_us": q(raw, 50), "raw_median_abs_err_us": q([abs(v) for v in raw], 50),
        "raw_p99_abs_err_us": q([abs(v) for v in raw], 99),
        "median_err_us": q(corr, 50),
        "median_abs_err_us": q([abs(v) for v in corr], 50), "p99_abs_err_us": q([abs(v) for v in corr], 99),
        "max_abs_err_us": round(max(abs(v) for v in corr), 1) if corr else nan,
        "jitter_sd_us": round(sd(ow), 1), "jitter_sd_forward_us": round(sd(fw), 1),
        "sent": summary.sent, "lost": summary.lost, "duplicates": summary.duplicates,
        "reordered": summary.reordered + summary.reordered_forward + summary.reordered_backward,
        "rate_pps_achieved": summary.rate_pps_achieved,
    }


def wavelength_spans(session: TwinSession, lp: dict) -> list[tuple[str, str, float]]:
    """(a, b, configured rate) of the lightpath's wavelength on every span of its route."""
    spans = []
    for a, b in zip(lp["route"], lp["route"][1:]):
        for link in session.network.links:
            if {link.a, link.b} == {a, b}:
                spans.append((a, b, link.wavelength(lp["wavelength"]).rate_bps))
    if not spans:
        raise TwinError(f"no emulated spans found for lightpath {lp['id']}")
    return spans


def run_iperf(session: TwinSession, procs: Procs, lp: dict, seconds: float) -> tuple[subprocess.Popen,
                                                                                     subprocess.Popen]:
    server_ip = compute_ip(session, lp["dst"])
    server = procs.spawn(in_host(compute_pid(session, lp["dst"]), ["iperf3", "-s", "-1", "-B", server_ip,
                                                                   "-p", str(IPERF_PORT)]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    client = procs.spawn(in_host(users_pid(session, lp["src"]), ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
                                                                 "-t", str(seconds), "-J"]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return server, client


def iperf_result(procs: Procs, server: subprocess.Popen, client: subprocess.Popen, seconds: float) -> dict:
    try:
        out, err = client.communicate(timeout=seconds + 30)
    finally:
        procs.stop(client)
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            procs.stop(server)
    try:
        end = json.loads(out)["end"]
        return {"received_mbps": round(end["sum_received"]["bits_per_second"] / 1e6, 2),
                "sent_mbps": round(end["sum_sent"]["bits_per_second"] / 1e6, 2),
                "retransmits": end["sum_sent"].get("retransmits")}
    except (ValueError, KeyError):
        raise TwinError(f"iperf3 failed: {err.strip()[-300:] or out[-300:]}") from None


def pick_pair_for_bulk(made: list[dict]) -> tuple[dict, dict]:
    """A bulk lightpath (single span preferred) and a probed one on different hosts, sharing a site if possible."""
    bulk = next((lp for lp in made if len(lp["route"]) == 2), made[0])
    candidates = [lp for lp in made if lp["id"] != bulk["id"] and lp["src"] != bulk["src"]
                  and lp["dst"] != bulk["dst"]]
    if not candidates:
        raise TwinError("need a second lightpath with other end hosts for the bulk TCP case")
    shares = [lp for lp in candidates if set(lp["route"]) & set(bulk["route"])]
    return bulk, (shares or candidates)[0]


# --------------------------------------------------------------------------- parts


def part_accuracy(session, procs, made, overhead_us, count, rate) -> tuple[list[dict], list[float]]:
    """Rows per lightpath, and every |corrected error| of all pairs pooled."""
    rows, pooled = [], []
    calibrated, carried = session.calibration is not None, session.transit_carried
    for lp in tqdm(made, desc="delay accuracy", unit="pair", file=sys.stderr):
        summary, samples = probe_samples(session, procs, lp["src"], lp["dst"], count=count, rate=rate)
        rows.append(accuracy(lp, summary, samples, overhead_us, calibrated, carried))
        model_us, switches = lp["one_way_ms"] * 1e3, switch_passes(lp["route"], calibrated, carried)
        pooled += [abs(v - model_us - overhead_us * switches) for v in one_way(samples)]
    return rows, pooled


def part_bulk(session, procs, made, overhead_us, count, rate, rates_mbps, seconds) -> dict:
    bulk, probed = pick_pair_for_bulk(made)
    spans = wavelength_spans(session, bulk)
    configured = spans[0][2]
    cases = [("configured", configured)] + [(f"{r:g} Mbit/s", r * 1e6) for r in rates_mbps]
    rows = []
    try:
        for label, rate_bps in tqdm(cases, desc="bulk TCP alongside", unit="rate", file=sys.stderr):
            for a, b, _ in spans:
                session.network.set_wavelength_rate(a, b, bulk["wavelength"], rate_bps)
            server, client = run_iperf(session, procs, bulk, seconds)
            time.sleep(min(2.0, seconds / 4))  # past slow start
            summary, samples = probe_samples(session, procs, probed["src"], probed["dst"], count=count, rate=rate)
            tcp = iperf_result(procs, server, client, seconds)
            row = accuracy(probed, summary, samples, overhead_us, session.calibration is not None,
                           session.transit_carried)
            row.update({"case": label, "tbf_mbps": round(rate_bps / 1e6, 1), **tcp})
            row["holds"] = (row["p99_abs_err_us"] <= TARGETS["p99_abs_err_us_with_bulk"] and row["reordered"] == 0
                            and row["lost"] == 0)
            rows.append(row)
    finally:
        for a, b, configured_bps in spans:
            session.network.set_wavelength_rate(a, b, bulk["wavelength"], configured_bps)
    holding = sorted({r["tbf_mbps"] for r in rows if r["holds"]})
    # "Highest rate at which accuracy still holds": the highest tried rate with every lower one
    # holding too, the configured rate's row included (a rate that held only above a failed
    # lower one is luck, not a limit).
    highest = None
    for r in sorted(rows, key=lambda r: r["tbf_mbps"]):
        if not r["holds"]:
            break
        highest = r["tbf_mbps"]
    return {"bulk_lightpath": {k: bulk[k] for k in ("id", "src", "dst", "route", "wavelength")},
            "probed_lightpath": {k: probed[k] for k in ("id", "src", "dst", "route", "wavelength")},
            "bulk_spans": [f"{a}-{b}" for a, b, _ in spans], "configured_rate_mbps": round(configured / 1e6, 1),
            "iperf_seconds": seconds, "rows": rows, "rates_holding_mbps": holding,
            "highest_rate_holding_mbps": highest}


def part_setup(session, procs, made, cycles, interval_us=500.0, timeout_s=10.0) -> dict:
    lp0 = next((lp for lp in made if len(lp["route"]) == 2), made[0])
    src, dst = lp0["src"], lp0["dst"]
    client = session.client
    client.delete_lightpath(lp0["id"])
    dst_ip = compute_ip(session, dst)
    reflector = procs.spawn(in_host(compute_pid(session, dst), [PY, "-m", "twin.emulation.probe", "reflect",
                                                                "--bind", dst_ip, "--port", str(SETUP_PORT)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_reflector_ready(reflector, f"at {dst}")
    sender = procs.spawn(in_host(users_pid(session, src), [PY, "-c", SETUP_SENDER, dst_ip, str(SETUP_PORT),
                                                           str(int(interval_us * 1e3)), str(timeout_s)]),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def readline(timeout: float) -> str:
        r, _, _ = select.select([sender.stdout], [], [], timeout)
        line = sender.stdout.readline() if r else ""
        if not line:
            raise TwinError(f"set-up sender gave no answer: {sender.stderr.read()[-500:] if sender.poll() else ''}")
        return line.strip()

    rows = []
    try:
        if readline(10) != "ready":
            raise TwinError("set-up sender did not start")
        time.sleep(0.3)  # reflector bound
        for cycle in tqdm(range(1, cycles + 1), desc="lightpath set-up", unit="cycle", file=sys.stderr):
            sender.stdin.write(f"go {cycle}\n")
            sender.stdin.flush()
            readline(5)  # "started": probes are flowing (and dropped: no lightpath yet)
            t0 = time.time_ns()
            made_lp = client.create_lightpath(src, dst)
            t_api = time.time_ns()
            answer = json.loads(readline(timeout_s + 5))
            res = answer["result"]
            if res is None:
                raise TwinError(f"cycle {cycle}: no probe answered within {timeout_s} s of creating {made_lp['id']}")
            rows.append({"cycle": cycle, "route": made_lp["route"], "wavelength": made_lp["wavelength"],
                         "api_ms": (t_api - t0) / 1e6, "first_through_ms": (res["t2"] - t0) / 1e6,
                         "answer_back_ms": (res["t4"] - t0) / 1e6, "probes_sent": answer["sent"]})
            client.delete_lightpath(made_lp["id"])
            time.sleep(0.05)
    finally:
        procs.stop(sender)
        procs.stop(reflector)
    stats = {}
    for key in ("api_ms", "first_through_ms", "answer_back_ms"):
        vals = [r[key] for r in rows]
        stats[key] = {"p50": round(percentile(vals, 50), 3), "p99": round(percentile(vals, 99), 3),
                      "min": round(min(vals), 3), "max": round(max(vals), 3)}
    return {"src": src, "dst": dst, "cycles": cycles, "probe_interval_us": interval_us, "stats": stats,
            "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


def engine_summary(stats: dict | None) -> dict | None:
    """Totals of the delay engine's per-link counters (frames, drops, worst lateness)."""
    if not stats or "links" not in stats:
        return stats
    dirs = [d for link in stats["links"].values() for d in link.values()]
    worst = max(stats["links"].items(), key=lambda kv: max(d.get("max_lateness_us", 0) for d in kv[1].values()))
    return {"links": len(stats["links"]), "frames": sum(d.get("frames", 0) for d in dirs),
            "drops": sum(d.get("drops", 0) for d in dirs),
            "late_frames": sum(d.get("late_frames", 0) for d in dirs),  # sent over 0.5 ms late
            "max_lateness_us": max((d.get("max_lateness_us", 0) for d in dirs), default=0),
            "mean_lateness_us": round(sum(d.get("mean_lateness_us", 0) * d.get("frames", 0) for d in dirs)
                                      / max(1, sum(d.get("frames", 0) for d in dirs)), 1),
            "worst_link": worst[0], **{k: v for k, v in stats.items() if k != "links"}}


# --------------------------------------------------------------------------- report


def fmt(v, spec=".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_report(doc: dict) -> None:
    t = doc["bringup"]
    print(f"\n== 1. Bring-up and teardown ({doc['topology']}, {doc['sites']} sites, {t['links']} inter-site links, "
          f"link backend {doc['link_backend']}, OVS port type {doc.get('ovs_port_type', 'system')}"
          f"{', pmd-maxsleep ' + str(doc['settings']['pmd_maxsleep_us']) + ' us' if doc['settings'].get('pmd_maxsleep_us') is not None else ''})")
    print(format_table(["step", "seconds", "target"], [
        ["up (controller + network + all switches connected)", fmt(t["up_s"], ".2f"), f"< {TARGETS['up_s']:g}"],
        ["  network build (Mininet objects)", fmt(t.get("build_s"), ".2f"), ""],
        ["  network start (engine, bridges, hosts)", fmt(t.get("network_up_s"), ".2f"), ""],
        ["  switches connected (from start)", fmt(t["switches_connected_s"], ".2f"), ""],
        ["calibrate span transit (after up)", fmt(t.get("calibration_s"), ".2f"), ""],
        [f"set up all lightpaths ({t['lightpaths_made']} made, {t['lightpaths_blocked']} blocked)",
         fmt(t["lightpaths_s"], ".2f"), ""],
        ["up + calibration + lightpaths", fmt(t["up_s"] + t.get("calibration_s", 0) + t["lightpaths_s"], ".2f"),
         f"< {TARGETS['up_s']:g}"],
        ["tear down (TwinSession.stop)", fmt(t["down_s"], ".2f"), f"< {TARGETS['down_s']:g}"],
    ]))
    left = doc["leftovers"]
    print(f"left after teardown: tagged bridges {left['tagged_bridges'] or 'none'}; run directory "
          f"{'present' if left['run_directory_exists'] else 'gone'}; recorded processes alive "
          f"{left['processes_alive'] or 'none'}; root-namespace links {left['links_before']} before, "
          f"{left['links_after']} after (new: {left['new_links'] or 'none'}; of this run's: "
          f"{left['our_links_left'] or 'none'}) -> "
          f"{'clean' if left['clean'] else 'NOT CLEAN'}")

    noise = doc.get("host_noise")
    if noise:
        print("\nhost noise before bring-up (benchmarks/host_noise.py, a SCHED_FIFO spinner per CPU): " + "; ".join(
            f"CPU {cpu}: {r['per_s_over_100us']:g}/s over 100 us, {r['per_s_over_1ms']:g}/s over 1 ms, "
            f"max {r['max_us']:,.0f} us" for cpu, r in noise["cpus"].items() if r["max_us"] is not None))

    a = doc["accuracy"]
    cal = doc.get("calibration")
    how = (f"spans calibrated (per-span advance {min(r['advance_ab_us'] for r in cal['spans'] if 'advance_ab_us' in r):.0f}"
           f"-{max(max(r['advance_ab_us'], r['advance_ba_us']) for r in cal['spans'] if 'advance_ab_us' in r):.0f} us), "
           f"baseline {a['overhead_us']:.1f} us subtracted once" if cal else
           f"not calibrated, overhead per switch {a['overhead_us']:.1f} us subtracted per site on the route")
    print(f"\n== 2. Delay accuracy, {a['count']} probes per lightpath at {a['rate_pps']:g}/s "
          f"({doc['settings'].get('probe_spacing', 'periodic')}), forward+backward pooled; {how}")
    print(format_table(
        ["pair", "route", "λ", "model us", "meas med us", "raw med err", "corr med|err|", "corr p99|err|",
         "max|err|", "jitter sd", "lost", "reord", "ok"],
        [[r["pair"], "-".join(r["route"]), r["wavelength"], fmt(r["model_one_way_us"]), fmt(r["median_one_way_us"]),
          fmt(r["raw_median_err_us"], "+.1f"), fmt(r["median_abs_err_us"]), fmt(r["p99_abs_err_us"]),
          fmt(r["max_abs_err_us"]), fmt(r["jitter_sd_us"]), r["lost"], r["reordered"], "ok" if r["ok"] else "OFF"]
         for r in a["rows"]]))
    s = a["overall"]
    print(f"all pairs: corrected median |err| worst {fmt(s['worst_median_abs_err_us'])} us (target "
          f"{TARGETS['median_abs_err_us']:g}), p99 worst {fmt(s['worst_p99_abs_err_us'])} us / pooled "
          f"{fmt(s['pooled_p99_abs_err_us'])} us (target {TARGETS['p99_abs_err_us']:g}); raw median |err| worst "
          f"{fmt(s['worst_raw_median_abs_err_us'])} us; reordered {s['reordered']}, lost {s['lost']}; "
          f"{s['pairs_ok']}/{s['pairs']} pairs meet both targets")

    b = doc["bulk"]
    bl, pl = b["bulk_lightpath"], b["probed_lightpath"]
    print(f"\n== 3. Bulk TCP (iperf3 {b['iperf_seconds']:g} s, users@{bl['src']} -> compute@{bl['dst']}, "
          f"lightpath {'-'.join(bl['route'])} λ{bl['wavelength']}, configured {b['configured_rate_mbps']:g} Mbit/s) "
          f"while probing {'-'.join(pl['route'])} λ{pl['wavelength']}")
    print(format_table(["tbf rate", "TCP Mbit/s", "retrans", "probed med|err|", "probed p99|err|", "max|err|",
                        "jitter sd", "lost", "reord", f"holds (p99<={TARGETS['p99_abs_err_us_with_bulk']:g})"],
                       [[f"{r['tbf_mbps']:g} Mbit/s" + (" (configured)" if r["case"] == "configured" else ""),
                         fmt(r["received_mbps"]), r["retransmits"], fmt(r["median_abs_err_us"]),
                         fmt(r["p99_abs_err_us"]), fmt(r["max_abs_err_us"]), fmt(r["jitter_sd_us"]), r["lost"],
                         r["reordered"], "yes" if r["holds"] else "NO"] for r in b["rows"]]))
    print(f"highest tried rate with accuracy holding (and every lower one): "
          f"{fmt(b['highest_rate_holding_mbps'], 'g')} Mbit/s")

    c = doc["setup"]
    print(f"\n== 4. Lightpath set-up through the API to first probe through, {c['src']}-{c['dst']}, "
          f"{c['cycles']} cycles, a probe every {c['probe_interval_us']:g} us")
    print(format_table(["measure (from the POST)", "p50 ms", "p99 ms", "min ms", "max ms"],
                       [[label, fmt(c["stats"][k]["p50"], ".2f"), fmt(c["stats"][k]["p99"], ".2f"),
                         fmt(c["stats"][k]["min"], ".2f"), fmt(c["stats"][k]["max"], ".2f")]
                        for label, k in (("API response", "api_ms"),
                                         ("first probe through (reflector RX)", "first_through_ms"),
                                         ("its answer back at the sender", "answer_back_ms"))]))


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default="topologies/japan.yaml")
    parser.add_argument("--out", default="bench-results/network.json")
    parser.add_argument("--quick", action="store_true", help="500 probes, first 6 pairs, 10 cycles, 2 rates")
    parser.add_argument("--count", type=int, default=None, help="probes per lightpath (default 2000; quick 500)")
    parser.add_argument("--rate", type=float, default=1000.0, help="probes per second")
    parser.add_argument("--pairs", type=int, default=None, help="probe only the first N lightpaths")
    parser.add_argument("--cycles", type=int, default=None, help="set-up cycles (default 30; quick 10)")
    parser.add_argument("--rates", default=None, help="tbf rates in Mbit/s for the bulk sweep (default 50,100,200,400)")
    parser.add_argument("--iperf-seconds", type=float, default=None, help="default 10; quick 6")
    parser.add_argument("--port-type", default="auto", help="OVS type of every switch port: auto (afxdp where OVS "
                        "offers it), system (AF_PACKET, main thread), afxdp (AF_XDP, PMD thread), afxdp-nonpmd")
    parser.add_argument("--engine-rt-priority", type=int, default=ENGINE_RT_PRIORITY,
                        help="SCHED_FIFO priority of the delay engine (0: normal scheduling; default %(default)s)")
    parser.add_argument("--engine-spin-us", type=float, default=ENGINE_SPIN_US,
                        help="the delay engine busy-waits this long before each departure (default %(default)s)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="leave the emulator's per-span transit time in the delays (TwinSession.calibrate_transit)")
    parser.add_argument("--no-transit-carry", action="store_true",
                        help="the delay engine schedules transit frames from their arrival (delay_schedule.TransitMemory)")
    parser.add_argument("--strict-order", action="store_true",
                        help="a behind delay engine sends in departure order, not lane by lane (FairDepartures)")
    parser.add_argument("--periodic", action="store_true", help="periodic probes instead of Poisson spacing")
    parser.add_argument("--no-cpu-partition", action="store_true",
                        help="let the engine and OVS's PMD thread share every CPU (default: a CPU of their own, "
                             "TwinSession.cpu_plan)")
    parser.add_argument("--cpu-layout", choices=("network", "workloads"), default="network",
                        help="with a CPU partition: OVS's PMD thread alone on its core (network, the default) or "
                             "with the delay engine (workloads, what twin run uses); see session.CPU_LAYOUTS")
    parser.add_argument("--pmd-maxsleep-us", type=int, default=None,
                        help="with afxdp: let the PMD thread sleep up to this long when idle (OVS other_config "
                             f"pmd-maxsleep, for the run; default 0 on a CPU of its own, else {PMD_MAXSLEEP_US})")
    parser.add_argument("--idle-poll", action="store_true",
                        help="idle pollers on the engine's CPUs (twin/emulation/idle_poll.py)")
    parser.add_argument("--noise-seconds", type=float, default=3.0,
                        help="first measure the host's own stalls per CPU this long (benchmarks/host_noise.py; "
                             "0: skip; default %(default)s)")
    args = parser.parse_args()
    count = args.count or (500 if args.quick else 2000)
    pairs_limit = args.pairs or (6 if args.quick else None)
    cycles = args.cycles or (10 if args.quick else 30)
    rates = [float(r) for r in (args.rates or ("100,400" if args.quick else "50,100,200,400")).split(",")]
    iperf_s = args.iperf_seconds or (6.0 if args.quick else 10.0)
    if os.geteuid() != 0:
        print("benchmarks/network.py needs root (Mininet, OVS)", file=sys.stderr)
        return 2
    for tool in ("mnexec", "ovs-vsctl", "ip", "tc", "iperf3"):
        if not shutil.which(tool):
            print(f"missing tool: {tool}", file=sys.stderr)
            return 2

    links_before = root_links()
    bridges_before = tagged_bridges()
    procs = Procs()
    doc: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": {
        "os": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg()},
        "settings": {"topology": args.topology, "quick": args.quick, "count": count, "rate_pps": args.rate,
                     "pairs_limit": pairs_limit, "cycles": cycles, "rates_mbps": rates, "iperf_seconds": iperf_s},
        "targets": TARGETS}
    if args.noise_seconds > 0:
        # The noise floor no emulator escapes: stalls the kernel and the hypervisor put on a
        # real-time task. Measured before anything of the twin runs.
        doc["host_noise"] = host_noise.measure(sorted(os.sched_getaffinity(0)), args.noise_seconds, 20.0)
    if args.periodic:
        POISSON.clear()
    session = TwinSession(args.topology, port_type=args.port_type, engine_rt_priority=args.engine_rt_priority,
                          engine_spin_us=args.engine_spin_us, pmd_maxsleep_us=args.pmd_maxsleep_us,
                          calibrate=not args.no_calibrate,
                          cpu_layout="shared" if args.no_cpu_partition else args.cpu_layout,
                          idle_poll=args.idle_poll,
                          transit_carry=not args.no_transit_carry, engine_turns=not args.strict_order)
    doc["settings"].update({"calibrate": not args.no_calibrate, "transit_carry": not args.no_transit_carry,
                            "engine_turns": not args.strict_order,
                            "cpu_layout": session.cpu_layout, "idle_poll_cpus": sorted(session.idle_poll_cpus),
                            "probe_spacing": "periodic" if args.periodic
                            else "poisson", "port_type": args.port_type, "pmd_maxsleep_us": session.pmd_maxsleep_us,
                            "engine_rt_priority": args.engine_rt_priority, "engine_spin_us": args.engine_spin_us})
    t_exit = None
    try:
        with session:
            net = session.network
            our_names = [p.name for sw in net.port_map.switches.values() for p in sw.ports] + \
                [n for link in net.links for n in ad.engine_ifnames(link.number)] + \
                [sw.site for sw in net.port_map.switches.values()]
            made, blocked = session.setup_all_lightpaths()
            doc.update({"topology": session.topology.name, "sites": len(session.topology.sites),
                        "link_backend": net.link_backend, "ovs_port_type": net.ovs_port_type,
                        "run_id": session.record.run_id})
            print(f"up in {session.timings['up_s']:.2f} s; {len(made)} lightpaths in "
                  f"{session.timings['lightpaths_s']:.2f} s ({len(blocked)} blocked)", file=sys.stderr)
            # Overhead per switch: two hosts on one switch, same probe settings as the pairs.
            site0 = session.topology.sites[0].id
            _, base_samples = probe_samples(session, procs, site0, site0, count=count, rate=args.rate)
            base_ow = one_way(base_samples)
            overhead_us = percentile(base_ow, 50)
            probed = made[:pairs_limit] if pairs_limit else made
            rows, pooled = part_accuracy(session, procs, probed, overhead_us, count, args.rate)
            for r in rows:
                r["ok"] = (r["median_abs_err_us"] <= TARGETS["median_abs_err_us"]
                           and r["p99_abs_err_us"] <= TARGETS["p99_abs_err_us"] and r["reordered"] == 0
                           and r["lost"] == 0)
            doc["accuracy"] = {
                "count": count, "rate_pps": args.rate, "overhead_us": round(overhead_us, 2),
                "overhead_site": site0, "overhead_sd_us": round(sd(base_ow), 2),
                "overhead_p99_us": round(percentile(base_ow, 99), 1),
                "error_definition": ("corrected = one-way - model - overhead (spans calibrated: one switch pass)"
                                     if session.calibration else "corrected = one-way - model - overhead x "
                                     "switches crossed (sites on the route)") + "; raw = one-way - model; forward "
                                    "and backward pooled",
                "rows": rows, "blocked": blocked,
                "overall": {"pairs": len(rows), "pairs_ok": sum(r["ok"] for r in rows),
                            "worst_median_abs_err_us": max(r["median_abs_err_us"] for r in rows),
                            "worst_p99_abs_err_us": max(r["p99_abs_err_us"] for r in rows),
                            "pooled_median_abs_err_us": round(percentile(pooled, 50), 1),
                            "pooled_p99_abs_err_us": round(percentile(pooled, 99), 1),
                            "median_of_median_abs_err_us": round(percentile([r["median_abs_err_us"]
                                                                             for r in rows], 50), 1),
                            "worst_raw_median_abs_err_us": max(r["raw_median_abs_err_us"] for r in rows),
                            "reordered": sum(r["reordered"] for r in rows), "lost": sum(r["lost"] for r in rows)}}
            doc["calibration"] = session.calibration
            doc["bulk"] = part_bulk(session, procs, made, overhead_us, count, args.rate, rates, iperf_s)
            doc["setup"] = part_setup(session, procs, made, cycles)
            net_timings = dict(net.timings)
            procs.close()
            t_exit = time.monotonic()
        t_exit = time.monotonic() - t_exit
    finally:
        procs.close()
    st = session.timings
    doc["engine_stats"] = engine_summary(session.network.engine_stats)
    doc["bringup"] = {"up_s": round(st["up_s"], 3), "switches_connected_s": round(st["switches_connected_s"], 3),
                      "connect_wait_s": round(st["connect_wait_s"], 3), "lightpaths_s": round(st["lightpaths_s"], 3),
                      "calibration_s": round(st.get("calibration_s", 0.0), 3),
                      "lightpaths_made": len(made), "lightpaths_blocked": len(blocked),
                      "down_s": round(st["down_s"], 3), "exit_s": round(t_exit, 3) if t_exit is not None else None,
                      "build_s": round(net_timings.get("build_s", float("nan")), 3),
                      "network_up_s": round(net_timings.get("up_s", float("nan")), 3),
                      "network_switches_s": round(net_timings.get("switches_s", float("nan")), 3),
                      "network_down_s": round(session.network.timings.get("down_s", float("nan")), 3),
                      "links": len(session.network.links)}
    # Nothing left after teardown?
    time.sleep(0.5)
    links_after = root_links()
    new_bridges = {b: r for b, r in tagged_bridges().items() if b not in bridges_before}
    run_dir = RECORD_ROOT / session.record.run_id
    alive = [f"{p.what} ({p.pid})" for p in session.record.processes if p.alive()]
    new_links = sorted(set(links_after) - set(links_before))
    # Another engineer's run may come and go meanwhile: judge by the names this run made.
    ours = set(our_names)
    our_left = sorted(n for n in links_after if n in ours)
    doc["leftovers"] = {"tagged_bridges": sorted(new_bridges), "run_directory": str(run_dir),
                        "run_directory_exists": run_dir.exists(), "processes_alive": alive,
                        "links_before": len(links_before), "links_after": len(links_after), "new_links": new_links,
                        "our_links_left": our_left,
                        "clean": not new_bridges and not run_dir.exists() and not alive and not our_left}
    doc["bringup"]["up_ok"] = doc["bringup"]["up_s"] < TARGETS["up_s"]
    doc["bringup"]["down_ok"] = doc["bringup"]["down_s"] < TARGETS["down_s"]
    doc["machine"]["load_avg_at_end"] = os.getloadavg()
    print_report(doc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
