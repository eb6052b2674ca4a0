"""The README documents every setting, and its quick start keeps exactly two commands."""

from __future__ import annotations

import re
from pathlib import Path

from jobs.settings import ENV_PREFIX, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented():
    section = README[README.index("### Configuration") :]
    section = section[: section.index("\n### ", 1)]
    for name in Settings.model_fields:
        assert f"{ENV_PREFIX}{name.upper()}" in section, name


def test_quick_start_has_two_commands_serve_and_test():
    quick = README[README.index("## Quick start") : README.index("## Command line")]
    commands = re.findall(r"^    (bash .+)$", quick, flags=re.M)
    assert commands == ["bash scripts/serve.sh", "bash scripts/test.sh"]
