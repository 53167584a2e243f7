"""The operator's commands: status, top, override, mode, events, reload, completion.

They talk to a running daemon through the control API (coolctl.ops.client). Output is a table by
default and the API's own JSON with `--json`. Exit codes: 0 ok, 1 refused by the daemon (its
message says why, e.g. the safe bounds), 2 usage, 3 daemon unreachable, 130 interrupted.

What the tables read from the daemon's documents, besides the records of coolctl.ops.protocol:

- status: `version`, `uptime_s`, `config`, `racks` (a list like GET /v1/racks gives);
- a rack: `rack`, `mode`, `failsafe` (bool or list), `interlocks` (list), `power_w`,
  `budget_w`, `overrides` (count or list);
- a point: `rack`, `device`, `point`, `value`, `unit`, `quality`;
- set_mode's answer: `mode` and, if present, `previous`; reload's answer: `config`, if present.

A field that is missing shows as `-`, so an older or newer daemon still gives a usable table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from coolctl.exitcodes import ExitCode
from coolctl.model import RackMode
from coolctl.ops.client import ClientError, ControlClient, Unreachable, default_socket_path
from coolctl.ops.protocol import JsonObject, escape_json_text, escape_text

FOLLOW_WAIT_S = 30.0
"""How long one `events --follow` long-poll waits; well under the daemon's 60 s cap."""

SubParsers = argparse._SubParsersAction  # the type argparse gives no public name


