"""`coolctl probe snmp`: read an SNMP PDU once through a profile, tables walked.

Prints every point found, table rows with their index and the PDU's label for the row, so a
profile can be checked against a real PDU before the daemon relies on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from coolctl.drivers.profile_toml import ProfileError
from coolctl.drivers.snmp import (
    AUTH_PROTOCOLS,
    PRIV_PROTOCOLS,
    Credentials,
    FailureKind,
    SnmpDevice,
    V2cCredentials,
    V3Credentials,
)
from coolctl.drivers.snmp_profile import load_snmp_profile
from coolctl.exitcodes import ExitCode
from coolctl.model import CANONICAL_POINTS, INDEX_SEPARATOR, Quality, Reading, base_point

_PROG = "coolctl probe snmp"


def add_parser(probe_kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    snmp = probe_kinds.add_parser("snmp", help="an SNMP PDU (v2c or v3 authPriv), tables walked")
    snmp.add_argument("target", metavar="HOST[:PORT]", help="port 161 unless given")
    snmp.add_argument("--profile", required=True, metavar="NAME_OR_FILE")
    snmp.add_argument(
        "--community", metavar="C", help="v2c community (a lab; else --community-file)"
    )
    snmp.add_argument("--community-file", type=Path, metavar="FILE", help="v2c community file")
    snmp.add_argument("--user", metavar="NAME", help="v3 user (authPriv)")
    snmp.add_argument("--auth-key-file", type=Path, metavar="FILE")
    snmp.add_argument("--priv-key-file", type=Path, metavar="FILE")
    snmp.add_argument("--auth-protocol", choices=sorted(AUTH_PROTOCOLS), default="sha256")
    snmp.add_argument("--priv-protocol", choices=sorted(PRIV_PROTOCOLS), default="aes")
    snmp.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")
    snmp.add_argument("--json", action="store_true", help="print JSON instead of a table")


def target_address(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep:
        return target, 161
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"{target!r} is not HOST or HOST:PORT")
    return host.strip("[]"), int(port)


def credentials(args: argparse.Namespace) -> Credentials:
    """v2c from --community(-file), v3 from --user and the key files; ValueError otherwise."""
    if args.user is not None:
        if args.community is not None or args.community_file is not None:
            raise ValueError("give either v2c (--community) or v3 (--user) options, not both")
        if args.auth_key_file is None or args.priv_key_file is None:
            raise ValueError("v3 authPriv needs --auth-key-file and --priv-key-file")
        return V3Credentials(
            user=args.user,
            auth_key=_read(args.auth_key_file),
            priv_key=_read(args.priv_key_file),
            auth_protocol=args.auth_protocol,
            priv_protocol=args.priv_protocol,
        )
    if args.community_file is not None:
        return V2cCredentials(_read(args.community_file))
    if args.community is not None:
        return V2cCredentials(args.community)
    raise ValueError("give --community, --community-file, or --user with the v3 key files")


def _read(path: Path) -> str:
    try:
        text = path.read_text("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {type(exc).__name__}") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text


async def probe_snmp(args: argparse.Namespace) -> ExitCode:
    try:
        host, port = target_address(args.target)
        creds = credentials(args)
        profile = load_snmp_profile(args.profile)
    except ProfileError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return ExitCode.BAD
    except (ValueError, OSError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    device = SnmpDevice(
        rack="-",
        device=args.target,
        host=host,
        port=port,
        profile=profile,
        credentials=creds,
        timeout_s=args.timeout,
    )
    try:
        readings = await device.poll()
    finally:
        await device.close()
    rows = [as_dict(r, device.labels.get(r.point.name)) for r in readings]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    errors = device.stats.errors_by_kind
    if errors:
        summary = ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items()))
        print(f"{_PROG}: {args.target}: {summary}", file=sys.stderr)
    if all(r.quality is not Quality.GOOD for r in readings):
        if FailureKind.AUTH in errors:
            print(f"{_PROG}: {args.target} refused the credentials", file=sys.stderr)
            return ExitCode.BAD
        print(f"{_PROG}: no good reading from {args.target}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    return ExitCode.OK


def as_dict(reading: Reading, label: str | None) -> dict[str, object]:
    """One reading as the probes print it; table rows add `index` (and `label`)."""
    name = reading.point.name
    base = base_point(name)
    row: dict[str, object] = {
        "point": base,
        "value": reading.value,
        "unit": CANONICAL_POINTS[base].unit.value,
        "quality": reading.quality.value,
    }
    if base != name:
        row["index"] = name.split(INDEX_SEPARATOR, 1)[1]
        row["label"] = label
    return row


def format_table(rows: Sequence[dict[str, object]]) -> str:
    lines = [("POINT", "INDEX", "VALUE", "UNIT", "QUALITY", "LABEL")]
    for row in rows:
        value = row["value"]
        lines.append(
            (
                str(row["point"]),
                str(row.get("index", "")),
                "" if not isinstance(value, float) else f"{value:.6g}",
                str(row["unit"]),
                str(row["quality"]),
                str(row.get("label") or ""),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    return "\n".join(
        f"{line[0]:<{widths[0]}}  {line[1]:>{widths[1]}}  {line[2]:>{widths[2]}}  "
        f"{line[3]:<{widths[3]}}  {line[4]:<{widths[4]}}  {line[5]}".rstrip()
        for line in lines
    )
