"""`coolctl probe modbus` does not hide problems: implausible values are flagged, a closed port
is one line and exit 3, exception responses are named, and --raw shows the registers."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import free_port

from coolctl.cli.probe_modbus import probe_modbus
from coolctl.exitcodes import ExitCode
from coolctl.simulators.modbus_server import ModbusDeviceServer

CDU = {
    "supply_temperature": 30.0,
    "return_temperature": 38.5,
    "flow": 120.0,
    "differential_pressure": 80_000.0,
    "heat_removed": 40_000.0,
    "facility_supply_temperature": 20.0,
    "facility_return_temperature": 26.0,
    "supply_temperature_setpoint": 30.0,
    "differential_pressure_setpoint": 80_000.0,
}


class Store:
    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = dict(values)

    def read_points(self) -> Mapping[str, float]:
        return self.values

    def write_point(self, name: str, value: float) -> None:
        self.values[name] = value


@asynccontextmanager
async def serving(register_map: str | Path, values: Mapping[str, float]) -> AsyncIterator[str]:
    server = ModbusDeviceServer(register_map, Store(values), unit_id=1)
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_a_closed_port_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    status = await probe_modbus(target, "sim-cdu", 1, 0.5, False)
    out, err = capsys.readouterr()
    assert status == ExitCode.UNREACHABLE
    assert out == ""
    assert err.strip().splitlines() == [
        f"coolctl probe: cannot connect to {target} (unit 1): nothing listening, or no such port"
    ]


@pytest.mark.asyncio
async def test_the_wrong_profile_shows_implausible_not_good(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with serving("sim-cdu", CDU) as target:  # a CDU read as if it were a PDU
        status = await probe_modbus(target, "sim-pdu", 1, 2.0, True)
    out, err = capsys.readouterr()
    rows = {row["point"]: row for row in json.loads(out)}
    assert rows["power"]["value"] > 2e6
    assert rows["power"]["quality"] == "implausible"
    assert "outside" in rows["power"]["note"]
    assert status == ExitCode.BAD
    assert "implausible value(s) (power" in err


@pytest.mark.asyncio
async def test_an_exception_response_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "more.toml"
    profile.write_text(
        '[profile]\nname = "more"\nprotocol = "modbus"\nkind = "cdu"\n'
        '[[point]]\nname = "supply_temperature"\ntable = "input"\naddress = 0\ntype = "int16"\n'
        'scale = 0.1\nunit = "celsius"\n'
        '[[point]]\nname = "dew_point"\ntable = "input"\naddress = 900\ntype = "int16"\n'
        'scale = 0.1\nunit = "celsius"\n'
    )
    async with serving("sim-cdu", CDU) as target:
        status = await probe_modbus(target, str(profile), 1, 2.0, False)
    out, _ = capsys.readouterr()
    dew_point = next(line for line in out.splitlines() if line.startswith("dew_point"))
    assert "bad" in dew_point
    assert "illegal data address (Modbus exception 2)" in dew_point
    assert "(exception 2)" not in out.replace("(Modbus exception 2)", "")
    assert status == ExitCode.OK  # the device answered; one point is bad, and says why


@pytest.mark.asyncio
async def test_raw_shows_registers_beside_values(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(
        "kenmec-style-cdu", {**CDU, "dew_point": math.nan, "pump_running": 1.0}
    ) as target:
        status = await probe_modbus(target, "kenmec-style-cdu", 1, 2.0, False, raw=True)
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["POINT", "ADDRESS", "RAW", "VALUE", "UNIT", "QUALITY"]
    by_point = {line.split()[0]: line for line in lines[1:]}
    assert "holding 3000  0x012C" in by_point["supply_temperature"]  # 300 = 30.0 °C
    assert "0x0002 bit 1" in by_point["pump_running"]
    assert "missing" in by_point["dew_point"] and "no sensor: 0x7FFF" in by_point["dew_point"]
    assert status == ExitCode.OK
