"""Tests of the reference rack plant (simulators/plant.py) against PLANT.md's physics."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coolctl.simulators.plant import PlantParams, PlantTruth, RackPlant

THROTTLE_C = 87.0


def settled(load: float = 1.0, **overrides: object) -> RackPlant:
    """A plant started in the steady state of `load` (and any parameter overrides)."""
    return RackPlant(PlantParams.from_dict({"initial_load": load, **overrides}))


def coolant_temperatures(truth: PlantTruth) -> list[float]:
    return [
        truth.supply_temperature_c,
        truth.return_temperature_c,
        truth.rack_outlet_temperature_c,
        *truth.outlet_temperature_c,
    ]


# ---- steady state -------------------------------------------------------------------------


IDENTICAL = {"chip_spread_k": 0.0, "flow_maldistribution": 0.0}


def test_full_load_steady_state_matches_plant_md() -> None:
    # PLANT.md's calibration is of one server: check it on a rack of identical servers
    plant = RackPlant(PlantParams.from_dict(IDENTICAL))  # starts idle
    plant.set_load(1.0)
    plant.advance(900.0)
    truth = plant.truth()
    assert 32.0 <= truth.supply_temperature_c <= 33.0
    assert 40.0 <= truth.return_temperature_c <= 41.0
    assert truth.flow_lpm == pytest.approx(200.0, rel=1e-3)
    assert truth.differential_pressure_pa == pytest.approx(150_000.0, rel=1e-3)
    assert truth.pump_power_w == pytest.approx(150_000.0 * 200.0 / 60_000.0 / 0.55, rel=1e-3)
    assert truth.heat_removed_w == pytest.approx(18 * 7000.0 * 0.85, rel=1e-3)
    # chips: 75 degC at 32 degC supply, so 75 + (T_supply - 32) here
    expected_chip_c = 75.0 + truth.supply_temperature_c - 32.0
    assert truth.chip_temperature_c == pytest.approx([expected_chip_c] * 18, abs=0.01)
    # a plant constructed at full load starts in that same state
    assert settled(1.0, **IDENTICAL).truth().supply_temperature_c == pytest.approx(
        truth.supply_temperature_c, abs=1e-6
    )


def test_an_initial_state_that_would_throttle_starts_cold() -> None:
    truth = settled(1.0, initial_valve=0.02).truth()
    assert truth.supply_temperature_c == truth.return_temperature_c == 30.0
    assert max(truth.chip_temperature_c) <= THROTTLE_C


def test_readings_are_the_truth_with_noise() -> None:
    plant = settled(1.0)
    truth = plant.truth()
    supply = [plant.cdu_readings()["supply_temperature"] for _ in range(400)]
    assert statistics.fmean(supply) == pytest.approx(truth.supply_temperature_c, abs=0.01)
    assert 0.04 < statistics.stdev(supply) < 0.06
    cdu = plant.cdu_readings()
    assert cdu["pump_speed_command"] == 1.0 and cdu["valve_command"] == 1.0
    assert cdu["pump_running"] == 1.0 and cdu["leak_detected"] == 0.0
    assert cdu["facility_supply_temperature"] == pytest.approx(30.0, abs=0.3)
    server = plant.server_readings(4)
    assert server["power_limit"] == 7000.0
    assert server["power"] == pytest.approx(7000.0, abs=60.0)
    assert plant.readings("server4").keys() == server.keys()


def test_noise_never_reports_impossible_values() -> None:
    plant = settled(0.5)
    plant.set_pump_speed_command(0.0)
    plant.set_valve_command(0.0)
    plant.advance(60.0)
    for _ in range(200):
        cdu = plant.cdu_readings()
        assert cdu["flow"] >= 0.0 and cdu["primary_flow"] >= 0.0
        assert 0.0 <= cdu["pump_speed"] <= 1.0 and 0.0 <= cdu["valve_position"] <= 1.0


def test_facility_water_step_moves_supply_temperature() -> None:
    plant = settled(1.0)
    before = plant.truth().supply_temperature_c
    plant.set_facility_water_temperature(35.0)
    plant.advance(900.0)
    assert plant.truth().supply_temperature_c - before == pytest.approx(5.0, abs=0.01)


# ---- pump and hydraulics ------------------------------------------------------------------


def test_affinity_laws_fall_out_of_the_curves() -> None:
    plant = settled(0.3)
    ratios = []
    for speed in (0.4, 0.6, 0.8, 1.0):
        plant.set_pump_speed_command(speed)
        plant.advance(60.0)
        truth = plant.truth()
        assert truth.pump_speed == pytest.approx(speed, rel=1e-6)
        ratios.append(
            (
                truth.flow_lpm / speed,
                truth.differential_pressure_pa / speed**2,
                truth.hydraulic_power_w / speed**3,
            )
        )
    for flow, pressure, power in ratios:
        assert flow == pytest.approx(ratios[-1][0], rel=1e-6)
        assert pressure == pytest.approx(ratios[-1][1], rel=1e-6)
        assert power == pytest.approx(ratios[-1][2], rel=1e-6)


def test_pump_minimum_speed_and_stop() -> None:
    plant = settled(0.0)
    plant.set_pump_speed_command(0.05)
    plant.advance(60.0)
    assert plant.truth().pump_speed == pytest.approx(0.15, rel=1e-6)
    assert plant.cdu_readings()["pump_speed_command"] == 0.05
    plant.set_pump_speed_command(0.0)
    plant.advance(60.0)
    truth = plant.truth()
    assert truth.flow_lpm < 0.01 and not truth.pump_running


def test_speed_follows_command_with_its_lag() -> None:
    plant = settled(0.5, initial_pump_speed=0.5)
    plant.set_pump_speed_command(1.0)
    plant.advance(2.0)  # one time constant
    assert plant.truth().pump_speed == pytest.approx(1.0 - 0.5 * math.exp(-1.0), abs=1e-3)


def test_degraded_pump_loses_head() -> None:
    plant = settled(0.5)
    plant.degrade_pump(0.64)
    plant.advance(1.0)
    assert plant.truth().flow_lpm == pytest.approx(200.0 * 0.8, rel=1e-6)


def test_standby_pump_takes_over() -> None:
    plant = settled(1.0, standby_pump=True)
    plant.fail_pump()
    plant.advance(0.1)
    assert plant.truth().pump_running is False
    plant.advance(0.2)
    truth = plant.truth()
    assert truth.standby_pump_active and truth.pump_running
    assert truth.flow_lpm > 150.0
    plant.advance(20.0)
    truth = plant.truth()
    assert truth.flow_lpm == pytest.approx(200.0, rel=1e-3)
    assert truth.thermal_throttled_energy_j == 0.0
    assert plant.cdu_readings()["standby_pump_active"] == 1.0


# ---- servers: caps, throttling ------------------------------------------------------------


def test_power_cap_is_obeyed_with_its_lag() -> None:
    plant = settled(1.0)
    plant.set_power_limit(3, 4000.0)
    plant.advance(1.0)
    truth = plant.truth()
    assert truth.server_power_w[3] == pytest.approx(4000.0 + 3000.0 * math.exp(-1.0), rel=1e-3)
    assert truth.server_power_w[2] == pytest.approx(7000.0)
    plant.advance(9.0)
    truth = plant.truth()
    assert truth.server_power_w[3] == pytest.approx(4000.0, abs=1.0)
    assert truth.cap_denied_energy_j == pytest.approx(3000.0 * 10.0, rel=1e-6)
    assert plant.server_readings(3)["power_limit"] == 4000.0
    plant.set_power_limit(3, 10.0)  # below idle: clamped
    assert plant.truth().power_limit_w[3] == 1500.0


def test_load_on_a_subset_of_servers() -> None:
    plant = settled(0.0)
    plant.set_load(1.0, servers=[0, 17])
    plant.advance(20.0)
    power = plant.truth().server_power_w
    assert power[0] == pytest.approx(7000.0, abs=1.0) and power[17] == pytest.approx(7000.0, abs=1)
    assert power[5] == pytest.approx(1500.0)
    with pytest.raises(ValueError, match="server index"):
        plant.set_load(0.5, servers=[18])


def test_chips_throttle_when_the_pump_fails() -> None:
    plant = settled(1.0)
    before_c = max(plant.truth().chip_temperature_c)
    plant.fail_pump()
    plant.advance(1.0)
    truth = plant.truth()
    assert truth.flow_lpm == 0.0 and not truth.pump_running
    assert plant.cdu_readings()["pump_running"] == 0.0
    hottest = []
    for _ in range(30):
        plant.advance(1.0)
        hottest.append(max(plant.truth().chip_temperature_c))
    truth = plant.truth()
    assert max(hottest) <= THROTTLE_C + 1e-9
    assert min(truth.chip_temperature_c) >= THROTTLE_C - 0.01
    assert max(truth.server_power_w) < 1000.0
    assert truth.thermal_throttled_energy_j > 18 * 6000.0 * 20.0
    assert truth.throttled_energy_j == truth.thermal_throttled_energy_j
    plant.restore_pump()
    plant.advance(600.0)
    truth = plant.truth()
    assert max(truth.chip_temperature_c) == pytest.approx(before_c, abs=0.1)
    assert min(truth.server_power_w) == pytest.approx(7000.0)


def test_valve_shut_and_pump_stopped_stay_bounded() -> None:
    plant = settled(1.0)
    plant.set_valve_command(0.0)
    plant.advance(1800.0)
    truth = plant.truth()
    assert truth.heat_removed_w == 0.0 and truth.primary_flow_lpm == 0.0
    assert max(coolant_temperatures(truth)) <= THROTTLE_C + 1e-6
    assert max(truth.chip_temperature_c) <= THROTTLE_C + 1e-9
    plant.set_valve_command(1.0)
    plant.set_pump_speed_command(0.0)
    plant.advance(1800.0)
    truth = plant.truth()
    assert max(coolant_temperatures(truth)) <= THROTTLE_C + 1e-6
    assert all(math.isfinite(t) for t in coolant_temperatures(truth))


# ---- loop: delay and energy ---------------------------------------------------------------


def response_time_s(pump_speed: float) -> float:
    """Time from a load step until the return temperature has risen by 0.1 K."""
    plant = settled(0.2, initial_pump_speed=pump_speed)
    start_c = plant.truth().return_temperature_c
    plant.set_load(0.4)
    for step in range(1, 1000):
        plant.advance(0.1)
        if plant.truth().return_temperature_c > start_c + 0.1:
            return step * 0.1
    raise AssertionError("return temperature never responded")


def test_transport_delay_is_longer_at_low_flow() -> None:
    fast_s = response_time_s(1.0)
    slow_s = response_time_s(0.3)
    assert 6.0 <= fast_s < 9.0  # 20 L pipe at 200 L/min: 6 s
    assert slow_s >= 20.0  # at 60 L/min: 20 s
    assert slow_s > 2.5 * fast_s


def test_energy_balance_over_load_steps() -> None:
    plant = settled(0.2)
    for load, speed, valve in ((1.0, 1.0, 1.0), (0.5, 0.6, 0.4), (0.9, 0.3, 1.0), (0.1, 0.8, 0)):
        plant.set_load(load)
        plant.set_pump_speed_command(speed)
        plant.set_valve_command(valve)
        plant.advance(300.0)
    truth = plant.truth()
    assert truth.it_heat_to_coolant_j == pytest.approx(0.85 * truth.it_energy_j, rel=1e-9)
    assert truth.stored_heat_change_j != 0.0
    accounted = truth.heat_removed_j + truth.stored_heat_change_j
    assert accounted == pytest.approx(truth.it_heat_to_coolant_j, rel=0.01)
    assert abs(truth.energy_balance_error_j) < 1e-6 * truth.it_heat_to_coolant_j


def test_pdu_sums_servers_pump_and_overhead() -> None:
    plant = settled(1.0)
    truth = plant.truth()
    assert truth.pdu_power_w == pytest.approx(126_000.0 + truth.pump_power_w + 800.0)
    energies = []
    for _ in range(5):
        plant.advance(10.0)
        energies.append(plant.pdu_readings()["energy"])
    assert energies == sorted(energies)
    assert energies[-1] == pytest.approx(50.0 * truth.pdu_power_w, rel=1e-6)


# ---- reservoir and leaks ------------------------------------------------------------------


def test_leak_drains_reservoir_trips_detector_and_cavitates_the_pump() -> None:
    plant = settled(0.5)
    plant.start_leak(3.0)
    plant.advance(0.5)
    assert plant.cdu_readings()["leak_detected"] == 0.0  # 25 mL: not yet wet
    plant.advance(1.5)
    assert plant.cdu_readings()["leak_detected"] == 1.0
    plant.advance(58.0)
    assert plant.truth().reservoir_level_l == pytest.approx(20.0 - 3.0, abs=1e-6)
    assert plant.truth().flow_lpm == pytest.approx(200.0)
    plant.advance(300.0)  # 18 L gone: below the minimum level
    truth = plant.truth()
    assert truth.reservoir_level_l < 5.0 - 1.0
    assert truth.flow_lpm == 0.0
    plant.stop_leak()
    assert plant.cdu_readings()["leak_detected"] == 0.0
    plant.refill()
    plant.advance(30.0)
    assert plant.truth().flow_lpm == pytest.approx(200.0, rel=1e-6)


# ---- sensors ------------------------------------------------------------------------------


def test_stuck_sensor_freezes_and_releases() -> None:
    plant = settled(0.2)
    plant.stick_sensor("cdu", "supply_temperature")
    frozen = plant.cdu_readings()["supply_temperature"]
    plant.set_load(1.0)
    plant.advance(300.0)
    assert plant.cdu_readings()["supply_temperature"] == frozen
    assert plant.truth().supply_temperature_c > frozen + 1.0
    plant.stick_sensor("cdu", "supply_temperature", stuck=False)
    live = plant.cdu_readings()["supply_temperature"]
    assert live == pytest.approx(plant.truth().supply_temperature_c, abs=0.3)
    plant.stick_sensor("server2", "chip_temperature")
    assert (
        plant.server_readings(2)["chip_temperature"] == plant.server_readings(2)["chip_temperature"]
    )
    with pytest.raises(ValueError, match="unknown device"):
        plant.stick_sensor("server18", "chip_temperature")
    with pytest.raises(ValueError, match="no point"):
        plant.set_sensor_noise("cdu", "chip_temperature", 1.0)


def test_sensor_drift_and_extra_noise() -> None:
    plant = settled(0.5)
    plant.set_sensor_noise("cdu", "return_temperature", 0.0)
    plant.set_sensor_drift("cdu", "return_temperature", 0.01)
    plant.advance(100.0)
    reading = plant.cdu_readings()["return_temperature"]
    assert reading == pytest.approx(plant.truth().return_temperature_c + 1.0, abs=1e-9)
    plant.set_sensor_noise("cdu", "flow", 20.0)
    flows = [plant.cdu_readings()["flow"] for _ in range(300)]
    assert statistics.stdev(flows) > 10.0
    plant.reset_sensor("cdu", "flow")
    flows = [plant.cdu_readings()["flow"] for _ in range(300)]
    assert statistics.stdev(flows) < 1.0


# ---- determinism, parameters, robustness --------------------------------------------------


def scripted_run(seed: int) -> list[dict[str, float]]:
    plant = RackPlant(seed=seed)
    out = []
    for load in (0.3, 0.9, 0.6):
        plant.set_load(load)
        plant.advance(20.0)
        out += [plant.cdu_readings(), plant.pdu_readings(), plant.server_readings(7)]
    return out


def test_same_seed_same_trajectory() -> None:
    assert scripted_run(7) == scripted_run(7)
    assert scripted_run(7) != scripted_run(8)


def test_advance_carries_partial_steps() -> None:
    whole = settled(0.5)
    whole.set_load(1.0)
    whole.advance(3.0)
    pieces = settled(0.5)
    pieces.set_load(1.0)
    for _ in range(60):
        pieces.advance(0.05)
    assert pieces.time_s == pytest.approx(3.0)
    assert pieces.truth() == whole.truth()


def test_from_dict_overrides_and_rejects() -> None:
    params = PlantParams.from_dict({"n_servers": 8, "server_max_w": 6000, "standby_pump": True})
    assert params.n_servers == 8 and params.server_max_w == 6000.0 and params.standby_pump
    assert RackPlant(params).n_servers == 8
    with pytest.raises(ValueError, match="'pump_max_speed'"):
        PlantParams.from_dict({"pump_max_speed": 1.0})
    with pytest.raises(ValueError, match="'server_idle_w'"):
        PlantParams.from_dict({"server_idle_w": "1500"})
    with pytest.raises(ValueError, match="'pump_tau_s'"):
        PlantParams.from_dict({"pump_tau_s": -1.0})
    with pytest.raises(ValueError, match="'standby_pump'"):
        PlantParams.from_dict({"standby_pump": 1})
    with pytest.raises(ValueError, match="'n_servers'"):
        PlantParams.from_dict({"n_servers": 2.5})
    with pytest.raises(ValueError, match="'reservoir_min_level_l'"):
        PlantParams.from_dict({"reservoir_min_level_l": 25.0})


def test_fast_dynamics_get_a_smaller_internal_step() -> None:
    assert RackPlant().internal_step_s == 0.1
    small = RackPlant(PlantParams.from_dict({"n_servers": 8, "step_s": 0.5}))
    assert small.internal_step_s <= 0.072  # 2.4 L of cold plates at 200 L/min: 0.72 s
    small.advance(1.0)
    assert small.time_s == pytest.approx(1.0)


_command = st.one_of(
    st.tuples(st.just("pump"), st.floats(0.0, 1.0)),
    st.tuples(st.just("valve"), st.floats(0.0, 1.0)),
    st.tuples(st.just("load"), st.floats(0.0, 1.0)),
    st.tuples(st.just("cap"), st.floats(0.0, 8000.0)),
    st.tuples(st.just("facility"), st.floats(20.0, 40.0)),
    st.tuples(st.just("fail"), st.booleans()),
    st.tuples(st.just("leak"), st.floats(0.0, 20.0)),
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_command, st.floats(0.0, 60.0)), min_size=1, max_size=8))
def test_random_commands_keep_the_plant_physical(
    script: list[tuple[tuple[str, float | bool], float]],
) -> None:
    plant = settled(0.5)
    coldest_c = 30.0
    for (kind, value), duration_s in script:
        if kind == "pump":
            plant.set_pump_speed_command(float(value))
        elif kind == "valve":
            plant.set_valve_command(float(value))
        elif kind == "load":
            plant.set_load(float(value))
        elif kind == "cap":
            plant.set_power_limit(0, float(value))
        elif kind == "facility":
            plant.set_facility_water_temperature(float(value))
            coldest_c = min(coldest_c, float(value))
        elif kind == "fail":
            plant.fail_pump() if value else plant.restore_pump()
        else:
            plant.start_leak(float(value)) if value else plant.stop_leak()
        plant.advance(duration_s)
        truth = plant.truth()
        temperatures = coolant_temperatures(truth) + list(truth.chip_temperature_c)
        assert all(math.isfinite(t) for t in temperatures)
        assert min(temperatures) >= coldest_c - 1e-6
        assert max(temperatures) <= THROTTLE_C + 1e-6
        assert truth.flow_lpm >= 0.0 and truth.primary_flow_lpm >= 0.0
        assert truth.reservoir_level_l >= 0.0
        assert min(truth.server_power_w) >= 0.0
        assert abs(truth.energy_balance_error_j) <= 1e-6 * max(truth.it_heat_to_coolant_j, 1e6)
        readings = plant.cdu_readings()
        assert all(math.isfinite(v) for v in readings.values())
        assert readings["flow"] >= 0.0


# ---- what makes the plant less kind to controllers ------------------------------------------


def test_sensor_lag_is_first_order_and_truth_is_not_lagged() -> None:
    plant = RackPlant(
        PlantParams.from_dict(
            {
                "initial_load": 1.0,
                "temperature_noise_c": 0.0,
                "sensor_lag_s": {"supply_temperature": 20.0},
            }
        )
    )
    before = plant.truth().supply_temperature_c
    plant.set_facility_water_temperature(40.0)
    plant.advance(600.0)  # settled: the sensor has caught up with the truth
    after = plant.truth().supply_temperature_c
    assert plant.cdu_readings()["supply_temperature"] == pytest.approx(after, abs=1e-3)
    plant.set_facility_water_temperature(30.0)
    plant.advance(20.0)
    truth = plant.truth().supply_temperature_c
    seen = plant.cdu_readings()["supply_temperature"]
    assert truth < seen < after  # the truth has moved, the sensor is behind it
    assert before < after
    with pytest.raises(ValueError, match="sensor_lag_s"):
        PlantParams.from_dict({"sensor_lag_s": {"valve_command": 5.0}})
    with pytest.raises(ValueError, match="sensor_lag_s"):
        PlantParams.from_dict({"sensor_lag_s": 5.0})


def test_equal_percentage_valve_with_authority_and_stiction() -> None:
    linear = settled(0.5)
    linear.set_valve_command(0.5)
    linear.advance(30.0)
    assert linear.truth().valve_opening == pytest.approx(0.5)
    eq = settled(0.5, valve_rangeability=50.0, valve_stiction=0.01)
    eq.set_valve_command(0.5)
    eq.advance(30.0)
    truth = eq.truth()
    assert truth.valve_position == pytest.approx(0.5)
    assert truth.valve_opening == pytest.approx((50.0**0.5 - 1.0) / 49.0)
    assert truth.primary_flow_lpm == pytest.approx(truth.valve_opening * 250.0)
    eq.set_valve_command(0.508)  # inside the stiction band: the stem does not move
    eq.advance(10.0)
    assert eq.truth().valve_position == pytest.approx(0.5)
    eq.set_valve_command(0.52)  # past it: the stem breaks away and goes all the way
    eq.advance(1.0)
    assert eq.truth().valve_position == pytest.approx(0.52)
    installed = settled(0.5, valve_authority=0.3)
    installed.set_valve_command(0.5)
    installed.advance(30.0)
    assert installed.truth().valve_opening == pytest.approx(1.0 / math.sqrt(0.7 + 0.3 / 0.25))


def test_servers_differ_by_their_spread_and_their_share_of_flow() -> None:
    truth = settled(1.0).truth()
    shares = [q / truth.flow_lpm for q in truth.server_flow_lpm]
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] == pytest.approx(1.05 / 18) and shares[-1] == pytest.approx(0.95 / 18)
    identical = settled(1.0, **IDENTICAL).truth()
    spread = [c - identical.chip_temperature_c[0] for c in truth.chip_temperature_c]
    assert max(spread) - min(spread) > 3.0  # +-3 K of contact, +-1 K from the flow share
    assert all(-4.0 < d < 4.0 for d in spread)
    assert truth.rack_outlet_temperature_c == pytest.approx(
        identical.rack_outlet_temperature_c, abs=0.01
    )
    # drawn from the seed: the same seed, the same servers
    again = RackPlant(PlantParams(initial_load=1.0), seed=0).truth()
    other = RackPlant(PlantParams(initial_load=1.0), seed=1).truth()
    assert again.chip_temperature_c == truth.chip_temperature_c
    assert other.chip_temperature_c != truth.chip_temperature_c


def test_a_leak_follows_the_loop_pressure() -> None:
    plant = settled(0.5)
    plant.start_leak(2.0)
    plant.advance(1.0)
    assert plant.truth().leak_rate_lpm == pytest.approx(2.0)  # rated speed: rated pressure
    plant.set_pump_speed_command(0.5)
    plant.advance(30.0)
    assert plant.truth().leak_rate_lpm == pytest.approx(2.0 * 0.5, rel=1e-3)  # dP ~ s^2
    plant.set_pump_speed_command(0.0)
    plant.advance(30.0)
    level = plant.truth().reservoir_level_l
    plant.advance(60.0)
    assert plant.truth().leak_rate_lpm < 1e-9  # the pump has stopped: no pressure, no leak
    assert plant.truth().reservoir_level_l == pytest.approx(level, abs=1e-6)
    assert plant.truth().leak_detected
    constant = settled(0.5, leak_pressure_exponent=0.0)
    constant.start_leak(2.0)
    constant.set_pump_speed_command(0.0)
    constant.advance(30.0)
    assert constant.truth().leak_rate_lpm == pytest.approx(2.0)


def test_hardware_throttling_time_is_counted() -> None:
    plant = settled(1.0)
    assert plant.truth().hardware_throttle_s == 0.0
    plant.fail_pump()
    plant.advance(30.0)
    truth = plant.truth()
    assert all(truth.hardware_throttling)
    assert 20.0 < truth.hardware_throttle_s < 30.0
    plant.restore_pump()
    plant.advance(60.0)
    assert not any(plant.truth().hardware_throttling)
    assert plant.truth().hardware_throttle_s == pytest.approx(truth.hardware_throttle_s, abs=3.0)


def test_sensor_lags_come_back_from_a_plants_own_fields() -> None:
    """The MPC's step test rebuilds a scenario's plant from its fields: the lags' pairs too."""
    params = PlantParams.from_dict({"sensor_lag_s": {"supply_temperature": 20.0}})
    again = PlantParams.from_dict({"sensor_lag_s": params.sensor_lag_s})
    assert again.sensor_lag_s == (("supply_temperature", 20.0),)
