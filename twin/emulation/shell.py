"""``twin up``: the interactive shell and the ``--check`` run.

The shell is Mininet's CLI (``a_u ping 10.1.3.1``, ``xterm``, ``dump`` ...) plus
twin commands that go through the controller's API:

    lightpaths                      list lightpaths
    lightpath SRC DST [W]           create one (optionally on wavelength W)
    delete ID                       delete a lightpath
    occupancy                       wavelength holders per span
    probe SRC DST [apn|packet] [N]  probe a pair and compare with the model
"""

from __future__ import annotations

import json
import shlex
import sys

from twin.emulation.session import TwinSession
from twin.errors import TwinError
from twin.tables import format_table


def run_check(session: TwinSession, *, as_json: bool, count: int, rate: float, tolerance_ms: float,
              extra_checks: dict | None = None) -> int:
    """Set up every servable pair, probe each over the APN and the packet network, report.

    ``extra_checks`` maps a name to a function returning a dict with at least ``ok``
    and ``text`` (one line); higher layers add checks this way (e.g. a migration).
    """
    from tqdm import tqdm

    made, blocked = session.setup_all_lightpaths()
    bar = tqdm(total=len(made), desc="probing lightpaths", unit="pair", disable=as_json, file=sys.stderr)
    checks = session.check_pairs(made, count=count, rate=rate, tolerance_ms=tolerance_ms,
                                 progress=lambda _c: bar.update())
    bar.close()
    # The conventional network between the first few pairs, for contrast.
    contrast = []
    for lp in made[:3]:
        route, model_ms = session.packet_path(lp["src"], lp["dst"])
        probe = session.probe(lp["src"], lp["dst"], plane="packet", count=count, rate=rate)
        contrast.append({"src": lp["src"], "dst": lp["dst"], "route": route, "model_min_one_way_ms": round(model_ms, 4),
                         "measured_one_way_ms": round(probe.forward_us.median / 1e3, 4),
                         "jitter_ms": round(probe.forward_us.stdev / 1e3, 4),
                         "p99_one_way_ms": round(probe.forward_us.p99 / 1e3, 4),
                         "lost": probe.lost, "reordered": probe.reordered})
    failed = [c for c in checks if not c.ok]
    extras = {name: check() for name, check in (extra_checks or {}).items()}
    failed += [name for name, extra in extras.items() if not extra.get("ok")]
    result = {**session.summary(), "tolerance_ms": tolerance_ms, **extras,
              "baseline_one_way_ms": round(checks[0].baseline_one_way_ms, 4) if checks else None,
              "pairs": [c.to_dict() for c in checks], "blocked": blocked, "packet_network": contrast,
              "ok": not failed}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        cal = session.calibration
        if cal:
            print(f"link backend: {result['link_backend']}; spans calibrated in {cal['seconds']} s (engine holds "
                  f"shortened by the measured transit time per span); emulator baseline "
                  f"{result['baseline_one_way_ms']} ms one way (subtracted once); tolerance ±{tolerance_ms} ms")
        else:
            print(f"link backend: {result['link_backend']}; emulator overhead per switch "
                  f"{result['baseline_one_way_ms']} ms one way (subtracted per site on the route); "
                  f"tolerance ±{tolerance_ms} ms")
        rows = [[f"{c.src}-{c.dst}", "-".join(c.route), f"{c.model_one_way_ms:.3f}",
                 f"{c.measured_one_way_ms:.3f}", f"{c.error_ms * 1e3:+.0f}", f"{c.probe.rtt_us.median / 1e3:.3f}",
                 f"{c.probe.forward_us.stdev:.0f}", c.probe.lost, c.probe.reordered, "ok" if c.ok else "OFF"]
                for c in checks]
        print(format_table(["pair", "route", "model ms", "measured ms", "err us", "RTT ms", "jitter us",
                            "lost", "reord", ""], rows))
        if contrast:
            print("\nconventional packet network between the same sites:")
            print(format_table(["pair", "route", "min model ms", "measured ms", "jitter us", "p99 ms"],
                               [[f"{c['src']}-{c['dst']}", "-".join(c["route"]), c["model_min_one_way_ms"],
                                 c["measured_one_way_ms"], f"{c['jitter_ms'] * 1e3:.0f}", c["p99_one_way_ms"]]
                                for c in contrast]))
        for b in blocked:
            print(f"blocked {b['src']}-{b['dst']}: {b['blocked']}")
        for name, extra in extras.items():
            print(f"{name}: {'ok' if extra.get('ok') else 'FAILED'}: {extra.get('text', '')}")
        t = result["timings_s"]
        print(f"\nup {t.get('up_s', 0):.1f} s (switches connected at {t.get('switches_connected_s', 0):.1f} s), "
              f"lightpaths {t.get('lightpaths_s', 0):.2f} s; {len(failed)} check(s) failed")
    return 1 if failed else 0


def interactive(session: TwinSession, mixins: tuple[type, ...] = ()) -> None:
    """Mininet's CLI plus the twin's commands; ``mixins`` add more (higher layers' ``do_*`` methods)."""
    from mininet.cli import CLI

    client = session.client

    class TwinCLI(*mixins, CLI):
        prompt = "twin> "

        def _guard(self, fn, line):
            try:
                fn(shlex.split(line))
            except (TwinError, ValueError) as err:
                print(f"error: {err}")

        def do_lightpaths(self, line):
            """lightpaths: list lightpaths"""
            self._guard(lambda _a: print(format_table(
                ["id", "route", "λ", "one-way ms"],
                [[lp["id"], "-".join(lp["route"]), lp["wavelength"], lp["one_way_ms"]]
                 for lp in client.lightpaths()])), line)

        def do_lightpath(self, line):
            """lightpath SRC DST [WAVELENGTH]: create a lightpath"""
            def create(args):
                if len(args) not in (2, 3):
                    raise ValueError("usage: lightpath SRC DST [WAVELENGTH]")
                w = int(args[2]) if len(args) == 3 else None
                print(client.create_lightpath(args[0], args[1], wavelength=w))
            self._guard(create, line)

        def do_delete(self, line):
            """delete ID: delete a lightpath"""
            self._guard(lambda a: client.delete_lightpath(a[0]) if a else print("usage: delete ID"), line)

        def do_occupancy(self, line):
            """occupancy: wavelength holders per span"""
            def show(_a):
                for span, holders in client.occupancy().items():
                    print(f"{span:>12}  " + " ".join(h or "." for h in holders))
            self._guard(show, line)

        def do_probe(self, line):
            """probe SRC DST [apn|packet] [COUNT]: probe users at SRC -> compute at DST"""
            def probe(args):
                if len(args) < 2:
                    raise ValueError("usage: probe SRC DST [apn|packet] [COUNT]")
                plane = args[2] if len(args) > 2 else "apn"
                count = int(args[3]) if len(args) > 3 else 200
                s = session.probe(args[0], args[1], plane=plane, count=count)
                f = s.forward_us
                print(f"one-way median {f.median / 1e3:.3f} ms, p99 {f.p99 / 1e3:.3f} ms, jitter (sd) {f.stdev:.0f} us, "
                      f"RTT {s.rtt_us.median / 1e3:.3f} ms, lost {s.lost}/{s.sent}, reordered {s.reordered}")
            self._guard(probe, line)

    TwinCLI(session.network.mininet)
