"""A private Mosquitto broker on loopback, for coolctl's tests and for `coolctl demo`.

The MQTT driver is tested against the real broker, not a mock: reconnects, retained
messages, Last Will and authentication are the broker's behaviour, and a fake would only
encode what we believe that behaviour to be. Each instance runs its own `mosquitto` process
with a generated config in a temporary folder, so tests never share state with each other or
with a broker the machine may already run.

Persistence is off: a restarted broker has forgotten its retained messages, which is what a
test of the daemon's republish-after-reconnect needs, and what a real broker without a
persistence file does too.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

HOST: Final = "127.0.0.1"
INSTALL_HINT: Final = "mosquitto is not installed: apt-get install mosquitto"

# Debian installs the broker in sbin, which is not on an ordinary user's PATH.
_SBIN_CANDIDATES: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_READY_TIMEOUT_S: Final = 5.0
_STOP_TIMEOUT_S: Final = 5.0
_PORT_ATTEMPTS: Final = 3  # a free port picked for us may be taken before mosquitto binds it


# Keys of a deployed broker config that name files or listeners of that machine: a private
# broker started from such a config (`from_deploy_config`) fills them in itself.
_MACHINE_KEYS: Final = frozenset(
    {"listener", "password_file", "acl_file", "cafile", "capath", "certfile", "keyfile", "user"}
)


class MosquittoError(RuntimeError):
    """The broker is not installed, would not start, or could not be configured."""


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """The broker's TLS files: clients verify `certfile` against `cafile`."""

    cafile: Path
    certfile: Path
    keyfile: Path


