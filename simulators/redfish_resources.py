"""Building blocks of the simulated Redfish services: resources, PATCH checks, ETags, queries.

A simulated Redfish service is a `ResourceTree`: URIs mapped to `Resource`s whose bodies are
rendered at request time from the plant, so that every GET shows the rack as it is now. The
resource bodies follow the DMTF CSDL (2025.4), not the DMTF mockups, which have known defects.

Sensors and controls, the data-heavy part, are in `redfish_sensors`.

Writable properties are declared per resource as `Writable`s keyed by their path in the body;
a PATCH is checked against them as a whole before any is applied (`plan_patch`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coolctl.simulators.redfish_messages import RedfishError, message

__all__ = [
    "COLLECTION_SCHEMAS",
    "SCHEMA_VERSIONS",
    "Json",
    "PatchPath",
    "ReadFailure",
    "Readings",
    "Reply",
    "RequestInfo",
    "Resource",
    "ResourceTree",
    "Writable",
    "action",
    "collection",
    "etag_of",
    "head",
    "iso_time",
    "link",
    "metadata_document",
    "odata_type",
    "plan_patch",
    "select",
    "status",
]

Json = dict[str, Any]
PatchPath = tuple[str | int, ...]

# The newest version of each schema in the 2025.4 CSDL; every body says which it follows.
SCHEMA_VERSIONS: Mapping[str, str] = {
    "AccountService": "v1_18_1",
    "ActionInfo": "v1_5_0",
    "Battery": "v1_5_0",
    "BatteryMetrics": "v1_1_0",
    "Certificate": "v1_11_0",
    "CertificateLocations": "v1_0_4",
    "CertificateService": "v1_2_1",
    "Chassis": "v1_28_0",
    "Circuit": "v1_9_0",
    "ComputerSystem": "v1_27_0",
    "CoolantConnector": "v1_3_0",
    "CoolingUnit": "v1_5_0",
    "Control": "v1_7_0",
    "EnvironmentMetrics": "v1_5_0",
    "EthernetInterface": "v1_12_4",
    "EventService": "v1_12_0",
    "LeakDetection": "v1_2_0",
    "LeakDetector": "v1_6_0",
    "LogEntry": "v1_21_0",
    "LogService": "v1_9_0",
    "Manager": "v1_24_0",
    "ManagerAccount": "v1_14_1",
    "ManagerNetworkProtocol": "v1_12_0",
    "Outlet": "v1_4_4",
    "Power": "v1_7_3",
    "PowerDistribution": "v1_6_0",
    "PowerDistributionMetrics": "v1_4_0",
    "PowerEquipment": "v1_2_3",
    "PowerSubsystem": "v1_1_3",
    "PowerSupply": "v1_6_0",
    "PowerSupplyMetrics": "v1_2_0",
    "Pump": "v1_2_0",
    "Reservoir": "v1_0_2",
    "Role": "v1_3_3",
    "Sensor": "v1_12_0",
    "ServiceRoot": "v1_20_0",
    "Session": "v1_8_0",
    "SessionService": "v1_2_0",
    "SoftwareInventory": "v1_13_0",
    "Thermal": "v1_7_3",
    "ThermalEquipment": "v1_2_0",
    "ThermalMetrics": "v1_3_2",
    "ThermalSubsystem": "v1_5_0",
    "UpdateService": "v1_17_0",
}
COLLECTION_SCHEMAS = (
    "BatteryCollection",
    "CertificateCollection",
    "ChassisCollection",
    "CircuitCollection",
    "ComputerSystemCollection",
    "ControlCollection",
    "CoolantConnectorCollection",
    "CoolingUnitCollection",
    "EthernetInterfaceCollection",
    "EventDestinationCollection",
    "LeakDetectorCollection",
    "LogEntryCollection",
    "LogServiceCollection",
    "ManagerAccountCollection",
    "ManagerCollection",
    "OutletCollection",
    "PowerDistributionCollection",
    "PowerSupplyCollection",
    "PumpCollection",
    "ReservoirCollection",
    "RoleCollection",
    "SensorCollection",
    "SessionCollection",
    "SoftwareInventoryCollection",
)

# Properties whose value is a measurement: they change on every read without the resource
# changing, so they are left out of the ETag (see `etag_of`).
VOLATILE = frozenset(
    {
        "Reading",
        "ReadingTime",
        "ReadingCelsius",
        "PeakReading",
        "PeakReadingTime",
        "LifetimeReading",
        "PowerConsumedWatts",
        "AverageConsumedWatts",
        "MinConsumedWatts",
        "MaxConsumedWatts",
        "ServiceHours",
        "DateTime",
        "ApparentVA",
        "ReactiveVAR",
    }
)


def odata_type(schema: str) -> str:
    """`#Chassis.v1_28_0.Chassis`, or `#ChassisCollection.ChassisCollection`."""
    if schema.endswith("Collection"):
        return f"#{schema}.{schema}"
    return f"#{schema}.{SCHEMA_VERSIONS[schema]}.{schema}"


def head(uri: str, schema: str, name: str, resource_id: str | None = None) -> Json:
    """The properties every resource starts with."""
    return {
        "@odata.id": uri,
        "@odata.type": odata_type(schema),
        "Id": resource_id if resource_id is not None else uri.rstrip("/").rsplit("/", 1)[-1],
        "Name": name,
    }


def link(uri: str) -> Json:
    return {"@odata.id": uri}


def status(state: str = "Enabled", health: str = "OK") -> Json:
    return {"State": state, "Health": health}


def iso_time(timestamp: float | None = None) -> str:
    """Wall-clock time as Redfish writes it (seconds, UTC offset)."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC) if timestamp else None
    moment = moment or datetime.datetime.now(datetime.UTC)
    return moment.replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- request plumbing


