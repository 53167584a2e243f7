"""The Redfish driver against the mockup server and rude variants of it: sessions, TLS,
credentials, writes, limits, timeouts, backoff, rediscovery and hostile JSON."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from mockup_server import MOCKUPS, ROOT, SESSIONS, MockupServer, Raw, load_mockup, make_tls

from coolctl.drivers.redfish import (
    Kind,
    RedfishDevice,
    RedfishSettings,
    RedfishTransport,
    WriteError,
)
from coolctl.drivers.redfish_transport import _retry_after_s
from coolctl.model import Quality, Reading
from coolctl.tools.testing import LoopLag, eventually

LOGGER = "coolctl.drivers.redfish"
CHASSIS = "/redfish/v1/Chassis/1U"
CONTROL = f"{CHASSIS}/Controls/PowerLimit"
ENVIRONMENT = f"{CHASSIS}/EnvironmentMetrics"
PASSWORD = "pa55-w0rd-Secret"
GOOD_RACKMOUNT = {
    "power": 374.0,
    "power_limit": 500.0,
    "energy": 325675 * 3.6e6,
    "chip_temperature": 44.0,
    "chip_throttle_temperature": 45.0,  # the CPU sensor's UpperCritical threshold
}


def config(url: str, **overrides: Any) -> RedfishSettings:
    """Quick settings for tests: short timeouts and backoffs."""
    values: dict[str, Any] = {
        "auth": "none",
        "timeout_s": 0.5,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.4,
    }
    values.update(overrides)
    return RedfishSettings(url, **values)


def by_name(readings: list[Reading]) -> dict[str, Reading]:
    return {r.point.name: r for r in readings}


def good(readings: list[Reading]) -> dict[str, float | None]:
    return {r.point.name: r.value for r in readings if r.quality is Quality.GOOD}


async def poll_until(
    device: RedfishDevice, done: Callable[[list[Reading]], bool], what: str
) -> list[Reading]:
    """Poll as a control loop would until `done(readings)`; the last readings. A backoff then
    passes on its own clock (the device sends nothing meanwhile) and no test guesses its end."""
    readings: list[Reading] = []

    async def polled() -> bool:
        nonlocal readings
        readings = await device.poll()
        return done(readings)

    await eventually(polled, 10.0, what=what)
    return readings


async def poll_until_sent(device: RedfishDevice, server: MockupServer) -> list[Reading]:
    """Poll until a request of the device's reaches the server again."""
    seen = len(server.seen)
    return await poll_until(device, lambda _: len(server.seen) > seen, "a request sent again")


async def poll_until_good(device: RedfishDevice, expected: dict[str, float | None]) -> None:
    await poll_until(device, lambda readings: good(readings) == expected, f"good {expected}")


def mockup(name: str, **features: Any) -> dict[str, Any]:
    """A mockup's resources; with `features`, its root's ProtocolFeaturesSupported replaced."""
    resources = load_mockup(MOCKUPS / name)[0]
    if features or features == {}:
        resources[ROOT]["ProtocolFeaturesSupported"] = features
    return resources


@asynccontextmanager
async def serve(server: MockupServer, tls: Any = None) -> AsyncIterator[str]:
    url = await server.start(tls.server_context if tls is not None else None)
    try:
        yield url
    finally:
        await server.stop()


def server_device(url: str, kind: Kind = "server", **overrides: Any) -> RedfishDevice:
    return RedfishDevice(rack="r1", device="d1", kind=kind, settings=config(url, **overrides))


# ----------------------------------------------------------------------------------------------
# Sessions, Basic, TLS


