"""The lowest supply temperature that is safe: above facility water and above the dew point.

A supply loop (or a CDU's own setpoint) driven below the room air's dew point wets the pipes
and the cold plates' fittings with condensation; driven toward the facility water's own
temperature it gains nothing and loses the valve's authority. The supervisor floors every
command to a supply setpoint, and limits the supply valve, with `supply_floor_c`.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math

MAGNUS_A = 17.625
MAGNUS_B_C = 243.04
"""Magnus constants over water (Alduchov and Eskridge 1996): within 0.4 K from -40 to 50 °C."""


def dew_point_c(temperature_c: float, relative_humidity: float) -> float | None:
    """The dew point of air at `temperature_c` and `relative_humidity` (a ratio 0..1), by the
    Magnus formula; None for a humidity outside (0, 1] or a value that is not finite."""
    if not (math.isfinite(temperature_c) and math.isfinite(relative_humidity)):
        return None
    if not 0.0 < relative_humidity <= 1.0 or temperature_c <= -MAGNUS_B_C:
        return None
    gamma = math.log(relative_humidity) + MAGNUS_A * temperature_c / (MAGNUS_B_C + temperature_c)
    return MAGNUS_B_C * gamma / (MAGNUS_A - gamma)


def supply_floor_c(
    facility_c: float | None, dew_point: float | None, margin_c: float
) -> float | None:
    """The lowest supply temperature allowed: `margin_c` above the facility water and above
    the dew point, whichever is higher; None when neither is known."""
    known = [value + margin_c for value in (facility_c, dew_point) if value is not None]
    return max(known) if known else None
