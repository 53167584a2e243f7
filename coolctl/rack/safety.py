"""Builds each rack's safety supervisor from the config and the devices' profiles.

What an actuator is (pump, valve, power cap) follows from its canonical point name; its hard
range from the device profile; its normal range, slew and failsafe from the loop that drives it;
the leak, pump and temperature points from what the rack's devices expose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from coolctl.config import (
    DeviceKind,
    LeakResponse,
    LoopConfig,
    MqttDeviceConfig,
    RackConfig,
    RedfishDeviceConfig,
)
from coolctl.control.supervisor import (
    ActuatorRole,
    ActuatorSafety,
    SupervisorConfig,
    TemperatureLimit,
)
from coolctl.model import PointId
from coolctl.rack.cdu_watch import with_alarm_stops
from coolctl.rack.facts import WritableSpec


class DeviceFacts(Protocol):
    """What the control stack needs to know of a device: no connection, just its profile's
    facts (a DeviceHandle has them; so does coolctl.devices.device_facts())."""

    @property
    def writable(self) -> Mapping[str, WritableSpec]: ...

    @property
    def point_names(self) -> tuple[str, ...]: ...

    @property
    def kind(self) -> str: ...


PUMP = "pump_speed_command"
ROLE_BY_POINT: Mapping[str, ActuatorRole] = {
    "pump_speed_command": ActuatorRole.PUMP,
    "valve_command": ActuatorRole.VALVE,
    "power_limit": ActuatorRole.POWER_LIMIT,
}


def supervisor_config(rack: RackConfig, devices: Mapping[str, DeviceFacts]) -> SupervisorConfig:
    """The supervisor's view of one rack."""
    actuators = tuple(
        loop_actuator(rack, loop, devices[loop.actuator.device].writable[loop.actuator.point])
        for loop in rack.loops.values()
    ) + tuple(cap_actuator(rack.id, device) for device in server_caps(rack))
    actuators += isolation_actuators(rack, devices)
    actuators += server_power_actuators(rack, devices)
    required = tuple(
        PointId(rack.id, ref.device, ref.point)
        for loop in rack.loops.values()
        if loop.enabled
        for ref in loop.measurement.refs
    )
    pump_device = next((a.point.device for a in actuators if a.role is ActuatorRole.PUMP), None)
    pump_points = devices[pump_device].point_names if pump_device else ()
    safety = rack.safety

    def pump_point(name: str) -> PointId | None:
        return PointId(rack.id, pump_device, name) if pump_device and name in pump_points else None

    power = rack_power_points(rack, devices)
    servers = server_caps(rack)
    caps_floor_w = sum(device.cap_min_w for device in servers)
    config = SupervisorConfig(
        rack=rack.id,
        actuators=actuators,
        leak_points=tuple(
            PointId(rack.id, device_id, "leak_detected")
            for device_id, handle in devices.items()
            if "leak_detected" in handle.point_names
        ),
        temperature_limits=temperature_limits(rack, devices),
        pump_running=(
            PointId(rack.id, pump_device, "pump_running")
            if pump_device and "pump_running" in pump_points
            else None
        ),
        standby_active=(
            PointId(rack.id, pump_device, "standby_pump_active")
            if pump_device and "standby_pump_active" in pump_points
            else None
        ),
        standby_changeover_s=safety.standby_changeover_s,
        required=required,
        failsafe_after_s=safety.failsafe_after_s,
        hold_s=safety.hold_s,
        leak_debounce_s=safety.leak_debounce_s,
        leak_votes=safety.leak_votes,
        leak_latched=safety.leak_latched,
        power=power,
        # the caps took hold: the rack draws no more than its caps' minimums, its non-server
        # load and a tenth of the minimums again for what the BMCs' capping lets through
        leak_caps_power_w=(
            1.1 * caps_floor_w + rack.power.overhead_w if servers and power else None
        ),
        leak_caps_timeout_s=safety.leak_caps_timeout_s,
        temperature_release_band_c=safety.temperature_release_band_c,
        over_temperature_hold_s=safety.over_temperature_hold_s,
        flow=pump_point("flow"),
        rated_flow_lpm=safety.rated_flow_lpm,
        min_flow_fraction=safety.min_flow_fraction,
        min_flow_lpm_per_kw=safety.min_flow_lpm_per_kw,
        flow_debounce_s=safety.flow_debounce_s,
        reservoir_level=pump_point("reservoir_level"),
        min_reservoir_level_l=safety.min_reservoir_level_l,
        leak_level_drop_l_per_min=safety.leak_level_drop_l_per_min,
        leak_level_window_s=safety.leak_level_window_s,
        silent_after_s=safety.silent_after_s,
        safety_sensors=safety_sensors(
            rack, devices, pump_point("flow"), pump_point("reservoir_level")
        ),
        healthy_points=(
            ()
            if safety.failsafe_hold_under_c is None
            else tuple(
                TemperatureLimit(point, safety.failsafe_hold_under_c)
                for point in server_points(rack, devices, "chip_temperature")
            )
        ),
        healthy_margin_c=0.0,
        failsafe_cap_band_c=safety.failsafe_cap_band_c,
        power_overhead_w=rack.power.overhead_w,
        supply=pump_point("supply_temperature"),
        facility_supply=pump_point("facility_supply_temperature"),
        dew_point=rack_point(rack, devices, "dew_point"),
        room_temperature=rack_point(rack, devices, "room_temperature"),
        room_humidity=rack_point(rack, devices, "room_humidity"),
        supply_floor_margin_c=safety.supply_floor_margin_c,
    )
    return with_alarm_stops(config, rack, devices)  # alarms that stop the CDU as a leak does


