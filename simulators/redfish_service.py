"""What every simulated Redfish service has, whatever device it fronts: root, sessions, accounts.

`RedfishService` holds one service's state (its resource tree, sessions, account, event log,
writable labels) and builds the parts of the tree that do not depend on the device: the
service root, `/redfish/v1/odata`, the session service and the account service. The manager
and the other services the OCP baseline profile asks for are in `redfish_manager`; the device
itself (a BMC's chassis and power limit, a CDU, a PDU) in `redfish_devices`.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from coolctl.simulators.redfish_messages import RedfishError, message
from coolctl.simulators.redfish_resources import (
    Json,
    PatchPath,
    Readings,
    Reply,
    RequestInfo,
    Resource,
    ResourceTree,
    Writable,
    collection,
    head,
    iso_time,
    link,
    status,
)

__all__ = ["Identity", "RedfishService", "Session", "SessionStore"]

ROOT = "/redfish/v1"
SESSIONS = f"{ROOT}/SessionService/Sessions"
ACCOUNTS = f"{ROOT}/AccountService/Accounts"
ROLES = f"{ROOT}/AccountService/Roles"
REDFISH_VERSION = "1.20.0"

# Predefined roles and their privileges (DSP0266): one account, an administrator, logs in.
_ROLES: Mapping[str, list[str]] = {
    "Administrator": [
        "Login",
        "ConfigureManager",
        "ConfigureUsers",
        "ConfigureSelf",
        "ConfigureComponents",
    ],
    "Operator": ["Login", "ConfigureSelf", "ConfigureComponents"],
    "ReadOnly": ["Login", "ConfigureSelf"],
}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the simulated device says it is. `name` (rack/device) seeds its UUID and serial."""

    name: str
    product: str
    model: str
    manager_id: str
    manager_type: str
    manufacturer: str = "coolctl"
    firmware_version: str = "1.0.0"

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"coolctl-sim:{self.name}"))

    @property
    def serial(self) -> str:
        return "SIM" + self.uuid.replace("-", "")[:10].upper()

    @property
    def rack(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def hostname(self) -> str:
        return self.name.replace("/", "-")


@dataclass(slots=True)
class Session:
    id: str
    token: str
    username: str
    remote: str
    created: str
    last_used: float


class SessionStore:
    """Sessions of one service: tokens, idle expiry, and a limit as real BMCs have."""

    def __init__(self, timeout_s: int = 1800, limit: int = 32) -> None:
        self.timeout_s = timeout_s
        self.limit = limit
        self._sessions: dict[str, Session] = {}
        self._counter = 0

    def create(self, username: str, remote: str) -> Session:
        self._expire()
        if len(self._sessions) >= self.limit:
            raise RedfishError(503, [message("SessionLimitExceeded")])
        self._counter += 1
        session = Session(
            id=str(self._counter),
            token=secrets.token_hex(16),
            username=username,
            remote=remote,
            created=iso_time(),
            last_used=time.monotonic(),
        )
        self._sessions[session.id] = session
        return session

    def by_token(self, token: str) -> Session | None:
        """The live session of this token, touched; None if unknown or expired."""
        self._expire()
        for session in self._sessions.values():
            if secrets.compare_digest(session.token, token):
                session.last_used = time.monotonic()
                return session
        return None

    def get(self, session_id: str) -> Session | None:
        self._expire()
        return self._sessions.get(session_id)

    def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    def clear(self) -> None:
        """Forget every session (the service restarted, or a test wants a 401)."""
        self._sessions.clear()

    @property
    def ids(self) -> list[str]:
        self._expire()
        return list(self._sessions)

    def _expire(self) -> None:
        deadline = time.monotonic() - self.timeout_s
        for session_id in [s.id for s in self._sessions.values() if s.last_used < deadline]:
            del self._sessions[session_id]


@dataclass(slots=True)
class LogEntry:
    id: int
    created: str
    severity: str
    message: Json
    origin: str | None


class EventLog:
    """The manager's event log: what the service did (started, accepted a write, reset)."""

    def __init__(self, capacity: int = 200) -> None:
        self.capacity = capacity
        self.entries: deque[LogEntry] = deque(maxlen=capacity)
        self._next = 1

    def add(self, entry_message: Json, origin: str | None = None, severity: str = "OK") -> None:
        self.entries.append(LogEntry(self._next, iso_time(), severity, entry_message, origin))
        self._next += 1

    def get(self, entry_id: str) -> LogEntry | None:
        return next((e for e in self.entries if str(e.id) == entry_id), None)


@dataclass(slots=True)
class Account:
    username: str
    password: str


@dataclass(slots=True)
class ServiceHooks:
    """What the HTTP server lends the service: its port, and how to reset or re-key it."""

    port: Callable[[], int] = lambda: 0
    reset: Callable[[], None] = lambda: None
    certificate_pem: Callable[[], str] = lambda: ""
    replace_certificate: Callable[[bytes, bytes], None] | None = None


class RedfishService:
    """One simulated Redfish service: its tree, state, and the device-independent resources.

    Device builders add their resources and register their top-level collections in `roots`
    (ServiceRoot property -> URI) and their reading sources in `sources`.
    """

    def __init__(
        self,
        identity: Identity,
        username: str,
        password: str,
        *,
        sensing_interval_s: float = 0.1,
    ) -> None:
        self.identity = identity
        self.account = Account(username, password)
        self.sensing_interval_s = sensing_interval_s
        self.tree = ResourceTree()
        self.sources: dict[str, Callable[[], Mapping[str, float]]] = {}
        self.roots: dict[str, str] = {}
        self.sessions = SessionStore()
        self.log = EventLog()
        self.labels: dict[tuple[str, PatchPath], Any] = {}
        self.hooks = ServiceHooks()
        self.started = iso_time()
        self._add_root()
        self._add_sessions()
        self._add_accounts()

    # ---- helpers for builders ---------------------------------------------------------------

    def readings(self, failing_point: str | None = None) -> Readings:
        return Readings(self.sources, failing_point)

    def label(self, uri: str, path: PatchPath, default: Any) -> Any:
        """A client-writable setting (UserLabel, AssetTag, Location/...): its value now."""
        return self.labels.get((uri, path), default)

    def label_writable(self, uri: str, path: PatchPath, kind: str = "string") -> Writable:
        """The Writable that stores such a setting."""

        def apply(value: Any) -> None:
            self.labels[(uri, path)] = value

        return Writable(kind, apply, max_length=64)

    def add(self, uri: str, resource: Resource) -> Resource:
        return self.tree.add(uri, resource)

    def add_collection(
        self, uri: str, schema: str, name: str, members: Callable[[], list[str]]
    ) -> None:
        self.tree.add(uri, collection(uri, schema, name, members))

    def log_write(self, uri: str) -> None:
        self.log.add(message("Success"), origin=uri)

    # ---- service root -------------------------------------------------------------------------

    def _add_root(self) -> None:
        def render(_: Readings) -> Json:
            body = head(f"{ROOT}/", "ServiceRoot", "Root Service", "RootService")
            body.update(
                {
                    "RedfishVersion": REDFISH_VERSION,
                    "UUID": self.identity.uuid,
                    "Product": self.identity.product,
                    "Vendor": self.identity.manufacturer,
                    "ProtocolFeaturesSupported": {
                        "ExpandQuery": {
                            "ExpandAll": False,
                            "Levels": False,
                            "Links": False,
                            "NoLinks": False,
                        },
                        "FilterQuery": False,
                        "SelectQuery": True,
                        "OnlyMemberQuery": True,
                        "ExcerptQuery": False,
                        "TopSkipQuery": False,
                        "MultipleHTTPRequests": True,
                        "DeepOperations": {"DeepPATCH": False, "DeepPOST": False},
                    },
                    "SessionService": link(f"{ROOT}/SessionService"),
                    "AccountService": link(f"{ROOT}/AccountService"),
                    "Links": {"Sessions": link(SESSIONS)},
                }
            )
            body.update({name: link(uri) for name, uri in self.roots.items()})
            return body

        self.tree.add(f"{ROOT}/", Resource(render))

    def odata_document(self) -> Json:
        """`/redfish/v1/odata`: the service root and its top-level resources, by name."""
        names = {"SessionService": f"{ROOT}/SessionService", **self.roots}
        names["AccountService"] = f"{ROOT}/AccountService"
        value = [{"name": "Service", "kind": "Singleton", "url": f"{ROOT}/"}]
        value += [{"name": n, "kind": "Singleton", "url": u} for n, u in sorted(names.items())]
        return {"@odata.context": f"{ROOT}/$metadata", "value": value}

    # ---- sessions -----------------------------------------------------------------------------

    def _add_sessions(self) -> None:
        service_uri = f"{ROOT}/SessionService"

        def render_service(_: Readings) -> Json:
            body = head(service_uri, "SessionService", "Session Service", "SessionService")
            body.update(
                {
                    "ServiceEnabled": True,
                    "SessionTimeout": self.sessions.timeout_s,
                    "Sessions": link(SESSIONS),
                    "Status": status(),
                }
            )
            return body

        def set_timeout(value: Any) -> None:
            self.sessions.timeout_s = int(value)

        timeout = Writable("integer", set_timeout, 30, 86400, unit="s")
        self.tree.add(service_uri, Resource(render_service, {("SessionTimeout",): timeout}))
        sessions = collection(
            SESSIONS, "SessionCollection", "Session Collection", self._session_uris
        )
        sessions.post = self._login
        self.tree.add(SESSIONS, sessions)
        self.tree.add_dynamic(SESSIONS, self._session_resource)

    def _session_uris(self) -> list[str]:
        return [f"{SESSIONS}/{i}" for i in self.sessions.ids]

    def _login(self, body: Any, request: RequestInfo) -> Reply:
        """POST to Sessions: check the credentials, answer with the token and the session."""
        if not isinstance(body, dict):
            raise RedfishError(400, [message("MalformedJSON")])
        for name in ("UserName", "Password"):
            if not isinstance(body.get(name), str):
                raise RedfishError(400, [message("PropertyValueTypeError", body.get(name), name)])
        if not self.check_credentials(body["UserName"], body["Password"]):
            raise RedfishError(401, [message("NoValidSession")])
        session = self.sessions.create(body["UserName"], request.remote)
        uri = f"{SESSIONS}/{session.id}"
        return Reply(
            201,
            self._session_body(session),
            {"X-Auth-Token": session.token, "Location": uri},
        )

    def check_credentials(self, username: str, password: str) -> bool:
        user_ok = secrets.compare_digest(username.encode(), self.account.username.encode())
        return secrets.compare_digest(password.encode(), self.account.password.encode()) and user_ok

    def _session_body(self, session: Session) -> Json:
        body = head(f"{SESSIONS}/{session.id}", "Session", "User Session")
        body.update(
            {
                "UserName": session.username,
                "Password": None,
                "SessionType": "Redfish",
                "CreatedTime": session.created,
                "ClientOriginIPAddress": session.remote,
                "Roles": ["Administrator"],
            }
        )
        return body

    def _session_resource(self, session_id: str) -> Resource | None:
        session = self.sessions.get(session_id)
        if session is None:
            return None

        def render(_: Readings) -> Json:
            return self._session_body(session)

        def delete(_: RequestInfo) -> Reply:
            self.sessions.delete(session_id)
            return Reply(200, {"@Message.ExtendedInfo": [message("SessionTerminated")]})

        return Resource(render, delete=delete)

    # ---- accounts -----------------------------------------------------------------------------

    def _add_accounts(self) -> None:
        service_uri = f"{ROOT}/AccountService"

        def render_service(_: Readings) -> Json:
            body = head(service_uri, "AccountService", "Account Service", "AccountService")
            body.update(
                {
                    "ServiceEnabled": True,
                    "Status": status(),
                    "LocalAccountAuth": "Enabled",
                    "HTTPBasicAuth": "Enabled",
                    "MinPasswordLength": 8,
                    "MaxPasswordLength": 64,
                    "SupportedAccountTypes": ["Redfish"],
                    "Accounts": link(ACCOUNTS),
                    "Roles": link(ROLES),
                }
            )
            return body

        self.tree.add(service_uri, Resource(render_service))
        self.add_collection(
            ACCOUNTS, "ManagerAccountCollection", "Accounts", lambda: [f"{ACCOUNTS}/1"]
        )

        def render_account(_: Readings) -> Json:
            body = head(f"{ACCOUNTS}/1", "ManagerAccount", "User Account")
            body.update(
                {
                    "UserName": self.account.username,
                    "Password": None,
                    "RoleId": "Administrator",
                    "Enabled": True,
                    "Locked": False,
                    "AccountTypes": ["Redfish"],
                    "Links": {"Role": link(f"{ROLES}/Administrator")},
                }
            )
            return body

        def set_password(value: Any) -> None:
            self.account.password = str(value)

        password = Writable("string", set_password, max_length=64, min_length=8)
        self.tree.add(f"{ACCOUNTS}/1", Resource(render_account, {("Password",): password}))
        self.add_collection(
            ROLES, "RoleCollection", "Roles", lambda: [f"{ROLES}/{r}" for r in _ROLES]
        )
        for role, privileges in _ROLES.items():
            self.tree.add(f"{ROLES}/{role}", Resource(_role_renderer(role, privileges)))


def _role_renderer(role: str, privileges: list[str]) -> Callable[[Readings], Json]:
    def render(_: Readings) -> Json:
        body = head(f"{ROLES}/{role}", "Role", f"{role} Role")
        body.update({"RoleId": role, "IsPredefined": True, "AssignedPrivileges": privileges})
        return body

    return render
