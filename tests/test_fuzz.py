"""Fuzzing what reaches coolctl from outside: Modbus registers and replies, Redfish JSON, MQTT
payloads, control-API requests and config files.

Each target has strategies for valid-shaped and hostile input, and checks coolctl's promises
rather than exact outputs: the driver's poll never raises and never outlasts its timeouts, a
reading is either good with a sound value or visibly stale/bad/missing, every rejection is a
clear error (a JSON 4xx from the API, a ConfigError naming the key from the config loader), a
rejected request changes nothing, and no value outside its bounds is ever accepted.

Time is bounded for CI: every target runs a moderate number of cases (see `fuzz()`); set
COOLCTL_FUZZ_EXAMPLES=N to run N cases per target instead (benchmarks/fuzz_counts.py does, and
reports the counts). The number of cases tried per target is printed at the end of the module
(and written as JSON to $COOLCTL_FUZZ_REPORT when set).

Servers (pymodbus, a misbehaving raw Modbus server, Redfish mockups, Mosquitto, the control
API) are started once per target and driven from one event loop, so that a case costs
milliseconds; hypothesis runs inside that loop through `asyncio.Runner`.

Bugs found by fuzzing are fixed; each has a regression test at the end of the module, and the
strategies keep generating the inputs that found them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import re
import socket
import struct
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiomqtt
import pytest
from conftest import EXAMPLE
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mockup_server import MockupServer, Raw
from test_api import BOUNDS, MemoryPlane
from test_modbus_driver import (
    FC_COILS,
    FC_DISCRETE,
    FC_HOLDING,
    FC_INPUT,
    UNIT_ID,
    Registers,
    SimServer,
)
from yarl import URL

from coolctl.config import (
    Config,
    ConfigError,
    ModbusDeviceConfig,
    MqttDeviceConfig,
    RedfishDeviceConfig,
    load_config,
    parse_config,
)
from coolctl.daemon.plane import DaemonControlPlane
from coolctl.daemon.runtime import Daemon
from coolctl.daemon.service import Service, ServiceOptions
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus import WriteError as ModbusWriteError
from coolctl.drivers.modbus_profile import (
    DATA_TYPES,
    WORD_ORDERS,
    ModbusProfile,
    RegisterPoint,
    decode,
    encode,
    load_profile,
    parse_profile,
)
from coolctl.drivers.mqtt import MqttConnection, MqttSettings
from coolctl.drivers.mqtt_profile import (
    MAX_PAYLOAD_BYTES,
    PayloadError,
    RejectReason,
    TopicPoint,
    decode_payload,
    load_mqtt_profile,
)
from coolctl.drivers.redfish import RedfishDevice, RedfishSettings, WriteError
from coolctl.model import CANONICAL_POINTS, PointId, Quality, Reading, Unit
from coolctl.ops.api import MAX_BODY_BYTES, ControlApi
from coolctl.ops.protocol import ControlError, ControlPlane
from coolctl.ops.store import AsyncStore
from coolctl.rack.check import check_profiles, load_checked_config
from coolctl.rack.facts import setpoint_bounds
from coolctl.tools.broker import Mosquitto
from coolctl.tools.testing import eventually

# --------------------------------------------------------------------------------------------
# Settings and case counting

settings.register_profile(
    "coolctl-fuzz",
    deadline=None,  # loopback servers on a shared CI machine: time is checked by the tests
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)
EXAMPLES_ENV = "COOLCTL_FUZZ_EXAMPLES"
REPORT_ENV = "COOLCTL_FUZZ_REPORT"


def fuzz(ci_examples: int) -> settings:
    """The settings of one target: `ci_examples` cases, or $COOLCTL_FUZZ_EXAMPLES."""
    wanted = os.environ.get(EXAMPLES_ENV)
    return settings(
        settings.get_profile("coolctl-fuzz"),
        max_examples=int(wanted) if wanted else ci_examples,
    )


CASES: Counter[str] = Counter()
OUTCOMES: defaultdict[str, Counter[str]] = defaultdict(Counter)


def tried(target: str, outcome: str) -> None:
    """Count one case of a target and how it ended (also a hypothesis event, for
    --hypothesis-show-statistics)."""
    CASES[target] += 1
    OUTCOMES[target][outcome] += 1
    event(f"{target}: {outcome}")


@pytest.fixture(scope="module", autouse=True)
def report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the cases tried per target once the module is done (the README quotes them)."""
    started = time.monotonic()
    yield
    lines = [f"fuzz cases per target ({time.monotonic() - started:.1f} s):"]
    for target in sorted(CASES):
        outcomes = ", ".join(f"{k} {v}" for k, v in OUTCOMES[target].most_common(8))
        lines.append(f"  {target}: {CASES[target]} ({outcomes})")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
    report = os.environ.get(REPORT_ENV)
    if report:
        Path(report).write_text(
            json.dumps(
                {t: {"cases": CASES[t], "outcomes": dict(OUTCOMES[t])} for t in sorted(CASES)},
                indent=2,
            )
        )


def within(limit_s: float, what: str) -> contextlib.AbstractAsyncContextManager[None]:
    """A hard bound on one case, so that a hang fails the case instead of the CI job."""

    @contextlib.asynccontextmanager
    async def bounded() -> AsyncIterator[None]:
        deadline = asyncio.timeout(limit_s)
        try:
            async with deadline:
                yield
        except TimeoutError:
            if deadline.expired():
                raise AssertionError(f"{what} did not finish within {limit_s} s") from None
            raise

    return bounded()


# --------------------------------------------------------------------------------------------
# 1. Modbus: register contents through the codec, a real pymodbus server, and rude replies

# Every point type in every table and word order, with scales and an offset, in five read
# blocks (a gap in the holding registers makes two of them).
FUZZ_PROFILE = b"""
[profile]
name = "fuzz-all-types"
protocol = "modbus"
kind = "cdu"

[[point]]
name = "supply_temperature"
table = "input"
address = 0
type = "int16"
scale = 0.1
unit = "celsius"

[[point]]
name = "flow"
table = "input"
address = 1
type = "uint16"
scale = 0.1
unit = "litres_per_minute"

[[point]]
name = "heat_removed"
table = "input"
address = 2
type = "uint32"
unit = "watts"

[[point]]
name = "energy"
table = "input"
address = 4
type = "uint32"
word_order = "little"
scale = 3600.0
unit = "joules"

[[point]]
name = "facility_supply_temperature"
table = "input"
address = 6
type = "float32"
unit = "celsius"

[[point]]
name = "facility_return_temperature"
table = "input"
address = 8
type = "float32"
word_order = "little"
unit = "celsius"

[[point]]
name = "return_temperature"
table = "holding"
address = 0
type = "int32"
scale = 0.01
offset = -10.0
unit = "celsius"

[[point]]
name = "power"
table = "holding"
address = 2
type = "int32"
word_order = "little"
unit = "watts"

[[point]]
name = "pump_speed_command"
table = "holding"
address = 10
type = "uint16"
scale = 0.001
unit = "ratio"
writable = true
min = 0.0
max = 1.0

[[point]]
name = "primary_flow"
table = "holding"
address = 11
type = "float32"
scale = -60.0
unit = "litres_per_minute"

[[point]]
name = "pump_running"
table = "coil"
address = 0
type = "bool"
unit = "boolean"

[[point]]
name = "leak_detected"
table = "discrete"
address = 0
type = "bool"
unit = "boolean"

[[point]]
name = "standby_pump_active"
table = "discrete"
address = 1
type = "bool"
unit = "boolean"
"""
FUZZ_MODBUS = parse_profile(FUZZ_PROFILE, Path("fuzz-all-types.toml"))
HOLDING_ADDRESSES = (0, 1, 2, 3, 10, 11, 12)
INPUT_ADDRESSES = tuple(range(10))
COIL_ADDRESSES = (0,)
DISCRETE_ADDRESSES = (0, 1)
# Words that make float32 values special (NaN, infinities, denormals, signed zero) or sit at
# the edges of the integer types; drawn often, so the interesting cases are not left to luck.
SPECIAL_WORDS = (0x0000, 0x0001, 0x7F80, 0x7FC0, 0x7FFF, 0x8000, 0xFF80, 0xFFC0, 0xFFFF)
WORDS = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(SPECIAL_WORDS))
_INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


def oracle(point: RegisterPoint, words: Sequence[int]) -> float | None:
    """The engineering value of a point's registers, worked out independently of the codec;
    None for what must be refused (a float that is NaN or infinite, a code that is no state)."""
    if point.is_bit:
        word = words[0] if point.bit is None else (words[0] >> point.bit) & 1
        value = 1.0 if word else 0.0
        return 1.0 - value if point.invert else value
    ordered = list(words) if point.word_order == "big" else list(reversed(words))
    if point.byte_swap:
        ordered = [((word & 0xFF) << 8) | (word >> 8) for word in ordered]
    data = b"".join(word.to_bytes(2, "big") for word in ordered)
    if point.data_type == "float32":
        raw: float = struct.unpack(">f", data)[0]
        if not math.isfinite(raw):
            return None
    else:
        raw = int.from_bytes(data, "big", signed=point.data_type.startswith("int"))
    if point.states:
        codes = dict(point.states)  # raw code -> canonical code, as the profile declares them
        return float(codes[int(raw)]) if raw == int(raw) and int(raw) in codes else None
    return raw / 2**point.fraction_bits * point.scale + point.offset


def in_type_range(point: RegisterPoint, value: float) -> bool:
    """Whether some register contents of this point decode to `value` (for replies that may
    have been garbled into other valid numbers)."""
    if point.is_bit:
        return value in (0.0, 1.0)
    if not math.isfinite(value):
        return False
    if point.data_type == "float32":
        return True
    low, high = _INT_RANGES[point.data_type]
    ends = sorted((low * point.scale + point.offset, high * point.scale + point.offset))
    return ends[0] - 1e-6 * abs(ends[0]) <= value <= ends[1] + 1e-6 * abs(ends[1])


def all_profile_points() -> list[RegisterPoint]:
    points = list(FUZZ_MODBUS.points)
    for name in ("sim-cdu", "sim-pdu", "orv3-rpu", "kenmec-style-cdu", "orv3-psu", "orv3-bbu"):
        points += load_profile(name).points
    return points


ALL_POINTS = all_profile_points()


@st.composite
def register_points(draw: st.DrawFn) -> RegisterPoint:
    """A shipped or fuzz-profile point, or one of every type, word and byte order with a random
    scale and offset (within what a profile could sensibly say)."""
    point = draw(st.sampled_from(ALL_POINTS))
    if draw(st.booleans()) or point.is_state or point.bit is not None:
        return point  # an enumerated point or a bit of a register: only as its profile has it
    data_type = draw(st.sampled_from([t for t in DATA_TYPES if t != "bool"]))
    magnitude = draw(st.floats(1e-6, 1e6))
    return dataclasses.replace(
        point,
        table="holding",
        data_type=data_type,
        word_order=draw(st.sampled_from(WORD_ORDERS)),
        byte_swap=draw(st.booleans()),
        scale=magnitude if draw(st.booleans()) else -magnitude,
        offset=draw(st.floats(-1e6, 1e6)),
        fraction_bits=0,
    )


