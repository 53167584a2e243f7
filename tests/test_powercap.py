"""Power-cap allocation: the caps always fit the budget, within every server's bounds, the most
important servers first, unused headroom given back, falls at once and rises paced."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coolctl.control.powercap import (
    CHANGE_THRESHOLD_W,
    Allocation,
    AllocatorConfig,
    PowerCapAllocator,
    ServerCap,
    Want,
    water_fill,
)
from coolctl.model import Command, PointId, Quality, Reading, Severity, Snapshot, Source

RACK = "r01"
PDU = PointId(RACK, "pdu1", "power")
TOL = 1e-6  # watts; the allocator's own float slack is far below this

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def server(
    name: str,
    min_w: float = 1500.0,
    max_w: float = 7000.0,
    priority: int = 0,
    weight: float = 1.0,
) -> ServerCap:
    return ServerCap(
        name=name,
        power=PointId(RACK, name, "power"),
        limit=PointId(RACK, name, "power_limit"),
        min_cap_w=min_w,
        max_cap_w=max_w,
        priority=priority,
        weight=weight,
    )


def rack(servers: Sequence[ServerCap], **overrides: object) -> AllocatorConfig:
    return replace(AllocatorConfig(RACK, tuple(servers)), **overrides)  # type: ignore[arg-type]


Power = float | None | tuple[float, Quality]  # None: no reading at all


def snapshot(
    now: float,
    servers: Sequence[ServerCap],
    powers: Mapping[str, Power],
    limits: Mapping[str, float] | None = None,
    pdu: float | None = None,
) -> Snapshot:
    """Readings as the telemetry store gives them: `powers` per server (a bare number is a
    good reading), `limits` the caps read back, `pdu` the rack's measured power."""
    readings = []
    by_name = {s.name: s for s in servers}
    for name, power in powers.items():
        if power is None:
            continue
        value, quality = power if isinstance(power, tuple) else (power, Quality.GOOD)
        readings.append(Reading(by_name[name].power, value, now, quality))
    for name, limit in (limits or {}).items():
        readings.append(Reading(by_name[name].limit, limit, now, Quality.GOOD))
    if pdu is not None:
        readings.append(Reading(PDU, pdu, now, Quality.GOOD))
    return Snapshot(readings, now)


def good_power(power: Power) -> float | None:
    if power is None or isinstance(power, tuple):
        return None
    return power


def caps_of(commands: Sequence[Command]) -> dict[str, float]:
    return {command.point.device: command.value for command in commands}


def the(allocation: Allocation | None) -> Allocation:
    assert allocation is not None
    return allocation


# -- random racks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A rack, what its servers draw and what their BMCs read back, and its budget terms."""

    servers: tuple[ServerCap, ...]
    powers: dict[str, Power]
    limits: dict[str, float]
    ratio: float
    margin_w: float
    overhead_w: float
    budget_w: float

    def config(self, **overrides: object) -> AllocatorConfig:
        fields: dict[str, object] = {
            "margin_w": self.margin_w,
            "overhead_w": self.overhead_w,
            "demand_headroom_ratio": self.ratio,
        }
        fields.update(overrides)
        return rack(self.servers, **fields)

    def snapshot(self, now: float = 0.0) -> Snapshot:
        return snapshot(now, self.servers, self.powers, self.limits)

    def available(self, budget_w: float | None = None) -> float:
        budget = self.budget_w if budget_w is None else budget_w
        return budget - self.margin_w - self.overhead_w

    def cap_in_force(self, s: ServerCap) -> float:
        """What the allocator should take as the cap in force: the read-back one, else max."""
        cap = self.limits.get(s.name, s.max_cap_w)
        return min(max(cap, s.min_cap_w), s.max_cap_w)

    @property
    def min_sum(self) -> float:
        return math.fsum(s.min_cap_w for s in self.servers)

    @property
    def max_sum(self) -> float:
        return math.fsum(s.max_cap_w for s in self.servers)


_quality = st.sampled_from([Quality.STALE, Quality.BAD])


@st.composite
def server_draws(draw: st.DrawFn, name: str) -> tuple[ServerCap, Power, float | None]:
    min_w = draw(st.floats(0.0, 3000.0))
    max_w = min_w + draw(st.floats(0.0, 8000.0))
    s = server(
        name,
        min_w=min_w,
        max_w=max_w,
        priority=draw(st.integers(-2, 2)),
        weight=draw(st.floats(0.1, 10.0)),
    )
    fraction = st.floats(0.0, 1.2)
    power: Power = draw(
        st.one_of(
            fraction.map(lambda f: f * max_w),
            st.none(),
            st.tuples(fraction.map(lambda f: f * max_w), _quality),
        )
    )
    limit = draw(st.one_of(st.none(), st.floats(0.0, 1.1).map(lambda f: f * max_w)))
    return s, power, limit


@st.composite
def cases(draw: st.DrawFn, max_servers: int = 256) -> Case:
    # Half the racks small, where the corner cases are dense; half anywhere up to the maximum.
    count = draw(st.one_of(st.integers(1, 8), st.integers(1, max_servers)))
    drawn = [draw(server_draws(f"bmc{i:03d}")) for i in range(count)]
    servers = tuple(s for s, _, _ in drawn)
    powers = {s.name: p for s, p, _ in drawn}
    limits = {s.name: limit for s, _, limit in drawn if limit is not None}
    margin = draw(st.floats(0.0, 5000.0))
    overhead = draw(st.floats(0.0, 5000.0))
    max_sum = math.fsum(s.max_cap_w for s in servers)
    budget = draw(st.floats(-0.1, 1.5)) * max_sum + margin + overhead
    ratio = draw(st.floats(0.01, 0.5))
    return Case(servers, powers, limits, ratio, margin, overhead, budget)


