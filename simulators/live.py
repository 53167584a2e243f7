"""The simulated rack in real time: the plant stepped by the wall clock, served as devices.

Each rack gets one plant; each of its simulated devices is a protocol front-end that reads its
values from that plant and hands writes to it: a Modbus TCP server on loopback for a CDU or PDU,
a Redfish service over HTTPS for a server's BMC (and for a CDU or PDU that asks for it), an
MQTT publisher to a broker for a rack sensor device. `time_scale` runs plant time faster than
wall time (the HIL tests use it to keep runs short); 1.0 is real time.

The Redfish services share one certificate authority per simulation (`tls_dir`, or a temporary
folder removed on stop); clients trust its `ca.pem`, which every redfish Service line names.

Faults can be injected while it runs (`coolctl.simulators.faults`), from the same process or,
with `control` (an endpoint), over HTTP from another (`coolctl.simulators.control_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from coolctl.simulators.cdu_controller import CduController, CduControllerParams
from coolctl.simulators.fault_book import FaultBook
from coolctl.simulators.modbus_power_shelf import SHELF_ROLES, ModbusPowerShelf
from coolctl.simulators.modbus_server import ModbusDeviceServer
from coolctl.simulators.mqtt_sensors import DEFAULT_PREFIX, MqttSensorPublisher, parse_broker
from coolctl.simulators.plant import PlantParams, RackPlant
from coolctl.simulators.redfish_devices import build_device, build_power_shelf_service
from coolctl.simulators.redfish_power_shelf import PowerShelves
from coolctl.simulators.redfish_server import RedfishDeviceServer
from coolctl.simulators.sensors import DeviceSensors, PointSensor
from coolctl.simulators.snmp_agent import SimulatedPdu, SnmpPduAgent
from coolctl.simulators.tls import TlsMaterial, create_tls_material, server_ssl_context

log = logging.getLogger("coolctl.simulators.live")

DeviceKind = Literal["cdu", "pdu", "sensor", "server"]

# Which protocol serves each kind of device by default, and which it may choose.
PROTOCOLS: Mapping[str, str] = {
    "cdu": "modbus",
    "pdu": "modbus",
    "sensor": "mqtt",
    "server": "redfish",
}
PROTOCOL_CHOICES: Mapping[str, tuple[str, ...]] = {
    "cdu": ("modbus", "redfish"),
    "pdu": ("modbus", "redfish", "snmp"),
    "sensor": ("mqtt",),
    "server": ("redfish",),
}


@dataclass(frozen=True, slots=True)
class SimDeviceSpec:
    """One simulated device: which part of the plant it shows, and where it listens.

    A `sensor` device publishes over MQTT instead of listening: `register_map`, `unit_id`,
    `host` and `port` do not apply to it; the broker comes from its rack or the simulation, and
    `topic_prefix` and `publish_period_s` set what it publishes and how often.

    `protocol` is "modbus" (the default) or "redfish" for a CDU or PDU; a `server` is the BMC
    of plant server number `server` and always speaks Redfish. A Redfish device has one
    account, `username` with `password` (a random one when empty); `legacy_power` also shows a
    BMC's power limit as the old `Chassis/1/Power` resource; `require_if_match` makes a PATCH
    without If-Match fail with 428.
    """

    device: str
    kind: DeviceKind
    register_map: str | Path = ""  # profile name or path: the register map it serves
    unit_id: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    topic_prefix: str = DEFAULT_PREFIX
    publish_period_s: float = 1.0
    protocol: str = ""  # empty: the kind's default (PROTOCOLS)
    server: int = 0
    username: str = "admin"
    password: str = ""
    legacy_power: bool = False
    require_if_match: bool = False
    community: str = "public"  # snmp: the v2c community the simulated PDU answers
    outlets: int = 48  # snmp: outlets of the simulated PDU (outlet k feeds server k-1)
    share: float = 1.0  # snmp: the fraction of each server's power on this PDU's feed
    power_shelves: int = 0  # redfish pdu: serve this many power shelves instead of a rack PDU
    shelf_role: str = ""  # modbus pdu: "psu" or "bbu", a unit of the rack's ORv3 power shelf

    def __post_init__(self) -> None:
        choices = PROTOCOL_CHOICES.get(self.kind)
        if choices is None:
            raise ValueError(f"device {self.device!r}: unknown kind {self.kind!r}")
        if self.shelf_role not in ("", *SHELF_ROLES) or (self.shelf_role and self.kind != "pdu"):
            raise ValueError(f"device {self.device!r}: shelf_role {self.shelf_role!r} needs a pdu")
        protocol = self.protocol or PROTOCOLS[self.kind]
        if protocol not in choices:
            raise ValueError(
                f"device {self.device!r}: a {self.kind} speaks {' or '.join(choices)},"
                f" not {protocol!r}"
            )
        object.__setattr__(self, "protocol", protocol)


@dataclass(frozen=True, slots=True)
class SimRackSpec:
    """One simulated rack: its plant parameters, starting load and devices.

    `cdu` sets up the rack's CDU controller (`CduControllerParams`: its starting mode, loops,
    setpoint ranges, room); every CDU device of the rack is a front-end of that one controller.
    """

    rack: str
    devices: Sequence[SimDeviceSpec]
    plant: Mapping[str, Any] = field(default_factory=dict)
    cdu: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    load: float = 0.6  # starting fraction of max for every server
    mqtt_broker: str | None = None  # "host:port" for its sensor devices; else the simulation's


@dataclass(frozen=True, slots=True)
class Service:
    """A started protocol front-end, as `coolctl sim serve` prints it.

    `modbus`: `address` is where the device listens. `mqtt`: `address` is the broker the device
    publishes to, under `topic_prefix/rack/device`. `redfish`: `url` is the service's
    `https://host:port`, `username`/`password` its account, `ca` the CA certificate file to
    trust. `control`: the fault-injection HTTP server, which belongs to no rack (`rack` and
    `device` are empty).
    """

    protocol: str
    address: str
    rack: str
    device: str
    unit_id: int = 0
    register_map: str = ""
    topic_prefix: str = ""
    url: str = ""
    username: str = ""
    password: str = ""
    ca: str = ""

    @property
    def base_topic(self) -> str:
        return f"{self.topic_prefix}/{self.rack}/{self.device}"

    def line(self) -> str:
        if self.protocol == "mqtt":
            return f"mqtt {self.address} {self.base_topic}"
        if self.protocol == "control":
            return f"control http://{self.address}"
        if self.protocol == "redfish":
            return (
                f"redfish {self.url} rack={self.rack} device={self.device}"
                f" user={self.username} password={self.password} ca={self.ca}"
            )
        if self.protocol == "snmp":
            return f"snmp {self.address} community={self.password} profile={self.register_map}"
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
    """The CDU as its front-ends see it: the plant's readings through the CDU's own controller
    (`coolctl.simulators.cdu_controller`), which takes the writes: pump and valve commands in
    its manual mode, setpoints, run command, mode and alarm acknowledge in every mode, nothing
    while its panel has control (ValueError: the front-end answers with an error)."""

    def __init__(self, plant: RackPlant, controller: CduController | None = None) -> None:
        self.plant = plant
        self.controller = controller if controller is not None else CduController(plant)
        self.writes: list[DeviceWrite] = []

    def read_points(self) -> Mapping[str, float]:
        return self.controller.read_points()

    def write_point(self, name: str, value: float) -> None:
        self.controller.write(name, value)
        self.writes.append(DeviceWrite(time.monotonic(), self.plant.time_s, name, value))


class ShelfUnitPoints:
    """One PSU or BBU of the rack's ORv3 power shelf over Modbus (modbus_power_shelf.py)."""

    def __init__(self, shelf: ModbusPowerShelf, role: str, number: int) -> None:
        self.shelf = shelf
        self.store = shelf.store(role, number)
        self.writes: list[DeviceWrite] = []

    def read_points(self) -> Mapping[str, float]:
        return self.store.read_points()

    def write_point(self, name: str, value: float) -> None:
        self.store.write_point(name, value)
        self.writes.append(DeviceWrite(time.monotonic(), self.shelf.plant.time_s, name, value))


