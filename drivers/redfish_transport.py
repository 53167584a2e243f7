"""HTTP under coolctl's Redfish driver: settings, login, limits, backoff and typed failures.

Transport decision: DMTF's `redfish.aio.AsyncRedfishClient` (package `redfish` 3.4.2, BSD-3),
on an `aiohttp.ClientSession` that coolctl builds and owns. Evaluated against what the driver
needs, by reading its source and running it against coolctl's mockup test server:

- Sessions: `login()` POSTs to the Sessions collection named by the service root and keeps the
  X-Auth-Token; an authenticated GET or HEAD answered 401 logs in again once, under a lock, so
  concurrent requests share one new session; `logout()` DELETEs the session. Basic is
  `login(auth="basic")`. It refuses to authenticate over plain http (ValueError), and coolctl
  refuses that configuration even earlier, in RedfishSettings. Used as is.
- PATCH is never retried after a 401 (the library's documented choice, as a PATCH may not be
  idempotent); a power-limit or pump-speed PATCH is, so coolctl logs in again and repeats it
  once itself.
- Per-request timeout: the client's `timeout=` (aiohttp's total timeout: connect, send and
  the whole body), given once at construction so that no call builds a ClientTimeout of its
  own. coolctl adds an asyncio deadline around each call as a backstop, because a call may
  hide several requests (a 401 refresh is GET, GET root, POST session, GET).
- Concurrency: the library has none of its own; coolctl holds an asyncio.Semaphore of
  `max_in_flight` around every call (a call's inner requests are sequential, so the count on
  the wire never exceeds it) and caps the connector at the same number.
- TLS: the library leaves it to the injected session (documented), so the connector gets an
  `ssl.SSLContext` with the CA file, or `ssl=False` when verification is explicitly off.
- ETags: responses expose every header (`getheader("ETag")`), and callers pass If-Match in
  `headers=`. Enough.
- Loop: nothing blocking; the body is read through aiohttp. JSON is parsed by coolctl from
  the raw bytes (the library's `dict` accepts NaN and decodes with replacement silently; coolctl
  wants to count and classify those itself).
- Body size: the one real gap. The library reads every body whole (`await response.read()`)
  with no limit. aiohttp lets the session choose its response class (`response_class=`,
  documented in the ClientSession reference), so coolctl's class counts bytes as they arrive
  and stops at `max_body_bytes`, declared length or not, compressed or not. (It keeps the body
  where aiohttp's own read() does, `_body`, because the library's `get_encoding()` call needs
  it for a response without a charset, such as a 204 to the logout DELETE.)
- Cost: `import redfish.aio` runs the package's `__init__`, which imports the synchronous
  client too: about 30 ms and some 110 modules (requests, urllib3, jsonpath_ng, ply,
  jsonpatch) on top of aiohttp, once per process. Acceptable for a daemon; noted for the
  dependency table, with the package itself to be declared (`redfish>=3.4.2,<4`).
- Credentials in errors: its exceptions carry fixed texts ("Redfish request failed", "HTTP
  401"), the login body is not kept in the request record (`sensitive_body`), targets outside
  the configured origin are refused (a hostile `@odata.id` cannot send the token elsewhere),
  and its repr is the default object repr. The wrapped aiohttp exceptions (`__cause__`) carry
  request details but no headers in their text; coolctl never logs exceptions from here
  anyway, only its own texts.

So: used, with coolctl's semaphore, deadline, response class and PATCH re-login around it.

Cost per request (a row of 32 racks sends some 1,700 a second from one process, most of its
CPU): the library resolves its target with yarl (`base.join(URL(target))`) and aiohttp encodes
`params` into it on every request; a poll sends the same few URIs with the same `$select` and
`$expand` every period, so coolctl hands the library the absolute URL with its query already
encoded, one per (uri, query), made once (`_url`); joining an absolute URL is cheap and the
library still checks its origin. Requests are counted by the session's request class (one per
request aiohttp builds, logins and refreshes included) rather than by a TraceConfig, whose
signals cost every request a Trace object, several awaited no-op hooks and one more query
encoding.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import email.utils
import enum
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp.connector import Connection
from redfish.aio import (  # type: ignore[import-untyped]
    AsyncRedfishClient,
    RedfishAuthenticationError,
    RedfishConnectionError,
    RedfishError,
    RedfishHTTPError,
    RedfishInvalidTargetError,
    RedfishProtocolError,
    RedfishTimeoutError,
)
from yarl import URL

log = logging.getLogger("coolctl.drivers.redfish")


class FailureKind(enum.StrEnum):
    """Why a request failed: the keys of RedfishStats.errors_by_kind and the `kind` label of
    coolctl_device_poll_errors."""

    TIMEOUT = "timeout"  # no complete answer within timeout_s
    CONNECTION = "connection"  # no TCP or TLS connection, or it dropped
    HTTP_5XX = "http_5xx"  # the service answered 5xx (503 with Retry-After included)
    HTTP_4XX = "http_4xx"  # the service answered another 4xx (404, 412, ...) or a redirect
    AUTH = "auth"  # credentials refused (401 after a fresh login, 403)
    MALFORMED = "malformed"  # the answer is not the JSON object it should be
    TOO_LARGE = "too_large"  # the body was longer than max_body_bytes
    MISMATCH = "mismatch"  # a written value did not read back
    BACKOFF = "backoff"  # not sent: the service is being left alone for a while (not counted)


# Failures that say the service (not one resource) is in trouble: coolctl backs off after them.
LINK_FAILURES: Final = frozenset(
    {FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.HTTP_5XX, FailureKind.AUTH}
)

# How much longer than timeout_s one library call may take in all: a 401 refresh is four
# requests in a row, each with its own timeout_s.
_CALL_DEADLINE_FACTOR: Final = 4.0

# How many (uri, query) URLs a transport keeps made: far more than one device's plan reads (a
# CDU's is the largest, some tens), few enough that URIs a hostile service invents stay cheap.
_URL_CACHE_SIZE: Final = 512

_ETAG = re.compile(r'(W/)?"[\x21\x23-\x7e]{0,200}"')
_DELAY_SECONDS = re.compile(r"[0-9]{1,12}")  # RFC 9110 delay-seconds, ASCII; 12: 30,000 years

# The request counter of whoever is asking (a device), set around its calls; see count_requests.
_request_counter: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "coolctl_redfish_request_counter", default=None
)


@dataclass(frozen=True, slots=True)
class RedfishSettings:
    """How to reach one Redfish service. `url` is its origin, e.g. https://bmc.example:443.

    Session login is the default because it is what BMCs rate-limit least and audit best;
    Basic sends the password with every request, and "none" is for services that ask for
    nothing (test mockups, read-only sensors behind other protection). Credentials only ever
    travel over https, and TLS is verified unless `verify_tls` is explicitly False.
    """

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    auth: Literal["session", "basic", "none"] = "session"
    ca_file: Path | None = None
    verify_tls: bool = True
    timeout_s: float = 5.0
    max_in_flight: int = 2
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    max_body_bytes: int = 4 * 2**20

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            # The URL is not echoed: it holds a credential.
            raise ValueError("the Redfish url must not carry credentials; use username/password")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the Redfish url must be http(s)://host[:port], not {self.url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"the Redfish url is the service origin (https://host[:port]), not {self.url!r}:"
                " coolctl finds its way from /redfish/v1 by itself"
            )
        try:
            parts.port  # noqa: B018 (raises for a port that is not a number)
        except ValueError:
            raise ValueError(f"the Redfish url has an invalid port: {self.url!r}") from None
        if self.auth not in ("session", "basic", "none"):
            raise ValueError(f"auth must be session, basic or none, not {self.auth!r}")
        if self.auth != "none":
            if not self.username or self.password is None:
                raise ValueError(f"auth {self.auth!r} needs a username and a password")
            if parts.scheme != "https":
                raise ValueError(
                    f"auth {self.auth!r} needs https: coolctl does not send credentials in clear"
                )
            if self.auth == "basic" and ":" in self.username:
                raise ValueError("a Basic authentication user name cannot contain ':'")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is given but verify_tls is off: choose one")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive number, not {self.timeout_s}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            raise ValueError(
                "need 0 < backoff_min_s <= backoff_max_s, "
                f"not {self.backoff_min_s} and {self.backoff_max_s}"
            )
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, not {self.max_body_bytes}")

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")


class Failure(Exception):
    """One failed request, with its kind (a RedfishStats.errors_by_kind key) and a text that
    never holds a credential. `link` says the service as a whole is in trouble (coolctl backs
    off and the points go stale) rather than one resource (its points go bad)."""

    def __init__(
        self,
        kind: FailureKind,
        detail: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        link: bool | None = None,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after_s = retry_after_s
        self.link = (kind in LINK_FAILURES or kind is FailureKind.BACKOFF) if link is None else link


@dataclass(frozen=True, slots=True)
class Fetched:
    """A resource as read: its URI, its JSON object, and its ETag when the service gave one."""

    uri: str
    body: dict[str, Any]
    etag: str | None


class _BodyTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"body of {size} bytes or more, over the {limit} byte limit")


def _capped_response_class(limit: int) -> type[aiohttp.ClientResponse]:
    """An aiohttp response class whose `read()` gives up past `limit` bytes (decoded)."""

    class CappedResponse(aiohttp.ClientResponse):
        async def read(self) -> bytes:
            declared = self.content_length
            if declared is not None and declared > limit:
                self.close()
                raise _BodyTooLarge(declared, limit)
            chunks: list[bytes] = []
            size = 0
            while chunk := await self.content.read(2**16):
                size += len(chunk)
                if size > limit:
                    self.close()
                    raise _BodyTooLarge(size, limit)
                chunks.append(chunk)
            body = b"".join(chunks)
            # aiohttp's own read() keeps the body here, and get_encoding() (which the library
            # calls) needs it for responses without a charset, such as an empty 204.
            self._body = body
            return body

    return CappedResponse


def _counting_request_class(count: Callable[[], None]) -> type[aiohttp.ClientRequest]:
    """An aiohttp request class that calls `count` for every request sent on a connection:
    each request the library makes, its logins and session refreshes included (and again
    for aiohttp's own retry of an idempotent request on a dropped keep-alive connection,
    which is sent twice); not one that never got a connection. `send` rather than
    `__init__`, whose twenty keyword arguments would be packed and unpacked again."""

    class CountingRequest(aiohttp.ClientRequest):
        async def send(self, conn: Connection) -> aiohttp.ClientResponse:
            count()
            return await super().send(conn)

    return CountingRequest


class _Response(Protocol):
    """What coolctl uses of the library's AsyncRestResponse."""

    @property
    def status(self) -> int: ...

    @property
    def read(self) -> bytes: ...

    def getheader(self, name: str) -> str | None: ...


