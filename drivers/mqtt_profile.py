"""MQTT device profiles: load and check a TOML topic map, and decode message payloads.

An MQTT sensor has no registers to read: it publishes, and coolctl listens. A profile says
which topic carries which canonical point, how the payload encodes the value, how old a value
may get before it is stale, and which points are interlock inputs that the daemon must
evaluate the moment a message arrives (see `drivers/profiles/sim-mqtt-sensors.toml`).

As with the Modbus profiles, everything that can be wrong in the file is caught at load time
with the file and the key named. The payload codec is pure and lives here so that it can be
tested without a broker.
"""

from __future__ import annotations

import enum
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from coolctl.drivers import profile_toml
from coolctl.drivers.profile_toml import ProfileChecker
from coolctl.model import CANONICAL_POINTS, Unit

ProfileError = profile_toml.ProfileError  # the error of every profile loader

PayloadFormat = Literal["json", "number", "boolean"]
DeviceKind = Literal["cdu", "pdu", "server", "sensor"]


PAYLOAD_FORMATS: Final[tuple[PayloadFormat, ...]] = get_args(PayloadFormat)
DEVICE_KINDS: Final[tuple[DeviceKind, ...]] = get_args(DeviceKind)
TOPIC_FIELDS: Final[frozenset[str]] = frozenset({"prefix", "rack", "device"})

# A sensor reading fits in a few hundred bytes; anything this large is a fault or an attack,
# and is refused before any parsing is attempted.
MAX_PAYLOAD_BYTES: Final = 64 * 1024


class RejectReason(enum.StrEnum):
    """Why a message is refused: the keys of the drivers' rejection counters."""

    MALFORMED = "malformed"  # undecodable, not the format, field missing, wrong type, NaN
    OUT_OF_RANGE = "out_of_range"  # decoded, but outside the point's plausibility range
    OVERSIZED = "oversized"  # larger than MAX_PAYLOAD_BYTES
    UNKNOWN_TOPIC = "unknown_topic"  # no point of any device maps the topic


_TRUE_WORDS: Final = frozenset({"1", "true"})
_FALSE_WORDS: Final = frozenset({"0", "false"})

_PROFILE_KEYS: Final = frozenset({"name", "description", "protocol", "kind"})
_POINT_REQUIRED: Final = ("name", "topic", "format", "unit", "max_age_s")
_POINT_OPTIONAL: Final = frozenset({"field", "qos", "interlock", "min", "max"})


