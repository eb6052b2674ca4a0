"""The README documents every setting, its quick start keeps exactly two set-up commands, and
the quick start's curl session and Python client lines run against a real service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.settings import ENV_PREFIX, Settings
from tests.service.harness import REPO_ROOT, base_env, start_api

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


def _block(after: str, lang: str) -> str:
    """The first ```lang fenced block after the text `after` in the README."""
    start = README.index(f"```{lang}\n", README.index(after)) + len(lang) + 4
    return README[start : README.index("```", start)]


QUICK_START = "With the service running, in a second terminal"
README_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def readme_service(tmp_path_factory):
    """The embedded service, as `bash scripts/serve.sh` runs it (on a free port)."""
    tmp = tmp_path_factory.mktemp("readme")
    api, url = start_api(base_env(tmp / "data"), tmp)
    try:
        yield url
    finally:
        api.stop()


@pytest.mark.slow
def test_the_quick_start_block_runs_as_pasted(readme_service, tmp_path):
    """Every command of the block, in a fresh folder with the checkout's `.venv`: the upload,
    the poll, and the download into a folder that exists; only the port differs."""
    script = _block(QUICK_START, "sh")
    assert script.count(README_URL) == 4 and "mkdir -p pruned" in script
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(README_URL, readme_service)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout.splitlines()
    names = sorted(p.name.split("-")[-1] for p in (tmp_path / "pruned").iterdir())
    assert names == ["masks.safetensors", "model.pt", "report.json", "weights.safetensors"]


@pytest.mark.slow
def test_the_python_client_in_five_lines_runs(readme_service, tmp_path):
    code = _block(QUICK_START, "python")
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    from synflow.examples import write_example

    write_example("resnet18", tmp_path / "model.pt")
    proc = subprocess.run(
        [sys.executable, "-c", code.replace(README_URL, readme_service)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("succeeded {'masks': ")
    assert len(list((tmp_path / "pruned").iterdir())) == 5  # report.png too
