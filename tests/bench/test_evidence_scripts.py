"""The quick modes of the evidence benchmarks (bench/quality.py, collapse.py, shuffle.py), run as
a user runs them, with a tiny budget. Only what is robust is asserted: they complete, their
outputs are well formed, and SynFlow keeps every layer alive (and a path) where the network
allows it (the quick collapse grid stops at a tenth of the theoretical maximum)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def run(script: str, out: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick", "--out", str(out), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_quality_quick(tmp_path):
    methods = ["synflow", "erk", "grasp"]
    stdout = run(
        "quality.py", tmp_path, "--epochs", "1", "--iterations", "5", "--methods", *methods
    )
    results = json.loads((tmp_path / "quality.json").read_text())
    assert (tmp_path / "quality.png").read_bytes().startswith(PNG)
    assert len(results["compressions"]) == 2
    assert results["compressions"][0] == 10**0.5 and abs(results["compressions"][1] - 1e3) < 1e-9
    assert set(results["archs"]) == {"mlp", "convnet"}
    for data in results["archs"].values():
        assert all(0.0 <= a <= 1.0 for a in data["dense"])
        assert list(data["accuracy"]) == methods
        for rows in data["accuracy"].values():
            assert len(rows) == 2 and all(len(accs) == 1 for accs in rows)
            assert all(a is None or 0.0 <= a <= 1.0 for accs in rows for a in accs)
    for method in methods:
        assert f"| {method} |" in stdout


@pytest.mark.slow
def test_collapse_quick_synflow_keeps_every_layer(tmp_path):
    nets = ["vgg (paper init)", "deep-mlp (paper init)"]
    stdout = run("collapse.py", tmp_path, "--nets", *nets, "--methods", "synflow", "magnitude")
    results = json.loads((tmp_path / "collapse.json").read_text())
    assert (tmp_path / "collapse.png").read_bytes().startswith(PNG)
    for net in nets:
        data = results["nets"][net]
        assert data["max"] == data["prunable"] / data["layers"]
        assert max(data["grid"]) < data["max"]
        synflow = data["methods"]["synflow"]
        assert all(row["alive"] and row["path"] for row in synflow["rows"]), synflow["rows"]
        assert synflow["alive"] == synflow["path"] == data["grid"][-1]
        for method in data["methods"].values():
            assert len(method["rows"]) == len(data["grid"])
            for row in method["rows"]:
                assert row["alive"] or not row["path"]  # an empty layer cuts every path
    assert "| vgg (paper init) |" in stdout


@pytest.mark.slow
def test_shuffle_quick(tmp_path):
    stdout = run("shuffle.py", tmp_path, "--archs", "mlp", "--epochs", "1", "--iterations", "5")
    results = json.loads((tmp_path / "shuffle.json").read_text())
    (row,) = results["archs"]["mlp"]
    assert row["compression"] == 10.0
    assert all(0.0 <= a <= 1.0 for a in row["synflow"] + row["shuffled"])
    assert "| mlp | 10 |" in stdout
