"""A rack's control: device facts, the PID and MPC stacks, safety wiring, and the one tick.

May import: coolctl.model, coolctl.config, coolctl.control, coolctl.drivers (profiles as data)."""
