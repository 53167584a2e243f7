"""`coolctl probe redfish`: discover a Redfish service and print every point it yields.

For commissioning: before a BMC, CDU or PDU goes into a config, this shows what coolctl finds
there (one device per chassis, CDU and PDU, named as the config's `resource` may name them),
which value each point has, and which resource and property it comes from.

Exit status: 0 when points were read, 3 when the service cannot be reached (or answers with
trouble only), 1 for refused credentials and bad input (URL, password file, CA file, or a
service with nothing coolctl can use).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coolctl.drivers.redfish import RedfishDevice, RedfishSettings, RedfishTransport
from coolctl.drivers.redfish_points import list_resources
from coolctl.drivers.redfish_transport import Failure, FailureKind, safe_text
from coolctl.exitcodes import ExitCode
from coolctl.model import CANONICAL_POINTS, Quality

_PROG = "coolctl probe redfish"

# Discovery failures that say the credentials or the service's answers are bad (exit 1), where
# any other says the service could not be reached (exit 3).
_REFUSED = frozenset({FailureKind.AUTH, FailureKind.HTTP_4XX, FailureKind.MALFORMED})


@dataclass(frozen=True, slots=True)
class ProbedPoint:
    device: str
    point: str
    value: float | None
    unit: str
    quality: str
    source: str
    writable: tuple[float, float] | None

    def as_dict(self) -> dict[str, object]:
        return {
            "device": self.device,
            "point": self.point,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality,
            "source": self.source,
            "writable": list(self.writable) if self.writable else None,
        }


async def probe_redfish(
    url: str,
    user: str | None,
    password_file: Path | None,
    ca_file: Path | None,
    insecure: bool,
    as_json: bool,
) -> ExitCode:
    """Discover the service at `url` and print its points (table, or JSON with `as_json`)."""
    try:
        settings = _settings(url, user, password_file, ca_file, insecure)
        transport = RedfishTransport(settings, label=settings.origin)
    except ValueError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return ExitCode.BAD
    async with transport:
        try:
            _, refs, notes = await list_resources(transport.get)
        except Failure as failure:
            print(
                f"{_PROG}: {settings.origin}: {failure}{tls_hint(failure, ca_file)}",
                file=sys.stderr,
            )
            return ExitCode.BAD if failure.kind in _REFUSED else ExitCode.UNREACHABLE
        for note in notes:
            print(f"{_PROG}: skipped {note}", file=sys.stderr)
        if not refs:
            print(f"{_PROG}: {settings.origin} has no chassis, CDU or PDU", file=sys.stderr)
            return ExitCode.BAD
        rows: list[ProbedPoint] = []
        problems: list[Failure] = []
        for ref in refs:
            transport.reset_backoff()  # one try per device: a probe does not wait
            async with RedfishDevice(
                rack="-",
                device=ref.name,
                kind=ref.kind,
                settings=settings,
                resource=ref.uri,
                transport=transport,
            ) as device:
                rows.extend(await _probe_device(device, problems))
    if as_json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        print(format_table(rows))
    if any(row.quality == Quality.GOOD for row in rows):
        return ExitCode.OK
    if any(failure.kind is FailureKind.AUTH for failure in problems):
        print(f"{_PROG}: the service refused the credentials", file=sys.stderr)
        return ExitCode.BAD
    if not rows and not problems:
        print(f"{_PROG}: nothing coolctl can read at {settings.origin}", file=sys.stderr)
        return ExitCode.BAD
    print(f"{_PROG}: no good reading from {settings.origin}", file=sys.stderr)
    return ExitCode.UNREACHABLE


def tls_hint(failure: Failure, ca_file: Path | None) -> str:
    """What to do about a TLS failure: the service's CA (`--ca`), or `--insecure`."""
    if "TLS" not in str(failure):
        return ""
    given = f"--ca {ca_file} did not verify it; " if ca_file is not None else ""
    return (
        f" ({given}pass --ca FILE with the CA certificate that signed the service's"
        " certificate, or --insecure to skip verification, logged as a warning)"
    )


async def _probe_device(device: RedfishDevice, problems: list[Failure]) -> list[ProbedPoint]:
    readings = await device.poll()
    sources = device.sources()
    writable = device.writable()
    errors = device.stats.errors_by_kind
    if errors:
        problems.extend(Failure(FailureKind(kind), "") for kind in errors)
        summary = ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items()))
        print(f"{_PROG}: {device.device}: {summary}", file=sys.stderr)
    rows = []
    for reading in readings:
        name = reading.point.name
        if name not in sources:  # the device does not expose it
            continue
        rows.append(
            ProbedPoint(
                device=device.device,
                point=name,
                value=reading.value,
                unit=CANONICAL_POINTS[name].unit.value,
                quality=reading.quality.value,
                source=sources[name],
                writable=writable.get(name),
            )
        )
    return rows


def _settings(
    url: str,
    user: str | None,
    password_file: Path | None,
    ca_file: Path | None,
    insecure: bool,
) -> RedfishSettings:
    """RedfishSettings from the command line; ValueError (never echoing a password)."""
    if (user is None) != (password_file is None):
        raise ValueError("--user and --password-file go together")
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"cannot read the password file {password_file}: {type(exc).__name__}"
            ) from None
        if not password:
            raise ValueError(f"the password file {password_file} is empty")
    if ca_file is not None and insecure:
        raise ValueError("--ca and --insecure contradict each other")
    return RedfishSettings(
        url=url,
        username=user,
        password=password,
        auth="session" if user is not None else "none",
        ca_file=ca_file,
        verify_tls=not insecure,
    )


def format_table(rows: Sequence[ProbedPoint]) -> str:
    header = ("DEVICE", "POINT", "VALUE", "UNIT", "QUALITY", "SOURCE URI")
    lines = [header]
    for row in rows:
        value = "" if row.value is None else f"{row.value:.6g}"
        lines.append(
            (
                safe_text(row.device, 40),
                row.point,
                value,
                row.unit,
                row.quality,
                safe_text(row.source, 400),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join(
        f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  {line[2]:>{widths[2]}}  "
        f"{line[3]:<{widths[3]}}  {line[4]:<{widths[4]}}  {line[5]}".rstrip()
        for line in lines
    )
