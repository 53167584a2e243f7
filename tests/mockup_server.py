"""A small Redfish service for tests: serves a DMTF mockup folder (or any resource tree) over
HTTP or HTTPS, with just enough of Redfish for coolctl's driver to be tested against it.

What it does: GET of every resource in the tree (DMTF "short form": `<path below
/redfish/v1>/index.json`, `$metadata/index.xml`), ETags, PATCH (merged into the stored body,
with If-Match), `$select` and `$expand` (only when the tree's service root advertises them in
ProtocolFeaturesSupported; 501 otherwise, as DSP0266 asks), session login (any credentials
unless `credentials` is set) and Basic authentication.

What tests need from it beyond a real service: counters (requests, requests in flight at
once, logins, logouts, PATCHes), and ways to misbehave (raw responses per path, delays,
status codes with Retry-After, revoked sessions, a forced 412).

This is test code: it shares nothing with the driver it tests.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from coolctl.simulators.tls import create_tls_material, server_ssl_context

ROOT = "/redfish/v1"
SESSIONS = "/redfish/v1/SessionService/Sessions"
MOCKUPS = Path(__file__).resolve().parent / "reference" / "redfish-mockups"


def normalize(path: str) -> str:
    """One spelling per resource: no trailing slash, no fragment."""
    path = path.split("#", 1)[0]
    return path.rstrip("/") or "/"


def load_mockup(folder: Path) -> tuple[dict[str, Any], str | None]:
    """The resources of a DMTF short-form mockup folder, by URI path, and its $metadata."""
    resources: dict[str, Any] = {}
    for index in sorted(folder.rglob("index.json")):
        relative = index.parent.relative_to(folder).as_posix()
        uri = ROOT if relative == "." else f"{ROOT}/{relative}"
        body = json.loads(index.read_text(encoding="utf-8"))
        if isinstance(body, dict):
            body.pop("@Redfish.Copyright", None)
        resources[normalize(uri)] = body
    metadata = folder / "$metadata" / "index.xml"
    return resources, metadata.read_text(encoding="utf-8") if metadata.exists() else None


@dataclass(frozen=True, slots=True)
class Raw:
    """A canned response: sent as is instead of the resource."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    query: str
    ts: float
    headers: Mapping[str, str]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class MockupServer:
    """Serves `resources` (URI path -> JSON body) as a Redfish service on 127.0.0.1."""

    def __init__(
        self,
        resources: Mapping[str, Any],
        *,
        metadata: str | None = None,
        credentials: tuple[str, str] | None = None,
        require_auth: bool = False,
        require_if_match: bool = False,
    ) -> None:
        self.resources: dict[str, Any] = {
            normalize(k): copy.deepcopy(v) for k, v in resources.items()
        }
        self.metadata = metadata
        self.credentials = credentials  # None: any user name and password are accepted
        self.require_auth = require_auth
        self.require_if_match = require_if_match
        # misbehaviour
        self.raw: dict[str, Raw] = {}  # path -> canned response
        self.delay_s: dict[str, float] = {}  # path -> delay before answering ("*" for all)
        self.status_for: dict[str, tuple[int, dict[str, str]]] = {}  # path ("*") -> status, headers
        self.hook: Handler | None = None  # may answer any request first
        self.fail_412: int = 0  # answer this many PATCHes with 412 whatever their If-Match
        # records
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.sessions: dict[str, str] = {}  # token -> session URI
        self.logins: list[tuple[str, str]] = []
        self.tokens: list[str] = []  # every session token ever issued
        self.logouts: list[str] = []
        self.patches: list[tuple[str, Any, str | None]] = []
        self._next_session = 1
        self._runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    def from_mockup(cls, name: str, **kwargs: Any) -> MockupServer:
        resources, metadata = load_mockup(MOCKUPS / name)
        return cls(resources, metadata=metadata, **kwargs)

    # ------------------------------------------------------------------------------------------

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MockupServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def revoke_sessions(self) -> None:
        self.sessions.clear()

    def requests(self, method: str = "GET", path: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.seen
            if s.method == method and (path is None or s.path == normalize(path))
        ]

    def etag(self, path: str) -> str:
        return _etag(self.resources[normalize(path)])

    # ------------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            path = normalize(request.path)
            self.seen.append(
                Seen(
                    request.method,
                    path,
                    request.query_string,
                    time.monotonic(),
                    dict(request.headers),
                )
            )
            delay = self.delay_s.get(path, self.delay_s.get("*", 0.0))
            if delay:
                await asyncio.sleep(delay)
            response = await handler(request)
            assert response is not None
            return response
        finally:
            self.in_flight -= 1

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = normalize(request.path)
        if self.hook is not None:
            answer = await self.hook(request)
            if answer is not None:
                return answer
        status = self.status_for.get(path) or self.status_for.get("*")
        if status is not None:
            code, headers = status
            return _error(code, f"status {code} for tests", headers)
        if path in self.raw:
            raw = self.raw[path]
            return web.Response(
                status=raw.status, body=raw.body, headers=raw.headers, content_type=raw.content_type
            )
        if request.method == "POST" and path == SESSIONS:
            return await self._login(request)
        if path not in (
            ROOT,
            "/redfish",
            f"{ROOT}/$metadata",
            f"{ROOT}/odata",
        ) and not self._authorized(request):
            return _error(401, "authentication required", {"WWW-Authenticate": 'Basic realm="x"'})
        if request.method == "DELETE" and path.startswith(SESSIONS + "/"):
            return self._logout(request, path)
        if request.method == "GET":
            return self._get(request, path)
        if request.method == "PATCH":
            return await self._patch(request, path)
        return _error(405, f"{request.method} not allowed")

    def _authorized(self, request: web.Request) -> bool:
        if not self.require_auth:
            return True
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            return token in self.sessions
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return self.credentials is None or (user, password) == self.credentials
        return False

    async def _login(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            user, password = str(body["UserName"]), str(body["Password"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "UserName and Password required")
        self.logins.append((user, password))
        if self.credentials is not None and (user, password) != self.credentials:
            return _error(401, "invalid credentials")
        token = secrets.token_hex(16)
        self.tokens.append(token)
        uri = f"{SESSIONS}/{self._next_session}"
        self._next_session += 1
        self.sessions[token] = uri
        session = {"@odata.id": uri, "Id": uri.rsplit("/", 1)[1], "UserName": user}
        return web.json_response(
            session, status=201, headers={"X-Auth-Token": token, "Location": uri}
        )

    def _logout(self, request: web.Request, path: str) -> web.StreamResponse:
        self.logouts.append(path)
        for token, uri in list(self.sessions.items()):
            if uri == path:
                del self.sessions[token]
                return web.Response(status=204)
        return _error(404, "no such session")

    def _features(self) -> dict[str, Any]:
        root = self.resources.get(ROOT)
        features = root.get("ProtocolFeaturesSupported") if isinstance(root, dict) else None
        return features if isinstance(features, dict) else {}

    def _get(self, request: web.Request, path: str) -> web.StreamResponse:
        if path == f"{ROOT}/$metadata" and self.metadata is not None:
            return web.Response(text=self.metadata, content_type="application/xml")
        if path not in self.resources:
            return _error(404, f"{path} not found")
        body = self.resources[path]
        etag = _etag(body)
        features = self._features()
        query = request.query
        if "$expand" in query:
            expand = features.get("ExpandQuery")
            if not isinstance(expand, dict) or not (
                expand.get("NoLinks") or expand.get("ExpandAll")
            ):
                return _error(501, "$expand is not supported")
            body = self._expand(body)
        if "$select" in query:
            if features.get("SelectQuery") is not True:
                return _error(501, "$select is not supported")
            wanted = {p.strip() for p in query["$select"].split(",")}
            body = {k: v for k, v in body.items() if k in wanted or k.startswith("@odata.")}
        return web.json_response(body, headers={"ETag": etag})

    def _expand(self, body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("Members"), list):
            return body
        expanded = dict(body)
        members = []
        for member in body["Members"]:
            uri = member.get("@odata.id") if isinstance(member, dict) else None
            target = self.resources.get(normalize(uri)) if isinstance(uri, str) else None
            if isinstance(target, dict):
                members.append({**target, "@odata.etag": _etag(target)})
            else:
                members.append(member)
        expanded["Members"] = members
        return expanded

    async def _patch(self, request: web.Request, path: str) -> web.StreamResponse:
        if path not in self.resources:
            return _error(404, f"{path} not found")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "not JSON")
        if_match = request.headers.get("If-Match")
        self.patches.append((path, body, if_match))
        if self.fail_412 > 0:
            self.fail_412 -= 1
            return _error(412, "precondition failed (forced)")
        current = self.resources[path]
        if if_match is not None and if_match != "*" and if_match != _etag(current):
            return _error(412, "precondition failed")
        if if_match is None and self.require_if_match:
            return _error(428, "If-Match required")
        self.resources[path] = merge(current, body)
        updated = self.resources[path]
        return web.json_response(updated, headers={"ETag": _etag(updated)})


def merge(target: Any, patch: Any) -> Any:
    """A Redfish PATCH: objects merge key by key, arrays element by element ({} keeps one)."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            merged[key] = merge(target.get(key), value)
        return merged
    if isinstance(target, list) and isinstance(patch, list):
        merged_list = list(target)
        for index, value in enumerate(patch):
            if index < len(merged_list):
                merged_list[index] = merge(merged_list[index], value)
            else:
                merged_list.append(value)
        return merged_list
    return copy.deepcopy(patch)


def _etag(body: Any) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return f'"{digest}"'


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {
        "error": {
            "code": "Base.1.0.GeneralError",
            "message": message,
            "@Message.ExtendedInfo": [],
        }
    }
    return web.json_response(body, status=status, headers=headers)


# ----------------------------------------------------------------------------------------------
# TLS: a throwaway CA and a server certificate for 127.0.0.1


@dataclass(frozen=True, slots=True)
class TestTls:
    ca_file: Path
    server_context: ssl.SSLContext


def make_tls(folder: Path) -> TestTls:
    """A CA (its certificate in `folder`) and a server context whose certificate it signed, for
    127.0.0.1 and localhost: the simulators' own TLS material."""
    material = create_tls_material(folder)
    return TestTls(material.ca_cert, server_ssl_context(material.server_cert, material.server_key))
