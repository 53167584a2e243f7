"""HTTPS front-end of a simulated Redfish service: sessions, ETags, PATCH, actions, faults.

One `RedfishDeviceServer` serves one `RedfishService` (a BMC, a CDU, a PDU) on its own port,
the way every real BMC is its own HTTPS endpoint. It uses aiohttp's low-level server, not an
Application with a router, so that 256 BMCs in one process cost 256 sockets and little else;
the resource tree does the routing. All servers may share one `ssl.SSLContext`.

HTTP behaviour, as DSP0266 asks and real BMCs do:

- Authentication: `X-Auth-Token` of a session (POST `SessionService/Sessions`, DELETE to log
  out) or HTTP Basic. Without either, 401, except for the service root, `/redfish`,
  `/redfish/v1/odata`, `/redfish/v1/$metadata` and the session login itself.
- ETags: every resource has one (`ETag` header and `@odata.etag`), computed from everything but
  its readings. A PATCH with `If-Match` (or `@odata.etag` in the body) that does not match gets
  412. `require_if_match=True` makes a PATCH without one get 428; by default it is optional.
- `Allow` on every resource: GET, HEAD, and PATCH only where something is writable, so that
  profile validators can judge writability. Methods not allowed get 405 with that header.
- PATCH is all or nothing: out of range, read-only, unknown or mistyped properties get 400
  with one Base registry message each in `@Message.ExtendedInfo`, and nothing is applied.
- Query parameters: `$select` and `only` are implemented; any other `$` parameter gets 501.

Fault hooks for tests and HIL runs, as `ModbusDeviceServer` has them: `set_offline`,
`set_response_delay`, `fail_reads` (a point's readings fail with 500), `fail_requests` (every
request gets e.g. 503 with Retry-After), `set_malformed` (hostile JSON bodies) and
`expire_sessions`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from coolctl.simulators.redfish_messages import RedfishError, error_body, message
from coolctl.simulators.redfish_resources import (
    Json,
    ReadFailure,
    Reply,
    RequestInfo,
    Resource,
    etag_of,
    metadata_document,
    plan_patch,
    select,
)
from coolctl.simulators.redfish_service import ROOT, SESSIONS, RedfishService

__all__ = ["MALFORMED_MODES", "MalformedMode", "RedfishDeviceServer"]

LOG = logging.getLogger("coolctl.simulators.redfish")

MalformedMode = Literal["wrong_types", "nulls", "huge_arrays", "truncated", "not_json"]
MALFORMED_MODES: tuple[str, ...] = ("wrong_types", "nulls", "huge_arrays", "truncated", "not_json")
HUGE_ARRAY_LENGTH = 100_000
RESET_OFFLINE_S = 1.0
_PUBLIC_GETS = frozenset({"/redfish", f"{ROOT}/", f"{ROOT}/odata", f"{ROOT}/$metadata"})


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket bound now, so the port is known and a restart can reuse it."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _normalise(path: str) -> str:
    if path in (ROOT, f"{ROOT}/"):
        return f"{ROOT}/"
    return path.rstrip("/") or "/"


def _hostile(body: Any, mode: str) -> Any:
    """A body turned bad the way `mode` says; the OData identity is kept, so links still work."""
    if isinstance(body, dict):
        return {
            k: (v if k in ("@odata.id", "@odata.type") else _hostile(v, mode))
            for k, v in body.items()
        }
    if isinstance(body, list):
        if mode == "huge_arrays":
            first = _hostile(body[0], mode) if body else None
            return [first] * HUGE_ARRAY_LENGTH
        return [_hostile(v, mode) for v in body]
    if mode == "nulls":
        return None
    if mode == "wrong_types":
        if isinstance(body, bool):
            return "yes" if body else "no"
        if isinstance(body, int | float):
            return f"{body}"
        if isinstance(body, str):
            return len(body)
        return False
    return body


class RedfishDeviceServer:
    """One simulated Redfish service on HTTPS. Several share an event loop, each on its port."""

    def __init__(
        self,
        service: RedfishService,
        *,
        ssl_context: ssl.SSLContext,
        certificate_file: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        require_if_match: bool = False,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.require_if_match = require_if_match
        self.requests = 0
        self._ssl = ssl_context
        self._certificate_pem = certificate_file.read_text()
        self._web: web.Server | None = None  # made in start(): it wants a running loop
        self._listener: asyncio.Server | None = None
        self._opening: asyncio.Task[None] | None = None
        self._running = False
        self._offline = False
        self._delay_s = 0.0
        self._failing_point: str | None = None
        self._failure: tuple[int, float | None] | None = None
        self._failures_left: int | None = None
        self._malformed: str | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        hooks = service.hooks
        hooks.port = lambda: self.port
        hooks.reset = self._reboot_soon
        hooks.certificate_pem = lambda: self._certificate_pem
        hooks.replace_certificate = self._replace_certificate

    # ---- identity ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """Where clients point: `https://host:port` (the service root is `/redfish/v1/`)."""
        return f"https://{self.address}"

    @property
    def offline(self) -> bool:
        return self._offline

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; afterwards `port` is the real port."""
        if self._running:
            raise RuntimeError(f"redfish service {self.url} already started")
        self._running = True
        self._offline = False
        self._web = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._go_online()
        assert self._opening is not None
        try:
            await self._opening
        except BaseException:
            self._running = False
            self._close_listener()
            raise
        LOG.info("redfish service %s serving on %s", self.service.identity.name, self.url)

    async def stop(self) -> None:
        """Stop this service only: its listener, connections and timers."""
        if not self._running:
            return
        self._running = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._opening is not None and not self._opening.done():
            with contextlib.suppress(Exception):
                await self._opening
        self._close_listener()
        if self._web is not None:
            await self._web.shutdown(0.5)
        await asyncio.sleep(0)

    async def __aenter__(self) -> RedfishDeviceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _go_online(self) -> None:
        if self._listener is not None:
            return
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self._opening = loop.create_task(self._open(sock))

    async def _open(self, sock: socket.socket) -> None:
        assert self._web is not None
        try:
            listener = await asyncio.get_running_loop().create_server(
                self._web, sock=sock, ssl=self._ssl
            )
        except BaseException:
            sock.close()
            raise
        if self._offline or not self._running:
            listener.close()  # went offline while the listener was opening
            return
        self._listener = listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for connection in self._web.connections if self._web is not None else []:
            connection.force_close()

    # ---- faults -----------------------------------------------------------------------------

    def set_offline(self, offline: bool) -> None:
        """Link loss: drop clients and refuse new ones; back online on the same port."""
        if not self._running:
            raise RuntimeError(f"redfish service {self.url} is not running")
        if offline == self._offline:
            return
        self._offline = offline
        if offline:
            self._close_listener()
        else:
            self._go_online()
        LOG.info("redfish service %s %s", self.url, "offline" if offline else "back online")

    def set_response_delay(self, seconds: float) -> None:
        """Delay every reply, as a busy BMC does."""
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError("response delay must be a finite number >= 0")
        self._delay_s = seconds

    def fail_reads(self, point: str | None) -> None:
        """Any GET whose body needs this point (a coolctl.model name) fails with 500."""
        self._failing_point = point

    def fail_requests(
        self, status: int | None, retry_after_s: float | None = None, count: int | None = None
    ) -> None:
        """Answer every request with `status` (503 says Retry-After); None stops it.

        `count` limits it to the next so many requests, for retry tests.
        """
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status")
        self._failure = None if status is None else (status, retry_after_s)
        self._failures_left = count

    def set_malformed(self, mode: str | None) -> None:
        """Send hostile bodies on GET: one of MALFORMED_MODES, or None for well-formed ones."""
        if mode is not None and mode not in MALFORMED_MODES:
            raise ValueError(f"malformed mode {mode!r} is not one of {', '.join(MALFORMED_MODES)}")
        self._malformed = mode

    def expire_sessions(self) -> None:
        """Forget every session: clients must log in again (as after a BMC reboot)."""
        self.service.sessions.clear()

    def _reboot_soon(self) -> None:
        """Manager.Reset: after the reply is out, go offline, lose sessions, come back."""

        def down() -> None:
            if self._running and not self._offline:
                self.service.sessions.clear()
                self.set_offline(True)
                self._later(RESET_OFFLINE_S, up)

        def up() -> None:
            if self._running:
                self.set_offline(False)

        self._later(0.1, down)

    def _later(self, delay_s: float, callback: Callable[[], None]) -> None:
        timer: asyncio.TimerHandle | None = None

        def run() -> None:
            assert timer is not None
            self._timers.discard(timer)
            callback()

        timer = asyncio.get_running_loop().call_later(delay_s, run)
        self._timers.add(timer)

    def _replace_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Present a new certificate: a context of this server's own, listener restarted."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory() as folder:
            cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
            cert_file.write_bytes(cert_pem)
            key_file.write_bytes(key_pem)
            os.chmod(key_file, 0o600)
            context.load_cert_chain(cert_file, key_file)
        self._certificate_pem = cert_pem.decode()

        def restart() -> None:
            self._ssl = context
            if self._running and not self._offline:
                self._close_listener()
                self._go_online()

        self._later(0.1, restart)

    # ---- requests ---------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)
        try:
            self._injected_failure()
            return await self._dispatch(request)
        except RedfishError as error:
            return self._error(error)
        except ReadFailure as failure:
            LOG.debug("reads of %s fail (injected)", failure.point)
            return self._error(RedfishError(500, [message("InternalError")]))

    def _injected_failure(self) -> None:
        if self._failure is None:
            return
        if self._failures_left is not None:
            if self._failures_left <= 0:
                self._failure = self._failures_left = None
                return
            self._failures_left -= 1
        status, retry_after = self._failure
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(retry_after)))
        if status == 503:
            seconds = headers.get("Retry-After", "a few")
            raise RedfishError(status, [message("ServiceTemporarilyUnavailable", seconds)], headers)
        raise RedfishError(status, [message("InternalError")], headers)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = _normalise(request.path)
        method = request.method.upper()
        if method in ("GET", "HEAD") and path in _PUBLIC_GETS and path != f"{ROOT}/":
            return self._public(path)
        resource = self.service.tree.get(path)
        public = (method in ("GET", "HEAD") and path == f"{ROOT}/") or (
            method == "POST" and path == SESSIONS
        )
        who = RequestInfo(request.remote or "", "") if public else self._authenticate(request)
        if resource is None:
            raise RedfishError(404, [message("InvalidURI", path)])
        if method not in resource.methods:
            raise RedfishError(
                405, [message("OperationNotAllowed")], {"Allow": ", ".join(resource.methods)}
            )
        if method in ("GET", "HEAD"):
            return self._get(path, resource, request.query)
        body = await self._body(request)
        if method == "PATCH":
            return self._patch(path, resource, body, request)
        if method == "POST":
            assert resource.post is not None
            return self._reply(resource.post(body, who), resource)
        assert resource.delete is not None
        return self._reply(resource.delete(who), resource)

    def _public(self, path: str) -> web.Response:
        if path == f"{ROOT}/$metadata":
            return web.Response(
                text=metadata_document(),
                content_type="application/xml",
                headers={"OData-Version": "4.0", "Allow": "GET, HEAD"},
            )
        body: Json = {"v1": f"{ROOT}/"} if path == "/redfish" else self.service.odata_document()
        return self._json(200, body, {"Allow": "GET, HEAD"})

    def _authenticate(self, request: web.BaseRequest) -> RequestInfo:
        remote = request.remote or ""
        token = request.headers.get("X-Auth-Token")
        if token:
            session = self.service.sessions.by_token(token)
            if session is not None:
                return RequestInfo(remote, session.username, session.id)
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = (
                    base64.b64decode(auth[6:], validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if self.service.check_credentials(user, password):
                return RequestInfo(remote, user)
        raise RedfishError(
            401, [message("NoValidSession")], {"WWW-Authenticate": 'Basic realm="Redfish"'}
        )

    async def _body(self, request: web.BaseRequest) -> Any:
        raw = await request.read()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RedfishError(400, [message("MalformedJSON")]) from None

    def _render(self, resource: Resource) -> Json:
        assert resource.render is not None
        body = resource.render(self.service.readings(self._failing_point))
        body["@odata.etag"] = etag_of(body)
        return body

    def _get(self, path: str, resource: Resource, query: Mapping[str, str]) -> web.Response:
        unsupported = [k for k in query if k.startswith("$") and k != "$select"]
        if unsupported:
            raise RedfishError(501, [message("QueryNotSupported")])
        if "only" in query:
            resource, path = self._only(path, resource)
        body = self._render(resource)
        headers = {"ETag": body["@odata.etag"], "Allow": ", ".join(resource.methods)}
        if "$select" in query:
            body = select(body, [p for p in query["$select"].split(",") if p.strip()])
        return self._json(200, body, headers, hostile=True)

    def _only(self, path: str, resource: Resource) -> tuple[Resource, str]:
        """`?only` on a collection of one member answers with that member."""
        listing = self._render(resource)
        members = listing.get("Members")
        if not isinstance(members, list):
            raise RedfishError(400, [message("QueryNotSupportedOnResource")])
        if len(members) != 1:
            return resource, path
        member_path = str(members[0]["@odata.id"])
        member = self.service.tree.get(member_path)
        if member is None or member.render is None:
            return resource, path
        return member, member_path

    def _patch(
        self, path: str, resource: Resource, body: Any, request: web.BaseRequest
    ) -> web.Response:
        current = self._render(resource)
        etag = current["@odata.etag"]
        given = request.headers.get("If-Match")
        if given is None and isinstance(body, dict) and isinstance(body.get("@odata.etag"), str):
            given = body["@odata.etag"]
        if given is None and self.require_if_match:
            raise RedfishError(428, [message("PreconditionRequired")])
        if given is not None and not _etag_matches(given, etag):
            raise RedfishError(412, [message("PreconditionFailed")], {"ETag": etag})
        for writable, value in plan_patch(resource, current, body):
            try:
                writable.apply(value)
            except ValueError as exc:
                raise RedfishError(400, [message("GeneralError", resolution=str(exc))]) from exc
        self.service.log_write(path)
        updated = self._render(resource)
        headers = {"ETag": updated["@odata.etag"], "Allow": ", ".join(resource.methods)}
        return self._json(200, updated, headers)

    def _reply(self, reply: Reply, resource: Resource) -> web.Response:
        headers = {"Allow": ", ".join(resource.methods), **reply.headers}
        if reply.body is None:
            return web.Response(status=reply.status, headers={"OData-Version": "4.0", **headers})
        return self._json(reply.status, reply.body, headers)

    def _json(
        self, status: int, body: Json, headers: Mapping[str, str], *, hostile: bool = False
    ) -> web.Response:
        mode = self._malformed if hostile else None
        if mode in ("wrong_types", "nulls", "huge_arrays"):
            body = _hostile(body, mode)
        data = json.dumps(body).encode()
        if mode == "truncated":
            data = data[: len(data) // 2]
        elif mode == "not_json":
            data = b"<html><body>Internal Server Error</body></html>"
        return web.Response(
            status=status,
            body=data,
            headers={"OData-Version": "4.0", "Cache-Control": "no-cache", **headers},
            content_type="application/json",
            charset="utf-8",
        )

    def _error(self, error: RedfishError) -> web.Response:
        return self._json(error.status, error_body(error.messages), error.headers)


def _etag_matches(given: str, current: str) -> bool:
    """If-Match: `*`, or one of a comma-separated list, compared weakly (W/ ignored)."""
    tags = [t.strip() for t in given.split(",")]
    bare = current.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == bare for t in tags)
