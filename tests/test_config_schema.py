"""The config's JSON Schema: the README's reference is generated from it, and the shipped
configs that it accepts, the loader accepts too."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jsonschema
import pytest

from coolctl.config import json_schema, parse_config
from coolctl.config.reference import END, README, START, render, with_reference
from coolctl.tools.demo import builtin_config_path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [REPO / "deploy" / "config" / "example.toml", builtin_config_path()]


def test_readme_reference_is_generated_from_the_schema() -> None:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text
    assert with_reference(text, render()) == text, (
        "README.md's config reference is stale: run python -m coolctl.config.reference"
    )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_configs_meet_the_schema_and_load(path: Path) -> None:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(doc, json_schema())
    parse_config(doc, path)


def test_schema_refuses_what_the_loader_refuses() -> None:
    doc = tomllib.loads(SHIPPED[0].read_text(encoding="utf-8"))
    doc["racks"]["r01"]["devices"]["cdu1"]["port"] = "1502"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json_schema())