@pytest.mark.asyncio
async def test_session_login_relogin_after_revocation_and_logout(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    server = MockupServer.from_mockup("public-rackmount1", require_auth=True)
    async with serve(server, tls) as url:
        device = server_device(
            url, auth="session", username="admin", password=PASSWORD, ca_file=tls.ca_file
        )
        assert good(await device.poll()) == GOOD_RACKMOUNT
        assert good(await device.poll()) == GOOD_RACKMOUNT
        assert server.logins == [("admin", PASSWORD)]
        authenticated = [s for s in server.seen if s.path not in (ROOT, SESSIONS)]
        assert all(s.headers.get("X-Auth-Token") == server.tokens[0] for s in authenticated)

        server.revoke_sessions()  # the BMC restarted, or expired the session
        assert good(await device.poll()) == GOOD_RACKMOUNT
        assert len(server.logins) == 2

        server.revoke_sessions()  # a PATCH meeting an expired session logs in and retries
        assert await device.write("power_limit", 450.0) == 450.0
        assert len(server.logins) == 3
        assert len(server.requests("PATCH", CONTROL)) == 2  # refused, then accepted
        assert [p for p, _, _ in server.patches] == [CONTROL]

        await device.close()
        assert len(server.logouts) == 1
        assert server.sessions == {}
        assert device.stats.errors_by_kind == {}


@pytest.mark.asyncio
async def test_refused_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tls = make_tls(tmp_path)
    server = MockupServer.from_mockup(
        "public-rackmount1", require_auth=True, credentials=("admin", "right")
    )
    async with serve(server, tls) as url:
        device = server_device(
            url, auth="session", username="admin", password=PASSWORD, ca_file=tls.ca_file
        )
        with caplog.at_level(logging.INFO, LOGGER):
            readings = await device.poll()
            seen = len(server.seen)
            await device.poll()  # backing off: nothing sent
            assert len(server.seen) == seen
        assert {r.quality for r in readings} == {Quality.MISSING}
        assert device.stats.errors_by_kind == {"auth": 1}
        assert device.stats.consecutive_failures == 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "auth" in warnings[0].getMessage()
        assert warnings[0].rack == "r1" and warnings[0].device == "d1"  # type: ignore[attr-defined]
        assert PASSWORD not in caplog.text
        await device.close()


@pytest.mark.asyncio
async def test_basic_authentication(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    server = MockupServer.from_mockup(
        "public-pdu", require_auth=True, credentials=("admin", PASSWORD)
    )
    async with serve(server, tls) as url:
        device = server_device(
            url, "pdu", auth="basic", username="admin", password=PASSWORD, ca_file=tls.ca_file
        )
        assert good(await device.poll()) == {"power": 6438.0, "energy": 56438 * 3.6e6}
        await device.close()
        expected = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        assert server.logins == [] and server.logouts == []
        assert all(
            s.headers.get("Authorization") == expected for s in server.seen if s.path != ROOT
        )

        wrong = server_device(
            url, "pdu", auth="basic", username="admin", password="nope", ca_file=tls.ca_file
        )
        assert {r.quality for r in await wrong.poll()} == {Quality.MISSING}
        assert wrong.stats.errors_by_kind == {"auth": 1}
        await wrong.close()


@pytest.mark.asyncio
async def test_tls_is_verified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tls = make_tls(tmp_path)
    server = MockupServer.from_mockup("public-pdu")
    async with serve(server, tls) as url:
        trusted = server_device(url, "pdu", ca_file=tls.ca_file)
        assert good(await trusted.poll())
        await trusted.close()

        with caplog.at_level(logging.INFO, LOGGER):
            untrusted = server_device(url, "pdu")  # the system's CAs do not know the test CA
            readings = await untrusted.poll()
            await untrusted.close()
        assert {r.quality for r in readings} == {Quality.MISSING}
        assert untrusted.stats.errors_by_kind == {"connection": 1}
        assert "TLS certificate verification failed" in caplog.text
        caplog.clear()

        with caplog.at_level(logging.INFO, LOGGER):
            insecure = server_device(url, "pdu", verify_tls=False)
            for _ in range(3):
                assert good(await insecure.poll())
            await insecure.close()
        off = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
        assert len(off) == 1 and off[0].levelno == logging.WARNING


def test_settings_refuse_unsafe_or_wrong_configurations(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="https"):
        RedfishSettings("http://bmc", username="admin", password=PASSWORD)
    with pytest.raises(ValueError, match="https"):
        RedfishSettings("http://bmc", auth="basic", username="admin", password=PASSWORD)
    with pytest.raises(ValueError) as caught:
        RedfishSettings(f"https://admin:{PASSWORD}@bmc", auth="none")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ValueError, match="origin"):
        RedfishSettings("https://bmc/redfish/v1/Chassis", auth="none")
    with pytest.raises(ValueError, match="username"):
        RedfishSettings("https://bmc", auth="session")
    with pytest.raises(ValueError, match="choose one"):
        RedfishSettings("https://bmc", auth="none", ca_file=tmp_path, verify_tls=False)
    with pytest.raises(ValueError, match="max_in_flight"):
        RedfishSettings("https://bmc", auth="none", max_in_flight=0)
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate")
    with pytest.raises(ValueError, match="CA file"):
        RedfishDevice(
            rack="r",
            device="d",
            kind="server",
            settings=RedfishSettings("https://bmc", auth="none", ca_file=bad_ca),
        )
    with pytest.raises(ValueError, match="kind"):
        RedfishDevice(
            rack="r",
            device="d",
            kind="toaster",  # type: ignore[arg-type]
            settings=RedfishSettings("https://bmc", auth="none"),
        )


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:Service incorrectly responded:UserWarning")
async def test_credentials_stay_out_of_logs_reprs_and_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls = make_tls(tmp_path)
    server = MockupServer.from_mockup("public-rackmount1", require_auth=True)
    texts: list[str] = []
    async with serve(server, tls) as url:
        device = server_device(
            url, auth="session", username="admin", password=PASSWORD, ca_file=tls.ca_file
        )
        with caplog.at_level(logging.DEBUG):
            await device.poll()
            server.revoke_sessions()
            await device.poll()
            server.fail_412 = 2
            for point, value in (("power_limit", 600.0), ("power_limit", 5000.0), ("power", 1.0)):
                with pytest.raises(WriteError) as caught:
                    await device.write(point, value)
                texts.append(str(caught.value))
            server.status_for["*"] = (503, {"Retry-After": "1"})
            await device.poll()
            server.status_for["*"] = (401, {})
            await poll_until_sent(device, server)  # once the Retry-After has passed
            texts += [repr(device), repr(device.settings), repr(device.stats), str(device.stats)]
            await device.close()
        basic = server_device(
            url, auth="basic", username="admin", password=PASSWORD, ca_file=tls.ca_file
        )
        with caplog.at_level(logging.DEBUG):
            await basic.poll()
            await basic.close()
        texts += [repr(basic), repr(basic.settings)]
    secrets = [PASSWORD, *server.tokens, base64.b64encode(f"admin:{PASSWORD}".encode()).decode()]
    assert len(server.tokens) >= 2
    everything = "\n".join([*texts, caplog.text, *(str(r.__dict__) for r in caplog.records)])
    for secret in secrets:
        assert secret not in everything


@pytest.mark.asyncio
async def test_a_closed_device_logs_in_again_when_polled(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    server = MockupServer.from_mockup("public-pdu", require_auth=True)
    async with serve(server, tls) as url:
        device = server_device(
            url, "pdu", auth="session", username="admin", password=PASSWORD, ca_file=tls.ca_file
        )
        assert good(await device.poll())
        await device.close()
        await device.close()  # idempotent
        assert len(server.logouts) == 1 and server.sessions == {}
        assert good(await device.poll())
        assert len(server.logins) == 2
        await device.close()
        assert len(server.logouts) == 2


@pytest.mark.asyncio
async def test_choosing_the_resource() -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    async with serve(server) as url:
        for selector in ("1U", CHASSIS, None):
            device = RedfishDevice(
                rack="r", device="d", kind="server", settings=config(url), resource=selector
            )
            assert good(await device.poll()) == GOOD_RACKMOUNT
            assert device.found is not None and device.found.uri == CHASSIS
            await device.close()

        missing = RedfishDevice(
            rack="r",
            device="d",
            kind="server",
            settings=config(url, backoff_max_s=0.2),
            resource="2U",
        )
        assert {r.quality for r in await missing.poll()} == {Quality.MISSING}
        assert missing.stats.errors_by_kind == {"http_4xx": 1}
        seen = len(server.seen)
        await missing.poll()  # not looked for again so soon
        assert len(server.seen) == seen
        await poll_until_sent(missing, server)  # later, it is
        await missing.close()


# ----------------------------------------------------------------------------------------------
# Writes


@pytest.mark.asyncio
async def test_writes_use_if_match_and_retry_once_after_412() -> None:
    server = MockupServer.from_mockup("public-rackmount1", require_if_match=True)
    async with serve(server) as url:
        device = server_device(url)
        await device.poll()
        etag = server.etag(CONTROL)
        assert await device.write("power_limit", 600.0) == 600.0
        assert server.patches == [(CONTROL, {"SetPoint": 600}, etag)]

        # Someone else changed the control meanwhile: coolctl's ETag is old.
        server.resources[CONTROL]["ControlMode"] = "Override"
        server.patches.clear()
        assert await device.write("power_limit", 650.0) == 650.0
        first, second = server.patches
        assert first[2] != second[2] and second[2] is not None
        assert server.resources[CONTROL]["ControlMode"] == "Override"

        server.fail_412 = 2  # it keeps changing: give up after one retry
        with pytest.raises(WriteError, match="412"):
            await device.write("power_limit", 700.0)
        assert device.stats.writes == 3 and device.stats.write_failures == 1
        assert device.stats.errors_by_kind == {"http_4xx": 1}
        await device.close()


@pytest.mark.asyncio
async def test_writes_outside_the_declared_range_are_refused_before_sending() -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    async with serve(server) as url:
        device = server_device(url)
        with pytest.raises(WriteError):
            await device.write("power", 100.0)  # not writable (and discovers first)
        await device.poll()
        assert device.writable() == {"power_limit": (150.0, 1000.0)}
        requests = device.stats.requests
        for point, value in (
            ("power_limit", 1000.5),
            ("power_limit", 149.0),
            ("power_limit", math.nan),
            ("power_limit", math.inf),
            ("pump_speed_command", 0.5),
            ("chip_temperature", 40.0),
        ):
            with pytest.raises(WriteError):
                await device.write(point, value)
        assert device.stats.requests == requests
        assert server.patches == []

        # The device narrowed its range since coolctl read it: the 412 re-read catches it.
        server.resources[CONTROL]["AllowableMax"] = 600
        with pytest.raises(WriteError, match="outside"):
            await device.write("power_limit", 900.0)
        assert len(server.patches) == 1  # the first try, refused by the ETag; no second
        assert server.resources[CONTROL]["SetPoint"] == 500
        assert device.writable() == {"power_limit": (150.0, 600.0)}
        await device.close()


@pytest.mark.asyncio
async def test_write_read_back() -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    clamp: dict[str, float] = {"max": 450.0, "step": 0.0}

    async def clamping(request: web.Request) -> web.StreamResponse | None:
        if request.method != "PATCH" or request.path != CONTROL:
            return None
        asked = (await request.json())["SetPoint"]
        held = min(asked, clamp["max"])
        if clamp["step"]:
            held = round(held / clamp["step"]) * clamp["step"]
        server.resources[CONTROL]["SetPoint"] = held
        return web.Response(status=204)

    server.hook = clamping
    async with serve(server) as url:
        device = server_device(url)
        await device.poll()
        assert await device.write("power_limit", 400.0) == 400.0
        with pytest.raises(WriteError, match="reads back 450"):
            await device.write("power_limit", 600.0)
        assert device.stats.errors_by_kind == {"mismatch": 1}
        # A control that works in steps of 10 W: a value within half a step is what was asked.
        server.resources[CONTROL]["Increment"] = 10
        clamp.update(max=1000.0, step=10.0)
        await device.poll()
        assert await device.write("power_limit", 604.0) == 600.0
        assert await device.write("power_limit", 606.0) == 610.0
        await device.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "features",
    [{"SelectQuery": True, "ExpandQuery": {"NoLinks": True, "Levels": True}}, {}],
    ids=["select-and-expand", "plain"],
)
async def test_poll_requests_are_the_gets_a_poll_sends(features: dict[str, Any]) -> None:
    # The scale benchmark's bare loop replays poll_requests(): they must be what polls send.
    server = MockupServer(mockup("public-rackmount1", **features))
    async with serve(server) as url:
        device = server_device(url)
        await device.poll()
        for _ in range(2):
            server.seen.clear()
            await device.poll()
            sent = sorted((s.path, dict(parse_qsl(s.query))) for s in server.seen)
            assert sent == sorted((uri, query or {}) for uri, query in device.poll_requests())
        queries = [query for _, query in device.poll_requests() if query]
        assert bool(queries) == bool(features)  # $select/$expand only where supported
        await device.close()


@pytest.mark.asyncio
async def test_a_patch_answered_with_the_resource_is_its_own_read_back() -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    async with serve(server) as url:
        device = server_device(url)
        await device.poll()
        gets = len(server.requests("GET", CONTROL))
        assert await device.write("power_limit", 600.0) == 600.0
        assert len(server.requests("PATCH", CONTROL)) == 1
        assert len(server.requests("GET", CONTROL)) == gets  # no GET after the PATCH
        await device.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer",
    [
        {"@Message.ExtendedInfo": [{"MessageId": "Base.1.0.Success"}]},
        {"@odata.id": ENVIRONMENT, "SetPoint": 600},
        {"@odata.id": CONTROL, "SetPoint": "six hundred"},
    ],
    ids=["message", "another-resource", "unreadable"],
)
async def test_a_patch_answer_that_is_not_the_resource_costs_a_read_back_get(
    answer: dict[str, Any],
) -> None:
    server = MockupServer.from_mockup("public-rackmount1")

    async def answering(request: web.Request) -> web.StreamResponse | None:
        if request.method != "PATCH" or request.path != CONTROL:
            return None
        server.resources[CONTROL]["SetPoint"] = 450  # the device holds less than asked
        return web.json_response(answer)

    server.hook = answering
    async with serve(server) as url:
        device = server_device(url)
        await device.poll()
        gets = len(server.requests("GET", CONTROL))
        with pytest.raises(WriteError, match="reads back 450"):
            await device.write("power_limit", 600.0)
        assert len(server.requests("GET", CONTROL)) == gets + 1
        await device.close()


