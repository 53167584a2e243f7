"""The rack's breakers and feeds as the power-cap allocator sees them (control/powercap.py).

From the config: each server names the PDU branch it is plugged into on each feed
(`branches = ["pdua/3", "pdub/3"]`); each SNMP PDU its feed and its breakers' ratings (or the
PDU reports them as `branch_rating.N`). A branch circuit must carry the caps of all its servers
alone when the other feed fails; a feed, those of every server on it (`feed_rating_w`).
"""

from __future__ import annotations

from coolctl.config import RackConfig, SnmpDeviceConfig
from coolctl.control.powercap import Circuit
from coolctl.model import PointId, indexed_point


def rack_circuits(config: RackConfig) -> tuple[Circuit, ...]:
    """One Circuit per branch that has servers on it, then one per feed with servers."""
    power = config.power
    on_branch: dict[str, list[str]] = {}
    on_feed: dict[str, list[str]] = {}
    for device in config.devices.values():
        for ref in getattr(device, "branches", ()):
            on_branch.setdefault(ref, []).append(device.id)
            pdu = config.devices.get(ref.partition("/")[0])
            if isinstance(pdu, SnmpDeviceConfig) and pdu.feed is not None:
                servers = on_feed.setdefault(pdu.feed.value, [])
                if device.id not in servers:
                    servers.append(device.id)
    circuits = []
    for ref, servers in on_branch.items():
        pdu_id, _, index = ref.partition("/")
        pdu = config.devices[pdu_id]
        assert isinstance(pdu, SnmpDeviceConfig)  # the config's check requires it
        rating = pdu.branch_ratings_a.get(index, pdu.branch_rating_a)
        limit = None if rating is None else power.derating * rating * power.voltage_v
        circuits.append(
            Circuit(
                name=f"{pdu_id} branch {index}",
                servers=tuple(servers),
                limit_w=limit,
                rating=PointId(config.id, pdu_id, indexed_point("branch_rating", index)),
                derating=power.derating,
                voltage_v=power.voltage_v,
            )
        )
    if power.feed_rating_w is not None:
        for feed, servers in sorted(on_feed.items()):
            circuits.append(
                Circuit(
                    name=f"feed {feed}",
                    servers=tuple(servers),
                    limit_w=power.derating * power.feed_rating_w,
                    derating=power.derating,
                    voltage_v=power.voltage_v,
                )
            )
    return tuple(circuits)