@st.composite
def register_contents(draw: st.DrawFn) -> tuple[RegisterPoint, list[int], bool]:
    """A point and what its registers hold: the right number of 16-bit words (valid shape),
    or hostile contents (too few or too many, out of 16-bit range)."""
    point = draw(register_points())
    if draw(st.integers(0, 3)):
        return (
            point,
            draw(st.lists(WORDS, min_size=point.register_count, max_size=point.register_count)),
            True,
        )
    hostile = draw(
        st.one_of(
            st.lists(WORDS, max_size=4).filter(lambda w: len(w) != point.register_count),
            st.lists(
                st.one_of(st.integers(max_value=-1), st.integers(min_value=0x10000), WORDS),
                min_size=point.register_count,
                max_size=point.register_count,
            ).filter(lambda w: any(not 0 <= x <= 0xFFFF for x in w)),
        )
    )
    return point, hostile, False


@fuzz(1000)
@given(register_contents())
def test_fuzz_modbus_decode(case: tuple[RegisterPoint, list[int], bool]) -> None:
    """decode() never raises anything but ValueError, refuses exactly what cannot be right
    (NaN/infinite floats, wrong shapes) and otherwise returns the independent oracle's value."""
    point, words, valid_shape = case
    # a coil or discrete input takes any value as its bool; a bit of a register needs a word
    bit_ok = point.is_bit and len(words) == 1 and (point.bit is None or 0 <= words[0] <= 0xFFFF)
    try:
        value = decode(point, words)
    except ValueError as exc:
        assert str(exc).startswith(point.name)
        if bit_ok:
            raise AssertionError(f"a bit point refused {words}") from exc
        assert not valid_shape or oracle(point, words) is None, (point, words)
        tried("modbus decode", "refused")
        return
    assert valid_shape or bit_ok, f"hostile registers {words} decoded to {value}"
    assert math.isfinite(value)
    assert value == oracle(point, words), (point, words, value)
    tried("modbus decode", "value")


def fuzz_registers() -> Registers:
    return Registers(
        holding=dict.fromkeys(HOLDING_ADDRESSES, 0),
        input=dict.fromkeys(INPUT_ADDRESSES, 0),
        coils=dict.fromkeys(COIL_ADDRESSES, False),
        discrete=dict.fromkeys(DISCRETE_ADDRESSES, False),
    )


@dataclass(slots=True)
class Contents:
    """What a fuzzed device holds, by table and address."""

    holding: dict[int, int]
    input: dict[int, int]
    coils: dict[int, bool]
    discrete: dict[int, bool]

    def words(self, point: RegisterPoint) -> list[int]:
        table: Mapping[int, int | bool] = {
            "holding": self.holding,
            "input": self.input,
            "coil": self.coils,
            "discrete": self.discrete,
        }[point.table]
        return [int(table[point.address + i]) for i in range(point.register_count)]

    def expected(self, profile: ModbusProfile) -> dict[str, float | None]:
        return {p.name: oracle(p, self.words(p)) for p in profile.points}


def _words_for(addresses: Sequence[int]) -> st.SearchStrategy[dict[int, int]]:
    return st.lists(WORDS, min_size=len(addresses), max_size=len(addresses)).map(
        lambda words: dict(zip(addresses, words, strict=True))
    )


def _bits_for(addresses: Sequence[int]) -> st.SearchStrategy[dict[int, bool]]:
    return st.lists(st.booleans(), min_size=len(addresses), max_size=len(addresses)).map(
        lambda bits: dict(zip(addresses, bits, strict=True))
    )


CONTENTS = st.builds(
    Contents,
    _words_for(HOLDING_ADDRESSES),
    _words_for(INPUT_ADDRESSES),
    _bits_for(COIL_ADDRESSES),
    _bits_for(DISCRETE_ADDRESSES),
)


def poll_bound_s(device: ModbusDevice) -> float:
    """The longest a poll may take: one connect and one request per block, each within the
    timeout (a link failure stops the poll early), plus scheduling slack."""
    return device.timeout_s * (len(device.blocks) + 1) + 0.5


def check_modbus_poll(
    device: ModbusDevice,
    readings: list[Reading],
    expected: Mapping[str, float | None],
    *,
    exact: bool,
) -> None:
    """The poll's readings are one per profile point, in order; a good reading holds a finite
    value (the exact one when the replies were honest) and a bad or missing one none."""
    assert [r.point.name for r in readings] == [p.name for p in device.profile.points]
    for point, reading in zip(device.profile.points, readings, strict=True):
        assert reading.point == PointId("r01", "fuzz", point.name)
        if reading.quality is Quality.GOOD:
            assert reading.value is not None and math.isfinite(reading.value), reading
            if exact:
                assert reading.value == expected[point.name], (reading, expected[point.name])
            else:
                assert in_type_range(point, reading.value), reading
        elif reading.quality is Quality.STALE:
            assert reading.value is not None and math.isfinite(reading.value), reading
        else:
            assert reading.value is None, reading


def test_fuzz_modbus_driver_polls_random_registers() -> None:
    """A real pymodbus server holds random words (NaN and infinite floats included): every
    point reads good with exactly the oracle's value, or bad where the float is not a number,
    and nothing else on the device is spoilt by it."""
    with asyncio.Runner() as runner:
        server = SimServer(fuzz_registers())
        runner.run(server.start())
        device = ModbusDevice(
            rack="r01",
            device="fuzz",
            host="127.0.0.1",
            port=server.port,
            unit_id=UNIT_ID,
            profile=FUZZ_MODBUS,
            timeout_s=1.0,
            reconnect_min_s=0.0,
            reconnect_max_s=0.0,
        )

        async def case(contents: Contents) -> None:
            for address, word in contents.holding.items():
                await server.set(FC_HOLDING, address, [word])
            for address, word in contents.input.items():
                await server.set(FC_INPUT, address, [word])
            for address, bit in contents.coils.items():
                await server.set(FC_COILS, address, [bit])
            for address, bit in contents.discrete.items():
                await server.set(FC_DISCRETE, address, [bit])
            expected = contents.expected(FUZZ_MODBUS)
            async with within(poll_bound_s(device), "a poll of an honest server"):
                readings = await device.poll()
            check_modbus_poll(device, readings, expected, exact=True)
            for point, reading in zip(FUZZ_MODBUS.points, readings, strict=True):
                want = Quality.BAD if expected[point.name] is None else Quality.GOOD
                assert reading.quality is want, (reading, expected[point.name])
            bad = sum(value is None for value in expected.values())
            tried("modbus registers (pymodbus server)", f"{bad} bad floats")

        @fuzz(120)
        @given(CONTENTS)
        def run(contents: Contents) -> None:
            runner.run(case(contents))

        try:
            run()
        finally:
            runner.run(device.close())
            runner.run(server.stop())


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """How the rude server answers one request (see RudeModbusServer._answer)."""

    kind: str
    at: int = 0
    value: int = 0
    data: bytes = b""


_MISBEHAVIOUR_DETAILS: dict[str, st.SearchStrategy[Misbehaviour]] = {
    "garbage": st.builds(Misbehaviour, st.just("garbage"), data=st.binary(min_size=1, max_size=64)),
    "split": st.builds(Misbehaviour, st.just("split"), at=st.integers(1, 12)),
    "truncate_close": st.builds(Misbehaviour, st.just("truncate_close"), at=st.integers(0, 12)),
    "truncate_stall": st.builds(Misbehaviour, st.just("truncate_stall"), at=st.integers(0, 12)),
    "flip": st.builds(
        Misbehaviour, st.just("flip"), at=st.integers(0, 40), value=st.integers(0, 255)
    ),
    "header": st.builds(
        Misbehaviour,
        st.just("header"),
        at=st.sampled_from([0, 2, 4, 6]),
        value=st.integers(0, 0xFFFF),
    ),
    "exception": st.builds(Misbehaviour, st.just("exception"), value=st.integers(0, 255)),
    "function": st.builds(Misbehaviour, st.just("function"), value=st.integers(0, 255)),
    "byte_count": st.builds(Misbehaviour, st.just("byte_count"), value=st.integers(0, 255)),
    "extra": st.builds(Misbehaviour, st.just("extra"), data=st.binary(min_size=1, max_size=32)),
    "duplicate": st.just(Misbehaviour("duplicate")),
    "silence": st.just(Misbehaviour("silence")),
    "close": st.just(Misbehaviour("close")),
    "ok": st.just(Misbehaviour("ok")),
}
# A kind first, then its details, so that every kind is drawn about as often as any other
# (hypothesis leans towards the first one, hence garbage there and honesty last).
MISBEHAVIOURS = st.sampled_from(list(_MISBEHAVIOUR_DETAILS)).flatmap(
    lambda kind: _MISBEHAVIOUR_DETAILS[kind]
)
# Replies after which a good reading may hold a value the device never had: Modbus/TCP has
# no checksum, so a flipped data byte is a valid frame with another number in it.
CORRUPTING = frozenset({"flip", "garbage", "extra", "duplicate", "header", "byte_count"})


