"""Import an Internet Topology Zoo GraphML file as a topology description.

The Topology Zoo (topology-zoo.org) publishes some 260 operator networks as
GraphML. Nodes carry ``label``, ``Latitude`` and ``Longitude`` data, declared by
``<key>`` elements whose ids (``d29``...) differ between files, so keys are looked
up by their ``attr.name``.

Span lengths are the great-circle distance between the two nodes (haversine,
R = 6371 km) times a route factor, 1.3 by default: fibre follows roads, railways
and coasts rather than the straight line, and 1.3x is the common planning factor
for that detour (see ``shared/facts.md``). Co-located nodes (same coordinates)
get :data:`MIN_LENGTH_KM` so every span has a positive length.

Nodes without coordinates are an error that names them, unless a length is given
for the edges that touch them (``edge_length_km``); such nodes are placed at
lat/lon 0 with a comment saying so. Self-loops are dropped and parallel edges
merged into one span (the Zoo has both); the output lists what was changed.

GraphML from the internet is untrusted: the file size is limited and any
DOCTYPE, entity declaration or external entity is rejected before it can expand
(no "billion laughs", no reads of local files).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from twin.errors import TwinError, ValidationError
from twin.model import units
from twin.model.schema import SITE_ID_MAX

EARTH_RADIUS_KM = 6371.0
MAX_GRAPHML_BYTES = 8 * 1024 * 1024
MIN_LENGTH_KM = 1.0
_NAME_MAX = 63


class ZooError(TwinError):
    """A Topology Zoo file cannot be imported; the message names the file and the problem."""


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km on a sphere of radius 6371 km.

    >>> round(haversine_km(34.694, 135.502, 33.590, 130.402))  # Osaka - Fukuoka
    485
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


# --------------------------------------------------------------------------- parsing


@dataclass
class _Graph:
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # key id -> (for, attr.name)
    graph_data: dict[str, str] = field(default_factory=dict)        # key id -> text
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)  # node id -> key id -> text
    node_lines: dict[str, int] = field(default_factory=dict)
    edges: list[tuple[str, str, int]] = field(default_factory=list)  # source, target, line


def _local(tag: str) -> str:
    return tag.rsplit(":", 1)[-1]


def _parse_graphml(data: bytes, file: str) -> _Graph:
    """Parse GraphML with expat, refusing DTDs and entities; keeps only what the import needs."""
    graph = _Graph()
    parser = expat.ParserCreate()
    # Entities are how XML bombs and local-file reads work; GraphML never needs them.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(what: str):
        def handler(*_args) -> None:
            raise ZooError(f"{file}:{parser.CurrentLineNumber}: {what} are not allowed in GraphML input; "
                           "remove the declaration (Topology Zoo files have none)")
        return handler

    parser.StartDoctypeDeclHandler = refuse("DOCTYPE declarations")
    parser.EntityDeclHandler = refuse("entity declarations")
    parser.ExternalEntityRefHandler = refuse("external entities")

    stack: list[str] = []
    owner: list[tuple[str, str | None]] = []  # ("node", id) / ("graph", None) / ("edge", None)
    data_key: str | None = None
    text: list[str] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal data_key
        name = _local(tag)
        line = parser.CurrentLineNumber
        if name == "key":
            if "id" in attrs:
                graph.keys[attrs["id"]] = (attrs.get("for", "all"), attrs.get("attr.name", ""))
        elif name == "graph" and not owner:
            owner.append(("graph", None))
        elif name == "node":
            node_id = attrs.get("id")
            if node_id is None:
                raise ZooError(f"{file}:{line}: a node has no id; every <node> needs id=\"...\"")
            if node_id in graph.nodes:
                raise ZooError(f"{file}:{line}: node id {node_id!r} appears twice; node ids must be unique")
            graph.nodes[node_id] = {}
            graph.node_lines[node_id] = line
            owner.append(("node", node_id))
        elif name == "edge":
            if "source" not in attrs or "target" not in attrs:
                raise ZooError(f"{file}:{line}: an edge lacks source or target; add both attributes")
            graph.edges.append((attrs["source"], attrs["target"], line))
            owner.append(("edge", None))
        elif name == "data":
            data_key = attrs.get("key")
            text.clear()
        stack.append(name)

    def end(tag: str) -> None:
        nonlocal data_key
        name = _local(tag)
        stack.pop()
        if name == "data" and data_key is not None and owner:
            kind, ident = owner[-1]
            value = "".join(text).strip()
            if kind == "node" and ident is not None:
                graph.nodes[ident][data_key] = value
            elif kind == "graph":
                graph.graph_data[data_key] = value
            data_key = None
        elif name in ("node", "edge") or (name == "graph" and owner and owner[-1][0] == "graph"):
            if owner:
                owner.pop()

    def chars(data: str) -> None:
        if data_key is not None:
            text.append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        raise ZooError(f"{file}:{err.lineno}: not valid XML: {expat.errors.messages[err.code]}; "
                       "check that this is a GraphML file") from None
    return graph


# --------------------------------------------------------------------------- conversion


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]", "", folded.lower())


def site_ids(labels: list[str]) -> list[str]:
    """Valid, unique site ids (<= 5 chars of ``[a-z0-9]``, starting with a letter) from labels.

    >>> site_ids(["New York", "New Yorkshire", "2nd Ave", ""])
    ['newyo', 'newy2', 'n2nda', 'n']
    """
    taken: set[str] = set()
    result = []
    for label in labels:
        base = _ascii_slug(label)
        if not base or not base[0].isalpha():
            base = "n" + base
        base = base[:SITE_ID_MAX]
        candidate, n = base, 2
        while candidate in taken:
            suffix = str(n)
            candidate = base[: SITE_ID_MAX - len(suffix)] + suffix
            n += 1
        taken.add(candidate)
        result.append(candidate)
    return result


def _topology_name(raw: str) -> str:
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")[:_NAME_MAX].strip("-")
    return slug or "zoo"


def _coordinate(value: str | None, low: float, high: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML); safe for untrusted labels."""
    return json.dumps(text, ensure_ascii=True)