class PayloadError(ValueError):
    """A message payload that yields no usable value; `reason` is MALFORMED, OUT_OF_RANGE or
    OVERSIZED (a RejectReason), so that the driver can count rejections by kind."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TopicPoint:
    """Where one canonical point is published and how its payload converts to a value.

    `topic` is a template over {prefix}, {rack} and {device}; `field` is the path of keys into
    a JSON document (empty: the document itself is the value). A point with `interlock` set
    is an input of a safety interlock, evaluated as soon as a message arrives.
    """

    name: str
    topic: str
    format: PayloadFormat
    field: tuple[str, ...]
    unit: Unit
    qos: int
    interlock: bool
    max_age_s: float
    min: float | None
    max: float | None

    def topic_for(self, *, prefix: str, rack: str, device: str) -> str:
        """The concrete topic of this point on one device."""
        return self.topic.format(prefix=prefix, rack=rack, device=device)


@dataclass(frozen=True, slots=True)
class MqttProfile:
    """A checked topic map of one device model; `kind` says what the device is."""

    name: str
    description: str
    path: Path
    points: tuple[TopicPoint, ...]
    kind: DeviceKind

    def point(self, name: str) -> TopicPoint:
        """The point called `name`; KeyError if the profile has none."""
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(f"profile {self.name!r} has no point {name!r}")


# --------------------------------------------------------------------------------------------
# Loading


def load_mqtt_profile(name_or_path: str | Path) -> MqttProfile:
    """Load and check a profile: a bare name ("sim-mqtt-sensors") means a shipped profile,
    anything with a "/" or ending in ".toml" (and every `Path`) a file."""
    return profile_toml.load(name_or_path, "mqtt", parse_mqtt_profile)


def shipped_mqtt_profiles() -> list[str]:
    """Names of the MQTT profiles shipped with coolctl (the folder holds Modbus ones too)."""
    return profile_toml.shipped("mqtt")


def parse_mqtt_profile(data: bytes, path: Path) -> MqttProfile:
    """Check the TOML text of a profile; `path` is only used to name the file in errors."""
    return _Checker(path).profile(profile_toml.parse_document(data, path))


class _Checker(ProfileChecker):
    """Reads a parsed TOML document into an MQTT profile."""

    def profile(self, document: Mapping[str, Any]) -> MqttProfile:
        self.no_unknown_keys(document, {"profile", "point"}, "")
        header = self.table(document, "profile", "profile")
        # The protocol first: a Modbus profile given here is named as one, not as a file of
        # unknown keys.
        protocol = self.string(header, "protocol", "profile")
        if protocol != "mqtt":
            raise self.fail("profile.protocol", f"must be 'mqtt' for this driver, not {protocol!r}")
        self.no_unknown_keys(header, _PROFILE_KEYS, "profile")
        kind = self.choice(header, "kind", "profile", DEVICE_KINDS)
        raw_points = document.get("point")
        if not isinstance(raw_points, list) or not raw_points:
            raise self.fail("point", "missing: a profile needs at least one [[point]] table")
        points = tuple(self.point(raw, f"point[{index}]") for index, raw in enumerate(raw_points))
        self.no_duplicates(points)
        self.shared_topics_are_json(points)
        return MqttProfile(
            name=self.string(header, "name", "profile"),
            description=self.string(header, "description", "profile", default=""),
            path=self.path,
            points=points,
            kind=kind,
        )

    def point(self, raw: object, key: str) -> TopicPoint:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table, not {type(raw).__name__}")
        label = f"{key} ({raw['name']})" if isinstance(raw.get("name"), str) else key
        self.no_unknown_keys(raw, {*_POINT_REQUIRED, *_POINT_OPTIONAL}, key)
        for required in _POINT_REQUIRED:
            if required not in raw:
                raise self.fail(f"{key}.{required}", f"missing (in {label})")
        name = self.string(raw, "name", key)
        spec = CANONICAL_POINTS.get(name)
        if spec is None:
            raise self.fail(f"{key}.name", f"{name!r} is not a canonical point name")
        unit = self.string(raw, "unit", key)
        if unit != spec.unit.value:
            raise self.fail(f"{key}.unit", f"{name} is measured in {spec.unit.value}, not {unit!r}")
        payload_format = self.choice(raw, "format", key, PAYLOAD_FORMATS)
        if payload_format == "boolean" and spec.unit is not Unit.BOOLEAN:
            raise self.fail(f"{key}.format", f"boolean payloads need a boolean point, not {name}")
        minimum, maximum = self.bounds(raw, key, spec.unit)
        return TopicPoint(
            name=name,
            topic=self.topic(raw, key),
            format=payload_format,
            field=self.field(raw, key, payload_format),
            unit=spec.unit,
            qos=self.qos(raw, key),
            interlock=self.boolean(raw, "interlock", key, default=False),
            max_age_s=self.max_age(raw, key),
            min=minimum,
            max=maximum,
        )

    # --- checks across points

    def shared_topics_are_json(self, points: Sequence[TopicPoint]) -> None:
        """Several points may read fields of one JSON document, but a plain payload holds one
        value only, so a plain topic shared with another point is a mistake in the file."""
        first: dict[str, int] = {}
        for index, point in enumerate(points):
            if point.topic not in first:
                first[point.topic] = index
                continue
            other = points[first[point.topic]]
            if point.format != "json" or other.format != "json":
                raise self.fail(
                    f"point[{index}].topic",
                    f"{point.topic!r} is also the topic of point[{first[point.topic]}] "
                    f"({other.name}); only json points may share a topic",
                )

    # --- checks of single values

    def topic(self, raw: Mapping[str, Any], key: str) -> str:
        template = self.string(raw, "topic", key)
        where = f"{key}.topic"
        if not template or "\0" in template:
            raise self.fail(where, "must be a non-empty string without NUL characters")
        if "+" in template or "#" in template:
            raise self.fail(where, f"{template!r}: wildcards (+, #) are not allowed in a topic")
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise self.fail(where, f"{template!r}: {exc}") from None
        for _, field_name, format_spec, conversion in parts:
            if field_name is None:
                continue
            if field_name not in TOPIC_FIELDS or format_spec or conversion:
                raise self.fail(
                    where,
                    f"{template!r}: unknown placeholder {{{field_name}}} "
                    f"(allowed: {', '.join('{' + f + '}' for f in sorted(TOPIC_FIELDS))})",
                )
        return template

    def field(
        self, raw: Mapping[str, Any], key: str, payload_format: PayloadFormat
    ) -> tuple[str, ...]:
        if "field" not in raw:
            return ()
        if payload_format != "json":
            raise self.fail(f"{key}.field", f"only applies to json payloads, not {payload_format}")
        path = self.string(raw, "field", key)
        parts = tuple(path.split("."))
        if not all(parts):
            raise self.fail(f"{key}.field", f"{path!r} is not a dotted path of keys")
        return parts

    def qos(self, raw: Mapping[str, Any], key: str) -> int:
        value = raw.get("qos", 0)
        if isinstance(value, bool) or value not in (0, 1, 2):
            raise self.fail(f"{key}.qos", f"must be 0, 1 or 2, not {value!r}")
        return int(value)

    def max_age(self, raw: Mapping[str, Any], key: str) -> float:
        value = self.number(raw, "max_age_s", key)
        if value <= 0:
            raise self.fail(f"{key}.max_age_s", f"must be positive, not {value}")
        return value

    def bounds(
        self, raw: Mapping[str, Any], key: str, unit: Unit
    ) -> tuple[float | None, float | None]:
        """The optional plausibility range; a boolean point is always checked to be 0 or 1,
        so a range on it would say nothing."""
        if unit is Unit.BOOLEAN:
            for name in ("min", "max"):
                if name in raw:
                    raise self.fail(f"{key}.{name}", "does not apply to boolean points")
            return None, None
        minimum = self.number(raw, "min", key) if "min" in raw else None
        maximum = self.number(raw, "max", key) if "max" in raw else None
        if minimum is not None and maximum is not None and minimum > maximum:
            raise self.fail(f"{key}.min", f"{minimum} is above max {maximum}")
        return minimum, maximum


# --------------------------------------------------------------------------------------------
# Codec


def decode_payload(point: TopicPoint, payload: bytes) -> float:
    """A message payload to the value of one point, in its canonical unit.

    Raises PayloadError: OVERSIZED above MAX_PAYLOAD_BYTES; MALFORMED for anything that is
    not the profile's format or not a finite number of the right kind; OUT_OF_RANGE for a
    value outside the point's plausibility range (or not 0/1 on a boolean point). A sensor
    that sends garbage must never look like one that sends a value.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            RejectReason.OVERSIZED, f"{len(payload)} bytes (limit {MAX_PAYLOAD_BYTES})"
        )
    decode = _json_value if point.format == "json" else _plain_value
    value = decode(point, payload)
    _check_range(point, value)
    return value