class RudeModbusServer:
    """A bare asyncio Modbus/TCP server that answers reads from `contents`, each request the
    way the next entry of `script` says (honestly once the script is used up)."""

    def __init__(self, contents: Contents) -> None:
        self.contents = contents
        self.script: list[Misbehaviour] = []
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                tid, _protocol, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(max(length - 1, 0))
                self.requests += 1
                how = self.script.pop(0) if self.script else Misbehaviour("ok")
                going_on = await self._answer(how, self._reply(tid, unit, pdu), writer)
                if going_on is None:  # stalled: read until the client gives up
                    while await reader.read(4096):
                        pass
                    return
                if not going_on:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _reply(self, tid: int, unit: int, pdu: bytes) -> bytes:
        function = pdu[0] if pdu else 0
        body = self._body(function, pdu)
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body

    def _body(self, function: int, pdu: bytes) -> bytes:
        if function not in (1, 2, 3, 4, 6) or len(pdu) < 5:
            return bytes([function | 0x80, 1])
        address, count = struct.unpack(">HH", pdu[1:5])
        c = self.contents
        if function == 6:  # write single register: stored, and the request echoed
            if address not in c.holding:
                return bytes([function | 0x80, 2])
            c.holding[address] = count
            return pdu[:5]
        table: Mapping[int, int | bool] = {1: c.coils, 2: c.discrete, 3: c.holding, 4: c.input}[
            function
        ]
        span = range(address, address + count)
        if count == 0 or any(a not in table for a in span):
            return bytes([function | 0x80, 2])
        if function in (3, 4):
            return bytes([function, 2 * count]) + b"".join(
                int(table[a]).to_bytes(2, "big") for a in span
            )
        packed = bytearray((count + 7) // 8)
        for i, a in enumerate(span):
            if table[a]:
                packed[i // 8] |= 1 << (i % 8)
        return bytes([function, len(packed)]) + bytes(packed)

    async def _answer(
        self, how: Misbehaviour, reply: bytes, writer: asyncio.StreamWriter
    ) -> bool | None:
        """Send (or not) the reply as `how` says; False ends the connection, None stalls it."""
        kind = how.kind
        if kind == "silence":
            return True
        if kind == "close":
            return False
        if kind in ("truncate_close", "truncate_stall"):
            writer.write(reply[: min(how.at, len(reply) - 1)])
            await writer.drain()
            return False if kind == "truncate_close" else None
        if kind == "split":
            cut = min(how.at, len(reply) - 1)
            writer.write(reply[:cut])
            await writer.drain()
            await asyncio.sleep(0.005)
            writer.write(reply[cut:])
        elif kind == "garbage":
            writer.write(how.data)
        elif kind == "flip":
            index = how.at % len(reply)
            writer.write(reply[:index] + bytes([how.value]) + reply[index + 1 :])
        elif kind == "header":
            if how.at == 6:
                patched = reply[:6] + bytes([how.value & 0xFF]) + reply[7:]
            else:
                patched = reply[: how.at] + how.value.to_bytes(2, "big") + reply[how.at + 2 :]
            writer.write(patched)
        elif kind == "exception":
            writer.write(reply[:4] + b"\x00\x03" + reply[6:7] + bytes([reply[7] | 0x80, how.value]))
        elif kind == "function":
            writer.write(reply[:7] + bytes([how.value]) + reply[8:])
        elif kind == "byte_count" and len(reply) > 8:
            writer.write(reply[:8] + bytes([how.value]) + reply[9:])
        elif kind == "extra":
            writer.write(reply + how.data)
        elif kind == "duplicate":
            writer.write(reply + reply)
        else:
            writer.write(reply)
        await writer.drain()
        return True


PUMP_COMMAND = FUZZ_MODBUS.point("pump_speed_command")  # holding 10, uint16 × 0.001, 0..1
SETPOINTS = st.one_of(
    st.none(),
    st.floats(0.0, 1.0),
    st.sampled_from([-0.001, 1.001, 65.536, -1e9, math.nan, math.inf]),  # refused unsent
)


async def write_through(
    device: ModbusDevice, server: RudeModbusServer, value: float, exact: bool
) -> str:
    """One setpoint write to the rude server, checked; how it ended."""
    requests = server.requests
    in_bounds = math.isfinite(value) and 0.0 <= value <= 1.0
    try:
        async with within(device.timeout_s * 3 + 0.5, "a write"):
            read_back = await device.write(PUMP_COMMAND.name, value)
    except ModbusWriteError:
        if not in_bounds:
            assert server.requests == requests, "an out-of-bounds write went on the wire"
            return "refused"
        return "failed"
    assert in_bounds, f"{value} was written"
    half_count = PUMP_COMMAND.scale / 2 * (1 + 1e-9) + 1e-12  # the driver's own tolerance
    assert abs(read_back - value) <= half_count, (value, read_back)
    if exact:
        assert server.contents.holding[PUMP_COMMAND.address] == encode(PUMP_COMMAND, value)[0]
    return "written"


def test_fuzz_modbus_driver_against_rude_replies() -> None:
    """A device that cuts, garbles, repeats, delays or swallows its replies: every poll
    returns within its bound without raising, with sound readings; a setpoint write in the
    middle of it either reads back what was asked (and the device holds it) or raises
    WriteError, and one outside the point's bounds never reaches the wire; once the device
    answers honestly again, the very next polls read exactly what it holds (no reply left in
    a buffer is ever taken for another request's answer)."""
    with asyncio.Runner() as runner:
        server = RudeModbusServer(Contents({}, {}, {}, {}))
        runner.run(server.start())
        device = ModbusDevice(
            rack="r01",
            device="fuzz",
            host="127.0.0.1",
            port=server.port,
            unit_id=UNIT_ID,
            profile=FUZZ_MODBUS,
            timeout_s=0.2,
            reconnect_min_s=0.0,
            reconnect_max_s=0.0,
        )

        async def case(contents: Contents, script: list[Misbehaviour], write: float | None) -> None:
            server.contents = contents
            server.script = list(script)
            expected = contents.expected(FUZZ_MODBUS)
            exact = not any(m.kind in CORRUPTING for m in script)
            for poll in range(3):
                async with within(poll_bound_s(device), "a poll of a rude server"):
                    readings = await device.poll()
                check_modbus_poll(device, readings, expected, exact=exact)
                if poll == 0 and write is not None:
                    outcome = await write_through(device, server, write, exact)
                    tried("modbus writes (rude server)", outcome)
                    expected = contents.expected(FUZZ_MODBUS)  # the write may have landed
                if not server.script:
                    break
            server.script.clear()
            # Honest again: every good value is exact from now on (a reply left in a buffer
            # taken for another request's answer would show here), and all is good within a
            # reconnect or two.
            polls = 0
            while True:
                polls += 1
                async with within(poll_bound_s(device), "a poll after recovery"):
                    readings = await device.poll()
                check_modbus_poll(device, readings, expected, exact=True)
                if all(
                    r.quality is (Quality.BAD if expected[r.point.name] is None else Quality.GOOD)
                    for r in readings
                ):
                    break
                assert polls < 4, f"not recovered after {polls} honest polls: {readings}"
            kinds = sorted({m.kind for m in script} - {"ok"}) or ["honest"]
            tried("modbus replies (rude server)", "+".join(kinds[:2]))
            event(f"recovered after {polls} poll(s)")

        @fuzz(60)
        @given(CONTENTS, st.lists(MISBEHAVIOURS, min_size=1, max_size=4), SETPOINTS)
        def run(contents: Contents, script: list[Misbehaviour], write: float | None) -> None:
            runner.run(case(contents, script, write))

        try:
            run()
        finally:
            runner.run(device.close())
            runner.run(server.stop())


# --------------------------------------------------------------------------------------------
# 2. Redfish: hostile JSON from a service, to the real driver

MOCKUP_KINDS = {
    "public-cooling-unit": "cdu",
    "public-pdu": "pdu",
    "public-rackmount1": "server",
    "public-liquid-cooled-server": "server",
}
LEAK_STATES = frozenset({"OK", "Warning", "Critical", "Absent"})


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


# JSON values a service may send where a number belongs: every one of them must make the
# point bad (never a number, or not a finite one, or too large for a float).
HOSTILE_LEAF = st.one_of(
    st.text(max_size=20),
    st.booleans(),
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            10**400,
            -(10**400),
            "12.5",
            "NaN",
            "\x00",
            "\ud800",
            "\u202e42",
            "",
            [],
            {},
            [12.5],
            {"Reading": 12.5},
        ]
    ),
    st.lists(st.integers(), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.integers(1000, 100_000).map(lambda n: [0] * n),
    st.integers(2, 150).map(nested),
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.sampled_from([10**4000, -(2**63), 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
LINK_URIS = st.one_of(
    st.sampled_from(
        [
            "/redfish/v1",
            "/redfish/v1/Chassis",
            "/redfish/v1/Chassis/1U",
            "http://127.0.0.2/redfish/v1",
            "//evil.example/redfish/v1",
            "/redfish/v1/../../../etc/passwd",
            "/redfish/v1/Chassis#/Members/0",
            "/redfish/v1/Chassis?$expand=*($levels=9)",
            "/" + "a" * 3000,
            "",
            "redfish/v1",
            "/redfish/v1/\x00",
            "/redfish/v1/\u202e",
        ]
    ),
    st.text(max_size=30),
)
# Links a broken or hostile service may hold: to itself, elsewhere, nowhere, and many.
HOSTILE_LINKS = st.one_of(
    LINK_URIS.map(lambda uri: {"@odata.id": uri}),
    st.lists(LINK_URIS.map(lambda uri: {"@odata.id": uri}), max_size=20),
    st.integers(100, 3000).map(
        lambda n: [{"@odata.id": f"/redfish/v1/Chassis/x{i}"} for i in range(n)]
    ),
)
RETRY_AFTER = st.one_of(
    st.sampled_from(
        ["0", "1", "3", "99999999999", "9" * 400, "-5", "1.5", "", "soon", "٣", "²", "①"]
    ),
    st.just("Wed, 21 Oct 2015 07:28:00 GMT"),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    # digits of every script: str.isdigit() takes some that float() refuses
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=4),
)


def raw_bodies(original: bytes) -> st.SearchStrategy[bytes]:
    """Whole bodies a broken service may send instead of a resource."""
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, max(len(original) - 1, 0)).map(lambda n: original[:n]),  # cut short
        st.sampled_from(
            [
                b"",
                b"NaN",
                b"null",
                b"[1, 2]",
                b'"a string"',
                b'{"Members": "none"}',
                b"\xff\xfe{\x00}\x00",
                b'{"Id": "\xff\xfe\xfd"}',
                b"\xef\xbb\xbf{}",
                b"<html><body>Service Unavailable</body></html>",
                b"[" * 100_000,
                b'{"a":' * 50_000,
                b"1" * 5000,
                b'{"Members": [' + b"{}," * 100_000 + b"{}]}",
                b" " * (4 * 2**20 + 16) + b"{}",  # over the driver's body limit
            ]
        ),
    )


def json_pointer(body: Any, pointer: str) -> tuple[Any, str | int]:
    """The container of the leaf a `uri#/a/0/b` pointer names, and the leaf's key."""
    steps: list[str | int] = []
    node = body
    parts = pointer.split("/")
    for part in parts:
        steps.append(int(part) if isinstance(node, list) else part)
        node = node[steps[-1]]
    container = body
    for step in steps[:-1]:
        container = container[step]
    return container, steps[-1]


@dataclass(slots=True)
class Mockup:
    """One Redfish mockup served on loopback, and what the driver reads from it untouched."""

    name: str
    kind: str
    server: MockupServer
    resources: dict[str, Any]
    clean: dict[str, Reading]
    sources: dict[str, str]

    def reset(self) -> None:
        server = self.server
        server.resources = copy.deepcopy(self.resources)
        server.raw.clear()
        server.status_for.clear()
        server.seen.clear()
        server.patches.clear()

    def device(self) -> RedfishDevice:
        return RedfishDevice(
            rack="r01",
            device="fuzz",
            kind=self.kind,  # type: ignore[arg-type]
            settings=RedfishSettings(
                self.server.url, auth="none", timeout_s=1.0, backoff_min_s=0.05, backoff_max_s=0.2
            ),
        )


async def serve_mockups() -> list[Mockup]:
    mockups = []
    for name, kind in MOCKUP_KINDS.items():
        server = MockupServer.from_mockup(name)
        await server.start()
        resources = copy.deepcopy(server.resources)
        mockup = Mockup(name, kind, server, resources, {}, {})
        async with mockup.device() as device:
            readings = await device.poll()
            mockup.clean = {r.point.name: r for r in readings}
            mockup.sources = device.sources()
        assert any(r.quality is Quality.GOOD for r in readings), name
        mockups.append(mockup)
    return mockups


# The driver's own bound: a discovery may take 12 request timeouts (1 s here), a poll less.
REDFISH_POLL_BOUND_S = 13.0


def check_redfish_poll(device: RedfishDevice, readings: list[Reading]) -> Counter[str]:
    """One reading per point of the kind, in order; good ones finite, bad/missing ones empty,
    stale ones keep an old good value."""
    assert [r.point.name for r in readings] == list(device.points)
    qualities: Counter[str] = Counter()
    for reading in readings:
        qualities[reading.quality.value] += 1
        if reading.quality in (Quality.GOOD, Quality.STALE):
            assert reading.value is not None and math.isfinite(reading.value), reading
        else:
            assert reading.value is None, reading
        if reading.quality is Quality.GOOD and reading.point.unit is Unit.BOOLEAN:
            assert reading.value in (0.0, 1.0), reading
    return qualities


@dataclass(frozen=True, slots=True)
class Targeted:
    mockup: int
    point: str
    value: Any


@st.composite
def targeted_cases(draw: st.DrawFn, mockups: Sequence[Mockup]) -> Targeted:
    index = draw(st.integers(0, len(mockups) - 1))
    mockup = mockups[index]
    point = draw(st.sampled_from(sorted(mockup.sources)))
    value = draw(HOSTILE_LEAF)
    if point == "leak_detected":  # a DetectorState: any value but a known state is bad
        value = draw(HOSTILE_LEAF.filter(lambda v: not (isinstance(v, str) and v in LEAK_STATES)))
    return Targeted(index, point, value)


def test_fuzz_redfish_hostile_value_spoils_only_its_point() -> None:
    """After discovery, the property a point is read from turns into something that is not a
    finite number (a string, NaN, 1e400, a huge array, deep nesting...): that point reads bad,
    and every point read from other resources keeps its good value."""
    with asyncio.Runner() as runner:
        mockups = runner.run(serve_mockups())

        async def case(target: Targeted) -> None:
            mockup = mockups[target.mockup]
            mockup.reset()
            async with mockup.device() as device:
                async with within(REDFISH_POLL_BOUND_S, "discovery"):
                    await device.poll()
                described = mockup.sources[target.point]
                uri, _, pointer = described.split(", ")[0].partition("#/")
                container, key = json_pointer(mockup.server.resources[uri], pointer)
                container[key] = target.value
                async with within(REDFISH_POLL_BOUND_S, "a poll"):
                    readings = {r.point.name: r for r in await device.poll()}
                check_redfish_poll(device, list(readings.values()))
                assert readings[target.point].quality is Quality.BAD, readings[target.point]
                for name, described_other in mockup.sources.items():
                    uris = {part.partition("#")[0] for part in described_other.split(", ")}
                    if name != target.point and uri not in uris:
                        clean = mockup.clean[name]
                        assert readings[name].quality is clean.quality, (name, readings[name])
                        assert readings[name].value == clean.value, (name, readings[name])
            tried("redfish values (targeted)", type(target.value).__name__)

        @fuzz(120)
        @given(targeted_cases(mockups))
        def run(target: Targeted) -> None:
            runner.run(case(target))

        try:
            run()
        finally:
            for mockup in mockups:
                runner.run(mockup.server.stop())


@st.composite
def hostile_service(draw: st.DrawFn, mockup: Mockup) -> list[tuple[str, Any]]:
    """1–4 changes to a service: a resource answered with raw bytes and any status, a value
    deep in a resource replaced by hostile JSON, a key dropped, or a resource that is not an
    object."""
    uris = sorted(mockup.resources)
    # Most changes hit what the driver reads: the resources points are bound to, and the
    # ones discovery walks through to find them (their ancestors).
    bound = {
        part.partition("#")[0]
        for described in mockup.sources.values()
        for part in described.split(", ")
    }
    relevant = sorted(u for u in uris if any(b == u or b.startswith(u + "/") for b in bound))
    changes: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 4))):
        uri = draw(st.sampled_from(relevant if draw(st.integers(0, 3)) else uris))
        kind = draw(st.sampled_from(["raw", "value", "value", "drop", "retype"]))
        if kind == "raw":
            original = json.dumps(mockup.resources[uri]).encode()
            headers = {}
            if draw(st.booleans()):
                headers["Retry-After"] = draw(RETRY_AFTER)
            raw = Raw(
                status=draw(
                    st.sampled_from(
                        [200, 200, 200, 201, 204, 400, 401, 403, 404, 410, 429, 500, 501, 503]
                    )
                ),
                body=draw(raw_bodies(original)),
                headers=headers,
                content_type=draw(
                    st.sampled_from(["application/json", "text/html", "application/octet-stream"])
                ),
            )
            changes.append((uri, raw))
            continue
        if kind == "retype":
            changes.append(
                (uri, ("retype", draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))))
            )
            continue
        node = mockup.resources[uri]
        path: list[str | int] = []
        while isinstance(node, dict | list) and node and (not path or draw(st.booleans())):
            step: str | int
            if isinstance(node, dict):
                step = draw(st.sampled_from(sorted(node)))
            else:
                step = draw(st.integers(0, len(node) - 1))
            path.append(step)
            node = node[step]
        if not path:
            continue
        value = (
            draw(st.one_of(JSON_VALUES, HOSTILE_LEAF, HOSTILE_LINKS)) if kind == "value" else None
        )
        changes.append((uri, (kind, path, value)))
    return changes


