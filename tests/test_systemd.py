"""systemd integration: the notify protocol on a real socket, the watchdog gate, credentials,
and the shipped unit file checked by `systemd-analyze verify`."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coolctl.daemon.systemd import Notifier, WatchdogGate, credential_path, read_credential

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "systemd" / "coolctl.service"

_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests may themselves run under systemd (a CI runner service); never talk to it.
    for name in _NOTIFY_ENV:
        monkeypatch.delenv(name, raising=False)


class Listener:
    """The systemd end of $NOTIFY_SOCKET: a bound datagram socket that collects messages."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096)
        fields = {}
        for line in data.decode().split("\n"):
            key, sep, value = line.partition("=")
            assert sep, f"not an assignment: {line!r} in {data!r}"
            assert key not in fields, f"{key} twice in {data!r}"
            fields[key] = value
        return fields

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(4096)
        finally:
            self.sock.setblocking(True)


@contextmanager
def _path_listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield Listener(sock, str(path))
    finally:
        sock.close()


@contextmanager
def _abstract_listener() -> Iterator[Listener]:
    name = f"coolctl-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Listener]:
    bind = _path_listener(tmp_path) if request.param == "path" else _abstract_listener()
    with bind as bound:
        monkeypatch.setenv("NOTIFY_SOCKET", bound.env_value)
        yield bound


# --- Notifier -------------------------------------------------------------------------------


def test_every_message_arrives(listener: Listener) -> None:
    notifier = Notifier()
    assert notifier.enabled
    try:
        notifier.ready(status="polling 2 devices")
        assert listener.receive() == {"READY": "1", "STATUS": "polling 2 devices"}

        notifier.status("r01 ok")
        assert listener.receive() == {"STATUS": "r01 ok"}

        before = time.monotonic_ns() // 1000
        notifier.reloading()
        after = time.monotonic_ns() // 1000
        message = listener.receive()
        assert message.keys() == {"RELOADING", "MONOTONIC_USEC"}
        assert message["RELOADING"] == "1"
        assert before <= int(message["MONOTONIC_USEC"]) <= after

        notifier.ready()
        assert listener.receive() == {"READY": "1"}

        notifier.watchdog()
        assert listener.receive() == {"WATCHDOG": "1"}

        notifier.stopping()
        assert listener.receive() == {"STOPPING": "1"}
    finally:
        notifier.close()
    listener.assert_empty()


def test_explicit_socket_path_overrides_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "not-this-one.sock"))
    with _path_listener(tmp_path) as bound:
        notifier = Notifier(bound.env_value)
        notifier.ready()
        assert bound.receive() == {"READY": "1"}
        notifier.close()


def test_status_stays_one_line(listener: Listener) -> None:
    # A status built from device data must not be able to smuggle in another assignment.
    notifier = Notifier()
    notifier.status("r01 degraded\nREADY=1")
    assert listener.receive() == {"STATUS": "r01 degraded READY=1"}
    notifier.close()


def test_close_then_send_reopens(listener: Listener) -> None:
    notifier = Notifier()
    notifier.status("one")
    notifier.close()
    notifier.stopping()
    assert listener.receive() == {"STATUS": "one"}
    assert listener.receive() == {"STOPPING": "1"}
    notifier.close()
    notifier.close()


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready("x")
    notifier.status("x")
    notifier.reloading()
    notifier.watchdog()
    notifier.stopping()
    notifier.close()


def test_unsupported_socket_kind_is_disabled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="coolctl.daemon.systemd"):
        notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert "not a Unix socket path" in caplog.text
    notifier.ready()


def test_vanished_socket_is_logged_once_and_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = Notifier()
    notifier.ready()
    assert sock.recv(4096) == b"READY=1"

    sock.close()
    path.unlink()
    with caplog.at_level(logging.DEBUG, logger="coolctl.daemon.systemd"):
        for _ in range(3):
            notifier.watchdog()
        notifier.status("still running")
        notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert str(path) in warnings[0].getMessage()

    # The socket comes back (systemd re-executed): delivery resumes and says so, and a later
    # failure is reported again.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="coolctl.daemon.systemd"):
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert "works again" in caplog.text
        sock.close()
        path.unlink()
        notifier.watchdog()
    assert sum(r.levelno >= logging.WARNING for r in caplog.records) == 1
    notifier.close()


