"""An ORv3 power shelf over Modbus: the `orv3-psu` and `orv3-bbu` profiles read end to end from a
simulated shelf (six PSUs and a BBU, one unit id each, as rackmon addresses them) over RTU on a
virtual serial line and behind a TCP gateway; fixed-point decoding on both sides; the PSU's
write-enable bit set before a write; the load-time refusals of the new keys; and a lost PSU and a
discharging BBU as events of the power-cap allocator, once per change.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from test_operator_cli import Daemon, daemon, output  # noqa: F401 (daemon: its fixture)

from coolctl.config import parse_config
from coolctl.control.powercap import AllocatorConfig, PowerCapAllocator, ServerCap
from coolctl.drivers.modbus import ModbusDevice, WriteError
from coolctl.drivers.modbus_link import ModbusLink, SerialSettings
from coolctl.drivers.modbus_profile import ProfileError, decode, encode, load_profile, parse_profile
from coolctl.model import PointId, Quality, Reading, Snapshot
from coolctl.rack.facts import device_facts
from coolctl.rack.power_alarms import power_alarms
from coolctl.rack.stack import allocator as rack_allocator
from coolctl.simulators.faults import apply_fault
from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec
from coolctl.simulators.modbus_power_shelf import (
    BBU_UNIT_BASE,
    PSU_UNIT_BASE,
    BbuPoints,
    ModbusPowerShelf,
    PsuPoints,
)
from coolctl.simulators.modbus_server import (
    ModbusDeviceServer,
    ModbusRtuBus,
    ModbusTcpGateway,
    decode_words,
    encode_value,
    load_device_map,
)
from coolctl.simulators.plant import PlantParams, RackPlant
from coolctl.simulators.serial_line import VirtualSerialLine
from coolctl.tools.testing import eventually

RACK = "r01"
PSUS = 6
# A pty refuses parity settings once configured (termios EINVAL), so the virtual bus runs 8N1.
BUS = {"baudrate": 19200, "parity": "N", "stopbits": 1, "bytesize": 8}


def shelf() -> ModbusPowerShelf:
    plant = RackPlant(PlantParams.from_dict({"initial_load": 0.6}), seed=1)
    # the plant's rack draws ~88 kW: one of five 18 kW shelves (six 3 kW PSUs) carries a fifth
    return ModbusPowerShelf(plant, psus=PSUS, bbus=1, share=0.2)


def servers_of(shelf: ModbusPowerShelf) -> list[ModbusDeviceServer]:
    psus = [
        ModbusDeviceServer("orv3-psu", PsuPoints(shelf, n), unit_id=PSU_UNIT_BASE + n - 1)
        for n in range(1, PSUS + 1)
    ]
    return [*psus, ModbusDeviceServer("orv3-bbu", BbuPoints(shelf, 1), unit_id=BBU_UNIT_BASE)]


def drivers(link: ModbusLink) -> list[ModbusDevice]:
    psu, bbu = load_profile("orv3-psu"), load_profile("orv3-bbu")
    psus = [
        ModbusDevice(
            rack=RACK, device=f"psu{n}", unit_id=PSU_UNIT_BASE + n - 1, profile=psu, link=link
        )
        for n in range(1, PSUS + 1)
    ]
    return [
        *psus,
        ModbusDevice(rack=RACK, device="bbu1", unit_id=BBU_UNIT_BASE, profile=bbu, link=link),
    ]


@asynccontextmanager
async def rtu_shelf(state: ModbusPowerShelf) -> AsyncIterator[list[ModbusDevice]]:
    """The shelf's units on one virtual RS-485 line, and coolctl's drivers on the other end."""
    line = VirtualSerialLine(baudrate=BUS["baudrate"], bits_per_character=10)
    line.start()
    bus = ModbusRtuBus(servers_of(state), port=line.device_path, **BUS)  # type: ignore[arg-type]
    await bus.start()
    link = ModbusLink(
        serial=SerialSettings(line.client_path, baudrate=19200, parity="N"), timeout_s=1.0
    )
    try:
        yield drivers(link)
    finally:
        link.close()
        await bus.stop()
        line.stop()


@asynccontextmanager
async def tcp_shelf(state: ModbusPowerShelf) -> AsyncIterator[list[ModbusDevice]]:
    """The shelf's units behind one Modbus TCP gateway."""
    gateway = ModbusTcpGateway(servers_of(state))
    await gateway.start()
    link = ModbusLink(host="127.0.0.1", port=gateway.port, timeout_s=1.0)
    try:
        yield drivers(link)
    finally:
        link.close()
        await gateway.stop()


