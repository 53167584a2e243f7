"""Scenario files: what happens to a simulated rack, when, and how it is scored.

A scenario is a TOML file. It says how long to run, at which control period, with which seed,
what the plant is (overrides of `PlantParams`), which limits to score against, and a list of
events (load changes, facility-water swings, budget changes, faults) at given times. The
offline runner (`coolctl.tools.scenario_runner`) plays it against the daemon's control stack; this
module only parses it and applies its events to a `RackPlant`, so it imports nothing of coolctl
but the plant.

Format (every key but `duration_s` optional)::

    name = "load step up"            # default: the file name without .toml
    description = "30 % to 90 % on every server"
    duration_s = 3600.0              # simulated seconds, > 0
    period_s = 1.0                   # control period, default 1.0
    seed = 1                         # sensor noise; the same seed gives the same run
    warmup_s = 300.0                 # not scored: the controllers settle from the plant's
                                     # initial state (default 0)

    [plant]                          # any PlantParams field (simulators/plant.py)
    initial_load = 0.3
    facility_water_temperature_c = 30.0

    [limits]                         # what the KPIs score against
    max_supply_c = 45.0              # default 45 (ASHRAE W45)
    max_outlet_c = 60.0              # server coolant outlet, default 60
    supply_setpoint_c = 35.0         # reference for supply IAE; default: the rack's supply loop

    [budget]
    watts = 120000.0                 # the rack's power budget at the start

    [rack]                           # which rack config the runner controls
    config = "site.toml"             # relative to this file; default: the built-in demo rack
    id = "r01"                       # default: the config's only rack
    bmcs = true                      # built-in rack: a BMC per server even without a budget
                                     # (default: BMCs exactly when there is a [budget])
    cap_write_latency_s = [0.5, 2.0] # a cap write lands this long after it is sent: each BMC
                                     # its own latency, drawn once from the seed within the
                                     # range (one number: every BMC the same; default 0.5..2)
    room_sensor = true               # built-in rack: a room-air sensor (dew point) too

    [rack.loops.supply]              # built-in rack: keys of one of its loops replaced, as a
    kp = 0.1                         # site tunes a loop for its own sensor (any LoopConfig key;
                                     # checked as the rack config is)

    [[event]]
    at_s = 600.0                     # when, in simulated seconds from the start
    kind = "load"                    # see below
    value = 0.9                      # the one number the kind takes
    servers = [0, 1, 2]              # load only: some servers (numbered from 0); default all
    ramp_s = 60.0                    # load, facility_water: reach `value` linearly over this
    duration_s = 120.0               # undo the event after this long
    device = "cdu1"                  # sensor faults, link_loss (and pump/leak: the CDU)
    point = "supply_temperature"     # sensor faults
    rack = "r01"                     # must name the rack under control, if given

Event kinds and their `value`:

| kind | value | needs | undone by `duration_s` to |
|---|---|---|---|
| `load` | fraction of max, 0..1: demand = idle + value × (max − idle) | | each server's before |
| `facility_water` | facility water supply temperature, °C (0..60) | | the temperature before |
| `budget` | the rack's power budget, W (> 0) | | the budget before |
| `pump_fail` | — | | pump restored |
| `pump_degrade` | fraction of rated head, 0..1 | | head restored |
| `leak` | leak rate, L/min (> 0, default 2.0) | | leak stopped (coolant stays lost) |
| `sensor_stuck` | — | device, point | sensor released |
| `sensor_noise` | standard deviation, in the point's unit (≥ 0) | device, point | default noise |
| `sensor_drift` | drift, the point's unit per second | device, point | drift removed |
| `link_loss` | — | device | link back |

A leak detector that has failed dry is `sensor_stuck` on the CDU's `leak_detected` point before
the leak starts (a stuck sensor holds the value it had). `sensor_lag_s` in `[plant]` is a
table, point = seconds.

`link_loss` is not a plant fault: the device stops answering, so the daemon sees its points go
stale; the player only keeps the set of devices whose links are down (`links_down`) for the
runner. `budget` likewise only sets `budget_w`. Device names are the rack config's (`cdu1`,
`pdu1`, `bmc03`); the plant's own names (`cdu`, `pdu`, `server2`) are accepted for sensor faults.
Which names exist is known only once a rack is chosen: `check_devices` checks them.

Errors name the file and the line. tomllib reports no line numbers for values, so `_LineIndex`
scans the file text once: it follows table headers (`[plant]`, each `[[event]]`, counted in
order) and `key =` lines in each, skipping multi-line strings, and a problem with the k-th
event's `value` points at the `value =` line of the k-th `[[event]]` table (or at its header
when the key is missing). Events must therefore be written as `[[event]]` tables, not as an
inline array.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plant import PlantParams, RackPlant

__all__ = [
    "EVENT_KINDS",
    "Limits",
    "RackChoice",
    "Scenario",
    "ScenarioError",
    "ScenarioEvent",
    "ScenarioPlayer",
    "load_scenario",
    "parse_scenario",
]

EVENT_KINDS: tuple[str, ...] = (
    "load",
    "facility_water",
    "budget",
    "pump_fail",
    "pump_degrade",
    "leak",
    "sensor_stuck",
    "sensor_noise",
    "sensor_drift",
    "link_loss",
)
DEFAULT_LEAK_LPM = 2.0
_SENSOR_KINDS = frozenset({"sensor_stuck", "sensor_noise", "sensor_drift"})
_RAMPED_KINDS = frozenset({"load", "facility_water"})
_CDU_KINDS = frozenset({"pump_fail", "pump_degrade", "leak"})
_TOP_KEYS = frozenset(
    {
        "name",
        "description",
        "duration_s",
        "period_s",
        "seed",
        "warmup_s",
        "plant",
        "limits",
        "budget",
        "rack",
        "event",
    }
)
_EVENT_KEYS = frozenset(
    {"at_s", "kind", "value", "rack", "device", "point", "servers", "duration_s", "ramp_s"}
)
_LIMIT_KEYS = frozenset({"max_supply_c", "max_outlet_c", "supply_setpoint_c"})
_EPS_S = 1e-9
DEFAULT_CAP_WRITE_LATENCY_S = (0.5, 2.0)
"""Seconds from a cap write to the BMC enforcing it, low..high over the rack's BMCs."""


