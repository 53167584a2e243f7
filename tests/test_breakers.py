"""Budgets that respect breakers and feeds: every branch circuit carries at most its derated
rating and every feed at most what it may, even with the other feed lost, as well as the rack
budget; the ratings come from the config or from the PDU."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coolctl.config import ConfigError, parse_config
from coolctl.control.powercap import (
    AllocatorConfig,
    Circuit,
    PowerCapAllocator,
    ServerCap,
    fit_circuits,
)
from coolctl.model import PointId, Quality, Reading, Snapshot
from coolctl.rack.circuits import rack_circuits

RACK = "r01"
TOL = 1e-6


def server(name: str, min_w: float = 500.0, max_w: float = 3000.0) -> ServerCap:
    return ServerCap(
        name=name,
        power=PointId(RACK, name, "power"),
        limit=PointId(RACK, name, "power_limit"),
        min_cap_w=min_w,
        max_cap_w=max_w,
    )


SERVERS = tuple(server(f"s{i}") for i in range(4))
BRANCH_W = 0.8 * 20.0 * 230.0  # a 20 A breaker, derated: 3680 W


def branches(rating: PointId | None = None) -> tuple[Circuit, ...]:
    """Feed A branch 1 feeds s0, s1; branch 2 feeds s2, s3; feed B mirrors it."""
    return tuple(
        Circuit(f"pdu{feed} branch {b}", members, BRANCH_W, rating=rating)
        for feed in ("a", "b")
        for b, members in ((1, ("s0", "s1")), (2, ("s2", "s3")))
    )


def snap(now: float, powers: Mapping[str, float], extra: Sequence[Reading] = ()) -> Snapshot:
    readings = [
        Reading(PointId(RACK, name, "power"), watts, now, Quality.GOOD)
        for name, watts in powers.items()
    ]
    return Snapshot([*readings, *extra], now)


def caps_of(allocator: PowerCapAllocator) -> dict[str, float]:
    assert allocator.allocation is not None
    return dict(allocator.allocation.caps)


def busy(now: float) -> Snapshot:
    return snap(now, {s.name: 2900.0 for s in SERVERS})


def test_branches_lower_caps_that_the_budget_alone_would_allow() -> None:
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, circuits=branches()))
    allocator.step(busy(0.0), 0.0, budget_w=100_000.0)
    caps = caps_of(allocator)
    # each branch carries both its servers' caps on its own when the other feed is lost
    assert caps["s0"] + caps["s1"] <= BRANCH_W + TOL
    assert caps["s0"] == pytest.approx(BRANCH_W / 2)  # equal servers, equal caps
    assert "lowered to fit" in allocator.allocation.reason  # type: ignore[union-attr]


def test_no_budget_still_respects_the_breakers() -> None:
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, circuits=branches()))
    allocator.step(busy(0.0), 0.0, budget_w=None)
    caps = caps_of(allocator)
    assert caps["s2"] + caps["s3"] <= BRANCH_W + TOL


def test_a_tighter_budget_is_still_met() -> None:
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, circuits=branches()))
    allocator.step(busy(0.0), 0.0, budget_w=4000.0)
    assert sum(caps_of(allocator).values()) <= 4000.0 + TOL


def test_a_feed_rating_binds_across_its_branches() -> None:
    feed = Circuit("feed a", tuple(s.name for s in SERVERS), 0.8 * 6000.0)
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, circuits=(*branches(), feed)))
    allocator.step(busy(0.0), 0.0, budget_w=100_000.0)
    assert sum(caps_of(allocator).values()) <= 4800.0 + TOL


def test_minimums_over_a_breaker_are_infeasible_and_held_at_minimum() -> None:
    tiny = Circuit("pdua branch 1", ("s0", "s1"), 800.0)  # less than the two minimums
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, circuits=(tiny,)))
    allocator.step(busy(0.0), 0.0, budget_w=100_000.0)
    allocation = allocator.allocation
    assert allocation is not None and not allocation.feasible
    assert allocation.caps["s0"] == 500.0 and allocation.caps["s1"] == 500.0
    assert allocation.caps["s2"] == 3000.0  # others untouched


def test_a_rating_the_pdu_reports_lowers_the_limit_and_is_held_through_gaps() -> None:
    rating = PointId(RACK, "pdua", "branch_rating.1")
    circuit = Circuit("pdua branch 1", ("s0", "s1"), None, rating=rating)
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, circuits=(circuit,)))
    allocator.step(busy(0.0), 0.0, budget_w=100_000.0)  # no rating known yet: not enforced
    assert caps_of(allocator)["s0"] == 3000.0
    assert "not enforced" in allocator.allocation.reason  # type: ignore[union-attr]
    reported = Reading(rating, 16.0, 1.0, Quality.GOOD)
    allocator.step(snap(1.0, {s.name: 2900.0 for s in SERVERS}, [reported]), 1.0, 100_000.0)
    limit = 0.8 * 16.0 * 230.0
    assert caps_of(allocator)["s0"] + caps_of(allocator)["s1"] <= limit + TOL
    allocator.step(busy(2.0), 2.0, budget_w=100_000.0)  # the rating went stale: still held
    assert caps_of(allocator)["s0"] + caps_of(allocator)["s1"] <= limit + TOL


def test_held_caps_never_break_a_breaker() -> None:
    """The deadband holds small changes back; not when holding would overload a branch."""
    allocator = PowerCapAllocator(
        AllocatorConfig(RACK, SERVERS, circuits=branches(), cap_deadband_w=200.0)
    )
    allocator.step(busy(0.0), 0.0, budget_w=100_000.0)
    narrower = tuple(
        Circuit(c.name, c.servers, c.limit_w - 100.0 if c.limit_w else None) for c in branches()
    )
    allocator.config = AllocatorConfig(RACK, SERVERS, circuits=narrower, cap_deadband_w=200.0)
    allocator.step(busy(1.0), 1.0, budget_w=100_000.0)
    caps = caps_of(allocator)
    assert caps["s0"] + caps["s1"] <= BRANCH_W - 100.0 + TOL


@pytest.mark.parametrize("branch_w", [BRANCH_W, 3400.0 - 1e-6])
def test_a_small_fall_held_by_the_deadband_stays_held_under_a_breaker_it_fits(
    branch_w: float,
) -> None:
    """A held cap is sent only when the branch it is on would be over its limit: not when the
    branch has room, nor when it is at its limit to within the float slack (1e-6 W)."""
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, cap_deadband_w=200.0))
    allocator.step(busy(0.0), 0.0, budget_w=7600.0)  # 800 W kept back: caps at 1700 W
    assert set(caps_of(allocator).values()) == {1700.0}
    fitting = tuple(Circuit(c.name, c.servers, branch_w) for c in branches())
    allocator.config = AllocatorConfig(RACK, SERVERS, circuits=fitting, cap_deadband_w=200.0)
    # a budget 100 W lower: shares of 1675 W, 25 W under the caps, inside the deadband
    assert allocator.step(busy(1.0), 1.0, budget_w=7500.0) == []
    assert set(caps_of(allocator).values()) == {1700.0}


def test_a_budget_short_of_the_minimums_by_the_float_slack_is_feasible() -> None:
    """Sums of watts are compared with a 1e-6 W slack: minimums that miss the budget by no
    more than that are feasible, and no `power_budget_infeasible` is raised for rounding."""
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS))
    allocator.step(busy(0.0), 0.0, budget_w=4 * 500.0 - 1e-6)
    assert allocator.allocation is not None and allocator.allocation.feasible
    assert all(event.kind != "power_budget_infeasible" for event in allocator.events)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    caps=st.lists(st.floats(500.0, 3000.0), min_size=4, max_size=4),
    limits=st.lists(st.floats(0.0, 8000.0), min_size=1, max_size=5),
    members=st.lists(st.sets(st.integers(0, 3), min_size=1), min_size=5, max_size=5),
)
def test_fitted_caps_fit_every_circuit_that_can_be_fitted(
    caps: list[float], limits: list[float], members: list[set[int]]
) -> None:
    circuits = [
        (Circuit(f"c{k}", tuple(f"s{i}" for i in sorted(members[k])), limit), limit)
        for k, limit in enumerate(limits)
    ]
    fitted, _, short = fit_circuits(SERVERS, caps, circuits)
    for value, before, s in zip(fitted, caps, SERVERS, strict=True):
        assert s.min_cap_w - TOL <= value <= before + TOL  # caps only fall, never below minimum
    for circuit, limit in circuits:
        total = math.fsum(fitted[int(name[1:])] for name in circuit.servers)
        if circuit.name not in short:
            assert total <= limit + 1e-3


CONFIG = """
[racks.r01]
power_budget_w = 20000.0
[racks.r01.power]
derating = 0.8
feed_rating_w = 11000.0
[racks.r01.devices.pdua]
driver = "snmp"
address = "127.0.0.1"
profile = "apc-rpdu2"
version = "2c"
community_file = "{secret}"
feed = "a"
branch_rating_a = 20.0
branch_ratings_a = {{ "2" = 16.0 }}
[racks.r01.devices.pdub]
driver = "snmp"
address = "127.0.0.1"
profile = "raritan-pdu2"
version = "2c"
community_file = "{secret}"
feed = "b"
branch_rating_a = 20.0
"""


def server_table(name: str, branches: str) -> str:
    return f"""
