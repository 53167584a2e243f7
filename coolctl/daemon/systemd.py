"""systemd integration in plain stdlib: readiness and watchdog notifications, and credentials.

coolctl runs as a `Type=notify` service (deploy/systemd/coolctl.service). The notify protocol
is one datagram of newline-separated `KEY=value` lines sent to the AF_UNIX socket named by
`$NOTIFY_SOCKET`, which is small enough not to justify a dependency on python-systemd.

Everything here is safe to call when coolctl is not running under systemd (tests, `coolctl
demo`, a terminal): without `$NOTIFY_SOCKET` the notifier does nothing, so the daemon calls it
unconditionally. A notification that cannot be delivered is logged once and never raised: a
lost `STATUS=` must not take the cooling controller down, and a lost `WATCHDOG=1` is exactly
what the watchdog is there to notice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# A datagram to a full receive queue blocks; systemd drains its queue quickly, and the control
# loop must not stall behind it for long. A notification that times out is treated as lost.
_SEND_TIMEOUT_S = 0.25


class Notifier:
    """Talks to systemd over `$NOTIFY_SOCKET`.

    The socket is a datagram AF_UNIX socket, either a filesystem path or, when the name starts
    with `@`, a Linux abstract socket (the `@` stands for the leading NUL byte). Without a
    socket (not under systemd) every method is a no-op and `enabled` is False.

    `watchdog_interval_s` is half of `$WATCHDOG_USEC`, the period at which coolctl should send
    `WATCHDOG=1` (the convention sd_watchdog_enabled(3) documents: ping at half the timeout so
    one late ping is not fatal). It is None when no watchdog is configured for this process:
    `$WATCHDOG_USEC` unset or invalid, `$WATCHDOG_PID` naming another process (the variables
    were inherited from a parent), or no notify socket to ping on.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        if socket_path is None:
            socket_path = os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = _socket_address(socket_path)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False
        self.enabled: bool = self._address is not None
        self.watchdog_interval_s: float | None = (
            _watchdog_interval_s(os.environ) if self.enabled else None
        )

    def ready(self, status: str | None = None) -> None:
        """Tells systemd that start-up (or a reload) is complete: config loaded, sockets bound.

        Until this arrives `systemctl start coolctl` waits, and dependent units do not start.
        """
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        self._send(fields)

    def status(self, text: str) -> None:
        """Sets the one-line status `systemctl status coolctl` shows."""
        self._send([_status_field(text)])

    def reloading(self) -> None:
        """Tells systemd a reload (SIGHUP) has begun; follow with `ready()` when it is done.

        `MONOTONIC_USEC` lets systemd match this message to the `systemctl reload` it is
        waiting for, so a reload that completes before systemd looks is not mistaken for none.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}"])

    def stopping(self) -> None:
        """Tells systemd shutdown has begun, so `systemctl status` says so while writes finish."""
        self._send(["STOPPING=1"])

    def watchdog(self) -> None:
        """Resets systemd's watchdog timer; send it through `WatchdogGate`, not directly."""
        self._send(["WATCHDOG=1"])

    def close(self) -> None:
        """Closes the socket; later calls reopen it, so a late `stopping()` still works."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, fields: list[str]) -> None:
        if self._address is None:
            return
        payload = "\n".join(fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                # Log the first failure of a run of failures only: the daemon notifies every
                # few seconds, and a vanished socket would otherwise flood the journal.
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "cannot notify systemd on %s: %s (further failures not logged)",
                        _printable(self._address),
                        exc,
                    )
                return
            if self._failing:
                self._failing = False
                log.info("notifying systemd on %s works again", _printable(self._address))


class WatchdogGate:
    """Sends `WATCHDOG=1` only when every registered loop has made progress since the last ping.

    Pinging from a timer would prove only that the event loop runs; coolctl's danger is a
    control loop that hangs (a wedged await, a loop that raises every tick) while everything
    else looks alive. So each control loop reports `progress()` after a completed tick, and
    `maybe_ping()` pings only once all of them have: one stuck loop stops the pings, systemd's
    `WatchdogSec=` expires, and systemd kills and restarts coolctl (`Restart=on-failure`).

    Every loop must complete a tick within the watchdog interval (`WatchdogSec=`/2); a loop with
    a longer period would be taken for a stuck one. With no watchdog configured,
    `maybe_ping()` never pings.
    """

    def __init__(self, notifier: Notifier, names: Iterable[str]) -> None:
        self._notifier = notifier
        self._names = tuple(dict.fromkeys(names))
        self._progressed: set[str] = set()
        self._last_progress: dict[str, float] = {}
        self._last_ping: float | None = None
        # When the current ping period began: the last ping, or the first maybe_ping() call.
        self._period_start: float | None = None
        self._withheld_logged = False

    def progress(self, name: str, now: float) -> None:
        """Records that loop `name` completed a tick at `now` (monotonic seconds)."""
        if name not in self._names:
            raise ValueError(f"watchdog: unknown loop {name!r}; registered: {self._names}")
        self._progressed.add(name)
        self._last_progress[name] = now

    def stalled(self) -> list[str]:
        """The loops that have not progressed since the last ping, in registration order."""
        return [name for name in self._names if name not in self._progressed]

    def maybe_ping(self, now: float) -> bool:
        """Pings if the interval has elapsed and all loops progressed; returns whether it pinged.

        Call it as often as convenient (every control tick is fine): it rate-limits itself.
        """
        interval = self._notifier.watchdog_interval_s
        if interval is None:
            return False
        if self._period_start is None:
            self._period_start = now
        if self._last_ping is not None and now - self._last_ping < interval:
            return False
        stalled = self.stalled()
        if stalled:
            # Log once per stall, and only once a ping is really overdue: at start-up the
            # loops have not ticked yet and that is not worth a line.
            if not self._withheld_logged and now - self._period_start >= interval:
                self._withheld_logged = True
                ages = ", ".join(
                    f"{name} (last tick {now - self._last_progress[name]:.1f} s ago)"
                    if name in self._last_progress
                    else f"{name} (no tick yet)"
                    for name in stalled
                )
                log.error("watchdog ping withheld, control loops not progressing: %s", ages)
            return False
        if self._withheld_logged:
            self._withheld_logged = False
            log.warning("watchdog pings resumed, every control loop is progressing again")
        self._notifier.watchdog()
        self._last_ping = now
        self._period_start = now
        self._progressed.clear()
        return True


def credential_path(name: str) -> Path | None:
    """`$CREDENTIALS_DIRECTORY/name` if it exists, else None.

    systemd copies each `LoadCredential=name:path` file into a private, read-only directory that
    only the service can read, so coolctl never needs to read the root-owned originals and the
    secrets never appear in the config file or the environment.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a credential name: {name!r}")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    return path if path.is_file() else None


def read_credential(name: str) -> str | None:
    """The secret `name`, stripped of one trailing newline (editors add one); None if absent.

    Never log the result. Errors name the credential, never its content: a file that is not
    UTF-8 raises ValueError without the decoder's excerpt of the bytes.
    """
    path = credential_path(name)
    if path is None:
        return None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"credential {name!r} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _socket_address(socket_path: str | None) -> str | None:
    """The address to `sendto()`: a path, or an abstract name with its leading NUL."""
    if not socket_path:
        return None
    if socket_path.startswith("@"):
        return "\0" + socket_path[1:]
    if socket_path.startswith("/"):
        return socket_path
    # Other forms (e.g. vsock: addresses for VMs) are not supported; say so instead of
    # silently never becoming ready.
    log.warning("NOTIFY_SOCKET=%r is not a Unix socket path; not notifying systemd", socket_path)
    return None


def _watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; watchdog disabled", raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


def _status_field(text: str) -> str:
    # A newline would end the STATUS= line and start another assignment in the datagram (a
    # status built from device data could then say READY=1); the status is one line anyway.
    return "STATUS=" + " ".join(text.splitlines())


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
