"""`coolctl probe`: read a device once through a profile, for commissioning and profile checks."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from coolctl.config import parse_host_port
from coolctl.drivers.modbus import ModbusDevice
from coolctl.drivers.modbus_profile import load_profile
from coolctl.drivers.profile_toml import ProfileError
from coolctl.exitcodes import ExitCode
from coolctl.model import Quality, Reading


async def probe_modbus(
    target: str, profile_name: str, unit_id: int, timeout_s: float, as_json: bool
) -> ExitCode:
    """Print every point of the profile as read from the device; 3 if it does not answer."""
    try:
        host, port = parse_host_port(target)
        profile = load_profile(profile_name)
    except (ValueError, OSError) as exc:
        print(f"coolctl probe: {exc}", file=sys.stderr)
        return ExitCode.USAGE if not isinstance(exc, ProfileError) else ExitCode.BAD
    async with ModbusDevice(
        rack="-",
        device=target,
        host=host,
        port=port,
        unit_id=unit_id,
        profile=profile,
        timeout_s=timeout_s,
        reconnect_min_s=0.0,
    ) as device:
        readings = await device.poll()
    units = {point.name: point.unit.value for point in profile.points}
    if as_json:
        print(json.dumps([_as_dict(r, units[r.point.name]) for r in readings], indent=2))
    else:
        print(format_table(readings, units))
    if all(r.quality is not Quality.GOOD for r in readings):
        errors = ", ".join(f"{k} {v}" for k, v in sorted(device.stats.errors_by_kind.items()))
        print(f"coolctl probe: no good reading from {target} ({errors})", file=sys.stderr)
        return ExitCode.UNREACHABLE
    return ExitCode.OK


def _as_dict(reading: Reading, unit: str) -> dict[str, object]:
    return {
        "point": reading.point.name,
        "value": reading.value,
        "unit": unit,
        "quality": reading.quality.value,
    }


def format_table(readings: Sequence[Reading], units: dict[str, str]) -> str:
    rows = [("POINT", "VALUE", "UNIT", "QUALITY")]
    for reading in readings:
        value = "" if reading.value is None else f"{reading.value:.6g}"
        rows.append((reading.point.name, value, units[reading.point.name], reading.quality.value))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
        for row in rows
    )
