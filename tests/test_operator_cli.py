"""The operator commands end to end: argparse -> ControlClient -> a live ControlApi -> plane.

The API runs on its own event loop in a thread (the commands run their own asyncio.run),
on a UNIX socket in tmp_path and on TCP 127.0.0.1:0. Behind it is test_api.MemoryPlane, an
in-memory ControlPlane standing in for the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_api import PUMP, TOKEN, MemoryPlane

import coolctl.cli.operator as operator_commands
from coolctl.cli import main as cli
from coolctl.cli.operator import (
    _Screen,
    add_operator_commands,
    format_duration,
    parse_duration,
    render_frame,
    run_operator_command,
)
from coolctl.ops.api import ControlApi
from coolctl.ops.client import ControlClient

T = TypeVar("T")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


def build_parser() -> argparse.ArgumentParser:
    """coolctl's own parser, with the operator commands (added here until cli.py has them)."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "status" not in commands.choices:
        add_operator_commands(commands)
    return parser


@dataclass
class Daemon:
    """A ControlApi + MemoryPlane on an event loop of their own, in a thread."""

    plane: MemoryPlane
    api: ControlApi
    loop: asyncio.AbstractEventLoop
    token_file: Path

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def soon(self, function: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(function)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.tcp_port}"


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    plane = MemoryPlane()
    socket_path = tmp_path / "control.sock"
    api = ControlApi(
        plane, socket_path=socket_path, tcp_listen=("127.0.0.1", 0), token_file=token_file
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    served = Daemon(plane, api, loop, token_file)
    served.call(api.start())
    monkeypatch.setenv("COOLCTL_SOCKET", str(socket_path))
    try:
        yield served
    finally:
        served.call(api.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def ctrl_c_on(
    monkeypatch: pytest.MonkeyPatch, method: str, when: Callable[[int, dict[str, Any]], bool]
) -> None:
    """The operator presses Ctrl-C during the client's `method` call that `when(n, kwargs)`
    picks (n counts calls from 1): KeyboardInterrupt, as Python raises it in the main thread.
    Deterministic, where a SIGINT sent from the API's thread raced the follower under load."""
    original = getattr(ControlClient, method)
    calls = 0

    async def pressed(self: ControlClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if when(calls, kwargs):
            raise KeyboardInterrupt
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(ControlClient, method, pressed)


def coolctl(*argv: str) -> int:
    parser = build_parser()
    return run_operator_command(parser.parse_args(argv), parser)


def output(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = coolctl(*argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def set_pump(daemon: Daemon, value: float = 0.8, ttl_s: float | None = 900.0) -> None:
    daemon.call(daemon.plane.set_override("r01", PUMP, value, ttl_s, "alice (uid 1000)", "seal"))


# --- status ------------------------------------------------------------------------------


def test_status_table_and_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    set_pump(daemon)
    code, out, _ = output(capsys, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "coolctl 0.1.0, up 1h2m5s, config /etc/coolctl/site.toml, 2 racks"
    assert lines[1].split() == [
        "RACK", "MODE", "FAILSAFE", "INTERLOCKS", "POWER", "BUDGET", "CAPS", "CHIPS", "OVERRIDES"
    ]  # fmt: skip
    assert lines[2].split() == [
        "r01", "auto", "no", "-", "42.1", "kW", "48.0", "kW", "46.0", "kW", "82°C", "1"
    ]  # fmt: skip
    assert lines[3].split() == [
        "r02", "auto", "yes", "leak", "30.5", "kW", "48.0", "kW", "27.0", "kW",
        "87°C", "THROTTLING", "2/18", "0",
    ]  # fmt: skip
    assert lines[1].index("MODE") == lines[2].index("auto")  # aligned columns
    assert lines[4:] == ["r02: throttling: bmc03, bmc07", "r02: near throttle: bmc01"]
    code, out, _ = output(capsys, "status", "--json")
    assert code == 0 and json.loads(out) == daemon.plane.status()


def test_status_over_tcp_with_the_token_and_without(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = output(
        capsys, "status", "--json", "--url", daemon.url, "--token-file", str(daemon.token_file)
    )
    assert code == 0 and json.loads(out)["version"] == "0.1.0"
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    code, out, err = output(capsys, "status", "--url", daemon.url, "--token-file", str(wrong))
    assert (code, out) == (1, "")
    assert err == "coolctl: refused: missing or wrong bearer token (check --token-file)\n"
    code, _, err = output(capsys, "status", "--url", daemon.url)
    assert code == 2 and "--url needs --token-file" in err
    code, _, err = output(
        capsys, "status", "--url", daemon.url, "--socket", "/x", "--token-file", str(wrong)
    )
    assert code == 2 and "not both" in err
    code, _, err = output(capsys, "status", "--token-file", str(wrong))
    assert code == 2 and "--token-file is for --url" in err
    code, _, err = output(
        capsys, "status", "--url", daemon.url, "--token-file", str(tmp_path / "absent")
    )
    assert code == 2 and "cannot read token file" in err


def test_unreachable_daemon_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere.sock"
    code, out, err = output(capsys, "status", "--socket", str(missing))
    assert (code, out) == (3, "")
    assert err == (
        f"coolctl: cannot reach coolctl at {missing}: is the daemon running? "
        "(systemctl status coolctl)\n"
    )
    monkeypatch.setenv("COOLCTL_SOCKET", str(missing))  # the default follows $COOLCTL_SOCKET
    code, _, err = output(capsys, "override", "list")
    assert code == 3 and str(missing) in err
    code, _, err = output(capsys, "status", "--url", "http://127.0.0.1:9", "--token-file", __file__)
    assert code == 3 and "cannot reach coolctl at http://127.0.0.1:9" in err


# --- overrides ---------------------------------------------------------------------------


def test_override_set_list_clear(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = output(
        capsys, "override", "set", "r01", PUMP, "0.8", "--ttl", "15m", "--reason", "seal check"
    )
    assert (code, err) == (0, "")
    assert re.fullmatch(
        rf"override set: r01 {PUMP} = 0\.8, expires in 1[45]m\d*s? \({ISO.pattern}\), "
        r"by \S+ \(uid \d+\) as operator \(id 1\)\n",
        out,
    ), out
    record = daemon.plane.records[("r01", PUMP)]
    assert record.why == "seal check" and record.expires_at is not None
    assert 890 < record.expires_at - record.created_at < 910

    code, out, _ = output(
        capsys,
        "override",
        "set",
        "r01",
        "pump.setpoint",
        "150",
        "--permanent",
        "--reason",
        "x",
        "--json",
    )
    assert code == 0 and json.loads(out)["expires_at"] is None

    code, out, _ = output(capsys, "override", "list")
    header, first, second = out.splitlines()
    assert header.split() == ["RACK", "TARGET", "VALUE", "WHO", "SET", "EXPIRES", "WHY"]
    assert first.startswith(f"r01   {PUMP}  0.8") and re.search(
        r"in 1[45]m\d*s? +seal check$", first
    )
    assert ISO.search(first) and "permanent  x" in second
    assert header.index("EXPIRES") == first.index("in 1")
    code, out, _ = output(capsys, "override", "list", "--rack", "r01", "--json")
    assert [r["target"] for r in json.loads(out)["overrides"]] == [PUMP, "pump.setpoint"]
    code, out, _ = output(capsys, "override", "list", "--rack", "r02")
    assert (code, out) == (0, "no overrides on r02\n")

    code, out, _ = output(capsys, "override", "clear", "r01", PUMP, "--reason", "done")
    assert code == 0
    assert re.fullmatch(rf"override cleared: r01 {PUMP} \(was 0.8, set by .+: seal check\)\n", out)
    code, out, _ = output(
        capsys, "override", "clear", "r01", "pump.setpoint", "--reason", "d", "--json"
    )
    assert code == 0 and json.loads(out)["target"] == "pump.setpoint"
    assert [a.action for a in daemon.plane.audit_log][-2:] == ["override_clear"] * 2


def test_refusals_exit_1_with_the_daemons_message(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = output(
        capsys, "override", "set", "r01", PUMP, "0.1", "--ttl", "5m", "--reason", "try"
    )
    assert (code, out) == (1, "")
    assert err == f"coolctl: refused: 0.1 for r01 {PUMP} is outside its safe bounds 0.2..1.0\n"
    code, _, err = output(capsys, "override", "clear", "r01", PUMP, "--reason", "x")
    assert code == 1 and f"no override of {PUMP} on r01" in err
    code, _, err = output(
        capsys, "override", "set", "r01", "flux", "0.5", "--ttl", "5m", "--reason", "x"
    )
    assert code == 1 and "neither device/point nor LOOP.setpoint" in err
    daemon.plane.fail_status = True
    code, _, err = output(capsys, "status")
    assert code == 1 and err.startswith("coolctl: the daemon failed (500): internal error")
    assert daemon.plane.records == {}


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["override", "set", "r01", PUMP, "0.5", "--ttl", "15", "--reason", "x"], "use e.g. 90s"),
        (["override", "set", "r01", PUMP, "0.5", "--ttl", "0s", "--reason", "x"], "than zero"),
        (["override", "set", "r01", PUMP, "0.5", "--ttl", "1m", "--reason", " "], "not be empty"),
        (["override", "set", "r01", PUMP, "0.5", "--reason", "x"], "--ttl --permanent"),
        (["override", "set", "r01", PUMP, "0.5", "--ttl", "1m", "--permanent", "--reason", "x"],
         "not allowed with"),
        (["override", "set", "r01", PUMP, "nan", "--ttl", "1m", "--reason", "x"], "not a finite"),
        (["mode", "r01", "off", "--reason", "x"], "invalid choice"),
        (["events", "--limit", "0"], "1 or more"),
        (["events", "--since", "-1"], "0 or more"),
        (["top", "--interval", "0"], "more than 0"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_before_anything_is_sent(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        coolctl(*argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
    assert daemon.plane.calls == []


@pytest.mark.parametrize(
    "argv",
    [
        ["override", "set", "r01", PUMP, "0.5", "--ttl", "15m"],
        ["override", "clear", "r01", PUMP],
        ["mode", "r01", "manual"],
        ["interlock", "reset", "r01"],
    ],
)
def test_a_missing_reason_is_explained_in_words(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = output(capsys, *argv)
    assert code == 2 and out == ""
    assert "needs --reason TEXT: say why in a few words; it goes in the audit log" in err
    assert "usage:" not in err
    assert daemon.plane.calls == []


def test_audit_table_and_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = output(capsys, "audit")
    assert (code, out) == (0, "no audit records\n")
    set_pump(daemon)
    code, out, _ = output(capsys, "audit")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "TIME", "WHO", "ACTION", "RACK", "DETAILS"]
    assert "override_set" in lines[1] and "alice (uid 1000)" in lines[1]
    code, out, _ = output(capsys, "audit", "--json", "--limit", "1")
    document = json.loads(out)
    assert code == 0 and len(document["audit"]) == 1 and document["next_since"] >= 1


def test_audit_follow_prints_new_records_as_json_lines(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`audit --follow` asks again for records after the last one (the audit endpoint does not
    long-poll) and prints each once; Ctrl-C ends it with 130."""
    monkeypatch.setattr(operator_commands, "AUDIT_POLL_S", 0.0)
    set_pump(daemon)
    plane = daemon.plane
    asked: list[int] = []
    original = plane.audit

    async def audit(since_id: int = 0, limit: int = 100) -> Any:
        asked.append(since_id)
        if len(asked) == 2:  # the follower asks for newer records: an operator acts meanwhile
            await plane.set_override("r01", PUMP, 0.7, 900.0, "bob (uid 1001)", "seal")
        return await original(since_id, limit)

    plane.audit = audit  # type: ignore[method-assign]
    ctrl_c_on(monkeypatch, "audit", lambda n, _: n == 3)  # printed that one, asks again: Ctrl-C
    code, out, _ = output(capsys, "audit", "--follow", "--json", "--since", "0")
    assert code == 130
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["action"] for r in records] == ["override_set", "override_set"]
    assert records[0]["id"] < records[1]["id"] and asked[1] == records[0]["id"]


# --- mode, reload ------------------------------------------------------------------------


def test_mode_and_reload(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = output(capsys, "mode", "r01", "manual", "--reason", "pump swap")
    assert (code, out) == (0, "r01: mode manual (was auto)\n")
    code, out, _ = output(capsys, "mode", "r01", "auto", "--reason", "done", "--json")
    assert json.loads(out) == {"rack": "r01", "mode": "auto", "previous": "manual"}
    code, _, err = output(capsys, "mode", "r09", "auto", "--reason", "x")
    assert code == 1 and "no rack 'r09'" in err
    code, out, _ = output(capsys, "reload")
    assert (code, out) == (0, "config reloaded from /etc/coolctl/site.toml\n")
    code, out, _ = output(capsys, "reload", "--json")
    assert json.loads(out) == {"config": "/etc/coolctl/site.toml", "racks": 2}
    daemon.plane.bad_config = True
    code, _, err = output(capsys, "reload")
    assert code == 1 and "old config kept" in err


# --- events ------------------------------------------------------------------------------


def test_events_table_and_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = output(capsys, "events")
    assert (code, out) == (0, "no events\n")
    for n in range(3):
        daemon.soon(functools.partial(daemon.plane.add_event, "r01", "failsafe", f"flow lost {n}"))
    daemon.call(asyncio.sleep(0))
    code, out, _ = output(capsys, "events", "--limit", "2")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "TIME", "RACK", "SEVERITY", "SOURCE", "KIND", "MESSAGE"]
    assert [row.split()[0] for row in rows] == ["2", "3"] and rows[-1].endswith("flow lost 2")
    assert ISO.search(rows[0])
    code, out, _ = output(capsys, "events", "--since", "0", "--json")
    document = json.loads(out)
    assert [e["id"] for e in document["events"]] == [1, 2, 3] and document["next_since"] == 3


def test_events_follow_prints_as_they_come_and_ctrl_c_exits_130(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = daemon.plane
    daemon.soon(lambda: plane.add_event("r01", "failsafe", "first"))
    polls = 0
    original = plane.wait_events

    async def wait_events(since_id: int, timeout_s: float, limit: int = 100) -> Any:
        nonlocal polls
        polls += 1
        if polls == 1:  # the follower is waiting: something happens
            asyncio.get_running_loop().call_later(
                0.1, plane.add_event, "r01", "interlock_leak", "leak!", "critical"
            )
        return await original(since_id, timeout_s, limit)

    plane.wait_events = wait_events  # type: ignore[method-assign]
    waits: list[int] = []  # the event id each long poll asks after

    def second_wait(_: int, kwargs: dict[str, Any]) -> bool:
        """It has printed that and waits again: the operator presses Ctrl-C."""
        if kwargs.get("wait_s", 0.0) > 0:
            waits.append(kwargs["since"])
        return len(waits) == 2

    ctrl_c_on(monkeypatch, "events", second_wait)
    started = time.monotonic()
    code, out, _ = output(capsys, "events", "--follow", "--since", "0")
    assert code == 130 and time.monotonic() - started < 10
    header, first, second = out.splitlines()
    assert header.split()[0] == "ID" and first.endswith("first") and second.endswith("leak!")
    assert "critical" in second and plane.waits[0][0] == 1 and waits == [1, 2]


def test_events_follow_json_lines(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = daemon.plane
    daemon.soon(lambda: plane.add_event("r02", "failsafe", "one"))
    ctrl_c_on(monkeypatch, "events", lambda _, kwargs: kwargs.get("wait_s", 0.0) > 0)
    code, out, _ = output(capsys, "events", "--follow", "--json")
    assert code == 130
    assert [json.loads(line)["message"] for line in out.splitlines()] == ["one"]


# --- top ---------------------------------------------------------------------------------


def test_top_once_prints_one_plain_frame(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    set_pump(daemon, ttl_s=14 * 60 + 30)
    code, out, _ = output(capsys, "top", "--once")
    assert code == 0 and "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("coolctl top  ") and ISO.search(lines[0])
    header = lines[2].split()  # not a terminal: every column
    assert header[:8] == ["RACK", "MODE", "SUPPLY", "RETURN", "FLOW", "ΔP", "PUMP", "VALVE"]
    assert header[8:] == ["POWER/BUDGET", "CHIPS", "INTERLOCKS", "FAILSAFE"]
    r01, r02 = lines[3], lines[4]
    for shown in (
        "30.1°C",
        "38.4°C",
        "161.2 L/min",
        "85.0 kPa",
        "62%",
        "41%",
        "42.1/48.0 kW (88%)",
    ):
        assert shown in r01, shown
    assert "30.1°C (stale)" in r02 and r02.split()[-2:] == ["leak", "yes"]
    assert "87°C THROTTLING 2/18" in r02
    assert lines[5] == "r02 throttling: bmc03, bmc07"
    assert lines[7] == "OVERRIDES"
    assert PUMP in lines[9] and re.search(r"in 14m(\d+s)?  seal$", lines[9])

    code, out, _ = output(capsys, "top", "--once", "--rack", "r02")
    assert "r01" not in out and "no overrides" in out
    code, out, _ = output(capsys, "top", "--json")
    document = json.loads(out)
    assert set(document) == {"racks", "points", "overrides"} and len(document["racks"]) == 2


@pytest.mark.parametrize("width", [80, 60, 160])
def test_top_fits_its_width_and_always_shows_the_safety_states(daemon: Daemon, width: int) -> None:
    racks = daemon.plane.racks()
    screen = _Screen(racks, daemon.plane.points(), [])
    lines = render_frame(screen, interval=2.0, rack=None, width=width)
    table_lines = lines[2:5]
    header = table_lines[0].split()
    for column in ("RACK", "CHIPS", "INTERLOCKS", "FAILSAFE"):
        assert column in header
    if width >= 60:
        assert all(len(line) <= width for line in table_lines), table_lines
    assert table_lines[2].split()[-2:] == ["leak", "yes"]
    if width == 160:
        assert "ΔP" in header  # room for everything
    if width == 80:
        assert "ΔP" not in header and "SUPPLY" in header


def test_top_live_redraws_and_q_quits_restoring_the_screen(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "r")
    monkeypatch.setattr(sys, "stdin", stdin)
    original = daemon.plane.racks
    fetched = 0

    def racks() -> Any:  # the third fetch happens only after two redraws: then q
        nonlocal fetched
        fetched += 1
        if fetched == 3:
            os.write(write_end, b"q")
        return original()

    daemon.plane.racks = racks  # type: ignore[method-assign]
    try:
        code, out, _ = output(capsys, "top", "--interval", "0.05")
    finally:
        stdin.close()
        os.close(write_end)
    assert code == 0 and fetched == 3
    assert out.startswith("\x1b[?1049h\x1b[?25l") and out.endswith("\x1b[?25h\x1b[?1049l")
    assert out.count("\x1b[H") == 3 and out.count("(q quits)") == 3


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("1h0m5s", 3605)],
)
def test_duration_examples(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "1.5h", "15 m", "-5m", "5M", "30m1h", "1h1h"])
def test_durations_that_are_not(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(
    st.lists(st.integers(min_value=0, max_value=10_000), min_size=4, max_size=4).filter(any),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_any_spelled_duration_parses_to_its_total(amounts: list[int], shown: list[bool]) -> None:
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    text = "".join(
        f"{amount}{unit}"
        for amount, show, (unit, _) in zip(amounts, shown, units, strict=True)
        if amount or show
    )
    total = sum(amount * size for amount, (_, size) in zip(amounts, units, strict=True))
    assert parse_duration(text) == total


@given(st.integers(min_value=1, max_value=10**9))
def test_formatted_durations_parse_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=12))
def test_parse_duration_never_fails_otherwise(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert parse_duration(text) > 0


# --- completion --------------------------------------------------------------------------


def completion(capsys: pytest.CaptureFixture[str], tmp_path: Path, shell: str) -> Path:
    code, out, _ = output(capsys, "completion", shell)
    assert code == 0
    path = tmp_path / f"coolctl.{shell}"
    path.write_text(out)
    return path


COMPLETE = """
source <(cat "$1")
complete -p coolctl
try() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _coolctl; echo "${COMPREPLY[*]}"; }
try coolctl ov
try coolctl ''
try coolctl override ''
try coolctl override set --
try coolctl override set r01 cdu1/pump_speed_command 0.5 --ttl ''
try coolctl --version mode r01 ''
try coolctl mode --socket /tmp/x r01 m
try coolctl completion ''
try coolctl run --log-format j
try coolctl run --log-format = ''
try coolctl events --since 5 --f
try coolctl probe modbus 127.0.0.1:502 --profile "$2/sub"
try coolctl check-config a.toml "$2/sub"
"""


def test_bash_completion_follows_the_parser_tree(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = completion(capsys, tmp_path, "bash")
    (tmp_path / "subdir").mkdir()
    result = subprocess.run(
        ["bash", "-c", COMPLETE, "bash", str(script), str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "complete -F _coolctl coolctl"
    assert lines[1] == "override"
    assert set(lines[2].split()) >= {
        "run", "check-config", "demo", "probe", "sim",
        "status", "top", "override", "mode", "events", "reload", "completion",
    }  # fmt: skip
    assert lines[3] == "set clear targets list"
    assert set(lines[4].split()) == {
        "--help", "--socket", "--url", "--token-file", "--json", "--ttl", "--permanent",
        "--reason", "--ca-file", "--client-cert",
    }  # fmt: skip
    assert lines[5] == ""  # a DURATION is free text: nothing to offer
    assert lines[6] == "auto manual"
    assert lines[7] == "manual"
    assert lines[8] == "bash zsh"
    assert lines[9] == "json journal"
    assert lines[10] == "text json journal"  # --log-format=<TAB>, split at '='
    assert lines[11] == "--follow"
    assert lines[12] == f"{tmp_path}/subdir"  # NAME_OR_FILE and FILE... complete file names
    assert lines[13] == f"{tmp_path}/subdir"


ZSH_COMPLETE = """
compdef() { print "compdef $*" }
compadd() { [[ $1 == -- ]] && shift; print -r -- "${(j: :)@}" }
_files() { print "<files>" }
source "$1"
try() { words=("$@"); CURRENT=$#; PREFIX=${words[CURRENT]}; _coolctl }
try coolctl override ''
try coolctl --version mode --socket /tmp/x r01 ''
try coolctl override set --
try coolctl run --config ''
"""


def test_zsh_completion_answers_from_the_same_tables(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """compadd and _files stubbed: what the script offers, not zsh's own menu."""
    script = completion(capsys, tmp_path, "zsh")
    assert script.read_text().startswith("#compdef coolctl\n")
    result = subprocess.run(
        ["zsh", "-f", "-c", ZSH_COMPLETE, "zsh", str(script)],
        capture_output=True, text=True, check=False, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines() == [
        "compdef _coolctl coolctl",
        "set clear targets list",
        "auto manual",
        "-h --help --socket --url --token-file --ca-file --client-cert --json --ttl --permanent"
        " --reason",
        "<files>",
    ]


def test_coolctl_completion_from_the_installed_command_line() -> None:
    """`source <(coolctl completion bash)` as an operator would, once cli.py offers it."""
    if "completion" not in cli.build_parser().format_help():
        pytest.skip("coolctl.cli.main does not offer the operator commands yet")
    coolctl = f"{shlex.quote(sys.executable)} -m coolctl.cli.main"
    command = f"source <({coolctl} completion bash); complete -p coolctl"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, check=False, timeout=30, cwd="/"
    )
    assert result.stdout == "complete -F _coolctl coolctl\n", result.stderr