# ----------------------------------------------------------------------------------------------
# Limits, timeouts, backoff


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_requests_in_flight_never_exceed_the_limit(limit: int) -> None:
    # Without $expand, discovery reads the 41 sensors one by one, as fast as it is let.
    server = MockupServer(mockup("public-rackmount1", SelectQuery=False))
    server.delay_s["*"] = 0.01
    async with serve(server) as url:
        device = server_device(url, max_in_flight=limit)
        assert good(await device.poll()) == GOOD_RACKMOUNT
        assert good(await device.poll()) == GOOD_RACKMOUNT
        await device.close()
    assert server.max_in_flight == limit
    assert device.stats.requests == len(server.seen)


@pytest.mark.asyncio
async def test_a_device_that_stops_answering_goes_stale_within_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    async with serve(server) as url:
        device = server_device(url, timeout_s=0.2)
        with caplog.at_level(logging.INFO, LOGGER):
            before = by_name(await device.poll())
            server.delay_s["*"] = 1.0
            started = time.monotonic()
            after = by_name(await device.poll())
            assert time.monotonic() - started < 1.5
            for name, reading in after.items():
                assert reading.quality is before[name].quality or reading.quality is Quality.STALE
                if before[name].quality is Quality.GOOD:
                    assert reading.quality is Quality.STALE
                    assert (reading.value, reading.ts) == (before[name].value, before[name].ts)
            assert device.stats.errors_by_kind["timeout"] >= 1
            assert device.stats.last_success_ts is not None
            server.delay_s.clear()
            await poll_until_good(device, GOOD_RACKMOUNT)
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert sum("failing" in m for m in messages) == 1
        assert sum("recovered" in m for m in messages) == 1
        await device.close()