def allocate_once(case: Case, budget_w: float | None, **overrides: object) -> Allocation:
    allocator = PowerCapAllocator(case.config(**overrides))
    allocator.step(case.snapshot(), 0.0, budget_w)
    return the(allocator.allocation)


# -- properties ------------------------------------------------------------------------------


# Each rule is a check over one allocation; one test runs them all on the same random racks,
# because drawing a rack of up to 256 servers costs far more than allocating for it.


def check_caps_fit_within_bounds_or_all_sit_at_minimum(case: Case, allocation: Allocation) -> None:
    available = case.available()
    caps = allocation.caps
    assert allocation.available_w == pytest.approx(available)
    assert allocation.allocated_w == pytest.approx(math.fsum(caps.values()))
    assert allocation.feasible == (case.min_sum <= available + TOL)
    if allocation.feasible:
        assert math.fsum(caps.values()) <= available + TOL
        for s in case.servers:
            assert s.min_cap_w <= caps[s.name] <= s.max_cap_w
        # Work-conserving: the caps take all that is available, or every cap is at its max.
        assert math.fsum(caps.values()) == pytest.approx(
            min(available, case.max_sum), rel=1e-9, abs=TOL
        )
    else:
        assert all(caps[s.name] == s.min_cap_w for s in case.servers)
        assert "budget cannot be met" in allocation.reason


def check_demand_is_judged_against_the_cap_in_force(case: Case, allocation: Allocation) -> None:
    if not allocation.feasible:
        assert allocation.wants == {}
        return
    for s in case.servers:
        measured = good_power(case.powers[s.name])
        if measured is None:
            expected = Want.UNKNOWN
        elif measured >= (1.0 - case.ratio) * case.cap_in_force(s):
            expected = Want.MORE
        else:
            expected = Want.RELEASED
        assert allocation.wants[s.name] is expected


def held_back(case: Case, allocation: Allocation) -> list[ServerCap]:
    """Servers that want more and are below their maximum."""
    caps, wants = allocation.caps, allocation.wants
    return [
        s
        for s in case.servers
        if wants.get(s.name) is Want.MORE and caps[s.name] < s.max_cap_w - TOL
    ]


def check_lower_priorities_wait_for_higher_ones(case: Case, allocation: Allocation) -> None:
    for high in held_back(case, allocation):
        for low in case.servers:
            if low.priority < high.priority:
                assert allocation.caps[low.name] <= low.min_cap_w + TOL


def check_unused_headroom_goes_back(case: Case, allocation: Allocation) -> None:
    """While anyone is held back, nobody else keeps more than its use plus headroom."""
    if not held_back(case, allocation):
        return
    caps, wants, r = allocation.caps, allocation.wants, case.ratio
    for s in case.servers:
        measured = good_power(case.powers[s.name])
        if wants[s.name] is Want.RELEASED:
            assert measured is not None
            keep = max(s.min_cap_w, measured * (1 + r) / (1 - r), r * s.max_cap_w)
            assert caps[s.name] <= keep + TOL
        elif wants[s.name] is Want.UNKNOWN:
            assert caps[s.name] <= max(s.min_cap_w, case.cap_in_force(s)) + TOL


@settings(PROPERTY, max_examples=120)
@given(cases())
def test_one_allocation_keeps_every_rule(case: Case) -> None:
    allocation = allocate_once(case, case.budget_w)
    check_caps_fit_within_bounds_or_all_sit_at_minimum(case, allocation)
    check_demand_is_judged_against_the_cap_in_force(case, allocation)
    check_lower_priorities_wait_for_higher_ones(case, allocation)
    check_unused_headroom_goes_back(case, allocation)


@PROPERTY
@given(cases(), st.floats(0.0, 1.0))
def test_more_budget_never_lowers_a_cap_and_ample_or_none_means_every_cap_at_max(
    case: Case, more: float
) -> None:
    smaller = allocate_once(case, case.budget_w)
    larger = allocate_once(case, case.budget_w + more * case.max_sum)
    for s in case.servers:
        assert larger.caps[s.name] >= smaller.caps[s.name] - TOL
    ample = allocate_once(case, case.max_sum + case.margin_w + case.overhead_w)
    assert ample.feasible
    assert all(ample.caps[s.name] == pytest.approx(s.max_cap_w) for s in case.servers)
    no_budget = allocate_once(case, None)
    assert no_budget.feasible and no_budget.available_w is None
    assert all(no_budget.caps[s.name] == s.max_cap_w for s in case.servers)


@PROPERTY
@given(cases(max_servers=32), st.floats(0.0, 20000.0))
def test_non_server_load_is_measured_from_the_rack_pdu(case: Case, extra: float) -> None:
    measured = math.fsum(p for p in map(good_power, case.powers.values()) if p is not None)
    allocator = PowerCapAllocator(case.config(non_server_power=PDU))
    snap = snapshot(0.0, case.servers, case.powers, case.limits, pdu=measured + extra)
    allocator.step(snap, 0.0, case.budget_w)
    allocation = the(allocator.allocation)
    # overhead_w is the floor of the measured difference (readings taken at different moments)
    available = case.budget_w - case.margin_w - max(extra, case.overhead_w)
    assert allocation.available_w == pytest.approx(available, abs=1e-6)
    if allocation.feasible:
        assert allocation.allocated_w <= available + TOL


@st.composite
def runs(draw: st.DrawFn) -> tuple[Case, list[tuple[float, float | None, dict[str, Power]]]]:
    """A rack and a run of steps: (seconds since the last step, budget, measured powers)."""
    case = draw(cases(max_servers=24))
    steps = []
    for _ in range(draw(st.integers(2, 12))):
        dt = draw(st.floats(0.0, 5.0))
        budget = draw(
            st.one_of(st.none(), st.floats(-0.1, 1.5).map(lambda f: f * case.max_sum + 3000.0))
        )
        powers: dict[str, Power] = {}
        for s in case.servers:
            fraction = draw(st.one_of(st.floats(0.0, 1.2), st.none()))
            powers[s.name] = None if fraction is None else fraction * s.max_cap_w
        steps.append((dt, budget, powers))
    return case, steps