class ScenarioError(ValueError):
    """A scenario that cannot be run; `problems` holds one `file:line: message` per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class ScenarioEvent:
    """One `[[event]]` entry, checked. `line` is its `[[event]]` header's line in the file."""

    at_s: float
    kind: str
    line: int
    value: float | None = None
    rack: str | None = None
    device: str | None = None
    point: str | None = None
    servers: tuple[int, ...] | None = None
    duration_s: float | None = None
    ramp_s: float | None = None

    @property
    def label(self) -> str:
        """A few words for a plot marker or a log line."""
        kind, v = self.kind, self.value
        where = f"{self.device}/{self.point}" if self.point else (self.device or "")
        if kind == "load":
            text = f"load {v * 100:.0f} %" if v is not None else "load"
            if self.servers is not None:
                text += f" on {len(self.servers)} servers"
        elif kind == "facility_water":
            text = f"facility water {v:g} °C"
        elif kind == "budget":
            text = f"budget {v / 1000:g} kW" if v is not None else "budget"
        elif kind == "pump_fail":
            text = "pump fails"
        elif kind == "pump_degrade":
            text = f"pump head {v * 100:.0f} %" if v is not None else "pump degraded"
        elif kind == "leak":
            text = f"leak {v:g} L/min"
        elif kind == "sensor_stuck":
            text = f"{where} stuck"
        elif kind == "sensor_noise":
            text = f"{where} noise σ {v:g}"
        elif kind == "sensor_drift":
            text = f"{where} drift {v:g}/s"
        else:
            text = f"{where} link lost"
        if self.ramp_s:
            text += f" over {_duration(self.ramp_s)}"
        if self.duration_s is not None:
            text += f" for {_duration(self.duration_s)}"
        return text


@dataclass(frozen=True, slots=True)
class Limits:
    """Temperatures the KPIs score against (never what a controller is told)."""

    max_supply_c: float = 45.0
    max_outlet_c: float = 60.0
    supply_setpoint_c: float | None = None  # None: the rack's supply-temperature loop's


