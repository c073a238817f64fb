"""Validate description files, reporting every problem at once with file, line and fix.

``load_topology`` and ``load_scenario`` are what the rest of the twin calls; both
raise :class:`twin.errors.ValidationError` whose lines read
``FILE:LINE: dotted.path: what is wrong; how to fix``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pydantic

from twin.errors import Problem, ValidationError
from twin.model import power
from twin.model.loader import LineMap, LoadedFile, load_file
from twin.model.schema import Scenario, Strict, Topology

_KINDS: dict[str, type[Strict]] = {"topology": Topology, "scenario": Scenario}


def _dotted(loc: tuple[Any, ...]) -> str:
    # pydantic puts validator names such as "function-after[...]" in some locations; drop them.
    return ".".join(str(part) for part in loc if not (isinstance(part, str) and "[" in part))


def _pydantic_problem(file: str, lines: LineMap, error: Any, model: type[Strict]) -> Problem:
    path = _dotted(error["loc"])
    kind = error["type"]
    message = error["msg"]
    if kind == "extra_forbidden":
        parent = _model_at(model, error["loc"][:-1])
        known = ", ".join(sorted(parent.model_fields)) if parent else ""
        return Problem(file, lines.line_of(path), path, "unknown key",
                       f"remove it or fix its spelling (known keys here: {known})" if known
                       else "remove it or fix its spelling")
    if kind == "missing":
        return Problem(file, lines.line_of(path), path, "required key is missing", "add it")
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        # The fix never contains "; " but the quoted bad value may: split at the last one.
        what, _, fix = message.rpartition("; ")
        if not what:
            what, fix = fix, ""
        return Problem(file, lines.line_of(path), path, what, fix or "correct the value")
    if kind == "literal_error":
        return Problem(file, lines.line_of(path), path, f"got {error.get('input')!r}",
                       f"use one of: {message.removeprefix('Input should be ')}")
    return Problem(file, lines.line_of(path), path, f"{message} (got {error.get('input')!r})",
                   "correct the value")


def _model_at(model: type[Strict], loc: tuple[Any, ...]) -> type[Strict] | None:
    """The model class that owns the keys at ``loc`` (for listing the known keys)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and "[" in part):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return current if isinstance(current, type) and issubclass(current, Strict) else None
        annotation = fields[part].annotation
        current = _innermost_model(annotation)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, Strict) else None


def _innermost_model(annotation: Any) -> type[Strict] | None:
    if isinstance(annotation, type) and issubclass(annotation, Strict):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _innermost_model(arg)
        if found:
            return found
    return None


def _adder(problems: list[Problem], file: str, lines: LineMap):
    """``add(path, what, fix)`` appending a located problem: the cross-field rules' one verb."""

    def add(path: str, what: str, fix: str) -> None:
        problems.append(Problem(file, lines.line_of(path), path, what, fix))
    return add


