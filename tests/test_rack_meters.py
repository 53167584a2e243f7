"""Which devices meter a rack's power: its PDUs summed, but not a second view of one."""

from __future__ import annotations

import tomllib
from importlib import resources

from coolctl.config import RackConfig, parse_config
from coolctl.model import PointId
from coolctl.rack.facts import DeviceFactsRecord, device_facts
from coolctl.rack.safety import rack_power_points, supervisor_config
from coolctl.rack.stack import it_power_points


def _demo_rack(meters_both: bool) -> tuple[RackConfig, dict[str, DeviceFactsRecord]]:
    text = resources.files("coolctl.data").joinpath("demo-rack.toml").read_text("utf-8")
    document = tomllib.loads(text)
    if meters_both:
        document["racks"]["r01"]["devices"]["pdu2"]["meters_rack"] = True
    rack = parse_config(document).racks["r01"]
    return rack, {d.id: device_facts(d) for d in rack.devices.values()}


def test_the_demo_rack_is_metered_by_its_modbus_pdu_alone() -> None:
    """pdu2 is pdu1 seen over Redfish: counting both would double the rack's power, and the
    allocator would cut every cap to fit a rack twice its size."""
    rack, facts = _demo_rack(meters_both=False)
    assert rack_power_points(rack, facts) == (PointId("r01", "pdu1", "power"),)
    assert it_power_points(rack, facts) == (PointId("r01", "pdu1", "power"),)
    assert supervisor_config(rack, facts).power == (PointId("r01", "pdu1", "power"),)


def test_two_metering_pdus_are_summed() -> None:
    rack, facts = _demo_rack(meters_both=True)
    both = (PointId("r01", "pdu1", "power"), PointId("r01", "pdu2", "power"))
    assert rack_power_points(rack, facts) == both
    assert supervisor_config(rack, facts).power == both