@PROPERTY
@given(runs(), st.one_of(st.none(), st.floats(1.0, 2000.0)))
def test_over_a_run_caps_fit_falls_are_at_once_and_rises_paced(
    run: tuple[Case, list[tuple[float, float | None, dict[str, Power]]]], rate: float | None
) -> None:
    case, steps = run
    allocator = PowerCapAllocator(case.config(release_rate_w_per_s=rate))
    now = 0.0
    before: Mapping[str, float] | None = None
    for dt, budget, powers in steps:
        now += dt
        # The BMCs hold the caps last commanded: an unpaced allocator seeing the same gives
        # the target the paced one must never exceed (beyond the resend threshold).
        limits = dict(before) if before is not None else {}
        snap = snapshot(now, case.servers, powers, limits)
        allocator.step(snap, now, budget)
        allocation = the(allocator.allocation)
        target = PowerCapAllocator(case.config())
        target.step(snap, now, budget)
        targets = the(target.allocation).caps
        for s in case.servers:
            cap = allocation.caps[s.name]
            assert s.min_cap_w <= cap <= s.max_cap_w
            assert cap <= targets[s.name] + CHANGE_THRESHOLD_W + TOL
            if rate is not None and before is not None:
                assert cap <= max(before[s.name], s.min_cap_w) + rate * dt + TOL
        if budget is not None and allocation.feasible:
            available = budget - case.margin_w - case.overhead_w
            assert allocation.allocated_w <= available + TOL
        before = allocation.caps


@PROPERTY
@given(runs(), st.one_of(st.none(), st.floats(1.0, 2000.0)))
def test_same_inputs_give_the_same_commands_events_and_allocations(
    run: tuple[Case, list[tuple[float, float | None, dict[str, Power]]]], rate: float | None
) -> None:
    case, steps = run

    def replay() -> list[object]:
        allocator = PowerCapAllocator(case.config(release_rate_w_per_s=rate))
        seen: list[object] = []
        now = 0.0
        for dt, budget, powers in steps:
            now += dt
            seen.append(allocator.step(case.snapshot(now), now, budget))
            seen.append(allocator.step(snapshot(now, case.servers, powers), now, budget))
            seen += [allocator.allocation, allocator.drain_events()]
        return seen

    assert replay() == replay()


@PROPERTY
@given(cases(max_servers=48), st.floats(0.0, 1.2))
def test_caps_settle_against_servers_that_obey_them(case: Case, share: float) -> None:
    """Servers draw min(load, cap): after a few steps the caps stop moving (nothing flaps)."""
    loads = {s.name: (good_power(case.powers[s.name]) or 0.0) for s in case.servers}
    budget = case.min_sum + share * (case.max_sum - case.min_sum) + case.overhead_w
    allocator = PowerCapAllocator(case.config(margin_w=0.0))
    caps = {s.name: s.max_cap_w for s in case.servers}
    late: list[Command] = []
    for tick in range(16):
        powers: dict[str, Power] = {name: min(loads[name], cap) for name, cap in caps.items()}
        commands = allocator.step(
            snapshot(float(tick), case.servers, powers, caps), float(tick), budget
        )
        caps.update(caps_of(commands))
        if tick >= 12:
            late += commands
    assert late == []


# -- units -----------------------------------------------------------------------------------


def sixteen_at_full_load(**overrides: object) -> tuple[PowerCapAllocator, list[ServerCap]]:
    servers = [server(f"bmc{i:02d}") for i in range(16)]
    return PowerCapAllocator(rack(servers, **overrides)), servers


def test_budget_drop_to_70_percent_lowers_every_cap_at_once() -> None:
    margin = 1000.0
    allocator, servers = sixteen_at_full_load(margin_w=margin, release_rate_w_per_s=50.0)
    full = 16 * 7000.0
    powers: dict[str, Power] = {s.name: 7000.0 for s in servers}
    allocator.step(snapshot(0.0, servers, powers), 0.0, full + margin)
    assert the(allocator.allocation).caps == {s.name: 7000.0 for s in servers}
    commands = allocator.step(snapshot(1.0, servers, powers), 1.0, 0.7 * full)
    assert len(commands) == 16  # every cap, in the same step, rate limit or not
    assert all(c.source is Source.AUTO for c in commands)
    assert math.fsum(c.value for c in commands) <= 0.7 * full - margin + TOL
    assert all(c.value == pytest.approx((0.7 * full - margin) / 16) for c in commands)
    assert "budget 78400 W, 77400 W for caps" in commands[0].reason


def test_release_rate_holds_rises_but_not_falls() -> None:
    allocator, servers = sixteen_at_full_load(release_rate_w_per_s=100.0)
    full = 16 * 7000.0
    caps = {s.name: 7000.0 for s in servers}

    def step(now: float, budget: float) -> dict[str, float]:
        powers: dict[str, Power] = dict(caps)  # cap-limited: each draws its cap
        caps.update(caps_of(allocator.step(snapshot(now, servers, powers, caps), now, budget)))
        return dict(caps)

    step(0.0, full)
    assert step(1.0, full / 2) == {s.name: 3500.0 for s in servers}  # at once
    assert step(3.0, full) == {s.name: 3700.0 for s in servers}  # 100 W/s for 2 s
    assert "rises held to 100 W/s" in the(allocator.allocation).reason
    assert step(4.0, full) == {s.name: 3800.0 for s in servers}
    assert step(5.0, full / 4) == {s.name: 1750.0 for s in servers}  # at once again
    assert step(100.0, full) == {s.name: 7000.0 for s in servers}


