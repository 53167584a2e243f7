"""Redfish client for one device (a server's chassis, a CDU, a PDU), found by discovery.

coolctl polls a device into `Reading`s of canonical points and writes power limits and pump or
valve setpoints with a read-back. Like the Modbus driver beside it, most of this module is about
devices that misbehave: every failure becomes a reading quality, a counter and (once per change
of state) a log line, never an exception out of `poll()`.

Choices, and why:
- Discovery by links from /redfish/v1, never by vendor paths, with the mapping from schema
  properties to points kept as data (redfish_points.POINT_SOURCES): a new CDU that follows the
  schemas needs no code. It runs once and again only when a bound resource is gone (404).
- Each poll reads only the resources the points are bound to, with `$expand` for collections
  and `$select` for single resources when (and only when) the service root says it supports
  them: a BMC is a small computer that other tools also poll.
- A link failure (timeout, connection, 5xx, refused credentials) starts a backoff during which
  nothing at all is sent: readings go stale and coolctl's supervisor decides what that means.
- Writes are refused before anything is sent when the value is outside the range the device
  declares (AllowableMin/AllowableMax); they carry If-Match when an ETag is known (a 412 costs
  one re-read and one retry), and they are read back.

Transport and its evaluation: see redfish_transport.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self, get_args

from coolctl.model import CANONICAL_POINTS, PointId, Quality, Reading, Unit

from .poll_stats import PollChange, PollStats
from .redfish_points import (
    ACTION_POINTS,
    OPTIONAL_POINTS,
    POINT_SOURCES,
    ActionPoint,
    Binding,
    Evaluated,
    Kind,
    Plan,
    ResourceRef,
    SetpointTarget,
    Target,
    discover,
    evaluate,
    patch_body,
    read_member,
    setpoint_targets,
)
from .redfish_transport import (
    LINK_FAILURES,
    Failure,
    FailureKind,
    Fetched,
    RedfishSettings,
    RedfishTransport,
    count_requests,
    safe_text,
)

__all__ = [
    "FailureKind",
    "Kind",
    "RedfishDevice",
    "RedfishSettings",
    "RedfishStats",
    "RedfishTransport",
    "WriteError",
    "kind_points",
    "kind_writable",
]

log = logging.getLogger("coolctl.drivers.redfish")

# A discovery reads a few dozen resources; it may take this many request timeouts in all.
_DISCOVERY_TIMEOUTS: Final = 12.0
# Discovery runs again this often even when nothing is gone: a BMC that was still booting may
# have listed no sensors, a CDU may have gained a valve control. It costs a few dozen GETs.
_REDISCOVER_EVERY_S: Final = 900.0

# Values no sensor of that unit can mean: beyond them a reading is bad, not extreme.
_PLAUSIBLE: Final[Mapping[Unit, tuple[float, float]]] = {
    Unit.CELSIUS: (-273.15, 1000.0),
    Unit.PASCAL: (-1e7, 1e8),
    Unit.WATT: (-1e8, 1e8),
    Unit.JOULE: (-1e20, 1e20),
    Unit.AMPERE: (-1e5, 1e5),
    Unit.VOLT: (-1e5, 1e5),
    Unit.LITRE: (0.0, 1e6),
    Unit.LITRE_PER_MINUTE: (-1e5, 1e6),
    Unit.RATIO: (0.0, 10.0),
    Unit.BOOLEAN: (0.0, 1.0),
    Unit.STATE: (0.0, 1000.0),
}


def kind_points(kind: Kind) -> tuple[str, ...]:
    """The points a device of this kind may have (its readings, in order), whatever the
    service: which of them it really has shows after the first poll (the rest are missing)."""
    return tuple(POINT_SOURCES[kind])


def kind_writable(kind: Kind) -> frozenset[str]:
    """The points a device of this kind may accept writes for (set points, and actions)."""
    return frozenset(
        point
        for point, sources in POINT_SOURCES[kind].items()
        if any(source.setpoint for source in sources)
    ) | frozenset(ACTION_POINTS[kind])


class WriteError(Exception):
    """A write that was refused, failed, or did not read back as written."""

    refused = False  # the service answered and said no (4xx, read-back differs): backoff


@dataclass(slots=True)
class RedfishStats(PollStats):
    """A Redfish device's counters: the shared poll counters (the Modbus driver's names too),
    the HTTP requests sent and the discoveries run."""

    requests: int = 0  # HTTP requests sent for this device, logins included
    discoveries: int = 0


@dataclass(slots=True)
class _PollOutcome:
    verdicts: dict[str, Evaluated] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    waiting_s: float | None = None  # set when nothing was sent because of the backoff

    @property
    def failed(self) -> bool:
        return (
            bool(self.failures)
            or self.waiting_s is not None
            or any(v.problem is not None for v in self.verdicts.values())
        )


class RedfishDevice:
    """One Redfish device: a chassis (kind "server"), a CoolingUnit ("cdu") or a
    PowerDistribution ("pdu") of one service.

    `resource` picks it when the service has several: the name `coolctl probe redfish` prints
    ("1U", "CDU:1", "PDU:1"), its Id, or its @odata.id. Without it, the first resource of the
    kind that yields any point. `transport` lets devices of one service share a session and
    its concurrency limit (the caller then closes the transport). `host_power`: a server's
    host (its ComputerSystem) is read too, `power_state` and `server_power_command`, and the
    latter can be written (ComputerSystem.Reset).

    A chassis may link several hosts (a multi-node chassis: Links.ComputerSystems lists
    each). Every one is read and every one is written: a shutdown posts GracefulShutdown to
    each host that is not already off or stopping. The one reading stands for all of them,
    and is honest about the laggard: `server_power_command` reads 0 only once every host is
    off or on its way, and `power_state` is the state of the host furthest from off (Off only
    once every host is Off; PoweringOff while none is on and one is still stopping).
    """

    def __init__(
        self,
        *,
        rack: str,
        device: str,
        kind: Kind,
        settings: RedfishSettings,
        resource: str | None = None,
        transport: RedfishTransport | None = None,
        host_power: bool = False,
    ) -> None:
        if kind not in get_args(Kind):
            raise ValueError(f"kind must be one of {', '.join(get_args(Kind))}, not {kind!r}")
        self.rack = rack
        self.device = device
        self.kind: Kind = kind
        self.settings = settings
        self.resource = resource
        self.host_power = host_power
        self.stats = RedfishStats()
        self._all_points: tuple[str, ...] = tuple(POINT_SOURCES[kind])
        self._label = f"{rack}/{device} ({settings.origin})"
        self._log_extra = {"rack": rack, "device": device}
        self._owns_transport = transport is None
        self._transport = transport or RedfishTransport(
            settings, label=self._label, log_extra=self._log_extra
        )
        self._lock = asyncio.Lock()
        self._plan: Plan | None = None
        self._reads: _Reads | None = None  # what a poll of _plan reads
        self._bodies: dict[str, Mapping[str, Any]] = {}  # latest body of each bound resource
        self._etags: dict[str, str] = {}
        self._verdicts: dict[str, Evaluated] = {}
        self._last_good: dict[str, tuple[float, float]] = {}  # point -> (value, ts)
        self._last_discovery_at = -math.inf
        self._discovery_failed = False  # the last discovery found no such device

    def __repr__(self) -> str:
        return (
            f"RedfishDevice(rack={self.rack!r}, device={self.device!r}, kind={self.kind!r},"
            f" url={self.settings.origin!r}, resource={self.resource!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Log out and drop the connections (if the transport is this device's own); a later
        poll or write logs in again."""
        async with self._lock:
            if self._owns_transport:
                await self._transport.close()
            self.stats.connected = False

    @property
    def points(self) -> tuple[str, ...]:
        """The points a poll reports, in table order: every point of the kind, except those
        only some devices have (a power shelf's) when this one has no source for them."""
        bound = self._plan.bindings if self._plan is not None else {}
        return tuple(p for p in self._all_points if p in bound or p not in OPTIONAL_POINTS)

    @property
    def found(self) -> ResourceRef | None:
        """The resource discovery settled on, once it has run."""
        return self._plan.ref if self._plan is not None else None

    def writable(self) -> dict[str, tuple[float, float]]:
        """Writable points and the range each accepts now, in coolctl units, as the device
        declares it (AllowableMin/AllowableMax, else the schema's natural range). Empty
        before the first poll."""
        plan = self._plan
        if plan is None:
            return {}
        ranges: dict[str, tuple[float, float]] = {}
        for point, binding in plan.bindings.items():
            if not binding.source.setpoint:
                continue
            try:
                targets = setpoint_targets(binding, self._bodies)
            except (ValueError, KeyError):
                continue
            ranges[point] = (max(t.low for t in targets), min(t.high for t in targets))
        return ranges

    def sources(self) -> dict[str, str]:
        """Where each bound point is read: resource URIs with JSON pointers."""
        plan = self._plan
        if plan is None:
            return {}
        described: dict[str, str] = {}
        for point, binding in plan.bindings.items():
            verdict = self._verdicts.get(point)
            if verdict is not None and verdict.targets:
                described[point] = ", ".join(t.pointer(binding.source) for t in verdict.targets)
            else:
                pattern = binding.source.pattern()
                described[point] = ", ".join(uri + pattern for uri in binding.uris)
        return described

    def poll_requests(self) -> list[tuple[str, dict[str, str] | None]]:
        """The GETs one poll sends once discovery has run, as (URI, query): the bound
        collections read whole with $expand, the other bound resources with $select."""
        plan = self._plan
        if plan is None:
            return []
        reads = self._reads_of(plan)
        requests: list[tuple[str, dict[str, str] | None]] = [
            (collection, query) for collection, query, _ in reads.expanded
        ]
        requests.extend(reads.singles)
        return requests

    def _reads_of(self, plan: Plan) -> _Reads:
        """What a poll of `plan` reads, worked out once per plan rather than every poll."""
        reads = self._reads
        if reads is None or reads.plan is not plan:
            reads = self._reads = _poll_reads(plan)
        return reads

    # ----------------------------------------------------------------------------------------
    # Polling

    async def poll(self) -> list[Reading]:
        """Read every point of the kind once: one Reading per point, in table order.

        Points the device does not expose are `missing`; points whose resources could not be
        read for a link failure are `stale`; points the device answered nonsense for are
        `bad`. Never raises for device trouble, never waits for more than the request
        timeouts (and one discovery's worth of them).
        """
        async with self._lock:
            with count_requests(self._count_request):
                started = time.monotonic()
                outcome = await self._poll_once()
                done = time.monotonic()
                readings = [self._reading(point, outcome, done) for point in self.points]
                self._account_poll(outcome, started, done)
                return readings

    def _count_request(self) -> None:
        self.stats.requests += 1

    async def _poll_once(self) -> _PollOutcome:
        outcome = _PollOutcome()
        waiting = self._transport.waiting_s()
        if waiting is not None:
            outcome.waiting_s = waiting
            return outcome
        if self._plan is None and self._discovery_failed:
            # The service answered, but not with the device: look again now and then only.
            left = self.settings.backoff_max_s - (time.monotonic() - self._last_discovery_at)
            if left > 0:
                outcome.waiting_s = left
                return outcome
        try:
            results = await self._read_or_discover()
        except Failure as failure:
            outcome.failures.append(failure)
            return outcome
        assert self._plan is not None
        self._evaluate(self._plan, results, outcome)
        return outcome

    async def _read_or_discover(self) -> dict[str, Fetched | Failure]:
        """The bound resources' bodies: from a discovery when there is no plan yet, when one
        is due, or when a bound resource is gone; else read afresh. A discovery that fails
        for anything but the link keeps the plan that worked."""
        if self._plan is None:
            await self._discover()
            return self._discovered_bodies()
        if self._due_for_discovery(self._plan) and await self._rediscover():
            return self._discovered_bodies()
        results = await self._read_bound()
        if self._gone(results) and self._may_rediscover():
            log.info(
                "%s: a Redfish resource is gone (404); discovering again",
                self._label,
                extra=self._log_extra,
            )
            if await self._rediscover():
                return self._discovered_bodies()
        return results

    async def _rediscover(self) -> bool:
        """Discover again; False (the old plan kept) if the service answered but discovery
        failed. Link failures are raised."""
        try:
            await self._discover()
        except Failure as failure:
            if failure.link:
                raise
            log.info(
                "%s: Redfish rediscovery failed (%s); keeping what was found before",
                self._label,
                failure,
                extra=self._log_extra,
            )
            return False
        return True

    async def _discover(self) -> None:
        """Run discovery (bounded in time) and keep its plan; raises Failure."""
        self._last_discovery_at = time.monotonic()
        self.stats.discoveries += 1
        deadline = self.settings.timeout_s * _DISCOVERY_TIMEOUTS
        self._discovery_failed = False
        try:
            async with asyncio.timeout(deadline):
                plan = await discover(self._fetch, self.kind, self.resource, self.host_power)
        except TimeoutError:
            raise Failure(
                FailureKind.TIMEOUT, f"discovery took longer than {deadline:g} s"
            ) from None
        except Failure as failure:
            self._discovery_failed = not failure.link
            raise
        self._plan = plan
        self._bodies = {uri: r.body for uri, r in plan.resources.items()}
        self._etags = {uri: r.etag for uri, r in plan.resources.items() if r.etag}
        self._log_discovery(plan)

    def _discovered_bodies(self) -> dict[str, Fetched | Failure]:
        assert self._plan is not None
        return {uri: Fetched(uri, dict(r.body), r.etag) for uri, r in self._plan.resources.items()}

    def _log_discovery(self, plan: Plan) -> None:
        found = ", ".join(
            f"{point} <- {binding.source.role}{'*' if len(binding.uris) > 1 else ''}"
            for point, binding in plan.bindings.items()
        )
        log.info(
            "%s: Redfish %s %s (%s): %s%s",
            self._label,
            plan.kind,
            safe_text(plan.ref.name, 64),
            safe_text(plan.ref.uri),
            found or "no points",
            f"; skipped: {'; '.join(plan.notes[:5])}" if plan.notes else "",
            extra=self._log_extra,
        )

    def _due_for_discovery(self, plan: Plan) -> bool:
        """Whether to look again though nothing is gone: often while the device shows no
        point at all (it may be starting up), rarely otherwise."""
        since = time.monotonic() - self._last_discovery_at
        if not plan.bindings:
            return since >= self.settings.backoff_max_s
        return since >= _REDISCOVER_EVERY_S

    def _may_rediscover(self) -> bool:
        """At most one rediscovery per backoff_max_s: a service that keeps linking to a
        resource it does not serve must not cost a full discovery every poll."""
        return time.monotonic() - self._last_discovery_at >= self.settings.backoff_max_s

    @staticmethod
    def _gone(results: Mapping[str, Fetched | Failure]) -> bool:
        return any(isinstance(r, Failure) and r.status in (404, 410) for r in results.values())

    async def _fetch(self, uri: str, params: Mapping[str, str] | None) -> Fetched:
        return await self._transport.get(uri, params)

    async def _read_bound(self) -> dict[str, Fetched | Failure]:
        """Read every bound resource once: collections with $expand when the service supports
        it and it saves requests, single resources with $select when supported."""
        plan = self._plan
        assert plan is not None
        results: dict[str, Fetched | Failure] = {}
        reads = self._reads_of(plan)
        jobs = [
            self._read_expanded(collection, query, members, results)
            for collection, query, members in reads.expanded
        ]
        jobs.extend(self._read_single(uri, query, results) for uri, query in reads.singles)
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        for result in outcomes:
            if isinstance(result, BaseException) and not isinstance(result, Failure):
                raise result
        # Members an expanded collection did not carry are read one by one.
        missing = [uri for uri in plan.resources if uri not in results]
        if missing:
            await asyncio.gather(
                *(self._read_single(uri, _select_query(plan, uri), results) for uri in missing)
            )
        return results

    async def _read_single(
        self, uri: str, query: dict[str, str] | None, results: dict[str, Fetched | Failure]
    ) -> None:
        try:
            fetched = await self._transport.get(uri, query)
        except Failure as failure:
            results[uri] = failure
            return
        results[uri] = fetched
        self._remember(fetched)

    async def _read_expanded(
        self,
        collection: str,
        query: dict[str, str],
        members: tuple[str, ...],
        results: dict[str, Fetched | Failure],
    ) -> None:
        try:
            listing = await self._transport.get(collection, query)
        except Failure as failure:
            for uri in members:
                results[uri] = failure
            return
        entries = listing.body.get("Members")
        if not isinstance(entries, list):
            broken = Failure(FailureKind.MALFORMED, f"{safe_text(collection)}: no Members list")
            for uri in members:
                results[uri] = broken
            return
        wanted = set(members)
        for entry in entries[: 4 * len(members) + 64]:
            if not isinstance(entry, dict) or len(entry) < 2:
                continue  # not expanded: read on its own afterwards
            member = entry.get("@odata.id")
            if isinstance(member, str) and member in wanted:
                fetched = Fetched(member, entry, _inline_etag(entry))
                results[member] = fetched
                self._remember(fetched)

    def _remember(self, fetched: Fetched) -> None:
        self._bodies[fetched.uri] = fetched.body
        if fetched.etag:
            self._etags[fetched.uri] = fetched.etag
        else:
            self._etags.pop(fetched.uri, None)

    def _evaluate(
        self, plan: Plan, results: Mapping[str, Fetched | Failure], outcome: _PollOutcome
    ) -> None:
        """Verdicts of the bound points. A point whose resource could not be read for a link
        failure gets none (it goes stale); one whose resource is broken or gone is bad."""
        counted: set[int] = set()
        for point, binding in plan.bindings.items():
            failures = [r for uri in binding.uris if isinstance(r := results[uri], Failure)]
            for failure in failures:
                if id(failure) not in counted:
                    counted.add(id(failure))
                    outcome.failures.append(failure)
            if any(f.link for f in failures):
                continue
            if failures:
                verdict = Evaluated(None, failures[0].detail)
            else:
                bodies = {uri: _body(results[uri]) for uri in binding.uris}
                verdict = _guarded_evaluate(binding, bodies)
                if verdict.problem is not None:
                    outcome.failures.append(
                        Failure(FailureKind.MALFORMED, f"{point}: {verdict.problem}")
                    )
            outcome.verdicts[point] = verdict
            self._verdicts[point] = verdict

    def _reading(self, point: str, outcome: _PollOutcome, now: float) -> Reading:
        verdict = outcome.verdicts.get(point)
        pid = PointId(self.rack, self.device, point)
        if verdict is None:  # not exposed, or not read this time
            last = self._last_good.get(point)
            if last is None:
                return Reading(pid, None, now, Quality.MISSING)
            return Reading(pid, last[0], last[1], Quality.STALE)
        if verdict.value is None or not _plausible(point, verdict.value):
            if verdict.value is not None:  # implausible: make the verdict say so
                problem = f"{point}: implausible value {verdict.value:.6g}"
                outcome.failures.append(Failure(FailureKind.MALFORMED, problem))
                outcome.verdicts[point] = Evaluated(None, problem, verdict.targets)
            return Reading(pid, None, now, Quality.BAD)
        self._last_good[point] = (verdict.value, now)
        return Reading(pid, verdict.value, now, Quality.GOOD)

    def _account_poll(self, outcome: _PollOutcome, started: float, done: float) -> None:
        stats = self.stats
        stats.connected = self._transport.connected
        for failure in outcome.failures:
            if failure.kind != FailureKind.BACKOFF:
                stats.count(failure.kind)
        run = stats.consecutive_failures
        change = stats.record_poll(outcome.failed, started, done)
        if change is PollChange.STARTED_FAILING:
            self._log_failing(outcome)
        elif change is PollChange.RECOVERED:
            log.info(
                "%s: Redfish polling recovered after %d failed polls",
                self._label,
                run,
                extra=self._log_extra,
            )

    def _log_failing(self, outcome: _PollOutcome) -> None:
        real = [f for f in outcome.failures if f.kind != FailureKind.BACKOFF]
        if real:
            detail = f"{real[0].kind} ({real[0].detail})"
            if len(real) > 1:
                detail += f" and {len(real) - 1} more"
        else:
            waiting = outcome.waiting_s or self._transport.waiting_s() or 0.0
            detail = f"backing off, next request in {waiting:.3g} s"
        log.warning(
            "%s: Redfish polling failing: %s; logging again on recovery",
            self._label,
            detail,
            extra=self._log_extra,
        )

    # ----------------------------------------------------------------------------------------
    # Writing

    async def write(self, point: str, value: float) -> float:
        """Write one setpoint and return the value the device reads back (coolctl units).

        Refuses, before anything is sent, points that are not writable on this device and
        values outside what it declares it accepts; raises WriteError for every failure,
        including a read-back that differs from the value asked for.
        """
        self.stats.writes += 1
        try:
            async with self._lock:
                with count_requests(self._count_request):
                    return await self._write(point, value)
        except WriteError:
            self.stats.write_failures += 1
            raise

    async def _write(self, point: str, value: float) -> float:
        action = ACTION_POINTS[self.kind].get(point)
        if action is not None:
            return await self._write_action(point, action, value)
        if point not in CANONICAL_POINTS or point not in POINT_SOURCES[self.kind]:
            raise WriteError(f"{self._label}: a Redfish {self.kind} has no point {point!r}")
        if not math.isfinite(value):
            raise WriteError(f"{self._label}: {point} cannot be set to {value}")
        if self._plan is None:
            await self._discover_for_write(point)
        plan = self._plan
        assert plan is not None
        binding = plan.bindings.get(point)
        if binding is None or not binding.source.setpoint:
            raise WriteError(f"{self._label}: {point} is not writable on this device")
        targets = self._targets(binding, point, value)
        waiting = self._transport.waiting_s()
        if waiting is not None:
            raise WriteError(
                f"{self._label}: write of {point} not sent: backing off,"
                f" next request in {waiting:.3g} s"
            )
        read_backs = []
        for target in targets:
            read_backs.append(await self._write_target(point, binding, target, value))
        read_back = max(read_backs)
        self._last_good[point] = (read_back, time.monotonic())
        return read_back

    async def _write_action(self, point: str, action: ActionPoint, value: float) -> float:
        """Send the action that sets `point` (0 or 1) to each resource it applies to, then
        read each back: its `read_back` property (Status.State) must mean `value`.

        The target is the one the resource's `Actions` names, read afresh each time (never a
        path coolctl makes up). A resource already there or on its way (`already`) is not sent
        the action again; a value the action does not allow (`check_allowed`) is refused
        before anything is sent; a resource whose Status.State is Absent (an empty slot of a
        multi-node chassis) is left out.

        Every resource is acted on, concurrently (the transport bounds how many requests are in
        flight), and one that fails does not stop the others: every host a multi-node chassis
        links is shut down, every isolation valve of a CDU closed, even when one of them
        refuses. The write succeeds only when every resource reads back `value`; otherwise the
        error names the first failure and how many failed, and it is `refused` only when every
        failure was the service saying no (a lost link is retried sooner)."""
        if value not in (0.0, 1.0):
            raise WriteError(f"{self._label}: {point} takes 0 or 1, not {value:g}")
        if self._plan is None:
            await self._discover_for_write(point)
        plan = self._plan
        assert plan is not None
        uris = (
            [plan.ref.uri]
            if action.role is None
            else [uri for uri, found in plan.resources.items() if found.role is action.role]
        )
        if not uris:
            raise WriteError(f"{self._label}: {point}: no resource offers {action.action}")
        results = await asyncio.gather(
            *(self._act_on(point, action, value, uri) for uri in uris), return_exceptions=True
        )
        errors: list[WriteError] = []
        for result in results:
            if isinstance(result, WriteError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
        if errors:
            if len(errors) == 1:
                raise errors[0]
            error = WriteError(
                f"{errors[0]} (and {len(errors) - 1} more of the {len(uris)} resources failed)"
            )
            error.refused = all(e.refused for e in errors)
            raise error
        self._last_good[point] = (value, time.monotonic())
        return value

    async def _act_on(self, point: str, action: ActionPoint, value: float, uri: str) -> None:
        """The action on one resource, and its read-back (see _write_action)."""
        wanted = action.values[int(value)]
        body = {action.parameter: wanted}
        try:
            fresh = await self._transport.get(uri)
            if (
                _shown(fresh.body, action.read_back) in action.already.get(value, ())
                or _shown(fresh.body, ("Status", "State")) == "Absent"
            ):
                self._remember(fresh)
                return  # there already, or on its way (or not there): not sent twice
            target = _action_target(fresh.body, action.action)
            if target is None:
                raise WriteError(
                    f"{self._label}: {point}: {safe_text(uri)} offers no {action.action}"
                )
            if action.check_allowed:
                allowed = await self._allowed_values(fresh.body, action)
                if allowed is not None and wanted not in allowed:
                    error = WriteError(
                        f"{self._label}: {point}: {safe_text(uri)} does not allow"
                        f" {action.parameter} {wanted} (it allows:"
                        f" {', '.join(safe_text(a, 32) for a in allowed[:16]) or 'nothing'});"
                        f" coolctl sends {wanted} only, nothing harsher"
                    )
                    error.refused = True
                    raise error
            await self._transport.post_action(target, body)
            after = await self._transport.get(uri)
        except Failure as failure:
            what = f"{action.action} for {point} on {safe_text(uri)}"
            raise self._write_failure(what, failure) from None
        self._remember(after)
        shown = _shown(after.body, action.read_back)
        read_back = action.states.get(shown) if shown is not None else None
        if read_back != value:
            self.stats.count(FailureKind.MISMATCH)
            where = ".".join(action.read_back)
            error = WriteError(
                f"{self._label}: {action.action} {body} but {safe_text(uri)} reads"
                f" {where} {safe_text(str(shown), 40)!r}"
            )
            error.refused = True
            raise error

    def _write_failure(self, what: str, failure: Failure) -> WriteError:
        """A write the transport failed, counted, as the WriteError to raise: `refused` unless
        the link failed or is backing off (those are retried sooner)."""
        self.stats.count(failure.kind)
        self.stats.connected = self._transport.connected
        error = WriteError(f"{self._label}: {what} failed: {failure}")
        error.refused = (
            failure.kind not in LINK_FAILURES and failure.kind is not FailureKind.BACKOFF
        )
        return error

    async def _allowed_values(
        self, body: Mapping[str, Any], action: ActionPoint
    ) -> tuple[str, ...] | None:
        """What the action's parameter may be: its `@Redfish.AllowableValues`, else the
        ActionInfo's (read now); None when the service says neither (then it may refuse)."""
        entry = _action_entry(body, action.action)
        listed = _strings(entry.get(f"{action.parameter}@Redfish.AllowableValues"))
        if listed is not None:
            return listed
        info_uri = entry.get("@Redfish.ActionInfo")
        if not isinstance(info_uri, str) or not info_uri.startswith("/redfish/"):
            return None
        info = await self._transport.get(info_uri)
        parameters = info.body.get("Parameters")
        for parameter in parameters if isinstance(parameters, list) else []:
            if isinstance(parameter, dict) and parameter.get("Name") == action.parameter:
                return _strings(parameter.get("AllowableValues"))
        return None

    async def _discover_for_write(self, point: str) -> None:
        waiting = self._transport.waiting_s()
        if waiting is not None:
            raise WriteError(
                f"{self._label}: write of {point} not sent: backing off,"
                f" next request in {waiting:.3g} s"
            )
        try:
            await self._discover()
        except Failure as failure:
            self.stats.count(failure.kind)
            raise WriteError(
                f"{self._label}: write of {point} failed: discovery: {failure}"
            ) from None

    def _targets(self, binding: Binding, point: str, value: float) -> list[SetpointTarget]:
        try:
            targets = setpoint_targets(binding, self._bodies)
        except (ValueError, KeyError) as exc:
            raise WriteError(f"{self._label}: {point} cannot be written now: {exc}") from None
        low = max(t.low for t in targets)
        high = min(t.high for t in targets)
        if not low <= value <= high:
            raise WriteError(
                f"{self._label}: {point}={value:g} is outside what the device accepts,"
                f" {low:g}..{high:g}"
            )
        return targets

    async def _write_target(
        self, point: str, binding: Binding, setpoint: SetpointTarget, value: float
    ) -> float:
        source, target = binding.source, setpoint.target
        body = patch_body(target, source, _device_number(value / source.scale))
        try:
            try:
                answer = await self._transport.patch(target.uri, body, self._etags.get(target.uri))
            except Failure as failure:
                if failure.status != 412:
                    raise
                # Someone changed the resource since coolctl read it: read it again, check the
                # value is still acceptable, and try once more with the new ETag.
                fresh = await self._transport.get(target.uri)
                self._remember(fresh)
                self._targets(binding, point, value)
                answer = await self._transport.patch(target.uri, body, self._etags.get(target.uri))
            read = _patched_read_back(answer, target, source)
            if read is None:
                fresh = await self._transport.get(target.uri)
        except Failure as failure:
            what = f"write of {point} to {safe_text(target.uri)}"
            raise self._write_failure(what, failure) from None
        if read is not None:
            fresh, read_back = read
            self._remember(fresh)
        else:
            self._remember(fresh)
            try:
                read_back = read_member(fresh.body, target, source)
            except ValueError as exc:
                self.stats.count(FailureKind.MALFORMED)
                raise WriteError(f"{self._label}: {point} read-back unreadable: {exc}") from None
        if abs(read_back - value) > _tolerance(fresh.body, target, source, value):
            self.stats.count(FailureKind.MISMATCH)
            raise WriteError(
                f"{self._label}: wrote {point}={value:g} but it reads back {read_back:g}"
            )
        return read_back


def _refusal(failure: Failure) -> bool:
    """The service answered and said no (4xx, a read-back that differs): not a lost link."""
    return failure.kind not in LINK_FAILURES and failure.kind is not FailureKind.BACKOFF


def _action_entry(body: Mapping[str, Any], action: str) -> Mapping[str, Any]:
    """The `#action` object of a resource's Actions (empty if it offers no such action)."""
    actions = body.get("Actions")
    entry = actions.get(f"#{action}") if isinstance(actions, dict) else None
    return entry if isinstance(entry, dict) else {}


def _action_target(body: Mapping[str, Any], action: str) -> str | None:
    """The target URI of `action` in a resource's Actions, if it offers it."""
    target = _action_entry(body, action).get("target")
    return target if isinstance(target, str) and target.startswith("/redfish/") else None


def _shown(body: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The string at `path` of a resource (Status.State, PowerState), if it is one."""
    holder: Any = body
    for step in path:
        holder = holder.get(step) if isinstance(holder, dict) else None
    return holder if isinstance(holder, str) else None


def _strings(value: Any) -> tuple[str, ...] | None:
    """A list of strings (AllowableValues), or None when it is not one."""
    if not isinstance(value, list):
        return None
    return tuple(item for item in value[:256] if isinstance(item, str))


def _patched_read_back(
    answer: Fetched | None, target: Target, source: Any
) -> tuple[Fetched, float] | None:
    """The read-back a PATCH answer carries, when it carries one.

    A service that answers a PATCH with 200 and the resource sends the resource as it stands
    after the update (DSP0266), which is what a GET right after would read: with hundreds of
    power caps written every period, that GET would be a sixth of all the requests to a BMC.
    An answer that is not the resource (204, a message body, another @odata.id, the property
    missing) is no read-back, and the GET is sent.
    """
    if answer is None:
        return None
    named = answer.body.get("@odata.id")
    if isinstance(named, str) and named.rstrip("/") != target.uri.rstrip("/"):
        return None
    try:
        return answer, read_member(answer.body, target, source)
    except (ValueError, KeyError, IndexError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class _Reads:
    """What one poll of a plan reads: the collections read whole, as (collection, $expand
    query, bound members), and the bound resources read one by one, as (URI, query)."""

    plan: Plan
    expanded: tuple[tuple[str, dict[str, str], tuple[str, ...]], ...]
    singles: tuple[tuple[str, dict[str, str] | None], ...]


def _poll_reads(plan: Plan) -> _Reads:
    expand = plan.features.expand
    groups = plan.expandable() if expand else {}
    expanded = tuple(
        (collection, {"$expand": expand}, tuple(members))
        for collection, members in groups.items()
        if expand
    )
    inside = {uri for members in groups.values() for uri in members}
    singles = tuple((uri, _select_query(plan, uri)) for uri in plan.resources if uri not in inside)
    return _Reads(plan, expanded, singles)


def _select_query(plan: Plan, uri: str) -> dict[str, str] | None:
    select = plan.select_for(uri)
    return {"$select": select} if select else None


def _body(result: Fetched | Failure) -> Mapping[str, Any]:
    assert isinstance(result, Fetched)
    return result.body


def _guarded_evaluate(binding: Binding, bodies: Mapping[str, Mapping[str, Any]]) -> Evaluated:
    """evaluate(), with a last line of defence: JSON shapes nobody foresaw spoil the point,
    not the poll."""
    try:
        return evaluate(binding, bodies)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        log.debug("unexpected JSON shape for %s: %r", binding.point, exc)
        return Evaluated(None, f"unexpected JSON shape ({type(exc).__name__})")


def _inline_etag(body: Mapping[str, Any]) -> str | None:
    etag = body.get("@odata.etag")
    return etag if isinstance(etag, str) and 2 <= len(etag) <= 200 and etag.isprintable() else None


def _plausible(point: str, value: float) -> bool:
    spec = CANONICAL_POINTS.get(point)
    if spec is None:
        return math.isfinite(value)
    low, high = _PLAUSIBLE.get(spec.unit, (-math.inf, math.inf))
    return low <= value <= high


def _device_number(value: float) -> float | int:
    """A value as sent: integral values as JSON integers (some services want Int64 power
    limits), others rounded off the float noise of unit conversion."""
    rounded = round(value, 6)
    return int(rounded) if rounded.is_integer() else rounded


def _tolerance(body: Mapping[str, Any], target: Target, source: Any, value: float) -> float:
    """How far a read-back may be from the value written: the control's Increment (the
    device rounds to it), or float noise."""
    tolerance = 1e-6 * max(1.0, abs(value))
    holder: Any = body
    try:
        for step in (*target.member, *source.leaf[:-1]):
            holder = holder[step]
        increment = holder.get("Increment") if isinstance(holder, dict) else None
    except (KeyError, IndexError, TypeError):
        increment = None
    if (
        isinstance(increment, int | float)
        and not isinstance(increment, bool)
        and math.isfinite(increment)
        and increment > 0
    ):
        tolerance = max(tolerance, increment * source.scale / 2 * (1 + 1e-9))
    return tolerance