def apply_changes(mockup: Mockup, changes: list[tuple[str, Any]]) -> None:
    for uri, change in changes:
        if isinstance(change, Raw):
            mockup.server.raw[uri] = change
            continue
        if change[0] == "retype":
            mockup.server.resources[uri] = change[1]
            continue
        kind, path, value = change
        container = mockup.server.resources[uri]
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier change moved it
            for step in path[:-1]:
                container = container[step]
            if kind == "drop":
                del container[path[-1]]
            else:
                container[path[-1]] = value


def test_fuzz_redfish_hostile_service() -> None:
    """A service whose resources turn into garbage (raw bytes, bad UTF-8, truncated or deep
    JSON, non-objects, NaN, huge arrays and numbers, any status with any Retry-After),
    before or after discovery: polls never raise and stay within their bound, readings stay
    sound, and the introspection and a setpoint write fail cleanly (WriteError) if at all."""
    with asyncio.Runner() as runner:
        mockups = runner.run(serve_mockups())

        async def case(index: int, changes: list[tuple[str, Any]], discover_first: bool) -> None:
            mockup = mockups[index]
            mockup.reset()
            async with mockup.device() as device:
                if discover_first:
                    async with within(REDFISH_POLL_BOUND_S, "discovery"):
                        await device.poll()
                apply_changes(mockup, changes)
                for _ in range(2):
                    async with within(REDFISH_POLL_BOUND_S, "a poll of a hostile service"):
                        readings = await device.poll()
                    check_redfish_poll(device, readings)
                device.sources()
                for point, (low, high) in device.writable().items():
                    assert low <= high, (point, low, high)
                writable = {"cdu": "pump_speed_command", "server": "power_limit"}.get(mockup.kind)
                if writable is not None:
                    clean = mockup.clean.get(writable)
                    value = clean.value if clean is not None and clean.value is not None else 0.5
                    with contextlib.suppress(WriteError):
                        async with within(REDFISH_POLL_BOUND_S, "a write"):
                            read_back = await device.write(writable, value)
                        assert math.isfinite(read_back)
            spoilt = {
                r.point.name
                for r in readings
                if (r.quality, r.value)
                != (mockup.clean[r.point.name].quality, mockup.clean[r.point.name].value)
            }
            tried(
                "redfish services (hostile JSON)",
                "untouched" if not spoilt else f"{len(spoilt)} of {len(readings)} points spoilt",
            )

        @fuzz(120)
        @given(st.data())
        def run(data: st.DataObject) -> None:
            index = data.draw(st.integers(0, len(mockups) - 1))
            changes = data.draw(hostile_service(mockups[index]))
            runner.run(case(index, changes, data.draw(st.booleans())))

        try:
            run()
        finally:
            for mockup in mockups:
                runner.run(mockup.server.stop())


# --------------------------------------------------------------------------------------------
# 3. MQTT payloads: the codec, and a real broker to the driver

SENSORS = load_mqtt_profile("sim-mqtt-sensors")
REASONS = frozenset({RejectReason.MALFORMED, RejectReason.OUT_OF_RANGE, RejectReason.OVERSIZED})


@st.composite
def topic_points(draw: st.DrawFn) -> TopicPoint:
    """A shipped sensor point, or a made-up one of any format, field path and range."""
    if draw(st.booleans()):
        return draw(st.sampled_from(SENSORS.points))
    payload_format = draw(st.sampled_from(["json", "number", "boolean"]))
    boolean = payload_format == "boolean" or draw(st.booleans())
    name = "leak_detected" if boolean else draw(st.sampled_from(["flow", "inlet_temperature"]))
    field: tuple[str, ...] = ()
    if payload_format == "json":
        field = tuple(draw(st.lists(st.text(min_size=1, max_size=6), max_size=3)))
    low = high = None
    if not boolean:
        low = draw(st.none() | st.floats(-1e6, 1e6))
        high = draw(st.none() | st.floats(-1e6, 1e6))
        if low is not None and high is not None:
            low, high = min(low, high), max(low, high)
            if low == high:  # 0.0 and -0.0: equal, yet floats(0.0, -0.0) is no range
                high = low
    return TopicPoint(
        name=name,
        topic="fuzz/{device}",
        format=payload_format,  # type: ignore[arg-type]
        field=field,
        unit=CANONICAL_POINTS[name].unit,
        qos=0,
        interlock=boolean,
        max_age_s=5.0,
        min=low,
        max=high,
    )


def wrapped(field: Sequence[str], value: Any) -> Any:
    for key in reversed(field):
        value = {key: value}
    return value


def json_payload(document: Any) -> bytes:
    try:
        return json.dumps(document).encode()
    except (ValueError, RecursionError):  # an int too long for str(): send it raw
        return b"0"


@st.composite
def payloads(draw: st.DrawFn, point: TopicPoint) -> bytes:
    """Valid-shaped payloads for the point (a number, a boolean, a JSON document with the
    value at the field path) and hostile ones (any bytes, wrong types, NaN, deep nesting,
    huge numbers, bad UTF-8, over the size limit)."""
    if draw(st.integers(0, 2)) == 0:
        return draw(valid_payloads(point))
    value = draw(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-(10**30), 10**30),
            st.booleans(),
            st.sampled_from([0, 1, 0.0, 1.0, -0.0, 20.5, 160.2, 1e308, 5e-324]),
            JSON_VALUES,
        )
    )
    return draw(
        st.one_of(
            st.just(repr(value).encode()),
            st.just(str(value).lower().encode()),
            st.just(json_payload(wrapped(point.field, value))),
            st.just(json_payload(value)),
            st.binary(max_size=200),
            st.text(max_size=40).map(str.encode),
            st.sampled_from(
                [
                    b"",
                    b" 1 ",
                    b"true",
                    b"TRUE",
                    b"yes",
                    b"NaN",
                    b"Infinity",
                    b"-inf",
                    b"1e999",
                    b"1_000",
                    b"\xef\xbb\xbf12",
                    b"\xff\xfe1\x002\x00",
                    '{"wet": true}'.encode("utf-16"),
                    b'{"wet": NaN}',
                    b'{"flow": {"value": Infinity}}',
                    b"[" * 100_000,
                    b'{"flow":' * 50_000,
                    b"1" * 5000,
                    b'{"flow": {"value": ' + b"9" * 5000 + b"}}",
                ]
            ),
            st.integers(MAX_PAYLOAD_BYTES - 2, MAX_PAYLOAD_BYTES + 100).map(lambda n: b"1" * n),
        )
    )


