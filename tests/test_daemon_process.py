"""`coolctl run` as systemd runs it: the notify protocol over a real NOTIFY_SOCKET, reload on
SIGHUP (a bad config rejected, the old one kept), and SIGKILL at any moment while operators are
writing overrides: every acknowledged override and its audit record is there after a restart."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import COOLCTL, free_port, site_config

from coolctl.ops.client import ClientError, ControlClient, Unreachable
from coolctl.ops.store import Store
from coolctl.tools.testing import eventually


class NotifySocket:
    """The systemd end of the notify protocol: a bound datagram socket that collects messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def wait_for(
        self, key: str, value: str | None = None, timeout_s: float = 20.0
    ) -> dict[str, str]:
        """The first message not seen before that sets `key` (to `value`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(message)
            if key in message and (value is None or message[key] == value):
                return message
        raise AssertionError(f"no {key}={value} within {timeout_s} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def start_daemon(config: Path, state: Path, env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "STATE_DIRECTORY": str(state),
        "RUNTIME_DIRECTORY": str(state),
        **env_extra,
    }
    return subprocess.Popen(
        [*COOLCTL, "run", "--config", str(config), "--metrics-listen", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env=env,
    )


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_notify_ready_watchdog_reload_and_stop(
    served: dict[str, str], tmp_path: Path, notify: NotifySocket
) -> None:
    config = site_config(tmp_path, served)
    daemon = start_daemon(
        config,
        tmp_path,
        {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},  # ping every 0.5 s
    )
    try:
        ready = notify.wait_for("READY", "1")
        assert "racks" in ready.get("STATUS", "")
        # the control loop itself pings the watchdog, again and again
        for _ in range(3):
            notify.wait_for("WATCHDOG", "1", timeout_s=3.0)

        daemon.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1")
        monotonic_us = int(reloading["MONOTONIC_USEC"])
        assert abs(monotonic_us - time.monotonic_ns() // 1000) < 10_000_000
        notify.wait_for("READY", "1")

        good = config.read_text()
        config.write_text(good.replace("control_period_s = 1.0", "control_period_s = -1"))
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        rejected = notify.wait_for("READY", "1")
        assert "reload rejected" in rejected.get("STATUS", "")
        notify.wait_for("WATCHDOG", "1", timeout_s=3.0)  # the old config still runs
        assert daemon.poll() is None

        daemon.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _, stderr = daemon.communicate(timeout=10)
    assert "reload rejected" in stderr and "control_period_s: must be greater than 0" in stderr


async def wait_for_api(socket_path: Path, timeout_s: float = 20.0) -> None:
    async def answers() -> bool:
        try:
            async with ControlClient(socket_path=socket_path, timeout_s=2.0) as client:
                await client.status()
                return True
        except (Unreachable, ClientError):
            return False

    await eventually(answers, timeout_s, what=f"the control API at {socket_path}", poll_s=0.1)


async def write_overrides_until_killed(
    socket_path: Path, daemon: subprocess.Popen[str], kill_after: int, rng: random.Random
) -> tuple[dict[str, float], tuple[str, float] | None]:
    """Set overrides one after another; SIGKILL the daemon after `kill_after` acks, at a random
    moment while the next request is in flight. Returns the last acknowledged value per target,
    and the write that was in flight when the daemon died (it may or may not have landed)."""
    acked: dict[str, float] = {}
    targets = ["pump.setpoint", "supply.setpoint", "cdu1/pump_speed_command"]
    values = {"pump.setpoint": (140.0, 180.0), "supply.setpoint": (33.0, 37.0)}
    async with ControlClient(socket_path=socket_path, timeout_s=5.0) as client:
        count = 0
        while True:
            target = targets[count % len(targets)]
            low, high = values.get(target, (0.3, 0.9))
            value = round(rng.uniform(low, high), 3)
            request = asyncio.ensure_future(
                client.set_override("r01", target, value, ttl_s=3600.0, reason=f"write {count}")
            )
            if count == kill_after:
                await asyncio.sleep(rng.uniform(0.0, 0.01))
                daemon.send_signal(signal.SIGKILL)
            try:
                await request
            except (Unreachable, ClientError, OSError):
                assert count == kill_after, f"request {count} failed before the kill"
                return acked, (target, value)
            acked[target] = value
            if count >= kill_after:  # the request won the race with the kill: stop here
                daemon.send_signal(signal.SIGKILL)
                return acked, None
            count += 1


@pytest.mark.asyncio
async def test_sigkill_while_writing_overrides_loses_nothing_acknowledged(
    served: dict[str, str], tmp_path: Path
) -> None:
    config = site_config(tmp_path, served)
    socket_path = tmp_path / "control.sock"
    rng = random.Random(int(os.environ.get("COOLCTL_TEST_SEED", "0")) or None)
    expected: dict[str, float] = {}
    in_flight: tuple[str, float] | None = None
    kills = 0
    for round_ in range(5):
        daemon = start_daemon(config, tmp_path, {})
        try:
            await wait_for_api(socket_path)
            async with ControlClient(socket_path=socket_path) as client:
                listed = (await client.overrides("r01"))["overrides"]
            found = {entry["target"]: entry["value"] for entry in listed}
            # everything acknowledged before the last kill is there, with its value; the one
            # write that was in flight may have landed or not, but nothing else
            if in_flight is not None and found.get(in_flight[0]) == in_flight[1]:
                expected[in_flight[0]] = in_flight[1]
            assert found == expected, f"round {round_}: {found} != {expected}"
            if round_ == 4:
                break
            acked, in_flight = await write_overrides_until_killed(
                socket_path, daemon, rng.randint(0, 12), rng
            )
            kills += 1
            expected.update(acked)
        finally:
            if daemon.poll() is None:
                daemon.kill()
            daemon.communicate(timeout=10)
    assert kills == 4
    with Store(tmp_path / "coolctl.db") as store:
        assert store.integrity_check()
        audited = [a for a in store.audit_log(limit=10_000) if a.action == "override_set"]
        active = {o.target: o.value for o in store.active_overrides(time.time())}
    assert active == expected
    # every acknowledged override has its audit record
    assert {(a.details.get("target"), a.details.get("value")) for a in audited} >= set(
        expected.items()
    )