def import_zoo(path: str | Path, *, route_factor: float = 1.3, edge_length_km: float | None = None,
               wavelengths: int = 8, rate: str = "100Mbit") -> str:
    """Convert a Topology Zoo GraphML file into topology YAML text (validated before return).

    Raises:
        ZooError: the file is unreadable, too large, not GraphML, declares entities, has
            edges to unknown nodes, too few sites or spans, or nodes without coordinates
            (named by label) while ``edge_length_km`` is not given; or an option is out of range.
    """
    path = Path(path)
    file = str(path)
    if not (math.isfinite(route_factor) and route_factor >= 1.0):
        raise ZooError(f"route factor {route_factor} is below 1; fibre is never shorter than the "
                       "straight line (use e.g. 1.3)")
    if edge_length_km is not None and not (math.isfinite(edge_length_km) and edge_length_km > 0):
        raise ZooError(f"edge length {edge_length_km} km must be positive")
    if not 1 <= wavelengths <= 80:
        raise ZooError(f"{wavelengths} wavelengths per span is out of range; use 1 to 80")
    try:
        units.parse_rate(rate)
    except units.UnitError as err:
        raise ZooError(f"--rate: {err}") from None
    try:
        # Read one byte past the limit instead of trusting stat(): the file may be a pipe or growing.
        with path.open("rb") as handle:
            data = handle.read(MAX_GRAPHML_BYTES + 1)
    except OSError as err:
        raise ZooError(f"{file}: cannot read: {err.strerror}; check the path") from None
    if len(data) > MAX_GRAPHML_BYTES:
        raise ZooError(f"{file}: larger than the {MAX_GRAPHML_BYTES // 1024**2} MiB limit; "
                       "check that it is a Topology Zoo file")
    graph = _parse_graphml(data, file)

    names = {(kind, name.lower()): key for key, (kind, name) in graph.keys.items()}

    def key_for(attr: str, kind: str = "node") -> str | None:
        return names.get((kind, attr.lower())) or names.get(("all", attr.lower()))

    k_label, k_lat, k_lon = key_for("label"), key_for("Latitude"), key_for("Longitude")
    node_ids = list(graph.nodes)
    if len(node_ids) < 2:
        raise ZooError(f"{file}: {len(node_ids)} node(s); a topology needs at least two sites")
    labels = [graph.nodes[n].get(k_label, "") if k_label else "" for n in node_ids]
    labels = [label or f"node {n}" for label, n in zip(labels, node_ids)]
    ids = dict(zip(node_ids, site_ids(labels)))
    label_of = dict(zip(node_ids, labels))

    coords: dict[str, tuple[float, float] | None] = {}
    for n in node_ids:
        lat = _coordinate(graph.nodes[n].get(k_lat) if k_lat else None, -90, 90)
        lon = _coordinate(graph.nodes[n].get(k_lon) if k_lon else None, -180, 180)
        coords[n] = (lat, lon) if lat is not None and lon is not None else None
    missing = [n for n in node_ids if coords[n] is None]
    if missing and edge_length_km is None:
        shown = ", ".join(_q(label_of[n]) for n in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise ZooError(f"{file}: {len(missing)} node(s) without Latitude/Longitude: {shown}{more}; "
                       "add coordinates or pass --edge-length KM for the edges that touch them")

    self_loops: list[str] = []
    merged: dict[frozenset[str], int] = {}
    spans: list[tuple[str, str]] = []
    for source, target, line in graph.edges:
        for end in (source, target):
            if end not in graph.nodes:
                raise ZooError(f"{file}:{line}: edge refers to unknown node {end!r}; fix the edge's "
                               "source/target")
        if source == target:
            self_loops.append(label_of[source])
            continue
        pair = frozenset((source, target))
        if pair in merged:
            merged[pair] += 1
            continue
        merged[pair] = 1
        spans.append((source, target))
    if not spans:
        raise ZooError(f"{file}: no edges between two different nodes; a topology needs at least one span")

    header = [
        f"# Imported from the Internet Topology Zoo file {_q(path.name)} by `twin import zoo`.",
        "# Span length = great-circle distance between node coordinates (haversine, R = 6371 km)",
        f"# x route factor {route_factor:g} (fibre detours along roads and coasts);",
        f"# co-located nodes get {MIN_LENGTH_KM:g} km.",
        f"# {wavelengths} wavelengths of {rate} per span: an emulated rate (real APN wavelengths",
        "# carry 100-400 Gbit/s). Areas, compute and PUE are placeholders: set each site's",
        "# power area and capacity before using this file for power experiments.",
    ]
    if self_loops:
        header.append(f"# Dropped {len(self_loops)} self-loop(s) at: "
                      + ", ".join(_q(label) for label in self_loops))
    parallel = [(pair, count) for pair, count in merged.items() if count > 1]
    if parallel:
        header.append(f"# Merged {sum(c - 1 for _, c in parallel)} parallel edge(s) into one span each: "
                      + ", ".join(f"{'-'.join(sorted(ids[n] for n in pair))} ({count} edges)"
                                  for pair, count in parallel))
    if missing:
        header.append(f"# {len(missing)} node(s) had no coordinates: placed at lat/lon 0, their edges "
                      f"set to {edge_length_km:g} km (--edge-length).")
    linked = {n for pair in spans for n in pair}
    isolated = [ids[n] for n in node_ids if n not in linked]
    if isolated:
        header.append(f"# Sites without any span (unreachable in plans): {', '.join(isolated)}")

    network = graph.graph_data.get(key_for("Network", "graph") or "", "") or path.stem
    lines = header + [
        "kind: topology",
        f"name: {_topology_name(network)}",
        f"description: {_q(f'Topology Zoo network {network} ({len(node_ids)} sites, {len(spans)} spans)')}",
        "apn:",
        "  propagation: 4.9us/km",
        "  node_delay: 1us",
        "  jitter: 0us",
        "  jitter_distribution: none",
        "  k_paths: 3",
        "packet_network:",
        "  router_delay: 200us",
        "  jitter: 150us",
        "  jitter_distribution: normal",
        "  capacity: 400Mbit",
        "  background_load: 0.4",
        "sites:",
    ]
    for n in node_ids:
        lat, lon = coords[n] or (0.0, 0.0)
        note = "  # no coordinates in the source file" if coords[n] is None else ""
        lines.append(f"  - {{id: {ids[n]}, name: {_q(label_of[n][:80])}, area: unknown, lat: {round(lat, 6)!r}, "
                     f"lon: {round(lon, 6)!r}, compute: {{cpus: 1, memory: 1GiB}}, pue: 1.4}}{note}")
    lines.append("spans:")
    for a, b in spans:
        if coords[a] is None or coords[b] is None:
            length = edge_length_km
            source = f"--edge-length {edge_length_km:g} km (a node has no coordinates)"
        else:
            straight = haversine_km(*coords[a], *coords[b])
            length = max(straight * route_factor, MIN_LENGTH_KM)
            source = f"great-circle {straight:.1f} km x {route_factor:g}"
            if straight * route_factor < MIN_LENGTH_KM:
                source += f" (co-located: {MIN_LENGTH_KM:g} km minimum)"
        lines.append(f"  - {{ends: [{ids[a]}, {ids[b]}], length: {length:.3f}km, wavelengths: {wavelengths}, "
                     f"rate: {_q(rate)}, source: {_q(source)}}}")
    text = "\n".join(lines) + "\n"
    _self_check(text, file)
    return text


def _self_check(text: str, file: str) -> None:
    """The output must pass the same validation as a hand-written file; anything else is a bug here."""
    from twin.model.loader import load_text
    from twin.model.schema import Topology
    from twin.model.validate import _parse_model, _topology_rules

    try:
        loaded = load_text(text, f"<import of {file}>")
    except ValidationError as err:
        raise ZooError(f"{file}: generated topology is not valid ({err.problems[0]}); please report this") \
            from None
    topo, problems = _parse_model(loaded, Topology)
    if topo is not None:
        problems = _topology_rules(topo, loaded.path, loaded.lines)
    if problems:
        raise ZooError(f"{file}: generated topology is not valid ({problems[0]}); please report this")