@dataclass(frozen=True, slots=True)
class RackChoice:
    """Which rack config to control: None for the built-in demo rack.

    `bmcs` gives the demo rack its servers' BMCs even without a budget (the allocator then
    holds every cap at its maximum): a controller sees the servers' power, chip and outlet
    temperatures. None: BMCs exactly when the scenario has a `[budget]`.

    `cap_write_latency_s` (low, high): a BMC applies a power-cap write this long after it was
    sent (a Redfish PATCH and the BMC's own firmware take 0.5-2 s on real servers); each BMC
    has its own latency, drawn once from the seed, so a rack's caps land spread over time.

    `room_sensor` gives the built-in rack an MQTT room-air sensor (`room1`, profile
    `sim-room-sensor`: temperature, humidity, dew point), which the supply floor reads.

    `loops` replaces keys of the built-in rack's loops (loop name -> key -> value, as the rack
    config writes them): a plant whose sensor or valve differs from the demo's is run with
    the loop tuned for it, as a site commissions its own. Checked when the rack is built.
    """

    config: Path | None = None
    id: str | None = None
    bmcs: bool | None = None
    cap_write_latency_s: tuple[float, float] = DEFAULT_CAP_WRITE_LATENCY_S
    room_sensor: bool = False
    loops: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # the file's line of each `[rack.loops.NAME]` table (NAME, "") and of its keys (NAME, key),
    # for the errors the rack config finds in them when the rack is built
    loop_lines: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def loop_line(self, loop: str, key: str = "") -> int:
        """The line of a loop's key, else of its table, else 1."""
        return self.loop_lines.get((loop, key)) or self.loop_lines.get((loop, ""), 1)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario file; see the module docstring for what each field means."""

    name: str
    duration_s: float
    period_s: float
    seed: int
    plant: PlantParams
    path: Path | None = None
    description: str = ""
    warmup_s: float = 0.0
    plant_overrides: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    budget_w: float | None = None
    rack: RackChoice = field(default_factory=RackChoice)
    events: tuple[ScenarioEvent, ...] = ()

    @property
    def ticks(self) -> int:
        """Control periods in the run."""
        return max(1, round(self.duration_s / self.period_s))

    def where(self, line: int) -> str:
        """`file:line` for messages about this scenario."""
        return f"{self.path or '<scenario>'}:{line}"

    def check_devices(
        self,
        rack_id: str,
        sensor_devices: Mapping[str, str],
        link_devices: Collection[str],
        cdu_devices: Collection[str],
        plant_points: Mapping[str, Collection[str]] | None = None,
    ) -> list[str]:
        """Problems with the events' rack and device names, once the rack is known.

        `sensor_devices` maps the names sensor faults may use to the plant's device names;
        `link_devices` are the devices whose link can be lost; `cdu_devices` the CDU's names;
        `plant_points`, if given, what each plant device reports (to check sensor faults'
        points).
        """
        problems = []
        for event in self.events:
            at = self.where(event.line)
            if event.rack is not None and event.rack != rack_id:
                problems.append(f"{at}: rack {event.rack!r} is not the rack under control")
            device = event.device
            if device is None:
                continue
            if event.kind in _SENSOR_KINDS:
                plant_device = sensor_devices.get(device, device)
                if plant_device not in _plant_devices(self.plant):
                    known = ", ".join(sorted(sensor_devices)) or "none"
                    problems.append(
                        f"{at}: {event.kind}: no device {device!r} with simulated sensors"
                        f" (the rack has: {known}; or the plant's cdu, pdu, server<i>)"
                    )
                elif plant_points is not None and event.point not in plant_points.get(
                    plant_device, ()
                ):
                    offered = ", ".join(plant_points.get(plant_device, ()))
                    problems.append(
                        f"{at}: {event.kind}: {device} has no point {event.point!r}"
                        f" (it has: {offered})"
                    )
            elif event.kind == "link_loss":
                if device not in link_devices:
                    known = ", ".join(sorted(link_devices)) or "none"
                    problems.append(
                        f"{at}: link_loss: no device {device!r} in the rack (it has: {known})"
                    )
            elif event.kind in _CDU_KINDS and device not in cdu_devices and device != "cdu":
                problems.append(f"{at}: {event.kind}: {device!r} is not the rack's CDU")
        return problems


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; raise ScenarioError naming every problem and its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError([f"{path}: not UTF-8 text: {exc.reason}"]) from exc
    return parse_scenario(text, path)


def parse_scenario(text: str, path: Path | None = None) -> Scenario:
    """Check a scenario's TOML text; `path` names it in messages and anchors `[rack] config`."""
    where = str(path) if path is not None else "<scenario>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"{where}: not valid TOML: {exc}"]) from exc
    reader = _Reader(where, _LineIndex(text))
    scenario = reader.scenario(raw, path)
    if reader.problems or scenario is None:
        raise ScenarioError(reader.problems or [f"{where}: not a scenario"])
    return scenario


