"""An Open Rack v3 power shelf as Modbus units: its PSUs and BBUs, each one unit id on the
shelf's RS-485 bus (or behind a TCP gateway), as rackmon reads them.

The shelf delivers the plant's IT power (the rack's PDU meter, times `share` when a rack has
several shelves): the working PSUs share the output evenly, each drawing it over a fixed
efficiency from mains. Two faults can be injected: a PSU that fails (its DCDC alarm set, its
share taken by the others) and a mains loss, when the BBUs discharge and carry the shelf, their
charge falling at the shelf's output power in plant time. The stores here are point stores
(`read_points`, `write_point`) for `ModbusDeviceServer`, served with the `orv3-psu` and
`orv3-bbu` register maps; their point names are the maps' canonical ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coolctl.simulators.plant import RackPlant

__all__ = [
    "BBU_UNIT_BASE",
    "PSU_UNIT_BASE",
    "SHELF_ROLES",
    "BbuPoints",
    "ModbusPowerShelf",
    "PsuPoints",
]

SHELF_ROLES = ("psu", "bbu")

PSU_UNIT_BASE = 192  # rackmon's ORv3 PSU addresses are 192..247 (0xC0..)
BBU_UNIT_BASE = 64  # and its ORv3 BBU addresses 64..127
EFFICIENCY = 0.975
MAINS_VOLTS = 230.0
BBU_CAPACITY_WH = 3600.0
BBU_VOLTS = 51.0


@dataclass(slots=True)
class _BbuState:
    charge_wh: float = BBU_CAPACITY_WH
    drained_at_s: float | None = None  # plant time of the last drain, None while charged


@dataclass(slots=True)
class ModbusPowerShelf:
    """One shelf's electrical state, from the plant, and the faults injected into it."""

    plant: RackPlant
    psus: int = 6
    bbus: int = 1
    share: float = 1.0  # the fraction of the rack's IT power this shelf delivers
    failed: set[int] = field(default_factory=set)  # 1-based PSU numbers
    on_battery: bool = False
    acknowledged: int = 0  # Clear_Faults_Latch writes seen
    _bbus: list[_BbuState] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.psus < 0 or self.bbus < 0 or not 0.0 < self.share <= 1.0:
            raise ValueError("a shelf needs >= 0 PSUs and BBUs and a share in (0, 1]")
        self._bbus = [_BbuState() for _ in range(self.bbus)]

    def store(self, role: str, number: int) -> PsuPoints | BbuPoints:
        """The point store of PSU or BBU `number` (1-based)."""
        count = self.psus if role == "psu" else self.bbus if role == "bbu" else 0
        if not 1 <= number <= count:
            raise ValueError(f"the shelf has no {role} {number}")
        return PsuPoints(self, number) if role == "psu" else BbuPoints(self, number)

    # faults ---------------------------------------------------------------------------------

    def fail_psu(self, psu: int, failed: bool = True) -> None:
        """PSU `psu` (1-based) stops delivering, or comes back."""
        if not 1 <= psu <= self.psus:
            raise ValueError(f"the shelf has PSUs 1..{self.psus}, not {psu}")
        (self.failed.add if failed else self.failed.discard)(psu)

    def lose_mains(self, lost: bool = True) -> None:
        """Mains lost: the BBUs discharge and carry the shelf (False: mains is back)."""
        self._drain()
        self.on_battery = lost and bool(self._bbus)

    # readings -------------------------------------------------------------------------------

    def output_w(self) -> float:
        return max(0.0, self.plant.pdu_readings()["power"]) * self.share

    def psu_output_w(self, psu: int) -> float:
        working = self.psus - len(self.failed)
        if psu in self.failed or working <= 0:
            return 0.0
        return self.output_w() / working

    def psu_points(self, psu: int) -> dict[str, float]:
        output = self.psu_output_w(psu)
        drawn = 0.0 if self.on_battery else output / EFFICIENCY
        return {
            "psu_ok": 0.0 if psu in self.failed else 1.0,
            "output_power": output,
            "power": drawn,
            "voltage": 0.0 if self.on_battery else MAINS_VOLTS,
            "current": drawn / MAINS_VOLTS,
            "alarm_acknowledge": 0.0,
        }

    def bbu_points(self, bbu: int) -> dict[str, float]:
        self._drain()
        state = self._bbus[bbu - 1]
        return {
            "bbu_discharging": 1.0 if self.on_battery else 0.0,
            "bbu_charge": state.charge_wh / BBU_CAPACITY_WH,
            "voltage": BBU_VOLTS,
        }

    def _drain(self) -> None:
        now = self.plant.time_s
        for state in self._bbus:
            if self.on_battery and state.drained_at_s is not None:
                hours = (now - state.drained_at_s) / 3600.0
                watts = self.output_w() / len(self._bbus)
                state.charge_wh = max(0.0, state.charge_wh - watts * hours)
            state.drained_at_s = now if self.on_battery else None


class PsuPoints:
    """The point store of one PSU of a shelf (register map `orv3-psu`)."""

    def __init__(self, shelf: ModbusPowerShelf, psu: int) -> None:
        self.shelf, self.psu = shelf, psu

    def read_points(self) -> Mapping[str, float]:
        return self.shelf.psu_points(self.psu)

    def write_point(self, name: str, value: float) -> None:
        if name != "alarm_acknowledge":
            raise ValueError(f"{name} is not writable on a PSU")
        if value >= 0.5:
            self.shelf.acknowledged += 1


class BbuPoints:
    """The point store of one BBU of a shelf (register map `orv3-bbu`): read-only."""

    def __init__(self, shelf: ModbusPowerShelf, bbu: int) -> None:
        self.shelf, self.bbu = shelf, bbu

    def read_points(self) -> Mapping[str, float]:
        return self.shelf.bbu_points(self.bbu)

    def write_point(self, name: str, value: float) -> None:
        raise ValueError(f"{name} is not writable on a BBU")