def test_a_restart_paces_rises_from_the_caps_read_back() -> None:
    allocator, servers = sixteen_at_full_load(release_rate_w_per_s=100.0)
    limits = {s.name: 3000.0 for s in servers}
    powers: dict[str, Power] = dict(limits)
    first = allocator.step(snapshot(0.0, servers, powers, limits), 0.0, 16 * 7000.0)
    assert caps_of(first) == limits  # no time has passed: held where the BMCs stand
    second = allocator.step(snapshot(2.0, servers, powers, limits), 2.0, 16 * 7000.0)
    assert caps_of(second) == {s.name: 3200.0 for s in servers}


def test_feasibility_events_come_once_per_change() -> None:
    servers = [server(f"bmc{i}") for i in range(4)]  # minimums sum to 6000 W
    allocator = PowerCapAllocator(rack(servers))
    powers: dict[str, Power] = {s.name: 7000.0 for s in servers}

    def kinds(budget: float, now: float) -> list[tuple[str, Severity]]:
        allocator.step(snapshot(now, servers, powers), now, budget)
        return [(e.kind, e.severity) for e in allocator.drain_events() if e.kind != "power_budget"]

    infeasible = ("power_budget_infeasible", Severity.CRITICAL)
    assert kinds(5000.0, 0.0) == [infeasible]
    allocation = the(allocator.allocation)
    assert not allocation.feasible
    assert allocation.caps == {s.name: 1500.0 for s in servers}  # never below a minimum
    assert "minimum caps sum to 6000 W > budget 5000 W" in allocation.reason
    assert kinds(5000.0, 1.0) == []
    assert kinds(4000.0, 2.0) == []  # still infeasible: no new event
    assert kinds(20000.0, 3.0) == [("power_budget_met", Severity.INFO)]
    assert kinds(20000.0, 4.0) == []
    assert kinds(5500.0, 5.0) == [infeasible]
    assert kinds(6000.0, 6.0) == [("power_budget_met", Severity.INFO)]  # exactly fits


def test_budget_events_on_the_first_budget_and_on_every_change() -> None:
    servers = [server("bmc1")]
    allocator = PowerCapAllocator(rack(servers, margin_w=500.0))
    snap = snapshot(0.0, servers, {"bmc1": 3000.0})
    messages = []
    for now, budget in enumerate([10000.0, 10000.0, 8000.0, None, None, 9000.0]):
        allocator.step(snap, float(now), budget)
        messages += [(e.ts, e.message) for e in allocator.drain_events()]
    assert messages == [
        (0.0, "power budget 10000 W: 9500 W for server caps"),
        (2.0, "power budget 10000 W -> 8000 W: 7500 W for server caps"),
        (3.0, "power budget 8000 W -> none: caps go to their maxima"),
        (5.0, "power budget 9000 W: 8500 W for server caps"),
    ]
    assert allocator.drain_events() == []


def test_an_idle_server_gives_its_headroom_to_a_capped_one() -> None:
    servers = [server("idle"), server("busy")]
    allocator = PowerCapAllocator(rack(servers))
    limits = {"idle": 7000.0, "busy": 6000.0}
    snap = snapshot(0.0, servers, {"idle": 1500.0, "busy": 6000.0}, limits)
    caps = caps_of(allocator.step(snap, 0.0, 8000.0))
    assert caps["idle"] == pytest.approx(1500.0 * 1.1 / 0.9)  # its use plus headroom
    assert caps["busy"] == pytest.approx(8000.0 - 1500.0 * 1.1 / 0.9)
    assert the(allocator.allocation).wants == {"idle": Want.RELEASED, "busy": Want.MORE}


def test_a_released_server_does_not_flap() -> None:
    """One server wants 7 kW, one 3 kW, 9 kW for both: the light one is released once and
    stays released (with a release of only measured × 1.1 it would count as near its cap on
    the next step and its cap would swing every step)."""
    servers = [server("heavy"), server("light")]
    allocator = PowerCapAllocator(rack(servers))
    loads = {"heavy": 7000.0, "light": 3000.0}
    caps = {"heavy": 4500.0, "light": 4500.0}
    history = []
    for tick in range(8):
        powers: dict[str, Power] = {n: min(loads[n], caps[n]) for n in caps}
        commands = allocator.step(snapshot(tick, servers, powers, caps), float(tick), 9000.0)
        caps.update(caps_of(commands))
        history.append(dict(caps))
    assert history[-1]["light"] == pytest.approx(3000.0 * 1.1 / 0.9)
    assert history[-1]["heavy"] == pytest.approx(9000.0 - 3000.0 * 1.1 / 0.9)
    assert all(h == history[-1] for h in history[1:])


def test_a_server_without_a_good_reading_keeps_the_cap_in_force() -> None:
    servers = [server("bmc1"), server("bmc2"), server("bmc3")]
    allocator = PowerCapAllocator(rack(servers))
    limits = {"bmc1": 5000.0, "bmc2": 5000.0, "bmc3": 5000.0}
    powers: dict[str, Power] = {"bmc1": 5000.0, "bmc2": (900.0, Quality.STALE), "bmc3": None}
    caps = caps_of(allocator.step(snapshot(0.0, servers, powers, limits), 0.0, 16000.0))
    # Stale and missing readings are not taken as "idle": their 5 kW are not handed out.
    assert caps == {"bmc1": 6000.0, "bmc2": 5000.0, "bmc3": 5000.0}
    reason = the(allocator.allocation).reason
    assert "power bmc2 stale, bmc3 missing: held at the cap in force" in reason


