"""The Redfish driver against DMTF's published mockups, served as they are (and a few edited
copies), and against a tree built from the DSP2046 single-resource examples.

What each mockup holds was read off its JSON by hand: these numbers are the DMTF's, not the
driver's opinion of them.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mockup_server import MOCKUPS, ROOT, MockupServer, load_mockup, make_tls

from coolctl.cli.probe_redfish import probe_redfish
from coolctl.drivers.redfish import Kind, RedfishDevice, RedfishSettings, RedfishTransport
from coolctl.drivers.redfish_points import list_resources
from coolctl.model import Quality, Reading

pytestmark = pytest.mark.asyncio

KWH = 3.6e6
DSP2046 = MOCKUPS / "DSP2046-examples-cooling-power"
FULL_MOCKUPS = sorted(p.name for p in MOCKUPS.iterdir() if (p / "index.json").exists())


@asynccontextmanager
async def serving(server: MockupServer) -> AsyncIterator[str]:
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


async def read(
    server: MockupServer, kind: Kind, resource: str | None = None, polls: int = 2
) -> tuple[dict[str, Reading], RedfishDevice]:
    """Poll a device of the served tree `polls` times (the first discovers, the second reads
    what was bound); returns the last readings by point name, and the (closed) device."""
    async with serving(server) as url:
        device = RedfishDevice(
            rack="r1",
            device="d",
            kind=kind,
            settings=RedfishSettings(url, auth="none"),
            resource=resource,
        )
        async with device:
            readings: list[Reading] = []
            for _ in range(polls):
                readings = await device.poll()
    return {r.point.name: r for r in readings}, device


def values(readings: Mapping[str, Reading]) -> dict[str, float | None]:
    return {name: r.value for name, r in readings.items() if r.quality is Quality.GOOD}


def without_links(resources: dict[str, Any], uri: str, *props: str) -> dict[str, Any]:
    edited = copy.deepcopy(resources)
    for prop in props:
        edited[uri].pop(prop, None)
    return edited


def mockup(name: str) -> dict[str, Any]:
    return load_mockup(MOCKUPS / name)[0]


def with_features(resources: dict[str, Any], **features: Any) -> dict[str, Any]:
    edited = copy.deepcopy(resources)
    edited[ROOT]["ProtocolFeaturesSupported"] = features
    return edited


# ----------------------------------------------------------------------------------------------
# Each mockup, its points


async def test_rackmount1_reads_the_new_style_resources() -> None:
    readings, device = await read(MockupServer.from_mockup("public-rackmount1"), "server")
    assert values(readings) == {
        "power": 374.0,  # EnvironmentMetrics.PowerWatts, preferred to legacy Power (344)
        "power_limit": 500.0,  # Controls/PowerLimit SetPoint
        "energy": 325675 * KWH,  # Sensors/TotalEnergy, kW.h
        "chip_temperature": 44.0,  # Sensors/CPU1Temp (PhysicalContext CPU, no ReadingType)
        "chip_throttle_temperature": 45.0,  # CPU1Temp's Thresholds/UpperCritical
    }
    assert readings["coolant_outlet_temperature"].quality is Quality.MISSING
    assert readings["leak_detected"].quality is Quality.MISSING
    assert device.writable() == {"power_limit": (150.0, 1000.0)}
    assert device.sources()["power_limit"] == "/redfish/v1/Chassis/1U/Controls/PowerLimit#/SetPoint"
    assert device.stats.errors_by_kind == {}
    assert device.stats.consecutive_failures == 0


async def test_rackmount1_environment_metrics_power_limit_without_controls() -> None:
    resources = without_links(mockup("public-rackmount1"), "/redfish/v1/Chassis/1U", "Controls")
    readings, device = await read(MockupServer(resources), "server")
    assert values(readings)["power_limit"] == 500.0
    assert device.writable() == {"power_limit": (150.0, 1000.0)}
    assert device.sources()["power_limit"].endswith("EnvironmentMetrics#/PowerLimitWatts/SetPoint")


async def test_rackmount1_legacy_power_and_thermal_alone() -> None:
    resources = without_links(
        mockup("public-rackmount1"),
        "/redfish/v1/Chassis/1U",
        "Controls",
        "EnvironmentMetrics",
        "Sensors",
    )
    readings, device = await read(MockupServer(resources), "server")
    assert values(readings) == {
        "power": 344.0,  # Power.PowerControl[0].PowerConsumedWatts
        "power_limit": 500.0,  # Power.PowerControl[0].PowerLimit.LimitInWatts
        "chip_temperature": 41.0,  # Thermal: CPU1 41 °C, CPU2 disabled (null) and skipped
    }
    # Legacy Power states no allowable range: 0 up to the PowerControl's PowerCapacityWatts.
    assert device.writable() == {"power_limit": (0.0, 800.0)}
    assert device.sources()["power_limit"] == (
        "/redfish/v1/Chassis/1U/Power#/PowerControl/0/PowerLimit/LimitInWatts"
    )


async def test_liquid_cooled_server() -> None:
    readings, device = await read(MockupServer.from_mockup("public-liquid-cooled-server"), "server")
    assert values(readings) == {
        "power": 374.0,
        "power_limit": 500.0,
        "energy": 325675 * KWH,
        "chip_temperature": 37.0,
        "chip_throttle_temperature": 45.0,
        "coolant_outlet_temperature": 46.9,  # the hotter of the two cold plates' return
    }
    assert device.writable() == {"power_limit": (150.0, 1000.0)}


async def test_cooling_unit() -> None:
    readings, device = await read(MockupServer.from_mockup("public-cooling-unit"), "cdu")
    got = values(readings)
    assert got == {
        "supply_temperature": 30.0,
        "return_temperature": 48.0,
        "flow": 42.0,
        "differential_pressure": 34_000.0,  # 34 kPa
        "heat_removed": 25_310.0,  # 25.31 kW
        "pump_speed": pytest.approx(0.385),  # pump 1 38.5 %, pump 2 failed at 0 %
        "pump_speed_command": pytest.approx(0.45),
        "leak_detected": 0.0,  # LeakDetectorGroups: both detectors OK
        "facility_supply_temperature": 30.0,
        "facility_return_temperature": 40.0,
        "primary_flow": 42.0,
        # the CDU's own loops' set points, on the secondary connector's control excerpts
        "supply_temperature_setpoint": 30.0,
        "flow_setpoint": 43.0,
        "differential_pressure_setpoint": 35_000.0,  # 35 kPa
    }
    # Reservoirs are not linked from this CoolingUnit and it has no valve: never read.
    for point in ("reservoir_level", "valve_position", "valve_command"):
        assert readings[point].quality is Quality.MISSING
    assert device.writable() == {
        "pump_speed_command": (0.0, 1.0),
        "supply_temperature_setpoint": (10.0, 35.0),  # AllowableMin/AllowableMax
        "flow_setpoint": (20.0, 50.0),
        "differential_pressure_setpoint": (20_000.0, 50_000.0),
    }


async def test_pdu() -> None:
    readings, device = await read(MockupServer.from_mockup("public-pdu"), "pdu")
    assert values(readings) == {"power": 6438.0, "energy": 56438 * KWH}
    assert device.writable() == {}


@pytest.mark.parametrize("name", FULL_MOCKUPS)
async def test_every_resource_of_every_mockup_reads_cleanly(name: str) -> None:
    """Every chassis, CDU and PDU of every mockup: discovered, read twice, nothing bad."""
    async with serving(MockupServer.from_mockup(name)) as url:
        settings = RedfishSettings(url, auth="none")
        transport = RedfishTransport(settings)
        try:
            _, refs, _ = await list_resources(transport.get)
            assert refs, f"{name}: nothing found"
            found_points = 0
            for ref in refs:
                device = RedfishDevice(
                    rack="r",
                    device=ref.name,
                    kind=ref.kind,
                    settings=settings,
                    resource=ref.name,
                    transport=transport,
                )
                for _ in range(2):
                    readings = await device.poll()
                assert device.found is not None and device.found.uri == ref.uri
                assert not [r for r in readings if r.quality in (Quality.BAD, Quality.STALE)]
                assert device.stats.errors_by_kind == {}
                found_points += sum(r.quality is Quality.GOOD for r in readings)
            assert found_points >= 2
        finally:
            await transport.close()


async def test_backing_chassis_of_a_pdu_or_cdu_are_not_servers() -> None:
    async with serving(MockupServer.from_mockup("public-pdu")) as url:
        transport = RedfishTransport(RedfishSettings(url, auth="none"))
        try:
            _, refs, _ = await list_resources(transport.get)
        finally:
            await transport.close()
    assert [(r.kind, r.name) for r in refs] == [("pdu", "PDU:1")]
    async with serving(MockupServer.from_mockup("public-cooling-unit")) as url:
        transport = RedfishTransport(RedfishSettings(url, auth="none"))
        try:
            _, refs, _ = await list_resources(transport.get)
        finally:
            await transport.close()
    assert [(r.kind, r.name) for r in refs] == [("cdu", "CDU:1")]


# ----------------------------------------------------------------------------------------------
# $select and $expand: used when, and only when, the service root says so


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("public-rackmount1", "server"),
        ("public-liquid-cooled-server", "server"),
        ("public-cooling-unit", "cdu"),
        ("public-pdu", "pdu"),
    ],
)
async def test_queries_only_as_advertised(name: str, kind: Kind) -> None:
    plain = mockup(name)
    reference, _ = await read(MockupServer(with_features(plain)), kind, polls=3)

    bare = MockupServer(with_features(plain))  # answers 501 to any query parameter
    readings, _ = await read(bare, kind, polls=3)
    assert values(readings) == values(reference)
    assert not [s for s in bare.seen if s.query], "queries sent to a service without them"

    selecting = MockupServer(with_features(plain, SelectQuery=True))
    readings, _ = await read(selecting, kind, polls=3)
    assert values(readings) == values(reference)
    assert any("%24select=" in s.query or "$select=" in s.query for s in selecting.seen)
    assert not [s for s in selecting.seen if "expand" in s.query]

    expanding = MockupServer(
        with_features(plain, ExpandQuery={"NoLinks": True, "Levels": True, "MaxLevels": 3})
    )
    readings, _ = await read(expanding, kind, polls=3)
    assert values(readings) == values(reference)
    assert any("expand" in s.query for s in expanding.seen)
    assert not [s for s in expanding.seen if "select" in s.query]
    assert len(expanding.seen) <= len(bare.seen)


async def test_expand_saves_requests_where_most_members_are_read() -> None:
    plain = mockup("public-cooling-unit")
    bare = MockupServer(with_features(plain))
    await read(bare, "cdu", polls=3)
    expanding = MockupServer(
        with_features(plain, ExpandQuery={"NoLinks": True, "Levels": True, "MaxLevels": 3})
    )
    await read(expanding, "cdu", polls=3)
    pumps = "/redfish/v1/ThermalEquipment/CDUs/1/Pumps"
    # Polls 2 and 3 read the two pumps through their collection in one request each.
    assert len([s for s in expanding.seen if s.path == pumps and "expand" in s.query]) >= 3
    assert not [s for s in expanding.seen if s.path == pumps + "/1"]
    assert len(expanding.seen) < len(bare.seen)


# ----------------------------------------------------------------------------------------------
# Writes on the mockups


async def test_power_limit_write_patches_the_control_with_its_etag() -> None:
    server = MockupServer.from_mockup("public-rackmount1")
    control = "/redfish/v1/Chassis/1U/Controls/PowerLimit"
    async with serving(server) as url:
        device = RedfishDevice(
            rack="r1", device="s1", kind="server", settings=RedfishSettings(url, auth="none")
        )
        async with device:
            await device.poll()
            etag = server.etag(control)
            assert await device.write("power_limit", 420.0) == 420.0
            readings = {r.point.name: r for r in await device.poll()}
    assert server.patches == [(control, {"SetPoint": 420}, etag)]
    assert server.resources[control]["SetPoint"] == 420
    assert readings["power_limit"].value == 420.0


async def test_legacy_power_limit_write() -> None:
    resources = without_links(
        mockup("public-rackmount1"), "/redfish/v1/Chassis/1U", "Controls", "EnvironmentMetrics"
    )
    server = MockupServer(resources)
    async with serving(server) as url:
        device = RedfishDevice(
            rack="r1", device="s1", kind="server", settings=RedfishSettings(url, auth="none")
        )
        async with device:
            await device.poll()
            assert await device.write("power_limit", 650.5) == 650.5
    path, body, _ = server.patches[0]
    assert path == "/redfish/v1/Chassis/1U/Power"
    assert body == {"PowerControl": [{"PowerLimit": {"LimitInWatts": 650.5}}]}
    power_control = server.resources[path]["PowerControl"][0]
    assert power_control["PowerLimit"] == {
        "LimitInWatts": 650.5,
        "LimitException": "LogEventOnly",
        "CorrectionInMs": 50,
    }


async def test_pump_speed_command_goes_to_every_pump() -> None:
    server = MockupServer.from_mockup("public-cooling-unit")
    async with serving(server) as url:
        device = RedfishDevice(
            rack="r1", device="cdu1", kind="cdu", settings=RedfishSettings(url, auth="none")
        )
        async with device:
            await device.poll()
            assert await device.write("pump_speed_command", 0.6) == pytest.approx(0.6)
            readings = {r.point.name: r for r in await device.poll()}
    pumps = "/redfish/v1/ThermalEquipment/CDUs/1/Pumps"
    assert sorted((p, b) for p, b, _ in server.patches) == [
        (f"{pumps}/1", {"SpeedControlPercent": {"SetPoint": 60}}),
        (f"{pumps}/2", {"SpeedControlPercent": {"SetPoint": 60}}),
    ]
    assert readings["pump_speed_command"].value == pytest.approx(0.6)


# ----------------------------------------------------------------------------------------------
# The DSP2046 examples, assembled into a small service


def dsp2046_tree() -> dict[str, Any]:
    """A service built from the DSP2046 single-resource examples: each example where its
    @odata.id says (the Pump example, an immersion unit's, moved under the CDU), and the
    collections and root that link them."""
    ex = {
        p.name.removesuffix("-v1-example.json"): json.loads(p.read_text())
        for p in DSP2046.glob("*-v1-example.json")
    }
    for body in ex.values():
        body.pop("@Redfish.Copyright", None)
    cdu = "/redfish/v1/ThermalEquipment/CDUs/1"
    pdu = "/redfish/v1/PowerEquipment/RackPDUs/1"
    chassis = "/redfish/v1/Chassis/1U"

    def collection(uri: str, *members: str) -> dict[str, Any]:
        return {
            "@odata.id": uri,
            "Name": "collection",
            "Members": [{"@odata.id": m} for m in members],
            "Members@odata.count": len(members),
        }

    def placed(body: dict[str, Any], uri: str) -> dict[str, Any]:
        return {**body, "@odata.id": uri}

    tree: dict[str, Any] = {
        ROOT: {
            "@odata.id": ROOT,
            "Id": "RootService",
            "Name": "DSP2046 examples",
            "RedfishVersion": "1.15.0",
            "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
            "ThermalEquipment": {"@odata.id": "/redfish/v1/ThermalEquipment"},
            "PowerEquipment": {"@odata.id": "/redfish/v1/PowerEquipment"},
            "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
        },
        "/redfish/v1/Chassis": collection("/redfish/v1/Chassis", chassis),
        chassis: {
            "@odata.id": chassis,
            "Id": "1U",
            "Name": "Chassis assembled from examples",
            "Controls": {"@odata.id": f"{chassis}/Controls"},
            "EnvironmentMetrics": {"@odata.id": f"{chassis}/EnvironmentMetrics"},
            "Sensors": {"@odata.id": f"{chassis}/Sensors"},
            "Power": {"@odata.id": f"{chassis}/Power"},
            "ThermalSubsystem": {"@odata.id": f"{chassis}/ThermalSubsystem"},
        },
        f"{chassis}/Controls": collection(f"{chassis}/Controls", f"{chassis}/Controls/PowerLimit"),
        f"{chassis}/Controls/PowerLimit": ex["Control"],
        f"{chassis}/EnvironmentMetrics": placed(
            ex["EnvironmentMetrics"], f"{chassis}/EnvironmentMetrics"
        ),
        f"{chassis}/Sensors": collection(f"{chassis}/Sensors", f"{chassis}/Sensors/CabinetTemp"),
        f"{chassis}/Sensors/CabinetTemp": ex["Sensor"],
        f"{chassis}/Power": ex["Power"],
        f"{chassis}/ThermalSubsystem": ex["ThermalSubsystem"],  # links Fans etc.: all 404
        "/redfish/v1/ThermalEquipment": ex["ThermalEquipment"],  # CoolingLoops: 404
        "/redfish/v1/ThermalEquipment/CDUs": collection("/redfish/v1/ThermalEquipment/CDUs", cdu),
        cdu: {**ex["CoolingUnit"], "Reservoirs": {"@odata.id": f"{cdu}/Reservoirs"}},
        f"{cdu}/SecondaryCoolantConnectors": collection(
            f"{cdu}/SecondaryCoolantConnectors", f"{cdu}/SecondaryCoolantConnectors/A"
        ),
        f"{cdu}/SecondaryCoolantConnectors/A": ex["CoolantConnector"],
        f"{cdu}/Pumps": collection(f"{cdu}/Pumps", f"{cdu}/Pumps/1"),
        f"{cdu}/Pumps/1": placed(ex["Pump"], f"{cdu}/Pumps/1"),
        f"{cdu}/LeakDetection": ex["LeakDetection"],
        f"{cdu}/Reservoirs": collection(f"{cdu}/Reservoirs", f"{cdu}/Reservoirs/1"),
        f"{cdu}/Reservoirs/1": ex["Reservoir"],
        f"{cdu}/Filters": collection(f"{cdu}/Filters", f"{cdu}/Filters/1"),
        f"{cdu}/Filters/1": ex["Filter"],
        "/redfish/v1/PowerEquipment": ex["PowerEquipment"],
        "/redfish/v1/PowerEquipment/RackPDUs": collection(
            "/redfish/v1/PowerEquipment/RackPDUs", pdu
        ),
        pdu: ex["PowerDistribution"],
        f"{pdu}/Metrics": ex["PowerDistributionMetrics"],
        f"{pdu}/Outlets": collection(f"{pdu}/Outlets", f"{pdu}/Outlets/A1"),
        f"{pdu}/Outlets/A1": ex["Outlet"],
    }
    return tree


async def test_dsp2046_examples_as_a_service() -> None:
    tree = dsp2046_tree()
    server_readings, server = await read(MockupServer(tree), "server")
    assert values(server_readings) == {
        "power": 12.87,  # the EnvironmentMetrics example (a processor's)
        "power_limit": 500.0,  # the Control example
    }
    assert server.writable() == {"power_limit": (150.0, 1000.0)}

    cdu_readings, cdu = await read(MockupServer(tree), "cdu")
    assert values(cdu_readings) == {
        "supply_temperature": 14.8,
        "return_temperature": 38.2,
        "flow": 24.3,
        "differential_pressure": pytest.approx(31_700.0),
        "pump_speed": pytest.approx(0.62),
        "reservoir_level": pytest.approx(6.48),  # 64.8 % of 10 L
        "leak_detected": 0.0,  # three detectors, all OK
    }
    assert cdu.writable() == {}  # the Pump example has no SpeedControlPercent

    pdu_readings, _ = await read(MockupServer(tree), "pdu")
    assert values(pdu_readings) == {"power": 6438.0, "energy": 56438 * KWH}


async def test_a_wet_leak_detector_in_the_dsp2046_tree() -> None:
    tree = dsp2046_tree()
    detection = tree["/redfish/v1/ThermalEquipment/CDUs/1/LeakDetection"]
    detection["LeakDetectorGroups"][0]["Detectors"][1]["DetectorState"] = "Critical"
    readings, _ = await read(MockupServer(tree), "cdu")
    assert values(readings)["leak_detected"] == 1.0
    detection["LeakDetectorGroups"][0]["Detectors"][1]["DetectorState"] = "Unavailable"
    readings, _ = await read(MockupServer(tree), "cdu")
    assert readings["leak_detected"].quality is Quality.BAD  # cannot tell: not "dry"


# ----------------------------------------------------------------------------------------------
# The commissioning probe


async def test_probe_prints_every_device_and_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = make_tls(tmp_path)
    password = tmp_path / "password"
    password.write_text("probe-secret\n")
    server = MockupServer.from_mockup("public-cooling-unit", require_auth=True)
    url = await server.start(tls.server_context)
    try:
        status = await probe_redfish(url, "admin", password, tls.ca_file, False, True)
        out, err = capsys.readouterr()
        rows = json.loads(out)
        assert status == 0, err
        assert {row["device"] for row in rows} == {"CDU:1"}
        by_point = {row["point"]: row for row in rows}
        assert by_point["supply_temperature"] == {
            "device": "CDU:1",
            "point": "supply_temperature",
            "value": 30.0,
            "unit": "celsius",
            "quality": "good",
            "source": "/redfish/v1/ThermalEquipment/CDUs/1/SecondaryCoolantConnectors/1"
            "#/SupplyTemperatureCelsius/Reading",
            "writable": None,
        }
        assert by_point["pump_speed_command"]["writable"] == [0.0, 1.0]
        assert server.logins == [("admin", "probe-secret")]
        assert len(server.logouts) == 1 and not server.sessions

        status = await probe_redfish(url, "admin", password, tls.ca_file, False, False)
        out, _ = capsys.readouterr()
        assert status == 0
        header, *lines = out.splitlines()
        assert header.split() == ["DEVICE", "POINT", "VALUE", "UNIT", "QUALITY", "SOURCE", "URI"]
        assert len(lines) == len(rows)
        assert "probe-secret" not in out
    finally:
        await server.stop()


async def test_probe_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tls = make_tls(tmp_path)
    password = tmp_path / "password"
    password.write_text("wrong-secret")
    server = MockupServer.from_mockup(
        "public-pdu", require_auth=True, credentials=("admin", "right")
    )
    url = await server.start(tls.server_context)
    plain = url.replace("https", "http")
    try:
        # refused credentials, a missing password file, credentials over http, none at all
        assert await probe_redfish(url, "admin", password, tls.ca_file, False, False) == 1
        assert await probe_redfish(url, "admin", tmp_path / "nope", tls.ca_file, False, False) == 1
        assert await probe_redfish(plain, "admin", password, None, False, False) == 1
        assert await probe_redfish(url, None, None, tls.ca_file, False, False) == 1
        # a service in trouble
        server.status_for["*"] = (503, {"Retry-After": "1"})
        assert await probe_redfish(url, None, None, tls.ca_file, False, False) == 3
        # an unknown CA
        server.status_for.clear()
        password.write_text("right")
        assert await probe_redfish(url, "admin", password, None, False, False) == 3
        assert await probe_redfish(url, "admin", password, tls.ca_file, False, False) == 0
    finally:
        await server.stop()
    _, err = capsys.readouterr()
    assert "wrong-secret" not in err
    assert "TLS certificate verification failed" in err
    # and what to do about it, in the same line
    tls_line = next(line for line in err.splitlines() if "TLS certificate" in line)
    assert "pass --ca FILE" in tls_line and "--insecure" in tls_line
    # Nobody listens there any more.
    assert await probe_redfish(url, None, None, tls.ca_file, False, False) == 3


async def test_nothing_is_lost_in_translation() -> None:
    """The canonical units the table converts into are the model's."""
    from coolctl.drivers.redfish_points import POINT_SOURCES
    from coolctl.model import CANONICAL_POINTS

    for kind, table in POINT_SOURCES.items():
        for point, sources in table.items():
            assert point in CANONICAL_POINTS, (kind, point)
            assert sources, (kind, point)
            for source in sources:
                assert math.isfinite(source.scale) and source.scale > 0