# --- durations ---------------------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str) -> int:
    """Seconds in `90s`, `15m`, `2h`, `1h30m`, `1d`; ValueError for anything else.

    A unit is required: a bare `15` could be seconds or minutes, and a TTL that is 60 times
    too short or too long is exactly the mistake made at 3 a.m.
    """
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 15m, 2h or 1h30m")
    seconds = sum(
        int(amount) * size
        for amount, (_, size) in zip(match.groups(), _UNITS, strict=True)
        if amount is not None
    )
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a duration longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """`1h30m`, `14m5s`, `45s`: whole seconds, rounded up, in the units parse_duration reads."""
    left = max(0, math.ceil(seconds))
    if left == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS:
        amount, left = divmod(left, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def _duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_log_command(
    commands: Any, common: argparse.ArgumentParser, name: str, summary: str, what: str, when: str
) -> None:
    """A log command (events, audit): one page, or --follow; --since ID and --limit N."""
    log = commands.add_parser(name, parents=[common], help=summary)
    log.add_argument(
        "--follow", "-f", action="store_true", help=f"keep printing {what} as they {when}"
    )
    log.add_argument(
        "--since", type=_whole_arg(0), metavar="ID", help=f"{what} after this id (default: newest)"
    )
    log.add_argument("--limit", type=_whole_arg(1), metavar="N", help=f"at most N {what}")
    log.set_defaults(operator_command=name)


def _reason_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: say why, it goes in the audit log")
    return text.strip()


def _finite_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive_arg(text: str) -> float:
    value = _finite_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


_REASON_HELP = "why (required): it goes in the audit log with your name"


def _whole_arg(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {value}")
        return value

    return parse


# --- the parser --------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    """--socket/--url/--token-file/--json, on every command that talks to the daemon."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("reaching the daemon")
    group.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help=f"control socket (default: $COOLCTL_SOCKET or {default_socket_path()})",
    )
    group.add_argument(
        "--url", metavar="URL", help="use the TCP listener instead: http://HOST:PORT"
    )
    group.add_argument("--token-file", type=Path, metavar="FILE", help="bearer token for --url")
    group.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="CA to verify an https:// --url with"
    )
    group.add_argument(
        "--client-cert", type=Path, metavar="FILE", help="client certificate (PEM, with its key)"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON document")
    return common


def add_operator_commands(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add the operator's commands to coolctl's subcommands."""
    common = _connection_options()

    status = commands.add_parser(
        "status", parents=[common], help="the daemon and its racks, as a table"
    )
    status.set_defaults(operator_command="status")

    top = commands.add_parser(
        "top", parents=[common], help="a live view of every rack (q or Ctrl-C quits)"
    )
    top.add_argument(
        "--interval", type=_positive_arg, default=2.0, metavar="S", help="seconds between frames"
    )
    top.add_argument("--rack", metavar="RACK", help="only this rack")
    top.add_argument(
        "--once", action="store_true", help="print one frame without terminal control codes"
    )
    top.set_defaults(operator_command="top")

    override = commands.add_parser("override", help="set, clear and list operator overrides")
    actions = override.add_subparsers(dest="override_command", metavar="ACTION", required=True)
    set_ = actions.add_parser(
        "set",
        parents=[common],
        help="hold a setpoint or an actuator at VALUE",
        description="Hold TARGET (device/point or LOOP.setpoint) at VALUE, for --ttl or "
        "until cleared. The daemon refuses values outside the target's safe bounds.",
    )
    set_.add_argument("rack", metavar="RACK")
    set_.add_argument("target", metavar="TARGET", help="cdu1/pump_speed_command or pump.setpoint")
    set_.add_argument(
        "value", type=_finite_arg, metavar="VALUE", help="in the target's unit (speeds 0..1)"
    )
    lifetime = set_.add_mutually_exclusive_group(required=True)
    lifetime.add_argument(
        "--ttl", type=_duration_arg, metavar="DURATION", help="expire after 90s, 15m, 2h, 1h30m"
    )
    lifetime.add_argument(
        "--permanent", action="store_true", help="never expire (clear it by hand)"
    )
    set_.add_argument("--reason", type=_reason_arg, metavar="TEXT", help=_REASON_HELP)
    set_.set_defaults(operator_command="override set")

    clear = actions.add_parser("clear", parents=[common], help="end an override now")
    clear.add_argument("rack", metavar="RACK")
    clear.add_argument("target", metavar="TARGET")
    clear.add_argument("--reason", type=_reason_arg, metavar="TEXT", help=_REASON_HELP)
    clear.set_defaults(operator_command="override clear")

    targets = actions.add_parser(
        "targets",
        parents=[common],
        help="what an override may name on a rack, with its bounds now, unit and why",
    )
    targets.add_argument("rack", metavar="RACK")
    targets.set_defaults(operator_command="override targets")

    list_ = actions.add_parser("list", parents=[common], help="the overrides in force")
    list_.add_argument("--rack", metavar="RACK", help="only this rack")
    list_.set_defaults(operator_command="override list")

    mode = commands.add_parser(
        "mode", parents=[common], help="switch a rack between auto and manual control"
    )
    mode.add_argument("rack", metavar="RACK")
    mode.add_argument("mode", choices=[each.value for each in RackMode])
    mode.add_argument("--reason", type=_reason_arg, metavar="TEXT", help=_REASON_HELP)
    mode.set_defaults(operator_command="mode")

    interlock = commands.add_parser("interlock", help="latched interlocks")
    interlock_actions = interlock.add_subparsers(
        dest="interlock_action", required=True, metavar="ACTION"
    )
    reset = interlock_actions.add_parser(
        "reset",
        parents=[common],
        help="release a rack's latched interlock once its cause is clear (a leak: ropes dry)",
        description="Release a latched interlock (a leak stays latched after the ropes read dry,"
        " until an operator has looked). Refused while its cause is not known clear. Audited.",
    )
    reset.add_argument("rack", metavar="RACK")
    reset.add_argument(
        "interlock",
        nargs="?",
        default="leak",
        metavar="INTERLOCK",
        help="leak (default), over_temperature, pump_failure, loss_of_flow, low_coolant_level",
    )
    reset.add_argument("--reason", type=_reason_arg, metavar="TEXT", help=_REASON_HELP)
    reset.set_defaults(operator_command="interlock reset")

    alarms = commands.add_parser(
        "alarms",
        parents=[common],
        help="the CDUs' alarms; `alarms ack RACK --reason` acknowledges latched ones",
        description="List the CDU alarms of every rack or of RACK; `alarms ack RACK --reason"
        " TEXT` writes the acknowledge that clears a CDU's latched alarms whose cause is gone."
        " Audited.",
    )
    alarms.add_argument("words", nargs="*", metavar="[ack] RACK")
    alarms.add_argument(  # its own dest: listing needs no reason, `alarms ack` does
        "--reason", dest="ack_reason", type=_reason_arg, metavar="TEXT", help=_REASON_HELP
    )
    alarms.set_defaults(operator_command="alarms")

    _add_log_command(
        commands, common, "events", "the event log (--follow to watch it)", "events", "happen"
    )
    _add_log_command(
        commands,
        common,
        "audit",
        "the audit log: who changed what, when and why",
        "records",
        "are made",
    )

    reload = commands.add_parser(
        "reload", parents=[common], help="re-read the config file (a bad one is refused)"
    )
    reload.set_defaults(operator_command="reload")

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for coolctl. Install with "
        "`coolctl completion bash > /etc/bash_completion.d/coolctl`, or add "
        "`source <(coolctl completion bash)` to ~/.bashrc (zsh: ~/.zshrc, after compinit).",
    )
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(operator_command="completion")


# --- running a command -------------------------------------------------------------------


def run_operator_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ExitCode:
    """Run the command `args` was parsed for by `parser` (the whole command line's, which the
    completion script is read off); the exit code."""
    command: str = args.operator_command
    if command == "completion":
        print(completion_script(args.shell, parser), end="")
        return ExitCode.OK
    if hasattr(args, "reason") and args.reason is None:
        _complain(
            f"{command} needs --reason TEXT: say why in a few words; it goes in the audit log"
            ' with your name (e.g. --reason "pump seal check, ticket 4711")'
        )
        return ExitCode.USAGE
    try:
        client = _client(args)
    except ValueError as exc:
        _complain(str(exc))
        return ExitCode.USAGE
    try:
        return asyncio.run(_run(command, client, args))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Unreachable as exc:
        _complain(str(exc))
        return ExitCode.UNREACHABLE
    except ClientError as exc:
        if exc.status == 401:
            _complain(f"refused: {exc.message} (check --token-file)")
        elif exc.status >= 500:
            _complain(f"the daemon failed ({exc.status}): {exc.message}")
        else:
            _complain(f"refused: {exc.message}")
        return ExitCode.BAD
    except BrokenPipeError:
        # `coolctl events | head`: the reader has had enough; that is not an error. Point
        # stdout at /dev/null so that the final flush at exit does not complain again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


def _complain(message: str) -> None:
    print(f"coolctl: {escape_text(message)}", file=sys.stderr)


def _client(args: argparse.Namespace) -> ControlClient:
    if args.url is not None:
        if args.socket is not None:
            raise ValueError("give --socket or --url, not both")
        if args.token_file is None:
            raise ValueError("--url needs --token-file: the TCP listener requires a token")
        return ControlClient(
            url=args.url,
            token_file=args.token_file,
            ca_file=args.ca_file,
            cert_file=args.client_cert,
        )
    if args.token_file is not None:
        raise ValueError("--token-file is for --url; on the socket, who you are is known")
    return ControlClient(socket_path=args.socket)


async def _run(command: str, client: ControlClient, args: argparse.Namespace) -> ExitCode:
    async with client:
        handler = _HANDLERS[command]
        return await handler(client, args)


def _emit(document: Any) -> None:
    print(escape_json_text(json.dumps(document, indent=2, ensure_ascii=False)))


async def _status(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    document = await client.status()
    if args.json:
        _emit(document)
        return ExitCode.OK
    facts = [f"coolctl {document.get('version', '?')}"]
    if isinstance(document.get("uptime_s"), int | float):
        facts.append(f"up {format_duration(document['uptime_s'])}")
    if document.get("config"):
        facts.append(f"config {document['config']}")
    racks = _dicts(document.get("racks"))
    facts.append(f"{len(racks)} rack{'' if len(racks) == 1 else 's'}")
    print(", ".join(facts))
    if racks:
        rows = [
            [
                _text(rack.get("rack")),
                _text(rack.get("mode")),
                _text(rack.get("failsafe")),
                _text(rack.get("interlocks")),
                _kw(rack.get("power_w")),
                _kw(rack.get("budget_w")),
                _kw(rack.get("caps_w")),
                chips_cell(rack.get("chips")),
                _count(rack.get("overrides")),
            ]
            for rack in racks
        ]
        headers = ["RACK", "MODE", "FAILSAFE", "INTERLOCKS", "POWER", "BUDGET", "CAPS", "CHIPS"]
        print(table([*headers, "OVERRIDES"], rows))
        for line in _rack_notes(racks):
            print(line)
        for rack in racks:  # a lost PSU, a rack on battery: said whenever it is true
            alarms = rack.get("power_alarms")
            if isinstance(alarms, list) and alarms:
                notes = "; ".join(escape_text(str(alarm)) for alarm in alarms)
                print(f"{escape_text(str(rack.get('rack')))} power alarms: {notes}")
        for rack in racks:  # a CDU its panel has taken: coolctl leaves it alone
            for device in rack.get("cdu_local") or []:
                print(
                    f"{escape_text(str(rack.get('rack')))}: {escape_text(str(device))} is in"
                    " local control (its panel); coolctl writes nothing to it"
                )
    return ExitCode.OK


def _rack_notes(racks: Sequence[JsonObject]) -> list[str]:
    """Below the table: servers that throttle or are near it, and overrides not in force."""
    notes = []
    for rack in racks:
        name = _text(rack.get("rack"))
        chips = rack.get("chips")
        if isinstance(chips, dict):
            if chips.get("throttling"):
                notes.append(f"{name}: throttling: {_text(chips['throttling'])}")
            if chips.get("near_throttle"):
                notes.append(f"{name}: near throttle: {_text(chips['near_throttle'])}")
        overrides = rack.get("overrides")
        for record in _dicts(overrides):
            if record.get("in_force") is False:
                notes.append(
                    f"{name}: override {_text(record.get('target'))} {_text(record.get('note'))}"
                )
    return notes


async def _override_set(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    record = await client.set_override(
        args.rack,
        args.target,
        args.value,
        ttl_s=None if args.permanent else float(args.ttl),
        permanent=args.permanent,
        reason=args.reason,
    )
    if args.json:
        _emit(record)
        return ExitCode.OK
    expires = record.get("expires_at")
    lifetime = (
        "permanent" if expires is None else f"expires {_relative(expires)} ({local_time(expires)})"
    )
    print(
        f"override set: {_text(record.get('rack'))} {_text(record.get('target'))} = "
        f"{_text(record.get('value'))}, {lifetime}, by {_text(record.get('who'))}"
        f" (id {_text(record.get('id'))})"
    )
    if record.get("in_force") is False:
        print(f"  {_text(record.get('note')) or 'not in force now'}")
    return ExitCode.OK


async def _override_targets(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    document = await client.targets(args.rack)
    if args.json:
        _emit(document)
        return ExitCode.OK
    rows = [
        [
            _text(entry.get("target")),
            f"{_short(entry.get('low'))}..{_short(entry.get('high'))}",
            _text(entry.get("unit")),
            _text(entry.get("why")),
        ]
        for entry in _dicts(document.get("targets"))
    ]
    print(table(["TARGET", "BOUNDS", "UNIT", "WHY"], rows) if rows else "no targets")
    return ExitCode.OK


async def _override_clear(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    record = await client.clear_override(args.rack, args.target, reason=args.reason)
    if args.json:
        _emit(record)
        return ExitCode.OK
    print(
        f"override cleared: {record.get('rack')} {record.get('target')} "
        f"(was {_text(record.get('value'))}, set by {record.get('who')}: {record.get('why')})"
    )
    return ExitCode.OK


async def _override_list(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    document = await client.overrides(args.rack)
    if args.json:
        _emit(document)
        return ExitCode.OK
    overrides = _dicts(document.get("overrides"))
    if not overrides:
        print("no overrides" + (f" on {args.rack}" if args.rack else ""))
        return ExitCode.OK
    print(overrides_table(overrides))
    return ExitCode.OK


def overrides_table(overrides: Sequence[JsonObject], now: float | None = None) -> str:
    rows = [
        [
            _text(record.get("rack")),
            _text(record.get("target")),
            _text(record.get("value")),
            _text(record.get("who")),
            local_time(record.get("created_at")),
            _expiry(record.get("expires_at"), now),
            _text(record.get("why")),
        ]
        for record in overrides
    ]
    return table(["RACK", "TARGET", "VALUE", "WHO", "SET", "EXPIRES", "WHY"], rows)


async def _mode(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    result = await client.set_mode(args.rack, args.mode, reason=args.reason)
    if args.json:
        _emit(result)
        return ExitCode.OK
    previous = result.get("previous")
    was = f" (was {previous})" if previous and previous != result.get("mode") else ""
    print(f"{args.rack}: mode {result.get('mode', args.mode)}{was}")
    return ExitCode.OK


async def _interlock_reset(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    result = await client.reset_interlock(args.rack, args.interlock, reason=args.reason)
    if args.json:
        _emit(result)
        return ExitCode.OK
    was = f" (was: {_text(result['was'])})" if result.get("was") else ""
    print(f"{args.rack}: {args.interlock} interlock reset{was}")
    return ExitCode.OK


async def _alarms(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    words = list(args.words)
    if words[:1] == ["ack"]:
        if len(words) != 2 or not args.ack_reason:
            print("usage: coolctl alarms ack RACK --reason TEXT", file=sys.stderr)
            return ExitCode.USAGE
        result = await client.acknowledge_alarms(words[1], reason=args.ack_reason)
        if args.json:
            _emit(result)
            return ExitCode.OK
        devices = ", ".join(str(d) for d in result.get("devices", []))
        print(f"{words[1]}: alarms acknowledged on {devices}")
        return ExitCode.OK
    if len(words) > 1:
        print(
            "usage: coolctl alarms [RACK] | coolctl alarms ack RACK --reason TEXT", file=sys.stderr
        )
        return ExitCode.USAGE
    document = await client.alarms(words[0] if words else None)
    if args.json:
        _emit(document)
        return ExitCode.OK
    rows = [
        [
            _text(alarm.get("rack")),
            _text(alarm.get("device")),
            _text(alarm.get("alarm")),
            "ACTIVE" if alarm.get("active") else "clear",
            format_duration(alarm["for_s"]) if isinstance(alarm.get("for_s"), int | float) else "",
        ]
        for alarm in _dicts(document.get("alarms"))
    ]
    print(table(["RACK", "DEVICE", "ALARM", "STATE", "FOR"], rows) if rows else "no CDU alarms")
    return ExitCode.OK


async def _reload(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    result = await client.reload()
    if args.json:
        _emit(result)
        return ExitCode.OK
    source = f" from {result['config']}" if result.get("config") else ""
    print(f"config reloaded{source}")
    return ExitCode.OK


_EVENT_HEADERS = ["ID", "TIME", "RACK", "SEVERITY", "SOURCE", "KIND", "MESSAGE"]
_EVENT_WIDTHS = [6, 25, 6, 8, 10, 16, 0]


def _event_row(event: JsonObject) -> list[str]:
    return [
        _text(event.get("id")),
        local_time(event.get("at")),
        _text(event.get("rack")),
        _text(event.get("severity")),
        _text(event.get("source")),
        _text(event.get("kind")),
        _text(event.get("message")),
    ]


async def _events(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    async def newer(since: int) -> JsonObject:  # long-polls: the event endpoint waits
        return await client.events(since=since, limit=args.limit, wait_s=FOLLOW_WAIT_S)

    first = await client.events(since=args.since, limit=args.limit)
    return await _list_log(_EVENT_LOG, first, newer, args)


@dataclass(frozen=True, slots=True)
class _Log:
    """A log the CLI lists, and follows as it grows: the events or the audit trail."""

    key: str  # where the records are in a page
    headers: list[str]
    widths: list[int]  # column widths while following, so that the lines line up
    row: Callable[[JsonObject], list[str]]
    empty: str


_EVENT_LOG = _Log("events", _EVENT_HEADERS, _EVENT_WIDTHS, _event_row, "no events")


async def _list_log(
    log: _Log,
    document: JsonObject,
    newer: Callable[[int], Awaitable[JsonObject]],
    args: argparse.Namespace,
) -> ExitCode:
    """One page of a log as a table (or its JSON); with --follow, then one line per record as
    it arrives (JSON Lines with --json), until Ctrl-C."""
    records = _dicts(document.get(log.key))
    if not args.follow:
        if args.json:
            _emit(document)
        elif records:
            print(table(log.headers, [log.row(r) for r in records]))
        else:
            print(log.empty)
        return ExitCode.OK
    if not args.json:
        print(table(log.headers, [], min_widths=log.widths), flush=True)
    since = int(document.get("next_since") or 0)
    while True:
        for record in records:
            if args.json:
                print(escape_json_text(json.dumps(record, ensure_ascii=False)), flush=True)
            else:
                print(table(None, [log.row(record)], min_widths=log.widths), flush=True)
        document = await newer(since)
        records = _dicts(document.get(log.key))
        since = int(document.get("next_since") or since)


AUDIT_POLL_S = 2.0
"""How often `audit --follow` asks for new records (the audit endpoint does not long-poll)."""

_AUDIT_HEADERS = ["ID", "TIME", "WHO", "ACTION", "RACK", "DETAILS"]
_AUDIT_WIDTHS = [5, 25, 16, 16, 5, 0]


def _audit_row(record: JsonObject) -> list[str]:
    return [
        _text(record.get("id")),
        local_time(record.get("at")),
        _text(record.get("who")),
        _text(record.get("action")),
        _text(record.get("rack")),
        _details(record.get("details")),
    ]


_AUDIT_LOG = _Log("audit", _AUDIT_HEADERS, _AUDIT_WIDTHS, _audit_row, "no audit records")


def _details(details: Any) -> str:
    """An audit record's details: absent ones left out, times (`*_at`) as local time."""
    if not isinstance(details, dict):
        return _text(details)
    return " ".join(
        f"{key}={local_time(value) if key.endswith('_at') else _text(value)}"
        for key, value in details.items()
        if value is not None
    )


async def _audit(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    async def newer(since: int) -> JsonObject:  # the audit endpoint does not long-poll
        await asyncio.sleep(AUDIT_POLL_S)
        return await client.audit(since=since, limit=args.limit)

    first = await client.audit(since=args.since, limit=args.limit)
    return await _list_log(_AUDIT_LOG, first, newer, args)


# --- top ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Screen:
    """What one frame of `top` shows, fetched in one go so that it is consistent."""

    racks: list[JsonObject]
    points: list[JsonObject]
    overrides: list[JsonObject]
    fetched_at: float = field(default_factory=lambda: datetime.now().timestamp())


async def _fetch_screen(client: ControlClient, rack: str | None) -> tuple[_Screen, JsonObject]:
    racks_doc, points_doc, overrides_doc = await asyncio.gather(
        client.racks(), client.points(rack), client.overrides(rack)
    )
    racks = _dicts(racks_doc.get("racks"))
    if rack is not None:
        racks = [r for r in racks if r.get("rack") == rack]
    screen = _Screen(
        racks, _dicts(points_doc.get("points")), _dicts(overrides_doc.get("overrides"))
    )
    document = {
        "racks": racks,
        "points": points_doc.get("points"),
        "overrides": overrides_doc.get("overrides"),
    }
    return screen, document


def _point(points: Sequence[JsonObject], rack: str, *names: str) -> JsonObject | None:
    """The first point of `rack` called one of `names` (in that order of preference)."""
    for name in names:
        found = sorted(
            (p for p in points if p.get("rack") == rack and p.get("point") == name),
            key=lambda p: str(p.get("device")),
        )
        if found:
            return found[0]
    return None


def _reading(point: JsonObject | None, render: Callable[[float], str]) -> str:
    """A value with its unit; never passes off a stale or bad reading as a fresh one."""
    if point is None:
        return "-"
    value, quality = point.get("value"), point.get("quality", "good")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(quality) if quality != "good" else "-"
    shown = render(float(value))
    return shown if quality == "good" else f"{shown} ({quality})"


_TOP_COLUMNS = (
    "RACK", "MODE", "SUPPLY", "RETURN", "FLOW", "ΔP", "PUMP", "VALVE", "POWER/BUDGET",
    "CHIPS", "INTERLOCKS", "FAILSAFE",
)  # fmt: skip
_TOP_DROP_ORDER = ("ΔP", "RETURN", "VALVE", "PUMP", "MODE", "POWER/BUDGET", "FLOW", "SUPPLY")
"""Which columns `top` gives up first when the terminal is narrow; RACK and the safety states
(CHIPS, INTERLOCKS, FAILSAFE) are never dropped."""


def fit_columns(
    headers: Sequence[str], rows: Sequence[Sequence[str]], width: int | None
) -> tuple[list[str], list[list[str]]]:
    """The columns that fit in `width`, dropping them in _TOP_DROP_ORDER (None: all)."""
    keep = list(headers)
    while width is not None:
        index = [headers.index(name) for name in keep]
        shown = table(keep, [[row[i] for i in index] for row in rows])
        if max((len(line) for line in shown.splitlines()), default=0) <= width:
            break
        droppable = [name for name in _TOP_DROP_ORDER if name in keep]
        if not droppable:
            break
        keep.remove(droppable[0])
    index = [headers.index(name) for name in keep]
    return keep, [[row[i] for i in index] for row in rows]


def chips_cell(chips: Any) -> str:
    """`82°C`, `85°C near 3/18`, `87°C THROTTLING 2/18`: the hottest chip and who is close."""
    if not isinstance(chips, dict):
        return "-"
    hottest = chips.get("hottest_c")
    text = f"{hottest:.0f}°C" if isinstance(hottest, int | float) else "-"
    servers = chips.get("servers")
    of = f"/{servers}" if isinstance(servers, int) else ""
    throttling = chips.get("throttling") or []
    near = chips.get("near_throttle") or []
    if throttling:
        text += f" THROTTLING {len(throttling)}{of}"
    elif near:
        text += f" near {len(near)}{of}"
    return text


def render_frame(
    screen: _Screen,
    *,
    interval: float | None,
    rack: str | None,
    problem: str | None = None,
    width: int | None = None,
) -> list[str]:
    """The lines of one `top` frame; the same for `--once` and the live view. Columns that do
    not fit in `width` are dropped by priority: the safety states always show."""
    stamp = local_time(screen.fetched_at)
    title = f"coolctl top  {stamp}"
    if rack:
        title += f"  rack {rack}"
    if interval is not None:
        title += f"  every {interval:g}s  (q quits)"
    lines = [title]
    if problem:
        lines.append(f"!! {escape_text(problem)}; showing data from {stamp}")
    lines.append("")
    if not screen.racks:
        lines.append("no racks" + (f" called {rack}" if rack else ""))
    else:
        rows = []
        for entry in screen.racks:
            name = _text(entry.get("rack"))
            points = screen.points
            power, budget = entry.get("power_w"), entry.get("budget_w")
            rows.append(
                [
                    name,
                    _text(entry.get("mode")),
                    _reading(_point(points, name, "supply_temperature"), lambda v: f"{v:.1f}°C"),
                    _reading(_point(points, name, "return_temperature"), lambda v: f"{v:.1f}°C"),
                    _reading(_point(points, name, "flow"), lambda v: f"{v:.1f} L/min"),
                    _reading(
                        _point(points, name, "differential_pressure"),
                        lambda v: f"{v / 1000:.1f} kPa",
                    ),
                    _reading(
                        _point(points, name, "pump_speed", "pump_speed_command"),
                        lambda v: f"{v * 100:.0f}%",
                    ),
                    _reading(
                        _point(points, name, "valve_position", "valve_command"),
                        lambda v: f"{v * 100:.0f}%",
                    ),
                    _power(power, budget),
                    chips_cell(entry.get("chips")),
                    _text(entry.get("interlocks")),
                    _text(entry.get("failsafe")),
                ]
            )
        headers, rows = fit_columns(_TOP_COLUMNS, rows, width)
        lines.extend(table(headers, rows).splitlines())
        for entry in screen.racks:
            chips = entry.get("chips")
            if isinstance(chips, dict) and chips.get("throttling"):
                lines.append(f"{entry.get('rack')} throttling: {_text(chips['throttling'])}")
    lines.append("")
    if screen.overrides:
        lines.append("OVERRIDES")
        lines.extend(overrides_table(screen.overrides, screen.fetched_at).splitlines())
    else:
        lines.append("no overrides")
    return lines


def _power(power: Any, budget: Any) -> str:
    if not isinstance(power, int | float):
        return "-"
    if not isinstance(budget, int | float) or budget <= 0:
        return _kw(power)
    return f"{power / 1000:.1f}/{budget / 1000:.1f} kW ({100 * power / budget:.0f}%)"


async def _top(client: ControlClient, args: argparse.Namespace) -> ExitCode:
    screen, document = await _fetch_screen(client, args.rack)
    if args.once or args.json:
        if args.json:
            _emit(document)
        else:
            fixed = sys.stdout.isatty() or "COLUMNS" in os.environ
            width = shutil.get_terminal_size().columns if fixed else None
            print("\n".join(render_frame(screen, interval=None, rack=args.rack, width=width)))
        return ExitCode.OK
    return await _top_live(client, args.rack, args.interval, screen, sys.stdout)


_ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


async def _top_live(
    client: ControlClient, rack: str | None, interval: float, screen: _Screen, out: TextIO
) -> ExitCode:
    """Redraw every `interval` until q (exit 0) or Ctrl-C (130, via KeyboardInterrupt).

    The terminal is always given back as it was, whichever way the view ends. A daemon that
    goes away mid-view is reported in the frame and retried, so a restart does not end it.
    """
    quit_pressed = asyncio.Event()
    with _keys(quit_pressed):
        out.write(_ENTER)
        try:
            problem: str | None = None
            while True:
                width = shutil.get_terminal_size().columns
                lines = render_frame(
                    screen, interval=interval, rack=rack, problem=problem, width=width
                )
                out.write(_HOME + "".join(f"{line[:width]}{_CLEAR_LINE}\n" for line in lines))
                out.write(_CLEAR_BELOW)
                out.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(quit_pressed.wait(), interval)
                if quit_pressed.is_set():
                    return ExitCode.OK
                try:
                    screen, _ = await _fetch_screen(client, rack)
                    problem = None
                except (Unreachable, ClientError) as exc:
                    problem = str(exc)
        finally:
            out.write(_LEAVE)
            out.flush()


@contextlib.contextmanager
def _keys(quit_pressed: asyncio.Event) -> Iterator[None]:
    """Watch stdin for q, in cbreak mode when it is a terminal; restore it afterwards."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        yield  # no usable stdin (a test harness, a service): Ctrl-C still quits
        return
    saved = None
    if os.isatty(fd):
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still sends SIGINT
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:  # end of input: nothing more will be typed, keep running
            loop.remove_reader(fd)
        elif b"q" in data.lower():
            quit_pressed.set()

    try:
        loop.add_reader(fd, on_key)
        reading = True
    except (OSError, ValueError, NotImplementedError):
        reading = False  # e.g. stdin is a regular file, which cannot be watched
    try:
        yield
    finally:
        if reading:
            loop.remove_reader(fd)
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


_HANDLERS: dict[str, Callable[[ControlClient, argparse.Namespace], Awaitable[ExitCode]]] = {
    "status": _status,
    "top": _top,
    "override set": _override_set,
    "override clear": _override_clear,
    "override list": _override_list,
    "override targets": _override_targets,
    "audit": _audit,
    "mode": _mode,
    "interlock reset": _interlock_reset,
    "alarms": _alarms,
    "events": _events,
    "reload": _reload,
}


# --- formatting --------------------------------------------------------------------------


def table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    *,
    min_widths: Sequence[int] | None = None,
) -> str:
    """Aligned columns, two spaces apart; the last column is not padded."""
    rows = [[escape_text(cell) for cell in row] for row in rows]  # nothing raw to the terminal
    columns = len(headers) if headers is not None else len(rows[0]) if rows else 0
    widths = list(min_widths) if min_widths is not None else [0] * columns
    for row in [headers, *rows] if headers is not None else rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [headers, *rows] if headers is not None else rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def local_time(timestamp: Any) -> str:
    """Unix seconds as local ISO-8601 (`2026-11-28T03:12:09+01:00`); `-` if absent."""
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        return "-"
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _relative(timestamp: float, now: float | None = None) -> str:
    left = timestamp - (datetime.now().timestamp() if now is None else now)
    return f"in {format_duration(left)}" if left > 0 else "now"


def _expiry(expires_at: Any, now: float | None = None) -> str:
    if expires_at is None:
        return "permanent"
    if not isinstance(expires_at, int | float):
        return "-"
    left = expires_at - (datetime.now().timestamp() if now is None else now)
    return f"in {format_duration(left)}" if left > 0 else "expired"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_text(item) for item in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{key}={_text(item)}" for key, item in value.items()) or "-"
    return escape_text(str(value))  # text from the daemon may carry anyone's input


def _short(value: Any) -> str:
    """A bound as an operator reads it: four significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return _text(value)


def _kw(watts: Any) -> str:
    if not isinstance(watts, int | float) or isinstance(watts, bool):
        return "-"
    return f"{watts / 1000:.1f} kW"


def _count(value: Any) -> str:
    if isinstance(value, list | tuple):
        return str(len(value))
    return _text(value)


def _dicts(value: Any) -> list[JsonObject]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


# --- shell completion --------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    """One command level of the parser tree, as the completion functions need it."""

    path: str
    commands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # option -> value spec
    positionals: list[str] = field(default_factory=list)  # value spec per position
    repeats: bool = False  # the last positional takes any number of words


_FILE_WORDS = ("FILE", "PATH", "DIR")


def _value_spec(action: argparse.Action) -> str:
    """`w:a b` (these words), `f` (file names) or `-` (free text, nothing to offer)."""
    if action.choices is not None and not isinstance(action, SubParsers):
        return "w:" + " ".join(str(choice) for choice in action.choices)
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if action.type is Path or any(word in metavar.upper() for word in _FILE_WORDS):
        return "f"
    return "-"


def _walk(parser: argparse.ArgumentParser, path: str, nodes: list[_Node]) -> _Node:
    node = _Node(path)
    nodes.append(node)
    for action in parser._actions:
        if isinstance(action, SubParsers):
            for name, child in action.choices.items():
                node.commands.append(name)
                _walk(child, f"{path} {name}".strip(), nodes)
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            node.options.extend(action.option_strings)
            if action.nargs != 0:
                for option in action.option_strings:
                    node.values[option] = _value_spec(action)
        else:
            node.positionals.append(_value_spec(action))
            node.repeats = action.nargs in ("*", "+", argparse.REMAINDER)
    return node


def _tree(parser: argparse.ArgumentParser) -> list[_Node]:
    """The whole coolctl parser tree: its top-level options and every (sub)command."""
    nodes: list[_Node] = []
    _walk(parser, "", nodes)
    return nodes


def _q(text: str) -> str:
    return shlex.quote(text)


def _tables(nodes: Sequence[_Node]) -> str:
    """Shell functions (bash and zsh alike) that answer questions about the parser tree."""
    commands = [
        f"        {_q(n.path)}) REPLY={_q(' '.join(n.commands))} ;;" for n in nodes if n.commands
    ]
    options = [f"        {_q(n.path)}) REPLY={_q(' '.join(n.options))} ;;" for n in nodes]
    values = [
        f"        {_q(n.path + '|' + option)}) REPLY={_q(spec)} ;;"
        for n in nodes
        for option, spec in n.values.items()
    ]
    positionals = []
    for n in nodes:
        for index, spec in enumerate(n.positionals):
            positionals.append(f"        {_q(f'{n.path}|{index}')}) REPLY={_q(spec)} ;;")
        if n.repeats and n.positionals:
            positionals.append(f"        {_q(n.path + '|')}*) REPLY={_q(n.positionals[-1])} ;;")
    return "\n".join(
        [
            "# The subcommands under command path $1.",
            "_coolctl_commands() {",
            '    case "$1" in',
            *commands,
            "        *) REPLY='' ;;",
            "    esac",
            "}",
            "",
            "# The options of command path $1.",
            "_coolctl_options() {",
            '    case "$1" in',
            *options,
            "        *) REPLY='' ;;",
            "    esac",
            "}",
            "",
            "# The value of option $2 under path $1: 'w:WORDS', 'f' (files), '-' (free text),",
            "# or 'none' when the option takes no value.",
            "_coolctl_option_value() {",
            '    case "$1|$2" in',
            *values,
            "        *) REPLY=none ;;",
            "    esac",
            "}",
            "",
            "# Positional argument number $2 (from 0) under path $1, as for option values.",
            "_coolctl_positional() {",
            '    case "$1|$2" in',
            *positionals,
            "        *) REPLY=- ;;",
            "    esac",
            "}",
        ]
    )


# Walks the words before the cursor: which command path they name, whether an option is
# waiting for its value, and how many positionals have been given at the current level.
_SCAN = r"""
_coolctl_scan() {
    # $1: index of the word being completed; words come in the array named by $2.
    local last=$1 i word
    _coolctl_path='' _coolctl_pending='' _coolctl_npos=0
    for ((i = 1; i < last; i++)); do
        eval "word=\${$2[i]}"
        if [[ -n $_coolctl_pending ]]; then
            [[ $word == '=' ]] && continue  # --option=value, split at '='
            _coolctl_pending=''
            continue
        fi
        case $word in
            -?*)
                _coolctl_option_value "$_coolctl_path" "$word"
                [[ $REPLY != none ]] && _coolctl_pending=$word
                ;;
            *)
                _coolctl_commands "$_coolctl_path"
                if [[ -n $REPLY && " $REPLY " == *" $word "* ]]; then
                    _coolctl_path=${_coolctl_path:+$_coolctl_path }$word
                    _coolctl_npos=0
                else
                    _coolctl_npos=$((_coolctl_npos + 1))
                fi
                ;;
        esac
    done
}
"""

_BASH_MAIN = r"""
_coolctl_offer() {
    # $1: a value spec, $2: the word so far.
    case $1 in
        w:*) COMPREPLY=($(compgen -W "${1#w:}" -- "$2")) ;;
        f)
            compopt -o filenames 2>/dev/null
            local IFS=$'\n'
            COMPREPLY=($(compgen -f -- "$2"))
            ;;
        *) COMPREPLY=() ;;
    esac
}

_coolctl() {
    local REPLY cur=${COMP_WORDS[COMP_CWORD]}
    local _coolctl_path _coolctl_pending _coolctl_npos
    _coolctl_scan "$COMP_CWORD" COMP_WORDS
    [[ $cur == '=' ]] && cur=''
    COMPREPLY=()
    if [[ -n $_coolctl_pending ]]; then
        _coolctl_option_value "$_coolctl_path" "$_coolctl_pending"
        _coolctl_offer "$REPLY" "$cur"
    elif [[ $cur == -* ]]; then
        _coolctl_options "$_coolctl_path"
        COMPREPLY=($(compgen -W "$REPLY" -- "$cur"))
    else
        _coolctl_commands "$_coolctl_path"
        if [[ -n $REPLY ]]; then
            COMPREPLY=($(compgen -W "$REPLY" -- "$cur"))
        else
            _coolctl_positional "$_coolctl_path" "$_coolctl_npos"
            _coolctl_offer "$REPLY" "$cur"
        fi
    fi
}

complete -F _coolctl coolctl
"""

_ZSH_MAIN = r"""
_coolctl_offer() {
    case $1 in
        w:*) compadd -- ${=${1#w:}} ;;
        f) _files ;;
    esac
}

_coolctl() {
    local REPLY _coolctl_path _coolctl_pending _coolctl_npos
    local -a _coolctl_words
    _coolctl_words=("${(@)words[2,CURRENT]}")  # word i here is word i after `coolctl`
    _coolctl_scan $((CURRENT - 1)) _coolctl_words
    if [[ -n $_coolctl_pending ]]; then
        _coolctl_option_value "$_coolctl_path" "$_coolctl_pending"
        _coolctl_offer "$REPLY"
    elif [[ $PREFIX == -* ]]; then
        _coolctl_options "$_coolctl_path"
        compadd -- ${=REPLY}
    else
        _coolctl_commands "$_coolctl_path"
        if [[ -n $REPLY ]]; then
            compadd -- ${=REPLY}
        else
            _coolctl_positional "$_coolctl_path" "$_coolctl_npos"
            _coolctl_offer "$REPLY"
        fi
    fi
}

if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _coolctl "$@"
else
    compdef _coolctl coolctl
fi
"""


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """A completion script for the whole coolctl command line, read off its parser tree."""
    nodes = _tree(parser)
    header = (
        f"# {shell} completion for coolctl, generated by `coolctl completion {shell}` from\n"
        "# coolctl's own argument parser: regenerate it after an upgrade.\n"
    )
    if shell == "zsh":
        return "#compdef coolctl\n" + header + _tables(nodes) + "\n" + _SCAN + _ZSH_MAIN
    return header + _tables(nodes) + "\n" + _SCAN + _BASH_MAIN