def test_vanished_abstract_socket_is_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@coolctl-test-gone-{uuid.uuid4().hex}")
    notifier = Notifier()
    with caplog.at_level(logging.WARNING, logger="coolctl.daemon.systemd"):
        notifier.ready()
        notifier.watchdog()
    assert len(caplog.records) == 1
    assert "@coolctl-test-gone-" in caplog.records[0].getMessage()
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("10000000", None, 5.0),  # WatchdogSec=10 → ping every 5 s
        ("10000000", "self", 5.0),
        ("3000000", "self", 1.5),
        ("10000000", "other", None),  # inherited from a parent: not ours
        ("10000000", "garbage", None),
        (None, None, None),
        ("0", None, None),
        ("ten", None, None),
    ],
)
def test_watchdog_interval(
    listener: Listener,
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert Notifier().watchdog_interval_s == expected


def test_no_watchdog_interval_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    assert Notifier().watchdog_interval_s is None


# --- WatchdogGate ----------------------------------------------------------------------------


@pytest.fixture
def watchdog_listener(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> Listener:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")  # interval 5 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return listener


def _pings(listener: Listener) -> int:
    count = 0
    listener.sock.setblocking(False)
    try:
        while True:
            try:
                data = listener.sock.recv(4096)
            except BlockingIOError:
                return count
            assert data == b"WATCHDOG=1"
            count += 1
    finally:
        listener.sock.setblocking(True)


@pytest.mark.parametrize("listener", ["path"], indirect=True)
def test_gate_pings_only_when_every_loop_progressed(watchdog_listener: Listener) -> None:
    notifier = Notifier()
    gate = WatchdogGate(notifier, ["r01", "r02"])

    assert not gate.maybe_ping(0.0)  # nothing has ticked yet
    gate.progress("r01", 1.0)
    assert not gate.maybe_ping(1.0)  # r02 has not
    assert gate.stalled() == ["r02"]
    gate.progress("r02", 1.0)
    assert gate.maybe_ping(1.0)
    assert _pings(watchdog_listener) == 1

    # Both progress again, but the interval (5 s) has not elapsed: no ping yet.
    gate.progress("r01", 2.0)
    gate.progress("r02", 2.0)
    assert not gate.maybe_ping(2.0)
    assert gate.maybe_ping(6.0)
    assert _pings(watchdog_listener) == 1
    notifier.close()


@pytest.mark.parametrize("listener", ["path"], indirect=True)
def test_a_stuck_loop_stops_the_pings(
    watchdog_listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier()
    gate = WatchdogGate(notifier, ["r01", "r02"])
    pinged = []
    now = 0.0
    with caplog.at_level(logging.WARNING, logger="coolctl.daemon.systemd"):
        # Both loops tick every second for 20 s, then r02 hangs while r01 keeps going.
        while now < 60.0:
            gate.progress("r01", now)
            if now < 20.0:
                gate.progress("r02", now)
            if gate.maybe_ping(now):
                pinged.append(now)
            now += 1.0
    assert pinged == [0.0, 5.0, 10.0, 15.0, 20.0]  # no ping after r02's last tick at 19 s
    assert gate.stalled() == ["r02"]
    assert _pings(watchdog_listener) == 5
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "watchdog ping withheld, control loops not progressing: r02 (last tick 6.0 s ago)"
    ]

    # r02 recovers (before systemd gave up): pings resume at once, and that is logged.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="coolctl.daemon.systemd"):
        gate.progress("r02", now)
        assert gate.maybe_ping(now)
    assert "resumed" in caplog.text
    notifier.close()


@pytest.mark.parametrize("listener", ["path"], indirect=True)
def test_gate_rejects_unknown_loop(watchdog_listener: Listener) -> None:
    gate = WatchdogGate(Notifier(), ["r01"])
    with pytest.raises(ValueError, match="r99"):
        gate.progress("r99", 0.0)


def test_gate_without_watchdog_never_pings() -> None:
    gate = WatchdogGate(Notifier(), ["r01"])
    gate.progress("r01", 0.0)
    assert not gate.maybe_ping(100.0)


# --- Credentials -----------------------------------------------------------------------------


def test_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert credential_path("redfish-password") is None  # not under systemd
    assert read_credential("redfish-password") is None

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "redfish-password").write_bytes(b"s3cret pass\n\n")
    (creds / "mqtt-password").write_bytes(b"hunter2")
    (creds / "windows").write_bytes(b"abc\r\n")
    (creds / "binary").write_bytes(b"\xff\xfesecret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    assert credential_path("redfish-password") == creds / "redfish-password"
    assert read_credential("redfish-password") == "s3cret pass\n"  # one newline only
    assert read_credential("mqtt-password") == "hunter2"
    assert read_credential("windows") == "abc"
    assert credential_path("absent") is None
    assert read_credential("absent") is None
    with pytest.raises(ValueError, match="not UTF-8") as info:
        read_credential("binary")
    assert "secret" not in str(info.value)
    for bad in ("", ".", "..", "../etc/passwd", "a/b"):
        with pytest.raises(ValueError):
            credential_path(bad)


# --- The unit file ---------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
)

# Lines about the unit that are about this machine, not the unit text: the coolctl user and
# group and the credential source files exist only on an installed rack manager. systemd 252
# prints none of these, but other versions may. The patterns require both the missing thing and
# "not found"/"no such file", so a parse error on those same lines (e.g. `Credential name
# "redfish/password" not valid`) still fails the test; so does every other line naming the unit.
_TOLERATED = re.compile(
    r"(user|group) \W?coolctl\W? (not found|does not exist)"
    r"|/etc/coolctl/credentials/[\w-]+\W*:? .*(no such file|not found)",
    re.IGNORECASE,
)


def _verify(unit_text: str, tmp_path: Path) -> tuple[int, list[str]]:
    """Runs `systemd-analyze verify` on a copy; returns its exit code and the lines it printed
    about the unit itself that are not tolerated."""
    assert SYSTEMD_ANALYZE is not None
    copy = tmp_path / "coolctl.service"
    copy.write_text(unit_text)
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    output = (proc.stdout + proc.stderr).splitlines()
    # Only lines naming this unit count: verify also loads the units it depends on
    # (network-online.target, multi-user.target), and what those print depends on the host.
    about_unit = [line for line in output if str(copy) in line or "coolctl.service" in line]
    return proc.returncode, [line for line in about_unit if not _TOLERATED.search(line)]


def _installable_copy() -> str:
    """The unit with ExecStart pointing at an executable that exists here: verify checks the
    binary, and /usr/bin/coolctl exists only on an installed rack manager."""
    text = UNIT.read_text()
    venv_coolctl = Path(sys.executable).parent / "coolctl"
    executable = venv_coolctl if venv_coolctl.exists() else Path(sys.executable)
    replaced, count = re.subn(
        r"^ExecStart=/usr/bin/coolctl ", f"ExecStart={executable} ", text, flags=re.MULTILINE
    )
    assert count == 1, "the unit must have exactly one ExecStart=/usr/bin/coolctl line"
    return replaced


def test_unit_verifies(tmp_path: Path) -> None:
    returncode, problems = _verify(_installable_copy(), tmp_path)
    assert returncode == 0
    assert problems == []


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("ProtectHome=yes", "ProtectHom=yes"),  # misspelt directive: exit 0, one warning line
        ("WatchdogSec=10", "WatchdogSec=ten"),  # unparsable value
        ("Type=notify", "Type=notifyy"),
        (
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictAddressFamilies=AF_UNIX AF_INTE AF_INET6",
        ),
        (
            "LoadCredential=redfish-password:/etc/coolctl/credentials/redfish-password",
            "LoadCredential=redfish/password:/etc/coolctl/credentials/redfish-password",
        ),
    ],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, good: str, bad: str) -> None:
    # Proves the filter above does not hide real mistakes: systemd-analyze exits 0 for these and
    # only says so on stderr.
    text = _installable_copy()
    assert f"\n{good}\n" in text
    _, problems = _verify(text.replace(f"\n{good}\n", f"\n{bad}\n"), tmp_path)
    assert len(problems) == 1, problems
    key, _, value = bad.partition("=")
    assert key in problems[0] or any(word in problems[0] for word in re.split(r"[ :]", value))


def test_unit_has_what_the_daemon_relies_on() -> None:
    # The daemon's behaviour depends on these; verify does not know that.
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for required in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/coolctl run --config /etc/coolctl/coolctl.toml --log-format journal",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=10",
        "Restart=on-failure",
        "StateDirectory=coolctl",
        "RuntimeDirectory=coolctl",
        "RuntimeDirectoryMode=0755",
        "LoadCredential=redfish-password:/etc/coolctl/credentials/redfish-password",
        "LoadCredential=mqtt-password:/etc/coolctl/credentials/mqtt-password",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ):
        assert required in lines, required
    assert not any(line.startswith("MemoryDenyWriteExecute=") for line in lines)