@pytest.mark.asyncio
async def test_a_silent_socket_does_not_hang_a_poll() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(10)

    listener = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        device = server_device(f"http://127.0.0.1:{port}", timeout_s=0.2)
        started = time.monotonic()
        readings = await device.poll()
        assert time.monotonic() - started < 1.5
        assert {r.quality for r in readings} == {Quality.MISSING}
        assert device.stats.errors_by_kind == {"timeout": 1}
        await device.close()
    finally:
        listener.close()


@pytest.mark.asyncio
async def test_retry_after_is_honoured() -> None:
    server = MockupServer.from_mockup("public-pdu")
    async with serve(server) as url:
        device = server_device(url, "pdu", backoff_max_s=5.0)
        first = by_name(await device.poll())
        server.status_for["*"] = (503, {"Retry-After": "1"})
        busy = by_name(await device.poll())
        refused_at = server.seen[-1].ts
        assert {r.quality for r in busy.values()} == {Quality.STALE}
        assert busy["power"].value == first["power"].value
        server.status_for.clear()
        await poll_until_sent(device, server)  # polled meanwhile, it waited for the Retry-After
        assert device.stats.errors_by_kind == {"http_5xx": 1}
        after = [s.ts for s in server.seen if s.ts > refused_at]
        assert after and min(after) - refused_at >= 1.0
        assert good(await device.poll()) == {"power": 6438.0, "energy": 56438 * 3.6e6}
        await device.close()


