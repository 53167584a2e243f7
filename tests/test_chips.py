"""Servers that throttle, and chips near it, from the BMCs' readings (coolctl.rack.chips):
states, one event per change, and what status and top are given."""

from __future__ import annotations

from coolctl.config import load_config
from coolctl.model import PointId, Quality, Reading, Snapshot
from coolctl.rack.chips import ChipWatch
from coolctl.tools.demo import builtin_config_path

RACK = load_config(builtin_config_path()).racks["r01"]


def snapshot(chips: dict[str, float], throttle: float | None = 87.0) -> Snapshot:
    readings = []
    for device, value in chips.items():
        readings.append(
            Reading(PointId("r01", device, "chip_temperature"), value, 0.0, Quality.GOOD)
        )
        if throttle is not None:
            readings.append(
                Reading(
                    PointId("r01", device, "chip_throttle_temperature"), throttle, 0.0, Quality.GOOD
                )
            )
    return Snapshot(readings, 0.0)


def test_states_and_one_event_per_change() -> None:
    watch = ChipWatch(RACK)
    assert len(watch.servers) == 18
    assert watch.step(snapshot({"bmc01": 70.0, "bmc02": 70.0}), 0.0) == []  # unknown -> ok
    events = watch.step(snapshot({"bmc01": 83.0, "bmc02": 70.0}), 1.0)
    assert [(e.kind, e.severity.value) for e in events] == [("chip_near_throttle", "warning")]
    assert "bmc01's chips are within 5 K of throttling: chip 83.0 °C, throttles at 87" in (
        events[0].message
    )
    assert watch.step(snapshot({"bmc01": 84.0, "bmc02": 70.0}), 2.0) == []  # no change
    events = watch.step(snapshot({"bmc01": 86.9, "bmc02": 70.0}), 3.0)
    assert [e.kind for e in events] == ["server_throttling"]
    assert watch.throttling == ("bmc01",) and watch.near == ()
    summary = watch.summary()
    assert summary["throttling"] == ["bmc01"] and summary["hottest_c"] == 86.9
    assert (
        summary["throttle_margin_c"] is not None and abs(summary["throttle_margin_c"] - 0.1) < 1e-9
    )
    assert watch.step(snapshot({"bmc01": 87.0, "bmc02": 70.0}), 4.0) == []
    events = watch.step(snapshot({"bmc01": 75.0, "bmc02": 70.0}), 5.0)
    assert [e.kind for e in events] == ["chip_throttle_cleared"]
    assert "bmc01 no longer throttling" in events[0].message
    # a BMC that stops answering leaves its server unknown, quietly
    assert watch.step(snapshot({"bmc02": 70.0}), 6.0) == []
    assert watch.states["bmc01"].state == "unknown"


def test_without_a_bmc_threshold_nothing_is_guessed() -> None:
    watch = ChipWatch(RACK)  # the demo rack sets no chip_limit_c to stand in
    assert watch.step(snapshot({"bmc01": 95.0}, throttle=None), 0.0) == []
    assert watch.states["bmc01"].state == "unknown"