async def poll(devices: Sequence[ModbusDevice]) -> dict[str, dict[str, Reading]]:
    readings = {}
    for device in devices:  # one after the other: one bus
        readings[device.device] = {r.point.name: r for r in await device.poll()}
    return readings


def assert_shelf_reads(readings: dict[str, dict[str, Reading]], state: ModbusPowerShelf) -> None:
    for device, points in readings.items():
        assert all(r.quality is Quality.GOOD for r in points.values()), (device, points)
    output = sum(readings[f"psu{n}"]["output_power"].value or 0.0 for n in range(1, PSUS + 1))
    # six PSUs share the plant's IT power (its meter has noise: each refresh reads anew)
    assert output == pytest.approx(state.output_w(), rel=0.01)
    for n in range(1, PSUS + 1):  # fixed point with 3 fractional bits: 1/8 W steps
        assert (readings[f"psu{n}"]["output_power"].value or 0.0) * 8 % 1 == 0
    assert readings["psu1"]["voltage"].value == pytest.approx(230.0, abs=1 / 64)
    assert readings["bbu1"]["bbu_charge"].value == pytest.approx(1.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["rtu", "tcp"])
async def test_a_shelf_reads_end_to_end_and_its_faults_show(transport: str) -> None:
    state = shelf()
    opened = rtu_shelf(state) if transport == "rtu" else tcp_shelf(state)
    async with opened as devices:
        readings = await poll(devices)
        assert_shelf_reads(readings, state)
        assert all(readings[f"psu{n}"]["psu_ok"].value == 1.0 for n in range(1, PSUS + 1))
        assert readings["bbu1"]["bbu_discharging"].value == 0.0
        state.fail_psu(3)
        state.lose_mains()
        await _refreshed(devices[2], "psu_ok", 0.0)
        readings = await poll(devices)
        assert readings["psu3"]["psu_ok"].value == 0.0
        assert readings["psu3"]["output_power"].value == 0.0
        assert readings["psu1"]["power"].value == 0.0  # on battery: nothing drawn from mains
        assert readings["bbu1"]["bbu_discharging"].value == 1.0


async def _refreshed(device: ModbusDevice, point: str, value: float) -> None:
    """Wait until the simulator's refresh has carried a store change into the registers."""

    async def reads() -> bool:
        readings = {r.point.name: r for r in await device.poll()}
        return readings[point].value == value

    await eventually(reads, what=f"{device.device} {point} reading {value}", poll_s=0.02)


@pytest.mark.asyncio
async def test_the_write_enable_bit_is_set_before_a_write_and_cleared_after() -> None:
    state = shelf()
    async with tcp_shelf(state) as devices:
        psu = devices[0]
        assert await psu.write("alarm_acknowledge", 1.0) == 1.0
        assert state.acknowledged == 1
        raw = {r.point.name: r for r in await psu.poll()}
        assert raw["alarm_acknowledge"].value == 0.0  # the PSU cleared the latch bit itself
        assert psu.last_raw["alarm_acknowledge"] == [0]  # and the write-enable is off again


@pytest.mark.asyncio
async def test_without_the_write_enable_the_psu_refuses_the_write(tmp_path: Path) -> None:
    text = resolve("orv3-psu").read_text("utf-8")
    unguarded = tmp_path / "unguarded.toml"
    unguarded.write_text(text[: text.index("[[unlock]]")], "utf-8")
    state = shelf()
    async with tcp_shelf(state) as devices:
        psu = ModbusDevice(
            rack=RACK,
            device="psu1",
            unit_id=PSU_UNIT_BASE,
            profile=load_profile(unguarded),
            link=devices[0].link,
        )
        with pytest.raises(WriteError):
            await psu.write("alarm_acknowledge", 1.0)
        assert state.acknowledged == 0


def resolve(name: str) -> Path:
    return load_profile(name).path


def test_fixed_point_decodes_as_rackmon_does_on_both_sides() -> None:
    profile, served = load_profile("orv3-psu"), load_device_map("orv3-psu")
    by_name = {point.name: point for point in served.points}
    # rackmon: value = raw / 2^precision; PSU_Input_Power has precision 3
    assert decode(profile.point("power"), [22001]) == 2750.125
    assert decode(profile.point("current"), [12 * 1024 + 512]) == 12.5  # precision 10
    assert encode(profile.point("voltage"), 230.0) == [230 * 64]
    assert encode_value(by_name["power"], 2750.125) == [22001]
    assert decode_words(by_name["current"], [12 * 1024 + 512]) == 12.5