def _topology_rules(topo: Topology, file: str, lines: LineMap) -> list[Problem]:
    problems: list[Problem] = []
    add = _adder(problems, file, lines)

    counts = Counter(site.id for site in topo.sites)
    for i, site in enumerate(topo.sites):
        if counts[site.id] > 1:
            add(f"sites.{i}.id", f"duplicate site id {site.id!r}", "give every site its own id")
        if site.server_peak < site.server_idle:
            add(f"sites.{i}.server_peak", "peak power is below idle power", "make server_peak >= server_idle")
    known = set(counts)
    seen_pairs: dict[frozenset[str], int] = {}
    for i, span in enumerate(topo.spans):
        a, b = span.ends
        for j, end in enumerate(span.ends):
            if end not in known:
                add(f"spans.{i}.ends.{j}", f"unknown site {end!r}",
                    f"use one of the site ids: {', '.join(sorted(known))}")
        if a == b:
            add(f"spans.{i}.ends", f"span connects site {a!r} to itself", "a span joins two different sites")
        if span.length <= 0:
            add(f"spans.{i}.length", "length must be positive", "write the fibre route length, e.g. '600km'")
        if span.rate <= 0:
            add(f"spans.{i}.rate", "rate must be positive", "write the per-wavelength rate, e.g. '100Mbit'")
        pair = frozenset(span.ends)
        if pair in seen_pairs and a != b:
            add(f"spans.{i}.ends", f"a span between {a!r} and {b!r} is already at spans.{seen_pairs[pair]}",
                "merge them into one span with more wavelengths")
        seen_pairs.setdefault(pair, i)
    apn, packet = topo.apn, topo.packet_network
    if apn.propagation <= 0:
        add("apn.propagation", "propagation delay must be positive", "use e.g. '4.9us/km'")
    if apn.node_delay < 0:
        add("apn.node_delay", "delay must not be negative", "use 0us or more")
    if apn.jitter < 0 or packet.jitter < 0:
        add("apn.jitter" if apn.jitter < 0 else "packet_network.jitter", "jitter must not be negative",
            "use 0us or more")
    if apn.jitter > 0 and apn.jitter_distribution == "none":
        add("apn.jitter_distribution", "jitter is set but its distribution is 'none'",
            "choose uniform, normal or pareto-normal, or set jitter to 0us")
    if packet.jitter > 0 and packet.router_delay <= 0:
        add("packet_network.jitter", "jitter needs a delay to vary around",
            "set packet_network.router_delay above 0")
    if packet.capacity <= 0:
        add("packet_network.capacity", "capacity must be positive", "use e.g. '1Gbit'")
    return problems


def _scenario_rules(scn: Scenario, file: str, lines: LineMap, topo: Topology | None) -> list[Problem]:
    problems: list[Problem] = []
    add = _adder(problems, file, lines)

    counts = Counter(s.id for s in scn.services)
    for i, svc in enumerate(scn.services):
        if counts[svc.id] > 1:
            add(f"services.{i}.id", f"duplicate service id {svc.id!r}", "give every service its own id")
        if svc.service_time >= svc.slo.latency:
            add(f"services.{i}.service_time", "service time alone exceeds the latency budget",
                "raise slo.latency or lower service_time")
        regions = Counter(d.region for d in svc.demand)
        for j, demand in enumerate(svc.demand):
            if regions[demand.region] > 1:
                add(f"services.{i}.demand.{j}.region", f"region {demand.region!r} listed twice",
                    "merge the two demand entries")
    if scn.duration <= 0:
        add("duration", "duration must be positive", "use e.g. '24h'")
    for i, event in enumerate(scn.events):
        if event.at > scn.duration:
            add(f"events.{i}.at", "event is after the end of the scenario", "move it inside the duration")
        if event.kind.startswith("fibre") and event.span is None:
            add(f"events.{i}.span", f"a {event.kind} event needs the span", "add span: [a, b]")
        if event.kind.startswith("site") and event.site is None:
            add(f"events.{i}.site", f"a {event.kind} event needs the site", "add site: <id>")
    for site_id, signal in scn.power.items():
        if (signal.profile is None) == (signal.csv is None):
            add(f"power.{site_id}", "give exactly one of profile or csv", "keep one of the two keys")
            keys = ("price_csv",)      # one of profile/csv goes anyway: do not report both
        else:
            keys = ("csv", "price_csv")
            if signal.profile is not None and signal.profile not in power.PROFILES:
                add(f"power.{site_id}.profile", f'unknown profile "{signal.profile}"',
                    f"choose one of {', '.join(power.PROFILE_NAMES)}")
        for key in keys:
            name = getattr(signal, key)
            if name is not None and not (Path(file).parent / name).is_file():
                add(f"power.{site_id}.{key}", f"file {name!r} not found", "give a path relative to the scenario file")
    if topo is not None:
        sites = {s.id for s in topo.sites}
        spans = {frozenset(s.ends) for s in topo.spans}
        hint = f"use one of the topology's sites: {', '.join(sorted(sites))}"
        for i, svc in enumerate(scn.services):
            if svc.initial_site not in sites:
                add(f"services.{i}.initial_site", f"unknown site {svc.initial_site!r}", hint)
            for j, demand in enumerate(svc.demand):
                if demand.region not in sites:
                    add(f"services.{i}.demand.{j}.region", f"unknown site {demand.region!r}", hint)
        for site_id in scn.power:
            if site_id not in sites:
                add(f"power.{site_id}", f"unknown site {site_id!r}", hint)
        for i, event in enumerate(scn.events):
            if event.site is not None and event.site not in sites:
                add(f"events.{i}.site", f"unknown site {event.site!r}", hint)
            if event.span is not None and frozenset(event.span) not in spans:
                add(f"events.{i}.span", f"no span between {event.span[0]!r} and {event.span[1]!r}",
                    "name two sites that a topology span joins")
    return problems


