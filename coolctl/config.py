"""The daemon's configuration: one TOML file, site → racks → devices and loops.

Validation collects every problem it finds, each naming the file, the key path and what is
wrong, so that an operator fixes a config in one pass instead of one error per restart.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from coolctl.model import CANONICAL_POINTS

DEFAULT_METRICS_PORT = 18850
"""Outside 9100–9999 (the exporters' range, fully allocated) and below the ephemeral ports."""

DRIVERS = ("modbus",)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one line per thing that is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
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


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    driver: Literal["modbus"]
    address: str
    port: int
    unit: int
    profile: str
    poll_interval_s: float
    timeout_s: float
    stale_after_s: float


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """A PID loop: hold `measurement` at `setpoint` by moving `actuator`."""

    id: str
    measurement: Measurement
    actuator: DeviceRef
    setpoint: float
    action: Literal["reverse", "direct"]
    kp: float
    ki: float
    kd: float
    derivative_filter_s: float
    output_min: float
    output_max: float
    slew_per_s: float | None
    failsafe_output: float
    enabled: bool


@dataclass(frozen=True, slots=True)
class RackConfig:
    id: str
    control_period_s: float
    devices: Mapping[str, DeviceConfig]
    loops: Mapping[str, LoopConfig]


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    log_format: Literal["text", "json", "journal"] = "text"
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    site: str
    daemon: DaemonConfig
    racks: Mapping[str, RackConfig] = field(default_factory=dict)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError naming every problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return parse_config(raw, path)


def parse_config(raw: Mapping[str, Any], path: Path | None = None) -> Config:
    """Validate an already-parsed TOML document."""
    reader = _Reader(str(path) if path else "<config>")
    config = reader.config(raw, path)
    if reader.problems:
        raise ConfigError(reader.problems)
    assert config is not None
    return config


T = TypeVar("T")


class _Invalid(Exception):
    """One value is wrong; already recorded, skip the rest of this entry."""


class _Reader:
    """Walks the document, keeping the key path for messages and collecting problems."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []
        self._path: list[str] = []

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def at(self, key: str) -> Iterator[None]:
        self._path.append(key)
        try:
            yield
        finally:
            self._path.pop()

    def problem(self, message: str, key: str | None = None) -> None:
        keys = [*self._path, key] if key else self._path
        where = ".".join(keys) if keys else "(top level)"
        self.problems.append(f"{self.filename}: {where}: {message}")

    def table(self, value: object, known: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.problem(f"must be a table, not {_kind(value)}")
            raise _Invalid
        for key in sorted(set(value) - known):
            self.problem(f"unknown key (expected one of: {', '.join(sorted(known))})", key)
        return value

    def get(
        self,
        table: Mapping[str, Any],
        key: str,
        kind: Callable[[object], T | None],
        what: str,
        default: T | None = None,
    ) -> T:
        if key not in table:
            if default is None:
                self.problem("missing", key)
                raise _Invalid
            return default
        value = kind(table[key])
        if value is None:
            self.problem(f"must be {what}, not {_kind(table[key])} {table[key]!r}", key)
            raise _Invalid
        return value

    def number(
        self,
        table: Mapping[str, Any],
        key: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        positive: bool = False,
    ) -> float:
        value = self.get(table, key, _as_float, "a number", default)
        if positive and value <= 0:
            self.problem(f"must be greater than 0, not {value}", key)
            raise _Invalid
        if minimum is not None and value < minimum:
            self.problem(f"must be at least {minimum}, not {value}", key)
            raise _Invalid
        return value

    def integer(
        self, table: Mapping[str, Any], key: str, default: int | None, low: int, high: int
    ) -> int:
        value = self.get(table, key, _as_int, "a whole number", default)
        if not low <= value <= high:
            self.problem(f"must be from {low} to {high}, not {value}", key)
            raise _Invalid
        return value

    def string(self, table: Mapping[str, Any], key: str, default: str | None = None) -> str:
        return self.get(table, key, _as_str, "a string", default)

    def choice(
        self, table: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str | None
    ) -> str:
        value = self.string(table, key, default)
        if value not in choices:
            self.problem(f"must be one of {', '.join(choices)}, not {value!r}", key)
            raise _Invalid
        return value

    def each(self, table: Mapping[str, Any], key: str) -> Iterator[tuple[str, Any]]:
        """Yield (id, entry) of a keyed sub-table, with the key path set, skipping bad entries."""
        entries = table.get(key, {})
        if not isinstance(entries, Mapping):
            self.problem(f"must be a table of named entries, not {_kind(entries)}", key)
            return
        with self.at(key):
            for entry_id, entry in entries.items():
                with self.at(entry_id):
                    if not _ID.match(entry_id):
                        self.problem("name must be letters, digits, '_', '.', '-' (at most 63)")
                        continue
                    yield entry_id, entry

    # -- the document -------------------------------------------------------------------------

    def config(self, raw: Mapping[str, Any], path: Path | None) -> Config | None:
        try:
            top = self.table(raw, {"site", "daemon", "racks"})
        except _Invalid:
            return None
        site = "site"
        try:
            with self.at("site"):
                site_table = self.table(top.get("site", {}), {"name"})
                site = self.string(site_table, "name", "site")
        except _Invalid:
            pass
        daemon = DaemonConfig()
        try:
            with self.at("daemon"):
                daemon = self.daemon(top.get("daemon", {}))
        except _Invalid:
            pass
        racks: dict[str, RackConfig] = {}
        for rack_id, entry in self.each(top, "racks"):
            rack = self.rack(rack_id, entry)
            if rack is not None:
                racks[rack_id] = rack
        if "racks" not in top:
            self.problem("no racks configured: add at least one [racks.<id>] table")
        return Config(path=path, site=site, daemon=daemon, racks=racks)

    def daemon(self, raw: object) -> DaemonConfig:
        table = self.table(raw, {"metrics_listen", "log_format", "log_level"})
        host, port = "127.0.0.1", DEFAULT_METRICS_PORT
        if "metrics_listen" in table:
            listen = self.string(table, "metrics_listen")
            try:
                host, port = parse_host_port(listen)
            except ValueError as exc:
                self.problem(str(exc), "metrics_listen")
        log_format = self.choice(table, "log_format", ("text", "json", "journal"), "text")
        log_level = self.choice(table, "log_level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")
        return DaemonConfig(host, port, log_format, log_level)  # type: ignore[arg-type]

    def rack(self, rack_id: str, raw: object) -> RackConfig | None:
        try:
            table = self.table(raw, {"control_period_s", "devices", "loops"})
            period = self.number(table, "control_period_s", 1.0, positive=True)
        except _Invalid:
            return None
        devices = {}
        for device_id, entry in self.each(table, "devices"):
            with suppress(_Invalid):
                devices[device_id] = self.device(device_id, entry)
        if not devices and "devices" not in table:
            self.problem("no devices: add at least one [racks.<rack>.devices.<id>] table")
        loops = {}
        for loop_id, entry in self.each(table, "loops"):
            with suppress(_Invalid):
                loops[loop_id] = self.loop(loop_id, entry, devices)
        self._check_one_loop_per_actuator(loops)
        return RackConfig(rack_id, period, devices, loops)

    def device(self, device_id: str, raw: object) -> DeviceConfig:
        table = self.table(
            raw,
            {
                "driver",
                "address",
                "port",
                "unit",
                "profile",
                "poll_interval_s",
                "timeout_s",
                "stale_after_s",
            },
        )
        driver = self.choice(table, "driver", DRIVERS, None)
        address = self.string(table, "address")
        port = self.integer(table, "port", 502, 1, 65535)
        unit = self.integer(table, "unit", 1, 0, 255)
        profile = self.string(table, "profile")
        poll = self.number(table, "poll_interval_s", 1.0, positive=True)
        timeout = self.number(table, "timeout_s", min(1.0, poll), positive=True)
        stale_after = self.number(table, "stale_after_s", 3 * poll, positive=True)
        if stale_after < poll:
            self.problem(
                f"must be at least poll_interval_s ({poll}), not {stale_after}", "stale_after_s"
            )
            raise _Invalid
        return DeviceConfig(
            device_id,
            driver,  # type: ignore[arg-type]
            address,
            port,
            unit,
            profile,
            poll,
            timeout,
            stale_after,
        )

    def loop(self, loop_id: str, raw: object, devices: Mapping[str, DeviceConfig]) -> LoopConfig:
        table = self.table(
            raw,
            {
                "measurement",
                "actuator",
                "setpoint",
                "action",
                "kp",
                "ki",
                "kd",
                "derivative_filter_s",
                "output_min",
                "output_max",
                "slew_per_s",
                "failsafe_output",
                "enabled",
            },
        )
        measurement = self.measurement(self.string(table, "measurement"), devices)
        actuator = self.ref(self.string(table, "actuator"), devices, "actuator")
        setpoint = self.number(table, "setpoint")
        action = self.choice(table, "action", ("reverse", "direct"), "reverse")
        kp = self.number(table, "kp", 0.0, minimum=0.0)
        ki = self.number(table, "ki", 0.0, minimum=0.0)
        kd = self.number(table, "kd", 0.0, minimum=0.0)
        derivative_filter_s = self.number(table, "derivative_filter_s", 1.0, positive=True)
        output_min = self.number(table, "output_min")
        output_max = self.number(table, "output_max")
        if output_min > output_max:
            self.problem(f"output_min {output_min} is above output_max {output_max}")
            raise _Invalid
        slew = table.get("slew_per_s")
        slew_per_s = self.number(table, "slew_per_s", positive=True) if slew is not None else None
        failsafe = self.number(table, "failsafe_output", output_max)
        if not output_min <= failsafe <= output_max:
            self.problem(
                f"must lie within output_min..output_max ({output_min}..{output_max}),"
                f" not {failsafe}",
                "failsafe_output",
            )
            raise _Invalid
        enabled = self.get(table, "enabled", _as_bool, "true or false", True)
        return LoopConfig(
            loop_id,
            measurement,
            actuator,
            setpoint,
            action,  # type: ignore[arg-type]
            kp,
            ki,
            kd,
            derivative_filter_s,
            output_min,
            output_max,
            slew_per_s,
            failsafe,
            enabled,
        )

    def measurement(self, text: str, devices: Mapping[str, DeviceConfig]) -> Measurement:
        parts = [part.strip() for part in text.split(" - ")]
        if len(parts) > 2:
            self.problem(f"{text!r}: only 'device/point' or 'device/point - device/point'")
            raise _Invalid
        refs = [self.ref(part, devices, "measurement") for part in parts]
        return Measurement(refs[0], refs[1] if len(refs) == 2 else None)

    def ref(self, text: str, devices: Mapping[str, DeviceConfig], key: str) -> DeviceRef:
        device, _, point = text.partition("/")
        if not device or not point or "/" in point:
            self.problem(f"{text!r} is not of the form device/point", key)
            raise _Invalid
        if device not in devices:
            known = ", ".join(sorted(devices)) or "none"
            self.problem(f"device {device!r} is not configured in this rack (known: {known})", key)
            raise _Invalid
        if point not in CANONICAL_POINTS:
            self.problem(f"{point!r} is not a canonical point name", key)
            raise _Invalid
        return DeviceRef(device, point)

    def _check_one_loop_per_actuator(self, loops: Mapping[str, LoopConfig]) -> None:
        owners: dict[DeviceRef, str] = {}
        for loop in loops.values():
            if loop.actuator in owners:
                with self.at("loops"), self.at(loop.id):
                    self.problem(
                        f"actuator {loop.actuator} is already driven"
                        f" by loop {owners[loop.actuator]!r}",
                        "actuator",
                    )
            owners[loop.actuator] = loop.id


def parse_host_port(text: str) -> tuple[str, int]:
    """'HOST:PORT' → (host, port); '[::1]:PORT' for IPv6."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port_text)


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _as_bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