class ReadFailure(Exception):
    """A point whose reads an injected fault makes fail: the request gets a 500."""

    def __init__(self, point: str) -> None:
        super().__init__(point)
        self.point = point


class Readings:
    """One request's readings: each source is read once, so one body is self-consistent.

    A source is a function returning point values (the plant's CDU readings, one server's);
    sources are read lazily, so a GET of a log entry does not disturb the plant's noise stream.
    """

    def __init__(
        self,
        sources: Mapping[str, Callable[[], Mapping[str, float]]],
        failing_point: str | None = None,
    ) -> None:
        self._sources = sources
        self._cache: dict[str, Mapping[str, float]] = {}
        self._failing = failing_point

    def value(self, point: str, source: str = "main") -> float:
        """A point of a source; the device's own points are in "main"."""
        if point == self._failing and source == "main":
            raise ReadFailure(point)
        values = self._cache.get(source)
        if values is None:
            values = self._cache[source] = self._sources[source]()
        return float(values[point])


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Who is asking: what PATCH, action and session handlers may want to know."""

    remote: str
    username: str
    session_id: str | None = None


@dataclass(slots=True)
class Reply:
    """What a POST or DELETE handler answers."""

    status: int
    body: Json | None = None
    headers: dict[str, str] = field(default_factory=dict)


PostHandler = Callable[[Any, RequestInfo], Reply]
DeleteHandler = Callable[[RequestInfo], Reply]


@dataclass(frozen=True, slots=True)
class Writable:
    """A property a PATCH may set, how it is checked, and what setting it does.

    `kind` is one of number, integer, string, boolean, enum, strings (a list of strings).
    """

    kind: str
    apply: Callable[[Any], None]
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] = ()
    max_length: int = 255
    min_length: int = 0
    unit: str = ""


@dataclass(slots=True)
class Resource:
    """One URI: its body (None for an action target), what may be written, posted, deleted."""

    render: Callable[[Readings], Json] | None = None
    writable: Mapping[PatchPath, Writable] = field(default_factory=dict)
    post: PostHandler | None = None
    delete: DeleteHandler | None = None

    @property
    def methods(self) -> list[str]:
        """What the Allow header lists."""
        allowed = ["GET", "HEAD"] if self.render is not None else []
        if self.writable:
            allowed.append("PATCH")
        if self.post is not None:
            allowed.append("POST")
        if self.delete is not None:
            allowed.append("DELETE")
        return allowed


class ResourceTree:
    """URI -> Resource, with prefixes resolved on demand for members that come and go."""

    def __init__(self) -> None:
        self._static: dict[str, Resource] = {}
        self._dynamic: list[tuple[str, Callable[[str], Resource | None]]] = []

    def add(self, uri: str, resource: Resource) -> Resource:
        if uri in self._static:
            raise ValueError(f"{uri} is defined twice")
        self._static[uri] = resource
        return resource

    def add_dynamic(self, prefix: str, lookup: Callable[[str], Resource | None]) -> None:
        """Members under `prefix/` (sessions, log entries) that `lookup(member id)` resolves."""
        self._dynamic.append((prefix.rstrip("/") + "/", lookup))

    def get(self, uri: str) -> Resource | None:
        found = self._static.get(uri)
        if found is not None:
            return found
        for prefix, lookup in self._dynamic:
            if uri.startswith(prefix) and "/" not in uri[len(prefix) :]:
                return lookup(uri[len(prefix) :])
        return None

    def __contains__(self, uri: str) -> bool:
        return self.get(uri) is not None

    @property
    def uris(self) -> list[str]:
        return list(self._static)


def collection(
    uri: str,
    schema: str,
    name: str,
    members: Callable[[], Sequence[str]],
    expand: Callable[[str, Readings], Json] | None = None,
) -> Resource:
    """A resource collection whose members are listed at request time.

    `expand` renders members in full, for collections whose schema auto-expands them (log
    entries).
    """

    def render(r: Readings) -> Json:
        listed = list(members())
        return {
            "@odata.id": uri,
            "@odata.type": odata_type(schema),
            "Name": name,
            "Members@odata.count": len(listed),
            "Members": [link(m) if expand is None else expand(m, r) for m in listed],
        }

    return Resource(render)


def action(resource_uri: str, name: str) -> tuple[str, Json]:
    """The `Actions` entry of action `name` ("Manager.Reset") and its target URI."""
    target = f"{resource_uri}/Actions/{name}"
    return target, {"target": target}


# --------------------------------------------------------------------------- PATCH


def _leaves(body: Any, path: PatchPath = ()) -> Iterator[tuple[PatchPath, Any]]:
    """Every value a PATCH body sets, with its path. `{}` in an array leaves that element be."""
    if isinstance(body, dict) and (path == () or body):
        for key, value in body.items():
            if isinstance(key, str) and key.startswith("@"):
                continue  # annotations (@odata.etag is looked at by the server)
            yield from _leaves(value, (*path, key))
    elif isinstance(body, list) and body:
        for index, value in enumerate(body):
            if value != {}:
                yield from _leaves(value, (*path, index))
    else:
        yield path, body


def _exists(body: Any, path: PatchPath) -> bool:
    for step in path:
        in_object = isinstance(body, dict) and isinstance(step, str) and step in body
        in_array = isinstance(body, list) and isinstance(step, int) and 0 <= step < len(body)
        if not (in_object or in_array):
            return False
        body = body[step]
    return True


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _problem(writable: Writable, value: Any, name: str, pointer: str) -> Json | None:
    """The message rejecting `value` for this property, or None if it is acceptable."""
    kind = writable.kind
    type_ok = {
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "enum": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not type_ok:
        return message("PropertyValueTypeError", _shown(value), name, related=[pointer])
    if kind in ("number", "integer"):
        low, high = writable.minimum, writable.maximum
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            unit = f" {writable.unit}" if writable.unit else ""
            return message(
                "PropertyValueOutOfRange",
                _shown(value),
                name,
                related=[pointer],
                resolution=f"Use a value of {name} from {low:g} to {high:g}{unit}"
                f" (AllowableMin to AllowableMax) and resubmit the request.",
            )
    if kind == "enum" and value not in writable.allowed:
        return message(
            "PropertyValueNotInList",
            value,
            name,
            related=[pointer],
            resolution=f"Use one of {', '.join(writable.allowed)} and resubmit the request.",
        )
    texts = [value] if kind in ("string", "enum") else value if kind == "strings" else []
    if any(not writable.min_length <= len(text) <= writable.max_length for text in texts):
        return message("PropertyValueFormatError", _shown(value), name, related=[pointer])
    return None


def plan_patch(resource: Resource, current: Json, body: Any) -> list[tuple[Writable, Any]]:
    """Check a PATCH body against the resource as a whole; what to apply, in body order.

    Nothing is applied if anything is wrong: the RedfishError carries one message per
    offending property (unknown, read-only, wrong type, out of range).
    """
    if not isinstance(body, dict):
        raise RedfishError(400, [message("MalformedJSON")])
    planned: list[tuple[Writable, Any]] = []
    problems: list[Json] = []
    for path, value in _leaves(body):
        if path == ():
            continue
        name = "/".join(str(step) for step in path)
        pointer = "#/" + name
        writable = resource.writable.get(path)
        if writable is not None:
            problem = _problem(writable, value, name, pointer)
            if problem is None:
                planned.append((writable, value))
            else:
                problems.append(problem)
        elif _exists(current, path):
            problems.append(message("PropertyNotWritable", name, related=[pointer]))
        else:
            problems.append(message("PropertyUnknown", name, related=[pointer]))
    if problems:
        raise RedfishError(400, problems)
    if not planned:
        raise RedfishError(400, [message("EmptyJSON")])
    return planned


# --------------------------------------------------------------------------- responses


def _stable(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _stable(v) for k, v in body.items() if k not in VOLATILE and k != "@odata.etag"}
    if isinstance(body, list):
        return [_stable(v) for v in body]
    return body


def etag_of(body: Json) -> str:
    """A weak ETag of everything but the measurements: it changes when the resource does.

    Readings change on every request (sensor noise); an ETag that followed them would make
    every If-Match fail, so they are left out. Set points, modes, labels and states are in.
    """
    digest = hashlib.sha256(json.dumps(_stable(body), sort_keys=True).encode()).hexdigest()
    return f'W/"{digest[:16]}"'


def select(body: Json, properties: Sequence[str]) -> Json:
    """`$select`: the named properties (a/b for nested ones) and the OData identity of the body."""
    chosen: Json = {k: v for k, v in body.items() if k.startswith("@odata.")}
    for path in properties:
        source: Any = body
        target = chosen
        steps = path.strip().split("/")
        for depth, step in enumerate(steps):
            if not isinstance(source, dict) or step not in source:
                break
            source = source[step]
            if depth == len(steps) - 1:
                target[step] = source
            else:
                target = target.setdefault(step, {})
    return chosen


def metadata_document() -> str:
    """The service's `$metadata`: references to the DMTF CSDL of every schema it uses."""
    references = [("RedfishExtensions", ["RedfishExtensions.v1_0_0"]), ("Resource", ["Resource"])]
    references.append(("Message", ["Message", "Message.v1_3_0"]))
    for schema, version in sorted(SCHEMA_VERSIONS.items()):
        references.append((schema, [schema, f"{schema}.{version}"]))
    references += [(schema, [schema]) for schema in COLLECTION_SCHEMAS]
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">',
    ]
    for schema, namespaces in references:
        lines.append(f'  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/{schema}_v1.xml">')
        lines += [f'    <edmx:Include Namespace="{ns}"/>' for ns in namespaces]
        lines.append("  </edmx:Reference>")
    lines += [
        "  <edmx:DataServices>",
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">',
        '      <EntityContainer Name="Service" Extends="ServiceRoot.v1_19_0.ServiceContainer"/>',
        "    </Schema>",
        "  </edmx:DataServices>",
        "</edmx:Edmx>",
    ]
    return "\n".join(lines) + "\n"