def valid_payloads(point: TopicPoint) -> st.SearchStrategy[bytes]:
    """What a working sensor sends: a plausible value in the point's format."""
    if point.unit is Unit.BOOLEAN:
        values: st.SearchStrategy[Any] = st.booleans()
    else:
        low = point.min if point.min is not None else -1e6
        high = point.max if point.max is not None else 1e6
        values = st.floats(low, high)
    if point.format == "json":
        return values.map(lambda v: json_payload(wrapped(point.field, v)))
    if point.format == "boolean":
        return values.flatmap(
            lambda v: st.sampled_from([b"1", b"true", b" True\n"] if v else [b"0", b"false"])
        )
    return values.map(lambda v: repr(float(v)).encode())


def check_payload(point: TopicPoint, payload: bytes) -> tuple[float | None, str | None]:
    """decode_payload's verdict, checked: a finite value within the point's range (0/1 for a
    boolean point), or a PayloadError with a known reason and nothing else."""
    try:
        value = decode_payload(point, payload)
    except PayloadError as exc:
        assert exc.reason in REASONS, exc
        assert (exc.reason == RejectReason.OVERSIZED) == (len(payload) > MAX_PAYLOAD_BYTES), exc
        return None, exc.reason
    assert isinstance(value, float) and math.isfinite(value), value
    assert len(payload) <= MAX_PAYLOAD_BYTES
    if point.unit is Unit.BOOLEAN:
        assert value in (0.0, 1.0)
    if point.min is not None:
        assert value >= point.min
    if point.max is not None:
        assert value <= point.max
    return value, None


@fuzz(1500)
@given(st.data())
def test_fuzz_mqtt_decode_payload(data: st.DataObject) -> None:
    point = data.draw(topic_points())
    payload = data.draw(payloads(point))
    _, reason = check_payload(point, payload)
    tried("mqtt payloads (decode)", reason or "accepted")


def test_fuzz_mqtt_payloads_through_a_broker() -> None:
    """Payloads published on the sensor topics reach the real driver through Mosquitto: each
    is counted, a rejected one turns its point bad (counted by reason), an accepted one good
    with the decoded value, the interlock callback sees accepted leak messages only, and the
    connection carries on."""
    with asyncio.Runner() as runner:
        broker = Mosquitto()
        runner.run(broker.start())
        connection = MqttConnection(
            MqttSettings(broker.host, broker.port, reconnect_min_s=0.05, reconnect_max_s=0.4)
        )
        device = connection.add_device("r01", "sensors1", SENSORS, "fuzz")
        interlocks: list[Reading] = []
        connection.on_interlock_message(interlocks.append)

        async def setup() -> aiomqtt.Client:
            await connection.start()
            assert await connection.wait_connected(5.0)
            client = aiomqtt.Client(broker.host, broker.port)  # made on the running loop
            await client.__aenter__()
            return client

        publisher = runner.run(setup())

        async def case(point: TopicPoint, payload: bytes) -> None:
            before = device.stats.messages
            rejected_before = Counter(device.stats.rejected_by_reason)
            interlocks.clear()
            await publisher.publish(device.topics[point.name], payload, qos=1)
            # the driver has no notification for ordinary points: poll its counter
            await eventually(
                lambda: device.stats.messages != before,
                10.0,
                what="delivery of a message",
                poll_s=0.001,
            )
            assert device.stats.messages == before + 1
            value, reason = check_payload(point, payload)
            now = time.monotonic()
            reading = {r.point.name: r for r in device.readings(now)}[point.name]
            rejected = Counter(device.stats.rejected_by_reason) - rejected_before
            if reason is not None:
                assert reading.quality is Quality.BAD and reading.value is None, reading
                assert rejected == Counter({reason: 1})
                assert interlocks == []
            else:
                assert reading.quality is Quality.GOOD and reading.value == value, reading
                assert not rejected
                assert [r.value for r in interlocks] == ([value] if point.interlock else [])
            assert connection.connected
            tried("mqtt payloads (broker)", reason or "accepted")

        @fuzz(150)
        @given(st.data())
        def run(data: st.DataObject) -> None:
            point = data.draw(st.sampled_from(SENSORS.points))
            runner.run(case(point, data.draw(payloads(point))))

        try:
            run()
        finally:
            runner.run(publisher.__aexit__(None, None, None))
            runner.run(connection.stop())
            runner.run(broker.stop())


# --------------------------------------------------------------------------------------------
# 4. Control API: random requests over the UNIX socket

ACTUATOR_TARGETS = ["cdu1/pump_speed_command", "cdu1/valve_command"]
KNOWN_TARGETS = [*BOUNDS, *ACTUATOR_TARGETS, "pump.setpoint", "supply.setpoint"]
ODD_TARGETS = ["cdu1/pump_speed", "pump", ".setpoint", "a.b.setpoint", "cdu1/", "/x", "x/y/z"]
RACKS = ["r01", "r02", "r99", "R01", "r01 ", "..", ""]


def segment(text: str) -> str:
    return quote(text, safe="")


RACK_SEGMENTS = st.one_of(st.sampled_from(RACKS), st.text(max_size=12)).map(segment)
TARGET_SEGMENTS = st.one_of(st.sampled_from(KNOWN_TARGETS + ODD_TARGETS), st.text(max_size=20)).map(
    segment
)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/v1/status",
            "/v1/racks",
            "/v1/points",
            "/v1/loops",
            "/v1/overrides",
            "/v1/events",
            "/v1/audit",
            "/v1/reload",
            "/",
            "/v1",
            "/v1/",
            "/v2/status",
            "/v1/status/",
            "//v1//status",
            "/v1/racks/r01/overrides/cdu1/pump_speed_command",
            "/v1/racks/%FF/mode",
            "/v1/racks/r01/overrides/%00",
            "/%",
            "/%zz",
        ]
    ),
    st.builds(lambda r, t: f"/v1/racks/{r}/overrides/{t}", RACK_SEGMENTS, TARGET_SEGMENTS),
    st.builds(lambda r: f"/v1/racks/{r}/mode", RACK_SEGMENTS),
    st.lists(st.text(max_size=8), max_size=5).map(
        lambda parts: "/" + "/".join(segment(p) for p in parts)
    ),
)
QUERY_VALUES = st.one_of(
    st.sampled_from(
        ["r01", "r02", "0", "1", "-1", "1000", "1001", "nan", "inf", "1e999", "0x10", "", "٣"]
    ),
    st.text(max_size=12),
    st.integers(-(2**70), 2**70).map(str),
)
QUERIES = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(["rack", "since", "limit", "wait", "reason"]), st.text(max_size=6)
        ),
        QUERY_VALUES,
    ),
    max_size=4,
)
# Numbers in bodies: any float, integers beyond float range, and ttl_s values below the
# wall clock's resolution and the API's shortest lifetime.
BODY_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**400), 10**400),
    st.sampled_from(
        [0, 0.2, 0.5, 1.0, 1.0000001, 0.19999999, 100, 150.0, 200, 1e308, -0.0, 1e-7, 5e-324]
    ),
)
BODY_VALUES = st.one_of(BODY_NUMBERS, JSON_VALUES.filter(lambda v: not isinstance(v, int)))
REASONS_TEXT = st.one_of(st.sampled_from(["seal check", "", "  ", "\x00", "é" * 300]), st.text())
OVERRIDE_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "value": BODY_VALUES,
        "ttl_s": BODY_VALUES,
        "permanent": st.one_of(st.booleans(), BODY_VALUES),
        "reason": st.one_of(REASONS_TEXT, BODY_VALUES),
        "colour": BODY_VALUES,
    },
)
MODE_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.one_of(st.sampled_from(["auto", "manual", "AUTO", "", "off"]), BODY_VALUES),
        "reason": st.one_of(REASONS_TEXT, BODY_VALUES),
    },
)


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