def test_higher_priority_gets_headroom_first_and_weights_share_it() -> None:
    servers = [
        server("low", priority=0),
        server("high_a", priority=1, weight=1.0),
        server("high_b", priority=1, weight=3.0),
    ]
    allocator = PowerCapAllocator(rack(servers))
    powers: dict[str, Power] = {s.name: 7000.0 for s in servers}
    caps = caps_of(allocator.step(snapshot(0.0, servers, powers), 0.0, 4500.0 + 4000.0))
    assert caps == {"low": 1500.0, "high_a": 2500.0, "high_b": 4500.0}
    allocator = PowerCapAllocator(rack(servers))
    caps = caps_of(allocator.step(snapshot(0.0, servers, powers), 0.0, 16000.0))
    assert caps == {"low": 2000.0, "high_a": 7000.0, "high_b": 7000.0}


def test_non_server_load_falls_back_to_the_last_measured_then_the_allowance() -> None:
    servers = [server("bmc1"), server("bmc2")]
    allocator = PowerCapAllocator(rack(servers, non_server_power=PDU, overhead_w=800.0))
    powers: dict[str, Power] = {"bmc1": 7000.0, "bmc2": 7000.0}
    allocator.step(snapshot(0.0, servers, powers), 0.0, 12000.0)
    assert the(allocator.allocation).available_w == 11200.0  # never measured: the allowance
    allocator.step(snapshot(1.0, servers, powers, pdu=14000.0 + 2000.0), 1.0, 12000.0)
    assert the(allocator.allocation).available_w == 10000.0
    allocator.step(snapshot(2.0, servers, powers), 2.0, 12000.0)
    allocation = the(allocator.allocation)
    assert allocation.available_w == 10000.0
    assert "non-server 2000 W held" in allocation.reason
    allocator.step(snapshot(3.0, servers, powers, pdu=13000.0), 3.0, 12000.0)
    # below Σ servers (the PDU read before the servers' last rise): the allowance is the floor
    assert the(allocator.allocation).available_w == 11200.0


def test_small_moves_are_not_resent_unless_the_caps_would_not_fit() -> None:
    servers = [server("bmc1"), server("bmc2")]
    allocator = PowerCapAllocator(rack(servers))
    powers: dict[str, Power] = {"bmc1": 7000.0, "bmc2": 7000.0}
    assert len(allocator.step(snapshot(0.0, servers, powers), 0.0, 10000.0)) == 2
    assert allocator.step(snapshot(1.0, servers, powers), 1.0, 10001.5) == []  # +0.75 W each
    assert the(allocator.allocation).caps == {"bmc1": 5000.0, "bmc2": 5000.0}
    # -0.75 W each would leave the caps 1.5 W over: sent although under the threshold.
    commands = allocator.step(snapshot(2.0, servers, powers), 2.0, 9998.5)
    assert caps_of(commands) == {"bmc1": 4999.25, "bmc2": 4999.25}


