"""Pure control: PID, clamps, controllers. No I/O, no clock reads; time is an argument."""