@pytest.mark.asyncio
async def test_backoff_doubles_and_nothing_is_sent_meanwhile() -> None:
    server = MockupServer.from_mockup("public-pdu")
    async with serve(server) as url:
        device = server_device(url, "pdu", backoff_min_s=0.05, backoff_max_s=0.2)
        await device.poll()
        start = len(server.seen)
        server.status_for["*"] = (500, {})
        polls = 0
        deadline = time.monotonic() + 1.2
        async with LoopLag() as lag:
            while time.monotonic() < deadline:  # a caller that polls every 5 ms
                readings = await device.poll()
                assert {r.quality for r in readings} == {Quality.STALE}
                polls += 1
                await asyncio.sleep(0.005)
        times = [s.ts for s in server.seen[start:]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert polls > 3 * len(times)
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1
        assert all(gap >= 0.2 for gap in gaps[2:])  # capped at backoff_max_s
        # and no longer, but for what the loop ran late meanwhile
        assert all(gap < 0.3 + lag.max_s for gap in gaps[2:]), (gaps, lag.max_s)
        server.status_for.clear()
        await poll_until(device, lambda readings: bool(good(readings)), "good readings")
        assert device.stats.consecutive_failures == 0
        await device.close()


def test_retry_after_values() -> None:
    assert _retry_after_s("120") == 120.0
    assert _retry_after_s(None) is None
    assert _retry_after_s("soon") is None
    assert _retry_after_s("-5") is None
    assert _retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# ----------------------------------------------------------------------------------------------
# Rediscovery


@pytest.mark.asyncio
async def test_a_resource_that_404s_is_rediscovered() -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    async with serve(server) as url:
        device = server_device(url, backoff_max_s=0.2)
        assert good(await device.poll()) == GOOD_RACKMOUNT

        # Firmware update: the control moved.
        moved = f"{CHASSIS}/Controls/PowerCap"
        server.resources[moved] = {**server.resources.pop(CONTROL), "@odata.id": moved}
        server.resources[f"{CHASSIS}/Controls"]["Members"][0]["@odata.id"] = moved
        await poll_until_good(device, GOOD_RACKMOUNT)
        assert device.stats.discoveries == 2
        assert device.sources()["power_limit"] == f"{moved}#/SetPoint"

        # Gone again right away: no second discovery so soon, the point is bad meanwhile.
        server.resources.pop(moved)
        readings = by_name(await device.poll())
        assert readings["power_limit"].quality is Quality.BAD
        assert good(list(readings.values())) == {
            k: v for k, v in GOOD_RACKMOUNT.items() if k != "power_limit"
        }
        assert device.stats.discoveries == 2
        rediscovered = await poll_until(  # later: legacy Power has one
            device, lambda _: device.stats.discoveries > 2, "a rediscovery"
        )
        readings = by_name(rediscovered)
        assert device.stats.discoveries == 3
        assert readings["power_limit"].value == 500.0
        assert device.sources()["power_limit"].endswith(
            "EnvironmentMetrics#/PowerLimitWatts/SetPoint"
        )
        await device.close()


# ----------------------------------------------------------------------------------------------
# Hostile answers


@pytest.mark.asyncio
async def test_broken_branches_at_discovery_spoil_only_their_points() -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    server.raw[f"{CHASSIS}/Controls"] = Raw(body=b'{"Members": [1, {"@odata.id": 7}, null')
    server.raw[f"{CHASSIS}/Thermal"] = Raw(status=404)
    async with serve(server) as url:
        device = server_device(url)
        readings = await device.poll()
        assert good(readings) == GOOD_RACKMOUNT  # power_limit from EnvironmentMetrics instead
        assert device.sources()["power_limit"].endswith("PowerLimitWatts/SetPoint")
        await device.close()

    server = MockupServer.from_mockup("public-rackmount1")
    server.status_for[f"{CHASSIS}/Sensors"] = (500, {})
    async with serve(server) as url:
        device = server_device(url)
        assert {r.quality for r in await device.poll()} == {Quality.MISSING}
        assert device.stats.errors_by_kind == {"http_5xx": 1}
        server.status_for.clear()
        await poll_until_good(device, GOOD_RACKMOUNT)
        await device.close()


HOSTILE_ENVIRONMENT: list[tuple[str, bytes, bool]] = [
    # (what, body of EnvironmentMetrics, whether power still reads good)
    ("NaN", b'{"PowerWatts": {"Reading": NaN}}', False),
    ("Infinity", b'{"PowerWatts": {"Reading": -Infinity}}', False),
    ("overflow", b'{"PowerWatts": {"Reading": 1e999}}', False),
    ("string", b'{"PowerWatts": {"Reading": "374"}}', False),
    ("boolean", b'{"PowerWatts": {"Reading": true}}', False),
    ("null excerpt", b'{"PowerWatts": null}', False),
    ("missing", b'{"Name": "x"}', False),
    ("implausible", b'{"PowerWatts": {"Reading": 1e300}}', False),
    ("array", b"[374]", False),
    ("not JSON", b"<html>oops</html>", False),
    ("deep nesting", b"[" * 200_000, False),
    ("long number", b'{"PowerWatts": {"Reading": 1' + b"0" * 5000 + b"}}", False),
    ("bad UTF-8 up front", b'\xff\xfe{"PowerWatts": {"Reading": 374}}', False),
    ("bad UTF-8 elsewhere", b'{"Name": "\xc3\x28\xff", "PowerWatts": {"Reading": 374}}', True),
    (
        "huge array elsewhere",
        b'{"PowerWatts": {"Reading": 374}, "X": [' + b"0," * 200_000 + b"0]}",
        True,
    ),
    ("lone surrogate", b'{"Name": "\\ud800", "PowerWatts": {"Reading": 374}}', True),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("what", "body", "power_good"), HOSTILE_ENVIRONMENT)
async def test_hostile_bodies(what: str, body: bytes, power_good: bool) -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    async with serve(server) as url:
        device = server_device(url)
        await device.poll()
        server.raw[ENVIRONMENT] = Raw(body=body)
        readings = by_name(await device.poll())
        assert (readings["power"].quality is Quality.GOOD) is power_good, what
        if power_good:
            assert readings["power"].value == 374.0
        others = {k: v for k, v in GOOD_RACKMOUNT.items() if k != "power"}
        assert {k: v for k, v in good(list(readings.values())).items() if k != "power"} == others
        await device.close()


@pytest.mark.asyncio
async def test_bodies_over_the_limit_are_refused() -> None:
    server = MockupServer.from_mockup("public-rackmount1")

    async def streamed(request: web.Request) -> web.StreamResponse | None:
        if request.path != f"{CHASSIS}/Sensors/CPU1Temp":
            return None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()  # no Content-Length to go by
        await response.prepare(request)
        await response.write(b'{"Reading": 44, "Pad": "')
        for _ in range(64):
            await response.write(b"x" * 16384)
        await response.write(b'"}')
        await response.write_eof()
        return response

    async with serve(server) as url:
        device = server_device(url, max_body_bytes=64 * 1024)
        await device.poll()
        padding = "x" * 100_000
        server.raw[ENVIRONMENT] = Raw(
            body=json.dumps({"PowerWatts": {"Reading": 374}, "Pad": padding}).encode()
        )
        server.hook = streamed
        readings = by_name(await device.poll())
        assert readings["power"].quality is Quality.BAD
        assert readings["chip_temperature"].quality is Quality.BAD
        assert readings["power_limit"].quality is Quality.GOOD
        assert readings["energy"].quality is Quality.GOOD
        assert device.stats.errors_by_kind.get("too_large") == 2
        await device.close()


def _hostile_json() -> st.SearchStrategy[Any]:
    keys = st.sampled_from(
        [
            "Reading",
            "SetPoint",
            "PowerWatts",
            "PowerLimitWatts",
            "EnergykWh",
            "AllowableMin",
            "AllowableMax",
            "ControlType",
            "PhysicalContext",
            "ReadingType",
            "ReadingUnits",
            "Status",
            "State",
            "Members",
            "@odata.id",
            "SupplyTemperatureCelsius",
            "ReturnTemperatureCelsius",
            "FlowLitersPerMinute",
            "PumpSpeedPercent",
            "SpeedControlPercent",
            "LeakDetectorGroups",
            "Detectors",
            "DetectorState",
            "HeatRemovedkW",
            "DeltaPressurekPa",
        ]
    ) | st.text(max_size=6)
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**30), max_value=10**30)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from(["OK", "Warning", "Critical", "Absent", "Enabled", "Power", "Cel"])
        | st.text(max_size=10)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6)
        ),
        max_leaves=25,
    )


