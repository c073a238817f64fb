"""The ``twin`` command line.

Each sub-command is a small function; the work lives in the layers below. Errors
the twin raises on purpose (:class:`twin.errors.TwinError`) print as one line on
stderr with a non-zero exit; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from twin import __version__
from twin.errors import TwinError, ValidationError

log = logging.getLogger("twin")


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    from twin.model.validate import validate_file

    failed = False
    for path in args.files:
        problems = validate_file(path)
        for problem in problems:
            print(problem, file=sys.stderr)
        failed |= bool(problems)
        if not problems and not args.quiet:
            print(f"{path}: ok")
    return 2 if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from twin.model.plan import default_pairs, parse_pairs, plan_lightpaths, slo_feasibility
    from twin.model.validate import load_scenario, load_topology

    topology = load_topology(args.topology)
    if args.pairs:
        pairs, order = parse_pairs(args.pairs, topology), "given (--pairs)"
    else:
        pairs, order = default_pairs(topology, args.order), args.order
    entries = plan_lightpaths(topology, pairs)
    feasibility = []
    if args.scenario:
        scenario, _ = load_scenario(args.scenario)
        feasibility = slo_feasibility(scenario, topology)
    if args.json:
        doc = [entry.to_dict() for entry in entries]
        if args.scenario:
            doc = {"lightpaths": doc, "order": order,
                   "slo": [dict(vars(row), meets=row.meets) for row in feasibility]}
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0
    from twin.tables import print_plan, print_slo

    print_plan(topology, entries, order)
    if args.scenario:
        print_slo(feasibility)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from twin.model.schema import json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, schema in json_schemas().items():
        path = out / f"{kind}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(path)
    return 0


def cmd_import_zoo(args: argparse.Namespace) -> int:
    from twin.model.zoo import import_zoo

    text = import_zoo(args.file, route_factor=args.route_factor, edge_length_km=args.edge_length,
                      wavelengths=args.wavelengths, rate=args.rate)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from twin.emulation.session import TwinSession
    from twin.emulation.shell import interactive, run_check

    scenario = None
    if args.scenario:
        from twin.model.validate import load_scenario, load_topology

        scenario, scenario_topology = load_scenario(args.scenario)
        if scenario_topology.name != load_topology(args.topology).name:
            raise TwinError(f"{args.scenario}: its topology is {scenario_topology.name!r}, not "
                            f"{args.topology}; pass the scenario's topology or another scenario")
    image = None
    if scenario is not None or (args.check and not args.no_migration_check):
        from twin.workloads.site_runtime import workload_image

        image = workload_image()  # before bring-up: a missing image is a one-line fix, not a minute lost
    tuning = {"calibrate": not args.no_calibrate, "cpu_layout": "shared" if args.no_cpu_partition else "network",
              "idle_poll": args.idle_poll}
    if args.pmd_maxsleep_us is not None:
        tuning["pmd_maxsleep_us"] = args.pmd_maxsleep_us
    with TwinSession(args.topology, backend=args.link_backend, api_port=args.api_port, **tuning) as session:
        if args.check:
            extra = {}
            if not args.no_migration_check:
                from twin.workloads.trial import migration_check

                extra["migration"] = lambda: migration_check(session, image=image)
            code = run_check(session, as_json=args.json, count=args.count, rate=args.rate,
                             tolerance_ms=args.tolerance_us / 1e3, extra_checks=extra)
        else:
            api = session.controller
            print(f"twin up: {session.topology.name}, link backend {session.network.link_backend}, "
                  f"controller API http://{api.api_host}:{api.api_port}; type 'help', 'exit' tears down")
            if scenario is None:
                interactive(session)
            else:
                from twin.workloads.containers import ContainerRuntime
                from twin.workloads.shell import workload_commands
                from twin.workloads.site_runtime import PodmanLauncher

                with ContainerRuntime(session.record.run_id, record=session.record) as containers:
                    commands = workload_commands(session, scenario, PodmanLauncher(containers, image,
                                                                                   cpus=session.workload_cpus))
                    try:
                        interactive(session, mixins=(commands,))
                    finally:
                        commands.loop.run_until_complete(commands.runtime.close())
                        commands.loop.close()
            code = 0
    if not args.json:
        print(f"torn down in {session.timings.get('down_s', 0):.1f} s", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if args.model_only:
        from twin.experiment.model_run import run_model_only

        summary = run_model_only(args.scenario, out, progress=not args.quiet, seed=args.seed,
                                 overwrite=args.force)
        if not args.no_report:
            from twin.experiment.report import build_report

            build_report(out)
    else:
        from twin.experiment.emulated_run import run_emulated

        summary = run_emulated(args.scenario, out, strategy=args.strategy, link_backend=args.link_backend,
                               time_compression=args.time_compression, progress=not args.quiet,
                               overwrite=args.force, build_report=not args.no_report,
                               calibrate=not args.no_calibrate,
                               cpu_layout="shared" if args.no_cpu_partition else "workloads")
    print(format_run_summary(summary, out))
    return 0


def format_run_summary(summary: dict, out: Path) -> str:
    """A few lines a user reads first: per service SLO and migrations, energy against static and oracle."""
    lines = [f"run directory: {out}" + ("" if not (out / "report.html").exists() else f" (report: {out / 'report.html'})")]
    for sid, s in summary.get("services", {}).items():
        slo = s.get("slo", {})
        lines.append(f"  {sid}: {s.get('requests', 0)} requests, {s.get('failed', 0)} failed, "
                     f"p99 {_ms(s.get('p99_ms'))}, p99.9 {_ms(s.get('p999_ms'))}, "
                     f"SLO {slo.get('latency_ms')} ms @p{slo.get('percentile')} "
                     f"{'met' if s.get('slo_met') else 'MISSED'}, {s.get('migrations', 0)} migrations")
        regions = s.get("regions") or {}
        if len(regions) > 1:  # one region's verdict is the service's
            lines.append("    by users' region: " + "; ".join(
                f"{region} p{slo.get('percentile')} {_ms(r.get('slo_percentile_ms'))} "
                f"{'met' if r.get('slo_met') else 'MISSED'}{_behind(r)}" for region, r in regions.items()))
    engine = summary.get("engine")
    if engine and engine.get("frames"):
        lines.append(f"  delay engine: {engine['late_frames']:,} of {engine['frames']:,} frames sent over 0.5 ms "
                     f"late (worst {engine['max_lateness_ms']:.1f} ms); the emulator's CPU was short then, and "
                     "requests under way may carry its delay, on any span (report: Emulator)")
    energy = summary.get("energy", {})
    for name in ("policy", "static", "oracle"):
        e = energy.get(name)
        if e:
            lines.append(f"  energy {name:>6}: {e['kwh']:.2f} kWh, {e['surplus_kwh']:.2f} kWh from surplus, "
                         f"{e['kg_co2']:.2f} kg CO2")
    return "\n".join(lines)


def _behind(region: dict) -> str:
    """How many of a region's requests over budget met the delay engine running behind (on any
    span, not necessarily theirs: a sign the emulator's CPU was short, not proof of whose frames waited)."""
    over, behind = region.get("over_budget"), region.get("over_budget_engine_behind")
    if not over or behind is None:
        return ""
    return f" ({over} over budget, {behind} of them while the delay engine ran behind on some span)"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def cmd_shift(args: argparse.Namespace) -> int:
    from twin.experiment.emulated_run import run_emulated

    out = Path(args.out) if args.out else Path("runs") / time.strftime("shift-%Y%m%d-%H%M%S")
    summary = run_emulated(args.scenario, out, strategy=args.strategy, time_compression=args.time_compression,
                           progress=not args.quiet, overwrite=args.force, build_report=not args.no_report,
                           attach=True, attach_to=args.run)
    print(format_run_summary(summary, out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from twin.experiment.report import build_report

    print(build_report(Path(args.run_dir)))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from twin.emulation.records import clean_all

    removed = clean_all(include_live=args.all)
    print("\n".join(removed) if removed else "nothing to clean")
    return 0


# --------------------------------------------------------------------------- parser


def _add_experiment_options(p: argparse.ArgumentParser) -> None:
    """Options `twin run` and `twin shift` share."""
    p.add_argument("--strategy", choices=("make-before-break", "cold"), default="make-before-break",
                   help="migration strategy (default make-before-break)")
    p.add_argument("--time-compression", type=float, metavar="X",
                   help="scenario seconds per wall second (default: the scenario's)")
    p.add_argument("--force", action="store_true", help="overwrite a run directory that holds a run")
    p.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twin", description="APN digital twin for Watt-Bit collaboration")
    parser.add_argument("--version", action="version", version=f"twin {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check topology and scenario files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for valid files")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="lightpaths the optical model would set up")
    p.add_argument("topology", metavar="TOPOLOGY")
    p.add_argument("--scenario", metavar="FILE", help="also show which sites meet each service's SLO")
    p.add_argument("--pairs", metavar="A:B,...", help="site pairs in allocation order (default: every pair)")
    p.add_argument("--order", choices=("file", "longest-first"), default="file",
                   help="allocation order of the default pairs (default: file order)")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("up", help="build the emulated network and its controller (root)")
    p.add_argument("topology", metavar="TOPOLOGY")
    p.add_argument("--check", action="store_true",
                   help="set up every servable lightpath, probe each against the model, tear down")
    p.add_argument("--json", action="store_true", help="with --check: print a JSON document")
    p.add_argument("--link-backend", choices=("auto", "netem", "userspace"), default="auto",
                   help="link delay backend (auto: netem when the kernel has it)")
    p.add_argument("--api-port", type=int, help="controller API port on 127.0.0.1 (default: a free port)")
    p.add_argument("--pmd-maxsleep-us", type=int, default=None, metavar="US",
                   help="OVS PMD thread's longest idle sleep: lower is more accurate and costs more CPU "
                        "(default 0, polling, on the network's own CPU; 50 with --no-cpu-partition: "
                        "~46 us per switch and 20%% of a core when idle)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep the emulator's own per-span transit time (15-180 us per span here) in the delays")
    p.add_argument("--no-cpu-partition", action="store_true",
                   help="let the emulated network share every CPU (default: OVS's PMD thread polls a CPU of "
                        "its own; less accurate, leaves that CPU free)")
    p.add_argument("--idle-poll", action="store_true",
                   help="keep the delay engine's CPUs from halting when idle: in a VM, fewer millisecond "
                        "outliers at low traffic, more under heavy traffic (twin/emulation/idle_poll.py)")
    p.add_argument("--count", type=int, default=500, help="probes per pair with --check (default 500)")
    p.add_argument("--rate", type=float, default=500.0, help="probes per second with --check (default 500)")
    # 300 us: the OVS userspace datapath's own noise on a 2-core machine (README, "Measured");
    # the delay engine alone is within ~10 us.
    p.add_argument("--scenario", metavar="FILE",
                   help="services for the shell's deploy/migrate/load commands (a scenario on this topology)")
    p.add_argument("--no-migration-check", action="store_true",
                   help="with --check: skip the containerized migration check")
    p.add_argument("--tolerance-us", type=float, default=300.0,
                   help="allowed |median measured - model - emulator overhead| one way, us (default 300)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("run", help="run a scenario end to end and write a run directory (root, or --model-only)")
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--out", metavar="DIR", help="run directory to write (default: runs/<date-time>)")
    p.add_argument("--model-only", action="store_true",
                   help="no emulation, no root: the model's latencies and service times, faster than real time")
    p.add_argument("--link-backend", choices=("auto", "netem", "userspace"), default="auto",
                   help="link delay backend (default auto: netem when the kernel has it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's random draws (--model-only)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep the emulator's own per-span transit time in the delays (see twin up)")
    p.add_argument("--no-cpu-partition", action="store_true",
                   help="let the emulated network share every CPU with the workloads (default: the delay "
                        "engine and OVS's PMD thread get a CPU of their own, the workloads the others)")
    _add_experiment_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("shift", help="run the shifting daemon alone against a network 'twin up' is running (root)")
    p.add_argument("scenario", metavar="SCENARIO", help="scenario on the running topology")
    p.add_argument("--run", metavar="RUN_ID", help="which 'twin up' run (default: the only live one)")
    p.add_argument("--out", metavar="DIR", help="run directory to write (default: runs/shift-<date-time>)")
    _add_experiment_options(p)
    p.set_defaults(func=cmd_shift)

    p = sub.add_parser("report", help="rebuild plots/ and report.html of a run directory")
    p.add_argument("run_dir", metavar="DIR", help="folder written by twin run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("clean", help="remove what a killed run left (only the twin's own objects)")
    p.add_argument("--all", action="store_true", help="also runs whose process is still alive")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("schema", help="write the JSON Schema of both file kinds")
    p.add_argument("-o", "--out", default="topologies", help="folder to write into (default: topologies)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("import", help="convert a topology from another format")
    isub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    z = isub.add_parser("zoo", help="Internet Topology Zoo GraphML")
    z.add_argument("file", metavar="FILE.graphml")
    z.add_argument("-o", "--output", required=True, metavar="OUT.yaml", help="output file ('-' for stdout)")
    z.add_argument("--route-factor", type=float, default=1.3,
                   help="fibre route length / great-circle distance (default 1.3)")
    z.add_argument("--edge-length", type=float, metavar="KM",
                   help="length for edges whose nodes have no coordinates (otherwise an error)")
    z.add_argument("--wavelengths", type=int, default=8, help="wavelengths per span (default 8)")
    z.add_argument("--rate", default="100Mbit", help="emulated rate per wavelength (default 100Mbit)")
    z.set_defaults(func=cmd_import_zoo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValidationError as err:
        if args.verbose:
            raise
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return err.exit_code
    except TwinError as err:
        if args.verbose:
            raise
        print(f"twin: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("twin: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
