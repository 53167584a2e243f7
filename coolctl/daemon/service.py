"""The whole daemon as systemd runs it: control, metrics, store, control API, MQTT, notify.

`Service` owns the parts and their order: the store opens first (overrides survive anything),
the daemon polls once and starts its loops, the listeners bind, and only then is READY=1 sent.
SIGHUP reloads: the new config is validated first; a bad one is rejected and the old one keeps
running. Stopping goes the other way round and hands the actuators back as configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from coolctl.config import Config, ConfigError
from coolctl.daemon.http import MetricsServer, server_ssl_context
from coolctl.daemon.plane import DaemonControlPlane
from coolctl.daemon.runtime import Daemon
from coolctl.daemon.systemd import Notifier, WatchdogGate
from coolctl.model import Event, Severity
from coolctl.ops.api import ControlApi
from coolctl.ops.protocol import ControlError, JsonObject
from coolctl.ops.store import AsyncStore
from coolctl.rack.check import load_checked_config

log = logging.getLogger("coolctl.daemon.service")

DEFAULT_STATE_DIRECTORY = Path("/var/lib/coolctl")
DEFAULT_RUNTIME_DIRECTORY = Path("/run/coolctl")


def state_directory(config: Config) -> Path:
    """Where the store lives: the config's choice, systemd's StateDirectory, or /var/lib."""
    if config.daemon.state_directory is not None:
        return config.daemon.state_directory
    from_systemd = os.environ.get("STATE_DIRECTORY")
    return Path(from_systemd.split(":")[0]) if from_systemd else DEFAULT_STATE_DIRECTORY


def control_socket(config: Config) -> Path:
    """The control API socket: the config's choice, or RuntimeDirectory/control.sock."""
    if config.daemon.control_socket is not None:
        return config.daemon.control_socket
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    base = Path(runtime.split(":")[0]) if runtime else DEFAULT_RUNTIME_DIRECTORY
    return base / "control.sock"


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """Where the service keeps its state and listens; tests and the demo use temp dirs."""

    store_path: Path
    socket_path: Path | None  # None: no control API
    metrics: bool = True