# ------------------------------------------------------------------------------ line numbers


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.|=)""")


class _LineIndex:
    """Where tables and keys are in the file text, by a scan of its lines (1-based).

    Sections are named by their header (`plant`, `limits`); the k-th `[[event]]` is
    ("event", k); the part before any header is ("", 0).
    """

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple[str, int], int] = {("", 0): 1}
        self.keys: dict[tuple[str, int], dict[str, int]] = {("", 0): {}}
        counts: dict[str, int] = {}
        section: tuple[str, int] = ("", 0)
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header is not None:
                name = header.group(2).strip().strip("\"'")
                index = 0
                if header.group(1) == "[[":
                    index = counts.get(name, 0)
                    counts[name] = index + 1
                section = (name, index)
                self.headers[section] = number
                self.keys.setdefault(section, {})
                continue
            key = _KEY.match(line)
            if key is not None:
                self.keys[section].setdefault(key.group(1).strip("\"'"), number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_string = quote
                    break
        self.event_tables = counts.get("event", 0)

    def line(self, section: tuple[str, int], key: str | None = None) -> int:
        """The line of `key` in `section`, else of the section's header, else 1."""
        if key is not None:
            found = self.keys.get(section, {}).get(key)
            if found is not None:
                return found
        return self.headers.get(section, 1)


# ------------------------------------------------------------------------------ the reader


class _Invalid(Exception):
    """One value is wrong; already recorded."""


