"""SNMP PDUs that misbehave: silence (timeouts), values of the wrong type, OIDs that vanish,
agents that lie about OIDs or values, garbage datagrams, broken profiles. Every case is a
quality and a counter, never an exception out of `poll()`; and fuzzing of the value judge and
of a rude agent that answers random bytes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from pysnmp.proto import rfc1902, rfc1905

from coolctl.drivers.profile_toml import ProfileError
from coolctl.drivers.snmp import Cell, FailureKind, SnmpDevice, V2cCredentials, _judge
from coolctl.drivers.snmp_profile import (
    Conversion,
    load_snmp_profile,
    parse_oid,
    parse_snmp_profile,
)
from coolctl.model import Quality, Unit
from coolctl.simulators.plant import RackPlant
from coolctl.simulators.snmp_agent import SimulatedPdu, SnmpPduAgent

PUBLIC = V2cCredentials("public")


@pytest_asyncio.fixture
async def agent() -> AsyncIterator[SnmpPduAgent]:
    served = SnmpPduAgent("apc-rpdu2", SimulatedPdu(RackPlant(), outlets=8, branches=2))
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


def pdu_for(port: int, timeout_s: float = 0.3) -> SnmpDevice:
    return SnmpDevice(
        rack="r01",
        device="pdu",
        host="127.0.0.1",
        port=port,
        profile=load_snmp_profile("apc-rpdu2"),
        credentials=PUBLIC,
        timeout_s=timeout_s,
        rediscover_min_s=0.0,
    )


def qualities(readings: list) -> dict[str, Quality]:  # type: ignore[type-arg]
    return {r.point.name: r.quality for r in readings}


@pytest.mark.asyncio
async def test_silence_makes_values_stale_then_recovers(agent: SnmpPduAgent) -> None:
    pdu = pdu_for(agent.port)
    first = await pdu.poll()
    assert all(r.quality is Quality.GOOD for r in first)
    agent.faults.silent = True
    silent = await pdu.poll()
    assert {r.quality for r in silent} == {Quality.STALE}
    assert [r.value for r in silent] == [r.value for r in first]  # the last good, kept as stale
    assert pdu.stats.errors_by_kind[FailureKind.TIMEOUT] == 1 and not pdu.stats.connected
    agent.faults.silent = False
    again = await pdu.poll()
    assert all(r.quality is Quality.GOOD for r in again)
    assert pdu.stats.consecutive_failures == 0
    await pdu.close()


@pytest.mark.asyncio
async def test_never_answering_agent_reads_missing(agent: SnmpPduAgent) -> None:
    agent.faults.silent = True
    pdu = pdu_for(agent.port, timeout_s=0.2)
    readings = await pdu.poll()
    assert {r.quality for r in readings} == {Quality.MISSING}
    await pdu.close()


@pytest.mark.asyncio
async def test_wrong_types_read_bad(agent: SnmpPduAgent) -> None:
    pdu = pdu_for(agent.port)
    await pdu.poll()
    agent.faults.wrong_type = True
    readings = await pdu.poll()
    assert {r.quality for r in readings} == {Quality.BAD}
    assert all(r.value is None for r in readings)
    assert pdu.stats.errors_by_kind[FailureKind.WRONG_TYPE] == len(readings)
    await pdu.close()


@pytest.mark.asyncio
async def test_a_vanished_outlet_is_bad_once_then_walked_away(agent: SnmpPduAgent) -> None:
    pdu = pdu_for(agent.port)
    await pdu.poll()
    gone = parse_oid("1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.8")  # outlet 8's power
    agent.faults.missing.add(gone)
    readings = qualities(await pdu.poll())
    assert readings["outlet_power.8"] is Quality.BAD
    assert readings["outlet_power.7"] is Quality.GOOD
    assert pdu.stats.errors_by_kind[FailureKind.MISSING] == 1
    after = qualities(await pdu.poll())  # walked again: outlet 8 has no power column any more
    assert "outlet_power.8" not in after and after["outlet_current.8"] is Quality.GOOD
    assert pdu.stats.discoveries == 2
    await pdu.close()


@pytest.mark.asyncio
async def test_answers_for_other_oids_are_not_believed(agent: SnmpPduAgent) -> None:
    pdu = pdu_for(agent.port)
    first = await pdu.poll()
    agent.faults.lie_oids = True
    readings = await pdu.poll()
    assert {r.quality for r in readings} == {Quality.STALE}
    assert [r.value for r in readings] == [r.value for r in first]
    assert pdu.stats.errors_by_kind[FailureKind.MISMATCH] >= 1
    await pdu.close()


@pytest.mark.asyncio
async def test_negative_power_reads_bad_and_spoils_only_its_points(agent: SnmpPduAgent) -> None:
    pdu = pdu_for(agent.port)
    await pdu.poll()
    agent.faults.lie_values = True
    readings = qualities(await pdu.poll())
    assert readings["power"] is Quality.BAD and readings["outlet_power.1"] is Quality.BAD
    assert readings["outlet_current.1"] is Quality.GOOD and readings["energy"] is Quality.GOOD
    assert pdu.stats.errors_by_kind[FailureKind.INVALID] >= 1
    await pdu.close()


class _RudeAgent(asyncio.DatagramProtocol):
    """Answers every request with the next of `replies` (random bytes, truncated BER...)."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.replies and self.transport is not None:
            self.transport.sendto(self.replies.pop(0), addr)


