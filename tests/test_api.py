"""The control API over real sockets: a ControlApi on a UNIX socket in tmp_path and on TCP.

`MemoryPlane` below is an in-memory ControlPlane that stands in for the daemon (records in
dicts, the safe-bounds check on set_override, wait_events on an asyncio.Event); the daemon's
own ControlPlane is connected to the API separately. test_operator_cli.py reuses it.
"""

from __future__ import annotations

import asyncio
import grp
import hmac
import json
import logging
import os
import pwd
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from coolctl.model import RackMode
from coolctl.ops.api import ControlApi, ControlApiError
from coolctl.ops.protocol import (
    AuditRecord,
    ControlError,
    EventRecord,
    JsonObject,
    OverrideRecord,
    target_kind,
)

PUMP = "cdu1/pump_speed_command"
PUMP_URL = "cdu1%2Fpump_speed_command"
BOUNDS = {PUMP: (0.2, 1.0), "cdu1/valve_command": (0.0, 1.0), "pump.setpoint": (100.0, 200.0)}
MUTATIONS = ("set_override", "clear_override", "set_mode", "reload")


class MemoryPlane:
    """A ControlPlane in dicts, standing in for the daemon in these tests."""

    def __init__(self) -> None:
        self.modes: dict[str, RackMode] = {"r01": RackMode.AUTO, "r02": RackMode.AUTO}
        self.records: dict[tuple[str, str], OverrideRecord] = {}
        self.event_log: list[EventRecord] = []
        self.audit_log: list[AuditRecord] = []
        self.calls: list[str] = []
        self.waits: list[tuple[int, float, int]] = []
        self.fail_status = False
        self.bad_config = False
        self._next_id = 1
        self._arrived = asyncio.Event()
        self.waiting = asyncio.Event()  # set once a long-poll has reached the plane

    # helpers for the tests

    @property
    def mutations(self) -> list[str]:
        return [call for call in self.calls if call in MUTATIONS]

    def add_event(self, rack: str, kind: str, message: str, severity: str = "info") -> None:
        """Store an event and wake long-polls; call it on the API's event loop."""
        record = EventRecord(
            len(self.event_log) + 1, time.time(), rack, kind, severity, message, "supervisor"
        )
        self.event_log.append(record)
        self._arrived.set()
        self._arrived = asyncio.Event()

    def _audit(self, who: str, action: str, rack: str | None, **details: Any) -> None:
        self.audit_log.append(
            AuditRecord(len(self.audit_log) + 1, time.time(), who, action, rack, details)
        )

    def _rack(self, rack: str) -> None:
        if rack not in self.modes:
            raise ControlError(404, f"no rack {rack!r}; racks: {', '.join(self.modes)}")

    # the ControlPlane protocol

    def status(self) -> JsonObject:
        self.calls.append("status")
        if self.fail_status:
            raise RuntimeError("secret internals")
        return {
            "version": "0.1.0",
            "uptime_s": 3725.0,
            "config": "/etc/coolctl/site.toml",
            "racks": self._racks(),
        }

    def _racks(self) -> list[JsonObject]:
        return [
            {
                "rack": rack,
                "mode": mode,
                "failsafe": rack == "r02",
                "interlocks": ["leak"] if rack == "r02" else [],
                "power_w": 42100.0 if rack == "r01" else 30500.0,
                "budget_w": 48000.0,
                "caps_w": 46000.0 if rack == "r01" else 27000.0,
                "chips": {
                    "servers": 18,
                    "hottest_c": 81.6 if rack == "r01" else 87.0,
                    "throttle_margin_c": 5.4 if rack == "r01" else 0.0,
                    "throttling": [] if rack == "r01" else ["bmc03", "bmc07"],
                    "near_throttle": [] if rack == "r01" else ["bmc01"],
                },
                "overrides": sum(1 for key in self.records if key[0] == rack),
            }
            for rack, mode in self.modes.items()
        ]

    def racks(self) -> list[JsonObject]:
        self.calls.append("racks")
        return self._racks()

    def points(self, rack: str | None = None) -> list[JsonObject]:
        self.calls.append("points")
        values = {
            "supply_temperature": (30.1, "celsius"),
            "return_temperature": (38.4, "celsius"),
            "flow": (161.2, "litres_per_minute"),
            "differential_pressure": (85000.0, "pascals"),
            "pump_speed": (0.62, "ratio"),
            "valve_position": (0.41, "ratio"),
        }
        points = []
        for name in self.modes:
            for point, (value, unit) in values.items():
                stale = name == "r02" and point == "supply_temperature"
                points.append(
                    {
                        "rack": name,
                        "device": "cdu1",
                        "point": point,
                        "value": value,
                        "unit": unit,
                        "quality": "stale" if stale else "good",
                        "age_s": 9.0 if stale else 0.3,
                    }
                )
        return [p for p in points if rack is None or p["rack"] == rack]

    def loops(self, rack: str | None = None) -> list[JsonObject]:
        self.calls.append("loops")
        return [
            {
                "rack": name,
                "loop": "pump",
                "mode": "auto",
                "setpoint": 160.0,
                "measurement": 161.2,
                "output": 0.62,
                "actuator": PUMP,
                "reason": "",
            }
            for name in self.modes
            if rack is None or rack == name
        ]

    def overrides(self, rack: str | None = None) -> list[OverrideRecord]:
        self.calls.append("overrides")
        return [r for key, r in sorted(self.records.items()) if rack is None or key[0] == rack]

    async def set_override(
        self, rack: str, target: str, value: float, ttl_s: float | None, who: str, why: str
    ) -> OverrideRecord:
        self.calls.append("set_override")
        self._rack(rack)
        target_kind(target)
        if target not in BOUNDS:
            raise ControlError(404, f"rack {rack} has no actuator or loop setpoint {target!r}")
        low, high = BOUNDS[target]
        if not low <= value <= high:
            raise ControlError(
                400, f"{value:g} for {rack} {target} is outside its safe bounds {low}..{high}"
            )
        now = time.time()
        record = OverrideRecord(
            self._next_id,
            rack,
            target,
            value,
            who,
            why,
            now,
            None if ttl_s is None else now + ttl_s,
        )
        self._next_id += 1
        self.records[(rack, target)] = record
        self._audit(who, "override_set", rack, target=target, value=value, ttl_s=ttl_s, why=why)
        return record

    async def clear_override(self, rack: str, target: str, who: str, why: str) -> OverrideRecord:
        self.calls.append("clear_override")
        self._rack(rack)
        record = self.records.pop((rack, target), None)
        if record is None:
            raise ControlError(404, f"no override of {target} on {rack}")
        self._audit(who, "override_clear", rack, target=target, why=why)
        return record

    async def set_mode(self, rack: str, mode: RackMode, who: str, why: str) -> JsonObject:
        self.calls.append("set_mode")
        self._rack(rack)
        previous, self.modes[rack] = self.modes[rack], mode
        self._audit(who, "mode_set", rack, mode=mode, why=why)
        return {"rack": rack, "mode": mode, "previous": previous}

    async def reset_interlock(self, rack: str, interlock: str, who: str, why: str) -> JsonObject:
        self.calls.append("reset_interlock")
        self._rack(rack)
        if interlock != "leak":
            raise ControlError(409, f"the {interlock} interlock of rack {rack} is not active")
        self._audit(who, "interlock_reset", rack, interlock=interlock, why=why)
        return {"rack": rack, "interlock": interlock, "was": "r01/sensors1/leak_detected wet"}

    async def events(self, since_id: int = 0, limit: int = 100) -> list[EventRecord]:
        self.calls.append("events")
        return [e for e in self.event_log if e.id > since_id][:limit]

    async def wait_events(
        self, since_id: int, timeout_s: float, limit: int = 100
    ) -> list[EventRecord]:
        self.calls.append("wait_events")
        self.waits.append((since_id, timeout_s, limit))
        self.waiting.set()
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.event_log if e.id > since_id][:limit]
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return []

    async def audit(self, since_id: int = 0, limit: int = 100) -> list[AuditRecord]:
        self.calls.append("audit")
        return [a for a in self.audit_log if a.id > since_id][:limit]

    async def reload(self, who: str) -> JsonObject:
        self.calls.append("reload")
        if self.bad_config:
            raise ControlError(
                400, "site.toml: racks.r01.loops.pump.kp: must be a number; old config kept"
            )
        self._audit(who, "reload", None)
        return {"config": "/etc/coolctl/site.toml", "racks": len(self.modes)}