class _Reader:
    """Walks the parsed document, collecting every problem with its line."""

    def __init__(self, where: str, lines: _LineIndex) -> None:
        self.where = where
        self.lines = lines
        self.problems: list[str] = []

    def problem(self, section: tuple[str, int], key: str | None, message: str) -> None:
        line = self.lines.line(section, key)
        self.problems.append(f"{self.where}:{line}: {message}")

    def number(
        self,
        table: Mapping[str, Any],
        section: tuple[str, int],
        key: str,
        default: float | None = None,
        *,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
        what: str = "",
    ) -> float:
        if key not in table:
            if default is None:
                self.problem(section, None, f"{_prefix(section)}{key} is missing")
                raise _Invalid
            return default
        value = table[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.problem(section, key, f"{_prefix(section)}{key} must be a number, not {value!r}")
            raise _Invalid
        value = float(value)
        if value < low or value > high or (low_open and value <= low):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            if high < math.inf:
                bound = f"within {low:g}..{high:g}" + (" (exclusive of 0)" if low_open else "")
            self.problem(
                section, key, f"{_prefix(section)}{key} must be {bound}{what}, not {value:g}"
            )
            raise _Invalid
        return value

    def string(self, table: Mapping[str, Any], section: tuple[str, int], key: str) -> str | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, str) or not value:
            self.problem(section, key, f"{_prefix(section)}{key} must be a non-empty string")
            raise _Invalid
        return value

    def table(self, raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, Mapping):
            self.problem(("", 0), name, f"{name} must be a table ([{name}])")
            raise _Invalid
        return value

    def unknown(
        self, table: Mapping[str, Any], section: tuple[str, int], known: Collection[str]
    ) -> None:
        for key in table:
            if key not in known:
                self.problem(
                    section,
                    key,
                    f"{_prefix(section)}unknown key {key!r} (known: {', '.join(sorted(known))})",
                )

    # -- the document ------------------------------------------------------------------------

    def scenario(self, raw: Mapping[str, Any], path: Path | None) -> Scenario | None:
        top = ("", 0)
        self.unknown(raw, top, _TOP_KEYS)
        duration = period = warmup = None
        seed = 0
        with contextlib.suppress(_Invalid):
            duration = self.number(raw, top, "duration_s", low=0.0, low_open=True)
        try:
            period = self.number(raw, top, "period_s", 1.0, low=0.0, low_open=True)
            if duration is not None and period > duration:
                self.problem(top, "period_s", f"period_s {period:g} exceeds duration_s")
        except _Invalid:
            pass
        try:
            warmup = self.number(raw, top, "warmup_s", 0.0, low=0.0)
            if duration is not None and warmup >= duration:
                self.problem(top, "warmup_s", "warmup_s must be shorter than duration_s")
        except _Invalid:
            pass
        if "seed" in raw:
            value = raw["seed"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self.problem(top, "seed", f"seed must be a whole number >= 0, not {value!r}")
            else:
                seed = value
        name = description = None
        try:
            name = self.string(raw, top, "name")
            description = self.string(raw, top, "description")
        except _Invalid:
            pass
        plant, overrides = self.plant(raw)
        limits = self.limits(raw)
        budget = self.budget(raw)
        rack = self.rack(raw, path)
        events = self.events(raw, plant, duration)
        if self.problems or duration is None or period is None or plant is None:
            return None
        return Scenario(
            name=name or (path.stem if path is not None else "scenario"),
            description=description or "",
            duration_s=duration,
            period_s=period,
            seed=seed,
            warmup_s=warmup or 0.0,
            plant=plant,
            plant_overrides=overrides,
            path=path,
            limits=limits,
            budget_w=budget,
            rack=rack,
            events=events,
        )

    def plant(self, raw: Mapping[str, Any]) -> tuple[PlantParams | None, Mapping[str, Any]]:
        try:
            table = self.table(raw, "plant")
        except _Invalid:
            return None, {}
        try:
            return PlantParams.from_dict(table), dict(table)
        except ValueError as exc:
            # PlantParams names the key in quotes: point at its line when there is one
            found = re.search(r"'([A-Za-z0-9_]+)'", str(exc))
            key = found.group(1) if found and found.group(1) in table else None
            self.problem(("plant", 0), key, f"plant: {exc}")
            return None, {}

    def limits(self, raw: Mapping[str, Any]) -> Limits:
        section = ("limits", 0)
        try:
            table = self.table(raw, "limits")
            self.unknown(table, section, _LIMIT_KEYS)
            setpoint = None
            if "supply_setpoint_c" in table:
                setpoint = self.number(table, section, "supply_setpoint_c", low=0.0, high=100.0)
            return Limits(
                max_supply_c=self.number(table, section, "max_supply_c", 45.0, low=0.0, high=100.0),
                max_outlet_c=self.number(table, section, "max_outlet_c", 60.0, low=0.0, high=100.0),
                supply_setpoint_c=setpoint,
            )
        except _Invalid:
            return Limits()

    def budget(self, raw: Mapping[str, Any]) -> float | None:
        if "budget" not in raw:
            return None
        section = ("budget", 0)
        try:
            table = self.table(raw, "budget")
            self.unknown(table, section, {"watts"})
            return self.number(table, section, "watts", low=0.0, low_open=True)
        except _Invalid:
            return None

    def rack(self, raw: Mapping[str, Any], path: Path | None) -> RackChoice:
        section = ("rack", 0)
        try:
            table = self.table(raw, "rack")
            known = {"config", "id", "bmcs", "cap_write_latency_s", "room_sensor", "loops"}
            self.unknown(table, section, known)
            config = self.string(table, section, "config")
            rack_id = self.string(table, section, "id")
            bmcs = table.get("bmcs")
            if bmcs is not None and not isinstance(bmcs, bool):
                self.problem(section, "bmcs", "rack: bmcs must be true or false")
                raise _Invalid
            if bmcs is not None and config is not None:
                self.problem(section, "bmcs", "rack: bmcs is for the built-in rack, not a config")
                raise _Invalid
            latency = self.latency(table, section)
            room = table.get("room_sensor", False)
            if not isinstance(room, bool):
                self.problem(section, "room_sensor", "rack: room_sensor must be true or false")
                raise _Invalid
            if room and config is not None:
                self.problem(section, "room_sensor", "rack: room_sensor is for the built-in rack")
                raise _Invalid
            loops = self.loops(table, section, config)
        except _Invalid:
            return RackChoice()
        loop_lines: dict[tuple[str, str], int] = {}
        for name, keys in loops.items():
            loop_section = (f"rack.loops.{name}", 0)
            loop_lines[(name, "")] = self.lines.line(loop_section)
            loop_lines.update({(name, key): self.lines.line(loop_section, key) for key in keys})
        config_path = None
        if config is not None:
            config_path = Path(config)
            if not config_path.is_absolute() and path is not None:
                config_path = path.parent / config_path
        return RackChoice(config_path, rack_id, bmcs, latency, room, loops, loop_lines)

    def loops(
        self, table: Mapping[str, Any], section: tuple[str, int], config: str | None
    ) -> dict[str, dict[str, Any]]:
        """`[rack.loops.NAME]` tables: their keys are checked when the rack is built."""
        loops = table.get("loops", {})
        if not isinstance(loops, Mapping) or not all(
            isinstance(keys, Mapping) for keys in loops.values()
        ):
            self.problem(section, "loops", "rack: write each loop's keys as [rack.loops.NAME]")
            raise _Invalid
        if loops and config is not None:
            self.problem(section, "loops", "rack: loops is for the built-in rack, not a config")
            raise _Invalid
        return {str(name): dict(keys) for name, keys in loops.items()}

    def latency(self, table: Mapping[str, Any], section: tuple[str, int]) -> tuple[float, float]:
        key = "cap_write_latency_s"
        value = table.get(key, DEFAULT_CAP_WRITE_LATENCY_S)
        values = list(value) if isinstance(value, list | tuple) else [value]
        if len(values) not in (1, 2):
            self.problem(section, key, f"rack: {key} must be a number or [low, high]")
            raise _Invalid
        pair = [self.number({key: v}, section, key, low=0.0, high=60.0, what=" s") for v in values]
        low, high = pair[0], pair[-1]
        if high < low:
            self.problem(section, key, f"rack: {key} must be [low, high] with low <= high")
            raise _Invalid
        return (low, high)

    def events(
        self, raw: Mapping[str, Any], plant: PlantParams | None, duration: float | None
    ) -> tuple[ScenarioEvent, ...]:
        entries = raw.get("event", [])
        if not isinstance(entries, list) or (entries and len(entries) != self.lines.event_tables):
            self.problem(("", 0), "event", "write each event as its own [[event]] table")
            return ()
        events = []
        for index, entry in enumerate(entries):
            section = ("event", index)
            if not isinstance(entry, Mapping):
                self.problem(section, None, "event must be a table")
                continue
            try:
                events.append(self.event(entry, section, plant, duration))
            except _Invalid:
                continue
        return tuple(sorted(events, key=lambda e: e.at_s))

    def event(
        self,
        entry: Mapping[str, Any],
        section: tuple[str, int],
        plant: PlantParams | None,
        duration: float | None,
    ) -> ScenarioEvent:
        self.unknown(entry, section, _EVENT_KEYS)
        line = self.lines.line(section)
        kind = entry.get("kind")
        if kind is None:
            self.problem(section, None, "event: kind is missing")
            raise _Invalid
        if kind not in EVENT_KINDS:
            self.problem(
                section, "kind", f"event: unknown kind {kind!r} (known: {', '.join(EVENT_KINDS)})"
            )
            raise _Invalid
        at_s = self.number(entry, section, "at_s", low=0.0)
        if duration is not None and at_s > duration:
            self.problem(section, "at_s", f"event: at_s {at_s:g} is after the end ({duration:g} s)")
            raise _Invalid
        value = self.value(kind, entry, section)
        device = self.string(entry, section, "device")
        point = self.string(entry, section, "point")
        rack = self.string(entry, section, "rack")
        if kind in _SENSOR_KINDS and (device is None or point is None):
            self.problem(section, None, f"event: {kind} needs a device and a point")
            raise _Invalid
        if kind == "link_loss" and device is None:
            self.problem(section, None, "event: link_loss needs a device")
            raise _Invalid
        if point is not None and kind not in _SENSOR_KINDS:
            self.problem(section, "point", f"event: {kind} takes no point")
            raise _Invalid
        if device is not None and kind not in (_SENSOR_KINDS | _CDU_KINDS | {"link_loss"}):
            self.problem(section, "device", f"event: {kind} takes no device")
            raise _Invalid
        servers = self.servers(kind, entry, section, plant)
        duration_s = None
        if "duration_s" in entry:
            duration_s = self.number(entry, section, "duration_s", low=0.0, low_open=True)
        ramp_s = None
        if "ramp_s" in entry:
            if kind not in _RAMPED_KINDS:
                self.problem(section, "ramp_s", f"event: {kind} takes no ramp_s")
                raise _Invalid
            ramp_s = self.number(entry, section, "ramp_s", low=0.0)
        return ScenarioEvent(
            at_s=at_s,
            kind=kind,
            line=line,
            value=value,
            rack=rack,
            device=device,
            point=point,
            servers=servers,
            duration_s=duration_s,
            ramp_s=ramp_s,
        )

    def value(self, kind: str, entry: Mapping[str, Any], section: tuple[str, int]) -> float | None:
        """The one number the kind takes, checked against the kind's range."""
        number = self.number
        if kind in ("pump_fail", "sensor_stuck", "link_loss"):
            if "value" in entry:
                self.problem(section, "value", f"event: {kind} takes no value")
                raise _Invalid
            return None
        if kind in ("load", "pump_degrade"):
            return number(entry, section, "value", low=0.0, high=1.0, what=" (a fraction)")
        if kind == "facility_water":
            return number(entry, section, "value", low=0.0, high=60.0, what=" °C")
        if kind == "budget":
            return number(entry, section, "value", low=0.0, low_open=True, what=" W")
        if kind == "leak":
            return number(entry, section, "value", DEFAULT_LEAK_LPM, low=0.0, low_open=True)
        if kind == "sensor_noise":
            return number(entry, section, "value", low=0.0, what=" (a standard deviation)")
        return number(entry, section, "value")  # sensor_drift: any finite rate

    def servers(
        self,
        kind: str,
        entry: Mapping[str, Any],
        section: tuple[str, int],
        plant: PlantParams | None,
    ) -> tuple[int, ...] | None:
        if "servers" not in entry:
            return None
        if kind != "load":
            self.problem(section, "servers", f"event: {kind} takes no servers")
            raise _Invalid
        raw = entry["servers"]
        count = plant.n_servers if plant is not None else None
        if (
            not isinstance(raw, list)
            or not raw
            or any(isinstance(s, bool) or not isinstance(s, int) for s in raw)
            or any(s < 0 or (count is not None and s >= count) for s in raw)
        ):
            span = f"0..{count - 1}" if count is not None else "from 0"
            self.problem(
                section,
                "servers",
                f"event: servers must list server numbers {span}, not {raw!r}",
            )
            raise _Invalid
        return tuple(sorted(set(raw)))


def _prefix(section: tuple[str, int]) -> str:
    name = section[0]
    if name == "event":
        return "event: "
    return f"{name}: " if name else ""


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 360 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _plant_devices(params: PlantParams) -> set[str]:
    return {"cdu", "pdu", *(f"server{i}" for i in range(params.n_servers))}


# ------------------------------------------------------------------------------ playing it


@dataclass(slots=True)
class _Ramp:
    """A load or facility-water change spread over time: linear from `start` to `target`.

    A load ramp holds each of its servers' starting load (`servers` and `start` in step);
    a facility-water ramp has no servers and one starting temperature.
    """

    kind: str
    begin_s: float
    end_s: float
    servers: tuple[int, ...]
    start: tuple[float, ...]
    target: float


@dataclass(order=True, slots=True)
class _Action:
    at_s: float
    seq: int
    run: Callable[[], None] = field(compare=False)


class ScenarioPlayer:
    """Applies a scenario's events to one plant as simulated time passes.

    The runner calls `apply(t)` at every time it stops the plant (each control tick and each
    `next_time()`), so events take effect at their own time, not at the next tick. Ramps are
    updated at those times, so a ramp is a staircase with one step per control period.

    `sensor_devices` maps the scenario's device names to the plant's (`cdu1` → `cdu`,
    `bmc03` → `server2`); the plant's own names always work.
    """

    def __init__(
        self,
        scenario: Scenario,
        plant: RackPlant,
        sensor_devices: Mapping[str, str] | None = None,
    ) -> None:
        self.scenario = scenario
        self.plant = plant
        self.budget_w: float | None = scenario.budget_w
        self._sensor_devices = dict(sensor_devices or {})
        self._links: dict[str, int] = {}  # device -> how many link_loss events hold it down
        self._down: frozenset[str] = frozenset()
        self._ramps: list[_Ramp] = []
        self._agenda: list[_Action] = []  # a heap: the next action first
        self._seq = 0
        self.applied: list[tuple[float, ScenarioEvent]] = []  # what happened, for plots and logs
        for event in scenario.events:
            self._schedule(event.at_s, self._starter(event))

    @property
    def links_down(self) -> frozenset[str]:
        """Devices that do not answer now."""
        return self._down

    def next_time(self) -> float:
        """When the next event starts or ends; infinity when nothing is left."""
        return self._agenda[0].at_s if self._agenda else math.inf

    def apply(self, now_s: float) -> None:
        """Run every event start and undo due by `now_s`, then bring ramps up to `now_s`."""
        agenda = self._agenda
        while agenda and agenda[0].at_s <= now_s + _EPS_S:
            action = heapq.heappop(agenda)
            self._update_ramps(action.at_s)  # an undo restores the load as of its own time
            action.run()
        self._update_ramps(now_s)

    # -- scheduling ------------------------------------------------------------------------

    def _schedule(self, at_s: float, run: Callable[[], None]) -> None:
        heapq.heappush(self._agenda, _Action(at_s, self._seq, run))
        self._seq += 1

    def _starter(self, event: ScenarioEvent) -> Callable[[], None]:
        def start() -> None:
            undo = self._start(event)
            self.applied.append((event.at_s, event))
            if event.duration_s is not None:
                self._schedule(event.at_s + event.duration_s, undo)

        return start

    def _start(self, event: ScenarioEvent) -> Callable[[], None]:
        """Apply one event now; return what undoes it."""
        plant = self.plant
        kind, value = event.kind, event.value
        if kind == "load":
            assert value is not None
            return self._load(event, value)
        if kind == "facility_water":
            assert value is not None
            return self._facility_water(event, value)
        if kind == "budget":
            before = self.budget_w
            self.budget_w = value

            def restore_budget() -> None:
                self.budget_w = before

            return restore_budget
        if kind == "pump_fail":
            plant.fail_pump()
            return plant.restore_pump
        if kind == "pump_degrade":
            assert value is not None
            plant.degrade_pump(value)
            return lambda: plant.degrade_pump(1.0)
        if kind == "leak":
            plant.start_leak(value if value is not None else DEFAULT_LEAK_LPM)
            return plant.stop_leak
        if kind == "link_loss":
            assert event.device is not None
            return self._link_loss(event.device)
        return self._sensor_fault(event)

    # -- the events ------------------------------------------------------------------------

    def _load(self, event: ScenarioEvent, value: float) -> Callable[[], None]:
        plant = self.plant
        before = self._loads()
        servers = event.servers
        chosen = tuple(range(plant.n_servers)) if servers is None else servers
        self._cancel_ramps("load", chosen)
        if event.ramp_s:
            start = tuple(before[i] for i in chosen)
            end_s = event.at_s + event.ramp_s
            self._ramps.append(_Ramp("load", event.at_s, end_s, chosen, start, value))
        else:
            plant.set_load(value, servers)

        def undo() -> None:
            self._cancel_ramps("load", chosen)
            for server in chosen:
                plant.set_load(before[server], [server])

        return undo

    def _facility_water(self, event: ScenarioEvent, value: float) -> Callable[[], None]:
        plant = self.plant
        before = plant.truth().facility_supply_temperature_c
        self._cancel_ramps("facility_water", ())
        if event.ramp_s:
            end_s = event.at_s + event.ramp_s
            self._ramps.append(_Ramp("facility_water", event.at_s, end_s, (), (before,), value))
        else:
            plant.set_facility_water_temperature(value)

        def undo() -> None:
            self._cancel_ramps("facility_water", ())
            plant.set_facility_water_temperature(before)

        return undo

    def _link_loss(self, device: str) -> Callable[[], None]:
        self._links[device] = self._links.get(device, 0) + 1
        self._down = frozenset(name for name, count in self._links.items() if count > 0)

        def undo() -> None:
            self._links[device] = max(0, self._links.get(device, 0) - 1)
            self._down = frozenset(name for name, count in self._links.items() if count > 0)

        return undo

    def _sensor_fault(self, event: ScenarioEvent) -> Callable[[], None]:
        plant = self.plant
        assert event.device is not None and event.point is not None
        device = self._sensor_devices.get(event.device, event.device)
        point = event.point
        if event.kind == "sensor_stuck":
            plant.stick_sensor(device, point, True)
            return lambda: plant.stick_sensor(device, point, False)
        assert event.value is not None
        if event.kind == "sensor_noise":
            plant.set_sensor_noise(device, point, event.value)
            return lambda: plant.reset_sensor(device, point)
        plant.set_sensor_drift(device, point, event.value)
        return lambda: plant.set_sensor_drift(device, point, 0.0)

    # -- ramps -----------------------------------------------------------------------------

    def _loads(self) -> list[float]:
        p = self.plant.params
        span = p.server_max_w - p.server_idle_w
        if span <= 0.0:
            return [0.0] * p.n_servers
        return [(d - p.server_idle_w) / span for d in self.plant.truth().server_demand_w]

    def _cancel_ramps(self, kind: str, servers: tuple[int, ...]) -> None:
        """A new step or ramp of the same kind ends older ones where they stand: a facility
        ramp entirely, a load ramp for the servers the new event sets (a burst on a few servers
        leaves the rest of the rack on its curve)."""
        kept = []
        for ramp in self._ramps:
            if ramp.kind != kind:
                kept.append(ramp)
                continue
            if kind != "load":
                continue
            pairs = [
                (s, v) for s, v in zip(ramp.servers, ramp.start, strict=True) if s not in servers
            ]
            if pairs:
                ramp.servers = tuple(s for s, _ in pairs)
                ramp.start = tuple(v for _, v in pairs)
                kept.append(ramp)
        self._ramps = kept

    def _update_ramps(self, now_s: float) -> None:
        plant = self.plant
        finished = []
        for ramp in self._ramps:
            span = ramp.end_s - ramp.begin_s
            share = 1.0 if span <= 0.0 else min(1.0, max(0.0, (now_s - ramp.begin_s) / span))
            if ramp.kind == "facility_water":
                start = ramp.start[0]
                plant.set_facility_water_temperature(start + (ramp.target - start) * share)
            else:  # one call per group of servers that started alike (usually one group)
                groups: dict[float, list[int]] = {}
                for server, start in zip(ramp.servers, ramp.start, strict=True):
                    groups.setdefault(start, []).append(server)
                for start, members in groups.items():
                    plant.set_load(start + (ramp.target - start) * share, members)
            if share >= 1.0:
                finished.append(ramp)
        for ramp in finished:
            self._ramps.remove(ramp)
