"""Time per poll of a 40-register CDU over Modbus RTU at 19,200 baud, against the time its bits
take on the wire.

A simulated CDU (a profile of 40 holding registers, read in one request) serves on one end of
a virtual serial line (two pty pairs bridged in Python, paced at the baud rate: a pty alone
ignores it); coolctl's Modbus driver polls it from the other end. The baseline is the wire time
of that poll, computed from the frame sizes in this process: an 8-byte request and a 5 + 2·40
byte reply, at 10 bits a character (8N1), each followed by the 3.5-character silence that ends
an RTU frame. The ratio says what coolctl, pymodbus, the simulator and the event loop add on top
of the bits themselves; it cannot be below 1.

    python benchmarks/rtu_poll.py [--polls N] [--baud 19200] [--registers 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_link import ModbusLink, SerialSettings
from coolctl.drivers.modbus_profile import load_profile, plan_reads
from coolctl.model import CANONICAL_POINTS, Quality, Unit
from coolctl.simulators.modbus_server import ModbusDeviceServer, ModbusRtuBus
from coolctl.simulators.serial_line import VirtualSerialLine

UNIT_ID = 5


def cdu_profile(registers: int) -> str:
    """A register map of `registers` consecutive holding registers, one canonical point each."""
    names = [name for name, spec in CANONICAL_POINTS.items() if spec.unit is not Unit.STATE]
    if registers > len(names):
        raise SystemExit(f"at most {len(names)} registers (one canonical point each)")
    lines = ['[profile]\nname = "bench-cdu"\nprotocol = "modbus"\nkind = "cdu"\n']
    for address, name in enumerate(names[:registers]):
        unit = CANONICAL_POINTS[name].unit.value
        bit = "bit = 0\n" if unit == "boolean" else ""
        lines.append(
            f'[[point]]\nname = "{name}"\ntable = "holding"\naddress = {address}\n'
            f'type = "uint16"\n{bit}unit = "{unit}"\n'
        )
    return "\n".join(lines)


class Store:
    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = dict(values)

    def read_points(self) -> Mapping[str, float]:
        return self.values

    def write_point(self, name: str, value: float) -> None:
        self.values[name] = value


async def measure(polls: int, baud: int, registers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench-cdu.toml"
        path.write_text(cdu_profile(registers))
        profile = load_profile(path)
        blocks = plan_reads(profile)
        assert len(blocks) == 1 and blocks[0].count == registers, blocks
        line = VirtualSerialLine(baudrate=baud, bits_per_character=10)
        line.start()
        server = ModbusDeviceServer(
            path, Store({p.name: 1.0 for p in profile.points}), unit_id=UNIT_ID
        )
        bus = ModbusRtuBus([server], port=line.device_path, baudrate=baud, parity="N")
        await bus.start()
        settings = SerialSettings(line.client_path, baudrate=baud, parity="N")
        link = ModbusLink(serial=settings, timeout_s=2.0)
        device = ModbusDevice(
            rack="bench", device="cdu", unit_id=UNIT_ID, profile=profile, link=link
        )
        try:
            await device.poll()  # connect, and let everything warm up
            times = []
            for _ in range(polls):
                started = time.perf_counter()
                readings = await device.poll()
                times.append(time.perf_counter() - started)
                assert all(r.quality is Quality.GOOD for r in readings)
        finally:
            link.close()
            await bus.stop()
            line.stop()
    request_bytes, reply_bytes = 8, 5 + 2 * registers
    wire_s = settings.wire_time_s(request_bytes) + settings.wire_time_s(reply_bytes)
    median = statistics.median(times)
    p95 = sorted(times)[int(0.95 * (len(times) - 1))]
    print(f"Modbus RTU poll of a {registers}-register CDU at {baud} baud (8N1), {polls} polls")
    print(
        f"  wire time (request {request_bytes} B + reply {reply_bytes} B, with 3.5-char gaps): "
        f"{wire_s * 1e3:.1f} ms"
    )
    print(f"  time per poll: median {median * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms")
    print(f"  ratio to the wire time: median {median / wire_s:.2f}x, p95 {p95 / wire_s:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=100)
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--registers", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(measure(args.polls, args.baud, args.registers))


if __name__ == "__main__":
    main()
