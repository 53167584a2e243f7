"""`coolctl run`: the daemon's life from config to clean shutdown, as systemd runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import replace
from pathlib import Path

from coolctl.config import Config, parse_host_port
from coolctl.daemon.logs import setup_logging
from coolctl.daemon.service import (
    Service,
    ServiceOptions,
    control_socket,
    run_until,
    state_directory,
)
from coolctl.exitcodes import ExitCode
from coolctl.ops.protocol import ControlError
from coolctl.rack.check import load_or_report

log = logging.getLogger("coolctl.daemon.run")


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT ask for a clean stop (the loop finishes writes in flight)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def reload_on_sighup(service: Service) -> None:
    """SIGHUP reloads the config (systemctl reload): validated first, old one kept if bad."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        with contextlib.suppress(ControlError):  # already logged and reported as an event
            await service.reload()

    def on_hup() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)


def service_options(config: Config) -> ServiceOptions:
    return ServiceOptions(
        store_path=state_directory(config) / "coolctl.db",
        socket_path=control_socket(config),
    )


async def run_daemon(
    config_path: Path, metrics_listen: str | None = None, log_format: str | None = None
) -> ExitCode:
    config = load_or_report(config_path)
    if config is None:
        return ExitCode.BAD
    setup_logging(log_format or config.daemon.log_format, config.daemon.log_level)
    if metrics_listen:
        host, port = parse_host_port(metrics_listen)
        listen = replace(config.daemon, metrics_listen=(host, port))
        config = replace(config, daemon=listen)
    service = Service(config, service_options(config))
    stop = asyncio.Event()
    stop_on_signals(stop)
    reload_on_sighup(service)

    async def started() -> None:
        metrics = service.metrics.url if service.metrics else "off"
        log.info(
            "config %s loaded; metrics at %s; control socket %s",
            config_path,
            metrics,
            service.options.socket_path,
        )
        await stop.wait()
        log.info("stopping")

    try:
        await run_until(service, stop, started)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return ExitCode.UNREACHABLE
    log.info("stopped")
    return ExitCode.OK