def rack_point(rack: RackConfig, devices: Mapping[str, DeviceFacts], name: str) -> PointId | None:
    """`name` on the first of the rack's devices that reports it (a room sensor, the CDU)."""
    device = next((d for d, facts in devices.items() if name in facts.point_names), None)
    return PointId(rack.id, device, name) if device is not None else None


def temperature_limits(
    rack: RackConfig, devices: Mapping[str, DeviceFacts]
) -> tuple[TemperatureLimit, ...]:
    """The configured limits, then the rack-wide ones for every server's chips and outlets
    and the pump CDU's return (`chip_limit_c`, `outlet_limit_c`, `return_limit_c`) where the
    config gives a point no limit of its own."""
    safety = rack.safety
    limits = [
        TemperatureLimit(PointId(rack.id, ref.device, ref.point), limit)
        for ref, limit in safety.temperature_limits.items()
    ]
    configured = {limit.point for limit in limits}
    wide: list[tuple[PointId, float | None]] = []
    for name, limit in (
        ("chip_temperature", safety.chip_limit_c),
        ("coolant_outlet_temperature", safety.outlet_limit_c),
    ):
        wide += [(point, limit) for point in server_points(rack, devices, name)]
    pump = next(
        (loop.actuator.device for loop in rack.loops.values() if loop.actuator.point == PUMP), None
    )
    if pump is not None and "return_temperature" in devices[pump].point_names:
        wide.append((PointId(rack.id, pump, "return_temperature"), safety.return_limit_c))
    limits += [
        TemperatureLimit(point, limit)
        for point, limit in wide
        if limit is not None and point not in configured
    ]
    return tuple(limits)


def safety_sensors(
    rack: RackConfig, devices: Mapping[str, DeviceFacts], *others: PointId | None
) -> tuple[PointId, ...]:
    """The safety sensors whose silence is an alarm: the leak detectors a profile declares
    (Modbus, MQTT: the device has them), and the pump CDU's flow and level. A Redfish
    service's detectors are what discovery finds, so one that lacks them is not silent."""
    leaks = [
        PointId(rack.id, device_id, "leak_detected")
        for device_id, facts in devices.items()
        if "leak_detected" in facts.point_names
        and not isinstance(rack.devices.get(device_id), RedfishDeviceConfig)
    ]
    return (*leaks, *(point for point in others if point is not None))


def server_points(
    rack: RackConfig, devices: Mapping[str, DeviceFacts], name: str
) -> tuple[PointId, ...]:
    """`name` on every server of the rack that reports it."""
    return tuple(
        PointId(rack.id, device.id, name)
        for device in server_caps(rack)
        if name in devices[device.id].point_names
    )


def rack_meters(rack: RackConfig, kinds: Mapping[str, str]) -> tuple[str, ...]:
    """The devices whose power is summed as the rack's: its PDUs (one per feed, or several
    power shelves), except a second view of one already counted (`meters_rack = false`).
    `kinds`: each device's kind, by name."""
    meters = []
    for name, kind in kinds.items():
        device = rack.devices.get(name)
        if kind != "pdu" or device is None or isinstance(device, MqttDeviceConfig):
            continue
        if device.meters_rack:
            meters.append(name)
    return tuple(meters)


def rack_power_points(rack: RackConfig, devices: Mapping[str, DeviceFacts]) -> tuple[PointId, ...]:
    """The rack's power meters (rack_meters), whose readings the supervisor sums."""
    kinds = {name: facts.kind for name, facts in devices.items()}
    return tuple(PointId(rack.id, name, "power") for name in rack_meters(rack, kinds))


