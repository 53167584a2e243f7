"""The control API: HTTP+JSON over a UNIX socket (and optionally TCP) in front of a ControlPlane.

The UNIX socket is the normal way in: it is mode 0660 (owner and one group, typically
`coolctl`), and the kernel tells us who is calling (SO_PEERCRED), so every override and audit
record names a real user without any password. TCP is for remote tooling only and always needs
a bearer token.

Every request is validated completely before the plane is called, so a bad request changes
nothing. Errors are always `{"error": "...", "status": N}`.

Endpoints (lists are wrapped in an object so that fields can be added later):

    GET    /v1/status                              plane.status()
    GET    /v1/racks                               {"racks": [...]}
    GET    /v1/points?rack=R                       {"points": [...]}
    GET    /v1/loops?rack=R                        {"loops": [...]}
    GET    /v1/overrides?rack=R                    {"overrides": [...]}
    PUT    /v1/racks/{rack}/overrides/{target}     {"value", "ttl_s" | "permanent", "reason"}:
                                                   the record, with `in_force`, `overruled_by`
                                                   (interlocks, failsafe, manual) and `note`
    GET    /v1/racks/{rack}/targets                {"targets": [{target, kind, low, high,
                                                   unit, why}]}: what an override may name
    DELETE /v1/racks/{rack}/overrides/{target}     reason in the body or ?reason=
    PUT    /v1/racks/{rack}/mode                   {"mode": "auto" | "manual", "reason"}
    POST   /v1/racks/{rack}/interlocks/{name}/reset {"reason"}: release a latched interlock
    GET    /v1/alarms?rack=R                       {"alarms": [...]}: the CDUs' alarm points
    POST   /v1/racks/{rack}/alarms/ack             {"reason"}: acknowledge latched CDU alarms
    GET    /v1/events?since=ID&limit=N&wait=S      {"events": [...], "next_since": ID}
    GET    /v1/audit?since=ID&limit=N              {"audit": [...], "next_since": ID}
    POST   /v1/reload                              plane.reload()

`since` left out means "the newest `limit` records" (what an operator wants from
`coolctl events`), answered at once; `since=0` means from the beginning. With `since`,
`wait` > 0 long-polls until a newer event arrives, for up to 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hmac
import json
import logging
import math
import os
import pwd
import socket
import ssl
import stat
import struct
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from coolctl.config.schema import is_loopback
from coolctl.model import RackMode
from coolctl.ops.protocol import (
    AuditRecord,
    ControlError,
    ControlPlane,
    EventRecord,
    JsonObject,
    check_reason,
    escape_text,
    target_kind,
)

log = logging.getLogger("coolctl.ops.api")

MAX_BODY_BYTES = 64 * 1024
MAX_WAIT_S = 60.0
MIN_TTL_S = 1.0
"""The shortest override lifetime: overrides are expired once a second, so a shorter one could
not be honoured (and one below the wall clock's resolution would end as it starts)."""
MAX_LIMIT = 1000
MIN_TOKEN_BYTES = 32
"""A bearer token is a password that never needs typing: 32 bytes at least (openssl rand)."""
OPERATOR, VIEWER = "operator", "viewer"
DEFAULT_LIMIT = 100
SOCKET_MODE = 0o660
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_WHO_KEY = web.RequestKey("who", str)
_ROLE_KEY = web.RequestKey("role", str)
_READ_METHODS = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
R = TypeVar("R", EventRecord, AuditRecord)


class ControlApiError(Exception):
    """The API cannot start: the message says what to fix (group, live socket, token...)."""


def load_token(path: Path) -> str:
    """The bearer token in `path`, without surrounding whitespace; ValueError if unusable.

    Shared by the daemon and the CLI so that both read a token file the same way.
    """
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot read token file {path}: {reason}") from exc
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def load_private_token(path: Path) -> str:
    """`load_token` for the daemon, which also refuses a token file that anyone but its owner
    can read or write: a token others can read is a password shared with them."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ValueError(
            f"token file {path} is open to group or others (mode {stat.S_IMODE(mode):04o});"
            f" chmod 600 {path}"
        )
    token = load_token(path)
    if len(token.encode("utf-8")) < MIN_TOKEN_BYTES:
        raise ValueError(
            f"the token in {path} is {len(token.encode('utf-8'))} bytes; a token needs at least"
            f" {MIN_TOKEN_BYTES} (make one: openssl rand -hex 32 > {path})"
        )
    return token


def peer_identity(sock: Any) -> str:
    """`alice (uid 1000)` for the process at the other end of a UNIX socket.

    The kernel fills SO_PEERCRED at connect time, so the caller cannot lie about it.
    """
    return peer(sock)[0]


def peer(sock: Any) -> tuple[str, int, int]:
    """The name, uid and gid of the process at the other end of a UNIX socket (SO_PEERCRED)."""
    size = struct.calcsize("3i")
    _pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}", uid, gid
    return f"{name} (uid {uid})", uid, gid


_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13 and later
_MAX_PEER_GROUPS = 256  # getsockopt answers at most 1024 bytes


def peer_groups(sock: Any) -> frozenset[int] | None:
    """The supplementary groups the peer process had when it connected (SO_PEERGROUPS), or
    None where the kernel cannot say."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_PEER_GROUPS)
    except OSError:
        return None
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def in_group(uid: int, gid: int, groups: frozenset[int] | None, group: int) -> bool:
    """Whether the peer (uid, primary gid, its supplementary groups if known) is a member of
    `group`: the kernel's word for the process, else the group database's for the user."""
    if gid == group:
        return True
    if groups is not None:
        return group in groups
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return False
    return group in os.getgrouplist(entry.pw_name, entry.pw_gid)


# --- request validation ------------------------------------------------------------------


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_json(value: Any) -> Any:
    """Non-finite floats become null: NaN is not JSON, and strict clients choke on it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(item) for item in value]
    return value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(_finite_json(data), status=status)


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message, "status": status}, status=status)


async def _body(
    request: web.Request, allowed: Sequence[str], *, optional: bool = False
) -> JsonObject:
    """The request body as a JSON object with only `allowed` keys; ControlError otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ControlError(413, f"request body is larger than {MAX_BODY_BYTES // 1024} KiB")
    raw = await request.read()  # client_max_size enforces the limit for chunked bodies too
    if not raw.strip():
        if optional:
            return {}
        raise ControlError(400, f"a JSON object body is required, with {', '.join(allowed)}")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ControlError(400, "body is nested too deeply to be a request") from None
    if not isinstance(body, dict):
        raise ControlError(400, f"body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ControlError(
            400,
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(allowed)}",
        )
    return body


