"""The command line as an operator uses it: sim serve, probe, run, exit codes, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from conftest import COOLCTL, free_port, site_config

from coolctl.tools.testing import eventually_blocking


def run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COOLCTL, *args], capture_output=True, text=True, timeout=timeout, cwd="/", check=False
    )


def test_sim_serve_prints_one_line_per_service_and_probe_reads_them(
    served: dict[str, str],
) -> None:
    assert set(served) == {"cdu1", "pdu1", "broker"}
    table = run("probe", "modbus", served["cdu1"], "--profile", "sim-cdu")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["POINT", "VALUE", "UNIT", "QUALITY"]
    assert len(rows) == 36 and all(row.split()[-1] == "good" for row in rows)
    as_json = run("probe", "modbus", served["pdu1"], "--profile", "sim-pdu", "--json")
    points = {entry["point"]: entry for entry in json.loads(as_json.stdout)}
    assert points["power"]["unit"] == "watts" and points["power"]["quality"] == "good"
    assert points["power"]["value"] > 10_000


def test_probe_of_a_device_that_is_not_there_exits_3() -> None:
    result = run(
        "probe", "modbus", f"127.0.0.1:{free_port()}", "--profile", "sim-cdu", "--timeout", "0.3"
    )
    assert result.returncode == 3
    assert result.stdout == ""  # one line, not a table of missing points
    assert result.stderr.strip().startswith("coolctl probe: cannot connect to 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1  # and no library traceback


def test_probe_with_a_bad_profile_says_so() -> None:
    result = run("probe", "modbus", "127.0.0.1:1", "--profile", "no-such-profile")
    assert result.returncode == 1 and "no-such-profile" in result.stderr


def test_run_controls_the_served_rack_and_stops_cleanly_on_sigterm(
    served: dict[str, str], tmp_path: Path
) -> None:
    path = site_config(tmp_path, served)
    metrics_port = free_port()
    # where systemd's StateDirectory= and RuntimeDirectory= would put the store and the socket
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path), "RUNTIME_DIRECTORY": str(tmp_path)}
    daemon = subprocess.Popen(
        [*COOLCTL, "run", "--config", str(path), "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env=env,
    )
    try:
        text = ""
        supply = 'coolctl_supply_temperature_celsius{device="cdu1",rack="r01"}'

        def exported() -> bool:  # the CDU read and an actuator written
            nonlocal text
            try:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                return False
            return "coolctl_actuator_writes_total" in text and supply in text

        eventually_blocking(exported, 30.0, what=f"actuator writes and {supply}", poll_s=0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, stderr
    assert "stopping" in stderr and "stopped" in stderr
    assert (tmp_path / "coolctl.db").exists()
    assert not (tmp_path / "control.sock").exists()  # removed on a clean stop


def test_run_with_a_bad_config_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[racks.r01]\ncontrol_period_s = -1\n")
    result = run("run", "--config", str(path))
    assert result.returncode == 1
    assert "racks.r01.control_period_s: must be greater than 0" in result.stderr


def test_demo_runs_for_its_duration_and_prints_status() -> None:
    env = {**os.environ}
    result = subprocess.run(
        [*COOLCTL, "demo", "--duration", "4", "--status-every", "1", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("metrics http://127.0.0.1:") for line in lines)
    status = [line for line in lines if "| supply" in line]
    assert status and "pump" in status[-1] and "auto" in status[-1]
    assert lines[-1] == "demo stopped"