# --- fixtures ----------------------------------------------------------------------------


ME = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()}) as operator"
TOKEN = "s3cret-token-for-tests-0123456789abcdef"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest_asyncio.fixture
async def served(tmp_path: Path, token_file: Path) -> AsyncIterator[tuple[ControlApi, MemoryPlane]]:
    plane = MemoryPlane()
    api = ControlApi(
        plane,
        socket_path=tmp_path / "run" / "control.sock",
        tcp_listen=("127.0.0.1", 0),
        token_file=token_file,
    )
    await api.start()
    try:
        yield api, plane
    finally:
        await api.stop()


@pytest_asyncio.fixture
async def unix(served: tuple[ControlApi, MemoryPlane]) -> AsyncIterator[aiohttp.ClientSession]:
    api, _ = served
    async with aiohttp.ClientSession(
        base_url="http://coolctl", connector=aiohttp.UnixConnector(path=str(api.socket_path))
    ) as session:
        yield session


async def call(
    session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, path, **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


def pump_body(**changes: Any) -> JsonObject:
    body: JsonObject = {"value": 0.8, "ttl_s": 900, "permanent": False, "reason": "seal check"}
    body.update(changes)
    return body


# --- reading -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_read_endpoints(unix: aiohttp.ClientSession) -> None:
    status, body = await call(unix, "GET", "/v1/status")
    assert status == 200 and body["version"] == "0.1.0" and len(body["racks"]) == 2
    status, body = await call(unix, "GET", "/v1/racks")
    assert status == 200 and [r["rack"] for r in body["racks"]] == ["r01", "r02"]
    status, body = await call(unix, "GET", "/v1/points", params={"rack": "r02"})
    assert status == 200 and {p["rack"] for p in body["points"]} == {"r02"}
    status, body = await call(unix, "GET", "/v1/loops", params={"rack": "r01"})
    assert status == 200 and body["loops"][0]["actuator"] == PUMP
    status, body = await call(unix, "GET", "/v1/overrides")
    assert status == 200 and body == {"overrides": []}


@pytest.mark.asyncio
async def test_unknown_query_parameters_and_endpoints_are_json_errors(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession
) -> None:
    status, body = await call(unix, "GET", "/v1/points", params={"rak": "r01"})
    assert (status, body["status"]) == (400, 400) and "'rak'" in body["error"]
    status, body = await call(unix, "GET", "/v1/nothing")
    assert status == 404 and body["error"] == "no such endpoint: GET /v1/nothing"
    status, body = await call(unix, "PUT", "/v1/racks/r01/overrides/cdu1/pump_speed_command")
    assert status == 404 and "URL-encode" in body["error"]
    status, body = await call(unix, "POST", "/v1/status")
    assert status == 405 and "use GET" in body["error"]
    status, body = await call(unix, "GET", "/v1/events", params={"limit": "lots"})
    assert status == 400 and "'limit' must be a whole number" in body["error"]
    assert served[1].mutations == []


# --- overrides, mode, reload ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_override_set_list_clear_with_the_callers_identity(
    served: tuple[ControlApi, MemoryPlane],
    unix: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, plane = served
    caplog.set_level(logging.INFO, logger="coolctl.ops.api")
    before = time.time()
    status, record = await call(
        unix, "PUT", f"/v1/racks/r01/overrides/{PUMP_URL}", json=pump_body()
    )
    assert status == 200
    assert record["target"] == PUMP and record["value"] == 0.8 and record["why"] == "seal check"
    assert record["who"] == ME  # from SO_PEERCRED, not from anything the client said
    assert before + 899 < record["expires_at"] < time.time() + 901
    status, permanent = await call(
        unix,
        "PUT",
        "/v1/racks/r01/overrides/pump.setpoint",
        json=pump_body(value=150, ttl_s=None, permanent=True),
    )
    assert status == 200 and permanent["expires_at"] is None and permanent["value"] == 150

    status, listed = await call(unix, "GET", "/v1/overrides", params={"rack": "r01"})
    assert [r["target"] for r in listed["overrides"]] == [PUMP, "pump.setpoint"]

    status, cleared = await call(
        unix, "DELETE", f"/v1/racks/r01/overrides/{PUMP_URL}", json={"reason": "done"}
    )
    assert status == 200 and cleared["id"] == record["id"]
    status, cleared = await call(
        unix, "DELETE", "/v1/racks/r01/overrides/pump.setpoint", params={"reason": "done too"}
    )
    assert status == 200 and cleared["target"] == "pump.setpoint"
    status, body = await call(
        unix, "DELETE", f"/v1/racks/r01/overrides/{PUMP_URL}", json={"reason": "again"}
    )
    assert (status, body) == (404, {"error": f"no override of {PUMP} on r01", "status": 404})

    status, audit = await call(unix, "GET", "/v1/audit", params={"since": "0"})
    actions = [(a["action"], a["who"]) for a in audit["audit"]]
    assert actions == [("override_set", ME)] * 2 + [("override_clear", ME)] * 2
    assert audit["next_since"] == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "coolctl.ops.api"]
    assert any(ME in line and f"override r01 {PUMP} = 0.8" in line for line in lines)
    assert sum("clear override" in line for line in lines) == 3  # two done, one refused
    assert plane.records == {}


