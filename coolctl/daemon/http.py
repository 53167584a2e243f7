"""The daemon's HTTP listener: `/metrics` for Prometheus and `/healthz` for load balancers."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from coolctl.daemon.metrics import DaemonMetrics, make_handler
from coolctl.daemon.runtime import Daemon


def build_registry(daemon: Daemon) -> tuple[CollectorRegistry, DaemonMetrics]:
    """A registry of our own: the daemon's collectors plus process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    collectors = DaemonMetrics(daemon, registry)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, collectors


class MetricsServer:
    """Serves `/metrics` on host:port; port 0 picks a free one (see `.url`)."""

    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        self.host = host
        self.port = port
        registry, self.collectors = build_registry(daemon)  # .daemon is swapped on reload
        app = web.Application()
        app.router.add_get("/metrics", make_handler(registry))
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
