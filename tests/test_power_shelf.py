"""Redfish power shelves (OCP ORv3 style) read as DMTF models them: PowerEquipment/PowerShelves/
{id} (PowerDistribution, EquipmentType PowerShelf) with Mains, PowerSupplies and Metrics, and a
chassis whose PowerSubsystem holds the power supplies and battery backup units.

The tree served here (tests/reference/redfish-mockups/dsp2046-power-shelf) is shaped after the
DMTF mockups and built from the DSP2046 examples of PowerDistribution, PowerSupply, Battery and
their metrics; its numbers were written by hand, and the expectations are read off its JSON.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mockup_server import MOCKUPS, MockupServer, load_mockup

from coolctl.cli.probe_redfish import probe_redfish
from coolctl.drivers.redfish import RedfishDevice, RedfishSettings, RedfishTransport
from coolctl.drivers.redfish_points import list_resources
from coolctl.model import Quality, Reading
from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec

pytestmark = pytest.mark.asyncio

TREE = "dsp2046-power-shelf"
SHELF = "/redfish/v1/PowerEquipment/PowerShelves"
KWH = 3.6e6


@asynccontextmanager
async def serving(resources: dict[str, Any] | None = None) -> AsyncIterator[str]:
    tree, metadata = load_mockup(MOCKUPS / TREE)
    server = MockupServer(resources or tree, metadata=metadata)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


async def read(url: str, resource: str | None = None) -> dict[str, Reading]:
    device = RedfishDevice(
        rack="r1",
        device="shelves",
        kind="pdu",
        settings=RedfishSettings(url, auth="none"),
        resource=resource,
    )
    async with device:
        readings = await device.poll()
        readings = await device.poll()
    return {r.point.name: r for r in readings if r.quality is not Quality.MISSING}


async def test_the_shelves_are_found_together_and_one_by_one() -> None:
    async with serving() as url:
        transport = RedfishTransport(RedfishSettings(url, auth="none"))
        async with transport:
            _, refs, _ = await list_resources(transport.get)
    names = [(ref.kind, ref.name) for ref in refs]
    assert names == [("pdu", "Shelves"), ("pdu", "Shelf:1"), ("pdu", "Shelf:2")]


async def test_the_racks_power_is_the_sum_of_its_shelves() -> None:
    async with serving() as url:
        readings = await read(url)  # a pdu device with no selector: all the shelves
    values = {name: r.value for name, r in readings.items()}
    assert all(r.quality is Quality.GOOD for r in readings.values())
    assert values["power"] == pytest.approx(9850.0 + 9950.0)  # each shelf's Metrics.PowerWatts
    assert values["energy"] == pytest.approx((56438.0 + 56439.0) * KWH)
    assert values["output_power"] == pytest.approx(5 * 3200.0)  # shelf 2's PSU3 delivers 0
    assert values["psu_ok"] == 0.0  # shelf 2's PSU3 reports Health Critical
    assert values["bbu_charge"] == pytest.approx(0.87)  # the emptier of the two BBUs
    assert values["bbu_discharging"] == 0.0


async def test_one_shelf_alone() -> None:
    async with serving() as url:
        readings = await read(url, resource="Shelf:1")
    values = {name: r.value for name, r in readings.items()}
    assert values["power"] == pytest.approx(9850.0)
    assert values["psu_ok"] == 1.0 and values["bbu_charge"] == pytest.approx(0.97)


async def test_a_discharging_battery_and_a_shelf_without_metrics() -> None:
    """The BBU carries the shelf (mains lost): bbu_discharging; a shelf without Metrics is
    read from its Mains instead."""
    tree, _ = load_mockup(MOCKUPS / TREE)
    edited = copy.deepcopy(tree)
    bbu = "/redfish/v1/Chassis/PowerShelf1/PowerSubsystem/Batteries/BBU1"
    edited[bbu]["ChargeState"] = "Discharging"
    for shelf in ("1", "2"):
        edited[f"{SHELF}/{shelf}"].pop("Metrics")
    async with serving(edited) as url:
        readings = await read(url)
    values = {name: r.value for name, r in readings.items()}
    assert values["bbu_discharging"] == 1.0
    assert values["power"] == pytest.approx(9850.0 + 9950.0)  # from Mains/AC1 of each


async def test_probe_redfish_reads_a_power_shelf_service(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with serving() as url:
        status = await probe_redfish(url, None, None, None, False, True)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "has no chassis, CDU or PDU" not in err
    assert '"device": "Shelves"' in out and '"point": "output_power"' in out


async def test_the_simulated_shelves_read_as_the_rack_and_show_their_faults(
    tmp_path: Path,
) -> None:
    """The simulator's shelves carry the plant's rack power; a lost PSU and a shelf on battery
    show as psu_ok 0 and bbu_discharging 1, the shelf on battery drawing nothing from mains."""
    spec = SimDeviceSpec(
        "shelves", "pdu", protocol="redfish", power_shelves=2, password="shelf-pass-1"
    )
    simulation = LiveSimulation([SimRackSpec("r01", [spec], load=0.7)], tls_dir=tmp_path)
    async with simulation:
        service = simulation.service("r01", "shelves")
        settings = RedfishSettings(
            service.url, username="admin", password="shelf-pass-1", ca_file=Path(service.ca)
        )
        async with RedfishDevice(
            rack="r01", device="shelves", kind="pdu", settings=settings
        ) as dev:
            await dev.poll()
            before = {r.point.name: r.value for r in await dev.poll()}
            rack_w = simulation.plants["r01"].pdu_readings()["power"]
            assert before["output_power"] == pytest.approx(rack_w, rel=0.05)
            assert before["power"] == pytest.approx(rack_w / 0.975, rel=0.05)
            assert before["psu_ok"] == 1.0 and before["bbu_discharging"] == 0.0
            shelves = simulation.power_shelves[("r01", "shelves")]
            shelves.fail_psu(1, 2)
            shelves.start_discharge(2)
            after = {r.point.name: r.value for r in await dev.poll()}
    assert after["psu_ok"] == 0.0 and after["bbu_discharging"] == 1.0
    assert after["power"] == pytest.approx(before["power"] / 2, rel=0.1)  # shelf 2 on battery
    assert after["output_power"] == pytest.approx(before["output_power"], rel=0.1)


async def test_sim_serve_can_make_a_configs_redfish_pdu_power_shelves() -> None:
    from coolctl.config import parse_config
    from coolctl.tools.simrack import sim_specs

    config = parse_config(
        {
            "racks": {
                "r01": {
                    "devices": {
                        "pdu": {
                            "driver": "redfish",
                            "kind": "pdu",
                            "url": "https://a",
                            "auth": "none",
                        }
                    }
                }
            }
        }
    )
    (spec,) = sim_specs(config, port=0, power_shelves=2)
    assert spec.devices[0].power_shelves == 2 and spec.devices[0].protocol == "redfish"
    (plain,) = sim_specs(config, port=0)
    assert plain.devices[0].power_shelves == 0
