"""`coolctl run`: the daemon's life from config to clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from coolctl.config import Config, parse_host_port
from coolctl.devices import load_or_report
from coolctl.http import MetricsServer
from coolctl.logs import setup_logging
from coolctl.runtime import Daemon

log = logging.getLogger("coolctl.daemon")


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT ask for a clean stop (the loop finishes writes in flight)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def serve_daemon(config: Config, stack: AsyncExitStack) -> tuple[Daemon, MetricsServer]:
    """Start a daemon and its metrics listener; both stop when `stack` closes."""
    daemon = Daemon(config)
    metrics = MetricsServer(daemon, config.daemon.metrics_host, config.daemon.metrics_port)
    await metrics.start()
    stack.push_async_callback(metrics.stop)
    await daemon.start()
    stack.push_async_callback(daemon.stop)
    return daemon, metrics


async def run_daemon(
    config_path: Path, metrics_listen: str | None = None, log_format: str | None = None
) -> int:
    config = load_or_report(config_path)
    if config is None:
        return 1
    setup_logging(log_format or config.daemon.log_format, config.daemon.log_level)
    if metrics_listen:
        host, port = parse_host_port(metrics_listen)
        config = replace(
            config, daemon=replace(config.daemon, metrics_host=host, metrics_port=port)
        )
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with AsyncExitStack() as stack:
        try:
            _, metrics = await serve_daemon(config, stack)
        except OSError as exc:
            log.error(
                "cannot listen for metrics on %s:%s: %s",
                config.daemon.metrics_host,
                config.daemon.metrics_port,
                exc.strerror or exc,
            )
            return 3
        log.info("config %s loaded; metrics at %s", config_path, metrics.url)
        await stop.wait()
        log.info("stopping")
    return 0
