"""`coolctl sim serve --modbus-rtu` puts the simulated Modbus devices on a virtual RS-485 bus
and says where (`modbus-rtu <tty> rack=… device=… unit=N profile=…`); `coolctl probe modbus`
reads them there by tty path and unit id."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest
from conftest import COOLCTL, EXAMPLE

SERVE_RTU = ("--modbus-rtu", "--mqtt-broker")


def probe_args(labels: dict[str, str]) -> list[str]:
    return ["--profile", labels["profile"], "--unit", labels["unit"], "--parity", "N", "--raw"]


@pytest.fixture
def served_rtu(broker: str) -> Iterator[dict[str, dict[str, str]]]:
    process = subprocess.Popen(
        [*COOLCTL, "sim", "serve", "--config", str(EXAMPLE), "--port", "0", *SERVE_RTU, broker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert process.stdout is not None
    devices: dict[str, dict[str, str]] = {}
    try:
        while len(devices) < 2:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "sim serve ended"
            protocol, address, *fields = line.split()
            assert protocol != "modbus", "a Modbus TCP line beside the RTU ones"
            if protocol == "modbus-rtu":
                labels = dict(field.split("=", 1) for field in fields)
                devices[labels["device"]] = {"tty": address, **labels}
        yield devices
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_sim_serve_serves_rtu_and_probe_reads_each_unit(
    served_rtu: dict[str, dict[str, str]],
) -> None:
    cdu, pdu = served_rtu["cdu1"], served_rtu["pdu1"]
    assert cdu["tty"] == pdu["tty"] and cdu["rack"] == "r01"  # one bus
    assert {cdu["unit"], pdu["unit"]} == {"1", "2"}
    for labels in (cdu, pdu):
        result = subprocess.run(
            [*COOLCTL, "probe", "modbus", labels["tty"], *probe_args(labels)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            check=False,
        )
        assert result.returncode == 0, result.stderr
        header, *rows = result.stdout.splitlines()
        assert header.split() == ["POINT", "ADDRESS", "RAW", "VALUE", "UNIT", "QUALITY"]
        assert rows and all(row.split()[-1] == "good" for row in rows)
