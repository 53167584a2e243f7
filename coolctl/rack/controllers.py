"""Which controller decides a rack's automatic requests: the PID loops, or the MPC over them.

The one place that turns a rack config's `controller` into its control stack, for the daemon
and the config checks. The MPC's stack (numpy, scipy, osqp) is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from coolctl.config import CduControl, Controller, RackConfig
from coolctl.rack.safety import DeviceFacts
from coolctl.rack.stack import RackControl, build_pid_control


def build_rack_control(config: RackConfig, devices: Mapping[str, DeviceFacts]) -> RackControl:
    """The rack's stack as its config asks: `controller = "pid"` (the default) the PID loops,
    `"mpc"` the MPC over them with the model in `mpc_model` (`coolctl.rack.mpc`)."""
    if config.cdu_control == CduControl.SETPOINTS:  # a CDU that runs its own loops
        from coolctl.rack.setpoints import build_setpoint_control

        return build_setpoint_control(config, devices)
    if config.controller == Controller.MPC:
        from coolctl.rack.mpc import build_mpc_control  # numpy, scipy, osqp: only when asked

        return build_mpc_control(config, devices, config.mpc_model)
    pid = build_pid_control(config, devices)
    return RackControl(pid.controller, pid.allocator, pid.supervisor)