_RAW_OUTRAGES = st.sampled_from(
    [
        b"",
        b"{",
        b"null",
        b"[" * 50_000,
        b'{"a": ' * 5_000,
        b"\xff" * 100,
        b'{"Members": [' + b'{"@odata.id": "/x"},' * 10_000 + b"{}]}",
    ]
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("public-rackmount1", "server"), ("public-cooling-unit", "cdu"), ("public-pdu", "pdu")],
)
def test_random_json_spoils_only_the_points_it_replaces(name: str, kind: Kind) -> None:
    """Any JSON (or junk) in place of a resource the device reads: poll() returns, the points
    read from that resource are bad (or good with a finite value, if the junk happens to be
    valid), and every other point reads as before."""
    with asyncio.Runner() as runner:
        # No $expand, so that every bound resource is read on its own.
        server = MockupServer(mockup(name, SelectQuery=False))
        url = runner.run(server.start())
        device = server_device(url, kind)
        reference = good(runner.run(device.poll()))
        assert len(reference) >= 2
        uses: dict[str, set[str]] = {}
        for point, where in device.sources().items():
            for pointer in where.split(", "):
                uses.setdefault(pointer.split("#", 1)[0], set()).add(point)

        @hypothesis_settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            uri=st.sampled_from(sorted(uses)),
            body=_hostile_json().map(lambda v: json.dumps(v).encode()) | _RAW_OUTRAGES,
        )
        def check(uri: str, body: bytes) -> None:
            server.raw[uri] = Raw(body=body)
            try:
                readings = by_name(runner.run(device.poll()))
                assert set(device.sources()) <= set(readings)
                for low, high in device.writable().values():
                    assert low <= high
            finally:
                del server.raw[uri]
            for point, value in reference.items():
                reading = readings[point]
                if point in uses[uri]:
                    assert reading.quality in (Quality.BAD, Quality.GOOD), point
                    if reading.quality is Quality.GOOD:
                        assert reading.value is not None and math.isfinite(reading.value)
                else:
                    assert (reading.quality, reading.value) == (Quality.GOOD, value), point

        try:
            check()
            assert good(runner.run(device.poll())) == reference
            assert device.stats.discoveries == 1
        finally:
            runner.run(device.close())
            runner.run(server.stop())


# ----------------------------------------------------------------------------------------------
# Sharing a transport


@pytest.mark.asyncio
async def test_devices_can_share_one_session() -> None:
    server = MockupServer.from_mockup("public-cooling-unit")
    async with serve(server) as url:
        settings = config(url)
        transport = RedfishTransport(settings)
        cdu = RedfishDevice(
            rack="r", device="cdu", kind="cdu", settings=settings, transport=transport
        )
        chassis = RedfishDevice(
            rack="r", device="x", kind="server", settings=settings, transport=transport
        )
        assert cdu.writable() == {} and cdu.sources() == {}
        await asyncio.gather(cdu.poll(), chassis.poll())
        await cdu.close()  # not the transport's owner: the session stays
        assert good(await chassis.poll()) == {}
        assert cdu.stats.requests + chassis.stats.requests == len(server.seen)
        await transport.close()
        await chassis.close()