[racks.r01.devices.{name}]
driver = "redfish"
kind = "server"
url = "https://127.0.0.1:1"
username = "admin"
password_file = "/dev/null"
cap_max_w = 3000.0
branches = {branches}
"""


def test_circuits_come_from_the_config(tmp_path: Path) -> None:
    text = CONFIG.format(secret=tmp_path / "c")
    text += server_table("s0", '["pdua/1", "pdub/1"]')
    text += server_table("s1", '["pdua/2", "pdub/1"]')
    config = parse_config(tomllib.loads(text))
    circuits = {c.name: c for c in rack_circuits(config.racks["r01"])}
    assert circuits["pdua branch 1"].limit_w == pytest.approx(0.8 * 20 * 230)
    assert circuits["pdua branch 2"].limit_w == pytest.approx(0.8 * 16 * 230)
    assert circuits["pdub branch 1"].servers == ("s0", "s1")
    assert circuits["feed a"].servers == ("s0", "s1")
    assert circuits["feed b"].limit_w == pytest.approx(0.8 * 11000.0)
    assert circuits["pdua branch 1"].rating == PointId("r01", "pdua", "branch_rating.1")


def test_a_branch_on_something_else_than_an_snmp_pdu_is_refused(tmp_path: Path) -> None:
    text = CONFIG.format(secret=tmp_path / "c") + server_table("s0", '["cdu/1"]')
    with pytest.raises(ConfigError, match="branches"):
        parse_config(tomllib.loads(text))


def test_a_lost_psu_and_a_discharging_bbu_are_events() -> None:
    psu = PointId(RACK, "shelves", "psu_ok")
    bbu = PointId(RACK, "shelves", "bbu_discharging")
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, source_alarms=(psu, bbu)))

    def step(now: float, psu_ok: float, discharging: float) -> list[str]:
        readings = [
            Reading(psu, psu_ok, now, Quality.GOOD),
            Reading(bbu, discharging, now, Quality.GOOD),
        ]
        allocator.step(snap(now, {s.name: 2000.0 for s in SERVERS}, readings), now, 50_000.0)
        return [e.kind for e in allocator.drain_events() if e.kind != "power_budget"]

    assert step(0.0, 1.0, 0.0) == []  # all well from the start: nothing to say
    assert step(1.0, 0.0, 0.0) == ["psu_lost"]
    assert step(2.0, 0.0, 1.0) == ["bbu_discharging"]
    assert step(3.0, 0.0, 1.0) == []  # once per change
    assert step(4.0, 1.0, 0.0) == ["psu_restored", "bbu_discharge_ended"]


def test_two_feeds_meter_the_rack_together() -> None:
    """A rack on two PDUs draws their sum: the load no cap governs is that sum less the
    servers, and a feed whose PDU reads nothing leaves the last figure held."""
    feed_a, feed_b = PointId(RACK, "pdua", "power"), PointId(RACK, "pdub", "power")
    config = AllocatorConfig(
        RACK, SERVERS, non_server_power=feed_a, more_rack_power=(feed_b,), overhead_w=100.0
    )
    allocator = PowerCapAllocator(config)
    servers = {s.name: 2000.0 for s in SERVERS}  # 8 kW of servers
    meters = [
        Reading(feed_a, 4500.0, 0.0, Quality.GOOD),
        Reading(feed_b, 4500.0, 0.0, Quality.GOOD),
    ]
    allocator.step(snap(0.0, servers, meters), 0.0, budget_w=9000.0)
    allocation = allocator.allocation
    assert allocation is not None and allocation.available_w == pytest.approx(9000.0 - 1000.0)
    stale = [
        Reading(feed_a, 4500.0, 1.0, Quality.GOOD),
        Reading(feed_b, 4500.0, 1.0, Quality.STALE),
    ]
    allocator.step(snap(1.0, servers, stale), 1.0, budget_w=9000.0)
    assert allocator.allocation is not None
    assert allocator.allocation.available_w == pytest.approx(8000.0)  # held
    assert "pdub/power not good" in allocator.allocation.reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.floats(3000.0, 20_000.0),  # budget
            st.lists(st.floats(0.0, 3200.0), min_size=4, max_size=4),  # server powers
            st.floats(2000.0, 8000.0),  # branch limit this step (a PDU's rating moving)
        ),
        min_size=1,
        max_size=12,
    ),
    deadband=st.sampled_from([0.0, 50.0, 300.0]),
)
def test_every_step_keeps_every_breaker_and_the_budget(
    steps: list[tuple[float, list[float], float]], deadband: float
) -> None:
    """Whatever the budget, the loads and the ratings do from step to step (held caps and paced
    rises included), the caps in force fit every circuit and the budget whenever they can."""
    rating = PointId(RACK, "pdua", "branch_rating.1")
    circuits = (
        Circuit("pdua branch 1", ("s0", "s1"), None, rating=rating, derating=1.0, voltage_v=1.0),
        Circuit("pdua branch 2", ("s2", "s3"), BRANCH_W),
    )
    allocator = PowerCapAllocator(
        AllocatorConfig(
            RACK, SERVERS, circuits=circuits, cap_deadband_w=deadband, release_rate_w_per_s=5000.0
        )
    )
    for now, (budget, powers, limit) in enumerate(steps):
        readings = [Reading(rating, limit, float(now), Quality.GOOD)]
        powers_by = {s.name: p for s, p in zip(SERVERS, powers, strict=True)}
        allocator.step(snap(float(now), powers_by, readings), float(now), budget)
        allocation = allocator.allocation
        assert allocation is not None
        caps = allocation.caps
        if allocation.feasible:
            assert caps["s0"] + caps["s1"] <= limit + 1e-3
            assert caps["s2"] + caps["s3"] <= BRANCH_W + 1e-3
            assert sum(caps.values()) <= budget + 1e-3
        for s in SERVERS:
            assert s.min_cap_w - 1e-6 <= caps[s.name] <= s.max_cap_w + 1e-6


def test_a_fractional_rating_is_a_rating_and_zero_is_none() -> None:
    """A branch rated 0.5 A (a reading in the wrong unit, say) binds as it reads; 0 A is no
    rating at all (the breaker is left out)."""
    rating = PointId(RACK, "pdua", "branch_rating.1")
    circuit = Circuit("pdua branch 1", ("s0", "s1"), None, rating=rating)
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, circuits=(circuit,)))
    zero = Reading(rating, 0.0, 0.0, Quality.GOOD)
    allocator.step(snap(0.0, {s.name: 2900.0 for s in SERVERS}, [zero]), 0.0, 100_000.0)
    assert "not enforced" in allocator.allocation.reason  # type: ignore[union-attr]
    half = Reading(rating, 0.5, 1.0, Quality.GOOD)
    allocator.step(snap(1.0, {s.name: 2900.0 for s in SERVERS}, [half]), 1.0, 100_000.0)
    assert "not enforced" not in allocator.allocation.reason  # type: ignore[union-attr]


def test_a_source_alarm_point_of_another_kind_does_not_hide_the_ones_after_it() -> None:
    other = PointId(RACK, "shelves", "fan_ok")  # no source alarm coolctl knows
    psu = PointId(RACK, "shelves", "psu_ok")
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS, source_alarms=(other, psu)))
    readings = [Reading(other, 0.0, 0.0, Quality.GOOD), Reading(psu, 0.0, 0.0, Quality.GOOD)]
    allocator.step(snap(0.0, {s.name: 2000.0 for s in SERVERS}, readings), 0.0, 50_000.0)
    assert "psu_lost" in [e.kind for e in allocator.drain_events()]


def test_the_first_allocation_without_a_budget_says_so() -> None:
    allocator = PowerCapAllocator(AllocatorConfig(RACK, SERVERS))
    allocator.step(busy(0.0), 0.0, budget_w=None)
    assert [e.kind for e in allocator.drain_events()] == ["power_budget"]
