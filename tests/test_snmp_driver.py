"""The SNMP driver against the simulated SNMP PDU on loopback: both shipped profiles, v2c and
v3 authPriv, tables walked into indexed points with labels, and the probe's JSON."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from coolctl.drivers.snmp import (
    FailureKind,
    SnmpDevice,
    V2cCredentials,
    V3Credentials,
    WriteError,
)
from coolctl.drivers.snmp_profile import load_snmp_profile, shipped_snmp_profiles
from coolctl.exitcodes import ExitCode
from coolctl.model import Quality, base_point
from coolctl.simulators.plant import RackPlant
from coolctl.simulators.snmp_agent import SimulatedPdu, SnmpPduAgent

PROFILES = ("apc-rpdu2", "raritan-pdu2")
V3 = V3Credentials("coolctl", auth_key="auth-passphrase", priv_key="priv-passphrase")


@pytest_asyncio.fixture(params=PROFILES)
async def agent(request: pytest.FixtureRequest) -> AsyncIterator[SnmpPduAgent]:
    plant = RackPlant()
    served = SnmpPduAgent(
        request.param,
        SimulatedPdu(plant, outlets=24, branches=3),
        v3_user=V3.user,
        v3_auth_key=V3.auth_key,
        v3_priv_key=V3.priv_key,
    )
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


def device(agent: SnmpPduAgent, credentials: V2cCredentials | V3Credentials) -> SnmpDevice:
    return SnmpDevice(
        rack="r01",
        device="pdu",
        host="127.0.0.1",
        port=agent.port,
        profile=load_snmp_profile(agent.profile_name),
        credentials=credentials,
        timeout_s=1.0,
    )


def test_both_profiles_are_shipped_and_name_their_source() -> None:
    assert set(PROFILES) <= set(shipped_snmp_profiles())
    for name in PROFILES:
        profile = load_snmp_profile(name)
        assert profile.source and profile.unverified
        assert "power" in profile.point_names
        assert {"outlet_power", "branch_current"} <= set(profile.point_names)


@pytest.mark.asyncio
@pytest.mark.parametrize("credentials", [V2cCredentials("public"), V3], ids=["v2c", "v3"])
async def test_reads_every_point_and_walks_the_tables(
    agent: SnmpPduAgent, credentials: V2cCredentials | V3Credentials
) -> None:
    pdu = device(agent, credentials)
    try:
        readings = await pdu.poll()
    finally:
        await pdu.close()
    assert readings and all(r.quality is Quality.GOOD for r in readings), pdu.stats
    by_name = {r.point.name: r.value for r in readings}
    outlets = [name for name in by_name if base_point(name) == "outlet_power"]
    assert len(outlets) == 24
    assert {f"branch_current.{b}" for b in (1, 2, 3)} <= set(by_name)
    # outlet k carries server k-1 of the plant: the outlets sum to the servers' power
    plant = agent.pdu.plant
    servers_w = sum(plant.server_readings(i)["power"] for i in range(plant.n_servers))
    outlets_w = sum(by_name[name] or 0.0 for name in outlets)
    assert outlets_w == pytest.approx(servers_w, rel=0.02)
    # the device total is the PDU's reading (servers plus the rest), in watts
    assert by_name["power"] == pytest.approx(plant.pdu_readings()["power"], rel=0.02)
    assert pdu.labels["outlet_power.3"] == "Outlet 3"


@pytest.mark.asyncio
async def test_scales_follow_the_mib(agent: SnmpPduAgent) -> None:
    """APC: device power in hundredths of a kW, outlet power in W, currents in tenths of an A;
    Raritan: every value over 10^digits read from the device."""
    pdu = device(agent, V2cCredentials("public"))
    try:
        readings = {r.point.name: r.value for r in await pdu.poll()}
    finally:
        await pdu.close()
    power = readings["power"]
    assert power is not None and 1_000 < power < 1_000_000  # watts, not kW or mW
    current = readings["branch_current.1"]
    assert current is not None and 0 < current < 500
    if agent.profile_name == "raritan-pdu2":
        assert any(cell.digits == 3 for cell in pdu.cells)


@pytest.mark.asyncio
async def test_wrong_credentials_read_nothing_and_say_so(agent: SnmpPduAgent) -> None:
    pdu = SnmpDevice(
        rack="r01",
        device="pdu",
        host="127.0.0.1",
        port=agent.port,
        profile=load_snmp_profile(agent.profile_name),
        credentials=V3Credentials("coolctl", auth_key="not-the-key", priv_key="priv-passphrase"),
        timeout_s=0.3,
    )
    try:
        readings = await pdu.poll()
    finally:
        await pdu.close()
    assert all(r.quality is Quality.MISSING for r in readings)
    assert pdu.stats.consecutive_failures == 1
    assert pdu.stats.errors_by_kind == {FailureKind.AUTH: 1}


@pytest.mark.asyncio
async def test_snmp_points_are_read_only(agent: SnmpPduAgent) -> None:
    pdu = device(agent, V2cCredentials("public"))
    with pytest.raises(WriteError):
        await pdu.write("power", 1.0)
    await pdu.close()


def test_credentials_never_show_in_their_repr() -> None:
    assert "public" not in repr(V2cCredentials("public"))
    assert "priv-passphrase" not in repr(V3) and "auth-passphrase" not in repr(V3)


@pytest.mark.asyncio
async def test_probe_json_has_point_value_unit_quality_and_index(
    agent: SnmpPduAgent, tmp_path: Path
) -> None:
    community = tmp_path / "community"
    community.write_text("public\n")
    command = [
        sys.executable,
        "-m",
        "coolctl.cli.main",
        "probe",
        "snmp",
        f"127.0.0.1:{agent.port}",
        "--profile",
        agent.profile_name,
        "--community-file",
        str(community),
        "--json",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    rows = json.loads(out)
    scalar = next(row for row in rows if row["point"] == "power")
    assert set(scalar) == {"point", "value", "unit", "quality"} and scalar["unit"] == "watts"
    outlet = next(row for row in rows if row["point"] == "outlet_power")
    assert outlet["index"] == "1" and outlet["label"] == "Outlet 1"
    assert outlet["quality"] == "good"


@pytest.mark.asyncio
async def test_probe_says_when_the_credentials_are_refused(
    agent: SnmpPduAgent, tmp_path: Path
) -> None:
    auth, priv = tmp_path / "auth", tmp_path / "priv"
    auth.write_text("not-the-passphrase\n")
    priv.write_text(f"{V3.priv_key}\n")
    command = [
        sys.executable, "-m", "coolctl.cli.main", "probe", "snmp", f"127.0.0.1:{agent.port}",
        "--profile", agent.profile_name, "--user", V3.user,
        "--auth-key-file", str(auth), "--priv-key-file", str(priv), "--timeout", "0.5",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    _, err = await process.communicate()
    assert process.returncode == ExitCode.BAD, err.decode()
    assert b"refused the credentials" in err
    assert b"not-the-passphrase" not in err  # never echoed