def _number(body: JsonObject, key: str, *, required: bool) -> float | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ControlError(400, f"{key!r} is required (a number)")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{key!r} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ControlError(400, f"{key!r} must be finite (it is beyond float range)") from None
    if not math.isfinite(number):
        raise ControlError(400, f"{key!r} must be finite")
    return number


def _reason(value: Any) -> str:
    return check_reason(value)


def _query(request: web.Request, allowed: Sequence[str]) -> dict[str, str]:
    """Query parameters, refusing unknown ones (a typo like `?rak=` must not mean "all")."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "none"
        raise ControlError(400, f"unknown query parameter {unknown[0]!r}; expected {expected}")
    for key in request.query:
        if len(request.query.getall(key)) > 1:
            raise ControlError(400, f"query parameter {key!r} given more than once")
    return dict(request.query)


def _int_param(
    query: dict[str, str], key: str, default: int | None, low: int, high: int
) -> int | None:
    text = query.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ControlError(400, f"{key!r} must be a whole number, not {text!r}") from None
    if not low <= value <= high:
        raise ControlError(400, f"{key!r} must be between {low} and {high}, not {value}")
    return value


def _rack_param(query: dict[str, str]) -> str | None:
    rack = query.get("rack")
    if rack is not None and not rack:
        raise ControlError(400, "'rack' must not be empty")
    return rack


# --- the API -----------------------------------------------------------------------------


class ControlApi:
    """Serves the control API for `plane` until `stop()`.

    `socket_group` lets members of that group (operators) use the socket; `tcp_listen` adds a
    TCP listener, which is refused unless `token_file` holds a bearer token.
    """

    def __init__(
        self,
        plane: ControlPlane,
        *,
        socket_path: Path,
        socket_group: str | None = None,
        tcp_listen: tuple[str, int] | None = None,
        token_file: Path | None = None,
        viewer_token_file: Path | None = None,
        operator_group: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.plane = plane
        self.socket_path = Path(socket_path)
        self.socket_group = socket_group
        self.tcp_listen = tcp_listen
        self.token_file = token_file
        self.viewer_token_file = viewer_token_file
        self.operator_group = operator_group
        self.ssl_context = ssl_context
        self.tcp_port: int | None = None
        self._token: str | None = None
        self._viewer_token: str | None = None
        self._operator_gid: int | None = None
        self._runner: web.AppRunner | None = None
        self._socket_inode: int | None = None
        self._closing = asyncio.Event()
        # Answers by HTTP status (coolctl_control_api_requests_total), authentication refusals
        # included: 4xx are operators' or scripts' bad requests, 5xx coolctl's own faults.
        self.requests_by_status: dict[int, int] = {}

    # -- life cycle --

    async def start(self) -> None:
        """Listen on the socket (and TCP); ControlApiError says why not, nothing left behind."""
        if self.tcp_listen is not None:
            if self.token_file is None:
                raise ControlApiError(
                    "the TCP control listener needs a token file: anyone who can reach the "
                    "port could otherwise change setpoints"
                )
            try:
                self.reload_tokens(self.token_file, self.viewer_token_file)
            except ValueError as exc:
                raise ControlApiError(str(exc)) from None
            if self.ssl_context is None and not is_loopback(self.tcp_listen[0]):
                log.warning(
                    "the control API on %s:%d is plain HTTP (allow_plaintext): its bearer"
                    " token crosses the network in clear",
                    *self.tcp_listen,
                )
        gid = self._socket_gid()
        self._operator_gid = self._group_id(self.operator_group)
        if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
            raise ControlApiError(
                f"control socket path {self.socket_path} is longer than {_UNIX_PATH_MAX} bytes"
            )
        await self._clear_stale_socket()

        app = web.Application(
            middlewares=[self._errors, self._identify], client_max_size=MAX_BODY_BYTES
        )
        self._routes(app.router)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        self._closing.clear()
        try:
            sock = self._bind_unix(gid)
            try:
                await web.SockSite(runner, sock).start()
            except BaseException:
                sock.close()
                raise
            if self.tcp_listen is not None:
                host, port = self.tcp_listen
                try:
                    await web.TCPSite(runner, host, port, ssl_context=self.ssl_context).start()
                except OSError as exc:
                    raise ControlApiError(
                        f"cannot listen for the control API on {host}:{port}: {exc.strerror or exc}"
                    ) from None
                self.tcp_port = next(
                    int(address[1]) for address in runner.addresses if isinstance(address, tuple)
                )
        except BaseException:
            await runner.cleanup()
            self._remove_socket()
            raise
        self._runner = runner
        log.info(
            "control API on %s%s",
            self.socket_path,
            f" and {self.tcp_listen[0]}:{self.tcp_port}" if self.tcp_listen else "",
        )

    async def stop(self) -> None:
        """Stop listening; long-polls in progress answer at once; the socket file goes away."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._remove_socket()
        self.tcp_port = None

    def reload_tokens(self, token_file: Path | None, viewer_token_file: Path | None) -> None:
        """Read the operator's and the viewer's tokens again (at start and on reload); a
        ValueError says what is wrong and leaves the tokens in force as they were."""
        token = load_private_token(token_file) if token_file is not None else None
        viewer = load_private_token(viewer_token_file) if viewer_token_file is not None else None
        if token is not None and viewer is not None and hmac.compare_digest(token, viewer):
            raise ValueError("the viewer token must differ from the operator token")
        self.token_file, self.viewer_token_file = token_file, viewer_token_file
        self._token, self._viewer_token = token, viewer

    def _socket_gid(self) -> int:
        gid = self._group_id(self.socket_group)
        return -1 if gid is None else gid

    @staticmethod
    def _group_id(group: str | None) -> int | None:
        if group is None:
            return None
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise ControlApiError(
                f"group {group!r} does not exist "
                f"(create it with `groupadd {group}` or change the setting)"
            ) from None

    def _socket_role(self, sock: Any, uid: int, gid: int) -> str:
        """Operator: the daemon's own user, root, and members of the operator group (everyone
        on the socket when no operator group is set); viewer: everyone else on the socket."""
        group = self._operator_gid
        if group is None or uid in (0, os.getuid()):
            return OPERATOR
        return OPERATOR if in_group(uid, gid, peer_groups(sock), group) else VIEWER

    async def _clear_stale_socket(self) -> None:
        """Remove a socket file a crashed daemon left; refuse if another daemon answers on it."""
        path = self.socket_path
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlApiError(f"{path} exists and is not a socket; refusing to replace it")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2.0)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        except (OSError, TimeoutError) as exc:
            raise ControlApiError(f"cannot tell whether {path} is in use: {exc}") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise ControlApiError(
            f"another process is answering on {path}: is coolctl already running?"
        )

    def _bind_unix(self, gid: int) -> socket.socket:
        """Bind, set mode and group, and only then listen, so no one connects in between."""
        path = self.socket_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlApiError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            self._socket_inode = path.stat().st_ino
            os.chmod(path, SOCKET_MODE)
            if gid != -1:
                os.chown(path, -1, gid)
        except OSError as exc:
            sock.close()
            if self._socket_inode is not None:
                self._remove_socket()
            raise ControlApiError(
                f"cannot create the control socket {path}: {exc.strerror or exc}"
            ) from None
        sock.setblocking(False)
        return sock

    def _remove_socket(self) -> None:
        """Unlink our socket file, but not one that another daemon has put there since."""
        if self._socket_inode is None:
            return
        with contextlib.suppress(OSError):
            if self.socket_path.lstat().st_ino == self._socket_inode:
                self.socket_path.unlink()
        self._socket_inode = None

    # -- middlewares --

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure becomes `{"error", "status"}`; unexpected ones are logged, not shown.
        Every answer is counted by status, so refused requests show in the metrics."""
        response = await self._answer(request, handler)
        counts = self.requests_by_status
        counts[response.status] = counts.get(response.status, 0) + 1
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ControlError as exc:
            return _error(exc.status, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body is larger than {MAX_BODY_BYTES // 1024} KiB")
        except web.HTTPNotFound:
            hint = ""
            if request.path.startswith("/v1/racks/") and request.path.count("/") > 5:
                hint = " (URL-encode the target: cdu1%2Fpump_speed_command)"
            return _error(404, f"no such endpoint: {request.method} {request.path}{hint}")
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return _error(405, f"{request.method} is not allowed on {request.path}; use {allowed}")
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason)
        except Exception:
            log.exception("control API: %s %s failed", request.method, request.path)
            return _error(500, "internal error in coolctl; the daemon's log has the details")

    @web.middleware
    async def _identify(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Who is calling: SO_PEERCRED on the UNIX socket, a bearer token on TCP."""
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        role: str | None
        if sock is not None and sock.family == socket.AF_UNIX:
            name, uid, gid = peer(sock)
            role = self._socket_role(sock, uid, gid)
            who = name
        else:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            role = self._token_role(scheme, given.strip())
            if role is None:
                response = _error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="coolctl"'
                return response
            who = f"token@{request.remote}"
        request[_ROLE_KEY] = role
        # The audit log and the daemon's log name the role with the person (without roles
        # configured, everyone who can reach the API is an operator, as the docs say).
        request[_WHO_KEY] = f"{who} as {role}"
        if role != OPERATOR and request.method not in _READ_METHODS:
            raise ControlError(
                403,
                f"{who} is a viewer: viewers read, they do not change anything"
                f" ({request.method} {request.path} needs the operator role)",
            )
        return await handler(request)

    def _roles_in_use(self) -> bool:
        return self._operator_gid is not None or self._viewer_token is not None

    def _token_role(self, scheme: str, given: str) -> str | None:
        """The role whose token was given, or None. Both tokens are always compared, in
        constant time: the time taken must not tell which, or how much of one, was right."""
        if scheme.lower() != "bearer":
            return None
        offered = given.encode()
        operator = self._token is not None and hmac.compare_digest(offered, self._token.encode())
        viewer = self._viewer_token is not None and hmac.compare_digest(
            offered, self._viewer_token.encode()
        )
        return OPERATOR if operator else VIEWER if viewer else None

    # -- routes --

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/status", self._status)
        router.add_get("/v1/racks", self._racks)
        router.add_get("/v1/points", self._points)
        router.add_get("/v1/loops", self._loops)
        router.add_get("/v1/overrides", self._overrides)
        router.add_put("/v1/racks/{rack}/overrides/{target}", self._set_override)
        router.add_get("/v1/racks/{rack}/targets", self._targets)
        router.add_delete("/v1/racks/{rack}/overrides/{target}", self._clear_override)
        router.add_put("/v1/racks/{rack}/mode", self._set_mode)
        router.add_post("/v1/racks/{rack}/interlocks/{interlock}/reset", self._reset_interlock)
        router.add_get("/v1/alarms", self._alarms)
        router.add_post("/v1/racks/{rack}/alarms/ack", self._ack_alarms)
        router.add_get("/v1/events", self._events)
        router.add_get("/v1/audit", self._audit)
        router.add_post("/v1/reload", self._reload)

    async def _status(self, request: web.Request) -> web.Response:
        _query(request, ())
        return _json(self.plane.status())

    async def _racks(self, request: web.Request) -> web.Response:
        _query(request, ())
        return _json({"racks": self.plane.racks()})

    async def _points(self, request: web.Request) -> web.Response:
        rack = _rack_param(_query(request, ("rack",)))
        return _json({"points": self.plane.points(rack)})

    async def _loops(self, request: web.Request) -> web.Response:
        rack = _rack_param(_query(request, ("rack",)))
        return _json({"loops": self.plane.loops(rack)})

    async def _overrides(self, request: web.Request) -> web.Response:
        rack = _rack_param(_query(request, ("rack",)))
        return _json({"overrides": [record.as_json() for record in self.plane.overrides(rack)]})

    async def _set_override(self, request: web.Request) -> web.Response:
        _query(request, ())
        rack, target = request.match_info["rack"], request.match_info["target"]
        body = await _body(request, ("value", "ttl_s", "permanent", "reason"))
        target_kind(target)
        value = _number(body, "value", required=True)
        assert value is not None
        ttl_s = _number(body, "ttl_s", required=False)
        permanent = body.get("permanent", False)
        if not isinstance(permanent, bool):
            raise ControlError(400, f"'permanent' must be true or false, not {permanent!r}")
        if permanent and ttl_s is not None:
            raise ControlError(400, "give either 'ttl_s' or 'permanent': true, not both")
        if not permanent and ttl_s is None:
            raise ControlError(
                400,
                "an override needs 'ttl_s' (seconds) or 'permanent': true, so none is forgotten",
            )
        if ttl_s is not None and ttl_s <= 0:
            raise ControlError(400, f"'ttl_s' must be more than 0, not {ttl_s:g}")
        if ttl_s is not None and ttl_s < MIN_TTL_S:
            raise ControlError(
                400, f"'ttl_s' must be at least {MIN_TTL_S:g} s (the expiry period), not {ttl_s:g}"
            )
        why = _reason(body.get("reason"))
        who = request[_WHO_KEY]
        lifetime = "permanent" if permanent else f"ttl {ttl_s:g}s"
        what = f"override {rack} {target} = {value:g} ({lifetime}): {why}"
        record = await self._logged(
            who, rack, what, self.plane.set_override(rack, target, value, ttl_s, who, why)
        )
        document = record.as_json()
        effect = getattr(self.plane, "override_effect", None)
        if callable(effect):  # in force now, or overruled by an interlock, failsafe, manual
            document.update(effect(rack, target))
        return _json(document)

    async def _targets(self, request: web.Request) -> web.Response:
        _query(request, ())
        targets = getattr(self.plane, "targets", None)
        if not callable(targets):
            raise ControlError(404, "this daemon cannot list override targets")
        return _json({"targets": targets(request.match_info["rack"])})

    async def _clear_override(self, request: web.Request) -> web.Response:
        query = _query(request, ("reason",))
        rack, target = request.match_info["rack"], request.match_info["target"]
        body = await _body(request, ("reason",), optional=True)
        if "reason" in body and "reason" in query:
            raise ControlError(400, "give 'reason' in the body or in the query, not both")
        why = _reason(body.get("reason", query.get("reason")))
        target_kind(target)
        who = request[_WHO_KEY]
        what = f"clear override {rack} {target}: {why}"
        record = await self._logged(
            who, rack, what, self.plane.clear_override(rack, target, who, why)
        )
        return _json(record.as_json())

    async def _set_mode(self, request: web.Request) -> web.Response:
        _query(request, ())
        rack = request.match_info["rack"]
        body = await _body(request, ("mode", "reason"))
        mode = body.get("mode")
        if not isinstance(mode, str) or mode not in tuple(RackMode):
            raise ControlError(400, f'\'mode\' must be "auto" or "manual", not {mode!r}')
        checked = RackMode(mode)
        why = _reason(body.get("reason"))
        who = request[_WHO_KEY]
        result = await self._logged(
            who, rack, f"mode {rack} {checked}: {why}", self.plane.set_mode(rack, checked, who, why)
        )
        return _json(result)

    async def _reset_interlock(self, request: web.Request) -> web.Response:
        _query(request, ())
        rack, interlock = request.match_info["rack"], request.match_info["interlock"]
        body = await _body(request, ("reason",))
        why = _reason(body.get("reason"))
        who = request[_WHO_KEY]
        call = self.plane.reset_interlock(rack, interlock, who, why)
        result = await self._logged(who, rack, f"reset interlock {rack} {interlock}: {why}", call)
        return _json(result)

    async def _alarms(self, request: web.Request) -> web.Response:
        rack = _rack_param(_query(request, ("rack",)))
        return _json({"alarms": self.plane.alarms(rack)})

    async def _ack_alarms(self, request: web.Request) -> web.Response:
        _query(request, ())
        rack = request.match_info["rack"]
        why = _reason((await _body(request, ("reason",))).get("reason"))
        who = request[_WHO_KEY]
        call = self.plane.acknowledge_alarms(rack, who, why)
        return _json(await self._logged(who, rack, f"acknowledge alarms {rack}: {why}", call))

    async def _reload(self, request: web.Request) -> web.Response:
        _query(request, ())
        await _body(request, (), optional=True)
        who = request[_WHO_KEY]
        return _json(await self._logged(who, None, "reload", self.plane.reload(who)))

    async def _events(self, request: web.Request) -> web.Response:
        query = _query(request, ("since", "limit", "wait"))
        since = _int_param(query, "since", None, 0, 2**63 - 1)
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        assert limit is not None
        wait_text = query.get("wait", "0")
        try:
            wait_s = float(wait_text)
        except ValueError:
            raise ControlError(
                400, f"'wait' must be a number of seconds, not {wait_text!r}"
            ) from None
        if not math.isfinite(wait_s) or wait_s < 0:
            raise ControlError(400, f"'wait' must be 0 or more seconds, not {wait_text!r}")
        wait_s = min(wait_s, MAX_WAIT_S)
        if since is None:
            newest = getattr(self.plane, "newest_events", None)  # a plane may lack it
            events = await (newest(limit) if newest else _newest(self.plane.events, limit))
        elif wait_s > 0:
            events = await self._wait_events(since, wait_s, limit)
        else:
            events = await self.plane.events(since, limit)
        next_since = events[-1].id if events else (since or 0)
        return _json({"events": [e.as_json() for e in events], "next_since": next_since})

    async def _wait_events(self, since: int, wait_s: float, limit: int) -> list[EventRecord]:
        """plane.wait_events, cut short by stop() so that shutdown never waits for a poll."""
        waiting = asyncio.ensure_future(self.plane.wait_events(since, wait_s, limit))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((waiting, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        return waiting.result() if not waiting.cancelled() else []

    async def _audit(self, request: web.Request) -> web.Response:
        query = _query(request, ("since", "limit"))
        since = _int_param(query, "since", None, 0, 2**63 - 1)
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        assert limit is not None
        newest = getattr(self.plane, "newest_audit", None)  # a plane may lack it
        records = (
            await (newest(limit) if newest else _newest(self.plane.audit, limit))
            if since is None
            else await self.plane.audit(since, limit)
        )
        next_since = records[-1].id if records else (since or 0)
        return _json({"audit": [r.as_json() for r in records], "next_since": next_since})

    async def _logged(self, who: str, rack: str | None, what: str, call: Awaitable[T]) -> T:
        """Run a state-changing call and log one line saying who did what and how it ended."""
        extra = {"rack": escape_text(rack)} if rack is not None else {}
        what = escape_text(what)
        try:
            result = await call
        except ControlError as exc:
            log.info("%s: %s: refused (%d %s)", who, what, exc.status, exc.message, extra=extra)
            raise
        except Exception:
            log.info("%s: %s: failed", who, what, extra=extra)
            raise
        log.info("%s: %s: done", who, what, extra=extra)
        return result


async def _newest(fetch: Callable[[int, int], Awaitable[list[R]]], limit: int) -> list[R]:
    """The newest `limit` records, oldest first, by paging through the store from the start:
    for a plane without newest_events/newest_audit (the daemon's reads them by index).

    Pages until an empty one, so a plane that returns fewer than asked per call still works.
    """
    newest: list[R] = []
    since = 0
    while True:
        page = await fetch(since, MAX_LIMIT)
        if not page:
            break
        newest = (newest + page)[-limit:]
        since = page[-1].id
    return newest
