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

DRIVERS = ("modbus", "mqtt", "redfish")
REDFISH_KINDS = ("server", "cdu", "pdu")
_COMMON_DEVICE_KEYS = {"driver", "poll_interval_s", "stale_after_s"}
_DEVICE_KEYS = {
    "modbus": _COMMON_DEVICE_KEYS | {"address", "port", "unit", "profile", "timeout_s"},
    "mqtt": _COMMON_DEVICE_KEYS | {"profile", "topic_prefix"},
    "redfish": _COMMON_DEVICE_KEYS
    | {
        "kind",
        "url",
        "username",
        "password_file",
        "password_credential",
        "auth",
        "ca_file",
        "verify_tls",
        "timeout_s",
        "max_in_flight",
        "cap_min_w",
        "cap_max_w",
        "priority",
        "weight",
    },
}
LEAK_RESPONSES = ("stop", "safe_speed")
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
class RedfishDeviceConfig:
    """A Redfish service: a server's BMC (whose power cap the rack budget sets), a CDU or a PDU."""

    kind: Literal["server", "cdu", "pdu"]
    url: str
    username: str | None = None
    password_file: Path | None = None  # or a systemd credential, never the password itself
    password_credential: str | None = None
    auth: Literal["session", "basic", "none"] = "session"
    ca_file: Path | None = None
    verify_tls: bool = True
    max_in_flight: int = 2
    cap_min_w: float = 0.0  # servers: the range the rack's allocator may set the cap in
    cap_max_w: float = 0.0
    priority: int = 0  # servers: higher gets headroom first
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    driver: Literal["modbus", "mqtt", "redfish"]
    address: str  # Modbus: host; MQTT, Redfish: unused
    port: int
    unit: int
    profile: str  # Modbus, MQTT: the device profile; Redfish: "" (the schemas are the profile)
    poll_interval_s: float
    timeout_s: float
    stale_after_s: float
    topic_prefix: str = ""  # MQTT: fills {prefix} in the profile's topic templates
    redfish: RedfishDeviceConfig | None = None


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
    shutdown_output: float | None = None  # None: hand the actuator back to the device on stop
    # The range an operator's setpoint override must lie in; None: derived from the measured
    # point's range (coolctl.devices.setpoint_bounds)
    setpoint_min: float | None = None
    setpoint_max: float | None = None


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    """The supervisor's settings for one rack (see control/supervisor.py)."""

    failsafe_after_s: float = 3.0
    hold_s: float = 10.0
    leak_response: Literal["stop", "safe_speed"] = "stop"
    pump_safe_speed: float = 0.3
    standby_changeover_s: float = 2.0
    temperature_limits: Mapping[DeviceRef, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PowerConfig:
    """How the rack's budget is shared out as server caps (see control/powercap.py)."""

    margin_w: float = 0.0  # the caps' sum stays this far under the budget
    overhead_w: float = 0.0  # non-server load (pump, fans, PDU) when no PDU measures it
    release_rate_w_per_s: float | None = None  # how fast caps may rise again (falls: at once)
    # Per server: a cap whose share moves less than this is not rewritten, and this much per
    # server of the budget is kept back so that held caps still fit. 50 W rides out the tens
    # of watts of noise in a PDU's and the BMCs' readings (a released server's share follows
    # its own power reading: with 10 W of reading noise, 25 W still let about one cap in seven
    # through each step in the scale benchmark); 0 rewrites caps for every watt.
    cap_deadband_w: float = 50.0


@dataclass(frozen=True, slots=True)
class RackConfig:
    id: str
    control_period_s: float
    devices: Mapping[str, DeviceConfig]
    loops: Mapping[str, LoopConfig]
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    power_budget_w: float | None = None
    budget_point: DeviceRef | None = None  # an upstream coordinator's budget, e.g. over MQTT
    budget_min_w: float = 0.0  # budgets outside this range from upstream are rejected
    budget_max_w: float = 10e6
    power: PowerConfig = field(default_factory=PowerConfig)
    # "pid": the loops as configured; "mpc": the MPC drives pump and valve, the loops are its
    # fallback, and it may lower the caps' budget (coolctl.rack.mpc)
    controller: Literal["pid", "mpc"] = "pid"
    mpc_model: Path | None = None  # the MPC's model file (`coolctl identify --out`), as given


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    log_format: Literal["text", "json", "journal"] = "text"
    log_level: str = "INFO"
    state_directory: Path | None = None  # None: $STATE_DIRECTORY (systemd) or /var/lib/coolctl
    control_socket: Path | None = None  # None: $RUNTIME_DIRECTORY/control.sock or /run/coolctl/…
    control_socket_group: str | None = None
    control_listen: tuple[str, int] | None = None  # optional TCP listener (bearer token)
    control_token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The broker the daemon subscribes to sensors on and publishes its state and events to."""

    host: str
    port: int = 1883
    username: str | None = None
    password_file: Path | None = None  # or a systemd credential, never the password itself
    password_credential: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    topic_root: str = "coolctl/{site}"  # state: ROOT/RACK/state, events: ROOT/RACK/events


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    site: str
    daemon: DaemonConfig
    racks: Mapping[str, RackConfig] = field(default_factory=dict)
    mqtt: MqttConfig | None = None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from exc
    except ValueError as exc:  # a NUL in the path
        raise ConfigError([f"{path!r}: cannot read: {exc}"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    except ValueError as exc:  # tomllib's own limits, e.g. an integer of over 4300 digits
        raise ConfigError([f"{path}: not usable TOML: {exc}"]) from exc
    except RecursionError:
        raise ConfigError([f"{path}: not usable TOML: nested too deeply"]) from None
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
            self.problem(f"must be {what}, not {_kind(table[key])} {_shown(table[key])}", key)
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
        value = self.get(table, key, _as_str, "a string", default)
        if "\0" in value:
            self.problem(f"must not contain a NUL character: {_shown(value)}", key)
            raise _Invalid
        return value

    def topic_part(self, table: Mapping[str, Any], key: str, default: str) -> str:
        """A string that goes into MQTT topics: no wildcards, or the topics break."""
        value = self.string(table, key, default)
        if "+" in value or "#" in value:
            self.problem(
                f"goes into MQTT topics, so must not contain the wildcards + or #: {value!r}",
                key,
            )
            raise _Invalid
        return value

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
            top = self.table(raw, {"site", "daemon", "racks", "mqtt"})
        except _Invalid:
            return None
        site = "site"
        try:
            with self.at("site"):
                site_table = self.table(top.get("site", {}), {"name"})
                site = self.topic_part(site_table, "name", "site")
        except _Invalid:
            pass
        daemon = DaemonConfig()
        try:
            with self.at("daemon"):
                daemon = self.daemon(top.get("daemon", {}))
        except _Invalid:
            pass
        mqtt = None
        if "mqtt" in top:
            with self.at("mqtt"), suppress(_Invalid):
                mqtt = self.mqtt(top["mqtt"])
        racks: dict[str, RackConfig] = {}
        for rack_id, entry in self.each(top, "racks"):
            rack = self.rack(rack_id, entry)
            if rack is not None:
                racks[rack_id] = rack
        if "racks" not in top:
            self.problem("no racks configured: add at least one [racks.<id>] table")
        if mqtt is None and "mqtt" not in top:
            self._check_no_mqtt_needed(racks)
        return Config(path=path, site=site, daemon=daemon, racks=racks, mqtt=mqtt)

    def _check_no_mqtt_needed(self, racks: Mapping[str, RackConfig]) -> None:
        for rack in racks.values():
            users = [f"devices.{d.id}" for d in rack.devices.values() if d.driver == "mqtt"]
            for user in users:
                self.problem(f"{user} needs an [mqtt] table with the broker", f"racks.{rack.id}")

    def mqtt(self, raw: object) -> MqttConfig:
        table = self.table(
            raw,
            {
                "broker",
                "username",
                "password_file",
                "password_credential",
                "tls",
                "ca_file",
                "topic_root",
            },
        )
        try:
            host, port = parse_host_port(self.string(table, "broker"))
        except ValueError as exc:
            self.problem(str(exc), "broker")
            raise _Invalid from exc
        if port == 0:
            self.problem("the broker's port must be from 1 to 65535, not 0", "broker")
            raise _Invalid
        if "password" in table:
            self.problem("never put a password in the config: use password_file or a credential")
        password_file = self.path(table, "password_file")
        credential = table.get("password_credential")
        if credential is not None:
            credential = self.string(table, "password_credential")
        if password_file and credential:
            self.problem("give password_file or password_credential, not both")
        return MqttConfig(
            host=host,
            port=port,
            username=self.string(table, "username") if "username" in table else None,
            password_file=password_file,
            password_credential=credential,
            tls=self.get(table, "tls", _as_bool, "true or false", False),
            ca_file=self.path(table, "ca_file"),
            topic_root=self.topic_part(table, "topic_root", "coolctl/{site}"),
        )

    def path(self, table: Mapping[str, Any], key: str) -> Path | None:
        if key not in table:
            return None
        text = self.string(table, key)
        if not text.strip():
            self.problem("must not be empty (leave the key out for the default)", key)
            raise _Invalid
        return Path(text)

    def daemon(self, raw: object) -> DaemonConfig:
        table = self.table(
            raw,
            {
                "metrics_listen",
                "log_format",
                "log_level",
                "state_directory",
                "control_socket",
                "control_socket_group",
                "control_listen",
                "control_token_file",
            },
        )
        host, port = "127.0.0.1", DEFAULT_METRICS_PORT
        if "metrics_listen" in table:
            listen = self.string(table, "metrics_listen")
            try:
                host, port = parse_host_port(listen)
            except ValueError as exc:
                self.problem(str(exc), "metrics_listen")
        log_format = self.choice(table, "log_format", ("text", "json", "journal"), "text")
        log_level = self.choice(table, "log_level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")
        control_listen = None
        if "control_listen" in table:
            try:
                control_listen = parse_host_port(self.string(table, "control_listen"))
            except ValueError as exc:
                self.problem(str(exc), "control_listen")
        token_file = self.path(table, "control_token_file")
        if control_listen and token_file is None:
            self.problem("a TCP control listener needs control_token_file", "control_listen")
        group = table.get("control_socket_group")
        return DaemonConfig(
            host,
            port,
            log_format,  # type: ignore[arg-type]
            log_level,
            state_directory=self.path(table, "state_directory"),
            control_socket=self.path(table, "control_socket"),
            control_socket_group=self.string(table, "control_socket_group") if group else None,
            control_listen=control_listen,
            control_token_file=token_file,
        )

    def rack(self, rack_id: str, raw: object) -> RackConfig | None:
        try:
            table = self.table(
                raw,
                {
                    "control_period_s",
                    "devices",
                    "loops",
                    "safety",
                    "power_budget_w",
                    "budget_point",
                    "budget_min_w",
                    "budget_max_w",
                    "power",
                    "controller",
                    "mpc_model",
                },
            )
            period = self.number(table, "control_period_s", 1.0, positive=True)
            power_budget_w = (  # 0, false or "" is refused, never read as "no budget"
                self.number(table, "power_budget_w", positive=True)
                if "power_budget_w" in table
                else None
            )
            budget_min_w = self.number(table, "budget_min_w", 0.0, minimum=0.0)
            budget_max_w = self.number(table, "budget_max_w", 10e6, positive=True)
            controller = self.choice(table, "controller", ("pid", "mpc"), "pid")
            mpc_model = self.path(table, "mpc_model")
        except _Invalid:
            return None
        devices = {}
        for device_id, entry in self.each(table, "devices"):
            with suppress(_Invalid):
                devices[device_id] = self.device(device_id, entry)
        if not devices and "devices" not in table:
            self.problem("no devices: add at least one [racks.<rack>.devices.<id>] table")
        budget_point = None
        if "budget_point" in table:
            with suppress(_Invalid):
                budget_point = self.ref(self.string(table, "budget_point"), devices, "budget_point")
        loops = {}
        for loop_id, entry in self.each(table, "loops"):
            with suppress(_Invalid):
                loops[loop_id] = self.loop(loop_id, entry, devices)
        self._check_one_loop_per_actuator(loops)
        safety = SafetyConfig()
        if "safety" in table:
            with self.at("safety"), suppress(_Invalid):
                safety = self.safety(table["safety"], devices)
        power = PowerConfig()
        if "power" in table:
            with self.at("power"), suppress(_Invalid):
                power = self.power(table["power"])
        self._check_mpc(controller, mpc_model, loops)
        return RackConfig(
            rack_id,
            period,
            devices,
            loops,
            safety,
            power_budget_w,
            budget_point,
            budget_min_w,
            budget_max_w,
            power,
            controller,  # type: ignore[arg-type]
            mpc_model,
        )

    def _check_mpc(
        self, controller: str, mpc_model: Path | None, loops: Mapping[str, LoopConfig]
    ) -> None:
        """`controller = "mpc"` needs its model file and a pump loop (its PID fallback); a model
        with the PID controller is a mistake, not a spare. (Whether the file is a model that
        fits this rack is checked with the profiles: coolctl.devices.check_profiles.)"""
        if controller == "mpc" and mpc_model is None:
            self.problem(
                'controller = "mpc" needs mpc_model = "FILE" (write one with coolctl identify)',
                "mpc_model",
            )
        if controller != "mpc" and mpc_model is not None:
            self.problem('only used with controller = "mpc"', "mpc_model")
        if controller == "mpc" and not any(
            loop.actuator.point == "pump_speed_command" for loop in loops.values()
        ):
            self.problem(
                'controller = "mpc" needs a loop on a CDU\'s pump_speed_command:'
                " the PID loop the MPC falls back to",
                "controller",
            )

    def power(self, raw: object) -> PowerConfig:
        table = self.table(
            raw, {"margin_w", "overhead_w", "release_rate_w_per_s", "cap_deadband_w"}
        )
        rate = "release_rate_w_per_s" in table
        return PowerConfig(
            margin_w=self.number(table, "margin_w", 0.0, minimum=0.0),
            overhead_w=self.number(table, "overhead_w", 0.0, minimum=0.0),
            cap_deadband_w=self.number(table, "cap_deadband_w", 50.0, minimum=0.0),
            release_rate_w_per_s=(
                self.number(table, "release_rate_w_per_s", positive=True) if rate else None
            ),
        )

    def safety(self, raw: object, devices: Mapping[str, DeviceConfig]) -> SafetyConfig:
        table = self.table(
            raw,
            {
                "failsafe_after_s",
                "hold_s",
                "leak_response",
                "pump_safe_speed",
                "standby_changeover_s",
                "temperature_limits",
            },
        )
        limits: dict[DeviceRef, float] = {}
        raw_limits = table.get("temperature_limits", {})
        if not isinstance(raw_limits, Mapping):
            self.problem("must be a table of device/point = limit in °C", "temperature_limits")
            raise _Invalid
        with self.at("temperature_limits"):
            for text in raw_limits:
                with suppress(_Invalid):
                    limits[self.ref(text, devices, text)] = self.number(raw_limits, text)
        return SafetyConfig(
            failsafe_after_s=self.number(table, "failsafe_after_s", 3.0, positive=True),
            hold_s=self.number(table, "hold_s", 10.0, minimum=0.0),
            leak_response=self.choice(table, "leak_response", LEAK_RESPONSES, "stop"),  # type: ignore[arg-type]
            pump_safe_speed=self.number(table, "pump_safe_speed", 0.3, minimum=0.0),
            standby_changeover_s=self.number(table, "standby_changeover_s", 2.0, positive=True),
            temperature_limits=limits,
        )

    def device(self, device_id: str, raw: object) -> DeviceConfig:
        known = set().union(*_DEVICE_KEYS.values())
        driver = raw.get("driver") if isinstance(raw, Mapping) else None
        table = self.table(
            raw, _DEVICE_KEYS.get(driver, known) if isinstance(driver, str) else known
        )
        driver = self.choice(table, "driver", DRIVERS, None)
        if driver == "mqtt":
            return self.mqtt_device(device_id, table)
        if driver == "redfish":
            return self.redfish_device(device_id, table)
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

    def redfish_device(self, device_id: str, table: Mapping[str, Any]) -> DeviceConfig:
        kind = self.choice(table, "kind", REDFISH_KINDS, None)
        url = self.string(table, "url")
        if not url.startswith(("https://", "http://")):
            self.problem(f"must be an https:// (or http://) URL, not {url!r}", "url")
            raise _Invalid
        auth = self.choice(table, "auth", ("session", "basic", "none"), "session")
        password_file = self.path(table, "password_file")
        credential = (
            self.string(table, "password_credential") if "password_credential" in table else None
        )
        if "password" in table:
            self.problem("never put a password in the config: use password_file or a credential")
        if auth != "none" and "username" not in table:
            self.problem(f'auth {auth!r} needs a username (or auth = "none")', "username")
        poll = self.number(table, "poll_interval_s", 1.0, positive=True)
        cap_min = cap_max = 0.0
        if kind == "server":
            cap_min = self.number(table, "cap_min_w", minimum=0.0)
            cap_max = self.number(table, "cap_max_w", positive=True)
            if cap_min > cap_max:
                self.problem(f"cap_min_w {cap_min} is above cap_max_w {cap_max}")
                raise _Invalid
        redfish = RedfishDeviceConfig(
            kind=kind,  # type: ignore[arg-type]
            url=url,
            username=self.string(table, "username") if "username" in table else None,
            password_file=password_file,
            password_credential=credential,
            auth=auth,  # type: ignore[arg-type]
            ca_file=self.path(table, "ca_file"),
            verify_tls=self.get(table, "verify_tls", _as_bool, "true or false", True),
            max_in_flight=self.integer(table, "max_in_flight", 2, 1, 16),
            cap_min_w=cap_min,
            cap_max_w=cap_max,
            priority=self.integer(table, "priority", 0, -1000, 1000),
            weight=self.number(table, "weight", 1.0, positive=True),
        )
        return DeviceConfig(
            device_id,
            "redfish",
            "",
            0,
            0,
            "",
            poll,
            self.number(table, "timeout_s", 5.0, positive=True),
            self.number(table, "stale_after_s", 3 * poll, positive=True),
            redfish=redfish,
        )

    def mqtt_device(self, device_id: str, table: Mapping[str, Any]) -> DeviceConfig:
        """MQTT devices have no address of their own: messages come from the [mqtt] broker."""
        stale_after = self.number(table, "stale_after_s", 5.0, positive=True)
        # how often the latest messages are taken into the snapshot (reading memory, no I/O)
        poll = self.number(table, "poll_interval_s", 0.2, positive=True)
        return DeviceConfig(
            device_id,
            "mqtt",
            "",
            0,
            0,
            self.string(table, "profile"),
            poll,
            1.0,
            stale_after,
            self.topic_part(table, "topic_prefix", ""),
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
                "shutdown_output",
                "setpoint_min",
                "setpoint_max",
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
        shutdown = None
        if "shutdown_output" in table:
            shutdown = self.number(table, "shutdown_output")
        low = self.number(table, "setpoint_min") if "setpoint_min" in table else None
        high = self.number(table, "setpoint_max") if "setpoint_max" in table else None
        if (low is not None and setpoint < low) or (high is not None and setpoint > high):
            shown = f"{-math.inf if low is None else low:g}..{math.inf if high is None else high:g}"
            self.problem(
                f"must lie within setpoint_min..setpoint_max ({shown}), not {setpoint:g}",
                "setpoint",
            )
            raise _Invalid
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
            shutdown,
            setpoint_min=low,
            setpoint_max=high,
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
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) else None


def _shown(value: object, limit: int = 60) -> str:
    """A value from the config, fit for a message: its repr, cut short if long."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"of some {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


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
