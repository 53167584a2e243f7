"""Protocol tests of the simulated Redfish services, over real HTTPS on loopback.

The client is aiohttp's own, never coolctl.drivers: the simulators are checked against an
independent client, trusting only the simulation's CA. The plant runs 20 times faster than real
time, so a power cap or pump command shows its effect within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict

from coolctl.simulators.live import LiveSimulation, Service, SimDeviceSpec, SimRackSpec
from coolctl.simulators.redfish_resources import metadata_document
from coolctl.simulators.redfish_server import HUGE_ARRAY_LENGTH, RedfishDeviceServer
from coolctl.simulators.tls import client_ssl_context, issue_certificate
from coolctl.tools.testing import eventually

TIME_SCALE = 20.0
PASSWORD = "rack-secret-1"
ROOT = "/redfish/v1"
LIMIT = f"{ROOT}/Chassis/1/Controls/PowerLimit"
POWER = f"{ROOT}/Chassis/1/Sensors/TotalPower"
CDU = f"{ROOT}/ThermalEquipment/CDUs/1"
PDU = f"{ROOT}/PowerEquipment/RackPDUs/1"


class Reply:
    """What came back: status, headers and the body (parsed JSON when it is JSON)."""

    def __init__(self, status: int, headers: CIMultiDict[str], text: str) -> None:
        self.status = status
        self.headers = headers
        self.text = text
        try:
            self.body: Any = json.loads(text) if text else None
        except ValueError:
            self.body = None

    @property
    def message_ids(self) -> list[str]:
        info = self.body["error"]["@Message.ExtendedInfo"]
        return [m["MessageId"].rsplit(".", 1)[-1] for m in info]


class Client:
    """A Redfish client for one simulated service: HTTPS trusting the simulation CA only."""

    def __init__(self, service: Service, password: str = PASSWORD) -> None:
        self.url = service.url
        self.ca = Path(service.ca)
        self.context = client_ssl_context(self.ca)
        self.basic = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.context))

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = "basic",
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["X-Auth-Token"] = token
        elif auth == "basic":
            sent["Authorization"] = self.basic
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.url + path, data=data, headers=sent) as r:
            return Reply(r.status, CIMultiDict(r.headers), await r.text())

    async def get(self, path: str, **options: Any) -> Reply:
        return await self.call("GET", path, **options)

    async def patch(self, path: str, body: Any, **options: Any) -> Reply:
        return await self.call("PATCH", path, body=body, **options)

    async def reading(self, path: str) -> float:
        reply = await self.get(path)
        assert reply.status == 200, reply.text
        return float(reply.body["Reading"])


def rack() -> SimRackSpec:
    return SimRackSpec(
        "r01",
        [
            SimDeviceSpec("bmc0", "server", server=0, password=PASSWORD),
            SimDeviceSpec(
                "bmc1",
                "server",
                server=1,
                password=PASSWORD,
                legacy_power=True,
                require_if_match=True,
            ),
            SimDeviceSpec("cdu1", "cdu", protocol="redfish", password=PASSWORD),
            SimDeviceSpec("pdu1", "pdu", protocol="redfish", password=PASSWORD),
            SimDeviceSpec("bmc2", "server", server=2),  # random password
        ],
        load=0.6,
    )


@pytest_asyncio.fixture
async def sim(tmp_path: Path) -> AsyncIterator[LiveSimulation]:
    async with LiveSimulation([rack()], time_scale=TIME_SCALE, tls_dir=tmp_path / "tls") as s:
        yield s


@pytest_asyncio.fixture
async def bmc(sim: LiveSimulation) -> AsyncIterator[Client]:
    client = Client(sim.service("r01", "bmc0"))
    yield client
    await client.close()


def server(sim: LiveSimulation, device: str) -> RedfishDeviceServer:
    return sim.redfish[("r01", device)]


# --------------------------------------------------------------------------- wiring, TLS


@pytest.mark.asyncio
async def test_service_line_names_url_account_and_ca(sim: LiveSimulation) -> None:
    service = sim.service("r01", "bmc0")
    ca = sim.tls.ca_cert if sim.tls else None
    assert service.line() == (
        f"redfish https://127.0.0.1:{server(sim, 'bmc0').port} rack=r01 device=bmc0 user=admin"
        f" password={PASSWORD} ca={ca}"
    )
    generated = sim.service("r01", "bmc2")
    assert re.fullmatch(
        r"redfish https://127\.0\.0\.1:\d+ rack=r01 device=bmc2 user=admin password=\S{12,}"
        r" ca=\S+",
        generated.line(),
    )
    assert await asyncio.to_thread(Path(generated.ca).is_file)
    assert generated.password != PASSWORD
    assert Service(
        "redfish", "", "r", "d", url="https://h:1", username="u", password="p", ca="/c"
    ).line() == ("redfish https://h:1 rack=r device=d user=u password=p ca=/c")
    # the Modbus and MQTT lines are untouched; a sensor cannot speak Redfish
    assert SimDeviceSpec("c", "cdu").protocol == "modbus"
    assert SimDeviceSpec("b", "server").protocol == "redfish"
    with pytest.raises(ValueError, match="speaks mqtt"):
        SimDeviceSpec("s", "sensor", protocol="redfish")
    with pytest.raises(ValueError, match=r"outside 0\.\.17"):
        LiveSimulation([SimRackSpec("r9", [SimDeviceSpec("b", "server", server=18)])])


@pytest.mark.asyncio
async def test_https_verifies_against_the_simulation_ca_only(
    sim: LiveSimulation, bmc: Client
) -> None:
    assert (await bmc.get(f"{ROOT}/", auth=None)).status == 200
    port = server(sim, "bmc0").port
    localhost = await bmc.session.get(f"https://localhost:{port}/redfish", ssl=bmc.context)
    assert localhost.status == 200  # the certificate names localhost as well as 127.0.0.1
    localhost.release()
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with aiohttp.ClientSession() as stranger:  # system trust store only
            await stranger.get(f"https://127.0.0.1:{port}/redfish")


# --------------------------------------------------------------------------- authentication


@pytest.mark.asyncio
async def test_public_resources_and_401s(bmc: Client) -> None:
    for path in ("/redfish", f"{ROOT}/", f"{ROOT}", f"{ROOT}/odata", f"{ROOT}/$metadata"):
        reply = await bmc.get(path, auth=None)
        assert reply.status == 200, path
        assert reply.headers["OData-Version"] == "4.0"
    assert "Chassis_v1.xml" in (await bmc.get(f"{ROOT}/$metadata", auth=None)).text
    root = (await bmc.get(f"{ROOT}/", auth=None)).body
    assert root["Links"]["Sessions"]["@odata.id"] == f"{ROOT}/SessionService/Sessions"
    assert root["ProtocolFeaturesSupported"]["SelectQuery"] is True
    assert root["ProtocolFeaturesSupported"]["ExpandQuery"]["ExpandAll"] is False
    denied = await bmc.get(f"{ROOT}/Chassis", auth=None)
    assert denied.status == 401 and denied.message_ids == ["NoValidSession"]
    assert denied.headers["WWW-Authenticate"].startswith("Basic")
    wrong = await bmc.get(f"{ROOT}/Chassis", auth=None, headers={"Authorization": "Basic eDp5"})
    assert wrong.status == 401
    assert (await bmc.get(f"{ROOT}/Chassis", token="not-a-token")).status == 401
    assert (await bmc.get(f"{ROOT}/Chassis")).status == 200  # Basic


@pytest.mark.asyncio
async def test_session_login_use_logout(sim: LiveSimulation, bmc: Client) -> None:
    sessions = f"{ROOT}/SessionService/Sessions"
    refused = await bmc.call(
        "POST", sessions, auth=None, body={"UserName": "admin", "Password": "x"}
    )
    assert refused.status == 401
    malformed = await bmc.call("POST", sessions, auth=None, raw=b"{UserName")
    assert malformed.status == 400 and malformed.message_ids == ["MalformedJSON"]
    login = await bmc.call(
        "POST", sessions, auth=None, body={"UserName": "admin", "Password": PASSWORD}
    )
    assert login.status == 201, login.text
    token, location = login.headers["X-Auth-Token"], login.headers["Location"]
    assert location.startswith(f"{sessions}/") and login.body["UserName"] == "admin"
    assert (await bmc.get(f"{ROOT}/Chassis/1", token=token)).status == 200
    listed = (await bmc.get(sessions, token=token)).body["Members"]
    assert {"@odata.id": location} in listed
    assert "DELETE" in (await bmc.get(location, token=token)).headers["Allow"]
    assert (await bmc.call("DELETE", location, token=token)).status == 200
    assert (await bmc.get(f"{ROOT}/Chassis/1", token=token)).status == 401
    # a BMC that forgets its sessions (expire_sessions) makes the client log in again
    second = await bmc.call(
        "POST", sessions, auth=None, body={"UserName": "admin", "Password": PASSWORD}
    )
    server(sim, "bmc0").expire_sessions()
    assert (await bmc.get(ROOT + "/Chassis", token=second.headers["X-Auth-Token"])).status == 401


# --------------------------------------------------------------------------- ETags, PATCH


@pytest.mark.asyncio
async def test_etags_ignore_readings_and_if_match_is_honoured(sim: LiveSimulation) -> None:
    bmc, strict = Client(sim.service("r01", "bmc0")), Client(sim.service("r01", "bmc1"))
    try:
        first, second = await bmc.get(LIMIT), await bmc.get(LIMIT)
        assert first.headers["ETag"] == first.body["@odata.etag"] == second.headers["ETag"]
        assert first.body["Sensor"]["Reading"] != second.body["Sensor"]["Reading"]  # noise
        stale = await bmc.patch(LIMIT, {"SetPoint": 5000}, headers={"If-Match": 'W/"0"'})
        assert stale.status == 412 and stale.message_ids == ["PreconditionFailed"]
        ok = await bmc.patch(LIMIT, {"SetPoint": 5000}, headers={"If-Match": first.headers["ETag"]})
        assert ok.status == 200 and ok.body["SetPoint"] == 5000
        assert ok.headers["ETag"] != first.headers["ETag"]
        again = await bmc.patch(
            LIMIT, {"SetPoint": 4000}, headers={"If-Match": first.headers["ETag"]}
        )
        assert again.status == 412  # the ETag went stale with the change
        in_body = await bmc.patch(LIMIT, {"SetPoint": 4000, "@odata.etag": ok.headers["ETag"]})
        assert in_body.status == 200
        # bmc1 requires If-Match
        missing = await strict.patch(LIMIT, {"SetPoint": 4000})
        assert missing.status == 428 and missing.message_ids == ["PreconditionRequired"]
        etag = (await strict.get(LIMIT)).headers["ETag"]
        assert (
            await strict.patch(LIMIT, {"SetPoint": 4000}, headers={"If-Match": etag})
        ).status == 200
    finally:
        await bmc.close()
        await strict.close()


@pytest.mark.asyncio
async def test_power_cap_is_obeyed_by_the_plant_server(sim: LiveSimulation, bmc: Client) -> None:
    plant = sim.plants["r01"]
    plant.set_load(1.0, [0])
    await eventually(lambda: _above(bmc, POWER, 6500.0))
    reply = await bmc.patch(LIMIT, {"SetPoint": 2500})
    assert reply.status == 200 and reply.body["SetPoint"] == 2500
    assert plant.truth().power_limit_w[0] == 2500.0
    await eventually(lambda: _below(bmc, POWER, 2560.0))
    writes = sim.writes("r01", "bmc0")
    assert [(w.point, w.value) for w in writes] == [("power_limit", 2500.0)]
    metrics = f"{ROOT}/Chassis/1/EnvironmentMetrics"
    assert (await bmc.patch(metrics, {"PowerLimitWatts": {"SetPoint": 3500}})).status == 200
    assert plant.truth().power_limit_w[0] == 3500.0
    shown = (await bmc.get(metrics)).body["PowerLimitWatts"]
    assert shown["SetPoint"] == 3500 and shown["DataSourceUri"] == LIMIT
    # Disabled lifts the cap and keeps the set point; Automatic enforces it again
    assert (await bmc.patch(LIMIT, {"ControlMode": "Disabled"})).status == 200
    assert plant.truth().power_limit_w[0] == 7000.0
    assert (await bmc.get(LIMIT)).body["SetPoint"] == 3500
    assert (await bmc.patch(LIMIT, {"ControlMode": "Automatic"})).status == 200
    assert plant.truth().power_limit_w[0] == 3500.0
    # the legacy Power resource of bmc1 (which also wants If-Match)
    legacy = Client(sim.service("r01", "bmc1"))
    try:
        power = await legacy.get(f"{ROOT}/Chassis/1/Power")
        assert power.body["PowerControl"][0]["PowerLimit"]["LimitInWatts"] == 7000.0
        body = {"PowerControl": [{"PowerLimit": {"LimitInWatts": 2000}}]}
        headers = {"If-Match": power.headers["ETag"]}
        assert (await legacy.patch(f"{ROOT}/Chassis/1/Power", body, headers=headers)).status == 200
        assert plant.truth().power_limit_w[1] == 2000.0
        assert (await legacy.get(LIMIT)).body["SetPoint"] == 2000
    finally:
        await legacy.close()


async def _above(client: Client, path: str, value: float) -> bool:
    return await client.reading(path) > value


async def _below(client: Client, path: str, value: float) -> bool:
    return await client.reading(path) < value


@pytest.mark.asyncio
async def test_bad_patches_get_base_messages_and_change_nothing(
    sim: LiveSimulation, bmc: Client
) -> None:
    before = (await bmc.get(LIMIT)).body["SetPoint"]
    reply = await bmc.patch(
        LIMIT, {"SetPoint": 9000, "AllowableMax": 9000, "Colour": "red", "ControlMode": 3}
    )
    assert reply.status == 400
    assert reply.message_ids == [
        "PropertyValueOutOfRange",
        "PropertyNotWritable",
        "PropertyUnknown",
        "PropertyValueTypeError",
    ]
    out_of_range = reply.body["error"]["@Message.ExtendedInfo"][0]
    assert out_of_range["MessageArgs"] == ["9000", "SetPoint"]
    assert out_of_range["RelatedProperties"] == ["#/SetPoint"]
    assert "1500" in out_of_range["Resolution"] and "7000" in out_of_range["Resolution"]
    mixed = await bmc.patch(LIMIT, {"SetPoint": 3000, "Id": "x"})  # all or nothing
    assert mixed.status == 400 and mixed.message_ids == ["PropertyNotWritable"]
    assert (await bmc.get(LIMIT)).body["SetPoint"] == before
    assert sim.writes("r01", "bmc0") == []
    malformed = await bmc.call("PATCH", LIMIT, raw=b'{"SetPoint": ')
    assert malformed.status == 400 and malformed.message_ids == ["MalformedJSON"]
    not_object = await bmc.patch(LIMIT, [1, 2])
    assert not_object.status == 400 and not_object.message_ids == ["MalformedJSON"]
    mode = await bmc.patch(LIMIT, {"ControlMode": "Override"})
    assert mode.status == 400 and mode.message_ids == ["PropertyValueNotInList"]


@pytest.mark.asyncio
async def test_allow_headers_say_what_is_writable(bmc: Client) -> None:
    assert (await bmc.get(LIMIT)).headers["Allow"] == "GET, HEAD, PATCH"
    assert (await bmc.get(POWER)).headers["Allow"] == "GET, HEAD"
    assert (await bmc.get(f"{ROOT}/SessionService/Sessions")).headers["Allow"] == "GET, HEAD, POST"
    put = await bmc.call("PUT", LIMIT, body={"SetPoint": 3000})
    assert put.status == 405 and put.headers["Allow"] == "GET, HEAD, PATCH"
    assert put.message_ids == ["OperationNotAllowed"]
    read_only = await bmc.patch(POWER, {"Reading": 1})
    assert read_only.status == 405 and read_only.headers["Allow"] == "GET, HEAD"
    missing = await bmc.get(f"{ROOT}/Chassis/nope")
    assert missing.status == 404 and missing.message_ids == ["InvalidURI"]
    head = await bmc.call("HEAD", LIMIT)
    assert head.status == 200 and head.text == "" and "ETag" in head.headers


@pytest.mark.asyncio
async def test_select_only_and_unsupported_queries(bmc: Client) -> None:
    chosen = (await bmc.get(f"{LIMIT}?$select=SetPoint,Status/Health")).body
    assert set(chosen) == {"@odata.id", "@odata.type", "@odata.etag", "SetPoint", "Status"}
    assert chosen["Status"] == {"Health": "OK"}
    only = await bmc.get(f"{ROOT}/Chassis?only")
    assert only.body["@odata.id"] == f"{ROOT}/Chassis/1"
    refused = await bmc.get(f"{ROOT}/Chassis?$expand=.")
    assert refused.status == 501 and refused.message_ids == ["QueryNotSupported"]
    assert (await bmc.get(f"{LIMIT}?only")).status == 400


# --------------------------------------------------------------------------- CDU and PDU


@pytest.mark.asyncio
async def test_cdu_pump_and_valve_set_points_reach_the_plant(sim: LiveSimulation) -> None:
    cdu = Client(sim.service("r01", "cdu1"))
    plant = sim.plants["r01"]
    try:
        pump = f"{CDU}/Pumps/1"
        assert (await cdu.patch(pump, {"SpeedControlPercent": {"SetPoint": 60}})).status == 200
        assert plant.truth().pump_speed_command == pytest.approx(0.6)
        await eventually(lambda: _below(cdu, f"{ROOT}/Chassis/CDU/Sensors/PumpSpeed", 61.0))
        primary = f"{CDU}/PrimaryCoolantConnectors/1"
        valve = {"ValvePositionControlPercent": {"SetPoint": 40}}
        assert (await cdu.patch(primary, valve)).status == 200
        assert plant.truth().valve_command == pytest.approx(0.4)
        control = f"{ROOT}/Chassis/CDU/Controls/PumpSpeed"
        assert (await cdu.patch(control, {"SetPoint": 75})).status == 200
        assert [(w.point, round(w.value, 3)) for w in sim.writes("r01", "cdu1")] == [
            ("pump_speed_command", 0.6),
            ("valve_command", 0.4),
            ("pump_speed_command", 0.75),
        ]
        too_fast = await cdu.patch(control, {"SetPoint": 120})
        assert too_fast.status == 400 and too_fast.message_ids == ["PropertyValueOutOfRange"]
        secondary = (await cdu.get(f"{CDU}/SecondaryCoolantConnectors/1")).body
        # the CDU runs its own loops only when asked: in its manual mode, pump and valve
        assert secondary["FlowControlLitersPerMinute"]["ControlMode"] == "Manual"
        assert secondary["FlowLitersPerMinute"]["Reading"] > 0
        flow = await cdu.patch(
            f"{CDU}/SecondaryCoolantConnectors/1", {"FlowControlLitersPerMinute": {"SetPoint": 90}}
        )
        assert flow.status == 200
        assert sim.cdus["r01"].setpoint("flow_setpoint") == 90.0
        plant.start_leak(2.0)
        await eventually(lambda: _leak_shown(cdu))
    finally:
        await cdu.close()


async def _leak_shown(cdu: Client) -> bool:
    detector = (await cdu.get(f"{CDU}/LeakDetection/LeakDetectors/1")).body
    unit = (await cdu.get(CDU)).body
    return bool(detector["DetectorState"] == "Critical" and unit["Status"]["Health"] == "Critical")


@pytest.mark.asyncio
async def test_pdu_outlets_add_up_to_the_mains_and_metrics_reset(sim: LiveSimulation) -> None:
    pdu = Client(sim.service("r01", "pdu1"))
    try:
        mains = (await pdu.get(f"{PDU}/Mains/1")).body
        outlets = (await pdu.get(f"{PDU}/Outlets")).body["Members"]
        assert len(outlets) == 19  # one per server, and the auxiliary one
        total = 0.0
        for member in outlets:
            total += (await pdu.get(member["@odata.id"])).body["PowerWatts"]["Reading"]
        mains_w = mains["PowerWatts"]["Reading"]
        assert total == pytest.approx(mains_w, rel=0.02)
        assert mains_w == pytest.approx(sim.plants["r01"].truth().pdu_power_w, rel=0.02)
        currents = mains["PolyPhaseCurrentAmps"]
        assert sum(c["Reading"] for c in currents.values()) == pytest.approx(
            mains_w / 230.0 / 0.99, rel=0.03
        )
        metrics = f"{PDU}/Metrics"
        reset = f"{metrics}/Actions/PowerDistributionMetrics.ResetMetrics"
        plant = sim.plants["r01"]

        async def counted() -> bool:
            return plant.time_s > 5.0  # some energy has been counted

        await eventually(counted)
        assert (await pdu.call("POST", reset, body={})).status == 204
        energy = (await pdu.get(metrics)).body["EnergykWh"]
        assert energy["Reading"] < energy["LifetimeReading"] and energy["Reading"] < 1.0
        label = await pdu.patch(f"{PDU}/Outlets/A1", {"UserLabel": "tray 0"})
        assert label.status == 200 and label.body["UserLabel"] == "tray 0"
    finally:
        await pdu.close()


# --------------------------------------------------------------------------- faults


@pytest.mark.asyncio
async def test_offline_and_back_on_the_same_port(sim: LiveSimulation, bmc: Client) -> None:
    target = server(sim, "bmc0")
    port = target.port
    target.set_offline(True)
    assert target.offline
    with pytest.raises(aiohttp.ClientConnectionError):
        await bmc.get(f"{ROOT}/", auth=None)
    target.set_offline(False)
    assert target.port == port
    await eventually(lambda: _answers(bmc))


async def _answers(client: Client) -> bool:
    try:
        return (await client.get(f"{ROOT}/", auth=None)).status == 200
    except aiohttp.ClientConnectionError:
        return False


@pytest.mark.asyncio
async def test_response_delay_and_injected_errors(sim: LiveSimulation, bmc: Client) -> None:
    target = server(sim, "bmc0")
    target.set_response_delay(0.3)
    started = time.monotonic()
    assert (await bmc.get(LIMIT)).status == 200
    assert time.monotonic() - started >= 0.3
    target.set_response_delay(0.0)
    target.fail_requests(503, retry_after_s=2, count=2)
    for _ in range(2):
        busy = await bmc.get(LIMIT)
        assert busy.status == 503 and busy.headers["Retry-After"] == "2"
        assert busy.message_ids == ["ServiceTemporarilyUnavailable"]
        assert "Retry in 2 seconds" in busy.body["error"]["message"]
    assert (await bmc.get(LIMIT)).status == 200  # the count ran out
    target.fail_requests(500)
    assert (await bmc.get(LIMIT)).status == 500
    target.fail_requests(None)
    target.fail_reads("power")
    failed = await bmc.get(POWER)
    assert failed.status == 500 and failed.message_ids == ["InternalError"]
    assert (await bmc.get(f"{ROOT}/Chassis/1/Sensors/CPU1Temp")).status == 200
    target.fail_reads(None)
    assert (await bmc.get(POWER)).status == 200


@pytest.mark.asyncio
async def test_malformed_modes_send_hostile_bodies(sim: LiveSimulation, bmc: Client) -> None:
    target = server(sim, "bmc0")
    target.set_malformed("wrong_types")
    assert isinstance((await bmc.get(POWER)).body["Reading"], str)
    target.set_malformed("nulls")
    nulls = (await bmc.get(POWER)).body
    assert nulls["Reading"] is None and nulls["@odata.id"] == POWER
    target.set_malformed("huge_arrays")
    assert len((await bmc.get(f"{ROOT}/Chassis")).body["Members"]) == HUGE_ARRAY_LENGTH
    target.set_malformed("truncated")
    truncated = await bmc.get(POWER)
    assert truncated.status == 200 and truncated.body is None and truncated.text.startswith("{")
    target.set_malformed("not_json")
    assert (await bmc.get(POWER)).text.startswith("<html>")
    with pytest.raises(ValueError):
        target.set_malformed("gibberish")
    target.set_malformed(None)
    assert isinstance((await bmc.get(POWER)).body["Reading"], float)


@pytest.mark.asyncio
async def test_manager_reset_drops_the_service_and_its_sessions(
    sim: LiveSimulation, bmc: Client
) -> None:
    login = await bmc.call(
        "POST",
        f"{ROOT}/SessionService/Sessions",
        auth=None,
        body={"UserName": "admin", "Password": PASSWORD},
    )
    token = login.headers["X-Auth-Token"]
    reset = f"{ROOT}/Managers/BMC/Actions/Manager.Reset"
    bad = await bmc.call("POST", reset, token=token, body={"ResetType": "PowerCycle"})
    assert bad.status == 400 and bad.message_ids == ["ActionParameterValueNotInList"]
    assert (
        await bmc.call("POST", reset, token=token, body={"ResetType": "ForceRestart"})
    ).status == 204
    await eventually(lambda: _down(bmc), 1.0)
    await eventually(lambda: _answers(bmc), 3.0)
    assert (await bmc.get(LIMIT, token=token)).status == 401
    assert (await bmc.get(LIMIT)).status == 200


async def _down(client: Client) -> bool:
    return not await _answers(client)


@pytest.mark.asyncio
async def test_certificate_service_issues_a_csr_and_installs_its_certificate(
    sim: LiveSimulation, bmc: Client
) -> None:
    assert sim.tls is not None
    service = f"{ROOT}/CertificateService/Actions/CertificateService"
    certificates = f"{ROOT}/Managers/BMC/NetworkProtocol/HTTPS/Certificates"
    csr_reply = await bmc.call(
        "POST",
        f"{service}.GenerateCSR",
        body={"CertificateCollection": {"@odata.id": certificates}, "CommonName": "bmc0"},
    )
    assert csr_reply.status == 200, csr_reply.text
    csr = x509.load_pem_x509_csr(csr_reply.body["CSRString"].encode())
    ca_key = serialization.load_pem_private_key(sim.tls.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(sim.tls.ca_cert.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    issued = issue_certificate(ca_key, ca_cert, public, "bmc0")
    pem = issued.public_bytes(serialization.Encoding.PEM).decode()
    body = {
        "CertificateString": pem,
        "CertificateType": "PEM",
        "CertificateUri": {"@odata.id": f"{certificates}/1"},
    }
    stranger = issue_certificate(
        ca_key, ca_cert, ec.generate_private_key(ec.SECP256R1()).public_key()
    )
    refused = {
        **body,
        "CertificateString": stranger.public_bytes(serialization.Encoding.PEM).decode(),
    }
    assert (await bmc.call("POST", f"{service}.ReplaceCertificate", body=refused)).status == 400
    assert (await bmc.call("POST", f"{service}.ReplaceCertificate", body=body)).status == 204
    expected = issued.fingerprint(hashes.SHA256())

    async def presented() -> bool:
        return await _peer_fingerprint(server(sim, "bmc0").port, bmc.context) == expected

    await eventually(presented, 3.0)
    shown = (await bmc.get(f"{certificates}/1")).body
    assert shown["Subject"]["CommonName"] == "bmc0"
    assert shown["Fingerprint"].replace(":", "").lower() == expected.hex()


async def _peer_fingerprint(port: int, context: ssl.SSLContext) -> bytes:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except OSError:
        return b""
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256())


# --------------------------------------------------------------------------- scale


@pytest.mark.asyncio
async def test_64_bmcs_in_one_process_start_and_stop_quickly(tmp_path: Path) -> None:
    devices = [SimDeviceSpec(f"bmc{i}", "server", server=i, password=PASSWORD) for i in range(64)]
    racks = [SimRackSpec("big", devices, plant={"n_servers": 64})]
    started = time.monotonic()
    simulation = LiveSimulation(racks, time_scale=TIME_SCALE, tls_dir=tmp_path)
    await simulation.start()
    start_s = time.monotonic() - started
    try:
        services = [s for s in simulation.services if s.protocol == "redfish"]
        assert len({s.url for s in services}) == 64
        clients = [Client(s) for s in services]
        try:
            replies = await asyncio.gather(*(c.get(POWER) for c in clients))
            assert all(r.status == 200 and r.body["Reading"] > 0 for r in replies)
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    finally:
        stopping = time.monotonic()
        await simulation.stop()
        stop_s = time.monotonic() - stopping
    print(f"\n64 BMCs: built and started in {start_s:.3f} s, stopped in {stop_s:.3f} s")
    assert start_s < 5.0 and stop_s < 5.0


def test_metadata_references_only_schemas_in_the_shared_csdl() -> None:
    """`$metadata` names DMTF CSDL files; every one (and namespace) is in ../shared."""
    csdl = Path(__file__).resolve().parent / "reference" / "redfish-schemas" / "csdl"
    document = ElementTree.fromstring(metadata_document())
    edmx = "{http://docs.oasis-open.org/odata/ns/edmx}"
    references = document.findall(f"{edmx}Reference")
    assert len(references) > 50
    for reference in references:
        schema = csdl / reference.attrib["Uri"].rsplit("/", 1)[-1]
        assert schema.is_file(), schema
        text = schema.read_text()
        for include in reference.findall(f"{edmx}Include"):
            assert f'Namespace="{include.attrib["Namespace"]}"' in text, (schema, include.attrib)