class _Client(Protocol):
    """What coolctl uses of the library's AsyncRedfishClient (the package has no types)."""

    async def login(self, auth: str = "session") -> None: ...

    async def logout(self) -> None: ...

    async def get(
        self,
        path: str | URL,
        args: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the library's signature)
    ) -> _Response: ...

    async def patch(
        self,
        path: str | URL,
        args: Mapping[str, str] | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the library's signature)
    ) -> _Response: ...

    async def post(
        self,
        path: str | URL,
        args: Mapping[str, str] | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the library's signature)
    ) -> _Response: ...


class count_requests:
    """Attribute the HTTP requests made inside the block to `hook` (one call per request).

    Requests are counted where aiohttp builds them (the session's request class), so the
    logins and session refreshes the library makes on its own are counted too; a context
    variable tells whose they are when several devices share one transport.
    """

    def __init__(self, hook: Callable[[], None]) -> None:
        self._hook = hook
        self._token: contextvars.Token[Callable[[], None] | None] | None = None

    def __enter__(self) -> None:
        self._token = _request_counter.set(self._hook)

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _request_counter.reset(self._token)


class RedfishTransport:
    """One Redfish service as coolctl talks to it: a session, at most `max_in_flight` requests
    at a time, a deadline on each, a backoff after trouble, and typed failures.

    Several devices on one service (a chassis manager with many servers, a CDU controller with
    two CDUs) may share one transport, and then share its session and its concurrency limit,
    which is what a BMC's own limits are about.
    """

    def __init__(
        self,
        settings: RedfishSettings,
        *,
        label: str | None = None,
        log_extra: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.label = label or settings.origin
        self.requests = 0
        self.connected = False
        self._semaphore = asyncio.Semaphore(settings.max_in_flight)
        self._login_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._client: _Client | None = None
        self._logged_in = False
        self._urls: dict[tuple[str, tuple[tuple[str, str], ...]], URL] = {}
        self._origin_url = URL(settings.origin)
        self._backoff_s = settings.backoff_min_s
        self._next_request_at = -math.inf
        self._ssl: ssl.SSLContext | Literal[False] = self._ssl_context()
        self._log_extra = dict(log_extra or {"redfish_service": settings.origin})
        if not settings.verify_tls:
            log.warning(
                "%s: TLS certificate verification is OFF by configuration: the service's"
                " identity is not checked",
                self.label,
                extra=self._log_extra,
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _ssl_context(self) -> ssl.SSLContext | Literal[False]:
        """Built once, at construction (a config-time error, not a poll-time one)."""
        settings = self.settings
        if not settings.verify_tls:
            return False
        try:
            if settings.ca_file is not None:
                return ssl.create_default_context(cafile=str(settings.ca_file))
            return ssl.create_default_context()
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load CA file {settings.ca_file}: {exc}") from None

    # ------------------------------------------------------------------------------------------
    # Backoff

    def waiting_s(self) -> float | None:
        """Seconds left before the next request may go, or None when it may go now."""
        left = self._next_request_at - time.monotonic()
        return left if left > 0 else None

    def _link_failed(self, failure: Failure) -> None:
        """Leave the service alone for the backoff delay (or its Retry-After, up to
        backoff_max_s: a device cannot silence coolctl for longer than configured)."""
        delay = self._backoff_s
        if failure.retry_after_s is not None:
            delay = max(delay, min(failure.retry_after_s, self.settings.backoff_max_s))
        self._next_request_at = time.monotonic() + delay
        self._backoff_s = min(self._backoff_s * 2, self.settings.backoff_max_s)
        if failure.kind in (FailureKind.TIMEOUT, FailureKind.CONNECTION):
            self.connected = False

    def _link_worked(self) -> None:
        self._backoff_s = self.settings.backoff_min_s
        self.connected = True

    def reset_backoff(self) -> None:
        """Forget the backoff (for one-shot tools that retry on their own terms)."""
        self._next_request_at = -math.inf
        self._backoff_s = self.settings.backoff_min_s

    # ------------------------------------------------------------------------------------------
    # Requests

    async def get(self, uri: str, params: Mapping[str, str] | None = None) -> Fetched:
        """GET one resource: its JSON object and ETag. Raises Failure for anything else."""
        target = self._url(uri, params)
        if target is None:  # yarl refuses it: the library says so in its own terms
            response = await self._call(lambda client: client.get(uri, args=params), uri)
        else:
            response = await self._call(lambda client: client.get(target), uri)
        self._check_status(response, uri)
        return Fetched(uri, parse_object(response.read, uri), self._etag(response))

    def _url(self, uri: str, params: Mapping[str, str] | None) -> URL | None:
        """The absolute URL of `uri` with `params` encoded, as the library and aiohttp would
        make it (`base.join(URL(uri)).extend_query(params)`), made once per (uri, params);
        None when yarl refuses the URI."""
        key = (uri, tuple(params.items()) if params else ())
        url = self._urls.get(key)
        if url is None:
            try:
                url = self._origin_url.join(URL(uri))
                if params:
                    url = url.extend_query(params)
            except (TypeError, ValueError):
                return None
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = url
        return url

    async def patch(self, uri: str, body: Mapping[str, Any], etag: str | None) -> Fetched | None:
        """PATCH one resource, with If-Match when an ETag is known. A 401 (expired session)
        costs one new login and one retry. Returns the resource if the service sent it back."""
        headers = {"If-Match": etag} if etag else None
        target = self._url(uri, None) or uri
        for attempt in range(2):
            response = await self._call(
                lambda client: client.patch(target, body=dict(body), headers=headers), uri
            )
            if response.status == 401 and attempt == 0 and self.settings.auth == "session":
                await self._login(again=True)
                continue
            self._check_status(response, uri)
            if not response.read:
                return None
            try:
                return Fetched(uri, parse_object(response.read, uri), self._etag(response))
            except Failure:
                return None  # the PATCH worked; the read-back GET is what counts
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_action(self, uri: str, body: Mapping[str, Any]) -> None:
        """POST an action (its target URI); a 401 (expired session) costs one new login and
        one retry. What the service answers beyond its status is not used: the caller reads
        the resource back."""
        target = self._url(uri, None) or uri
        for attempt in range(2):
            response = await self._call(lambda client: client.post(target, body=dict(body)), uri)
            if response.status == 401 and attempt == 0 and self.settings.auth == "session":
                await self._login(again=True)
                continue
            self._check_status(response, uri)
            return
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(
        self, operation: Callable[[_Client], Awaitable[_Response]], uri: str
    ) -> _Response:
        """One library call: logged in, within the concurrency limit, within a deadline, and
        not at all while backing off."""
        client = await self._login()
        async with self._semaphore:
            waiting = self.waiting_s()
            if waiting is not None:  # another request failed while this one was queued
                raise Failure(FailureKind.BACKOFF, f"backing off, next request in {waiting:.3g} s")
            try:
                return await self._guarded(operation(client), uri)
            except Failure as failure:
                if failure.kind == FailureKind.AUTH and failure.link:
                    self._logged_in = False  # log in afresh after the backoff
                if failure.link:
                    self._link_failed(failure)
                raise

    async def _guarded(self, call: Awaitable[_Response], uri: str) -> _Response:
        """Run a library call, turning every way it can fail into a Failure. (The URI is made
        fit for a log line, `_safe`, only once a call has failed: most calls do not.)"""
        deadline = self.settings.timeout_s * _CALL_DEADLINE_FACTOR + 1.0
        try:
            async with asyncio.timeout(deadline):
                return await call
        except TimeoutError:
            raise Failure(
                FailureKind.TIMEOUT, f"{_safe(uri)}: no answer within {deadline:g} s"
            ) from None
        except _BodyTooLarge as exc:
            raise Failure(FailureKind.TOO_LARGE, f"{_safe(uri)}: {exc}") from None
        except RedfishTimeoutError:
            raise Failure(
                FailureKind.TIMEOUT, f"{_safe(uri)}: no answer within {self.settings.timeout_s:g} s"
            ) from None
        except RedfishConnectionError as exc:
            raise _connection_failure(_safe(uri), exc.__cause__) from None
        except RedfishAuthenticationError:
            raise Failure(
                FailureKind.AUTH, f"{_safe(uri)}: the service refused the credentials"
            ) from None
        except RedfishHTTPError as exc:
            response = cast(_Response, exc.response)
            raise self._status_failure(response, _safe(uri)) from None
        except RedfishInvalidTargetError:
            raise Failure(
                FailureKind.MALFORMED, f"{_safe(uri)}: a link that leaves the service's origin"
            ) from None
        except RedfishProtocolError:
            raise Failure(
                FailureKind.MALFORMED, f"{_safe(uri)}: the service answered nonsense"
            ) from None
        except RedfishError as exc:
            raise Failure(FailureKind.CONNECTION, f"{_safe(uri)}: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError) as exc:  # not expected past the library
            raise _connection_failure(_safe(uri), exc) from None

    def _check_status(self, response: _Response, uri: str) -> None:
        if 200 <= response.status < 300:
            self._link_worked()
            return
        failure = self._status_failure(response, _safe(uri))
        if failure.kind == FailureKind.AUTH and failure.link:
            self._logged_in = False  # log in afresh after the backoff
        if failure.link:
            self._link_failed(failure)
        else:
            self._link_worked()  # the service answered: it is there
        raise failure

    def _status_failure(self, response: _Response, what: str) -> Failure:
        status = response.status
        retry_after = _retry_after_s(response.getheader("Retry-After"))
        text = f"{what}: HTTP {status}"
        if retry_after is not None:
            text += f" (Retry-After {retry_after:.3g} s)"
        if status == 401:
            return Failure(FailureKind.AUTH, f"{text}, credentials refused", status=status)
        if status == 403:  # logged in, but not allowed this: that resource's trouble only
            return Failure(FailureKind.AUTH, f"{text}, not permitted", status=status, link=False)
        if status >= 500:
            return Failure(FailureKind.HTTP_5XX, text, status=status, retry_after_s=retry_after)
        # 429 Too Many Requests, or any 4xx with Retry-After: the service wants a rest.
        busy = status == 429 or retry_after is not None
        return Failure(
            FailureKind.HTTP_4XX, text, status=status, retry_after_s=retry_after, link=busy
        )

    @staticmethod
    def _etag(response: _Response) -> str | None:
        etag = response.getheader("ETag")
        return etag if isinstance(etag, str) and _ETAG.fullmatch(etag) else None

    # ------------------------------------------------------------------------------------------
    # Session

    def _open(self) -> _Client:
        if self._client is not None:
            return self._client
        settings = self.settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=settings.max_in_flight),
            request_class=_counting_request_class(self._count_request),
            response_class=_capped_response_class(settings.max_body_bytes),
            timeout=aiohttp.ClientTimeout(total=settings.timeout_s),
        )
        with_credentials = settings.auth != "none"
        self._client = cast(
            _Client,
            AsyncRedfishClient(
                settings.origin,
                username=settings.username if with_credentials else None,
                password=settings.password if with_credentials else None,
                session=self._session,
                timeout=settings.timeout_s,
            ),
        )
        return self._client

    def _count_request(self) -> None:
        self.requests += 1
        hook = _request_counter.get()
        if hook is not None:
            hook()

    async def _login(self, *, again: bool = False) -> _Client:
        """The client, logged in (once; again after a 401 on a PATCH)."""
        client = self._open()
        if self.settings.auth == "none" or (self._logged_in and not again):
            return client
        async with self._login_lock:
            if self._logged_in and not again:
                return client
            waiting = self.waiting_s()
            if waiting is not None:
                raise Failure(FailureKind.BACKOFF, f"backing off, next login in {waiting:.3g} s")
            async with self._semaphore:
                try:
                    await self._guarded(
                        _none_response(client.login(self.settings.auth)), "session login"
                    )
                except Failure as failure:
                    self._logged_in = False
                    if failure.link or failure.kind == FailureKind.AUTH:
                        self._link_failed(failure)  # no hammering at a login that fails
                    raise
            self._logged_in = True
            self._link_worked()
        return client

    async def close(self) -> None:
        """Log out (a BMC has few session slots) and drop the connections. A later request
        opens a new session, as a later poll of a Modbus device connects again."""
        client, session = self._client, self._session
        self._client = self._session = None
        try:
            if client is not None and self._logged_in:
                self._logged_in = False
                async with self._semaphore:
                    await self._guarded(_none_response(client.logout()), "session logout")
        except Failure as failure:
            log.info(
                "%s: Redfish logout failed (%s); the session will expire on its own",
                self.label,
                failure,
                extra=self._log_extra,
            )
        finally:
            self._logged_in = False
            self.connected = False
            if session is not None:
                await session.close()


async def _none_response(call: Awaitable[None]) -> _Response:
    """Adapt login/logout (which return nothing) to _guarded's shape."""
    await call
    return _NoResponse()


class _NoResponse:
    status = 204
    read = b""

    def getheader(self, name: str) -> str | None:
        return None


def _connection_failure(what: str, cause: BaseException | None) -> Failure:
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        return Failure(FailureKind.CONNECTION, f"{what}: TLS certificate verification failed")
    if isinstance(cause, aiohttp.ClientSSLError | ssl.SSLError):
        return Failure(FailureKind.CONNECTION, f"{what}: TLS handshake failed")
    if isinstance(cause, _BodyTooLarge):
        return Failure(FailureKind.TOO_LARGE, f"{what}: {cause}")
    if isinstance(cause, aiohttp.ClientPayloadError):
        return Failure(FailureKind.MALFORMED, f"{what}: the body could not be read (bad encoding)")
    if isinstance(cause, aiohttp.ClientResponseError):
        return Failure(FailureKind.MALFORMED, f"{what}: an invalid HTTP response")
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return Failure(FailureKind.CONNECTION, f"{what}: the service closed the connection")
    if isinstance(cause, aiohttp.ClientConnectorError):
        return Failure(FailureKind.CONNECTION, f"{what}: cannot connect")
    name = type(cause).__name__ if cause is not None else "unknown error"
    return Failure(FailureKind.CONNECTION, f"{what}: {name}")


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds from now: a number of seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    if value.isdigit():  # '²', '①', '٣' (str.isdigit() takes them) or over 12 digits: no delay
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def parse_object(raw: bytes, uri: str) -> dict[str, Any]:
    """The JSON object of a body. Bytes that are not UTF-8 become U+FFFD (so one bad string
    spoils the properties it is in, not the resource); NaN and Infinity are kept for the point
    mapping to refuse one by one; nesting too deep or numbers too long fail the resource."""
    try:
        body = json.loads(raw.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        raise Failure(FailureKind.MALFORMED, f"{_safe(uri)}: not JSON") from None
    if not isinstance(body, dict):
        raise Failure(FailureKind.MALFORMED, f"{_safe(uri)}: not a JSON object")
    return body


def _safe(text: str, limit: int = 160) -> str:
    """Text from a device, fit for a log line: printable ASCII, bounded."""
    cleaned = text.encode("ascii", "backslashreplace").decode("ascii")
    cleaned = "".join(c if c.isprintable() else "?" for c in cleaned)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


safe_text = _safe
