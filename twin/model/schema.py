"""The two description-file kinds, topology and scenario: the one schema source.

Typed models (pydantic) with unknown keys rejected; quantities are unit strings
converted to base units on load (see :mod:`twin.model.units`): seconds,
kilometres, bit/s, bytes, watts, 1/s. The JSON Schema shipped for editors under
``topologies/`` is generated from these classes (``twin schema``).

Ids reach Linux interface names and command lines later, so they are narrow:
site ids are 1-5 characters ``[a-z0-9-]``, starting with a letter, so that the
longest generated interface name (``<site>-<site>-w<NN>``, see
``twin.emulation.naming``) fits Linux's 15-character limit.

Cross-field rules (spans reference known sites, unique ids, no self-loops, jitter
needs a delay, ...) live in :mod:`twin.model.validate`, which reports every
problem at once with its line.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from twin.model import units

SITE_ID_MAX = 5
SERVICE_ID_MAX = 12
_SITE_ID_RE = re.compile(rf"^[a-z](?:[a-z0-9-]{{0,{SITE_ID_MAX - 2}}}[a-z0-9])?$")
_SERVICE_ID_RE = re.compile(rf"^[a-z](?:[a-z0-9-]{{0,{SERVICE_ID_MAX - 2}}}[a-z0-9])?$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _unit(parser, example: str, pattern_units: str):
    """A float field written in a file as a unit string; the JSON Schema says so."""

    def parse(value: Any) -> float:
        try:
            return parser(value)
        except units.UnitError as err:
            raise ValueError(str(err)) from None

    schema = {
        "type": "string",
        "pattern": rf"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*({pattern_units})\s*$",
        "examples": [example],
    }
    return (BeforeValidator(parse), WithJsonSchema(schema))


def _alternatives(unit_table: dict[str, float]) -> str:
    return "|".join(re.escape(u) for u in sorted(unit_table, key=len, reverse=True))


Duration = Annotated[float, *_unit(units.parse_duration, "2.5ms", _alternatives(units.DURATION_UNITS))]
Length = Annotated[float, *_unit(units.parse_length, "600km", _alternatives(units.LENGTH_UNITS))]
Rate = Annotated[float, *_unit(units.parse_rate, "100Mbit", _alternatives(units.RATE_UNITS))]
Size = Annotated[float, *_unit(units.parse_size, "4KiB", _alternatives(units.SIZE_UNITS))]
Power = Annotated[float, *_unit(units.parse_power, "350W", _alternatives(units.POWER_UNITS))]
Frequency = Annotated[float, *_unit(units.parse_frequency, "50/s", _alternatives(units.FREQUENCY_UNITS))]
Propagation = Annotated[float, *_unit(units.parse_propagation, "4.9us/km",
                                      _alternatives(units.PROPAGATION_UNITS))]


def _id_checker(regex: re.Pattern[str], max_len: int, kind: str):
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(
                f"{kind} id {value!r} is not allowed; use 1-{max_len} characters of lowercase letters, "
                f"digits and '-', starting with a letter and not ending with '-' (ids become Linux "
                f"interface and process names, limited to 15 characters)"
            )
        return value
    return check


SiteId = Annotated[str, AfterValidator(_id_checker(_SITE_ID_RE, SITE_ID_MAX, "site")),
                   WithJsonSchema({"type": "string", "pattern": _SITE_ID_RE.pattern})]
ServiceId = Annotated[str, AfterValidator(_id_checker(_SERVICE_ID_RE, SERVICE_ID_MAX, "service")),
                      WithJsonSchema({"type": "string", "pattern": _SERVICE_ID_RE.pattern})]


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"name {value!r} is not allowed; use lowercase letters, digits and '-' (at most 63)")
    return value


Name = Annotated[str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": _NAME_RE.pattern})]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
JitterDistribution = Literal["none", "uniform", "normal", "pareto-normal"]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- topology


class ApnParameters(Strict):
    """The optical layer: propagation in fibre, per-node delay, residual jitter."""

    propagation: Propagation = Field(4.9e-6, description="one-way delay per km of fibre (default 4.9us/km)")
    node_delay: Duration = Field(0.0, description="one-way delay added at each ROADM/transponder a lightpath passes")
    jitter: Duration = Field(0.0, description="residual delay variation per span (APN: close to none)")
    jitter_distribution: JitterDistribution = "none"
    k_paths: int = Field(3, ge=1, le=16, description="candidate routes per site pair for RWA (k shortest by delay)")


class PacketNetwork(Strict):
    """The conventional IP network between the same sites, for contrast."""

    router_delay: Duration = Field(description="one-way processing and queueing floor per router hop")
    jitter: Duration = Field(0.0, description="delay variation per hop")
    jitter_distribution: JitterDistribution = "normal"
    capacity: Rate = Field(description="shared capacity of each span's packet link")
    background_load: Fraction = Field(0.0, description="share of capacity used by other traffic (0..1)")


class Compute(Strict):
    cpus: float = Field(gt=0, description="CPU cores the site offers to twin workloads")
    memory: Size = Field(description="memory the site offers to twin workloads")


class Site(Strict):
    id: SiteId
    name: str = Field(min_length=1, max_length=80)
    area: str = Field(min_length=1, max_length=40, description="power (utility) area, e.g. kyushu")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    compute: Compute
    pue: float = Field(1.4, ge=1.0, le=3.0, description="power usage effectiveness")
    server_idle: Power = Field(100.0, description="power of the site's servers at idle, per CPU core")
    server_peak: Power = Field(250.0, description="power of the site's servers at full load, per CPU core")


class Span(Strict):
    ends: tuple[SiteId, SiteId]
    length: Length = Field(description="fibre route length (not the straight line)")
    wavelengths: int = Field(ge=1, le=80, description="wavelength channels on this span")
    rate: Rate = Field(description="emulated rate of one wavelength")
    source: str | None = Field(None, description="where the length comes from")

    @property
    def id(self) -> str:
        return f"{self.ends[0]}-{self.ends[1]}"


class Topology(Strict):
    """A set of data-centre sites and the fibre between them."""

    kind: Literal["topology"] = "topology"
    name: Name
    description: str = ""
    apn: ApnParameters = ApnParameters()
    packet_network: PacketNetwork
    sites: list[Site] = Field(min_length=2)
    spans: list[Span] = Field(min_length=1)

    def site(self, site_id: str) -> Site:
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(site_id)


# --------------------------------------------------------------------------- scenario


class Slo(Strict):
    """A latency service-level objective: ``latency`` at ``percentile``, plus a jitter budget."""

    latency: Duration = Field(description="end-to-end budget (network round trip + service time)")
    percentile: float = Field(99.0, gt=0, lt=100)
    jitter: Duration | None = Field(None, description="budget for p99 - p50 of latency")


class Demand(Strict):
    region: SiteId = Field(description="site whose region the users are in")
    rate: Frequency


class Service(Strict):
    id: ServiceId
    description: str = ""
    model: Literal["sensor-fusion-mlp", "farm-cnn", "echo"]
    slo: Slo
    request_size: Size
    response_size: Size
    state_size: Size = 0.0
    service_time: Duration = Field(description="expected compute time per request (model-only runs)")
    connection: Literal["per-request", "keep-alive"] = Field(
        "per-request", description="per-request: a new TCP connection per request (handshake included); "
                                   "keep-alive: clients reuse their connections")
    cpu_priority: Literal["normal", "realtime"] = Field(
        "normal", description="realtime: the site serves this service before any normal-priority work on "
                              "the same cores (its server runs SCHED_FIFO, within a CPU budget)")
    cpus: float = Field(1.0, gt=0, le=64)
    memory: Size = 512 * 1024**2
    initial_site: SiteId
    demand: list[Demand] = Field(min_length=1)


class PowerSignal(Strict):
    """A site's power signal: a built-in profile or a CSV of area supply-demand results."""

    profile: str | None = Field(None, description="built-in profile name")
    csv: str | None = Field(None, description="path of an area supply-demand CSV, relative to the scenario")
    price_csv: str | None = None


