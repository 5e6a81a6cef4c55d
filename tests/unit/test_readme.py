"""The README stays true about what a node accepts: every configuration limit is documented there
with its real default, and every config section and key it shows exists."""

import dataclasses
import re
from pathlib import Path

from node.config import _CONFIG_SCHEMA, Limits

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_limit_is_documented_with_its_default():
    for field in dataclasses.fields(Limits):
        row = re.search(rf"^\| `{field.name}` \| ([0-9,]+) \|", README, re.MULTILINE)
        assert row is not None, f"README lacks a row for limit {field.name}"
        assert int(row.group(1).replace(",", "")) == field.default, f"README shows a wrong default for {field.name}"


def test_the_example_config_uses_only_real_sections_and_keys():
    example = README.split("## Node configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    section = None
    for line in example.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]")
            assert section in _CONFIG_SCHEMA, section
        elif "=" in line:
            assert line.split("=", 1)[0].strip() in _CONFIG_SCHEMA[section], line