BODIES = st.one_of(
    st.none(),
    OVERRIDE_BODIES.map(_dumps),
    OVERRIDE_BODIES.map(_dumps),
    MODE_BODIES.map(_dumps),
    JSON_VALUES.map(_dumps),
    st.binary(max_size=200),
    st.integers(MAX_BODY_BYTES - 40, MAX_BODY_BYTES + 4000).map(
        lambda n: b'{"reason": "' + b"x" * n + b'"}'
    ),
    st.sampled_from(
        [
            b"NaN",
            b"{",
            b"\xff\xfe",
            b'{"value": NaN, "ttl_s": 60, "reason": "x"}',
            b'{"value": 0.5, "ttl_s": Infinity, "reason": "x"}',
            b'{"value": 0.5, "value": 0.9, "ttl_s": 60, "reason": "dup"}',
            b'{"value": "0.5", "ttl_s": 60, "reason": "x"}',
            b'{"mode": "manual", "reason": "\\ud800"}',
            b"[" * 5000,
            b'{"value": ' * 3000,
            b'{"value": 0.5, "ttl_s": 1' + b"0" * 400 + b', "reason": "x"}',
        ]
    ),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
HEADERS = st.dictionaries(
    st.sampled_from(["Content-Type", "Accept", "X-Fuzz", "Authorization", "User-Agent", "Origin"]),
    st.one_of(
        st.sampled_from(
            ["application/json", "text/plain", "application/json; charset=latin-1", "*/*"]
        ),
        HEADER_TEXT,
    ),
    max_size=3,
)
METHODS = st.one_of(
    st.sampled_from(["GET", "PUT", "DELETE", "POST", "PATCH", "HEAD", "OPTIONS"]),
    st.from_regex(r"[A-Z]{1,8}", fullmatch=True),
)


@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    body: bytes | None
    headers: dict[str, str]
    override: tuple[str, str, float] | None = None  # (rack, target, value) a valid PUT asks for


def no_long_poll(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`wait` makes /v1/events a long-poll of up to 60 s, which is right but slow: waits are
    kept under 50 ms (the API parses them with float(), as here)."""
    kept = []
    for key, value in query:
        if key == "wait":
            with contextlib.suppress(ValueError):
                if float(value) > 0.05:
                    value = "0.01"
        kept.append((key, value))
    return kept


RANDOM_REQUESTS = st.builds(ApiRequest, METHODS, PATHS, QUERIES.map(no_long_poll), BODIES, HEADERS)


@st.composite
def valid_requests(draw: st.DrawFn) -> ApiRequest:
    """Requests an operator could send: overrides around and beyond their bounds, clears,
    mode changes and reads, with reasons good and bad."""
    kind = draw(st.sampled_from(["set", "set", "set", "clear", "mode", "read"]))
    rack = draw(st.sampled_from(["r01", "r01", "r02"]))
    if kind == "read":
        path = draw(
            st.sampled_from(
                [
                    "/v1/status",
                    "/v1/racks",
                    "/v1/points",
                    "/v1/loops",
                    "/v1/overrides",
                    "/v1/events",
                    "/v1/audit",
                ]
            )
        )
        query = draw(st.sampled_from([[], [("rack", rack)], [("since", "0")], [("limit", "5")]]))
        return ApiRequest("GET", path, query, None, {})
    reason = draw(st.one_of(st.just("fuzz"), REASONS_TEXT))
    if kind == "mode":
        body = {"mode": draw(st.sampled_from(["auto", "manual"])), "reason": reason}
        return ApiRequest("PUT", f"/v1/racks/{rack}/mode", [], _dumps(body), {})
    target = draw(st.sampled_from(KNOWN_TARGETS))
    path = f"/v1/racks/{rack}/overrides/{segment(target)}"
    if kind == "clear":
        return ApiRequest("DELETE", path, [], _dumps({"reason": reason}), {})
    low, high = BOUNDS.get(target, (0.0, 1.0))
    span = high - low
    value = draw(
        st.one_of(
            st.floats(low - span, high + span),
            st.sampled_from(
                [
                    low,
                    high,
                    math.nextafter(low, -math.inf),
                    math.nextafter(high, math.inf),
                    0.05,
                    0.2,
                    1.0,
                ]
            ),
        )
    )
    lifetime = draw(
        st.one_of(
            st.just({"permanent": True}),
            st.floats(10.0, 1e9).map(lambda t: {"ttl_s": t}),
            st.sampled_from([1e-7, 1e-300, 0.5, 1.0]).map(lambda t: {"ttl_s": t}),
        )
    )
    body = {"value": value, **lifetime, "reason": reason}
    return ApiRequest("PUT", path, [], _dumps(body), {}, (rack, target, value))


API_REQUESTS = st.one_of(valid_requests(), valid_requests(), RANDOM_REQUESTS)


def query_string(query: list[tuple[str, str]]) -> str:
    return "&".join(f"{segment(k)}={segment(v)}" for k, v in query)


async def send_request(
    session: aiohttp.ClientSession, request: ApiRequest
) -> tuple[int, str, bytes] | None:
    """Status, content type and body of the API's answer; None if the client would not send
    the request at all."""
    raw = request.path + (f"?{query_string(request.query)}" if request.query else "")
    try:
        url = URL(raw, encoded=True)
    except ValueError:
        return None
    try:
        async with session.request(
            request.method,
            url,
            data=request.body,
            headers=request.headers,
            timeout=aiohttp.ClientTimeout(total=5.0),
        ) as response:
            return response.status, response.content_type, await response.read()
    except (ValueError, aiohttp.InvalidURL, aiohttp.ClientConnectorError):
        return None


def check_answer(request: ApiRequest, status: int, content_type: str, body: bytes) -> None:
    """Never a 5xx; every error is `{"error": "...", "status": N}` as JSON, except what
    aiohttp's HTTP parser refuses before the API sees the request (a method llhttp does not
    know, say): a plain-text 400."""
    assert status < 500, (request, status, body[:300])
    if request.method == "HEAD":
        return
    if content_type != "application/json":
        assert (status, content_type) == (400, "text/plain"), (request, status, body)
        return
    document = json.loads(body)
    if status >= 400:
        assert set(document) == {"error", "status"}, document
        assert document["status"] == status and isinstance(document["error"], str)
        assert document["error"].strip(), document


@dataclass(slots=True)
class ApiBench:
    """A ControlApi on a UNIX socket in a temporary folder, in front of `plane`."""

    plane: ControlPlane
    folder: Path
    api: ControlApi | None = None
    session: aiohttp.ClientSession | None = None

    async def start(self) -> aiohttp.ClientSession:
        self.api = ControlApi(self.plane, socket_path=self.folder / "control.sock")
        await self.api.start()
        self.session = aiohttp.ClientSession(
            base_url="http://coolctl",
            connector=aiohttp.UnixConnector(path=str(self.api.socket_path)),
        )
        return self.session

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.api is not None:
            await self.api.stop()

    async def raw(self, data: bytes) -> bytes:
        """Send raw bytes on a fresh connection; what comes back until the connection closes
        or stays quiet for 0.1 s (an incomplete request is answered by nothing at all)."""
        assert self.api is not None
        reader, writer = await asyncio.open_unix_connection(str(self.api.socket_path))
        chunks = []
        try:
            writer.write(data)
            await writer.drain()
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 0.1)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
        return b"".join(chunks)


RAW_HTTP = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, path, version, headers, body: (
            f"{method} {path} {version}\r\n".encode()
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
            + b"\r\n"
            + body
        ),
        st.one_of(METHODS, st.text(max_size=8)),
        st.one_of(PATHS, st.text(max_size=20)),
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "FOO"]),
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["Content-Length", "Transfer-Encoding", "Host", "Expect", "Content-Type"]
                ),
                st.one_of(
                    st.sampled_from(["0", "5", "-1", "chunked", "100-continue", "99999999999"]),
                    HEADER_TEXT,
                ),
            ),
            max_size=4,
        ),
        st.binary(max_size=100),
    ),
)


def check_raw_answer(answer: bytes) -> str:
    """Every status line in a raw answer is an HTTP/1.x status below 500."""
    statuses = [
        int(line.split(b" ")[1])
        for line in answer.split(b"\r\n")
        if line.startswith(b"HTTP/1.")
        and len(line.split(b" ")) > 1
        and line.split(b" ")[1].isdigit()
    ]
    assert all(s < 500 for s in statuses), answer[:500]
    return "raw: no answer" if not statuses else f"raw: {statuses[0] // 100}xx"


def memory_state(plane: MemoryPlane) -> tuple[Any, ...]:
    return (dict(plane.records), dict(plane.modes), len(plane.audit_log))


def test_fuzz_control_api_requests() -> None:
    """Random methods, paths, queries, bodies and headers to a real ControlApi on a UNIX
    socket in front of an in-memory plane: never a 5xx, every error a JSON 4xx, a refused
    request changes nothing, an accepted override is within its bounds, and the API keeps
    answering."""
    with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as folder:
        plane = MemoryPlane()
        bench = ApiBench(plane, Path(folder))
        session = runner.run(bench.start())

        async def case(request: ApiRequest) -> None:
            before = memory_state(plane)
            answer = await send_request(session, request)
            if answer is None:
                tried("control api (memory plane)", "not sendable")
                return
            status, content_type, body = answer
            check_answer(request, status, content_type, body)
            if status >= 400 or request.method in ("GET", "HEAD"):
                assert memory_state(plane) == before, request
            elif request.override is not None:
                rack, target, value = request.override
                assert plane.records[(rack, target)].value == value, request
            check_memory_plane(plane)
            await check_still_answering(session)
            tried("control api (memory plane)", str(status))

        @fuzz(400)
        @given(API_REQUESTS)
        def run(request: ApiRequest) -> None:
            runner.run(case(request))

        try:
            run()
        finally:
            runner.run(bench.stop())


def check_memory_plane(plane: MemoryPlane) -> None:
    """No override in force outside its bounds."""
    for (_, target), record in plane.records.items():
        low, high = BOUNDS[target]
        assert low <= record.value <= high, record


async def check_still_answering(session: aiohttp.ClientSession) -> None:
    answer = await send_request(session, ApiRequest("GET", "/v1/status", [], None, {}))
    assert answer is not None and answer[0] == 200, f"the API stopped answering: {answer}"


def test_fuzz_control_api_raw_http() -> None:
    """Raw bytes on the socket, HTTP-shaped or not (bad request lines, conflicting lengths,
    chunked, Expect): no answer is a 5xx, no override goes out of bounds, and the API keeps
    answering."""
    with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as folder:
        plane = MemoryPlane()
        bench = ApiBench(plane, Path(folder))
        session = runner.run(bench.start())

        async def case(data: bytes) -> None:
            outcome = check_raw_answer(await bench.raw(data))
            check_memory_plane(plane)
            await check_still_answering(session)
            tried("control api (raw HTTP)", outcome)

        @fuzz(80)
        @given(RAW_HTTP)
        def run(data: bytes) -> None:
            runner.run(case(data))

        try:
            run()
        finally:
            runner.run(bench.stop())


def example_daemon() -> Daemon:
    """The daemon of the shipped example config, not started: its control plane, bounds and
    store are real, and nothing reaches a device."""
    return Daemon(load_config(EXAMPLE))


async def real_state(plane: DaemonControlPlane, store: AsyncStore) -> tuple[Any, ...]:
    runtime = plane.daemon.racks["r01"]
    audit = await store.audit_log(0, 100_000)
    return (dict(runtime.override_records), runtime.mode, len(audit))


def test_fuzz_control_api_against_the_daemons_plane() -> None:
    """The same requests to the daemon's own control plane over a real store: never a 5xx, a
    refused request stores and audits nothing, and every actuator override in force is within
    the supervisor's safe bounds and is exactly what the store holds."""
    with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as folder:
        store = AsyncStore(Path(folder) / "coolctl.db")

        async def setup() -> tuple[DaemonControlPlane, aiohttp.ClientSession, ApiBench]:
            await store.open()
            daemon = example_daemon()
            plane = DaemonControlPlane(daemon, store)
            await plane.attach(daemon)
            bench = ApiBench(plane, Path(folder))
            return plane, await bench.start(), bench

        plane, session, bench = runner.run(setup())
        runtime = plane.daemon.racks["r01"]
        devices = {device: handle for (_, device), handle in plane.daemon.devices.items()}

        async def case(request: ApiRequest) -> None:
            before = await real_state(plane, store)
            answer = await send_request(session, request)
            if answer is None:
                tried("control api (daemon plane)", "not sendable")
                return
            status, content_type, body = answer
            check_answer(request, status, content_type, body)
            if status >= 400 or request.method in ("GET", "HEAD"):
                assert await real_state(plane, store) == before, request
            now = time.time()
            active = {o.target: o.value for o in await store.active_overrides(now)}
            applied = {  # expired ones stay applied until the expiry task collects them
                t: r.value
                for t, r in runtime.override_records.items()
                if r.expires_at is None or r.expires_at > now
            }
            assert active == applied
            if status < 400 and request.override is not None:
                _, target, value = request.override
                assert active[target] == value, request
            for target, record in runtime.override_records.items():
                if "/" in target:
                    device, _, name = target.partition("/")
                    runtime.supervisor.check_override(PointId("r01", device, name), record.value)
                else:
                    low, high = setpoint_bounds(runtime.config.loops[target[:-9]], devices)
                    assert low <= record.value <= high, record
            tried("control api (daemon plane)", str(status))

        @fuzz(200)
        @given(API_REQUESTS)
        def run(request: ApiRequest) -> None:
            runner.run(case(request))

        try:
            run()
        finally:
            runner.run(bench.stop())
            runner.run(plane.stop())
            runner.run(store.close())


# --------------------------------------------------------------------------------------------
# 5. Config files: structure-aware mutations of the shipped example, and broken TOML text

EXAMPLE_TEXT = EXAMPLE.read_bytes()
EXAMPLE_DOC = tomllib.loads(EXAMPLE_TEXT.decode())
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 0.0, -0.0, 1e308, 5e-324, 65536, 256, 2**63 - 1, math.nan, math.inf]),
    st.sampled_from(["+", "#", "a/+/b", "row#1", "/var/lib/coolctl\x00x"]),
    st.text(max_size=20),
    st.sampled_from(["", " ", "\x00", "r01/../x", "cdu1/flow", "cdu1/flow - cdu1/flow", "é" * 70]),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