class Policy(Strict):
    name: Literal["static", "greedy-surplus", "greedy-carbon", "hysteresis", "oracle"] = "hysteresis"
    decision_interval: Duration = 1800.0
    min_dwell: Duration = 0.0
    hysteresis: float = Field(0.0, ge=0)
    migration_cost: float = Field(0.0, ge=0)


class Migration(Strict):
    """How the emulated runtime moves a service's state."""

    max_rate: Rate | None = Field(None, ge=8000, description="pace each state copy at most this rate, at least 8kbit (unset: line rate)")


class Event(Strict):
    at: Duration
    kind: Literal["fibre-cut", "fibre-repair", "site-down", "site-up"]
    span: tuple[SiteId, SiteId] | None = None
    site: SiteId | None = None


class Scenario(Strict):
    kind: Literal["scenario"] = "scenario"
    name: Name
    description: str = ""
    topology: str = Field(description="path of the topology file, relative to this file")
    duration: Duration
    time_compression: float = Field(1.0, ge=1.0, description="scenario seconds per wall-clock second")
    services: list[Service] = Field(min_length=1)
    power: dict[SiteId, PowerSignal] = Field(default_factory=dict)
    policy: Policy = Policy()
    migration: Migration = Migration()
    events: list[Event] = Field(default_factory=list)


def json_schemas() -> dict[str, Any]:
    """JSON Schema of both file kinds, for editors (``twin schema``)."""
    return {
        "topology": Topology.model_json_schema(),
        "scenario": Scenario.model_json_schema(),
    }