def _parse_model(loaded: LoadedFile, model: type[Strict]) -> tuple[Any, list[Problem]]:
    try:
        return model.model_validate(loaded.data), []
    except pydantic.ValidationError as err:
        return None, [_pydantic_problem(loaded.path, loaded.lines, e, model) for e in err.errors()]


def file_kind(loaded: LoadedFile) -> str:
    """'topology' or 'scenario', from the ``kind`` key or the keys present."""
    data = loaded.data
    if not isinstance(data, dict):
        raise ValidationError([Problem(loaded.path, 1, "", "the file must be a mapping of keys",
                                       "start with 'name:' and the other top-level keys")])
    kind = data.get("kind")
    if kind in _KINDS:
        return kind
    if kind is not None:
        raise ValidationError([Problem(loaded.path, loaded.lines.line_of("kind"), "kind",
                                       f"unknown file kind {kind!r}", "use 'topology' or 'scenario'")])
    if "sites" in data or "spans" in data:
        return "topology"
    if "services" in data:
        return "scenario"
    raise ValidationError([Problem(loaded.path, 1, "", "cannot tell whether this is a topology or a scenario",
                                   "add 'kind: topology' or 'kind: scenario'")])


def load_topology(path: str | Path) -> Topology:
    """Load and fully validate a topology file."""
    loaded = load_file(path)
    if file_kind(loaded) != "topology":
        raise ValidationError([Problem(loaded.path, 1, "kind", "this is a scenario, not a topology",
                                       "pass a file from topologies/")])
    topo, problems = _parse_model(loaded, Topology)
    if topo is not None:
        problems = _topology_rules(topo, loaded.path, loaded.lines)
    if problems:
        raise ValidationError(problems)
    return topo


def scenario_topology_path(scenario_path: str | Path, scenario: Scenario) -> Path:
    """The topology a scenario refers to, resolved relative to the scenario file."""
    return (Path(scenario_path).parent / scenario.topology).resolve()


def load_scenario(path: str | Path) -> tuple[Scenario, Topology]:
    """Load a scenario and the topology it refers to; both fully validated."""
    loaded = load_file(path)
    if file_kind(loaded) != "scenario":
        raise ValidationError([Problem(loaded.path, 1, "kind", "this is a topology, not a scenario",
                                       "pass a file from scenarios/")])
    scenario, problems = _parse_model(loaded, Scenario)
    if scenario is None:
        raise ValidationError(problems)
    topo_path = scenario_topology_path(path, scenario)
    if not topo_path.is_file():
        raise ValidationError([Problem(loaded.path, loaded.lines.line_of("topology"), "topology",
                                       f"topology file {scenario.topology!r} not found",
                                       "give a path relative to the scenario file")])
    topology = load_topology(topo_path)
    problems = _scenario_rules(scenario, loaded.path, loaded.lines, topology)
    if problems:
        raise ValidationError(problems)
    return scenario, topology


def validate_file(path: str | Path) -> list[Problem]:
    """Every problem in one file of either kind (empty when valid)."""
    try:
        loaded = load_file(path)
        kind = file_kind(loaded)
        if kind == "topology":
            load_topology(path)
        else:
            load_scenario(path)
    except ValidationError as err:
        return err.problems
    return []
