"""`coolctl demo` and `coolctl sim serve`: the simulated rack, with or without the daemon.

The demo needs nothing but an install: it starts the simulated devices on free loopback ports,
points the built-in config at them, runs the daemon, and prints a status line every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.resources
import logging
import os
import secrets
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import aiohttp

from coolctl.config import DEFAULT_METRICS_PORT, CduControl, Config, MqttDeviceConfig
from coolctl.daemon.logs import setup_logging
from coolctl.daemon.run import stop_on_signals
from coolctl.daemon.runtime import Daemon, RackRuntime
from coolctl.daemon.service import Service, ServiceOptions
from coolctl.exitcodes import ExitCode
from coolctl.model import CduControlMode, PointId, RackMode, Source, Unit
from coolctl.rack.check import load_or_report
from coolctl.rack.setpoints import SetpointPlan
from coolctl.simulators.control_server import endpoint, inject
from coolctl.simulators.live import LiveSimulation
from coolctl.simulators.live import Service as SimService
from coolctl.tools.broker import Mosquitto, MosquittoError, find_mosquitto
from coolctl.tools.rtu_sim import serve_over_rtu, with_rtu_services
from coolctl.tools.simfinder import advertised, choose, live_adverts
from coolctl.tools.simrack import (
    sim_specs,
    with_broker,
    with_services,
    without_mqtt,
)

log = logging.getLogger("coolctl.tools.demo")


def builtin_config_path() -> Path:
    """The demo rack's config, shipped inside the package."""
    return Path(str(importlib.resources.files("coolctl") / "data" / "demo-rack.toml"))


def _load(config_path: Path | None) -> Config | None:
    return load_or_report(config_path or builtin_config_path())


async def _wait(stop: asyncio.Event, duration_s: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration_s)


def _needs_mqtt(config: Config) -> bool:
    devices = (d for r in config.racks.values() for d in r.devices.values())
    return any(isinstance(d, MqttDeviceConfig) for d in devices)


async def _broker(
    config: Config, requested: str | None, stack: AsyncExitStack, *, private: bool = False
) -> tuple[Config, str | None]:
    """The broker for the MQTT sensors: the one asked for, or a private Mosquitto; without
    either, the config loses its MQTT devices and the demo says how to get them back.

    With `private` (the demo, whose daemon is the only other client), the private broker
    takes no anonymous clients: the daemon and the simulated sensors each get an account with
    a random password, and the sensors' broker address carries theirs (USER:PASSWORD@)."""
    if not _needs_mqtt(config):
        return config, None
    if requested is not None:
        return with_broker(config, requested), requested
    if find_mosquitto() is None:
        print(
            "mqtt off: mosquitto is not installed (apt-get install mosquitto), or pass"
            " --mqtt-broker HOST:PORT; running without the MQTT sensors",
            flush=True,
        )
        return without_mqtt(config), None
    if private:
        return await _private_broker(config, stack)
    broker = Mosquitto()
    await broker.start()
    stack.push_async_callback(broker.stop)
    return with_broker(config, broker.address), broker.address


async def _private_broker(config: Config, stack: AsyncExitStack) -> tuple[Config, str]:
    daemon_password, sensor_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    broker = Mosquitto(users={"coolctl": daemon_password, "sensors": sensor_password})
    await broker.start()
    stack.push_async_callback(broker.stop)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coolctl-demo-mqtt-")))
    password_file = folder / "mqtt-password"
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(daemon_password)
    config = with_broker(config, broker.address)
    assert config.mqtt is not None
    mqtt = replace(config.mqtt, username="coolctl", password_file=password_file)
    return replace(config, mqtt=mqtt), f"sensors:{sensor_password}@{broker.address}"


async def serve_simulation(
    config_path: Path | None,
    port: int | None,
    time_scale: float,
    load: float,
    duration_s: float | None,
    mqtt_broker: str | None = None,
    modbus_rtu: bool = False,
    *,
    power_shelves: int = 0,
    allow_remote: bool = False,
) -> ExitCode:
    """Serve the simulated devices of a config and print one line per service (with
    `modbus_rtu`, the Modbus devices also on one virtual RTU bus, printed instead)."""
    config = _load(config_path)
    if config is None:
        return ExitCode.BAD
    setup_logging("text", "WARNING")
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with AsyncExitStack() as stack:
        try:
            if mqtt_broker is None and config.mqtt is not None and _needs_mqtt(config):
                mqtt_broker = f"{config.mqtt.host}:{config.mqtt.port}"
            config, broker = await _broker(config, mqtt_broker, stack)
            simulation = LiveSimulation(
                sim_specs(config, port=port, load=load, power_shelves=power_shelves),
                time_scale=time_scale,
                mqtt_broker=broker,
                control=endpoint(port=0),
                allow_remote=allow_remote,
            )
            await simulation.start()
        except (OSError, ValueError, MosquittoError) as exc:
            print(f"cannot start the simulated devices: {exc}", file=sys.stderr)
            return ExitCode.UNREACHABLE
        stack.push_async_callback(simulation.stop)
        services = await _rtu_services(simulation, stack, modbus_rtu)
        for service in services:
            print(service.line(), flush=True)
        with advertised(simulation.control_url, token=simulation.control_token):
            await _wait(stop, duration_s)
    return ExitCode.OK


