"""Fault injection into a running simulated rack, by name, with optional automatic undo.

HIL tests, `coolctl demo` and operators rehearsing a runbook all need to break the rack while
the daemon watches: a leak, a pump that trips, a sensor that sticks, a device that drops off
the network. `apply_fault` is the one entry point for all of them, so that a fault injected
from a test, from the control server or from the CLI does exactly the same thing and is
recorded the same way: every undoable fault is kept in the simulation's `FaultBook` until it
is undone (by `duration_s`, by `clear`, or by its opposite such as `pump_restore`), so that
`GET /state` can say what is broken right now.

Devices are named as the simulation names them (`cdu1`, `pdu1`, `sensors1`); sensor faults also
accept the plant's own device names (`cdu`, `pdu`, `server3`) for sensors no simulated device
serves yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from coolctl.simulators.fault_book import ActiveFault, FaultBook, FaultKey

if TYPE_CHECKING:
    from coolctl.simulators.live import LiveSimulation, SensorPoints, SimDeviceSpec
    from coolctl.simulators.modbus_server import ModbusDeviceServer
    from coolctl.simulators.plant import RackPlant
    from coolctl.simulators.redfish_server import RedfishDeviceServer
    from coolctl.simulators.snmp_agent import SnmpPduAgent

__all__ = ["FAULT_KINDS", "ActiveFault", "FaultBook", "apply_fault"]

log = logging.getLogger("coolctl.simulators.faults")

FAULT_KINDS: tuple[str, ...] = (
    "leak",
    "pump_fail",
    "pump_restore",
    "pump_degrade",
    "sensor_stuck",
    "sensor_noise",
    "sensor_drift",
    "link_loss",
    "response_delay",
    "read_fail",
    "load",
    "facility_water",
    "cdu_local",
    "cdu_alarm",
    "psu_fail",
    "mains_loss",
    "clear",
)
_SENSOR_KINDS = frozenset({"sensor_stuck", "sensor_noise", "sensor_drift"})
_LINK_KINDS = frozenset({"link_loss", "response_delay", "read_fail"})
_NO_DURATION = frozenset({"pump_restore", "clear"})
DEFAULT_LEAK_LPM = 2.0


def _fmt(value: float) -> str:
    return f"{value:g}"


def _rack(simulation: LiveSimulation, rack: str | None) -> str:
    racks = list(simulation.plants)
    if rack is None:
        if len(racks) == 1:
            return racks[0]
        raise ValueError(f"rack is required: the simulation has racks {', '.join(racks)}")
    if rack not in simulation.plants:
        raise ValueError(f"no rack {rack!r}; the simulation has {', '.join(racks) or 'none'}")
    return rack


def _spec(simulation: LiveSimulation, rack: str, device: str) -> SimDeviceSpec | None:
    return next((d for d in simulation.specs[rack].devices if d.device == device), None)


def _cdu_device(simulation: LiveSimulation, rack: str) -> str | None:
    return next((d.device for d in simulation.specs[rack].devices if d.kind == "cdu"), None)


def _number(kind: str, value: float | None, what: str, *, default: float | None = None) -> float:
    if value is None:
        if default is None:
            raise ValueError(f"{kind} needs a value: {what}")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{kind}: value must be a finite number ({what}), got {value!r}")
    return float(value)


def _reject(kind: str, **given: object) -> None:
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{kind} takes no {name}")


def _check_duration(kind: str, duration_s: float | None) -> None:
    if duration_s is None:
        return
    if kind in _NO_DURATION:
        raise ValueError(f"{kind} cannot be undone, so it takes no duration_s")
    if (
        isinstance(duration_s, bool)
        or not isinstance(duration_s, int | float)
        or not (math.isfinite(duration_s) and duration_s > 0)
    ):
        raise ValueError(f"duration_s must be a number of seconds > 0, got {duration_s!r}")
    try:
        asyncio.get_running_loop()  # the undo timer needs one: fail before breaking anything
    except RuntimeError:
        raise ValueError("duration_s needs a running event loop to undo the fault") from None


def _plant_device(simulation: LiveSimulation, rack: str, device: str | None) -> str:
    """The CDU for rack-wide hydraulic faults: a leak or a pump belongs to it."""
    if device is None or device == "cdu":
        return _cdu_device(simulation, rack) or "cdu"
    spec = _spec(simulation, rack, device)
    if spec is None or spec.kind != "cdu":
        raise ValueError(f"{device!r} is not the CDU of rack {rack}; leaks and pumps belong to it")
    return device


# ---------------------------------------------------------------------------------- faults


def apply_fault(
    simulation: LiveSimulation,
    kind: str,
    *,
    rack: str | None = None,
    device: str | None = None,
    point: str | None = None,
    value: float | None = None,
    duration_s: float | None = None,
    servers: Sequence[int] | None = None,
) -> str:
    """Inject one fault into a running simulation; return what was done, in one line.

    Kinds and their arguments:

    - `leak` (value: L/min, default 2.0), `pump_fail`, `pump_restore` (also undoes
      `pump_degrade`), `pump_degrade` (value: head fraction 0..1): on the rack's CDU.
    - `sensor_stuck` (device, point), `sensor_noise` (device, point, value: sigma in the
      point's unit), `sensor_drift` (device, point, value: units per second of plant time).
    - `link_loss` (device: a Modbus device stops answering, an MQTT sensor device stops
      publishing), `response_delay` (Modbus device, value: seconds), `read_fail` (Modbus
      device, point: reads of it get a device-failure exception). A simulated SNMP PDU takes
      the same three: silence, late answers, noSuchInstance for every row of the point.
    - `load` (value: fraction of max, `servers` to pick some), `facility_water` (value: °C).
    - `cdu_local`: the CDU's panel takes control (remote writes refused); `cdu_alarm` (point:
      an alarm, e.g. filter_clogged_alarm): raised (latched until acknowledged once undone).
    - `psu_fail` (device: a PSU of the rack's Modbus power shelf stops delivering) and
      `mains_loss` (the shelf's BBUs discharge and carry the rack).
    - `clear`: undo everything on the rack: leak stopped and reservoir refilled, pump restored,
      every sensor reset, every link back, and any load or facility-water step taken back.

    `duration_s` undoes the fault after that many wall seconds (needs a running event loop).
    `rack` may be left out when the simulation has one rack; `device` defaults to the CDU.
    Raises ValueError, with a message fit for an operator, for anything it cannot do.
    """
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    rack = _rack(simulation, rack)
    _check_duration(kind, duration_s)
    if servers is not None and kind != "load":
        raise ValueError(f"{kind} takes no servers")
    if kind in _SENSOR_KINDS:
        return _sensor_fault(simulation, kind, rack, device, point, value, duration_s)
    if kind in _LINK_KINDS:
        return _link_fault(simulation, kind, rack, device, point, value, duration_s)
    if kind == "clear":
        _reject(kind, device=device, point=point, value=value)
        return _clear(simulation, rack)
    if kind in ("load", "facility_water"):
        _reject(kind, device=device, point=point)
        return _rack_event(simulation, kind, rack, value, duration_s, servers)
    if kind in ("cdu_local", "cdu_alarm"):
        _reject(kind, device=device, value=value)
        return _cdu_panel(simulation, kind, rack, point, duration_s)
    if kind in ("psu_fail", "mains_loss"):
        _reject(kind, point=point, value=value)
        return _shelf_fault(simulation, kind, rack, device, duration_s)
    _reject(kind, point=point)
    return _cdu_fault(simulation, kind, rack, device, value, duration_s)


def _cdu_panel(
    simulation: LiveSimulation,
    kind: str,
    rack: str,
    point: str | None,
    duration_s: float | None,
) -> str:
    """The CDU controller's own state: its panel's local/remote switch, or one of its alarms."""
    cdu = simulation.cdus[rack]
    undo: Callable[[], None]
    if kind == "cdu_local":
        _reject(kind, point=point)
        cdu.set_remote(False)
        text, undo = (
            f"{rack}: CDU switched to local at its panel",
            functools.partial(cdu.set_remote, True),
        )
    else:
        if point is None:
            raise ValueError("cdu_alarm needs --point, the alarm (e.g. filter_clogged_alarm)")
        cdu.force_alarm(point)  # ValueError names the known alarms
        text = f"{rack}: CDU alarm {point} raised"
        undo = functools.partial(cdu.force_alarm, point, False)
    fault = ActiveFault(kind, rack, None, point, None, text, simulation.plants[rack].time_s, undo)
    return _record(simulation, (rack, kind, None, point), fault, duration_s)


def _shelf_fault(
    simulation: LiveSimulation,
    kind: str,
    rack: str,
    device: str | None,
    duration_s: float | None,
) -> str:
    """A lost PSU or a mains loss on the rack's ORv3 power shelf served over Modbus."""
    shelf = simulation.modbus_shelves.get(rack)
    if shelf is None:
        raise ValueError(f"rack {rack} has no simulated Modbus power shelf (orv3-psu/orv3-bbu)")
    undo: Callable[[], None]
    if kind == "mains_loss":
        if device is not None:
            raise ValueError("mains_loss takes no device: it is the whole shelf's")
        shelf.lose_mains()
        text, undo = (
            f"{rack}: mains lost, the BBUs carry the shelf",
            functools.partial(shelf.lose_mains, False),
        )
    else:
        specs = simulation.specs[rack].devices
        psus = [spec.device for spec in specs if spec.shelf_role == "psu"]
        if device not in psus:
            raise ValueError(f"psu_fail needs the device of a PSU: one of {', '.join(psus)}")
        number = psus.index(device) + 1
        shelf.fail_psu(number)
        text, undo = (
            f"{rack}/{device}: PSU failed",
            functools.partial(shelf.fail_psu, number, False),
        )
    fault = ActiveFault(kind, rack, device, None, None, text, shelf.plant.time_s, undo)
    return _record(simulation, (rack, kind, device, None), fault, duration_s)


def _record(
    simulation: LiveSimulation,
    key: FaultKey,
    fault: ActiveFault,
    duration_s: float | None,
) -> str:
    """Keep the fault in the book (with its undo timer); return its description."""
    simulation.faults.record(key, fault, duration_s)
    log.info("fault: %s", fault.description)
    suffix = f" for {_fmt(duration_s)} s" if duration_s is not None else ""
    return fault.description + suffix


def _cdu_fault(
    simulation: LiveSimulation,
    kind: str,
    rack: str,
    device: str | None,
    value: float | None,
    duration_s: float | None,
) -> str:
    """Leak and pump faults: the plant has one loop per rack, and the CDU owns it."""
    plant = simulation.plants[rack]
    target = _plant_device(simulation, rack, device)
    shown: float | None = None
    undo: Callable[[], None]
    if kind == "leak":
        shown = _number(kind, value, "litres per minute", default=DEFAULT_LEAK_LPM)
        if shown <= 0:
            raise ValueError(f"leak rate must be > 0 L/min, got {shown:g}")
        plant.start_leak(shown)
        text, undo = f"{rack}: leak of {_fmt(shown)} L/min started", plant.stop_leak
    elif kind == "pump_fail":
        _reject(kind, value=value)
        plant.fail_pump()
        text, undo = f"{rack}/{target}: pump failed", plant.restore_pump
    elif kind == "pump_degrade":
        shown = _number(kind, value, "fraction of rated head, 0..1")
        if not 0.0 <= shown <= 1.0:
            raise ValueError(f"pump head fraction must be within 0..1, got {shown:g}")
        plant.degrade_pump(shown)
        text = f"{rack}/{target}: pump degraded to {shown * 100:.0f} % of rated head"
        undo = functools.partial(plant.degrade_pump, 1.0)
    else:  # pump_restore: repairs whatever is wrong with the pumps
        _reject(kind, value=value)
        simulation.faults.resolve((rack, "pump_fail", None, None), undo=False)
        simulation.faults.resolve((rack, "pump_degrade", None, None), undo=False)
        plant.restore_pump()
        plant.degrade_pump(1.0)
        log.info("fault: %s/%s pump restored", rack, target)
        return f"{rack}/{target}: pump restored"
    fault = ActiveFault(kind, rack, target, None, shown, text, plant.time_s, undo)
    return _record(simulation, (rack, kind, None, None), fault, duration_s)


def _rack_event(
    simulation: LiveSimulation,
    kind: str,
    rack: str,
    value: float | None,
    duration_s: float | None,
    servers: Sequence[int] | None,
) -> str:
    """A load step or a facility-water step: not a fault, but what the daemon must ride out."""
    plant = simulation.plants[rack]
    undo: Callable[[], None]
    if kind == "load":
        shown = _number(kind, value, "fraction of max power, 0..1")
        if not 0.0 <= shown <= 1.0:
            raise ValueError(f"load must be within 0..1, got {shown:g}")
        text, undo = _load(plant, rack, shown, servers)
    else:
        shown = _number(kind, value, "facility water supply temperature in °C")
        if not 0.0 <= shown <= 60.0:
            raise ValueError(f"facility water must be within 0..60 °C, got {shown:g}")
        before = plant.truth().facility_supply_temperature_c
        plant.set_facility_water_temperature(shown)
        text = f"{rack}: facility water at {_fmt(shown)} °C (was {before:.1f})"
        undo = functools.partial(plant.set_facility_water_temperature, before)
    fault = ActiveFault(kind, rack, None, None, shown, text, plant.time_s, undo)
    return _record(simulation, (rack, kind, None, None), fault, duration_s)


def _load(
    plant: RackPlant, rack: str, fraction: float, servers: Sequence[int] | None
) -> tuple[str, Callable[[], None]]:
    """Set the load; return the description and an undo that puts every server back."""
    params = plant.params
    span = params.server_max_w - params.server_idle_w
    before = [(d - params.server_idle_w) / span for d in plant.truth().server_demand_w]
    if servers is not None:
        if isinstance(servers, str | bytes) or not servers:
            raise ValueError("servers, when given, must list at least one server number")
        bad: list[object] = [
            s
            for s in servers
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < plant.n_servers
        ]
        if bad:
            raise ValueError(
                f"rack {rack} has servers 0..{plant.n_servers - 1}, not {', '.join(map(repr, bad))}"
            )
    plant.set_load(fraction, servers)

    def undo() -> None:
        for server, previous in enumerate(before):
            plant.set_load(previous, [server])

    where = "every server" if servers is None else "servers " + ", ".join(map(str, servers))
    return f"{rack}: load {fraction * 100:.0f} % on {where}", undo


class _PlantSensor:
    """One sensor of the plant's own sensor model (what the CDU, PDU and servers report)."""

    def __init__(self, plant: RackPlant, device: str, point: str) -> None:
        self._plant, self._device, self._point = plant, device, point

    def stick(self, stuck: bool) -> None:
        self._plant.stick_sensor(self._device, self._point, stuck)

    def set_noise(self, sigma: float) -> None:
        self._plant.set_sensor_noise(self._device, self._point, sigma)

    def set_drift(self, rate_per_s: float) -> None:
        self._plant.set_sensor_drift(self._device, self._point, rate_per_s)

    def reset(self) -> None:
        self._plant.reset_sensor(self._device, self._point)


class _DeviceSensor:
    """One sensor of the MQTT sensor device's own layer (inlet temperature, flow, leak)."""

    def __init__(self, source: SensorPoints, point: str) -> None:
        self._source, self._point = source, point

    def stick(self, stuck: bool) -> None:
        self._source.stick(self._point, stuck)

    def set_noise(self, sigma: float) -> None:
        self._source.set_noise(self._point, sigma)

    def set_drift(self, rate_per_s: float) -> None:
        self._source.set_drift(self._point, rate_per_s)

    def reset(self) -> None:
        self._source.reset(self._point)


def _sensor_fault(
    simulation: LiveSimulation,
    kind: str,
    rack: str,
    device: str | None,
    point: str | None,
    value: float | None,
    duration_s: float | None,
) -> str:
    """Stuck, noisy or drifting sensor on a simulated device, or on a plant device."""
    if point is None:
        raise ValueError(f"{kind} needs a point (e.g. supply_temperature)")
    plant = simulation.plants[rack]
    name = device or _cdu_device(simulation, rack) or "cdu"
    spec = _spec(simulation, rack, name)
    sensor: _PlantSensor | _DeviceSensor
    if spec is not None and spec.kind == "sensor":
        source = cast("SensorPoints", simulation.points[(rack, name)])
        point = source.point_name(point)
        sensor = _DeviceSensor(source, point)
    else:
        # a simulated CDU or PDU shows the plant's device of its kind; other names are the
        # plant's own (cdu, pdu, server3), which the plant checks
        sensor = _PlantSensor(plant, spec.kind if spec is not None else name, point)
    where = f"{rack}/{name}/{point}"
    shown: float | None = None
    undo: Callable[[], None]
    if kind == "sensor_stuck":
        _reject(kind, value=value)
        sensor.stick(True)
        text, undo = f"{where}: sensor stuck", functools.partial(sensor.stick, False)
    elif kind == "sensor_noise":
        shown = _number(kind, value, "noise sigma in the point's unit")
        if shown < 0:
            raise ValueError(f"noise sigma must be >= 0, got {shown:g}")
        sensor.set_noise(shown)
        text, undo = f"{where}: sensor noise sigma {_fmt(shown)}", sensor.reset
    else:
        shown = _number(kind, value, "drift in the point's unit per second")
        sensor.set_drift(shown)
        text = f"{where}: sensor drifting {_fmt(shown)}/s"
        undo = functools.partial(sensor.set_drift, 0.0)
    fault = ActiveFault(kind, rack, name, point, shown, text, plant.time_s, undo)
    return _record(simulation, (rack, kind, name, point), fault, duration_s)


def _link_fault(
    simulation: LiveSimulation,
    kind: str,
    rack: str,
    device: str | None,
    point: str | None,
    value: float | None,
    duration_s: float | None,
) -> str:
    """A device that drops off the network, answers slowly, or fails reads of one point."""
    name = device or _cdu_device(simulation, rack)
    if name is None:
        raise ValueError(f"{kind} needs a device: rack {rack} has no CDU to default to")
    key = (rack, name)
    server = simulation.servers.get(key) or simulation.redfish.get(key) or simulation.snmp.get(key)
    publisher = simulation.publishers.get(key)
    plant = simulation.plants[rack]
    shown: float | None = None
    undo: Callable[[], None]
    if server is None and publisher is None:
        every = (*simulation.servers, *simulation.redfish, *simulation.snmp, *simulation.publishers)
        known = ", ".join(d for r, d in every if r == rack)
        raise ValueError(f"rack {rack} has no simulated device {name!r}; it has {known}")
    if kind == "link_loss":
        _reject(kind, point=point, value=value)
        if server is not None:
            try:
                server.set_offline(True)
            except RuntimeError as exc:
                raise ValueError(f"{rack}/{name}: {exc}") from None
            text = f"{rack}/{name}: link lost (server offline)"
            undo = functools.partial(server.set_offline, False)
        else:
            assert publisher is not None
            publisher.set_paused(True)
            text = f"{rack}/{name}: link lost (MQTT publishing stopped)"
            undo = functools.partial(publisher.set_paused, False)
    elif server is None:
        raise ValueError(f"{kind} applies to servers; {rack}/{name} publishes MQTT")
    elif kind == "response_delay":
        _reject(kind, point=point)
        shown = _number(kind, value, "seconds")
        if shown < 0:
            raise ValueError(f"response delay must be >= 0 s, got {shown:g}")
        server.set_response_delay(shown)
        text = f"{rack}/{name}: replies delayed {_fmt(shown)} s"
        undo = functools.partial(server.set_response_delay, 0.0)
    else:  # read_fail
        _reject(kind, value=value)
        if point is None:
            raise ValueError("read_fail needs a point")
        server.fail_reads(point)
        text = f"{rack}/{name}/{point}: reads fail"
        undo = functools.partial(server.fail_reads, None)
    fault = ActiveFault(kind, rack, name, point, shown, text, plant.time_s, undo)
    return _record(simulation, (rack, kind, name, None), fault, duration_s)


def _clear(simulation: LiveSimulation, rack: str) -> str:
    """Undo every recorded fault, then put the rack right whatever injected what."""
    undone = simulation.faults.clear_rack(rack)
    plant = simulation.plants[rack]
    plant.stop_leak()
    plant.refill()
    plant.restore_pump()
    plant.degrade_pump(1.0)
    for device in ("cdu", "pdu", *(f"server{i}" for i in range(plant.n_servers))):
        for point in plant.readings(device):
            plant.reset_sensor(device, point)
    servers: list[
        tuple[tuple[str, str], ModbusDeviceServer | RedfishDeviceServer | SnmpPduAgent]
    ] = [
        *simulation.servers.items(),
        *simulation.redfish.items(),
        *simulation.snmp.items(),
    ]
    for (server_rack, _), server in servers:
        if server_rack != rack:
            continue
        with contextlib.suppress(RuntimeError):  # not serving (simulation stopped): nothing to do
            server.set_offline(False)
        server.set_response_delay(0.0)
        server.fail_reads(None)
    for (sensor_rack, name), publisher in simulation.publishers.items():
        if sensor_rack == rack:
            publisher.set_paused(False)
            cast("SensorPoints", simulation.points[(sensor_rack, name)]).reset()
    text = (
        f"{rack}: cleared {undone} active fault{'s' if undone != 1 else ''};"
        " leak stopped, reservoir refilled, pump restored, sensors reset, links up"
    )
    log.info("fault: %s", text)
    return text