def test_fuzz_rude_agent_never_breaks_a_poll() -> None:
    """Random datagrams in reply to every request: poll returns, in bounded time, readings that
    are all stale or missing (nothing decodable arrives), and never raises."""

    async def scenario(replies: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _RudeAgent(list(replies)), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        pdu = pdu_for(port, timeout_s=0.05)
        try:
            async with asyncio.timeout(5.0):
                readings = await pdu.poll()
        finally:
            await pdu.close()
            transport.close()
        assert readings and all(r.quality is Quality.MISSING for r in readings)

    @settings(max_examples=15, deadline=None)
    @given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=3))
    def run(replies: list[bytes]) -> None:
        asyncio.run(scenario(replies))

    run()


_CONVERSION = Conversion(
    unit=Unit.WATT,
    scale=10.0,
    offset=0.0,
    digits=0,
    digits_oid=None,
    minimum=None,
    maximum=1e6,
    invalid=frozenset({-1}),
)
_VALUES = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(rfc1902.Integer32),
    st.integers(0, 2**32 - 1).map(rfc1902.Gauge32),
    st.integers(0, 2**32 - 1).map(rfc1902.Counter32),
    st.integers(0, 2**64 - 1).map(rfc1902.Counter64),
    st.integers(0, 2**32 - 1).map(rfc1902.TimeTicks),
    st.binary(max_size=20).map(rfc1902.OctetString),
    st.sampled_from([rfc1905.noSuchObject, rfc1905.noSuchInstance, rfc1905.endOfMibView]),
    st.just(rfc1902.ObjectName((1, 3, 6))),
    st.just(rfc1902.IpAddress("127.0.0.1")),
)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_fuzz_value_judge(value: object) -> None:
    """Whatever an agent sends for a power point: a finite, non-negative value within the
    profile's bounds, or a failure kind; never an exception."""
    cell = Cell("power", (1, 3, 6), _CONVERSION)
    kind, problem, number = _judge(cell, value)
    if kind is None:
        assert number is not None and math.isfinite(number) and 0 <= number <= 1e6
    else:
        assert number is None and problem


