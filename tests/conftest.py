"""Shared fixtures: coolctl as separate processes, the way operators and systemd run it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from coolctl.tools.broker import Mosquitto

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "config" / "example.toml"
COOLCTL = [sys.executable, "-m", "coolctl.cli.main"]
_EXAMPLE_PORTS = {"cdu1": "15020", "pdu1": "15021"}


# -- no silent skips ----------------------------------------------------------------------------
#
# A test that skips tests nothing, and a run with skips looks as green as one without. A skip is
# allowed only for a reason listed here, and only while its condition holds; any other skip
# fails the run (after every test has run, with the list of skips and where they came from).
# CI runs as root and installs what the tests need (scripts/test), so there nothing may skip.

ALLOWED_SKIPS: dict[str, Callable[[], bool]] = {
    # acting as other users needs root; a developer's machine may not be, CI always is
    "needs root": lambda: os.geteuid() != 0 and not os.environ.get("CI"),
}

_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def unexpected_skips() -> list[tuple[str, str]]:
    return [
        (test, reason)
        for test, reason in _skips
        if not any(key in reason and allowed() for key, allowed in ALLOWED_SKIPS.items())
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if unexpected_skips() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    unexpected = unexpected_skips()
    if unexpected:
        terminalreporter.section("skipped without an allowed reason (the run fails)", red=True)
        for test, reason in unexpected:
            terminalreporter.line(f"{test}: {reason}")


# -- Hypothesis ---------------------------------------------------------------------------------
# scripts/mutation sets HYPOTHESIS_PROFILE=mutation: the same examples for every mutant, so
# that a mutant killed once is killed every time.
settings.register_profile("mutation", derandomize=True, deadline=None)
if os.environ.get("HYPOTHESIS_PROFILE") == "mutation":
    settings.load_profile("mutation")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under scripts/mutation, the property tests run after the example tests: with `-x` most
    mutants die in the first quick examples instead of after seconds of generated cases."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "mutation":
        items.sort(key=lambda item: item.name.startswith("test_property"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def site_config(tmp_path: Path, served: dict[str, str], extra: str = "") -> Path:
    """deploy/config/example.toml pointed at the served devices and broker, with `extra` TOML
    appended."""
    config = EXAMPLE.read_text()
    for device, address in served.items():
        if device == "broker":
            config = config.replace('broker = "127.0.0.1:1883"', f'broker = "{address}"')
            continue
        port = address.rsplit(":", 1)[1]
        config = config.replace(f"port = {_EXAMPLE_PORTS[device]}", f"port = {port}")
    path = tmp_path / "site.toml"
    path.write_text(config + extra)
    return path


@pytest.fixture
def broker() -> Iterator[str]:
    """A private Mosquitto on a free port (in a thread of its own event loop); yields host:port."""
    mosquitto = Mosquitto()
    asyncio.run(mosquitto.start())
    try:
        yield mosquitto.address
    finally:
        asyncio.run(mosquitto.stop())


@pytest.fixture
def served(broker: str) -> Iterator[dict[str, str]]:
    """`coolctl sim serve --port 0` in a child process, its MQTT sensors on a private broker;
    yields device -> host:port, and "broker" -> the broker's host:port."""
    process = subprocess.Popen(
        [
            *COOLCTL,
            "sim",
            "serve",
            "--config",
            str(EXAMPLE),
            "--port",
            "0",
            "--mqtt-broker",
            broker,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert process.stdout is not None
    addresses = {"broker": broker}
    try:
        while len(addresses) < 3:
            line = process.stdout.readline()
            protocol, address, *fields = line.split()
            if protocol != "modbus":
                continue
            labels = dict(field.split("=", 1) for field in fields)
            addresses[labels["device"]] = address
        yield addresses
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