def numbers_near(value: float) -> st.SearchStrategy[float | int]:
    """Another number where one was: nearby, of the other sign, zero, tiny, huge or not
    finite (valid-shaped, so that the range checks are what is exercised)."""
    try:
        reach = min(abs(float(value)) * 10 + 1, 1e300)
    except OverflowError:  # an earlier mutation left an integer beyond float range here
        value, reach = 1.0, 1e300
    if not math.isfinite(reach):  # an earlier mutation left NaN or infinity here
        value, reach = 1.0, 1e6
    return st.one_of(
        st.floats(-reach, reach),
        st.integers(-(2**16), 2**16),
        st.sampled_from(
            [
                0,
                0.0,
                -0.0,
                -value,
                value / 1e6,
                value * 1e6,
                1e308,
                5e-324,
                math.nan,
                math.inf,
                -math.inf,
            ]
        ),
    )


def strings_near(value: str) -> st.SearchStrategy[str]:
    """Another string where one was: a variation, a neighbour in the vocabulary, or text."""
    return st.one_of(
        st.sampled_from(
            [
                value.upper(),
                value + " ",
                value[:-1],
                value + value,
                "",
                "cdu1/flow",
                "cdu1/return_temperature - cdu1/supply_temperature",
                "cdu1/valve_command",
                "pdu1/power",
                "sensors1/leak_detected",
                "sim-cdu",
                "sim-pdu",
                "sim-mqtt-sensors",
                "row-budget",
                "modbus",
                "mqtt",
                "redfish",
                "direct",
                "reverse",
                "safe_speed",
                "127.0.0.1:0",
                "[::1]:1883",
                "localhost:65536",
            ]
        ),
        st.text(max_size=20),
    )


# Every key the config knows, so that added keys reach the validators (in the wrong table as
# often as in the right one).
CONFIG_KEYS = [
    "site",
    "name",
    "daemon",
    "metrics_listen",
    "log_format",
    "log_level",
    "state_directory",
    "control_socket",
    "control_socket_group",
    "control_listen",
    "control_token_file",
    "mqtt",
    "broker",
    "username",
    "password_file",
    "password_credential",
    "tls",
    "ca_file",
    "topic_root",
    "racks",
    "control_period_s",
    "devices",
    "loops",
    "safety",
    "power_budget_w",
    "budget_point",
    "budget_min_w",
    "budget_max_w",
    "power",
    "margin_w",
    "overhead_w",
    "release_rate_w_per_s",
    "failsafe_after_s",
    "hold_s",
    "leak_response",
    "pump_safe_speed",
    "standby_changeover_s",
    "temperature_limits",
    "driver",
    "poll_interval_s",
    "stale_after_s",
    "address",
    "port",
    "unit",
    "profile",
    "timeout_s",
    "topic_prefix",
    "kind",
    "url",
    "auth",
    "verify_tls",
    "max_in_flight",
    "cap_min_w",
    "cap_max_w",
    "priority",
    "weight",
    "measurement",
    "actuator",
    "setpoint",
    "action",
    "kp",
    "ki",
    "kd",
    "derivative_filter_s",
    "output_min",
    "output_max",
    "slew_per_s",
    "failsafe_output",
    "enabled",
    "shutdown_output",
]
KEY_NAMES = st.one_of(
    st.sampled_from(CONFIG_KEYS),
    st.sampled_from(["r02", "cdu2", "bad key", "", "a" * 64, "é", "-x", "x.y"]),
    st.text(max_size=12),
)


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """The example config with 1–5 mutations at random places: a key dropped, a value of
    another type or out of range, an unknown key added, an entry renamed."""
    doc = copy.deepcopy(EXAMPLE_DOC)
    done: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        node: Any = doc
        path: list[str | int] = []
        while True:
            children = (
                sorted(node)
                if isinstance(node, dict)
                else list(range(len(node)))
                if isinstance(node, list)
                else []
            )
            if not children or (path and draw(st.integers(0, 3)) == 0):
                break
            step = draw(st.sampled_from(children))
            if not isinstance(node[step], dict | list):
                path.append(step)
                break
            path.append(step)
            node = node[step]
        if not path:
            continue
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        kind = draw(st.sampled_from(["drop", "set", "nudge", "nudge", "add", "rename"]))
        current = parent[last]
        if kind == "nudge" and isinstance(current, int | float) and not isinstance(current, bool):
            parent[last] = draw(numbers_near(current))
        elif kind == "nudge" and isinstance(current, str):
            parent[last] = draw(strings_near(current))
        elif kind == "drop" and isinstance(parent, dict):
            del parent[last]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(KEY_NAMES)] = draw(TOML_VALUES)
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(KEY_NAMES)] = parent.pop(last)
        else:
            parent[last] = draw(TOML_VALUES)
        done.append(f"{kind} {'.'.join(map(str, path))}")
    return doc, done


def check_accepted(config: Config) -> None:
    """What an accepted config promises the daemon: every number finite and in its range."""
    for rack in config.racks.values():
        assert math.isfinite(rack.control_period_s) and rack.control_period_s > 0
        assert rack.power_budget_w is None or (
            math.isfinite(rack.power_budget_w) and rack.power_budget_w > 0
        )
        for device in rack.devices.values():
            assert math.isfinite(device.poll_interval_s) and device.poll_interval_s > 0
            if not isinstance(device, MqttDeviceConfig):
                assert math.isfinite(device.timeout_s) and device.timeout_s > 0
            assert math.isfinite(device.stale_after_s) and device.stale_after_s > 0
            if isinstance(device, ModbusDeviceConfig):
                assert 1 <= device.port <= 65535 and 0 <= device.unit <= 255
                assert device.stale_after_s >= device.poll_interval_s
        for loop in rack.loops.values():
            numbers = (loop.setpoint, loop.kp, loop.ki, loop.kd, loop.output_min, loop.output_max)
            assert all(math.isfinite(n) for n in numbers)
            assert min(loop.kp, loop.ki, loop.kd) >= 0
            assert loop.output_min <= loop.failsafe_output <= loop.output_max
            assert loop.slew_per_s is None or (
                math.isfinite(loop.slew_per_s) and loop.slew_per_s > 0
            )
            assert loop.derivative_filter_s > 0
        safety = rack.safety
        assert safety.failsafe_after_s > 0 and safety.hold_s >= 0
        assert all(math.isfinite(v) for v in safety.temperature_limits.values())


@fuzz(500)
@given(mutated_configs())
def test_fuzz_config_documents(case: tuple[dict[str, Any], list[str]]) -> None:
    """parse_config on a mutated example returns a Config that keeps the promises above, or
    raises ConfigError naming the file for every problem; an accepted config checked against
    its device profiles yields problems, never an exception; and one without problems builds
    a daemon: what `coolctl check-config` passes, `coolctl run` runs."""
    doc, _ = case
    try:
        config = parse_config(doc, Path("fuzz.toml"))
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.toml: ") for p in exc.problems), exc
        tried("config documents", "rejected")
        return
    check_accepted(config)
    check_nothing_dropped(doc, config)
    problems = check_profiles(config)
    assert all(isinstance(p, str) and p for p in problems)
    if problems:
        assert all(p.startswith("fuzz.toml: ") for p in problems), problems
        tried("config documents", "profile problems")
        return
    if needs_secrets(config):  # reading a password file is the environment's business
        tried("config documents", "accepted (secrets not read)")
        return
    # What `coolctl check-config` passes, the daemon must be able to run.
    Daemon(config)
    tried("config documents", "accepted")


def check_nothing_dropped(doc: dict[str, Any], config: Config) -> None:
    """A value given in the document is used, never read as "not given" (a budget of 0 read
    as "no budget" lifts every cap); no path holds a NUL; nothing goes into an MQTT topic with
    a wildcard in it."""
    for rack in config.racks.values():
        raw = doc["racks"][rack.id]
        if "power_budget_w" in raw:
            assert rack.power_budget_w is not None, raw["power_budget_w"]
        if "release_rate_w_per_s" in raw.get("power", {}):
            assert rack.power.release_rate_w_per_s is not None
        for device in rack.devices.values():
            if isinstance(device, MqttDeviceConfig):
                assert not {"+", "#", "\0"} & set(device.topic_prefix), device
    daemon = config.daemon
    paths = [daemon.state_directory, daemon.control_socket, daemon.control_token_file]
    if config.mqtt is not None:
        paths += [config.mqtt.password_file, config.mqtt.ca_file]
        assert not {"+", "#", "\0"} & set(config.mqtt.topic_root + config.site.name)
    assert all(path is None or "\0" not in str(path) for path in paths), paths


def needs_secrets(config: Config) -> bool:
    mqtt = config.mqtt
    if mqtt is not None and (mqtt.password_file or mqtt.password_credential):
        return True
    devices = (d for r in config.racks.values() for d in r.devices.values())
    return any(isinstance(d, RedfishDeviceConfig) for d in devices)


@st.composite
def broken_texts(draw: st.DrawFn) -> bytes:
    """The example's TOML text cut short, or with bytes deleted, replaced or inserted."""
    text = bytearray(EXAMPLE_TEXT)
    if draw(st.integers(0, 4)) == 0:
        return bytes(text[: draw(st.integers(0, len(text)))])
    if draw(st.integers(0, 9)) == 0:  # over tomllib's own limits: depth, integer digits
        at = text.index(b"port = 15020") + len(b"port = ")
        filler = draw(
            st.sampled_from([b"[" * 2000, b"{a = " * 2000, b"1" * 5000, b"[" * 2000 + b"]" * 2000])
        )
        return bytes(text[:at] + filler + text[at + 5 :])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "replace", "insert"]))
        data = draw(
            st.one_of(
                st.binary(min_size=1, max_size=8),
                st.sampled_from([b"=", b"[", b"]", b'"', b"\n", b"#", b"nan", b"\xff", b"\x00"]),
            )
        )
        if kind == "delete":
            del text[at : at + len(data)]
        elif kind == "replace":
            text[at : at + len(data)] = data
        else:
            text[at:at] = data
    return bytes(text)


def test_fuzz_config_files(tmp_path: Path) -> None:
    """load_config on broken TOML text: a Config or a ConfigError naming the file."""
    path = tmp_path / "site.toml"

    @fuzz(300)
    @given(st.one_of(broken_texts(), st.binary(max_size=200)))
    def run(data: bytes) -> None:
        path.write_bytes(data)
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert exc.problems and all(p.startswith(f"{path}: ") for p in exc.problems), exc
            tried("config files (TOML text)", "rejected")
            return
        check_accepted(config)
        tried("config files (TOML text)", "accepted")

    run()


# --------------------------------------------------------------------------------------------
# Regression tests: one per bug the fuzzing found (each fixed), on the input that found it


def test_config_with_an_integer_over_4300_digits_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE.read_text().replace("port = 15020", "port = " + "1" * 5000))
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize("value", [0, 0.0, False, "", []])
def test_falsy_power_budget_is_refused(value: object) -> None:
    doc = copy.deepcopy(EXAMPLE_DOC)
    doc["racks"]["r01"]["power_budget_w"] = value
    with pytest.raises(ConfigError, match="power_budget_w"):
        parse_config(doc)