def test_bad_budgets_and_configs_are_refused() -> None:
    allocator = PowerCapAllocator(rack([server("bmc1")]))
    for budget in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="not finite"):
            allocator.step(snapshot(0.0, [], {}), 0.0, budget)
    bad: list[Callable[[], object]] = [
        lambda: server("x", min_w=3000.0, max_w=2000.0),
        lambda: server("x", min_w=-1.0),
        lambda: server("x", weight=0.0),
        lambda: rack([]),
        lambda: rack([server("x"), server("x")]),
        lambda: rack([server("x")], demand_headroom_ratio=0.0),
        lambda: rack([server("x")], release_rate_w_per_s=0.0),
        lambda: rack([server("x")], margin_w=math.nan),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()


def test_water_fill_shares_by_weight_and_stops_at_ceilings() -> None:
    values, left = water_fill([0.0, 0.0, 0.0], [1.0, 10.0, 10.0], [1.0, 1.0, 2.0], 7.0)
    assert values == pytest.approx([1.0, 2.0, 4.0]) and left == 0.0
    values, left = water_fill([0.0, 5.0], [1.0, 6.0], [1.0, 1.0], 5.0)
    assert values == [1.0, 6.0] and left == 3.0


def test_step_cost_for_256_servers(record_property: Callable[[str, object], None]) -> None:
    """Measured, not asserted: the figure goes to the report (pytest -s prints it)."""
    servers = [server(f"bmc{i:03d}", priority=i % 3, weight=1.0 + i % 4) for i in range(256)]
    allocator = PowerCapAllocator(rack(servers, non_server_power=PDU))
    loads = [1500.0 + (i * 37) % 5500 for i in range(256)]
    snaps = [
        snapshot(
            float(t),
            servers,
            {
                s.name: load * (1 + 0.01 * ((t + i) % 3))
                for i, (s, load) in enumerate(zip(servers, loads, strict=True))
            },
            pdu=sum(loads) + 20000.0,
        )
        for t in range(50)
    ]
    runs = 400
    start = time.perf_counter()
    for k in range(runs):
        allocator.step(snaps[k % 50], float(k), 1.2e6 + 1000.0 * (k % 7))
    per_step_us = (time.perf_counter() - start) / runs * 1e6
    record_property("powercap_step_us_256", round(per_step_us, 1))
    print(f"\npowercap step, 256 servers: {per_step_us:.0f} µs")


def test_a_cap_the_supervisor_lowered_is_raised_again_once_it_lets_go() -> None:
    """After a leak or a pump failure the supervisor holds caps at their minimum; the
    allocator is told (applied) and raises them again at the next allocation."""
    servers = [server("bmc1"), server("bmc2")]
    allocator = PowerCapAllocator(rack(servers))
    powers: dict[str, Power] = {"bmc1": 7000.0, "bmc2": 7000.0}
    first = allocator.step(snapshot(0.0, servers, powers), 0.0, 12000.0)
    assert {c.value for c in first} == {6000.0}
    for s in servers:
        allocator.applied(s.limit, 1500.0)  # the supervisor's safety value went out instead
    again = allocator.step(snapshot(1.0, servers, powers), 1.0, 12000.0)
    assert {c.point for c in again} == {s.limit for s in servers}
    assert {c.value for c in again} == {6000.0}


def test_a_cap_the_supervisor_held_just_under_the_share_goes_back_to_it() -> None:
    """A blind failsafe keeps a share of each cap (a chip just over its healthy threshold):
    a cap held within the deadband of its share is still raised to it once the supervisor
    lets go, not left where the failsafe put it."""
    servers = [server("bmc1"), server("bmc2")]
    allocator = PowerCapAllocator(rack(servers, cap_deadband_w=50.0))
    powers: dict[str, Power] = {"bmc1": 7000.0, "bmc2": 7000.0}
    first = allocator.step(snapshot(0.0, servers, powers), 0.0, None)
    assert {c.value for c in first} == {7000.0}
    for s in servers:
        allocator.applied(s.limit, 6970.0)
    again = allocator.step(snapshot(1.0, servers, powers), 1.0, None)
    assert {(c.point, c.value) for c in again} == {(s.limit, 7000.0) for s in servers}
    assert allocator.step(snapshot(2.0, servers, powers), 2.0, None) == []


# -- deadband --------------------------------------------------------------------------------


def eighteen_under_a_binding_budget(
    deadband_w: float, **overrides: object
) -> tuple[PowerCapAllocator, list[ServerCap]]:
    """A rack as the scale benchmark runs it: 18 servers that would each take 7 kW, a budget
    that holds them well under that, the non-server load measured by the PDU."""
    servers = [server(f"bmc{i:02d}") for i in range(18)]
    config = rack(servers, non_server_power=PDU, cap_deadband_w=deadband_w, **overrides)
    return PowerCapAllocator(config), servers


NON_SERVER_W = 3000.0
BUDGET_W = 100000.0


def noisy_step(
    allocator: PowerCapAllocator,
    servers: Sequence[ServerCap],
    caps: dict[str, float],
    now: float,
    noise_w: float,
    budget_w: float = BUDGET_W,
) -> list[Command]:
    """One step with cap-limited servers (each draws its cap) and the PDU reading the servers
    plus the non-server load plus `noise_w`; the BMCs take the commanded caps."""
    powers: dict[str, Power] = dict(caps)
    pdu = math.fsum(caps.values()) + NON_SERVER_W + noise_w
    snap = snapshot(now, servers, powers, caps, pdu=pdu)
    commands = allocator.step(snap, now, budget_w)
    caps.update(caps_of(commands))
    return commands


@PROPERTY
@given(
    st.floats(1.0, 100.0),
    st.lists(st.floats(-0.99, 0.99), min_size=1, max_size=30),
)
def test_pdu_noise_within_the_deadband_changes_no_cap(
    deadband_w: float, noise: list[float]
) -> None:
    """The caps stay put while the PDU reading stays within N·d of the one they were set at
    (d the deadband, N the servers sharing the change); the caps keep fitting throughout."""
    allocator, servers = eighteen_under_a_binding_budget(deadband_w)
    caps = {s.name: 7000.0 for s in servers}
    first = noisy_step(allocator, servers, caps, 0.0, 0.0)
    assert len(first) == 18
    band_w = 18 * deadband_w
    available = BUDGET_W - NON_SERVER_W
    assert math.fsum(caps.values()) == pytest.approx(available - band_w)
    for tick, fraction in enumerate(noise, start=1):
        assert noisy_step(allocator, servers, caps, float(tick), fraction * band_w) == []
        allocation = the(allocator.allocation)
        assert allocation.allocated_w <= the(allocation).available_w + TOL  # type: ignore[operator]


def test_without_a_deadband_the_same_noise_rewrites_every_cap() -> None:
    """What the deadband is for: PDU noise of ±60 W moves each of 18 shares by 3 W, over the
    resend threshold, so every cap is rewritten nearly every step; with 25 W per server none."""
    noise = [60.0 * math.sin(1.7 * k) for k in range(40)]
    counts = {}
    for deadband in (0.0, 25.0):
        allocator, servers = eighteen_under_a_binding_budget(deadband)
        caps = {s.name: 7000.0 for s in servers}
        noisy_step(allocator, servers, caps, 0.0, 0.0)
        counts[deadband] = sum(
            len(noisy_step(allocator, servers, caps, float(k), n))
            for k, n in enumerate(noise, start=1)
        )
    assert counts[25.0] == 0
    assert counts[0.0] > 18 * 20


def test_a_budget_drop_lowers_every_cap_in_the_same_step_despite_the_deadband() -> None:
    allocator, servers = eighteen_under_a_binding_budget(25.0, margin_w=1000.0)
    caps = {s.name: 7000.0 for s in servers}
    noisy_step(allocator, servers, caps, 0.0, 0.0)
    noisy_step(allocator, servers, caps, 1.0, 100.0)
    dropped = 0.7 * BUDGET_W
    commands = noisy_step(allocator, servers, caps, 2.0, -100.0, budget_w=dropped)
    assert len(commands) == 18
    available = dropped - 1000.0 - (NON_SERVER_W - 100.0)
    assert math.fsum(caps.values()) <= available + TOL
    assert math.fsum(caps.values()) == pytest.approx(available - 18 * 25.0)
    assert "450 W kept back for the caps' deadband" in commands[0].reason


@pytest.mark.parametrize("last_step_w", [10.0, 49.0, 50.0])
def test_a_paced_rise_reaches_its_share_even_when_its_last_step_is_inside_the_deadband(
    last_step_w: float,
) -> None:
    """Found by the fault matrix on a loaded machine: caps rising at the release rate whose
    last paced step landed within the deadband of their share stayed there (6970 W of a
    7000 W share) for good, because the deadband held the final step back. The deadband
    spares the BMCs writes for noise in the share; a rise the rate held back is not noise,
    and once the rise is over, noise is held back again."""
    deadband_w = 50.0
    allocator, servers = eighteen_under_a_binding_budget(deadband_w, release_rate_w_per_s=1000.0)
    caps = {s.name: 1500.0 for s in servers}
    at_minimums_w = 18 * 1500.0 + NON_SERVER_W + 18 * deadband_w
    noisy_step(allocator, servers, caps, 0.0, 0.0, budget_w=at_minimums_w)
    assert set(caps.values()) == {1500.0}
    share_w = (BUDGET_W - NON_SERVER_W - 18 * deadband_w) / 18
    for now in (1.0, 2.0, 3.0):  # 1 kW/s
        noisy_step(allocator, servers, caps, now, 0.0)
    assert set(caps.values()) == {4500.0}
    now = 3.0 + (share_w - last_step_w - 4500.0) / 1000.0
    noisy_step(allocator, servers, caps, now, 0.0)
    assert list(caps.values()) == pytest.approx([share_w - last_step_w] * 18)
    noisy_step(allocator, servers, caps, now + 1.0, 0.0)
    assert list(caps.values()) == pytest.approx([share_w] * 18)
    for tick, fraction in enumerate((0.9, -0.9, 0.5), start=2):  # noise within the band
        assert noisy_step(allocator, servers, caps, now + tick, fraction * 18 * deadband_w) == []


@pytest.mark.parametrize(("deadband_w", "kept"), [(0.0, None), (0.05, "1 W kept back")])
def test_the_reason_names_the_deadbands_reserve_only_when_one_is_kept(
    deadband_w: float, kept: str | None
) -> None:
    """An operator reading why a cap is what it is sees the deadband's reserve when there is
    one, however small (18 x 0.05 W), and no such words when none is kept."""
    allocator, servers = eighteen_under_a_binding_budget(deadband_w)
    caps = {s.name: 7000.0 for s in servers}
    commands = noisy_step(allocator, servers, caps, 0.0, 0.0)
    assert len(commands) == 18
    reason = commands[0].reason
    assert (kept in reason) if kept is not None else ("kept back" not in reason)


def test_a_drop_just_past_the_band_still_lowers_the_caps_at_once() -> None:
    """Noise that takes the available power below the held caps' sum: the caps fall in that
    step, whatever the deadband (the budget holds at every step, not on average)."""
    allocator, servers = eighteen_under_a_binding_budget(25.0)
    caps = {s.name: 7000.0 for s in servers}
    noisy_step(allocator, servers, caps, 0.0, 0.0)
    held = math.fsum(caps.values())
    commands = noisy_step(allocator, servers, caps, 1.0, 18 * 25.0 + 50.0)
    available = BUDGET_W - NON_SERVER_W - (18 * 25.0 + 50.0)
    assert held > available
    assert len(commands) == 18
    assert math.fsum(caps.values()) <= available + TOL


def test_a_server_that_needs_headroom_gets_it_in_the_same_step() -> None:
    """One server idles and is released; when its load returns it wants more and its share
    comes back at once, its neighbours' caps falling to make room, the sum still fitting."""
    allocator, servers = eighteen_under_a_binding_budget(25.0)
    loads = {s.name: 7000.0 for s in servers}
    loads["bmc00"] = 1000.0
    caps = {s.name: 7000.0 for s in servers}

    def step(now: float) -> list[Command]:
        powers: dict[str, Power] = {n: min(loads[n], caps[n]) for n in caps}
        pdu = math.fsum(p for p in powers.values() if isinstance(p, float)) + NON_SERVER_W
        commands = allocator.step(snapshot(now, servers, powers, caps, pdu=pdu), now, BUDGET_W)
        caps.update(caps_of(commands))
        return commands

    for tick in range(4):
        step(float(tick))
    assert caps["bmc00"] == pytest.approx(1500.0)  # released: its use plus headroom, or min
    assert step(4.0) == []  # settled
    loads["bmc00"] = 7000.0
    commands = step(5.0)  # it now draws its whole cap: it wants more
    assert "bmc00" in caps_of(commands) and caps["bmc00"] > 1500.0 + 25.0
    assert math.fsum(caps.values()) <= BUDGET_W - NON_SERVER_W + TOL


def test_a_paced_rise_smaller_than_the_deadband_still_goes_out() -> None:
    """The deadband is judged on a cap's share, not on the paced step towards it: rises paced
    at 10 W/s under a 25 W deadband reach the share rather than stall."""
    allocator, servers = eighteen_under_a_binding_budget(25.0, release_rate_w_per_s=10.0)
    caps = {s.name: 2000.0 for s in servers}
    allocator.step(snapshot(0.0, servers, dict(caps), caps, pdu=0.0), 0.0, BUDGET_W)
    for tick in range(1, 5):
        commands = noisy_step(allocator, servers, caps, float(tick), 0.0)
        assert len(commands) == 18
        assert all(c.value == pytest.approx(2000.0 + 10.0 * tick) for c in commands)


@st.composite
def noisy_runs(
    draw: st.DrawFn,
) -> tuple[Case, list[tuple[float, float | None, dict[str, Power], float]]]:
    """A rack and a run of steps with the PDU measured: (seconds since the last step, budget,
    measured powers, non-server load on top of the servers' measured power)."""
    case, steps = draw(runs())
    return case, [
        (dt, budget, powers, draw(st.floats(0.0, 8000.0))) for dt, budget, powers in steps
    ]


@PROPERTY
@given(noisy_runs(), st.floats(0.0, 200.0), st.one_of(st.none(), st.floats(1.0, 2000.0)))
def test_with_a_deadband_caps_fit_at_every_step_and_stay_near_their_shares(
    run: tuple[Case, list[tuple[float, float | None, dict[str, Power], float]]],
    deadband_w: float,
    rate: float | None,
) -> None:
    """The budget invariant holds at every step (sum of caps ≤ available, no cap outside its
    bounds, every cap at its minimum when even those do not fit), a held cap is never more
    than the deadband above what an allocator without one would give it, and rises are
    paced."""
    case, steps = run
    config = case.config(non_server_power=PDU, release_rate_w_per_s=rate, cap_deadband_w=deadband_w)
    allocator = PowerCapAllocator(config)
    now = 0.0
    before: Mapping[str, float] | None = None
    for dt, budget, powers, extra in steps:
        now += dt
        limits = dict(before) if before is not None else {}
        measured = math.fsum(p for p in map(good_power, powers.values()) if p is not None)
        snap = snapshot(now, case.servers, powers, limits, pdu=measured + extra)
        allocator.step(snap, now, budget)
        allocation = the(allocator.allocation)
        exact = PowerCapAllocator(case.config(non_server_power=PDU))
        exact.step(snap, now, budget)
        targets = the(exact.allocation).caps
        for s in case.servers:
            cap = allocation.caps[s.name]
            assert s.min_cap_w <= cap <= s.max_cap_w
            assert cap <= targets[s.name] + max(deadband_w, CHANGE_THRESHOLD_W) + TOL
            if rate is not None and before is not None:
                assert cap <= max(before[s.name], s.min_cap_w) + rate * dt + TOL
        if budget is not None:
            available = budget - case.margin_w - max(extra, case.overhead_w)
            assert allocation.available_w == pytest.approx(available, abs=1e-6)
            if allocation.feasible:
                assert allocation.allocated_w <= available + TOL
            else:  # at their minimums, to within the float slack the resend check allows
                assert all(allocation.caps[s.name] <= s.min_cap_w + TOL for s in case.servers)
        before = allocation.caps


def test_a_negative_or_non_finite_deadband_is_refused() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="cap_deadband_w"):
            rack([server("x")], cap_deadband_w=bad)