SIGNED = """
[profile]
name = "t"
protocol = "modbus"
kind = "sensor"
[[point]]
name = "inlet_temperature"
table = "holding"
address = 69
type = "int16"
fraction_bits = 7
unit = "celsius"
"""


def test_signed_fixed_point(tmp_path: Path) -> None:
    point = parse_profile(SIGNED.encode(), Path("t.toml")).point("inlet_temperature")
    assert decode(point, [(-1600) & 0xFFFF]) == -12.5  # PSU_Temp0_Inlet: precision 7, signed
    path = tmp_path / "t.toml"
    path.write_text(SIGNED, "utf-8")
    served = load_device_map(path).points[0]
    assert encode_value(served, -12.5) == [(-1600) & 0xFFFF]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('type = "float32"', "applies to integer types"),
        ("fraction_bits = 16", "within 0..15"),
        ("fraction_bits = -1", "within 0..15"),
        ("bit = 3", "applies to integer types"),
    ],
)
def test_fraction_bits_refused_where_it_makes_no_sense(change: str, message: str) -> None:
    text = (
        SIGNED.replace('type = "int16"', 'type = "int16"\n' + change)
        if change.startswith("bit")
        else SIGNED.replace('type = "int16"', change)
        if change.startswith("type")
        else (SIGNED.replace("fraction_bits = 7", change))
    )
    if change.startswith("bit"):
        text = text.replace('name = "inlet_temperature"', 'name = "leak_detected"').replace(
            'unit = "celsius"', 'unit = "boolean"'
        )
    with pytest.raises(ProfileError, match=message):
        parse_profile(text.encode(), Path("t.toml"))