def _plain_value(point: TopicPoint, payload: bytes) -> float:
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError(RejectReason.MALFORMED, "payload is not UTF-8 text") from None
    word = text.lower()
    if point.format == "boolean":
        if word in _TRUE_WORDS:
            return 1.0
        if word in _FALSE_WORDS:
            return 0.0
        raise PayloadError(RejectReason.MALFORMED, f"{_excerpt(text)} is not 1, 0, true or false")
    try:
        value = float(text)
    except ValueError:
        raise PayloadError(RejectReason.MALFORMED, f"{_excerpt(text)} is not a number") from None
    return _finite(value)


def _json_value(point: TopicPoint, payload: bytes) -> float:
    try:
        document = json.loads(payload, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(RejectReason.MALFORMED, f"not valid JSON: {exc}") from None
    except ValueError as exc:  # NaN / Infinity, refused by _refuse_constant
        raise PayloadError(RejectReason.MALFORMED, str(exc)) from None
    except RecursionError:
        raise PayloadError(RejectReason.MALFORMED, "JSON nested too deeply") from None
    value: object = document
    for depth, key in enumerate(point.field):
        if not isinstance(value, dict) or key not in value:
            path = ".".join(point.field[: depth + 1])
            raise PayloadError(RejectReason.MALFORMED, f"field {path!r} is missing")
        value = value[key]
    return _json_number(point, value)


def _json_number(point: TopicPoint, value: object) -> float:
    where = ".".join(point.field) or "document"
    if isinstance(value, bool):
        if point.unit is not Unit.BOOLEAN:
            raise PayloadError(
                RejectReason.MALFORMED, f"{where} is a boolean, {point.name} needs a number"
            )
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise PayloadError(
            RejectReason.MALFORMED, f"{where} is {type(value).__name__}, not a number"
        )
    try:
        return _finite(float(value))
    except OverflowError:
        raise PayloadError(RejectReason.MALFORMED, f"{where} is too large for a float") from None


def _refuse_constant(name: str) -> float:
    """JSON parse hook: Python's json accepts NaN and Infinity, which no sensor value is."""
    raise ValueError(f"{name} is not a value")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise PayloadError(RejectReason.MALFORMED, f"{value} is not a finite number")
    return value


def _check_range(point: TopicPoint, value: float) -> None:
    if point.unit is Unit.BOOLEAN:
        if value not in (0.0, 1.0):
            raise PayloadError(RejectReason.OUT_OF_RANGE, f"{value:g} is neither 0 nor 1")
        return
    if point.min is not None and value < point.min:
        raise PayloadError(RejectReason.OUT_OF_RANGE, f"{value:g} is below min {point.min:g}")
    if point.max is not None and value > point.max:
        raise PayloadError(RejectReason.OUT_OF_RANGE, f"{value:g} is above max {point.max:g}")


def _excerpt(text: str, limit: int = 40) -> str:
    """A payload quoted for a log line, cut short so that a large one cannot flood the log."""
    return repr(text if len(text) <= limit else text[:limit] + "…")
