"""The simulated rack in real time: the plant stepped by the wall clock, served as devices.

Each rack gets one plant; each of its simulated devices is a protocol server on loopback that
reads its values from that plant and hands writes to it. `time_scale` runs plant time faster
than wall time (the HIL tests use it to keep runs short); 1.0 is real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coolctl.simulators.modbus_server import ModbusDeviceServer
from coolctl.simulators.plant import PlantParams, RackPlant

log = logging.getLogger("coolctl.simulators.live")

DeviceKind = Literal["cdu", "pdu"]


@dataclass(frozen=True, slots=True)
class SimDeviceSpec:
    """One simulated device: which part of the plant it shows, and where it listens."""

    device: str
    kind: DeviceKind
    register_map: str | Path  # profile name or path: the register map it serves
    unit_id: int = 1
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True, slots=True)
class SimRackSpec:
    """One simulated rack: its plant parameters, starting load and devices."""

    rack: str
    devices: Sequence[SimDeviceSpec]
    plant: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    load: float = 0.6  # starting fraction of max for every server


@dataclass(frozen=True, slots=True)
class Service:
    """A started protocol server, as `coolctl sim serve` prints it."""

    protocol: str
    address: str
    rack: str
    device: str
    unit_id: int
    register_map: str

    def line(self) -> str:
        return (
            f"{self.protocol} {self.address} rack={self.rack} device={self.device}"
            f" unit={self.unit_id} profile={self.register_map}"
        )


@dataclass(frozen=True, slots=True)
class DeviceWrite:
    """A setpoint a simulated device accepted, with when: what HIL tests check commands by."""

    wall_time_s: float  # time.monotonic() when it arrived
    plant_time_s: float
    point: str
    value: float


class CduPoints:
    """The CDU's view of the plant: its readings, and the two setpoints it accepts."""

    def __init__(self, plant: RackPlant) -> None:
        self.plant = plant
        self.writes: list[DeviceWrite] = []
        self._writers: Mapping[str, Callable[[float], None]] = {
            "pump_speed_command": plant.set_pump_speed_command,
            "valve_command": plant.set_valve_command,
        }

    def read_points(self) -> Mapping[str, float]:
        return self.plant.cdu_readings()

    def write_point(self, name: str, value: float) -> None:
        writer = self._writers.get(name)
        if writer is None:
            raise ValueError(f"{name} is not writable on the CDU")
        writer(value)
        self.writes.append(DeviceWrite(time.monotonic(), self.plant.time_s, name, value))


class PduPoints:
    """The rack PDU's view of the plant: read-only."""

    def __init__(self, plant: RackPlant) -> None:
        self.plant = plant
        self.writes: list[DeviceWrite] = []

    def read_points(self) -> Mapping[str, float]:
        return self.plant.pdu_readings()

    def write_point(self, name: str, value: float) -> None:
        raise ValueError(f"{name} is not writable on the PDU")


_POINT_SOURCES: Mapping[str, Callable[[RackPlant], CduPoints | PduPoints]] = {
    "cdu": CduPoints,
    "pdu": PduPoints,
}


class LiveSimulation:
    """Plants stepped in (scaled) real time, behind Modbus servers on loopback."""

    def __init__(
        self, racks: Sequence[SimRackSpec], *, time_scale: float = 1.0, step_s: float = 0.05
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be greater than 0")
        self.time_scale = time_scale
        self.step_s = step_s
        self.specs = {spec.rack: spec for spec in racks}
        self.plants: dict[str, RackPlant] = {}
        self.servers: dict[tuple[str, str], ModbusDeviceServer] = {}
        self.points: dict[tuple[str, str], CduPoints | PduPoints] = {}
        self.services: list[Service] = []
        self._task: asyncio.Task[None] | None = None
        for spec in racks:
            params = PlantParams.from_dict({"initial_load": spec.load, **spec.plant})
            plant = RackPlant(params, seed=spec.seed)
            self.plants[spec.rack] = plant
            for device in spec.devices:
                source = _POINT_SOURCES[device.kind](plant)
                self.points[(spec.rack, device.device)] = source
                self.servers[(spec.rack, device.device)] = ModbusDeviceServer(
                    device.register_map,
                    source,
                    host=device.host,
                    port=device.port,
                    unit_id=device.unit_id,
                )

    async def start(self) -> None:
        for (rack, device), server in self.servers.items():
            await server.start()
            spec = next(d for d in self.specs[rack].devices if d.device == device)
            self.services.append(
                Service(
                    "modbus", server.address, rack, device, spec.unit_id, str(spec.register_map)
                )
            )
        self._task = asyncio.create_task(self._step_forever(), name="plant")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for server in self.servers.values():
            await server.stop()

    async def __aenter__(self) -> LiveSimulation:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def writes(self, rack: str, device: str) -> list[DeviceWrite]:
        """Every setpoint the simulated device accepted, in order."""
        return self.points[(rack, device)].writes

    def service(self, rack: str, device: str) -> Service:
        return next(s for s in self.services if (s.rack, s.device) == (rack, device))

    async def _step_forever(self) -> None:
        """Advance every plant by the scaled wall time that has passed, on a fixed grid."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.step_s)
            now = time.monotonic()
            plant_dt = (now - last) * self.time_scale
            last = now
            for plant in self.plants.values():
                plant.advance(plant_dt)