def test_the_simulator_refuses_fraction_bits_on_a_float(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(SIGNED.replace('type = "int16"', 'type = "float32"'), "utf-8")
    with pytest.raises(ValueError, match="fraction_bits"):
        load_device_map(path)


@pytest.mark.parametrize(
    ("unlock", "message"),
    [
        ('table = "coil"\naddress = 5\nbit = 0\nvalue = 1', "applies to a holding register"),
        ('table = "holding"\naddress = 94\nbit = 16\nvalue = 1', "within 0..15"),
        ('table = "holding"\naddress = 94\nbit = 0\nvalue = 2', "within 0..1"),
    ],
)
def test_a_write_enable_bit_is_checked_at_load(unlock: str, message: str) -> None:
    text = resolve("orv3-psu").read_text("utf-8")
    text = text[: text.index("[[unlock]]")] + "[[unlock]]\n" + unlock + "\n"
    with pytest.raises(ProfileError, match=message):
        parse_profile(text.encode(), Path("t.toml"))


@pytest.mark.asyncio
async def test_a_lost_psu_and_a_bbu_discharge_are_events_once_per_change() -> None:
    server = ServerCap(
        "s0", PointId(RACK, "s0", "power"), PointId(RACK, "s0", "power_limit"), 500.0, 3000.0
    )
    alarms = (
        *(PointId(RACK, f"psu{n}", "psu_ok") for n in range(1, PSUS + 1)),
        PointId(RACK, "bbu1", "bbu_discharging"),
    )
    allocator = PowerCapAllocator(AllocatorConfig(RACK, (server,), source_alarms=alarms))
    state = shelf()

    async def step(devices: Sequence[ModbusDevice], now: float) -> list[str]:
        readings = [r for points in (await poll(devices)).values() for r in points.values()]
        readings.append(Reading(server.power, 1000.0, now, Quality.GOOD))
        allocator.step(Snapshot(readings, now), now, 50_000.0)
        return [e.kind for e in allocator.drain_events() if e.kind.startswith(("psu", "bbu"))]

    async with rtu_shelf(state) as devices:
        assert await step(devices, 0.0) == []
        state.fail_psu(2)
        await _refreshed(devices[1], "psu_ok", 0.0)
        assert await step(devices, 1.0) == ["psu_lost"]
        assert await step(devices, 2.0) == []  # once per change
        state.lose_mains()
        await _refreshed(devices[-1], "bbu_discharging", 1.0)
        assert await step(devices, 3.0) == ["bbu_discharging"]
        state.lose_mains(False)
        state.fail_psu(2, failed=False)
        await _refreshed(devices[-1], "bbu_discharging", 0.0)
        await _refreshed(devices[1], "psu_ok", 1.0)
        assert await step(devices, 4.0) == ["psu_restored", "bbu_discharge_ended"]


SHELF_CONFIG = """
[racks.r01]
power_budget_w = 20000.0
[racks.r01.devices.psu1]
driver = "modbus"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
unit = 192
profile = "orv3-psu"
[racks.r01.devices.bbu1]
driver = "modbus"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
unit = 64
profile = "orv3-bbu"
[racks.r01.devices.s0]
driver = "redfish"
kind = "server"
url = "https://127.0.0.1:1"
username = "admin"
password_file = "/dev/null"
cap_max_w = 3000.0
"""


def test_the_daemon_watches_the_psus_and_the_bbus_and_meters_the_psus() -> None:
    rack = parse_config(tomllib.loads(SHELF_CONFIG)).racks[RACK]
    facts = {device.id: device_facts(device) for device in rack.devices.values()}
    shared = rack_allocator(rack, facts)
    assert shared is not None
    config = shared.config
    assert {
        PointId(RACK, "psu1", "psu_ok"),
        PointId(RACK, "bbu1", "bbu_discharging"),
    } <= set(config.source_alarms)
    assert config.non_server_power == PointId(RACK, "psu1", "power")  # the BBU is no meter
    assert config.more_rack_power == ()


@pytest.mark.asyncio
async def test_the_simulation_serves_the_shelf_and_takes_its_faults() -> None:
    units = [
        *(
            SimDeviceSpec(f"psu{n}", "pdu", "orv3-psu", unit_id=191 + n, shelf_role="psu")
            for n in (1, 2)
        ),
        SimDeviceSpec("bbu1", "pdu", "orv3-bbu", unit_id=BBU_UNIT_BASE, shelf_role="bbu"),
    ]
    async with LiveSimulation([SimRackSpec(RACK, units, load=0.1)]) as sim:
        links = []
        devices = []
        for spec in units:
            host, _, port = sim.service(RACK, spec.device).address.rpartition(":")
            link = ModbusLink(host=host, port=int(port), timeout_s=1.0)
            links.append(link)
            profile = load_profile(str(spec.register_map))
            devices.append(
                ModbusDevice(
                    rack=RACK, device=spec.device, unit_id=spec.unit_id, profile=profile, link=link
                )
            )
        try:
            readings = await poll(devices)
            assert readings["psu1"]["psu_ok"].value == readings["psu2"]["psu_ok"].value == 1.0
            assert apply_fault(sim, "psu_fail", device="psu2") == f"{RACK}/psu2: PSU failed"
            assert apply_fault(sim, "mains_loss") == f"{RACK}: mains lost, the BBUs carry the shelf"
            await _refreshed(devices[1], "psu_ok", 0.0)
            await _refreshed(devices[2], "bbu_discharging", 1.0)
            assert (await poll(devices))["psu1"]["psu_ok"].value == 1.0
            with pytest.raises(ValueError, match="psu_fail needs the device of a PSU"):
                apply_fault(sim, "psu_fail", device="bbu1")
            apply_fault(sim, "clear")
            await _refreshed(devices[1], "psu_ok", 1.0)
            await _refreshed(devices[2], "bbu_discharging", 0.0)
        finally:
            for link in links:
                link.close()


def test_power_alarms_name_what_is_true_now() -> None:
    values = {
        "psu1/psu_ok": 1.0,
        "psu2/psu_ok": 0.0,
        "bbu1/bbu_discharging": 1.0,
        "shelves/psu_ok.3": 0.0,
        "cdu1/flow": 0.0,
    }
    assert power_alarms(values) == [
        "bbu1/bbu_discharging: on battery",
        "psu2/psu_ok: PSU lost",
        "shelves/psu_ok.3: PSU lost",
    ]


def test_status_prints_the_power_alarms(
    daemon: Daemon,  # noqa: F811 (the fixture imported above)
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = daemon.plane._racks

    def racks() -> list[dict[str, object]]:
        found = plain()
        found[0]["power_alarms"] = power_alarms({"psu2/psu_ok": 0.0, "bbu1/bbu_discharging": 1.0})
        return found

    monkeypatch.setattr(daemon.plane, "_racks", racks)
    code, out, _ = output(capsys, "status")
    assert code == 0
    assert out.splitlines()[-1] == (
        "r01 power alarms: bbu1/bbu_discharging: on battery; psu2/psu_ok: PSU lost"
    )
