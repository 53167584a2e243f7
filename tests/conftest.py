"""Shared fixtures: coolctl as separate processes, the way operators and systemd run it."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coolctl.tools.broker import Mosquitto

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "config" / "example.toml"
COOLCTL = [sys.executable, "-m", "coolctl.cli.main"]
_EXAMPLE_PORTS = {"cdu1": "15020", "pdu1": "15021"}


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
