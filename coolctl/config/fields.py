"""The kinds of value a config holds, each with its checks and its JSON Schema.

Scalars are strict: a TOML string "1502" is not a port, and true is not a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
)

from coolctl.model import CANONICAL_POINTS

DEFAULT_METRICS_PORT = 18850
"""Outside 9100–9999 (the exporters' range, fully allocated) and below the ephemeral ports."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ID_RULE = "name must be letters, digits, '_', '.', '-' (at most 63)"


class KeyProblem(ValueError):
    """Problems a check across several keys found, each at a key path under the entry checked
    ("" for the entry itself)."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A point on a device of the same rack, written `device/point` in the config."""

    device: str
    point: str

    def __str__(self) -> str:
        return f"{self.device}/{self.point}"


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a loop holds: one point, or the difference of two (e.g. coolant ΔT)."""

    minuend: DeviceRef
    subtrahend: DeviceRef | None = None

    @property
    def refs(self) -> tuple[DeviceRef, ...]:
        return (self.minuend,) if self.subtrahend is None else (self.minuend, self.subtrahend)

    def __str__(self) -> str:
        return (
            str(self.minuend) if self.subtrahend is None else f"{self.minuend} - {self.subtrahend}"
        )


def parse_host_port(text: str) -> tuple[str, int]:
    """'HOST:PORT' → (host, port); '[::1]:PORT' for IPv6."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port_text)


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError(f"must not contain a NUL character: {shown(text)}")
    return text


def _no_wildcards(text: str) -> str:
    if "+" in text or "#" in text:
        raise ValueError(
            f"goes into MQTT topics, so must not contain the wildcards + or #: {text!r}"
        )
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty (leave the key out for the default)")
    return text


def _text_of(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {kind(value)} {shown(value)}")
    return _no_nul(value)


Text = Annotated[str, Strict(), AfterValidator(_no_nul)]
TopicPart = Annotated[Text, AfterValidator(_no_wildcards)]
"""A string that goes into MQTT topics: no wildcards, or the topics break."""
Id = Annotated[str, Strict(), StringConstraints(pattern=ID_PATTERN)]


def _path_text(value: object) -> object:
    if value is None or isinstance(value, Path):  # already read (dataclasses.replace)
        return value
    return _not_blank(_text_of(value))


FilePath = Annotated[Path, BeforeValidator(_path_text)]
Flag = Annotated[bool, Strict()]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]


def _from(low: int, high: int) -> tuple[AfterValidator, Any]:
    """An integer's range, checked and in its JSON Schema."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}, not {value}")
        return value

    return AfterValidator(check), Field(json_schema_extra={"minimum": low, "maximum": high})


Port = Annotated[int, Strict(), *_from(1, 65535)]
ModbusUnit = Annotated[int, Strict(), *_from(0, 255)]
Baud = Annotated[int, Strict(), *_from(300, 1_000_000)]
InFlight = Annotated[int, Strict(), *_from(1, 16)]
Priority = Annotated[int, Strict(), *_from(-1000, 1000)]
Votes = Annotated[int, Strict(), *_from(1, 16)]
EventCount = Annotated[int, Strict(), *_from(100, 100_000_000)]
Fraction = Annotated[Number, Field(ge=0, le=1)]


def _host_port(nonzero: bool) -> Callable[[object], tuple[str, int]]:
    def check(value: object) -> tuple[str, int]:
        if isinstance(value, tuple):  # already parsed (dataclasses.replace)
            return value
        host, port = parse_host_port(_text_of(value))
        if nonzero and port == 0:
            raise ValueError("the service's port must be from 1 to 65535, not 0")
        return host, port

    return check


def _show_host_port(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOST_PORT_SCHEMA = {"type": "string", "pattern": r"^.+:[0-9]{1,5}$", "examples": ["host:1883"]}
HostPort = Annotated[
    tuple[str, int],
    PlainValidator(_host_port(nonzero=False)),
    PlainSerializer(_show_host_port),
    WithJsonSchema(_HOST_PORT_SCHEMA),
]
"""'HOST:PORT' ('[::1]:PORT' for IPv6), held as (host, port)."""
ServiceAddress = Annotated[
    tuple[str, int],
    PlainValidator(_host_port(nonzero=True)),
    PlainSerializer(_show_host_port),
    WithJsonSchema(_HOST_PORT_SCHEMA),
]
"""'HOST:PORT' of a service to connect to: port 0 is no port."""


# -- references to a rack's devices and points ----------------------------------------------


def configured_devices(info: ValidationInfo) -> frozenset[str] | None:
    """The devices the rack being read names (None outside a load), a bad entry included."""
    context = info.context
    return context.get("devices") if isinstance(context, Mapping) else None


def _ref(text: str, devices: frozenset[str] | None) -> DeviceRef:
    device, _, point = text.partition("/")
    if not device or not point or "/" in point:
        raise ValueError(f"{text!r} is not of the form device/point")
    if devices is not None and device not in devices:
        known = ", ".join(sorted(devices)) or "none"
        raise ValueError(f"device {device!r} is not configured in this rack (known: {known})")
    if point not in CANONICAL_POINTS:
        raise ValueError(f"{point!r} is not a canonical point name")
    return DeviceRef(device, point)


def _device_ref(value: object, info: ValidationInfo) -> DeviceRef:
    if isinstance(value, DeviceRef):
        return value
    return _ref(_text_of(value), configured_devices(info))


def _measurement(value: object, info: ValidationInfo) -> Measurement:
    if isinstance(value, Measurement):
        return value
    text = _text_of(value)
    parts = [part.strip() for part in text.split(" - ")]
    if len(parts) > 2:
        raise ValueError(f"{text!r}: only 'device/point' or 'device/point - device/point'")
    refs = [_ref(part, configured_devices(info)) for part in parts]
    return Measurement(refs[0], refs[1] if len(refs) == 2 else None)


PointRef = Annotated[
    DeviceRef,
    PlainValidator(_device_ref),
    PlainSerializer(str),
    WithJsonSchema({"type": "string", "pattern": r"^[^/]+/[^/]+$", "examples": ["cdu1/flow"]}),
]
"""`device/point`: a canonical point of a device configured in the same rack."""
MeasurementRef = Annotated[
    Measurement,
    PlainValidator(_measurement),
    PlainSerializer(str),
    WithJsonSchema(
        {
            "type": "string",
            "examples": ["cdu1/flow", "cdu1/return_temperature - cdu1/supply_temperature"],
        }
    ),
]
"""`device/point`, or the difference of two: `device/point - device/point`."""


# -- values shown in messages ---------------------------------------------------------------


def shown(value: object, limit: int = 60) -> str:
    """A value from the config, fit for a message: its repr, cut short if long."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"of some {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
