"""A simulated SNMP rack PDU, driven by the plant, that answers as the profile's MIB says.

The agent is pysnmp's own command responder (GET, GETNEXT, GETBULK; v2c with a community and
v3 authPriv with one user), with coolctl's MIB behind it: a small instrumentation controller
that answers from a sorted table of OIDs built from the profile TOML (read here as data, with
this module's own reader: the simulators never import the drivers). Values are computed from
the plant on each request: the PDU's power and energy, and per outlet the power of the server
on it (outlet k feeds server k-1; outlets past the servers are empty), spread over phases
(round robin) and branch circuits (consecutive blocks of outlets, as banks are wired).

`share` is the fraction of each server's power this PDU carries: 0.5 for each of a rack's two
feeds, 1.0 when the other feed has failed (`fail_other_feed`). Faults for tests: `silent`
(requests are dropped: the client times out), `wrong_type` (numbers come as strings),
`missing` (OIDs answered noSuchInstance, and skipped by walks), `lie_oids` (answers for
other OIDs than asked), `lie_values` (negative power).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import math
import socket
import time
import tomllib
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi.instrum import AbstractMibInstrumController

Oid = tuple[int, ...]
VOLTAGE_V = 230.0
SHIPPED = "coolctl.drivers.profiles"


class PduPlant(Protocol):
    """What the agent reads of the plant."""

    @property
    def n_servers(self) -> int: ...

    def pdu_readings(self) -> dict[str, float]: ...

    def server_readings(self, server: int) -> dict[str, float]: ...


@dataclass(slots=True)
class _Cell:
    point: str  # canonical name
    row: int  # 0 for scalars, else the outlet/branch/phase number
    divisor: float  # raw = value / divisor
    offset: float


@dataclass(slots=True)
class SnmpAgentFaults:
    silent: bool = False
    delay_s: float = 0.0  # every request is answered this late
    wrong_type: bool = False
    lie_oids: bool = False  # answers name OIDs other than those asked for
    lie_values: bool = False  # power readings come negative
    missing: set[Oid] = field(default_factory=set)


def read_profile(name_or_path: str | Path) -> dict[str, Any]:
    """The profile TOML as a document: a bare name is a shipped profile."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        return tomllib.loads(Path(text).read_text("utf-8"))
    resource = importlib.resources.files(SHIPPED) / f"{text}.toml"
    return tomllib.loads(resource.read_text("utf-8"))


def _oid(text: str) -> Oid:
    return tuple(int(p) for p in text.strip().lstrip(".").split(".") if p)


