"""The simulated Modbus devices of a running simulation, served over Modbus RTU as well: one
virtual RS-485 bus (a paced pty pair, simulators/serial_line.py) with every Modbus device on it
under its own unit id, for `coolctl sim serve --modbus-rtu` and `coolctl demo --modbus-rtu`.

The devices keep their register banks and their plant: the bus answers from the same memory
the TCP listeners do, so either can be used, and faults injected into the simulation show on
both. Unit ids on one bus must differ: the devices keep their configured ones when those all
differ (an ORv3 shelf's PSUs at 192.., its BBUs at 64..), else are numbered 1, 2, … in config
order.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Final, Literal

from coolctl.config import Config, ModbusDeviceConfig
from coolctl.simulators.live import LiveSimulation, Service
from coolctl.simulators.modbus_server import ModbusRtuBus
from coolctl.simulators.serial_line import VirtualSerialLine

RTU_BAUD = 19200
# A pty refuses parity settings once configured; real buses often run 8N1 too.
RTU_PARITY: Final[Literal["N"]] = "N"


async def serve_over_rtu(simulation: LiveSimulation, stack: AsyncExitStack) -> list[Service]:
    """Put every simulated Modbus device on one virtual RTU bus; its `modbus-rtu` services."""
    if not simulation.servers:
        return []
    line = VirtualSerialLine(baudrate=RTU_BAUD, bits_per_character=10)
    line.start()
    stack.callback(line.stop)
    services = []
    configured = [server.unit_id for server in simulation.servers.values()]
    keep = len(set(configured)) == len(configured)
    for index, ((rack, device), server) in enumerate(simulation.servers.items(), start=1):
        unit = server.unit_id if keep else index
        server.unit_id = unit
        server._bank.unit_id = unit
        spec = simulation.device_spec(rack, device)
        services.append(
            Service("modbus-rtu", line.client_path, rack, device, unit, str(spec.register_map))
        )
    servers = list(simulation.servers.values())
    bus = ModbusRtuBus(servers, port=line.device_path, baudrate=RTU_BAUD, parity=RTU_PARITY)
    await bus.start()
    stack.push_async_callback(bus.stop)
    return services


def with_rtu_services(config: Config, services: list[Service]) -> Config:
    """The config's Modbus devices pointed at the simulated RTU bus."""
    racks = dict(config.racks)
    for service in services:
        if service.protocol != "modbus-rtu":
            continue
        rack = racks[service.rack]
        device = rack.devices[service.device]
        if not isinstance(device, ModbusDeviceConfig):
            continue
        device = replace(
            device,
            transport="rtu",
            serial_port=service.address,
            unit=service.unit_id,
            baudrate=RTU_BAUD,
            parity=RTU_PARITY,
            stopbits=1,
            bytesize=8,
        )
        racks[service.rack] = replace(rack, devices={**rack.devices, service.device: device})
    return replace(config, racks=racks)