async def _rtu_services(
    simulation: LiveSimulation, stack: AsyncExitStack, modbus_rtu: bool
) -> list[SimService]:
    """The simulation's services; with `modbus_rtu`, its Modbus ones served over RTU instead."""
    if not modbus_rtu:
        return list(simulation.services)
    rtu = await serve_over_rtu(simulation, stack)
    return [s for s in simulation.services if s.protocol != "modbus"] + rtu


async def inject_fault(
    kind: str,
    *,
    sim_url: str | None,
    rack: str | None,
    device: str | None,
    point: str | None,
    value: float | None,
    duration_s: float | None,
) -> ExitCode:
    """`coolctl sim inject`: apply a fault to a running simulation (demo or sim serve): the
    one `--sim` names, else the one behind the daemon of $COOLCTL_SOCKET, else the only one."""
    url = sim_url
    token = os.environ.get("COOLCTL_SIM_TOKEN")
    adverts = live_adverts()
    if url is None:
        try:
            url = choose(adverts, os.environ.get("COOLCTL_SOCKET")).control_url
        except LookupError as exc:
            print(f"coolctl sim inject: {exc}", file=sys.stderr)
            return ExitCode.UNREACHABLE
    if token is None:  # the token the simulation at that URL advertised with it
        token = next((a.token for a in adverts if a.control_url == url), None)
    try:
        done = await inject(
            url,
            kind,
            rack=rack,
            device=device,
            point=point,
            value=value,
            duration_s=duration_s,
            token=token,
        )
    except ValueError as exc:
        print(f"coolctl sim inject: {exc}", file=sys.stderr)
        return ExitCode.BAD
    except (aiohttp.ClientError, OSError) as exc:
        print(f"coolctl sim inject: cannot reach the simulation at {url}: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    print(f"{url}: {done}")
    return ExitCode.OK


async def run_demo(
    *,
    duration_s: float | None = None,
    config_path: Path | None = None,
    metrics_port: int | None = None,
    time_scale: float = 1.0,
    status_every_s: float = 3.0,
    mqtt_broker: str | None = None,
    modbus_rtu: bool = False,
    cdu_control: str | None = None,
) -> ExitCode:
    """Simulated rack + daemon + metrics, with a live status line, until Ctrl-C or duration.
    With `modbus_rtu` the daemon reads its Modbus devices over a simulated RTU bus.

    `cdu_control` ("direct" or "setpoints") overrides every rack's: in setpoint mode the
    simulated CDU runs its own loops on the setpoints the daemon writes."""
    config = _load(config_path)
    if config is None:
        return ExitCode.BAD
    if cdu_control is not None:
        control = CduControl(cdu_control)
        racks = {key: replace(rack, cdu_control=control) for key, rack in config.racks.items()}
        config = replace(config, racks=racks)
    setup_logging(config.daemon.log_format, "WARNING")
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with AsyncExitStack() as stack:
        config, broker = await _broker(config, mqtt_broker, stack, private=True)
        # The demo rack starts at 60 % load with the valve a little too open, so that both
        # loops have visible work to do in the first half minute.
        specs = sim_specs(config, port=0, load=0.6, plant={"initial_valve": 0.55})
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coolctl-demo-")))
        simulation = LiveSimulation(
            specs,
            time_scale=time_scale,
            mqtt_broker=broker,
            control=endpoint(port=0),
            tls_dir=state / "tls",
        )
        await simulation.start()
        stack.push_async_callback(simulation.stop)
        sim_services = await _rtu_services(simulation, stack, modbus_rtu)
        for sim_service in sim_services:
            print(sim_service.line(), flush=True)
        config = with_services(config, simulation.services, state)
        config = with_rtu_services(config, sim_services)
        options = ServiceOptions(state / "coolctl.db", state / "control.sock")
        port = DEFAULT_METRICS_PORT if metrics_port is None else metrics_port
        service = Service(_with_metrics_port(config, port), options)
        try:
            await service.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or metrics_port is not None:
                raise
            print(f"port {port} is in use; serving metrics on a free port instead", flush=True)
            service = Service(_with_metrics_port(config, 0), options)
            await service.start()
        stack.push_async_callback(service.stop)
        assert service.metrics is not None
        print(f"metrics {service.metrics.url}", flush=True)
        print(f"socket {options.socket_path}", flush=True)
        print(
            f"time scale {time_scale:g}x; in another terminal: "
            f"COOLCTL_SOCKET={options.socket_path} coolctl top; coolctl sim inject leak;"
            " Ctrl-C stops",
            flush=True,
        )
        status = asyncio.create_task(_print_status(service.daemon, status_every_s))
        try:
            with advertised(simulation.control_url, options.socket_path, simulation.control_token):
                await _wait(stop, duration_s)
        finally:
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
    print("demo stopped", flush=True)
    return ExitCode.OK


def _with_metrics_port(config: Config, port: int) -> Config:
    return replace(config, daemon=replace(config.daemon, metrics_listen=("127.0.0.1", port)))


async def _print_status(daemon: Daemon, every_s: float) -> None:
    started = daemon.clock()
    while True:
        await asyncio.sleep(every_s)
        elapsed = daemon.clock() - started
        for line in status_lines(daemon):
            print(f"[{elapsed:6.1f}s] {line}", flush=True)


_UNITS = {
    Unit.CELSIUS: "°C",
    Unit.LITRE_PER_MINUTE: " L/min",
    Unit.PASCAL: " Pa",
    Unit.WATT: " W",
    Unit.RATIO: "",
}


def loop_source(rack: RackRuntime, loop_id: str) -> str:
    """Who drives a loop's actuator now: interlock, failsafe, override (of the actuator or of
    the setpoint), manual (the loops do not run) or auto; as the supervisor last commanded."""
    loop = rack.controller.loops[loop_id]
    actuator = loop.spec.actuator
    point = PointId(rack.config.id, actuator.device, actuator.name)
    status = rack.supervisor.state.actuators.get(point)
    source = status.source if status is not None else None
    if source in (Source.INTERLOCK, Source.FAILSAFE, Source.OVERRIDE):
        return str(source)
    if rack.mode == RackMode.MANUAL:
        return "manual"
    if loop.setpoint_override is not None:
        return "override"
    return "auto"


def status_lines(daemon: Daemon) -> list[str]:
    """One compact line per rack: coolant, pump, power, and each loop against its setpoint."""
    now = daemon.clock()
    lines = []
    for rack_id, rack in daemon.racks.items():

        def show(
            device: str, point: str, fmt: str, scale: float = 1.0, rack_id: str = rack_id
        ) -> str:
            reading = daemon.store.current(PointId(rack_id, device, point), now)
            if reading.value is None or not reading.usable:
                return reading.quality.value
            return fmt.format(reading.value * scale)

        kinds: dict[str, str] = {}  # the first device of each kind: the one the loops use
        for (rack_of, device), handle in daemon.devices.items():
            if rack_of == rack_id:
                kinds.setdefault(handle.kind, device)
        cdu, pdu, sensors = kinds.get("cdu"), kinds.get("pdu"), kinds.get("sensor")
        parts = [rack_id]
        if cdu:
            parts += [
                f"supply {show(cdu, 'supply_temperature', '{:.1f}')}°C",
                f"return {show(cdu, 'return_temperature', '{:.1f}')}°C",
                f"flow {show(cdu, 'flow', '{:.0f}')} L/min",
                f"ΔP {show(cdu, 'differential_pressure', '{:.0f}', 1e-3)} kPa",
                f"pump speed {show(cdu, 'pump_speed', '{:.0f}', 100)}%",
                f"valve {show(cdu, 'valve_position', '{:.0f}', 100)}%",
            ]
        if pdu:
            parts.append(f"power {show(pdu, 'power', '{:.1f}', 1e-3)} kW")
        if rack.caps_w is not None:
            budget = rack.power_budget_w
            of = f"/{budget / 1e3:.0f}" if budget is not None else ""
            parts.append(f"caps {rack.caps_w / 1e3:.1f}{of} kW")
        watch = rack.step.chips
        if watch.servers:
            hottest = watch.summary()["hottest_c"]
            shown = f"{hottest:.1f}°C" if isinstance(hottest, float) else "-"
            parts.append(
                f"chips max {shown}, throttling {len(watch.throttling)}/{len(watch.servers)}"
            )
        if sensors:
            parts.append(f"inlet {show(sensors, 'inlet_temperature', '{:.1f}')}°C")
            parts.append(f"leak {show(sensors, 'leak_detected', '{:.0f}')}")
        decision = rack.decision
        if decision is not None and (decision.interlocks or decision.failsafe):
            held = sorted(decision.interlocks) + (["failsafe"] if decision.failsafe else [])
            parts.append("SAFETY " + ",".join(held))
        plan = getattr(rack.controller, "plan", None)
        if isinstance(plan, SetpointPlan):  # setpoint mode: what the CDU's own loops do
            point = PointId(rack_id, plan.device, "cdu_control_mode")
            mode = daemon.store.current(point, now).value
            code = None if mode is None else round(mode)
            known = {each.value for each in CduControlMode}
            parts.append(f"CDU {CduControlMode(code).name.lower() if code in known else '?'}")
            if plan.device in rack.step.cdu.local_devices:
                parts.append("LOCAL: coolctl writes nothing")
        for loop_id, loop in rack.controller.loops.items():
            state = loop.state
            measured = loop.spec.measurement.unit
            unit = _UNITS.get(measured, "") if measured is not None else ""
            seen = "—" if state.measurement is None else f"{state.measurement:.1f}"
            parts.append(
                f"{loop_id} loop {seen}/{state.setpoint:g}{unit} {loop_source(rack, loop_id)}"
            )
        lines.append(" | ".join(parts))
    return lines
