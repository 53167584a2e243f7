"""The safety wiring (coolctl.rack.safety): what each rack's supervisor is built from.

test_supervisor.py tests the supervisor given its config; test_daemon_safety.py that its
responses reach the devices. These pin the step between: which actuator is a pump, a valve or a
cap; what each does on each interlock; which points are leak detectors, temperature limits,
safety sensors and healthy-chip points; and the figures derived from the config. Built from
tests/configs/hil-full-rack.toml (Modbus CDU and PDU, MQTT sensors, two Redfish BMCs) with
small changes.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coolctl.config import RackConfig, parse_config
from coolctl.control.supervisor import ActuatorRole, ActuatorSafety, SupervisorConfig
from coolctl.model import PointId
from coolctl.rack.facts import device_facts
from coolctl.rack.safety import (
    rack_point,
    rack_power_points,
    server_caps,
    supervisor_config,
    temperature_limits,
)

CONFIG = Path(__file__).resolve().parent / "configs" / "hil-full-rack.toml"
DOC = tomllib.loads(CONFIG.read_text())


def p(device: str, name: str) -> PointId:
    return PointId("r01", device, name)


def rack_of(change: Callable[[dict[str, Any]], None] | None = None) -> RackConfig:
    doc = copy.deepcopy(DOC)
    if change is not None:
        change(doc["racks"]["r01"])
    return parse_config(doc).racks["r01"]


def built(change: Callable[[dict[str, Any]], None] | None = None) -> SupervisorConfig:
    rack = rack_of(change)
    facts = {device.id: device_facts(device) for device in rack.devices.values()}
    return supervisor_config(rack, facts)


def actuator(config: SupervisorConfig, point: PointId) -> ActuatorSafety:
    return next(a for a in config.actuators if a.point == point)


PUMP, VALVE = p("cdu1", "pump_speed_command"), p("cdu1", "valve_command")
CAPS = (p("bmc01", "power_limit"), p("bmc02", "power_limit"))


def test_the_pump_stops_on_a_leak_and_runs_flat_out_on_over_temperature() -> None:
    pump = actuator(built(), PUMP)
    assert pump == ActuatorSafety(
        point=PUMP,
        role=ActuatorRole.PUMP,
        minimum=0.2,  # the loop's output range within the profile's 0..1
        maximum=1.0,
        slew_per_s=0.5,
        failsafe=1.0,
        hard_minimum=0.0,
        hard_maximum=1.0,
        on_leak=0.0,  # leak_response = "stop": the profile's minimum
        on_over_temperature=1.0,
        on_pump_failure=None,
        on_loss_of_flow=None,
        on_low_level=0.0,
        shutdown=None,
    )


@pytest.mark.parametrize(("speed", "on_leak"), [(0.3, 0.3), (0.0, 0.0), (1.5, 1.0)])
def test_leak_response_safe_speed_slows_the_pump_within_its_hard_range(
    speed: float, on_leak: float
) -> None:
    def safe(rack: dict[str, Any]) -> None:
        rack["safety"]["leak_response"] = "safe_speed"
        rack["safety"]["pump_safe_speed"] = speed

    assert actuator(built(safe), PUMP).on_leak == on_leak


def test_the_loop_range_is_narrowed_to_the_profile_and_the_shutdown_value_kept() -> None:
    def narrow(rack: dict[str, Any]) -> None:
        rack["loops"]["supply"].update(
            output_min=0.1, output_max=0.9, failsafe_output=0.9, shutdown_output=0.5
        )

    valve = actuator(built(narrow), VALVE)
    assert valve == ActuatorSafety(
        point=VALVE,
        role=ActuatorRole.VALVE,
        minimum=0.1,
        maximum=0.9,
        slew_per_s=0.25,
        failsafe=0.9,
        hard_minimum=0.0,
        hard_maximum=1.0,
        on_leak=None,
        on_over_temperature=0.9,  # full facility water, as far as the loop may open it
        on_pump_failure=None,
        on_loss_of_flow=None,
        on_low_level=None,
        shutdown=0.5,
    )


def test_every_cap_falls_to_its_minimum_on_every_cause() -> None:
    config = built()
    for point in CAPS:
        cap = actuator(config, point)
        assert cap == ActuatorSafety(
            point=point,
            role=ActuatorRole.POWER_LIMIT,
            minimum=1500.0,
            maximum=7000.0,
            slew_per_s=None,
            failsafe=1500.0,
            hard_minimum=1500.0,
            hard_maximum=7000.0,
            on_leak=1500.0,
            on_over_temperature=1500.0,
            on_pump_failure=1500.0,
            on_loss_of_flow=1500.0,
            on_low_level=1500.0,
            shutdown=None,
        )
    assert [a.point for a in config.actuators] == [PUMP, VALVE, *CAPS]


def test_a_loop_that_drives_a_cap_gets_the_cap_responses() -> None:
    def cap_loop(rack: dict[str, Any]) -> None:
        rack["loops"]["supply"]["actuator"] = "bmc01/power_limit"
        rack["loops"]["supply"].update(output_min=2000.0, output_max=6000.0, failsafe_output=2000.0)
        rack["loops"]["supply"]["slew_per_s"] = 500.0

    config = built(cap_loop)
    loop_cap = config.actuators[1]
    assert loop_cap.point == CAPS[0] and loop_cap.role is ActuatorRole.POWER_LIMIT
    assert (loop_cap.minimum, loop_cap.maximum) == (2000.0, 6000.0)
    assert (loop_cap.hard_minimum, loop_cap.hard_maximum) == (1500.0, 7000.0)
    for response in ("on_leak", "on_over_temperature", "on_pump_failure"):
        assert getattr(loop_cap, response) == 1500.0, response
    assert (loop_cap.on_loss_of_flow, loop_cap.on_low_level) == (1500.0, 1500.0)


def test_the_points_the_supervisor_watches() -> None:
    config = built()
    assert config.rack == "r01"
    assert config.leak_points == (
        p("cdu1", "leak_detected"),
        p("sensors1", "leak_detected"),
        p("bmc01", "leak_detected"),
        p("bmc02", "leak_detected"),
    )
    assert config.pump_running == p("cdu1", "pump_running")
    assert config.standby_active == p("cdu1", "standby_pump_active")
    assert config.flow == p("cdu1", "flow")
    assert config.reservoir_level == p("cdu1", "reservoir_level")
    assert config.power == (p("pdu1", "power"),)
    assert config.required == (p("sensors1", "flow"), p("cdu1", "supply_temperature"))
    # a Redfish service's leak detectors are what discovery finds: not silent when missing
    assert config.safety_sensors == (
        p("cdu1", "leak_detected"),
        p("sensors1", "leak_detected"),
        p("cdu1", "flow"),
        p("cdu1", "reservoir_level"),
    )


def test_the_safety_settings_pass_through() -> None:
    def settings(rack: dict[str, Any]) -> None:
        rack["safety"].update(
            standby_changeover_s=3.5,
            leak_debounce_s=0.7,
            leak_votes=2,
            leak_latched=False,
            leak_caps_timeout_s=6.5,
            temperature_release_band_c=1.5,
            over_temperature_hold_s=33.0,
            rated_flow_lpm=200.0,
            min_flow_fraction=0.4,
            min_flow_lpm_per_kw=0.7,
            flow_debounce_s=2.5,
            min_reservoir_level_l=3.0,
            silent_after_s=12.0,
            failsafe_after_s=0.9,
            hold_s=4.0,
        )

    config = built(settings)
    assert (config.standby_changeover_s, config.leak_debounce_s) == (3.5, 0.7)
    assert (config.leak_votes, config.leak_latched, config.leak_caps_timeout_s) == (2, False, 6.5)
    assert (config.temperature_release_band_c, config.over_temperature_hold_s) == (1.5, 33.0)
    assert (config.rated_flow_lpm, config.min_flow_fraction) == (200.0, 0.4)
    assert (config.min_flow_lpm_per_kw, config.flow_debounce_s) == (0.7, 2.5)
    assert (config.min_reservoir_level_l, config.silent_after_s) == (3.0, 12.0)
    assert (config.failsafe_after_s, config.hold_s) == (0.9, 4.0)
    assert config.healthy_margin_c == 0.0


def test_the_caps_took_hold_when_the_rack_draws_no_more_than_their_floor() -> None:
    # 1.1 x (1500 + 1500) W of capped servers + 1500 W of overhead
    assert built().leak_caps_power_w == pytest.approx(4800.0)

    def no_overhead(rack: dict[str, Any]) -> None:
        rack["power"]["overhead_w"] = 0.0
        rack["devices"]["bmc02"]["cap_min_w"] = 1000.0

    assert built(no_overhead).leak_caps_power_w == pytest.approx(2750.0)

    def no_pdu(rack: dict[str, Any]) -> None:
        del rack["devices"]["pdu1"]

    without_pdu = built(no_pdu)
    assert without_pdu.power == () and without_pdu.leak_caps_power_w is None

    def no_servers(rack: dict[str, Any]) -> None:
        del rack["devices"]["bmc01"], rack["devices"]["bmc02"]

    without_caps = built(no_servers)
    assert without_caps.leak_caps_power_w is None and without_caps.power == (p("pdu1", "power"),)
    assert without_caps.healthy_points == ()


def test_healthy_chip_points_follow_failsafe_hold_under_c() -> None:
    config = built()
    assert [(h.point, h.limit_c) for h in config.healthy_points] == [
        (p("bmc01", "chip_temperature"), 80.0),
        (p("bmc02", "chip_temperature"), 80.0),
    ]

    def off(rack: dict[str, Any]) -> None:
        rack["safety"]["failsafe_hold_under_c"] = 70.0

    assert {h.limit_c for h in built(off).healthy_points} == {70.0}


def test_rack_wide_limits_cover_every_server_and_the_pump_cdu_return_unless_configured() -> None:
    def limits(rack: dict[str, Any]) -> None:
        rack["safety"].update(chip_limit_c=85.0, outlet_limit_c=60.0, return_limit_c=50.0)
        rack["safety"]["temperature_limits"]["bmc02/chip_temperature"] = 90.0

    rack = rack_of(limits)
    facts = {device.id: device_facts(device) for device in rack.devices.values()}
    assert [(t.point, t.limit_c) for t in temperature_limits(rack, facts)] == [
        (p("cdu1", "supply_temperature"), 45.0),
        (p("sensors1", "inlet_temperature"), 45.0),
        (p("bmc02", "chip_temperature"), 90.0),  # configured: the rack-wide one does not apply
        (p("bmc01", "chip_temperature"), 85.0),
        (p("bmc01", "coolant_outlet_temperature"), 60.0),
        (p("bmc02", "coolant_outlet_temperature"), 60.0),
        (p("cdu1", "return_temperature"), 50.0),
    ]
    assert [(t.point, t.limit_c) for t in temperature_limits(rack_of(), facts)] == [
        (p("cdu1", "supply_temperature"), 45.0),
        (p("sensors1", "inlet_temperature"), 45.0),
    ]


def test_a_rack_without_a_pump_loop_has_no_pump_points() -> None:
    def no_pump(rack: dict[str, Any]) -> None:
        del rack["loops"]["pump"]
        rack["safety"].update(return_limit_c=50.0)

    config = built(no_pump)
    assert config.pump_running is None and config.standby_active is None
    assert config.flow is None and config.reservoir_level is None
    assert config.safety_sensors == (p("cdu1", "leak_detected"), p("sensors1", "leak_detected"))
    assert all(t.point.name != "return_temperature" for t in config.temperature_limits)
    assert config.required == (p("cdu1", "supply_temperature"),)


def test_a_disabled_loop_needs_no_readings() -> None:
    def disabled(rack: dict[str, Any]) -> None:
        rack["loops"]["pump"]["enabled"] = False

    assert built(disabled).required == (p("cdu1", "supply_temperature"),)


def test_servers_and_the_rack_power_point() -> None:
    rack = rack_of()
    assert [device.id for device in server_caps(rack)] == ["bmc01", "bmc02"]
    facts = {device.id: device_facts(device) for device in rack.devices.values()}
    assert rack_power_points(rack, facts) == (p("pdu1", "power"),)

    def cdu_kind(rack: dict[str, Any]) -> None:
        rack["devices"]["bmc02"]["kind"] = "pdu"
        del rack["devices"]["bmc02"]["cap_min_w"], rack["devices"]["bmc02"]["cap_max_w"]

    assert [device.id for device in server_caps(rack_of(cdu_kind))] == ["bmc01"]


def add_redfish_cdu(rack: dict[str, Any]) -> None:
    """A Redfish CDU `rfcdu` beside the rack's own devices (it reports no pump run or standby
    points, and it can shut its isolation valves)."""
    rack["devices"]["rfcdu"] = {
        "driver": "redfish",
        "kind": "cdu",
        "url": "https://127.0.0.1:1",
        "username": "admin",
    }


def test_a_pump_cdu_without_run_and_standby_points_has_none_to_watch() -> None:
    """A Redfish CDU reports neither whether its pump runs nor a standby pump."""

    def redfish_cdu(rack: dict[str, Any]) -> None:
        add_redfish_cdu(rack)
        rack["loops"]["pump"]["actuator"] = "rfcdu/pump_speed_command"

    config = built(redfish_cdu)
    assert config.pump_running is None and config.standby_active is None
    assert config.flow == p("rfcdu", "flow")
    assert config.reservoir_level == p("rfcdu", "reservoir_level")


def test_a_pump_cdu_without_a_level_sensor_has_no_level_to_watch(tmp_path: Path) -> None:
    """A site profile of a CDU without a reservoir level sensor."""
    text = (Path(__file__).resolve().parent.parent / "drivers/profiles/sim-cdu.toml").read_text()
    start = text.index('name = "reservoir_level"')
    start = text.rindex("[[point]]", 0, start)
    end = text.index("[[point]]", start + 1)
    profile = tmp_path / "no-level-cdu.toml"
    profile.write_text(text[:start] + text[end:])

    def no_level(rack: dict[str, Any]) -> None:
        rack["devices"]["cdu1"]["profile"] = str(profile)

    config = built(no_level)
    assert config.reservoir_level is None and config.flow == p("cdu1", "flow")
    assert config.safety_sensors[-1] == p("cdu1", "flow")


def test_room_points_come_from_the_first_device_that_reports_them() -> None:
    """The supply floor's dew point and room air, and the facility water, are read where a
    device reports them; a name no device reports is no point (not a point of no device)."""
    config = built()
    assert config.dew_point == p("cdu1", "dew_point")
    assert config.room_temperature == p("cdu1", "room_temperature")
    assert config.room_humidity == p("cdu1", "room_humidity")
    assert config.facility_supply == p("cdu1", "facility_supply_temperature")
    rack = rack_of()
    facts = {device.id: device_facts(device) for device in rack.devices.values()}
    assert rack_point(rack, facts, "inlet_temperature") == p("sensors1", "inlet_temperature")
    assert rack_point(rack, facts, "no_such_point") is None


def test_an_isolation_valve_shuts_on_a_leak_and_nothing_else_moves_it() -> None:
    """A device that can close its isolation valve (a Redfish CDU's ValveControl), listed after
    devices that cannot: it shuts to its minimum in a leak's pump step, and no other cause,
    failsafe included, closes it (failsafe is its open end, never written)."""

    config = built(add_redfish_cdu)
    valves = [a for a in config.actuators if a.role is ActuatorRole.ISOLATION]
    assert [a.point for a in valves] == [p("rfcdu", "isolation_valve_command")]
    (valve,) = valves
    assert (valve.minimum, valve.maximum, valve.hard_minimum, valve.hard_maximum) == (0, 1, 0, 1)
    assert valve.on_leak == 0.0 and valve.failsafe == 1.0 and valve.shutdown is None
    assert valve.on_over_temperature is valve.on_pump_failure is valve.on_loss_of_flow is None
    assert valve.on_low_level is None and valve.slew_per_s is None
    assert not [a for a in built().actuators if a.role is ActuatorRole.ISOLATION]


def test_an_isolation_valve_stays_open_on_a_leak_while_the_pump_runs_at_its_safe_speed() -> None:
    """With leak_response = "safe_speed" the pump keeps coolant moving through the servers:
    shutting the isolation valve would stop that flow, so the leak leaves it open."""

    def slowed_with_a_redfish_cdu(rack: dict[str, Any]) -> None:
        rack["safety"]["leak_response"] = "safe_speed"
        add_redfish_cdu(rack)

    (valve,) = [
        a for a in built(slowed_with_a_redfish_cdu).actuators if a.role is ActuatorRole.ISOLATION
    ]
    assert valve.on_leak is None and valve.failsafe == 1.0


def test_a_power_meter_that_only_publishes_over_mqtt_is_not_summed_as_the_racks(
    tmp_path: Path,
) -> None:
    """An MQTT device of kind pdu (a site's topic map) is not one of the rack's meters: the
    rack's power is summed from the polled PDUs, which say whether they meter the rack."""
    text = Path(__file__).resolve().parent.parent / "drivers/profiles/sim-mqtt-sensors.toml"
    profile = tmp_path / "mqtt-pdu.toml"
    profile.write_text(
        text.read_text()
        .replace('name = "sim-mqtt-sensors"', 'name = "mqtt-pdu"')
        .replace('kind = "sensor"', 'kind = "pdu"', 1)
    )

    def mqtt_pdu(rack: dict[str, Any]) -> None:
        rack["devices"]["sensors1"]["profile"] = str(profile)

    rack = rack_of(mqtt_pdu)
    facts = {device.id: device_facts(device) for device in rack.devices.values()}
    assert facts["sensors1"].kind == "pdu"
    assert rack_power_points(rack, facts) == (p("pdu1", "power"),)
