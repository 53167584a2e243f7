"""What the shipped deployment files promise, checked where a test cannot run them whole.

The broker config and ACL are run in a real Mosquitto by test_security_bus.py; the unit is
verified by systemd-analyze in test_systemd.py. Here: the settings each of them must keep.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "coolctl.service"
BROKER = ROOT / "deploy" / "mosquitto" / "coolctl.conf"
ACL = ROOT / "deploy" / "mosquitto" / "coolctl.acl"


def settings(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_broker_takes_no_anonymous_client_and_no_cleartext() -> None:
    lines = settings(BROKER)
    assert "allow_anonymous false" in lines
    assert "use_username_as_clientid true" in lines
    listeners = [line for line in lines if line.startswith("listener ")]
    assert listeners == ["listener 8883"]  # TLS only
    for key in ("cafile", "certfile", "keyfile", "password_file", "acl_file"):
        assert any(line.startswith(f"{key} ") for line in lines), key


def test_only_the_coordinator_may_write_budgets_and_nobody_everything() -> None:
    writers: dict[str, list[str]] = {}
    user = ""
    for line in settings(ACL):
        words = line.split()
        if words[0] == "user":
            user = words[1]
        elif words[:2] in (["topic", "write"], ["topic", "readwrite"]):
            writers.setdefault(words[2], []).append(user)
        assert words[0] != "pattern"  # a pattern applies to every client
        assert line not in ("topic write #", "topic readwrite #", "topic #")
    budget_writers = {u for topic, users in writers.items() if "budget" in topic for u in users}
    assert budget_writers == {"coordinator"}


def test_the_unit_keeps_its_hardening() -> None:
    lines = settings(UNIT)
    for option in (
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "PrivateDevices=yes",
        "DevicePolicy=closed",
        "PrivateMounts=yes",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "IPAddressDeny=any",
        "SocketBindDeny=any",
        "MemoryMax=2G",
        "TasksMax=256",
        "RuntimeDirectoryMode=0755",
        "UMask=0077",
    ):
        assert option in lines, option
    # Off on purpose (the unit says why): they would break the socket's roles or the metrics.
    assert not any(line.startswith(("PrivateUsers=", "ProcSubset=")) for line in lines)
