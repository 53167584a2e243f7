"""Reading a config file: TOML in, a Config or every problem at once out.

Each problem is one line, `FILE: key.path: message`, so that an operator fixes a config in
one pass instead of one error per restart.
"""

from __future__ import annotations

import enum
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from coolctl.config.enums import Driver
from coolctl.config.fields import ID_RULE, KeyProblem, kind, shown
from coolctl.config.schema import CONFIG, Config


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one line per thing that is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from exc
    except ValueError as exc:  # a NUL in the path
        raise ConfigError([f"{path!r}: cannot read: {exc}"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    except ValueError as exc:  # tomllib's own limits, e.g. an integer of over 4300 digits
        raise ConfigError([f"{path}: not usable TOML: {exc}"]) from exc
    except RecursionError:
        raise ConfigError([f"{path}: not usable TOML: nested too deeply"]) from None
    return parse_config(raw, path)


def parse_config(raw: Mapping[str, Any], path: Path | None = None) -> Config:
    """Validate an already-parsed TOML document."""
    filename = str(path) if path else "<config>"
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{filename}: (top level): must be a table, not {kind(raw)}"])
    if "path" in raw:  # where the file was read from is not the file's to say
        problems.append(f"{filename}: path: {_unknown_key(Config, 'path')}")
    try:
        config = CONFIG.validate_python({**raw, "path": path}, context={})
    except ValidationError as exc:
        problems += [
            f"{filename}: {where}: {message}"
            for error in exc.errors()
            for where, message in _problems(error)
        ]
    if problems:
        raise ConfigError(problems)
    return config


# -- pydantic's errors, said as the config's own -------------------------------------------

_MISSING = {
    "racks": "no racks configured: add at least one [racks.<id>] table",
    "devices": "no devices: add at least one [racks.<rack>.devices.<id>] table",
}
_NEVER = {"password": "never put a password in the config: use password_file or a credential"}
_HIDDEN = {"id", "path"}  # filled in by the loader, not written in the file
_EXPECTED = {
    "float_type": "a number",
    "finite_number": "a number",
    "int_type": "a whole number",
    "string_type": "a string",
    "bool_type": "true or false",
}


def _problems(error: ErrorDetails) -> Iterator[tuple[str, str]]:
    """(key path, message) of each problem one pydantic error stands for."""
    keys, owner, leaf = _walk(error["loc"])
    kind_of_error, value = error["type"], error.get("input")
    where = ".".join(keys) or "(top level)"
    if kind_of_error == "default_factory_not_called":  # its inputs are wrong: said already
        return
    if kind_of_error in ("value_error", "assertion_error"):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, KeyProblem):
            for key, message in cause.problems:
                yield ".".join(filter(None, [*keys, key])) or "(top level)", message
            return
        message = str(cause)
    elif kind_of_error == "missing":
        message = _MISSING.get(keys[-1], "missing")
    elif kind_of_error == "unexpected_keyword_argument":
        message = _NEVER.get(keys[-1]) or _unknown_key(owner, keys[-1])
    elif kind_of_error in _EXPECTED:
        message = f"must be {_EXPECTED[kind_of_error]}, not {kind(value)} {shown(value)}"
    elif kind_of_error == "enum" and isinstance(leaf, type) and issubclass(leaf, enum.Enum):
        message = f"must be one of {', '.join(m.value for m in leaf)}, not {shown(value)}"
    elif kind_of_error == "union_tag_invalid":
        where += ".driver"
        message = f"must be one of {', '.join(Driver)}, not {shown(error['ctx']['tag'])}"
    elif kind_of_error == "union_tag_not_found":
        where, message = f"{where}.driver", "missing"
    elif kind_of_error == "string_pattern_mismatch":  # only names are matched to a pattern
        message = ID_RULE
    elif kind_of_error == "greater_than":
        message = f"must be greater than {error['ctx']['gt']}, not {shown(value)}"
    elif kind_of_error == "greater_than_equal":
        message = f"must be at least {error['ctx']['ge']}, not {shown(value)}"
    elif kind_of_error in ("dict_type", "model_attributes_type", "dataclass_type"):
        message = f"must be a table, not {kind(value)}"
    else:
        message = error["msg"]
    yield where, message


def _unknown_key(owner: Any, key: str) -> str:
    fields = getattr(owner, "__pydantic_fields__", {})
    known = ", ".join(sorted(set(fields) - _HIDDEN))
    return f"unknown key (expected one of: {known})"


def _walk(loc: tuple[int | str, ...]) -> tuple[list[str], Any, Any]:
    """The key path an error's location names (without the union's tags), the table class
    holding its last key, and that key's declared type."""
    keys: list[str] = []
    node: Any = Config
    owner: Any = None
    for part in loc:
        node = _bare(node)
        if part == "[key]":  # the error is in the entry's name, not its value
            continue
        if hasattr(node, "__pydantic_fields__"):
            owner = node
            field = node.__pydantic_fields__.get(part)
            node = field.annotation if field is not None else None
        elif typing.get_origin(node) in (Mapping, dict):
            node = typing.get_args(node)[1]
        elif _is_union(node) and part in set(Driver):
            node = next(m for m in typing.get_args(node) if _bare(m).driver == part)
            continue
        else:
            node = None
        keys.append(str(part))
    return keys, owner, _bare(node)


def _is_union(node: Any) -> bool:
    return typing.get_origin(node) in (typing.Union, types.UnionType)


def _bare(node: Any) -> Any:
    """A declared type without its Annotated metadata, and without `| None`."""
    while True:
        if typing.get_origin(node) is typing.Annotated:
            node = typing.get_args(node)[0]
        elif _is_union(node) and type(None) in typing.get_args(node):
            rest = [arg for arg in typing.get_args(node) if arg is not type(None)]
            node = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        else:
            return node
