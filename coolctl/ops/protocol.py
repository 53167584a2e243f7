"""What operators can see and change, independent of how they reach it.

The control API (HTTP+JSON over a UNIX socket), the CLI and the tests all speak to the daemon
through this protocol; the store keeps these records. Times here are Unix seconds (operators
and the audit log need wall-clock time), unlike the monotonic times of the control path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from coolctl.model import RackMode

JsonObject = dict[str, Any]

MAX_REASON_BYTES: Final = 1024
"""A reason says why in a sentence or two; the audit log keeps it for good."""

# What must never reach a terminal or a log line raw: C0 controls and DEL (escape sequences,
# newlines that start a forged log line, carriage returns that overwrite one), C1 controls
# (U+009B is CSI on some terminals), the Unicode line and paragraph separators, and the bidi
# embeddings, overrides, isolates and marks that make text read in another order than it is.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def escape_text(text: str) -> str:
    """`text` with every unsafe character spelt out (`\\x1b`, `\\n`, `\\u202e`), for printing
    and logging text that came from outside (operators, devices, the bus)."""
    return _UNSAFE.sub(_escaped, text)


# Outside C0, which json.dumps escapes inside strings itself (and its newlines lay out).
_UNSAFE_IN_JSON: Final = re.compile(
    "[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def escape_json_text(document: str) -> str:
    """A JSON text from json.dumps with the unsafe characters inside its strings as `\\uXXXX`
    escapes (still the same JSON), for printing with ensure_ascii=False."""
    return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", document)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def check_reason(value: Any) -> str:
    """An operator's reason, stripped, or ControlError 400 saying what is wrong with it.

    Reasons go into the audit log for good and are printed on other operators' terminals, so
    they are short printable text: no control characters (no newline that could start a forged
    log line, no escape sequence), no bidi overrides."""
    if value is None:
        raise ControlError(400, "'reason' is required: say why, it goes in the audit log")
    if not isinstance(value, str):
        raise ControlError(400, f"'reason' must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ControlError(400, "'reason' must not be empty: say why, it goes in the audit log")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_REASON_BYTES:
        raise ControlError(
            400, f"'reason' is {size} bytes; at most {MAX_REASON_BYTES} (a sentence or two)"
        )
    found = _UNSAFE.search(text)
    if found is not None:
        raise ControlError(
            400,
            f"'reason' contains the control or bidi character U+{ord(found.group()):04X}"
            f" at position {found.start()}; a reason is printable text on one line",
        )
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        raise ControlError(400, "'reason' contains a lone surrogate; send UTF-8 text")
    return text


class ControlError(Exception):
    """A request that cannot be carried out; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class OverrideRecord:
    """An operator's override of one target on one rack.

    `target` is an actuator point (`cdu1/pump_speed_command`) or a loop setpoint
    (`pump.setpoint`). `expires_at` is None for a permanent override.
    """

    id: int
    rack: str
    target: str
    value: float
    who: str
    why: str
    created_at: float
    expires_at: float | None

    def as_json(self) -> JsonObject:
        return {
            "id": self.id,
            "rack": self.rack,
            "target": self.target,
            "value": self.value,
            "who": self.who,
            "why": self.why,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One operator action, append-only: who did what, when, with which details."""

    id: int
    at: float
    who: str
    action: str  # override_set, override_clear, override_expired, mode_set, reload, ...
    rack: str | None
    details: Mapping[str, Any]

    def as_json(self) -> JsonObject:
        return {
            "id": self.id,
            "at": self.at,
            "who": self.who,
            "action": self.action,
            "rack": self.rack,
            "details": dict(self.details),
        }


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event (see coolctl.model.Event), with its id and wall-clock time."""

    id: int
    at: float
    rack: str
    kind: str
    severity: str
    message: str
    source: str

    def as_json(self) -> JsonObject:
        return {
            "id": self.id,
            "at": self.at,
            "rack": self.rack,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "source": self.source,
        }


class ControlPlane(Protocol):
    """The operations behind the control API. Errors are ControlError (4xx) and nothing is
    half-applied: a call either takes full effect (stored, audited) or none."""

    def status(self) -> JsonObject:
        """Daemon-wide summary: version, uptime, config path, racks with their state."""
        ...

    def racks(self) -> list[JsonObject]:
        """Per rack: mode, failsafe, active interlocks, budget and power, loops, overrides."""
        ...

    def points(self, rack: str | None = None) -> list[JsonObject]:
        """Every point: rack, device, point, value, unit, quality, age_s."""
        ...

    def loops(self, rack: str | None = None) -> list[JsonObject]:
        """Every loop: rack, loop, mode, setpoint, measurement, output, actuator, reason."""
        ...

    def overrides(self, rack: str | None = None) -> list[OverrideRecord]: ...

    def alarms(self, rack: str | None = None) -> list[JsonObject]:
        """The CDUs' alarm points: rack, device, alarm, active, for_s."""

    async def acknowledge_alarms(self, rack: str, who: str, why: str) -> JsonObject:
        """Write the acknowledge that clears a rack's latched CDU alarms; audited."""

    async def set_override(
        self, rack: str, target: str, value: float, ttl_s: float | None, who: str, why: str
    ) -> OverrideRecord:
        """Refused (ControlError 400) when the value is outside the target's safe bounds; the
        message names the bounds. Returns once the override is durably stored."""
        ...

    async def clear_override(self, rack: str, target: str, who: str, why: str) -> OverrideRecord:
        """ControlError 404 when there is no such override."""
        ...

    async def set_mode(self, rack: str, mode: RackMode, who: str, why: str) -> JsonObject: ...

    async def reset_interlock(self, rack: str, interlock: str, who: str, why: str) -> JsonObject:
        """Release an interlock whose cause is clear (a latched leak); 409 while it is not."""
        ...

    async def events(self, since_id: int = 0, limit: int = 100) -> list[EventRecord]: ...

    async def wait_events(
        self, since_id: int, timeout_s: float, limit: int = 100
    ) -> list[EventRecord]:
        """Events after `since_id`, waiting up to `timeout_s` for one to arrive (for --follow)."""
        ...

    async def audit(self, since_id: int = 0, limit: int = 100) -> list[AuditRecord]: ...

    async def newest_events(self, limit: int = 100) -> list[EventRecord]:
        """The newest `limit` events, oldest first, without reading the older ones."""
        ...

    async def newest_audit(self, limit: int = 100) -> list[AuditRecord]:
        """The newest `limit` audit records, oldest first, without reading the older ones."""
        ...

    async def reload(self, who: str) -> JsonObject:
        """Validate and apply the config file again; ControlError 400 (old config kept) if bad."""
        ...


def target_kind(target: str) -> Literal["actuator", "setpoint"]:
    """`device/point` is an actuator; `loop.setpoint` is a loop's setpoint."""
    if "/" in target:
        return "actuator"
    if target.endswith(".setpoint") and target.count(".") == 1:
        return "setpoint"
    raise ControlError(400, f"target {target!r} is neither device/point nor LOOP.setpoint")


__all__: Sequence[str] = (
    "MAX_REASON_BYTES",
    "AuditRecord",
    "ControlError",
    "ControlPlane",
    "EventRecord",
    "JsonObject",
    "OverrideRecord",
    "check_reason",
    "escape_json_text",
    "escape_text",
    "target_kind",
)
