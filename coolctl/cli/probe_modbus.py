"""`coolctl probe modbus`: read a device once through a profile, for commissioning and profile
checks.

What it must not do is hide a problem: a value outside the profile's min/max, or outside what
a rack's device can plausibly read in its unit, is flagged `implausible`, not `good` (a wrong
profile shows as a 21.8 MW PDU, not as a reading); a device that cannot be reached is one line
and exit 3, not a table of `missing`; a Modbus exception response is named ("illegal data
address"), never a bare number. `--raw` prints each point's registers beside its value, which
is how a register map is checked against a device.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from coolctl.config import parse_host_port
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_link import FailureKind, ModbusLink, SerialSettings
from coolctl.drivers.modbus_profile import ModbusProfile, RegisterPoint, load_profile
from coolctl.drivers.profile_toml import ProfileError
from coolctl.exitcodes import ExitCode
from coolctl.model import Quality, Reading, Unit

IMPLAUSIBLE: Final = "implausible"

# What a device of a liquid-cooled rack can plausibly read in each unit, where its profile
# gives no min/max: wide enough for any real rack, narrow enough to catch a wrong scale or a
# wrong word order (a PDU at 21.8 MW, a coolant at 3,000 °C).
PLAUSIBLE_BY_UNIT: Final[Mapping[Unit, tuple[float, float]]] = {
    Unit.CELSIUS: (-40.0, 150.0),
    Unit.PASCAL: (-1.0e6, 2.0e6),
    Unit.WATT: (0.0, 2.0e6),
    Unit.JOULE: (0.0, math.inf),
    Unit.LITRE: (0.0, 1.0e5),
    Unit.LITRE_PER_MINUTE: (0.0, 1.0e4),
    Unit.RATIO: (0.0, 1.0),
    Unit.BOOLEAN: (0.0, 1.0),
    Unit.SECOND: (0.0, math.inf),
}


@dataclass(frozen=True, slots=True)
class ProbeRow:
    """One point as the probe shows it."""

    point: RegisterPoint
    reading: Reading
    quality: str  # the reading's quality, or "implausible"
    raw: str
    note: str


@dataclass(frozen=True, slots=True)
class BusOptions:
    """Serial settings when the target is a serial port (Modbus RTU)."""

    baudrate: int = 19200
    parity: str = "E"
    stopbits: int = 1


def plausible_range(point: RegisterPoint) -> tuple[float, float]:
    """The profile's min/max where it gives them, else what is plausible in the point's unit."""
    low, high = PLAUSIBLE_BY_UNIT.get(point.unit, (-math.inf, math.inf))
    return (
        point.min if point.min is not None else low,
        point.max if point.max is not None else high,
    )


async def probe_modbus(
    target: str,
    profile_name: str,
    unit_id: int,
    timeout_s: float,
    as_json: bool,
    raw: bool = False,
    bus: BusOptions | None = None,
) -> ExitCode:
    """Print every point of the profile as read from the device; 3 if it does not answer.

    `target` is HOST:PORT (Modbus TCP) or a serial device path such as /dev/ttyUSB0 (RTU).
    """
    # The probe reports what went wrong itself, once: no library or driver log lines
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("coolctl.drivers.modbus").setLevel(logging.ERROR)
    try:
        profile = load_profile(profile_name)
        link = _link(target, timeout_s, bus or BusOptions())
    except (ValueError, OSError) as exc:
        print(f"coolctl probe: {exc}", file=sys.stderr)
        return ExitCode.BAD if isinstance(exc, ProfileError) else ExitCode.USAGE
    async with ModbusDevice(
        rack="-", device=target, unit_id=unit_id, profile=profile, link=link
    ) as device:
        readings = await device.poll()
    if all(r.quality is not Quality.GOOD for r in readings) and _unreachable(device):
        print(f"coolctl probe: {_unreachable(device)}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    rows = probe_rows(profile, readings, device)
    if as_json:
        print(json.dumps([_as_dict(row, raw) for row in rows], indent=2))
    else:
        print(format_table(rows, raw))
    implausible = [row.point.name for row in rows if row.quality == IMPLAUSIBLE]
    if implausible:
        print(
            f"coolctl probe: {len(implausible)} implausible value(s) ({', '.join(implausible)}):"
            " is this the right profile, scale and word order?",
            file=sys.stderr,
        )
    if all(r.quality is not Quality.GOOD for r in readings):
        print(f"coolctl probe: no good reading from {target}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    return ExitCode.BAD if implausible else ExitCode.OK


def _link(target: str, timeout_s: float, bus: BusOptions) -> ModbusLink:
    if target.startswith("/"):
        settings = SerialSettings(
            target,
            baudrate=bus.baudrate,
            parity=bus.parity,  # type: ignore[arg-type]
            stopbits=bus.stopbits,
        )
        return ModbusLink(serial=settings, timeout_s=timeout_s, reconnect_min_s=0.0)
    host, port = parse_host_port(target)
    return ModbusLink(host=host, port=port, timeout_s=timeout_s, reconnect_min_s=0.0)


def _unreachable(device: ModbusDevice) -> str | None:
    """One line for a device that did not answer at all, or None if it answered something."""
    kinds = {failure.kind for failure in device.last_failures}
    where = f"{device.link.label} (unit {device.unit_id})"
    if FailureKind.CONNECTION in kinds and not device.link.connected:
        return f"cannot connect to {where}: nothing listening, or no such port"
    if kinds == {FailureKind.TIMEOUT}:
        return f"no answer from {where} within {device.timeout_s:g} s"
    return None


def probe_rows(
    profile: ModbusProfile, readings: Sequence[Reading], device: ModbusDevice
) -> list[ProbeRow]:
    rows = []
    for point, reading in zip(profile.points, readings, strict=True):
        quality = reading.quality.value
        note = device.problems.get(point.name, "")
        if reading.quality is Quality.GOOD and reading.value is not None:
            low, high = plausible_range(point)
            if not low <= reading.value <= high:
                quality = IMPLAUSIBLE
                note = f"outside {low:g}..{high:g}"
        rows.append(ProbeRow(point, reading, quality, _raw_text(point, device), note))
    return rows


def _raw_text(point: RegisterPoint, device: ModbusDevice) -> str:
    words = device.last_raw.get(point.name)
    if words is None:
        return ""
    if point.table in ("coil", "discrete"):
        return str(words[0])
    text = " ".join(f"0x{word:04X}" for word in words)
    return f"{text} bit {point.bit}" if point.bit is not None else text


def _as_dict(row: ProbeRow, raw: bool) -> dict[str, object]:
    entry: dict[str, object] = {
        "point": row.point.name,
        "value": row.reading.value,
        "unit": row.point.unit.value,
        "quality": row.quality,
    }
    if raw:
        entry["raw"] = row.raw
        entry["table"] = row.point.table
        entry["address"] = row.point.address
    if row.note:
        entry["note"] = row.note
    return entry


def format_table(rows: Sequence[ProbeRow], raw: bool = False) -> str:
    header = ["POINT", "VALUE", "UNIT", "QUALITY"]
    if raw:
        header[1:1] = ["ADDRESS", "RAW"]
    table = [header]
    notes = [""]
    for row in rows:
        value = "" if row.reading.value is None else f"{row.reading.value:.6g}"
        cells = [row.point.name, value, row.point.unit.value, row.quality]
        if raw:
            cells[1:1] = [f"{row.point.table} {row.point.address}", row.raw]
        table.append(cells)
        notes.append(row.note)
    widths = [max(len(cells[i]) for cells in table) for i in range(len(header))]
    value_column = header.index("VALUE")
    lines = []
    for cells, note in zip(table, notes, strict=True):
        parts = [
            f"{cell:>{widths[i]}}" if i == value_column else f"{cell:<{widths[i]}}"
            for i, cell in enumerate(cells)
        ]
        line = "  ".join(parts).rstrip()
        lines.append(f"{line}  {note}" if note else line)
    return "\n".join(lines)
