"""Sensor models for the simulated rack: what a device reports is never the plant's exact state.

Every value a simulated device exposes passes through a `SensorBank`, which adds gaussian noise
and the sensor faults scenarios inject (stuck, drift, extra noise). Quantisation to a register's
resolution is left to the protocol front-ends, which know the register types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coolctl.model import CANONICAL_POINTS, Unit

# Points that may be negative in the physical world (heat flows both ways through the exchanger;
# temperatures are celsius). Everything else in these units is clipped at zero after noise.
_SIGNED_POINTS = frozenset({"heat_removed"})
_NON_NEGATIVE_UNITS = frozenset(
    {Unit.WATT, Unit.JOULE, Unit.LITRE, Unit.LITRE_PER_MINUTE, Unit.PASCAL, Unit.SECOND}
)


@dataclass(slots=True)
class PointSensor:
    """The sensor behind one point: its noise and the faults currently injected into it."""

    sigma: float
    default_sigma: float
    lower: float
    upper: float
    stuck_value: float | None = None
    drift_per_s: float = 0.0
    drift_start_s: float = 0.0

    def reset(self) -> None:
        """Back to a healthy sensor with its default noise."""
        self.sigma = self.default_sigma
        self.stuck_value = None
        self.drift_per_s = 0.0
        self.drift_start_s = 0.0

    def measure(self, true_value: float, z: float, time_s: float) -> float:
        """One reading of `true_value`, given a standard-normal draw `z`."""
        if self.stuck_value is not None:
            return self.stuck_value
        drift = self.drift_per_s * (time_s - self.drift_start_s)
        value = true_value + self.sigma * z + drift
        return min(max(value, self.lower), self.upper)


def _bounds(point: str) -> tuple[float, float]:
    """Physical range of a point's reading, so noise never reports a negative flow."""
    spec = CANONICAL_POINTS.get(point)
    if spec is None:
        raise ValueError(f"unknown point {point!r}")
    if spec.unit in (Unit.RATIO, Unit.BOOLEAN):
        return 0.0, 1.0
    if spec.unit in _NON_NEGATIVE_UNITS and point not in _SIGNED_POINTS:
        return 0.0, float("inf")
    return float("-inf"), float("inf")


class DeviceSensors:
    """The sensors of one device, read together so each read draws the same number of normals.

    A fixed draw count per read keeps the random stream, and so the readings, identical for the
    same seed and call sequence whatever faults are injected.
    """

    __slots__ = ("_names", "_sensors")

    def __init__(self, sigmas: Mapping[str, float]) -> None:
        self._names: tuple[str, ...] = tuple(sigmas)
        self._sensors: dict[str, PointSensor] = {}
        for name, sigma in sigmas.items():
            lower, upper = _bounds(name)
            self._sensors[name] = PointSensor(sigma, sigma, lower, upper)

    @property
    def points(self) -> tuple[str, ...]:
        return self._names

    def sensor(self, point: str) -> PointSensor:
        try:
            return self._sensors[point]
        except KeyError:
            raise ValueError(f"device has no point {point!r}") from None

    def read(
        self, true_values: Mapping[str, float], rng: np.random.Generator, time_s: float
    ) -> dict[str, float]:
        """Readings of every point of the device, noise and faults applied."""
        draws = rng.standard_normal(len(self._names)).tolist()
        return {
            name: self._sensors[name].measure(true_values[name], z, time_s)
            for name, z in zip(self._names, draws, strict=True)
        }


class SensorBank:
    """All sensors of the rack, by device name (`cdu`, `pdu`, `server<i>`)."""

    __slots__ = ("_devices", "_rng")

    def __init__(self, devices: Mapping[str, Mapping[str, float]], seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._devices = {name: DeviceSensors(sigmas) for name, sigmas in devices.items()}

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self._devices)

    def device(self, name: str) -> DeviceSensors:
        try:
            return self._devices[name]
        except KeyError:
            raise ValueError(f"unknown device {name!r}") from None

    def read(
        self, device: str, true_values: Mapping[str, float], time_s: float
    ) -> dict[str, float]:
        return self.device(device).read(true_values, self._rng, time_s)

    def stick(self, device: str, point: str, value: float | None) -> None:
        """Freeze a point at `value`, or unfreeze it with None."""
        self.device(device).sensor(point).stuck_value = value

    def set_noise(self, device: str, point: str, sigma: float) -> None:
        if not (math.isfinite(sigma) and sigma >= 0.0):
            raise ValueError(f"noise sigma for {device}/{point} must be >= 0, got {sigma}")
        self.device(device).sensor(point).sigma = sigma

    def set_drift(self, device: str, point: str, rate_per_s: float, time_s: float) -> None:
        """Add a ramp of `rate_per_s` (point units per second) starting at `time_s`; 0 clears."""
        sensor = self.device(device).sensor(point)
        sensor.drift_per_s = rate_per_s
        sensor.drift_start_s = time_s

    def reset(self, device: str, point: str) -> None:
        self.device(device).sensor(point).reset()
