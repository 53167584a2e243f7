"""The daemon's HTTP listener: `/metrics` for Prometheus and `/healthz` for load balancers.

With `tls_cert_file` in the config it serves HTTPS (and the TCP control API does too), and with
`tls_client_ca_file` it asks every client for a certificate that CA signed.
"""

from __future__ import annotations

import ssl

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from coolctl.config import DaemonConfig
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


def server_ssl_context(config: DaemonConfig) -> ssl.SSLContext | None:
    """The TLS context of the daemon's TCP listeners, or None without tls_cert_file. TLS 1.2
    at least; with tls_client_ca_file, a client without a certificate from that CA is refused
    in the handshake."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    if config.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=str(config.tls_client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class MetricsServer:
    """Serves `/metrics` on host:port; port 0 picks a free one (see `.url`)."""

    def __init__(
        self, daemon: Daemon, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        registry, self.collectors = build_registry(daemon)  # .daemon is swapped on reload
        app = web.Application()
        app.router.add_get("/metrics", make_handler(registry))
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}/metrics"

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
