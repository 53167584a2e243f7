"""What every device profile has in common: finding the file, parsing the TOML, and checking
values with errors that name the file, the key path and the problem.

Each protocol's profile module (Modbus, MQTT) subclasses `ProfileChecker` with the checks of
its own format; the shipped profiles of all protocols live side by side in `profiles/`.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

SHIPPED = "coolctl.drivers.profiles"
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

P = TypeVar("P")
_Choice = TypeVar("_Choice", bound=str)


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file, the key and the problem."""


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def load(
    name_or_path: str | Path,
    protocol: str,
    parse: Callable[[bytes, Path], P],
) -> P:
    """A bare name ("sim-cdu") means a shipped profile of `protocol`; anything with a "/" or
    ending in ".toml" (and every `Path`) is a file."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        path = Path(name_or_path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from exc
        return parse(data, path)
    if not _BARE_NAME.fullmatch(text):
        raise ProfileError(f"{text!r}: not a profile name (letters, digits, '-', '_', '.')")
    resource = importlib.resources.files(SHIPPED) / f"{text}.toml"
    if not resource.is_file():
        available = ", ".join(shipped(protocol)) or "none"
        raise ProfileError(
            f"{text!r}: no shipped {protocol_label(protocol)} profile of that name"
            f" (shipped: {available})"
        )
    return parse(resource.read_bytes(), Path(str(resource)))


def protocol_label(protocol: str) -> str:
    return {"modbus": "Modbus", "mqtt": "MQTT"}.get(protocol, protocol)


def shipped(protocol: str) -> list[str]:
    """Names of the shipped profiles of one protocol (the folder holds every protocol's)."""
    names = []
    for entry in importlib.resources.files(SHIPPED).iterdir():
        if not entry.name.endswith(".toml"):
            continue
        try:
            header = tomllib.loads(entry.read_text("utf-8")).get("profile", {})
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        if isinstance(header, dict) and header.get("protocol") == protocol:
            names.append(entry.name.removesuffix(".toml"))
    return sorted(names)


def parse_document(data: bytes, path: Path) -> dict[str, Any]:
    """The TOML document of a profile; `path` only names the file in errors."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc


class ProfileChecker:
    """Reads values out of a parsed profile, naming file and key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.path}: {key}: {problem}")

    def no_duplicates(self, points: Sequence[_Named]) -> None:
        seen: dict[str, int] = {}
        for index, point in enumerate(points):
            if point.name in seen:
                raise self.fail(
                    f"point[{index}].name",
                    f"{point.name!r} is already defined by point[{seen[point.name]}]",
                )
            seen[point.name] = index

    def no_unknown_keys(
        self, table: Mapping[str, Any], allowed: set[str] | frozenset[str], key: str
    ) -> None:
        for name in table:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.fail(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def table(self, document: Mapping[str, Any], name: str, key: str) -> Mapping[str, Any]:
        value = document.get(name)
        if value is None:
            raise self.fail(key, "missing")
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {type(value).__name__}")
        return value

    def string(
        self, table: Mapping[str, Any], name: str, key: str, default: str | None = None
    ) -> str:
        value = table.get(name, default)
        if value is None:
            raise self.fail(f"{key}.{name}", "missing")
        if not isinstance(value, str):
            raise self.fail(f"{key}.{name}", f"must be a string, not {type(value).__name__}")
        return value

    def choice(
        self,
        table: Mapping[str, Any],
        name: str,
        key: str,
        choices: tuple[_Choice, ...],
        default: _Choice | None = None,
    ) -> _Choice:
        value = self.string(table, name, key, default)
        if value not in choices:
            raise self.fail(f"{key}.{name}", f"must be one of {'|'.join(choices)}, not {value!r}")
        return value

    def boolean(self, table: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}", f"must be true or false, not {value!r}")
        return value

    def integer(self, table: Mapping[str, Any], name: str, key: str) -> int:
        value = table.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{key}.{name}", f"must be an integer, not {value!r}")
        return value

    def number(
        self, table: Mapping[str, Any], name: str, key: str, default: float | None = None
    ) -> float:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{key}.{name}", f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise self.fail(f"{key}.{name}", f"must be finite, not {value}")
        return float(value)