def _profile(text: str) -> None:
    parse_snmp_profile(text.encode(), Path("test.toml"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[profile]\nname="x"\nprotocol="modbus"\nkind="pdu"\nsource="s"', "must be 'snmp'"),
        ('[profile]\nname="x"\nprotocol="snmp"\nkind="pdu"\nsource="s"', "missing"),
        (
            '[profile]\nname="x"\nprotocol="snmp"\nkind="pdu"\nsource="s"\n'
            '[[point]]\nname="power"\noid="1.3.x"\nunit="watts"',
            "not a numeric OID",
        ),
        (
            '[profile]\nname="x"\nprotocol="snmp"\nkind="pdu"\nsource="s"\n'
            '[[point]]\nname="power"\noid="1.3.6"\nunit="amperes"',
            "measured in watts",
        ),
        (
            '[profile]\nname="x"\nprotocol="snmp"\nkind="pdu"\nsource="s"\n'
            '[[point]]\nname="watts_in"\noid="1.3.6"\nunit="watts"',
            "not a canonical point",
        ),
        (
            '[profile]\nname="x"\nprotocol="snmp"\nkind="pdu"\nsource="s"\n'
            '[[table]]\nname="socket"\n[[table.column]]\nname="outlet_power"\n'
            'oid="1.3.6"\nunit="watts"',
            "must be one of",
        ),
    ],
)
def test_broken_profiles_name_the_key(text: str, problem: str) -> None:
    with pytest.raises(ProfileError, match=problem):
        _profile(text)


@pytest.mark.asyncio
async def test_vanished_rows_are_not_walked_for_on_every_poll(agent: SnmpPduAgent) -> None:
    """An agent whose GETs deny what its walks list would cost a walk per poll: walks for
    vanished rows wait rediscover_min_s after the last one."""
    pdu = SnmpDevice(
        rack="r01",
        device="pdu",
        host="127.0.0.1",
        port=agent.port,
        profile=load_snmp_profile("apc-rpdu2"),
        credentials=PUBLIC,
        rediscover_min_s=3600.0,
    )
    await pdu.poll()
    agent.faults.missing.add(parse_oid("1.3.6.1.4.1.318.1.1.26.9.4.3.1.7.8"))
    for _ in range(3):
        assert qualities(await pdu.poll())["outlet_power.8"] is Quality.BAD
    assert pdu.stats.discoveries == 1
    await pdu.close()


def test_row_labels_are_printable_and_short() -> None:
    from coolctl.drivers.snmp import _text

    assert _text(rfc1902.OctetString(b"Outlet\x1b[31m 7\n" + b"x" * 100)) == (
        "Outlet?[31m 7?" + "x" * 50
    )


@pytest.mark.asyncio
async def test_the_simulations_fault_injection_reaches_an_snmp_pdu() -> None:
    """link_loss, response_delay and read_fail, as `coolctl sim inject` sends them, act on a
    simulated SNMP PDU as on a Modbus one; clear puts it right."""
    from coolctl.simulators.faults import apply_fault
    from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec

    spec = SimDeviceSpec("pdu1", "pdu", protocol="snmp", register_map="apc-rpdu2", outlets=8)
    async with LiveSimulation([SimRackSpec("r01", [spec])]) as simulation:
        pdu = pdu_for(int(simulation.service("r01", "pdu1").address.rsplit(":", 1)[1]))
        assert all(r.usable for r in await pdu.poll())
        apply_fault(simulation, "read_fail", rack="r01", device="pdu1", point="outlet_power")
        read = qualities(await pdu.poll())
        assert read["outlet_power.3"] is Quality.BAD and read["power"] is Quality.GOOD
        apply_fault(simulation, "link_loss", rack="r01", device="pdu1")
        assert {r.quality for r in await pdu.poll()} == {Quality.STALE}
        apply_fault(simulation, "clear", rack="r01")
        pdu.rediscover_min_s = 0.0
        await pdu.poll()  # walks again: outlet_power reappeared
        assert all(r.usable for r in await pdu.poll())
        apply_fault(simulation, "response_delay", rack="r01", device="pdu1", value=1.0)
        assert {r.quality for r in await pdu.poll()} == {Quality.STALE}  # 0.3 s timeout
        assert pdu.stats.errors_by_kind[FailureKind.TIMEOUT] == 2
        await pdu.close()