def test_the_allocator_reads_each_server_power_and_cap_and_the_rack_pdu() -> None:
    servers = [server("bmc01"), server("bmc02")]
    assert PowerCapAllocator(rack(servers)).inputs == [
        PointId(RACK, "bmc01", "power"),
        PointId(RACK, "bmc01", "power_limit"),
        PointId(RACK, "bmc02", "power"),
        PointId(RACK, "bmc02", "power_limit"),
    ]
    with_pdu = PowerCapAllocator(rack(servers, non_server_power=PDU)).inputs
    assert with_pdu[-1] == PDU and len(with_pdu) == 5


def test_the_reason_counts_what_the_servers_want() -> None:
    servers = [server("idle"), server("busy")]
    allocator = PowerCapAllocator(rack(servers))
    limits = {"idle": 7000.0, "busy": 6000.0}
    allocator.step(snapshot(0.0, servers, {"idle": 1500.0, "busy": 6000.0}, limits), 0.0, 8000.0)
    assert "; 1 want more, 1 released" in the(allocator.allocation).reason


@pytest.mark.parametrize(("count", "more"), [(8, ""), (9, " and 1 more")])
def test_the_reason_names_eight_servers_without_power_and_counts_the_rest(
    count: int, more: str
) -> None:
    servers = [server(f"s{i}") for i in range(count)]
    allocator = PowerCapAllocator(rack(servers))
    allocator.step(snapshot(0.0, servers, {}), 0.0, 1e6)
    reason = the(allocator.allocation).reason
    assert reason.endswith(f"s7 missing{more}: held at the cap in force"), reason
    assert "0 want more, 0 released" in reason


