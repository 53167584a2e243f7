"""The power sources' alarms in force, for `coolctl status`: which PSUs are lost and which BBUs
carry their shelf, read from a rack's current values.

The allocator makes an event of each change (control/powercap.py); the status shows what is
true now, so that an operator who missed the event still sees a rack on battery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from coolctl.model import base_point

# canonical point -> (the value that means trouble, what it means)
POWER_ALARMS: Final[Mapping[str, tuple[float, str]]] = {
    "psu_ok": (0.0, "PSU lost"),
    "bbu_discharging": (1.0, "on battery"),
}


def power_alarms(values: Mapping[str, float | None]) -> list[str]:
    """`device/point` keys of a status document's values whose reading means trouble, each
    with what it means ("psu2/psu_ok: PSU lost"), sorted."""
    found = []
    for key, value in values.items():
        point = base_point(key.rpartition("/")[2])
        alarm = POWER_ALARMS.get(point)
        if alarm is not None and value == alarm[0]:
            found.append(f"{key}: {alarm[1]}")
    return sorted(found)
