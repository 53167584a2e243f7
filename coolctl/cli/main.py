"""The `coolctl` command line: run the daemon, check configs, probe devices, simulate a rack.

Exit codes (coolctl.exitcodes.ExitCode): 0 success, 1 the thing checked is bad or was refused
(config, device, scenario, override), 2 usage error, 3 a needed service could not be reached,
4 a live identification test was aborted, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import coolctl
from coolctl.cli.identify import add_identify_command
from coolctl.cli.operator import add_operator_commands, run_operator_command
from coolctl.cli.sim import add_sim_run_commands, run_sim_command
from coolctl.exitcodes import ExitCode
from coolctl.rack.check import load_or_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coolctl",
        description="Keeps a liquid-cooled rack's coolant loop and power budget under control.",
    )
    parser.add_argument("--version", action="version", version=f"coolctl {coolctl.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the daemon on a config file")
    run.add_argument("--config", "-c", required=True, type=Path, help="config file (TOML)")
    run.add_argument("--metrics-listen", metavar="HOST:PORT", help="override daemon.metrics_listen")
    run.add_argument("--log-format", choices=("text", "json", "journal"), help="override logging")

    check = commands.add_parser("check-config", help="validate config files and exit")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    config = commands.add_parser("config", help="about the config file itself")
    config_commands = config.add_subparsers(dest="config_command", metavar="WHAT", required=True)
    config_commands.add_parser("schema", help="print the config file's JSON Schema")

    demo = commands.add_parser(
        "demo", help="run the daemon against a built-in simulated rack, no hardware needed"
    )
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: Ctrl-C)"
    )
    demo.add_argument("--config", type=Path, help="use this config instead of the built-in one")
    demo.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="default 18850; 0 picks a free port"
    )
    demo.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="K",
        help="run the plant K times faster than real time (default 1)",
    )
    demo.add_argument(
        "--status-every", type=float, default=3.0, metavar="SECONDS", help="status line period"
    )
    demo.add_argument(
        "--modbus-rtu",
        action="store_true",
        help="read the Modbus devices over a simulated RS-485 bus (Modbus RTU) instead of TCP",
    )
    demo.add_argument(
        "--mqtt-broker",
        metavar="HOST:PORT",
        help="broker for the MQTT sensors (default: start a private mosquitto if installed)",
    )
    demo.add_argument(
        "--cdu-control",
        choices=("direct", "setpoints"),
        help="drive the CDU's pump and valve (direct), or its own loops' setpoints (setpoints);"
        " default: as the config says",
    )

    probe = commands.add_parser("probe", help="read a device once through a profile")
    probe_kinds = probe.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    modbus = probe_kinds.add_parser("modbus", help="a Modbus device (TCP, or RTU on a serial port)")
    modbus.add_argument("target", metavar="HOST:PORT|/dev/ttyX")
    modbus.add_argument("--profile", required=True, metavar="NAME_OR_FILE")
    modbus.add_argument("--unit", type=int, default=1, metavar="N", help="unit/device id")
    modbus.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")
    modbus.add_argument("--json", action="store_true", help="print JSON instead of a table")
    modbus.add_argument("--raw", action="store_true", help="show each point's raw registers")
    modbus.add_argument("--baudrate", type=int, default=19200, help="RTU (default 19200)")
    modbus.add_argument("--parity", choices=("N", "E", "O"), default="E", help="RTU (default E)")
    modbus.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU")
    redfish = probe_kinds.add_parser(
        "redfish", help="a Redfish service: every point coolctl finds there"
    )
    redfish.add_argument("url", metavar="URL", help="the service origin, e.g. https://bmc.example")
    redfish.add_argument("--user", metavar="NAME", help="session login (needs --password-file)")
    redfish.add_argument("--password-file", type=Path, metavar="FILE")
    redfish.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA certificate(s) to verify the service"
    )
    redfish.add_argument(
        "--insecure", action="store_true", help="do not verify TLS (logged as a warning)"
    )
    redfish.add_argument("--json", action="store_true", help="print JSON instead of a table")
    from coolctl.cli import probe_snmp

    probe_snmp.add_parser(probe_kinds)

    sim = commands.add_parser("sim", help="the simulated rack")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)
    add_sim_run_commands(sim_commands)
    serve = sim_commands.add_parser(
        "serve", help="serve the simulated devices of a config on loopback"
    )
    serve.add_argument("--config", "-c", type=Path, help="config whose devices to simulate")
    serve.add_argument(
        "--port", type=int, metavar="PORT", help="0 picks free ports (default: the config's)"
    )
    serve.add_argument("--time-scale", type=float, default=1.0, metavar="K")
    serve.add_argument("--load", type=float, default=0.6, help="starting server load, 0..1")
    serve.add_argument("--duration", type=float, metavar="SECONDS")
    serve.add_argument(
        "--mqtt-broker",
        metavar="HOST:PORT",
        help="publish the MQTT sensors there (default: the config's [mqtt] broker)",
    )
    serve.add_argument(
        "--modbus-rtu", action="store_true", help="serve the Modbus devices on a virtual RTU bus"
    )
    serve.add_argument(
        "--listen-beyond-loopback",
        action="store_true",
        help="let simulated devices listen on the config's non-loopback addresses (anyone who"
        " reaches them can command them)",
    )
    serve.add_argument(
        "--power-shelves",
        type=int,
        default=0,
        metavar="N",
        help="serve each Redfish PDU of the config as N power shelves (OCP ORv3) instead",
    )
    inject = sim_commands.add_parser(
        "inject", help="inject a fault into a running simulation (demo or sim serve)"
    )
    inject.add_argument(
        "kind",
        help="leak, pump_fail, pump_restore, pump_degrade, sensor_stuck, sensor_noise,"
        " sensor_drift, link_loss, response_delay, read_fail, load, facility_water, psu_fail,"
        " mains_loss, clear",
    )
    inject.add_argument("--rack", metavar="R")
    inject.add_argument("--device", metavar="D")
    inject.add_argument("--point", metavar="P", help="for sensor faults")
    inject.add_argument("--value", type=float, metavar="V", help="the number the kind takes")
    inject.add_argument("--duration", type=float, metavar="S", help="undo after S seconds")
    inject.add_argument(
        "--sim",
        metavar="URL",
        help="the simulation's `control http://...` (default: the one behind the daemon of"
        " $COOLCTL_SOCKET, else the only one running)",
    )
    add_identify_command(commands)
    add_operator_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> ExitCode:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "operator_command", None):
        return run_operator_command(args, parser)
    try:
        if args.command == "check-config":
            return check_config(args.files)
        if args.command == "config":
            import json

            from coolctl.config import json_schema

            print(json.dumps(json_schema(), indent=2))
            return ExitCode.OK
        if args.command == "identify":
            from coolctl.cli.identify import run_identify

            return run_identify(args)
        if args.command == "run":
            from coolctl.daemon.run import run_daemon

            return asyncio.run(run_daemon(args.config, args.metrics_listen, args.log_format))
        if args.command == "demo":
            from coolctl.tools.demo import run_demo

            return asyncio.run(
                run_demo(
                    duration_s=args.duration,
                    config_path=args.config,
                    metrics_port=args.metrics_port,
                    time_scale=args.time_scale,
                    status_every_s=args.status_every,
                    mqtt_broker=args.mqtt_broker,
                    cdu_control=args.cdu_control,
                    modbus_rtu=args.modbus_rtu,
                )
            )
        if args.command == "probe" and args.protocol == "redfish":
            from coolctl.cli.probe_redfish import probe_redfish

            return asyncio.run(
                probe_redfish(
                    args.url, args.user, args.password_file, args.ca, args.insecure, args.json
                )
            )
        if args.command == "probe" and args.protocol == "snmp":
            from coolctl.cli import probe_snmp

            return asyncio.run(probe_snmp.probe_snmp(args))
        if args.command == "probe":
            from coolctl.cli.probe_modbus import BusOptions, probe_modbus

            bus = BusOptions(args.baudrate, args.parity, args.stopbits)
            return asyncio.run(
                probe_modbus(
                    args.target, args.profile, args.unit, args.timeout, args.json, args.raw, bus
                )
            )
        if args.command == "sim":
            status = run_sim_command(args)
            if status is not None:
                return status
        if args.command == "sim" and args.sim_command == "inject":
            from coolctl.tools.demo import inject_fault

            return asyncio.run(
                inject_fault(
                    args.kind,
                    sim_url=args.sim,
                    rack=args.rack,
                    device=args.device,
                    point=args.point,
                    value=args.value,
                    duration_s=args.duration,
                )
            )
        if args.command == "sim":
            from coolctl.tools.demo import serve_simulation

            return asyncio.run(
                serve_simulation(
                    args.config,
                    args.port,
                    args.time_scale,
                    args.load,
                    args.duration,
                    args.mqtt_broker,
                    args.modbus_rtu,
                    power_shelves=args.power_shelves,
                    allow_remote=args.listen_beyond_loopback,
                )
            )
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK
    return ExitCode.USAGE


def check_config(files: Sequence[Path]) -> ExitCode:
    status = ExitCode.OK
    for path in files:
        config = load_or_report(path)
        if config is None:
            status = ExitCode.BAD
            continue
        devices = sum(len(rack.devices) for rack in config.racks.values())
        loops = sum(len(rack.loops) for rack in config.racks.values())
        print(f"{path}: ok ({len(config.racks)} racks, {devices} devices, {loops} loops)")
    return status


if __name__ == "__main__":
    sys.exit(main())
