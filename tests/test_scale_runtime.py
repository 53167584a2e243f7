"""What lets one daemon hold a row of racks: racks spread across the period, the tick lateness
it reports, a telemetry store indexed by rack, and /metrics rendered in slices that give the
same bytes as prometheus_client's own rendering."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import warnings
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from coolctl.config import Config, load_config
from coolctl.daemon.metrics import DaemonMetrics, exposition
from coolctl.daemon.runtime import Daemon, ScheduleStats, rack_phases, run_periodic
from coolctl.daemon.telemetry import TelemetryStore
from coolctl.model import PointId, Quality, Reading

CONFIG = Path(__file__).parent / "configs" / "hil-rack.toml"


def row(racks: int) -> Config:
    """The HIL rack, `racks` times over (r01, r02, ...): a row as the daemon would run it."""
    config = load_config(CONFIG)
    rack = config.racks["r01"]
    copies = {
        f"r{index:02d}": dataclasses.replace(rack, id=f"r{index:02d}")
        for index in range(1, racks + 1)
    }
    return dataclasses.replace(config, racks=copies)


def test_racks_are_spread_evenly_across_the_period_in_config_order() -> None:
    config = row(4)
    period = config.racks["r01"].control_period_s
    assert rack_phases(config) == pytest.approx(
        {"r01": 0.0, "r02": period / 4, "r03": period / 2, "r04": 3 * period / 4}
    )
    assert rack_phases(row(1)) == {"r01": 0.0}


@pytest.mark.asyncio
async def test_the_grid_starts_one_phase_later_and_lateness_counts_from_it() -> None:
    # A clock that moves only when read: the start; the first run's start and end; the time
    # to sleep until (past the next due time, so no real waiting); the second run's start.
    readings = iter([100.0, 100.5, 100.6, 111.0, 111.0])
    stats = ScheduleStats()
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise asyncio.CancelledError  # as the daemon's stop() would

    with pytest.raises(asyncio.CancelledError):
        await run_periodic(10.0, work, stats, lambda: next(readings), phase_s=0.01)
    # due at 100.01 (the start plus the phase), started at 100.5: 0.49 s late; the phase
    # itself is no lateness
    assert stats.runs == 1
    assert list(stats.lateness_s) == [pytest.approx(0.49)]
    assert stats.missed == 0


def test_early_wake_ups_are_not_lateness_and_only_recent_runs_count() -> None:
    stats = ScheduleStats()
    stats.record(0.01, -0.002)
    assert stats.recent_max_lateness_s == 0.0
    stats.record(0.01, 0.3)
    for _ in range(stats.lateness_s.maxlen or 0):
        stats.record(0.01, 0.001)
    assert stats.recent_max_lateness_s == pytest.approx(0.001)


def filled(daemon: Daemon, now: float) -> None:
    """Every configured point of every device read once, good."""
    daemon.store.update(
        Reading(PointId(rack, device, name), 1.0 + index, now, Quality.GOOD)
        for (rack, device), handle in daemon.devices.items()
        for index, name in enumerate(handle.point_names)
    )


def daemon_only(daemon: Daemon) -> tuple[CollectorRegistry, DaemonMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    return registry, DaemonMetrics(daemon, registry)


def test_tick_lateness_is_exported_per_rack() -> None:
    daemon = Daemon(row(2))
    daemon.racks["r02"].tick_stats.record(0.002, 0.25)
    registry, _ = daemon_only(daemon)
    text = generate_latest(registry).decode()
    lateness = {
        sample.labels["rack"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "coolctl_control_tick_lateness_seconds"
    }
    assert lateness == {"r01": 0.0, "r02": 0.25}


@pytest.mark.asyncio
async def test_sliced_exposition_gives_prometheus_clients_bytes_as_qualities_change() -> None:
    daemon = Daemon(row(3))
    now = daemon.clock()
    filled(daemon, now)
    registry, _ = daemon_only(daemon)
    for quality in itertools.islice(itertools.cycle(Quality), 5):
        # one point changes quality between scrapes: its cached lines must follow
        point = PointId("r02", "cdu1", "flow")
        daemon.store.update([Reading(point, None, now, quality)])
        body, content_type = await exposition(registry)
        assert content_type.startswith("text/plain")
        assert body == generate_latest(registry)
        assert f'point="flow",quality="{quality.value}",rack="r02"}} 1.0'.encode() in body


@pytest.mark.asyncio
async def test_openmetrics_scrapes_end_with_one_eof() -> None:
    daemon = Daemon(row(1))
    filled(daemon, daemon.clock())
    registry, _ = daemon_only(daemon)
    body, content_type = await exposition(registry, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    assert body == generate_openmetrics(registry)
    assert body.count(b"# EOF\n") == 1 and body.endswith(b"# EOF\n")
    names = {family.name for family in openmetrics_families(body.decode())}
    assert "coolctl_point_quality" in names


def test_the_store_serves_each_rack_its_own_points() -> None:
    store = TelemetryStore()
    store.register_device("r01", "cdu1", stale_after_s=1.0)
    store.register_device("r02", "cdu1", stale_after_s=1.0)
    flow1, flow2 = PointId("r01", "cdu1", "flow"), PointId("r02", "cdu1", "flow")
    store.update(
        [Reading(flow1, 160.0, 10.0, Quality.GOOD), Reading(flow2, 150.0, 10.0, Quality.GOOD)]
    )
    assert [r.point for r in store.readings(10.5, "r01")] == [flow1]
    assert [r.point for r in store.readings(10.5)] == [flow1, flow2]
    assert store.snapshot(10.5, "r02").value(flow2) == 150.0
    assert store.snapshot(10.5, "r02").value(flow1) is None
    assert store.current(flow1, 12.0).quality is Quality.STALE  # older than stale_after_s
    assert store.readings(10.5, "r03") == []


@pytest.mark.asyncio
async def test_a_task_cancelled_before_its_first_step_leaves_no_unawaited_coroutine() -> None:
    daemon = Daemon(row(1))
    started: list[bool] = []

    async def work() -> None:
        started.append(True)

    tasks: list[asyncio.Task[None]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        daemon._spawn(tasks, work(), "never started")
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()  # the last reference to the task, and through it to the coroutine,
        for _ in range(3):  # once the loop has run the task's callbacks
            await asyncio.sleep(0)
        gc.collect()
    assert not started
    assert not [w for w in caught if "never awaited" in str(w.message)]