def loop_actuator(rack: RackConfig, loop: LoopConfig, device: WritableSpec) -> ActuatorSafety:
    """An actuator driven by a loop: the loop gives its normal range, the profile its hard one."""
    role = ROLE_BY_POINT.get(loop.actuator.point, ActuatorRole.VALVE)
    minimum = max(loop.output_min, device.minimum)
    maximum = min(loop.output_max, device.maximum)
    hard_minimum, hard_maximum = device.minimum, device.maximum
    on_leak = on_over_temperature = on_pump_failure = on_loss_of_flow = on_low_level = None
    if role is ActuatorRole.PUMP:
        safety = rack.safety
        stop = hard_minimum if safety.leak_response == LeakResponse.STOP else safety.pump_safe_speed
        on_leak = min(max(stop, hard_minimum), hard_maximum)
        on_over_temperature = maximum  # more flow is the only thing a pump can do for heat
        on_low_level = hard_minimum  # no coolant: stop before the pump runs dry
    elif role is ActuatorRole.VALVE:
        on_over_temperature = maximum  # full facility water
    elif role is ActuatorRole.POWER_LIMIT:
        on_leak = on_over_temperature = on_pump_failure = hard_minimum
        on_loss_of_flow = on_low_level = hard_minimum
    return ActuatorSafety(
        point=PointId(rack.id, loop.actuator.device, loop.actuator.point),
        role=role,
        minimum=minimum,
        maximum=maximum,
        slew_per_s=loop.slew_per_s,
        failsafe=loop.failsafe_output,
        hard_minimum=hard_minimum,
        hard_maximum=hard_maximum,
        on_leak=on_leak,
        on_over_temperature=on_over_temperature,
        on_pump_failure=on_pump_failure,
        on_loss_of_flow=on_loss_of_flow,
        on_low_level=on_low_level,
        shutdown=loop.shutdown_output,
    )


ISOLATION = "isolation_valve_command"


def isolation_actuators(
    rack: RackConfig, devices: Mapping[str, DeviceFacts]
) -> tuple[ActuatorSafety, ...]:
    """Every writable `isolation_valve_command` of the rack's devices: with `leak_response =
    "stop"`, shut (its minimum) in the pump step of a leak's sequence, opened again after the
    reset; left alone otherwise. Not with "safe_speed": the pump is kept turning slowly so
    that coolant still carries the servers' heat away, and a shut isolation valve stops that
    flow (a CDU stops its pumps on it, or runs them against a closed valve)."""
    stops = rack.safety.leak_response == LeakResponse.STOP
    found = []
    for device_id, facts in devices.items():
        spec = facts.writable.get(ISOLATION)
        if spec is None:
            continue
        low, high = spec.minimum, spec.maximum
        found.append(
            ActuatorSafety(
                point=PointId(rack.id, device_id, ISOLATION),
                role=ActuatorRole.ISOLATION,
                minimum=low,
                maximum=high,
                slew_per_s=None,
                failsafe=high,  # never written: failsafe leaves an isolation valve alone
                hard_minimum=low,
                hard_maximum=high,
                on_leak=low if stops else None,
            )
        )
    return tuple(found)


SERVER_POWER = "server_power_command"


def server_power_actuators(
    rack: RackConfig, devices: Mapping[str, DeviceFacts]
) -> tuple[ActuatorSafety, ...]:
    """With `leak_shutdown_servers`, every server's power (Redfish ComputerSystem.Reset): a
    leak shuts it down gracefully along with the minimum caps (not waiting for them, as the
    pump does). Nothing else ever writes it: failsafe and hand-back leave it be, and after
    the interlock is reset it stays off until an operator powers the server on (the leak's
    cause has been found and fixed by then, and whether to power each server on is theirs
    to decide, not a daemon's: its OS was shut down, its jobs are gone)."""
    if not rack.safety.leak_shutdown_servers:
        return ()
    return tuple(
        ActuatorSafety(
            point=PointId(rack.id, device.id, SERVER_POWER),
            role=ActuatorRole.SERVER_POWER,
            minimum=0.0,
            maximum=1.0,
            slew_per_s=None,
            failsafe=1.0,  # never written: failsafe leaves a server's power alone
            hard_minimum=0.0,
            hard_maximum=1.0,
            on_leak=0.0,  # GracefulShutdown
            shutdown=None,  # the hand-back never touches it
        )
        for device in server_caps(rack)
        if SERVER_POWER in devices[device.id].writable
    )


def server_caps(rack: RackConfig) -> list[RedfishDeviceConfig]:
    """The rack's servers whose power caps its budget sets (Redfish BMCs), in config order."""
    return [
        device
        for device in rack.devices.values()
        if isinstance(device, RedfishDeviceConfig) and device.kind == DeviceKind.SERVER
    ]


def cap_actuator(rack: str, device: RedfishDeviceConfig) -> ActuatorSafety:
    """A server's power cap: the allocator moves it within the configured range, at once.

    Every safety response lowers it to the minimum: a leak, an over-temperature, a pump that
    failed, and a rack that cannot see its cooling (failsafe) all call for less heat.
    """
    low, high = device.cap_min_w, device.cap_max_w
    return ActuatorSafety(
        point=PointId(rack, device.id, "power_limit"),
        role=ActuatorRole.POWER_LIMIT,
        minimum=low,
        maximum=high,
        slew_per_s=None,  # caps must fall at once when the budget drops
        failsafe=low,
        hard_minimum=low,
        hard_maximum=high,
        on_leak=low,
        on_over_temperature=low,
        on_pump_failure=low,
        on_loss_of_flow=low,
        on_low_level=low,
        shutdown=None,  # on stop, the BMC keeps the last cap
    )