@pytest.mark.asyncio
async def test_override_outside_safe_bounds_is_refused_with_the_planes_message(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession
) -> None:
    status, body = await call(
        unix, "PUT", f"/v1/racks/r01/overrides/{PUMP_URL}", json=pump_body(value=0.1)
    )
    assert status == 400
    assert body["error"] == f"0.1 for r01 {PUMP} is outside its safe bounds 0.2..1.0"
    assert served[1].records == {} and served[1].audit_log == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "a JSON object body is required"),
        (b'{"value": NaN, "ttl_s": 60, "reason": "x"}', "not a number JSON allows"),
        (b'{"value": 1e999, "ttl_s": 60, "reason": "x"}', "'value' must be finite"),
        (json.dumps(pump_body(colour="red")).encode(), "unknown field 'colour'"),
        (json.dumps(pump_body(value="0.5")).encode(), "'value' must be a number, not str"),
        (json.dumps(pump_body(value=True)).encode(), "'value' must be a number, not bool"),
        (json.dumps(pump_body(permanent="yes")).encode(), "'permanent' must be true or false"),
        (json.dumps(pump_body(ttl_s=-5)).encode(), "'ttl_s' must be more than 0"),
        (json.dumps(pump_body(permanent=True)).encode(), "not both"),
        (json.dumps(pump_body(ttl_s=None)).encode(), "needs 'ttl_s'"),
        (json.dumps(pump_body(reason="  ")).encode(), "'reason' must not be empty"),
        (json.dumps(pump_body(reason=None)).encode(), "'reason' is required"),
        (json.dumps({"ttl_s": 60, "reason": "x"}).encode(), "'value' is required"),
    ],
)
@pytest.mark.asyncio
async def test_bad_override_bodies_are_refused_before_the_plane_is_called(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession, body: bytes, fragment: str
) -> None:
    status, answer = await call(
        unix,
        "PUT",
        f"/v1/racks/r01/overrides/{PUMP_URL}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and answer["status"] == 400
    assert fragment in answer["error"], answer["error"]
    assert served[1].mutations == []


@pytest.mark.asyncio
async def test_oversized_bodies_and_bad_targets_change_nothing(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession
) -> None:
    huge = pump_body(reason="x" * 70_000)
    status, body = await call(unix, "PUT", f"/v1/racks/r01/overrides/{PUMP_URL}", json=huge)
    assert status == 413 and "64 KiB" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        for _ in range(70):
            yield b" " * 1024

    status, body = await call(unix, "PUT", "/v1/racks/r01/mode", data=chunks())
    assert status == 413
    status, body = await call(unix, "PUT", "/v1/racks/r01/overrides/flux", json=pump_body())
    assert status == 400 and "neither device/point nor LOOP.setpoint" in body["error"]
    assert served[1].mutations == []


@pytest.mark.asyncio
async def test_mode_and_reload(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession
) -> None:
    _, plane = served
    status, body = await call(
        unix, "PUT", "/v1/racks/r01/mode", json={"mode": "manual", "reason": "pump swap"}
    )
    assert status == 200 and body == {"rack": "r01", "mode": "manual", "previous": "auto"}
    assert plane.modes["r01"] == "manual"
    status, body = await call(
        unix, "PUT", "/v1/racks/r01/mode", json={"mode": "off", "reason": "x"}
    )
    assert status == 400 and "'mode' must be" in body["error"]
    status, body = await call(
        unix, "PUT", "/v1/racks/r09/mode", json={"mode": "auto", "reason": "x"}
    )
    assert status == 404 and "no rack 'r09'" in body["error"]
    status, body = await call(unix, "POST", "/v1/reload")
    assert status == 200 and body["racks"] == 2
    status, body = await call(unix, "POST", "/v1/reload", json={"force": True})
    assert status == 400 and "unknown field 'force'" in body["error"]
    plane.bad_config = True
    status, body = await call(unix, "POST", "/v1/reload")
    assert status == 400 and "old config kept" in body["error"]
    assert [a.action for a in plane.audit_log] == ["mode_set", "reload"]


@pytest.mark.asyncio
async def test_unexpected_failures_are_500_without_details_and_logged(
    served: tuple[ControlApi, MemoryPlane],
    unix: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    served[1].fail_status = True
    status, body = await call(unix, "GET", "/v1/status")
    assert status == 500 and "secret" not in body["error"] and "log" in body["error"]
    failure = next(r for r in caplog.records if r.name == "coolctl.ops.api")
    assert failure.exc_info is not None and "secret internals" in str(failure.exc_info[1])


# --- events ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_events_paging_tail_and_long_poll(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession
) -> None:
    _, plane = served
    for n in range(5):
        plane.add_event("r01", "failsafe", f"event {n + 1}")
    status, body = await call(unix, "GET", "/v1/events", params={"since": "1", "limit": "2"})
    assert [e["id"] for e in body["events"]] == [2, 3] and body["next_since"] == 3
    status, body = await call(unix, "GET", "/v1/events", params={"limit": "2"})
    assert [e["id"] for e in body["events"]] == [4, 5]  # no since: the newest

    started = time.monotonic()
    poll = asyncio.create_task(call(unix, "GET", "/v1/events", params={"since": "5", "wait": "20"}))
    await asyncio.wait_for(plane.waiting.wait(), 10)  # the long-poll has reached the plane
    # and a whole request served after it has not ended it
    assert (await call(unix, "GET", "/v1/events", params={"since": "5"}))[1]["events"] == []
    assert not poll.done()
    plane.add_event("r01", "interlock_leak", "leak under r01", "critical")
    status, body = await poll
    assert status == 200 and [e["kind"] for e in body["events"]] == ["interlock_leak"]
    assert time.monotonic() - started < 5 and body["next_since"] == 6

    status, body = await call(unix, "GET", "/v1/events", params={"since": "6", "wait": "0.1"})
    assert body == {"events": [], "next_since": 6}
    await call(unix, "GET", "/v1/events", params={"since": "99", "wait": "0.01"})
    status, body = await call(unix, "GET", "/v1/events", params={"wait": "-1", "since": "1"})
    assert status == 400


@pytest.mark.asyncio
async def test_long_poll_wait_is_capped_and_cut_short_by_stop(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession
) -> None:
    api, plane = served
    poll = asyncio.create_task(
        call(unix, "GET", "/v1/events", params={"since": "0", "wait": "3600"})
    )
    await asyncio.wait_for(plane.waiting.wait(), 5)
    assert plane.waits[0] == (0, 60.0, 100)
    started = time.monotonic()
    await api.stop()
    status, body = await poll
    assert status == 200 and body["events"] == [] and time.monotonic() - started < 3


# --- the socket ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_socket_is_0660_and_removed_on_stop(served: tuple[ControlApi, MemoryPlane]) -> None:
    api, _ = served
    assert stat.S_IMODE(api.socket_path.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(api.socket_path.stat().st_mode)
    await api.stop()
    assert not api.socket_path.exists()


@pytest.mark.asyncio
async def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as crashed:  # bound, never listening: what a crash leaves
        crashed.bind(str(path))
    first = ControlApi(MemoryPlane(), socket_path=path)
    await first.start()
    try:
        second = ControlApi(MemoryPlane(), socket_path=path)
        with pytest.raises(ControlApiError, match="another process is answering"):
            await second.start()
        await second.stop()
        assert path.exists()  # the failed second start left the first one's socket alone
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s:
            status, _ = await call(s, "GET", "http://coolctl/v1/status")
            assert status == 200
    finally:
        await first.stop()
    assert not path.exists()

    path.write_text("not a socket")
    with pytest.raises(ControlApiError, match="is not a socket"):
        await ControlApi(MemoryPlane(), socket_path=path).start()
    assert path.read_text() == "not a socket"


@pytest.mark.asyncio
async def test_socket_group_and_a_missing_group(tmp_path: Path) -> None:
    with pytest.raises(ControlApiError, match="group 'no-such-group-here' does not exist"):
        await ControlApi(
            MemoryPlane(), socket_path=tmp_path / "a.sock", socket_group="no-such-group-here"
        ).start()
    assert not (tmp_path / "a.sock").exists()
    group = grp.getgrgid(os.getgid()).gr_name
    api = ControlApi(MemoryPlane(), socket_path=tmp_path / "b.sock", socket_group=group)
    await api.start()
    try:
        assert (tmp_path / "b.sock").stat().st_gid == os.getgid()
    finally:
        await api.stop()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="coolctl-api-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


REQUEST_FROM_ELSEWHERE = (
    b"PUT /v1/racks/r01/overrides/cdu1%2Fpump_speed_command HTTP/1.1\r\n"
    b"Host: coolctl\r\nConnection: close\r\nContent-Length: 64\r\n\r\n"
    + b'{"value": 0.5, "permanent": true, "reason": "from another user"}'
)


def request_as(path: Path, uid: int, gid: int) -> str:
    """Fork, become uid:gid, send an override over the socket; the answer's body or EACCES.

    A fork rather than a new interpreter: other users cannot read the venv under /root.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls from here on, then _exit
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect(str(path))
                except PermissionError:
                    os.write(write_end, b"EACCES")
                else:
                    sock.sendall(REQUEST_FROM_ELSEWHERE)
                    answer = b"".join(iter(lambda: sock.recv(65536), b""))
                    os.write(write_end, answer.split(b"\r\n\r\n", 1)[1])
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text


def ensure_account(group: str, user: str) -> None:
    """The group and user the test acts as: Debian has them; elsewhere (as root) make them."""
    try:
        grp.getgrnam(group)
    except KeyError:
        subprocess.run(["groupadd", "--system", group], check=True)
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--gid", group, "--no-create-home", user], check=True
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
@pytest.mark.asyncio
async def test_peer_credentials_name_other_users_and_the_group_gates_access(
    shared_dir: Path,
) -> None:
    ensure_account("nogroup", "nobody")
    nogroup = grp.getgrnam("nogroup").gr_gid
    plane = MemoryPlane()
    api = ControlApi(plane, socket_path=shared_dir / "control.sock", socket_group="nogroup")
    await api.start()

    async def as_user(uid: int, gid: int) -> str:
        return await asyncio.to_thread(request_as, api.socket_path, uid, gid)

    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        answer = json.loads(await as_user(nobody, nogroup))
        assert answer["who"] == f"nobody (uid {nobody}) as operator"
        answer = json.loads(await as_user(42424, nogroup))  # a uid without a passwd entry
        assert answer["who"] == "uid 42424 as operator"
        assert await as_user(42424, 42424) == "EACCES"  # not in the socket's group
    finally:
        await api.stop()


# --- TCP ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_needs_the_bearer_token(
    served: tuple[ControlApi, MemoryPlane], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, plane = served
    compared: list[tuple[bytes, bytes]] = []

    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr("coolctl.ops.api.hmac.compare_digest", spy)
    url = f"http://127.0.0.1:{api.tcp_port}/v1/racks/r01/overrides/{PUMP_URL}"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with session.put(url, json=pump_body(), headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                body = await response.json()
                assert body == {"error": "missing or wrong bearer token", "status": 401}
        assert plane.calls == []
        assert (b"wrong", TOKEN.encode()) in compared  # the constant-time comparison was used
        good = {"Authorization": f"Bearer {TOKEN}"}
        async with session.put(url, json=pump_body(), headers=good) as response:
            assert response.status == 200
            assert (await response.json())["who"] == "token@127.0.0.1 as operator"


@pytest.mark.asyncio
async def test_tcp_is_refused_without_a_usable_token_file(tmp_path: Path) -> None:
    with pytest.raises(ControlApiError, match="needs a token file"):
        await ControlApi(
            MemoryPlane(), socket_path=tmp_path / "a.sock", tcp_listen=("127.0.0.1", 0)
        ).start()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ControlApiError, match="is empty"):
        await ControlApi(
            MemoryPlane(),
            socket_path=tmp_path / "a.sock",
            tcp_listen=("127.0.0.1", 0),
            token_file=empty,
        ).start()
    assert not (tmp_path / "a.sock").exists()


@pytest.mark.asyncio
async def test_a_tcp_port_in_use_is_a_clear_error_and_leaves_no_socket(
    tmp_path: Path, token_file: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = ControlApi(
            MemoryPlane(),
            socket_path=tmp_path / "a.sock",
            tcp_listen=("127.0.0.1", port),
            token_file=token_file,
        )
        with pytest.raises(ControlApiError, match=f"cannot listen .* on 127.0.0.1:{port}"):
            await api.start()
    assert not (tmp_path / "a.sock").exists()


@pytest.mark.asyncio
async def test_interlock_reset_is_a_post_with_a_reason_and_audited(
    served: tuple[ControlApi, MemoryPlane], unix: aiohttp.ClientSession
) -> None:
    _, plane = served
    path = "/v1/racks/r01/interlocks/leak/reset"
    status, body = await call(unix, "POST", path, json={"reason": "rope replaced"})
    assert status == 200 and body["interlock"] == "leak" and "wet" in body["was"]
    status, body = await call(unix, "POST", path, json={})
    assert status == 400 and "reason" in body["error"]
    status, body = await call(
        unix, "POST", "/v1/racks/r01/interlocks/pump_failure/reset", json={"reason": "x"}
    )
    assert status == 409 and "not active" in body["error"]
    status, body = await call(
        unix, "POST", "/v1/racks/r09/interlocks/leak/reset", json={"reason": "x"}
    )
    assert status == 404
    assert [a.action for a in plane.audit_log] == ["interlock_reset"]