async def _put_override(plane: ControlPlane, folder: Path, body: bytes, target: str) -> int:
    bench = ApiBench(plane, folder)
    session = await bench.start()
    try:
        async with session.put(f"/v1/racks/r01/overrides/{segment(target)}", data=body) as reply:
            return reply.status
    finally:
        await bench.stop()


@pytest.mark.parametrize("field", ["value", "ttl_s"])
@pytest.mark.asyncio
async def test_api_integer_beyond_float_range_is_a_400(tmp_path: Path, field: str) -> None:
    body = {"value": 0.5, "ttl_s": 60, "reason": "fuzz"}
    text = json.dumps(body).replace(f'"{field}": {body[field]}', f'"{field}": 1{"0" * 400}')
    status = await _put_override(MemoryPlane(), tmp_path, text.encode(), "cdu1/pump_speed_command")
    assert status == 400


@pytest.mark.asyncio
async def test_api_deeply_nested_body_is_a_400(tmp_path: Path) -> None:
    status = await _put_override(MemoryPlane(), tmp_path, b"[" * 5000, "pump.setpoint")
    assert status == 400


@pytest.mark.asyncio
async def test_api_tiny_ttl_is_not_a_500(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "coolctl.db")
    await store.open()
    try:
        daemon = example_daemon()
        plane = DaemonControlPlane(daemon, store)
        await plane.attach(daemon)
        body = b'{"value": 0.5, "ttl_s": 1e-7, "reason": "fuzz"}'
        status = await _put_override(plane, tmp_path, body, "cdu1/pump_speed_command")
    finally:
        await store.close()
    assert status < 500


@pytest.mark.asyncio
async def test_api_refuses_a_meaningless_loop_setpoint(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "coolctl.db")
    await store.open()
    try:
        daemon = example_daemon()
        plane = DaemonControlPlane(daemon, store)
        await plane.attach(daemon)
        body = b'{"value": -1e300, "ttl_s": 60, "reason": "fuzz"}'
        status = await _put_override(plane, tmp_path, body, "pump.setpoint")
        with pytest.raises(ControlError, match=r"outside its safe bounds 0\.\.200 L/min"):
            await plane.set_override("r01", "pump.setpoint", 1e300, 60.0, "fuzz", "fuzz")
        with pytest.raises(ControlError, match=r"rated_flow_lpm 200"):
            await plane.set_override("r01", "pump.setpoint", 6553.5, 60.0, "fuzz", "fuzz")
        assert not daemon.racks["r01"].override_records
        # within the safe bounds (nothing read yet: no minimum per kW), and the loop's own
        # setpoint_max narrows what the sensor reads (cdu1/flow: uint16 × 0.1 L/min)
        await plane.set_override("r01", "pump.setpoint", 200.0, 60.0, "fuzz", "fuzz")
        loop = daemon.config.racks["r01"].loops["pump"]
        devices = {device: handle for (_, device), handle in daemon.devices.items()}
        narrowed = dataclasses.replace(loop, setpoint_min=100.0, setpoint_max=200.0)
        assert setpoint_bounds(narrowed, devices) == (100.0, 200.0)
    finally:
        await store.close()
    assert status == 400


@pytest.mark.asyncio
async def test_redfish_retry_after_with_a_non_decimal_digit_does_not_raise() -> None:
    server = MockupServer.from_mockup("public-pdu")
    await server.start()
    try:
        mockup = Mockup("public-pdu", "pdu", server, {}, {}, {})
        async with mockup.device() as device:
            await device.poll()
            server.status_for["*"] = (503, {"Retry-After": "²"})
            readings = await device.poll()
        assert all(r.quality is Quality.STALE for r in readings)
    finally:
        await server.stop()


def test_config_path_with_a_nul_byte_is_refused() -> None:
    doc = copy.deepcopy(EXAMPLE_DOC)
    doc["daemon"]["state_directory"] = "/var/lib/coolctl\x00x"
    with pytest.raises(ConfigError, match="state_directory"):
        parse_config(doc)


def _site_without_devices(tmp_path: Path) -> Path:
    """The example config with nothing to reach: its Modbus devices on closed ports, no MQTT
    (so that a daemon starts in moments and fails its polls at once)."""
    text = EXAMPLE.read_text()
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        ports = one.getsockname()[1], two.getsockname()[1]
    text = text.replace("port = 15020", f"port = {ports[0]}").replace(
        "port = 15021", f"port = {ports[1]}"
    )
    text = re.sub(r"\[mqtt\][^\[]*", "", text)
    text = re.sub(r"\[racks\.r01\.devices\.sensors1\][^\[]*", "", text)
    text = text.replace(', "sensors1/inlet_temperature" = 45.0', "")
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        (
            "shutdown_output",
            "failsafe_output = 1.0\n",
            "failsafe_output = 1.0\nshutdown_output = 5.0\n",
        ),
        ("name", 'name = "example"', 'name = "row+1"'),
        ("topic_prefix", 'topic_prefix = "coolctl-sim"', 'topic_prefix = "#"'),
    ],
)
def test_check_config_refuses_a_config_the_daemon_cannot_build(
    tmp_path: Path, key: str, good: str, bad: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE.read_text().replace(good, bad, 1))
    with pytest.raises(ConfigError, match=key):
        load_checked_config(path)


@pytest.mark.asyncio
async def test_reload_of_a_config_the_daemon_cannot_build_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    path = _site_without_devices(tmp_path)
    service = Service(
        load_checked_config(path),
        ServiceOptions(store_path=tmp_path / "coolctl.db", socket_path=None, metrics=False),
    )
    await service.start()
    try:
        running = service.daemon
        await eventually(  # a few ticks
            lambda: min(r.tick_stats.runs for r in running.racks.values()) >= 3, 10.0, what="ticks"
        )
        path.write_text(
            path.read_text().replace(
                "failsafe_output = 1.0\n", "failsafe_output = 1.0\nshutdown_output = 5.0\n", 1
            )
        )
        try:
            await service.reload()
        except ControlError as exc:
            assert exc.status == 400
        assert service.daemon is running
        assert running._control_tasks and not any(t.done() for t in running._control_tasks)
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


@pytest.mark.asyncio
async def test_reload_when_the_daemon_refuses_the_new_config_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    """The same, with a loader that lets the config through (as a check that misses something
    would): Daemon(new config) raises, and the running daemon never stops."""
    path = _site_without_devices(tmp_path)
    service = Service(
        load_checked_config(path),
        ServiceOptions(store_path=tmp_path / "coolctl.db", socket_path=None, metrics=False),
        load=load_config,  # no check against the profiles
    )
    await service.start()
    try:
        running = service.daemon
        path.write_text(
            path.read_text().replace(
                "failsafe_output = 1.0\n", "failsafe_output = 1.0\nshutdown_output = 5.0\n", 1
            )
        )
        with pytest.raises(ControlError, match=r"old config kept.*outside its hard bounds") as exc:
            await service.reload()
        assert exc.value.status == 400
        assert service.daemon is running
        assert running._control_tasks and not any(t.done() for t in running._control_tasks)
        assert any(event.kind == "reload_rejected" for event in running.recent_events)
    finally:
        await service.stop()


def test_config_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE.read_text().replace("port = 15020", "port = " + "[" * 5000))
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


@pytest.mark.parametrize("key", ["setpoint", "kp", "power_budget_w"])
def test_config_integer_beyond_float_range_is_a_config_error(key: str) -> None:
    doc = copy.deepcopy(EXAMPLE_DOC)
    table = doc["racks"]["r01"] if key == "power_budget_w" else doc["racks"]["r01"]["loops"]["pump"]
    table[key] = 10**400
    with pytest.raises(ConfigError, match=f"{key}: must be a number, not an integer of some 401"):
        parse_config(doc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"setpoint_min": 170.0}, r"setpoint: must lie within setpoint_min..setpoint_max \(170"),
        ({"setpoint_max": 150.0}, r"setpoint: must lie within .*\(-inf..150\), not 160"),
        ({"setpoint_min": "low"}, "setpoint_min: must be a number"),
    ],
)
def test_loop_setpoint_bounds_are_checked(change: dict[str, Any], message: str) -> None:
    doc = copy.deepcopy(EXAMPLE_DOC)
    doc["racks"]["r01"]["loops"]["pump"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_config(doc)


@pytest.mark.parametrize(
    ("good", "bad", "message"),
    [
        ("setpoint = 160.0", "setpoint = 7000.0", r"loops.pump.setpoint: 7000 is outside what"),
        (
            'broker = "127.0.0.1:1883"',
            'broker = "127.0.0.1:0"',
            "port must be from 1 to 65535, not 0",
        ),
        ('topic_root = "coolctl/{site}"', 'topic_root = "coolctl/+"', "topic_root"),
        ('name = "example"', 'name = "a\\u0000b"', "site.name: must not contain a NUL"),
    ],
)
def test_check_config_refuses_what_the_daemon_cannot_use(
    tmp_path: Path, good: str, bad: str, message: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE.read_text().replace(good, bad, 1))
    with pytest.raises(ConfigError, match=message):
        load_checked_config(path)


def test_check_config_refuses_redfish_settings_the_daemon_refuses() -> None:
    doc = copy.deepcopy(EXAMPLE_DOC)
    doc["racks"]["r01"]["devices"]["bmc1"] = {
        "driver": "redfish",
        "kind": "server",
        "url": "https://10.0.0.1/redfish/v1",  # the origin only: coolctl finds /redfish/v1
        "username": "coolctl",
        "password_file": "/etc/coolctl/bmc.password",
        "cap_min_w": 300.0,
        "cap_max_w": 900.0,
    }
    problems = check_profiles(parse_config(doc))
    assert any("devices.bmc1: the Redfish url is the service origin" in p for p in problems)


@pytest.mark.asyncio
async def test_reload_whose_daemon_fails_to_start_brings_the_old_one_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _site_without_devices(tmp_path)
    service = Service(
        load_checked_config(path),
        ServiceOptions(store_path=tmp_path / "coolctl.db", socket_path=None, metrics=False),
    )
    await service.start()
    try:
        running = service.daemon
        await eventually(  # the daemon's tasks have taken their first steps
            lambda: min(r.tick_stats.runs for r in running.racks.values()) >= 1, 10.0, what="a tick"
        )

        starts: list[Daemon] = []

        class Broken(Daemon):
            async def start(self) -> None:
                starts.append(self)
                if len(starts) == 1:  # the reloaded daemon; the old config's then starts
                    raise OSError("no such device")
                await super().start()

        monkeypatch.setattr("coolctl.daemon.service.Daemon", Broken)
        with pytest.raises(ControlError, match="old config kept: no such device"):
            await service.reload()
        back = service.daemon  # the old config, in a daemon built anew
        assert back is starts[1] and back.config is running.config
        assert service.plane.daemon is back
        assert back._control_tasks and not any(t.done() for t in back._control_tasks)
        assert back._poll_tasks and not any(t.done() for t in back._poll_tasks)
        assert back.event_listeners.count(service.plane._persist_event) == 1
        assert [e.kind for e in back.recent_events].count("reload_failed") == 1
    finally:
        await service.stop()