def find_mosquitto() -> str | None:
    """The path of the mosquitto broker, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _SBIN_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_mosquitto_passwd() -> str | None:
    """The path of mosquitto_passwd (for password files), or None."""
    return shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None
    )


class Mosquitto:
    """Starts mosquitto on 127.0.0.1 with a generated config in a temp dir; port 0 picks a
    free port, kept across restart() so that clients reconnect to the same address."""

    def __init__(
        self,
        port: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        executable: str | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        tls: BrokerTls | None = None,
        settings: Sequence[str] = (),
    ) -> None:
        """`username`/`password` is one account; `users` (name -> password) several; `acl` is
        the text of an ACL file (everything not granted is denied); `tls` makes the listener
        TLS-only; `settings` are further config lines (e.g. `use_username_as_clientid true`)."""
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within 0..65535, not {port}")
        self.host = HOST
        self.port = port
        self.users: dict[str, str] = dict(users or {})
        if username is not None and password is not None:
            self.users[username] = password
        self.username = username if username is not None else next(iter(self.users), None)
        self.acl = acl
        self.tls = tls
        self.settings = tuple(settings)
        self._executable = executable
        self._fixed_port = port != 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------------------------------
    # Life cycle

    async def start(self) -> None:
        """Write the config and start the broker; returns once the port accepts connections.

        Raises MosquittoError when mosquitto is missing or does not come up within a few
        seconds (with the end of its log in the message).
        """
        if self.running:
            return
        executable = self._executable or find_mosquitto()
        if executable is None or not os.access(executable, os.X_OK):
            raise MosquittoError(INSTALL_HINT)
        self._executable = executable
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="coolctl-mosquitto-"))
            if self.users:
                await self._write_password_file()
            if self.acl is not None:
                _write_private(self._dir / "acl", self.acl)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if not self._fixed_port and (attempt > 1 or self.port == 0):
                self.port = _free_port()
            try:
                await self._spawn()
                return
            except MosquittoError as exc:
                if self._fixed_port or "in use" not in str(exc) or attempt == _PORT_ATTEMPTS:
                    raise

    async def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and remove its temporary folder."""
        await self._terminate(signal.SIGTERM)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL), as a crash or power loss would; restart() or
        start() brings it back on the same port."""
        await self._terminate(signal.SIGKILL)

    async def restart(self) -> None:
        """Stop the broker cleanly and start it again on the same port with the same config.

        Without persistence the new broker knows no sessions and no retained messages.
        """
        await self._terminate(signal.SIGTERM)
        self._fixed_port = True
        await self.start()

    def log_text(self) -> str:
        """What the broker has logged so far (for test failure messages)."""
        if self._dir is None:
            return ""
        try:
            return (self._dir / "mosquitto.log").read_text("utf-8", errors="replace")
        except OSError:
            return ""

    # ----------------------------------------------------------------------------------------
    # Internals

    def _config_text(self) -> str:
        assert self._dir is not None
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        user = _current_user()
        if user is not None:
            # Run as whoever started us: as root, mosquitto would otherwise switch to the
            # "mosquitto" user, which cannot read our temporary folder.
            lines.append(f"user {user}")
        if not self.users:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self._dir / 'passwd'}"]
        if self.acl is not None:
            lines.append(f"acl_file {self._dir / 'acl'}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.cafile}",
                f"certfile {self.tls.certfile}",
                f"keyfile {self.tls.keyfile}",
            ]
        lines += self.settings
        return "\n".join(lines) + "\n"

    async def _write_password_file(self) -> None:
        assert self._dir is not None
        tool = find_mosquitto_passwd()
        if tool is None:
            raise MosquittoError(
                "mosquitto_passwd is not installed, so no password file can be made: "
                "apt-get install mosquitto"
            )
        path = self._dir / "passwd"
        for index, (username, password) in enumerate(self.users.items()):
            create = ["-c"] if index == 0 else []
            result = await asyncio.to_thread(
                subprocess.run,
                [tool, "-b", *create, str(path), username, password],
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                detail = result.stderr.decode("utf-8", errors="replace").strip()
                raise MosquittoError(f"mosquitto_passwd failed for user {username!r}: {detail}")

    async def _spawn(self) -> None:
        assert self._dir is not None and self._executable is not None
        config = self._dir / "mosquitto.conf"
        config.write_text(self._config_text(), "utf-8")
        self._log = (self._dir / "mosquitto.log").open("ab")
        # Popen in a thread: fork and exec are quick, but they are blocking calls.
        self._process = await asyncio.to_thread(
            subprocess.Popen,
            [self._executable, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,  # a Ctrl-C meant for the tests does not reach the broker
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self._terminate(signal.SIGKILL)
            raise

    async def _wait_ready(self) -> None:
        """Poll the port until it accepts a connection, or the broker exits, or time is up."""
        assert self._process is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise MosquittoError(
                    f"mosquitto on {self.address} exited with {self._process.returncode}: "
                    f"{self._log_tail()}"
                )
            if await _accepts_connections(self.host, self.port):
                return
            if time.monotonic() > deadline:
                raise MosquittoError(
                    f"mosquitto on {self.address} did not accept connections within "
                    f"{_READY_TIMEOUT_S:g} s: {self._log_tail()}"
                )
            await asyncio.sleep(0.02)

    async def _terminate(self, signal_number: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal_number)
            if not await _wait_exit(process, _STOP_TIMEOUT_S):
                process.kill()
                await _wait_exit(process, _STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 5) -> str:
        text = self.log_text().strip().splitlines()
        return " | ".join(text[-lines:]) or "(nothing logged)"


def from_deploy_config(
    config_file: Path,
    *,
    users: Mapping[str, str],
    tls: BrokerTls | None,
    acl_file: Path | None = None,
    port: int = 0,
) -> Mosquitto:
    """A private broker on loopback that runs a deployed config (deploy/mosquitto/): its
    settings and its ACL file as shipped, with this machine's listener, passwords and TLS
    files in place of the deployed paths. Tests prove the shipped ACLs with it."""
    settings = []
    for raw in config_file.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.split()[0] in _MACHINE_KEYS:
            continue
        settings.append(line)
    acl_path = acl_file if acl_file is not None else config_file.with_suffix(".acl")
    return Mosquitto(port, users=users, acl=acl_path.read_text("utf-8"), tls=tls, settings=settings)


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created with that mode (never widened, then narrowed)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER, as in some containers
        return None


def _free_port() -> int:
    """A port that is free now; the kernel may hand it out again, hence the retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


async def _accepts_connections(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(0.5):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