class ServerPoints:
    """One plant server as its BMC sees it: power, temperatures, its power state, and the
    power cap and power actions (`server_power_command`: 0 a graceful shutdown, 1 on) it
    accepts."""

    def __init__(self, plant: RackPlant, server: int) -> None:
        if isinstance(server, bool) or not 0 <= server < plant.n_servers:
            raise ValueError(f"server {server!r} outside 0..{plant.n_servers - 1}")
        self.plant = plant
        self.server = server
        self.writes: list[DeviceWrite] = []

    def read_points(self) -> Mapping[str, float]:
        return self.plant.server_readings(self.server)

    def write_point(self, name: str, value: float) -> None:
        if name == "power_limit":
            self.plant.set_power_limit(self.server, value)
        elif name == "server_power_command":
            self.plant.set_server_power(self.server, value >= 0.5)
        else:
            raise ValueError(f"{name} is not writable on a server")
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


class SensorPoints:
    """The rack sensor device's view of the plant: rack inlet temperature, flow meter, leak.

    Its readings are the CDU's (through the plant's sensor model) passed through a sensor layer
    of its own, with no noise by default, so that faults injected into this device (stuck,
    noise, drift) stay on this device and do not change what the CDU reports.
    """

    POINTS = ("inlet_temperature", "flow", "leak_detected")
    ALIASES: Mapping[str, str] = {"leak": "leak_detected"}

    def __init__(self, plant: RackPlant, seed: int = 0) -> None:
        self.plant = plant
        self.writes: list[DeviceWrite] = []
        self._sensors = DeviceSensors(dict.fromkeys(self.POINTS, 0.0))
        self._rng = np.random.default_rng([seed, 0x5E2])

    def point_name(self, name: str) -> str:
        """Canonical name of one of this device's points (`leak` is `leak_detected`)."""
        canonical = self.ALIASES.get(name, name)
        if canonical not in self.POINTS:
            raise ValueError(
                f"sensor device has no point {name!r}; it has {', '.join(self.POINTS)}"
            )
        return canonical

    def sensor(self, name: str) -> PointSensor:
        return self._sensors.sensor(self.point_name(name))

    def _underlying(self) -> dict[str, float]:
        cdu = self.plant.cdu_readings()
        return {
            "inlet_temperature": cdu["supply_temperature"],
            "flow": cdu["flow"],
            "leak_detected": cdu["leak_detected"],
        }

    def read_points(self) -> Mapping[str, float]:
        return self._sensors.read(self._underlying(), self._rng, self.plant.time_s)

    def write_point(self, name: str, value: float) -> None:
        raise ValueError(f"{name} is not writable on the sensor device")

    # faults -----------------------------------------------------------------------------------

    def stick(self, name: str, stuck: bool = True) -> None:
        """Freeze a reading where it is now, or release it."""
        sensor = self.sensor(name)
        sensor.stuck_value = self._underlying()[self.point_name(name)] if stuck else None

    def set_noise(self, name: str, sigma: float) -> None:
        if not (math.isfinite(sigma) and sigma >= 0.0):
            raise ValueError(f"noise sigma must be >= 0, got {sigma}")
        self.sensor(name).sigma = sigma

    def set_drift(self, name: str, rate_per_s: float) -> None:
        """Add a ramp of `rate_per_s` (the point's unit per plant second) from now; 0 clears."""
        if not math.isfinite(rate_per_s):
            raise ValueError(f"drift must be a finite number, got {rate_per_s}")
        sensor = self.sensor(name)
        sensor.drift_per_s = rate_per_s
        sensor.drift_start_s = self.plant.time_s

    def reset(self, name: str | None = None) -> None:
        """Clear the faults of one point, or of every point."""
        for point in self.POINTS if name is None else (self.point_name(name),):
            self._sensors.sensor(point).reset()


