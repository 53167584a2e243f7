"""The README's config reference, generated from the config's JSON Schema.

`python -m coolctl.config.reference` rewrites the part of README.md between the markers;
with `--check` it only says whether the README is up to date (exit 1 if not).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from coolctl.config.schema import json_schema

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def render(schema: dict[str, Any] | None = None) -> str:
    """Every table and key of the config, as Markdown."""
    schema = schema or json_schema()
    defs: dict[str, Any] = schema["$defs"]
    lines = [
        "Generated from the config's JSON Schema (`coolctl config schema`);"
        " `python -m coolctl.config.reference` rewrites it.",
    ]
    for header, table in _tables(schema, defs, ""):
        lines += ["", f"#### `[{header}]`" if header else "#### top level", ""]
        if table.get("description"):
            lines += [" ".join(table["description"].split()), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        required = set(table.get("required", ()))
        for key, spec in table["properties"].items():
            if _table_ref(spec, defs) is not None:
                continue  # a sub-table: its own section
            default = "required" if key in required else _default(spec)
            description = " ".join(spec.get("description", "").split()).replace("|", "\\|")
            lines.append(f"| `{key}` | {_type(spec, defs)} | {default} | {description} |")
    return "\n".join(lines) + "\n"


def _tables(
    table: dict[str, Any], defs: dict[str, Any], header: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    yield header, table
    for key, spec in table["properties"].items():
        found = _table_ref(spec, defs)
        if found is None:
            continue
        keyed, members = found
        below = f"{header}.{key}" if header else key
        if keyed:
            below += ".<name>"
        for member in members:
            yield from _tables(defs[member], defs, below)


def _table_ref(spec: dict[str, Any], defs: dict[str, Any]) -> tuple[bool, list[str]] | None:
    """(keyed by name?, the definitions) of a key that holds a table, or None."""
    keyed = False
    options = [s for s in spec.get("anyOf", [spec]) if s.get("type") != "null"]
    if len(options) != 1:
        return None
    spec = options[0]
    entries = [*spec.get("patternProperties", {}).values()]
    if spec.get("type") == "object" and len(entries) == 1:
        keyed, spec = True, entries[0]
    refs = [s["$ref"] for s in spec.get("oneOf", [spec]) if "$ref" in s]
    names = [ref.rsplit("/", 1)[-1] for ref in refs]
    if not names or any("properties" not in defs[name] for name in names):
        return None
    return keyed, names


def _type(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    options = [s for s in spec.get("anyOf", [spec]) if s.get("type") != "null"]
    spec = options[0] if len(options) == 1 else spec
    if "$ref" in spec:
        spec = defs[spec["$ref"].rsplit("/", 1)[-1]]
    if "enum" in spec:
        return " \\| ".join(f'`"{value}"`' for value in spec["enum"])
    if "const" in spec:
        return f'`"{spec["const"]}"`'
    kind = {"number": "number", "integer": "integer", "boolean": "bool", "string": "string"}
    text = kind.get(spec.get("type", ""), "table")
    if spec.get("type") == "object":
        text = "table of `device/point` = number"
    if "minimum" in spec and "maximum" in spec:
        text += f" {spec['minimum']}..{spec['maximum']}"
    elif "exclusiveMinimum" in spec:
        text += f" > {spec['exclusiveMinimum']}"
    elif "minimum" in spec:
        text += f" ≥ {spec['minimum']}"
    if spec.get("format") == "path":
        text = "path"
    return text


def _default(spec: dict[str, Any]) -> str:
    if "default" not in spec or spec["default"] is None or spec["default"] == {}:
        return "—"
    return f"`{json.dumps(spec['default'], ensure_ascii=False)}`"


def with_reference(readme: str, reference: str) -> str:
    """The README text with its reference section replaced."""
    start, end = readme.index(START) + len(START), readme.index(END)
    return f"{readme[:start]}\n{reference}{readme[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    wanted = with_reference(text, render())
    if wanted == text:
        return 0
    if args.check:
        print(f"{args.readme}: the config reference is stale: run {parser.prog}", file=sys.stderr)
        return 1
    args.readme.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
