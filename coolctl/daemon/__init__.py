"""The running daemon: pollers, the tick schedule, actuation, telemetry, metrics, MQTT, systemd.

May import: coolctl.rack and everything below it, and coolctl.ops (it implements the control
plane)."""