PointSource = CduPoints | PduPoints | SensorPoints | ServerPoints | ShelfUnitPoints

_POINT_SOURCES: Mapping[str, Callable[[RackPlant, int, SimDeviceSpec], PointSource]] = {
    "cdu": lambda plant, _seed, _spec: CduPoints(plant),
    "pdu": lambda plant, _seed, _spec: PduPoints(plant),
    "sensor": lambda plant, seed, _spec: SensorPoints(plant, seed),
    "server": lambda plant, _seed, spec: ServerPoints(plant, spec.server),
}


class ControlEndpoint(Protocol):
    """The simulation's fault-injection endpoint (`coolctl.simulators.control_server`)."""

    @property
    def address(self) -> str: ...

    @property
    def url(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


EndpointFactory = Callable[["LiveSimulation"], ControlEndpoint]
"""Builds the endpoint for a simulation: `coolctl.simulators.control_server.endpoint(...)`."""


def _refuse_beyond_loopback(racks: Sequence[SimRackSpec]) -> None:
    """The simulation is for tests and demos: its devices obey anyone who reaches them, so
    they listen on loopback unless asked otherwise (`allow_remote`)."""
    for spec in racks:
        for device in spec.devices:
            if device.kind == "sensor" and device.protocol != "redfish":
                continue  # MQTT publishers listen nowhere
            host = device.host.strip("[]")
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise ValueError(
                    f"simulated {spec.rack}/{device.device} would listen on {device.host},"
                    " beyond loopback: the simulation is for tests and demos; allow it with"
                    " --listen-beyond-loopback"
                )


class LiveSimulation:
    """Plants stepped in (scaled) real time, behind Modbus, Redfish and MQTT front-ends.

    `mqtt_broker` ("host:port") is where sensor devices publish unless their rack names its own.
    `control` builds the fault-injection endpoint, started with the simulation
    (`coolctl.simulators.control_server.endpoint(port=0)`; None, the default, starts none).
    `tls_dir` is where the Redfish services' CA and certificate go (made there once, a CA
    already there is reused); None uses a temporary folder that `stop` removes.
    """

    def __init__(
        self,
        racks: Sequence[SimRackSpec],
        *,
        time_scale: float = 1.0,
        step_s: float = 0.05,
        mqtt_broker: str | None = None,
        control: EndpointFactory | None = None,
        tls_dir: Path | None = None,
        allow_remote: bool = False,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be greater than 0")
        if not allow_remote:
            _refuse_beyond_loopback(racks)
        self.time_scale = time_scale
        self.step_s = step_s
        self.mqtt_broker = mqtt_broker
        self.specs = {spec.rack: spec for spec in racks}
        self.plants: dict[str, RackPlant] = {}
        self.servers: dict[tuple[str, str], ModbusDeviceServer] = {}
        self.publishers: dict[tuple[str, str], MqttSensorPublisher] = {}
        self.redfish: dict[tuple[str, str], RedfishDeviceServer] = {}
        self.snmp: dict[tuple[str, str], SnmpPduAgent] = {}
        self.power_shelves: dict[tuple[str, str], PowerShelves] = {}
        self.modbus_shelves: dict[str, ModbusPowerShelf] = {}  # per rack: its PSUs and BBUs
        self.points: dict[tuple[str, str], PointSource] = {}
        self.cdus: dict[str, CduController] = {}  # each rack's CDU controller, by rack
        self.tls: TlsMaterial | None = None
        self._ssl: ssl.SSLContext | None = None
        self._tls_dir = tls_dir
        self._tls_temporary: Path | None = None
        self.services: list[Service] = []
        self.faults = FaultBook()
        self.control: ControlEndpoint | None = None
        self._control_factory = control
        self._task: asyncio.Task[None] | None = None
        for spec in racks:
            params = PlantParams.from_dict({"initial_load": spec.load, **spec.plant})
            plant = RackPlant(params, seed=spec.seed)
            self.plants[spec.rack] = plant
            cdu = CduController(plant, CduControllerParams.from_dict(spec.cdu))
            self.cdus[spec.rack] = cdu
            roles = [device.shelf_role for device in spec.devices]
            if any(roles):
                shelf = ModbusPowerShelf(plant, psus=roles.count("psu"), bbus=roles.count("bbu"))
                self.modbus_shelves[spec.rack] = shelf
            for index, device in enumerate(spec.devices):
                key = (spec.rack, device.device)
                source: PointSource
                if device.shelf_role:
                    number = roles[: index + 1].count(device.shelf_role)
                    shelf = self.modbus_shelves[spec.rack]
                    source = ShelfUnitPoints(shelf, device.shelf_role, number)
                elif device.kind == "cdu":
                    source = CduPoints(plant, cdu)  # the rack's one CDU controller
                else:
                    source = _POINT_SOURCES[device.kind](plant, spec.seed * 1000 + index, device)
                self.points[key] = source
                if device.protocol == "redfish":
                    self.redfish[key] = self._redfish_server(spec.rack, device, source, plant)
                elif device.protocol == "snmp":
                    pdu = SimulatedPdu(plant, outlets=device.outlets, share=device.share)
                    self.snmp[key] = SnmpPduAgent(
                        device.register_map,
                        pdu,
                        host=device.host,
                        port=device.port,
                        community=device.community,
                    )
                elif device.kind == "sensor":
                    broker = spec.mqtt_broker or mqtt_broker
                    if broker is None:
                        raise ValueError(
                            f"sensor device {spec.rack}/{device.device} publishes over MQTT:"
                            " give the simulation an mqtt_broker (or its rack one)"
                        )
                    # a bad address fails here, not in the background ("USER:PASSWORD@" aside)
                    parse_broker(broker.rpartition("@")[2])
                    self.publishers[key] = MqttSensorPublisher(
                        source,
                        broker=broker,
                        rack=spec.rack,
                        device=device.device,
                        prefix=device.topic_prefix,
                        period_s=device.publish_period_s,
                    )
                else:
                    self.servers[key] = ModbusDeviceServer(
                        device.register_map,
                        source,
                        host=device.host,
                        port=device.port,
                        unit_id=device.unit_id,
                    )
        self._publishers_by_rack = {
            rack: [p for (r, _), p in self.publishers.items() if r == rack] for rack in self.plants
        }

    def _tls_material(self) -> tuple[TlsMaterial, ssl.SSLContext]:
        """The simulation's CA and server certificate, made on first need, and its context."""
        if self.tls is None or self._ssl is None:
            directory = self._tls_dir
            if directory is None:
                directory = self._tls_temporary = Path(tempfile.mkdtemp(prefix="coolctl-sim-tls-"))
            self.tls = create_tls_material(directory)
            self._ssl = server_ssl_context(self.tls.server_cert, self.tls.server_key)
        return self.tls, self._ssl

    def _redfish_server(
        self, rack: str, device: SimDeviceSpec, source: PointSource, plant: RackPlant
    ) -> RedfishDeviceServer:
        tls, context = self._tls_material()
        name = f"{rack}/{device.device}"
        password = device.password or secrets.token_urlsafe(12)
        if device.power_shelves > 0:
            service, shelves = build_power_shelf_service(
                source,
                plant,
                name=name,
                username=device.username,
                password=password,
                shelves=device.power_shelves,
                sensing_interval_s=self.step_s,
            )
            self.power_shelves[(rack, device.device)] = shelves
        else:
            service = build_device(
                device.kind,
                source,
                plant,
                name=name,
                username=device.username,
                password=password,
                server_index=device.server,
                legacy_power=device.legacy_power,
                sensing_interval_s=self.step_s,
            )
        return RedfishDeviceServer(
            service,
            ssl_context=context,
            certificate_file=tls.server_cert,
            host=device.host,
            port=device.port,
            require_if_match=device.require_if_match,
        )

    async def start(self) -> None:
        try:
            for (rack, device), server in self.servers.items():
                await server.start()
                spec = self.device_spec(rack, device)
                self.services.append(
                    Service(
                        "modbus", server.address, rack, device, spec.unit_id, str(spec.register_map)
                    )
                )
            for (rack, device), redfish in self.redfish.items():
                await redfish.start()
                account = redfish.service.account
                assert self.tls is not None
                self.services.append(
                    Service(
                        "redfish",
                        redfish.address,
                        rack,
                        device,
                        url=redfish.url,
                        username=account.username,
                        password=account.password,
                        ca=str(self.tls.ca_cert),
                    )
                )
            for (rack, device), agent in self.snmp.items():
                await agent.start()
                self.services.append(
                    Service(
                        "snmp",
                        agent.address,
                        rack,
                        device,
                        register_map=agent.profile_name,
                        password=agent.community,
                    )
                )
            for (rack, device), publisher in self.publishers.items():
                await publisher.start()
                self.services.append(
                    Service("mqtt", publisher.broker, rack, device, topic_prefix=publisher.prefix)
                )
            self._task = asyncio.create_task(self._step_forever(), name="plant")
            if self._control_factory is not None:
                self.control = self._control_factory(self)
                await self.control.start()
                self.services.append(Service("control", self.control.address, "", ""))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
            self.control = None
        await self.faults.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for publisher in self.publishers.values():
            await publisher.stop()
        for server in self.servers.values():
            await server.stop()
        for redfish in self.redfish.values():
            await redfish.stop()
        for agent in self.snmp.values():
            await agent.stop()
        if self._tls_temporary is not None:
            shutil.rmtree(self._tls_temporary, ignore_errors=True)
            self._tls_temporary = None

    async def __aenter__(self) -> LiveSimulation:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """True while the plants are being stepped."""
        return self._task is not None and not self._task.done()

    @property
    def control_url(self) -> str | None:
        """`http://host:port` of the fault-injection server, once started; else None."""
        return None if self.control is None else self.control.url

    @property
    def control_token(self) -> str | None:
        """The bearer token the fault-injection server asks for, once started; else None."""
        return getattr(self.control, "token", None)

    def writes(self, rack: str, device: str) -> list[DeviceWrite]:
        """Every setpoint the simulated device accepted, in order."""
        return self.points[(rack, device)].writes

    def service(self, rack: str, device: str) -> Service:
        return next(s for s in self.services if (s.rack, s.device) == (rack, device))

    def device_spec(self, rack: str, device: str) -> SimDeviceSpec:
        return next(d for d in self.specs[rack].devices if d.device == device)

    async def _step_forever(self) -> None:
        """Advance every plant by the scaled wall time that has passed, on a fixed grid.

        After each step the rack's MQTT sensor devices sample the plant, so that a leak
        detector that trips goes out within one step rather than at the next heartbeat.
        """
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.step_s)
            now = time.monotonic()
            plant_dt = (now - last) * self.time_scale
            last = now
            for rack in self.plants:
                self.cdus[rack].advance(plant_dt)  # the plant, with the CDU's own loops
                for publisher in self._publishers_by_rack[rack]:
                    publisher.poll()