class SimulatedPdu:
    """The values a PDU shows, from the plant: per outlet, branch, phase, and in total."""

    def __init__(
        self,
        plant: PduPlant,
        *,
        outlets: int = 48,
        branches: int = 6,
        phases: int = 3,
        share: float = 1.0,
        branch_rating_a: float = 32.0,
    ) -> None:
        self.plant = plant
        self.outlets = outlets
        self.branches = branches
        self.phases = phases
        self.share = share
        self.branch_rating_a = branch_rating_a
        self._energy_j = [0.0] * (outlets + 1)
        self._energy_total_j = 0.0
        self._last = time.monotonic()

    def outlet_power_w(self) -> list[float]:
        powers = [0.0] * (self.outlets + 1)
        for k in range(1, self.outlets + 1):
            if k - 1 < self.plant.n_servers:
                powers[k] = self.plant.server_readings(k - 1)["power"] * self.share
        return powers

    def values(self) -> dict[str, dict[int, float]]:
        """Every canonical point by row (0 for scalars)."""
        powers = self.outlet_power_w()
        now = time.monotonic()
        dt, self._last = now - self._last, now
        for k in range(1, self.outlets + 1):
            self._energy_j[k] += powers[k] * dt
        total = self.plant.pdu_readings()["power"] * self.share
        self._energy_total_j += total * dt
        per_branch = max(1, math.ceil(self.outlets / self.branches))
        branch_w = [0.0] * (self.branches + 1)
        phase_w = [0.0] * (self.phases + 1)
        for k in range(1, self.outlets + 1):
            branch_w[min(self.branches, (k - 1) // per_branch + 1)] += powers[k]
            phase_w[(k - 1) % self.phases + 1] += powers[k]
        # what is not on an outlet (the PDU's own and the pump's share) sits on phase 1
        phase_w[1] += max(0.0, total - sum(powers))
        rows = range(1, self.outlets + 1)
        return {
            "power": {0: total},
            "energy": {0: self._energy_total_j},
            "current": {0: total / VOLTAGE_V},
            "voltage": {0: VOLTAGE_V},
            "outlet_power": {k: powers[k] for k in rows},
            "outlet_current": {k: powers[k] / VOLTAGE_V for k in rows},
            "outlet_energy": {k: self._energy_j[k] for k in rows},
            "branch_current": {b: branch_w[b] / VOLTAGE_V for b in range(1, self.branches + 1)},
            "branch_rating": {b: self.branch_rating_a for b in range(1, self.branches + 1)},
            "phase_power": {p: phase_w[p] for p in range(1, self.phases + 1)},
            "phase_current": {p: phase_w[p] / VOLTAGE_V for p in range(1, self.phases + 1)},
            "phase_voltage": {p: VOLTAGE_V for p in range(1, self.phases + 1)},
        }

    def rows(self, kind: str) -> int:
        return {"outlet": self.outlets, "branch": self.branches, "phase": self.phases}.get(kind, 1)


# The decimal digits the simulated PDU states for columns whose profile reads them
# (PDU2-MIB): current in mA-like resolution, the rest whole units.
_DIGITS = {"current": 3, "outlet_current": 3, "branch_current": 3, "phase_current": 3}


class _Mib(AbstractMibInstrumController):  # type: ignore[misc]
    """Answers GET/GETNEXT from a sorted OID table; values computed once per request."""

    def __init__(self, agent: SnmpPduAgent) -> None:
        self.agent = agent

    def read_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        snapshot = self.agent.snapshot()
        out = []
        for name, _ in var_binds:
            oid = tuple(name)
            out.append((self._answer_name(oid), self.agent.value(oid, snapshot)))
        return out

    def read_next_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        snapshot = self.agent.snapshot()
        oids = self.agent.oids
        out = []
        for name, _ in var_binds:
            position = bisect_right(oids, tuple(name))
            if position >= len(oids):
                out.append((name, rfc1905.endOfMibView))
                continue
            while position < len(oids) - 1 and oids[position] in self.agent.faults.missing:
                position += 1  # a vanished OID is skipped by walks, as a real agent's table
            oid = oids[position]
            out.append((rfc1902.ObjectName(oid), self.agent.value(oid, snapshot)))
        return out

    def write_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        from pysnmp.smi import error

        raise error.NotWritableError(name=var_binds[0][0], idx=0)

    def _answer_name(self, oid: Oid) -> Any:
        if self.agent.faults.lie_oids:
            return rfc1902.ObjectName((*oid[:-1], oid[-1] + 1000))
        return rfc1902.ObjectName(oid)


class _Transport(udp.UdpAsyncioTransport):  # type: ignore[misc]
    """The UDP endpoint, able to play dead (`silent`)."""

    agent: SnmpPduAgent | None = None

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        faults = self.agent.faults if self.agent is not None else SnmpAgentFaults()
        if faults.silent:
            return
        if faults.delay_s > 0:
            handle = super().datagram_received
            self.loop.call_later(faults.delay_s, handle, datagram, transportAddress)
            return
        super().datagram_received(datagram, transportAddress)


class SnmpPduAgent:
    """One simulated SNMP PDU on loopback, serving `profile` with values from `pdu`."""

    def __init__(
        self,
        profile: str | Path,
        pdu: SimulatedPdu,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        community: str = "public",
        v3_user: str | None = None,
        v3_auth_key: str = "",
        v3_priv_key: str = "",
    ) -> None:
        self.profile_name = str(profile)
        self.document = read_profile(profile)
        self.pdu = pdu
        self.host = host
        self.port = port
        self.community = community
        self.v3_user = v3_user
        self.v3_auth_key = v3_auth_key
        self.v3_priv_key = v3_priv_key
        self.faults = SnmpAgentFaults()
        self.requests = 0
        self._cells: dict[Oid, _Cell] = {}
        self._static: dict[Oid, Any] = {}
        self._build()
        self.oids: list[Oid] = sorted({*self._cells, *self._static})
        self._engine: engine.SnmpEngine | None = None
        self._socket: socket.socket | None = None

    # ---- the MIB

    def _build(self) -> None:
        for raw in self.document.get("point", []):
            self._add(raw, _oid(raw["oid"]), 0, None)
        for table in self.document.get("table", []):
            kind = table["name"]
            prefix = _oid(table.get("index_prefix", ""))
            label_oid = table.get("label_oid")
            label_prefix = _oid(table["label_prefix"]) if "label_prefix" in table else prefix
            digits_prefix = _oid(table["digits_prefix"]) if "digits_prefix" in table else prefix
            for row in range(1, self.pdu.rows(kind) + 1):
                if label_oid:
                    name = f"{kind.capitalize()} {row}"
                    self._static[(*_oid(label_oid), *label_prefix, row)] = rfc1902.OctetString(name)
                for column in table.get("column", []):
                    suffix = _oid(column.get("index_suffix", ""))
                    oid = (*_oid(column["oid"]), *prefix, row, *suffix)
                    digits_at = None
                    if "digits_oid" in column:
                        digits_at = (*_oid(column["digits_oid"]), *digits_prefix, row, *suffix)
                    self._add(column, oid, row, digits_at)

    def _add(self, raw: Mapping[str, Any], oid: Oid, row: int, digits_at: Oid | None) -> None:
        name = raw["name"]
        digits = int(raw.get("digits", 0))
        if "digits_oid" in raw:
            digits = _DIGITS.get(name, 0)
            at = digits_at if digits_at is not None else _oid(raw["digits_oid"])
            self._static[at] = rfc1902.Unsigned32(digits)
        divisor = float(raw.get("scale", 1.0)) * 10.0**-digits
        self._cells[oid] = _Cell(name, row, divisor, float(raw.get("offset", 0.0)))

    def snapshot(self) -> dict[str, dict[int, float]]:
        self.requests += 1
        return self.pdu.values()

    def value(self, oid: Oid, snapshot: Mapping[str, Mapping[int, float]]) -> Any:
        if oid in self.faults.missing:
            return rfc1905.noSuchInstance
        static = self._static.get(oid)
        if static is not None:
            return static
        cell = self._cells.get(oid)
        if cell is None:
            return rfc1905.noSuchInstance
        value = snapshot.get(cell.point, {}).get(cell.row)
        if value is None:
            return rfc1905.noSuchInstance
        raw = round((value - cell.offset) / cell.divisor)
        if self.faults.lie_values and cell.point in ("power", "outlet_power"):
            raw = -abs(raw) - 5
        if self.faults.wrong_type:
            return rfc1902.OctetString(str(raw))
        if raw < 0:
            return rfc1902.Integer32(max(raw, -(2**31)))
        return rfc1902.Gauge32(min(raw, 2**32 - 1))

    # ---- faults, as the simulation's fault injection names them (simulators/faults.py)

    def set_offline(self, offline: bool) -> None:
        """Link loss: requests go unanswered (the client times out)."""
        self.faults.silent = offline

    def set_response_delay(self, seconds: float) -> None:
        self.faults.delay_s = max(0.0, seconds)

    def fail_reads(self, point: str | None) -> None:
        """Every OID of `point` (a canonical name: all its rows) answers noSuchInstance;
        None: every OID answers again."""
        self.faults.missing = (
            set() if point is None else {o for o, c in self._cells.items() if c.point == point}
        )

    # ---- serving

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        snmp_engine = engine.SnmpEngine()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, self.port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        transport = _Transport()
        transport.agent = self
        config.add_transport(snmp_engine, udp.DOMAIN_NAME, transport.open_server_mode(sock=sock))
        config.add_v1_system(snmp_engine, "coolctl-sim", self.community)
        if self.v3_user:
            config.add_v3_user(
                snmp_engine,
                self.v3_user,
                config.USM_AUTH_HMAC192_SHA256,
                self.v3_auth_key,
                config.USM_PRIV_CFB128_AES,
                self.v3_priv_key,
            )
        snmp_context = context.SnmpContext(snmp_engine)
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", _Mib(self))
        cmdrsp.GetCommandResponder(snmp_engine, snmp_context)
        cmdrsp.NextCommandResponder(snmp_engine, snmp_context)
        cmdrsp.BulkCommandResponder(snmp_engine, snmp_context)
        self._engine = snmp_engine
        self._socket = sock
        await asyncio.sleep(0)  # let the datagram endpoint come up

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


PlantFactory = Callable[[], PduPlant]
