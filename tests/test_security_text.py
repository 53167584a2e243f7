"""Operator text: a reason cannot forge a log line, rewrite a terminal or fill the audit log,
and an override cannot outlive the cap without saying it is permanent.

The attacks are the review's: a reason with a newline and a `<2>` prefix that became its own
critical journal line; escape sequences and U+202E printed raw by `events`, `override list`
and `top`; 64 KiB reasons in the append-only audit log; a TTL of 1e308 s.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from coolctl.cli.operator import _emit, _event_row, overrides_table, table
from coolctl.daemon.logs import JournalFormatter, JsonFormatter, TextFormatter
from coolctl.ops.client import ClientError, ControlClient
from coolctl.ops.protocol import MAX_REASON_BYTES, ControlError, check_reason, escape_text
from coolctl.tools.testing import hil_rack

CONFIG = Path(__file__).parent / "configs" / "hil-rack.toml"
FORGED = "pump check\n<2>coolctl: root: leak interlock released by alice"
TERMINAL = "ok\x1b[2J\x1b]0;pwned\x07\x1b[31mred"
BIDI = "valve \u202egnitset\u202c done"
C1 = "csi \x9b2J here"


@pytest.mark.parametrize(
    "reason",
    [FORGED, TERMINAL, BIDI, C1, "tab\there", "cr\roverwrite", "sep\u2028line", "nul\x00"],
)
def test_control_and_bidi_characters_are_refused_in_a_reason(reason: str) -> None:
    with pytest.raises(ControlError) as refused:
        check_reason(reason)
    assert refused.value.status == 400
    assert "printable text on one line" in refused.value.message
    assert "U+" in refused.value.message  # says which character


def test_a_reason_is_at_most_a_kibibyte_of_text() -> None:
    assert check_reason("x" * MAX_REASON_BYTES) == "x" * MAX_REASON_BYTES
    with pytest.raises(ControlError, match="at most 1024"):
        check_reason("x" * (MAX_REASON_BYTES + 1))
    with pytest.raises(ControlError, match="at most 1024"):
        check_reason("é" * 600)  # 1200 bytes of UTF-8
    assert check_reason("  Jörg swaps the pump — ticket 42  ") == "Jörg swaps the pump — ticket 42"


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord("coolctl.ops.api", level, __file__, 1, "%s", (message,), None)
    record.rack = "r01\n<0>x"
    return record


def test_a_journal_line_cannot_be_forged_by_text_in_a_message() -> None:
    line = JournalFormatter().format(_record(f"alice: mode r01 manual: {FORGED}"))
    assert "\n" not in line and line.startswith("<6>")
    assert "\\n<2>" in line and "rack=r01\\n<0>x" in line
    text = TextFormatter().format(_record(TERMINAL))
    assert "\x1b" not in text and "\x07" not in text and "\\x1b[2J" in text
    assert "\u202e" not in TextFormatter().format(_record(BIDI))
    assert json.loads(JsonFormatter().format(_record(BIDI)))["message"] == BIDI  # JSON escapes


def test_every_line_of_a_traceback_keeps_the_records_priority() -> None:
    try:
        raise ValueError("bad\n<0>emergency forged")
    except ValueError:
        record = _record("failed", logging.ERROR)
        record.exc_info = sys.exc_info()
    lines = JournalFormatter().format(record).split("\n")
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_the_cli_prints_text_from_the_daemon_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    event = {"id": 7, "at": 0.0, "rack": "r01", "severity": "warning", "source": "x"}
    for message in (TERMINAL, BIDI, C1, FORGED):
        printed = table(None, [_event_row({**event, "kind": "k", "message": message})])
        assert printed == escape_text(printed)  # nothing unsafe left
        assert "\n" not in printed
    override = {"rack": "r01", "target": "cdu1/pump", "value": 0.5, "who": "a", "why": TERMINAL}
    assert "\x1b" not in overrides_table([override])
    _emit({"events": [{"message": TERMINAL + BIDI + C1}]})
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x9b" not in out
    assert json.loads(out)["events"][0]["message"] == TERMINAL + BIDI + C1  # same JSON


@pytest.mark.hil
@pytest.mark.asyncio
async def test_the_daemon_refuses_forging_reasons_and_overlong_ttls() -> None:
    async with hil_rack(CONFIG, time_scale=5.0) as rack:
        async with ControlClient(socket_path=rack.socket_path) as client:
            target = "cdu1/pump_speed_command"
            for reason in (FORGED, TERMINAL, BIDI, "x" * 2048):
                with pytest.raises(ClientError) as refused:
                    await client.set_override("r01", target, 0.6, ttl_s=60, reason=reason)
                assert refused.value.status == 400
                with pytest.raises(ClientError):
                    await client.set_mode("r01", "manual", reason=reason)
            for ttl_s in (1e308, 8 * 86400.0):
                with pytest.raises(ClientError) as refused:
                    await client.set_override("r01", target, 0.6, ttl_s=ttl_s, reason="seal check")
                assert "--permanent" in refused.value.message
            await client.set_override("r01", target, 0.6, ttl_s=7 * 86400.0, reason="seal check")
            await client.set_override("r01", target, 0.6, permanent=True, reason="seal check")
            audit = await client.audit()
        reasons = [str(record.get("details", {}).get("reason", "")) for record in audit["audit"]]
        assert all(escape_text(reason) == reason for reason in reasons)