def test_a_cap_that_moves_by_the_threshold_exactly_is_not_sent_again() -> None:
    servers = [server("a"), server("b")]
    allocator = PowerCapAllocator(rack(servers))
    limits = {"a": 4000.0, "b": 4000.0}
    busy = snapshot(0.0, servers, {"a": 4000.0, "b": 4000.0}, limits)
    assert caps_of(allocator.step(busy, 0.0, 8000.0)) == {"a": 4000.0, "b": 4000.0}
    assert caps_of(allocator.step(busy, 1.0, 8002.0)) == {}  # 1 W each: not worth a write
    assert caps_of(allocator.step(busy, 2.0, 8004.2)) == {"a": 4002.1, "b": 4002.1}


def test_a_server_without_a_priority_waits_for_one_with_a_higher_one() -> None:
    plain = ServerCap(
        "plain",
        PointId(RACK, "plain", "power"),
        PointId(RACK, "plain", "power_limit"),
        1500.0,
        7000.0,
    )
    first = server("first", priority=1)
    allocator = PowerCapAllocator(rack([plain, first]))
    limits = {"plain": 6000.0, "first": 6000.0}
    snap = snapshot(0.0, [plain, first], {"plain": 6000.0, "first": 6000.0}, limits)
    caps = caps_of(allocator.step(snap, 0.0, 9000.0))
    assert caps == {"plain": 2000.0, "first": 7000.0}


def test_a_negative_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="margin_w must be >= 0"):
        rack([server("a")], margin_w=-0.5)
    assert rack([server("a")], margin_w=0.0).margin_w == 0.0


def test_the_trim_takes_the_excess_off_as_many_caps_as_it_needs() -> None:
    from coolctl.control.powercap import _trim

    # the first cap gives up all it can above its floor (100 W), the second the rest
    assert _trim([1600.0, 1600.0], [1500.0, 1500.0], 3000.0) == [1500.0, 1500.0]
    assert _trim([1600.0, 1600.0], [1500.0, 1500.0], 3300.0) == [1600.0, 1600.0]