class Service:
    """The running daemon and everything around it."""

    def __init__(
        self,
        config: Config,
        options: ServiceOptions,
        notifier: Notifier | None = None,
        load: Callable[[Path], Config] = load_checked_config,
    ) -> None:
        self.config = config
        self.options = options
        self.notifier = notifier or Notifier()
        self.load = load
        self.daemon = Daemon(config)
        self.store = AsyncStore(options.store_path)
        self.plane = DaemonControlPlane(self.daemon, self.store, self.reload)
        self.metrics: MetricsServer | None = None
        self.api: ControlApi | None = None
        self.watchdog: WatchdogGate | None = None
        self._reload_lock = asyncio.Lock()
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        """Start every part in order; if one fails, the ones already started are stopped."""
        stack = self._stack = AsyncExitStack()
        try:
            self.options.store_path.parent.mkdir(parents=True, exist_ok=True)
            await self.store.open()
            stack.push_async_callback(self.store.close)
            if self.options.metrics:
                daemon_config = self.config.daemon
                self.metrics = MetricsServer(
                    self.daemon,
                    daemon_config.metrics_host,
                    daemon_config.metrics_port,
                    server_ssl_context(daemon_config),
                )
                await self.metrics.start()
                stack.push_async_callback(self.metrics.stop)
            await self._start_daemon(self.daemon)
            stack.push_async_callback(lambda: self.daemon.stop())  # the daemon of the moment
            self.plane.start()
            stack.push_async_callback(self.plane.stop)
            if self.options.socket_path is not None:
                self.options.socket_path.parent.mkdir(parents=True, exist_ok=True)
                daemon_config = self.config.daemon
                self.api = ControlApi(
                    self.plane,
                    socket_path=self.options.socket_path,
                    socket_group=daemon_config.control_socket_group,
                    tcp_listen=daemon_config.control_listen,
                    token_file=daemon_config.control_token_file,
                    viewer_token_file=daemon_config.control_viewer_token_file,
                    operator_group=daemon_config.control_operator_group,
                    ssl_context=server_ssl_context(daemon_config),
                )
                await self.api.start()
                stack.push_async_callback(self.api.stop)
                if self.metrics is not None:
                    self.metrics.collectors.api_requests_by_status = self.api.requests_by_status
        except BaseException:
            await stack.aclose()
            raise
        self.notifier.ready(self._status_text())

    async def stop(self) -> None:
        """Stop in the reverse order: API, control plane, daemon (hand-back), metrics, store."""
        self.notifier.stopping()
        await self._stack.aclose()
        self.notifier.close()

    async def reload(self) -> JsonObject:
        """Apply the config file again; a bad file is rejected and the old config kept."""
        async with self._reload_lock:
            path = self.config.path
            if path is None:
                raise ControlError(400, "this daemon was not started from a config file")
            self.notifier.reloading()
            try:
                config = self.load(path)
                # Built before the running daemon is touched: a config the daemon cannot run
                # is refused here, and the rack stays under control.
                daemon = Daemon(config)
                if self.api is not None and self.api.tcp_listen is not None:
                    # Tokens are read again: a reload is how a changed token takes effect.
                    self.api.reload_tokens(
                        config.daemon.control_token_file, config.daemon.control_viewer_token_file
                    )
            except ConfigError as exc:
                raise self._rejected("; ".join(exc.problems)) from exc
            except Exception as exc:  # what Daemon() refuses (a secret it cannot read, say)
                raise self._rejected(str(exc) or type(exc).__name__) from exc
            old = self.daemon
            await old.stop(hand_back=False)  # the new loops take over from where devices stand
            try:
                await self._start_daemon(daemon)
            except Exception as exc:
                log.exception("the reloaded daemon did not start; the old config runs again")
                await daemon.stop(hand_back=False)
                # The stopped daemon's connections are closed for good (an MQTT connection
                # cannot start again): the old config runs again in a daemon built anew.
                old = Daemon(self.config)
                await self._start_daemon(old)
                self.daemon = old
                if self.metrics is not None:
                    self.metrics.collectors.daemon = old
                self._emit_all(
                    "reload_failed",
                    Severity.WARNING,
                    f"reload failed as it started ({exc}); the old config runs again",
                )
                self.notifier.ready(f"reload failed; {self._status_text()}")
                raise ControlError(
                    500, f"reload failed as it started, old config kept: {exc}"
                ) from exc
            self.config = config
            self.daemon = daemon
            if self.metrics is not None:
                self.metrics.collectors.daemon = daemon
            log.info("config %s reloaded", path)
            self._emit_all("reloaded", Severity.INFO, f"config {path} reloaded")
            self.notifier.ready(self._status_text())
            return {"config": str(path), "racks": sorted(config.racks)}

    def _rejected(self, message: str) -> ControlError:
        """Log, announce and report a reload that is refused; the running config stays."""
        log.error("reload rejected, the running config stays: %s", message)
        self._emit_all("reload_rejected", Severity.WARNING, f"reload rejected: {message}")
        self.notifier.ready(f"reload rejected; {self._status_text()}")
        return ControlError(400, f"config rejected, old config kept: {message}")

    async def _start_daemon(self, daemon: Daemon) -> None:
        await self.plane.attach(daemon)
        self.watchdog = WatchdogGate(self.notifier, list(daemon.racks))
        for rack in daemon.racks.values():
            rack.on_tick = self._ticked
        await daemon.start()

    def _ticked(self, rack: str, now: float) -> None:
        """Called by each rack after a completed tick: the watchdog pings from the loop itself."""
        if self.watchdog is not None:
            self.watchdog.progress(rack, now)
            self.watchdog.maybe_ping(now)

    def _emit_all(self, kind: str, severity: Severity, message: str) -> None:
        for rack in self.daemon.racks:
            self.daemon.emit(Event(rack, kind, severity, message, self.daemon.clock(), "daemon"))

    def _status_text(self) -> str:
        racks = self.daemon.racks
        return f"{len(racks)} racks, {len(self.daemon.devices)} devices"


async def run_until(
    service: Service, stop: asyncio.Event, on_started: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Start, wait for `stop`, stop — the stop happens even if waiting is cancelled."""
    await service.start()  # stops what it started if it fails
    try:
        if on_started is not None:
            await on_started()
        await stop.wait()
    finally:
        await service.stop()
