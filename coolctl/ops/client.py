"""The control API's client, as the CLI uses it.

Over the daemon's UNIX socket by default (who you are comes from the socket itself), or over
TCP with `url` and a bearer token. Methods return the API's JSON documents unchanged, so that
`--json` can print exactly what the daemon said.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from coolctl.ops.api import load_token
from coolctl.ops.protocol import JsonObject

DEFAULT_SOCKET = Path("/run/coolctl/control.sock")
DEFAULT_TIMEOUT_S = 10.0


def default_socket_path() -> Path:
    """$COOLCTL_SOCKET, else the socket the packaged systemd unit creates."""
    return Path(os.environ.get("COOLCTL_SOCKET") or DEFAULT_SOCKET)


class ClientError(Exception):
    """The daemon answered and refused (4xx) or failed (5xx); `message` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    """The daemon could not be asked at all: no socket, nobody listening, no permission..."""


class ControlClient:
    """One connection pool to one daemon; use as `async with ControlClient(...) as client`."""

    def __init__(
        self,
        *,
        socket_path: Path | None = None,
        url: str | None = None,
        token: str | None = None,
        token_file: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        """`ca_file` is the CA to verify an https:// listener with (default: the system's);
        `cert_file`/`key_file` a client certificate for a listener that asks for one."""
        if url is not None and socket_path is not None:
            raise ValueError("give a socket path or a URL, not both")
        if token is None and token_file is not None:
            token = load_token(token_file)  # ValueError says which file and why
        self.timeout_s = timeout_s
        self._headers = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        if url is not None:
            base = URL(url)
            if base.scheme not in ("http", "https") or not base.host:
                raise ValueError(f"--url must look like http://HOST:PORT, not {url!r}")
            self._base = base.with_query(None).with_fragment(None)
            self._prefix = base.raw_path.rstrip("/")  # behind a proxy that adds a prefix
            self.where = str(self._base).rstrip("/")
            self._socket_path: Path | None = None
        else:
            self._socket_path = socket_path or default_socket_path()
            self._base = URL("http://coolctl/")
            self._prefix = ""
            self.where = str(self._socket_path)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        if url is not None and (ca_file or cert_file):
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if cert_file is not None:
                self._ssl.load_cert_chain(cert_file, key_file)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector: aiohttp.BaseConnector | None = None
            if self._socket_path is not None:
                connector = aiohttp.UnixConnector(path=str(self._socket_path))
            elif self._ssl is not None:
                connector = aiohttp.TCPConnector(ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: JsonObject | None = None,
        timeout_s: float | None = None,
    ) -> JsonObject:
        """One API call; the decoded JSON document, ClientError or Unreachable.

        `path` must already be URL-encoded (see `_segment`).
        """
        url = self._base.with_path(self._prefix + path, encoded=True)
        if query:
            url = url.with_query(query)
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self._open().request(method, url, json=body, timeout=timeout) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(self._unreachable_message(exc.os_error)) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise Unreachable(f"lost the connection to coolctl at {self.where}: {exc}") from None
        except TimeoutError:
            seconds = timeout_s or self.timeout_s
            raise Unreachable(
                f"coolctl at {self.where} did not answer within {seconds:g} s"
            ) from None
        return _decode(status, text)

    def _unreachable_message(self, error: OSError) -> str:
        if self._socket_path is None:
            return f"cannot reach coolctl at {self.where}: {error.strerror or error}"
        if isinstance(error, PermissionError):
            return (
                f"permission denied on {self.where}: are you in the group that owns it? "
                f"(ls -l {self.where})"
            )
        return (
            f"cannot reach coolctl at {self.where}: is the daemon running? "
            "(systemctl status coolctl)"
        )

    # -- the endpoints --

    async def status(self) -> JsonObject:
        return await self.request("GET", "/v1/status")

    async def racks(self) -> JsonObject:
        return await self.request("GET", "/v1/racks")

    async def points(self, rack: str | None = None) -> JsonObject:
        return await self.request("GET", "/v1/points", query=_rack(rack))

    async def loops(self, rack: str | None = None) -> JsonObject:
        return await self.request("GET", "/v1/loops", query=_rack(rack))

    async def overrides(self, rack: str | None = None) -> JsonObject:
        return await self.request("GET", "/v1/overrides", query=_rack(rack))

    async def set_override(
        self,
        rack: str,
        target: str,
        value: float,
        *,
        ttl_s: float | None = None,
        permanent: bool = False,
        reason: str,
    ) -> JsonObject:
        body: JsonObject = {
            "value": value,
            "ttl_s": ttl_s,
            "permanent": permanent,
            "reason": reason,
        }
        return await self.request(
            "PUT", f"/v1/racks/{_segment(rack)}/overrides/{_segment(target)}", body=body
        )

    async def targets(self, rack: str) -> JsonObject:
        return await self.request("GET", f"/v1/racks/{_segment(rack)}/targets")

    async def clear_override(self, rack: str, target: str, *, reason: str) -> JsonObject:
        return await self.request(
            "DELETE",
            f"/v1/racks/{_segment(rack)}/overrides/{_segment(target)}",
            body={"reason": reason},
        )

    async def set_mode(self, rack: str, mode: str, *, reason: str) -> JsonObject:
        return await self.request(
            "PUT", f"/v1/racks/{_segment(rack)}/mode", body={"mode": mode, "reason": reason}
        )

    async def reset_interlock(self, rack: str, interlock: str, *, reason: str) -> JsonObject:
        path = f"/v1/racks/{_segment(rack)}/interlocks/{_segment(interlock)}/reset"
        return await self.request("POST", path, body={"reason": reason})

    async def alarms(self, rack: str | None = None) -> JsonObject:
        return await self.request("GET", "/v1/alarms", query={"rack": rack} if rack else None)

    async def acknowledge_alarms(self, rack: str, *, reason: str) -> JsonObject:
        path = f"/v1/racks/{_segment(rack)}/alarms/ack"
        return await self.request("POST", path, body={"reason": reason})

    async def events(
        self, since: int | None = None, limit: int | None = None, wait_s: float = 0.0
    ) -> JsonObject:
        """Events after `since` (None: the newest); `wait_s` > 0 long-polls for new ones."""
        query = _paging(since, limit)
        if wait_s > 0:
            query["wait"] = f"{wait_s:g}"
        return await self.request(
            "GET", "/v1/events", query=query, timeout_s=self.timeout_s + wait_s
        )

    async def audit(self, since: int | None = None, limit: int | None = None) -> JsonObject:
        return await self.request("GET", "/v1/audit", query=_paging(since, limit))

    async def reload(self) -> JsonObject:
        return await self.request("POST", "/v1/reload")


def _segment(text: str) -> str:
    """One URL path segment: `cdu1/pump_speed_command` becomes `cdu1%2Fpump_speed_command`."""
    return quote(text, safe="")


def _rack(rack: str | None) -> dict[str, str]:
    return {} if rack is None else {"rack": rack}


def _paging(since: int | None, limit: int | None) -> dict[str, str]:
    query: dict[str, str] = {}
    if since is not None:
        query["since"] = str(since)
    if limit is not None:
        query["limit"] = str(limit)
    return query


def _decode(status: int, text: str) -> JsonObject:
    """The document of a 2xx answer, or ClientError with the daemon's own message."""
    try:
        document: Any = json.loads(text) if text else None
    except ValueError:
        document = None
    if 200 <= status < 300:
        if not isinstance(document, dict):
            raise ClientError(status, f"not a coolctl answer: {text[:200]!r}")
        return document
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        raise ClientError(status, document["error"])
    raise ClientError(status, text.strip()[:200] or f"HTTP {status}")
