"""report.png (synflow/plot.py): drawn by `synflow prune` for a 60-layer model, collapsed layers
marked in red, and reports it cannot draw refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synflow.cli import main
from synflow.plot import COLLAPSED_COLOUR, MAX_LAYERS, ReportError, draw, report_png
from tests.e2e.checks import check_report_png
from tests.synflow import nets

LAYERS = 60


def _red_pixels(path: Path) -> int:
    """Pixels of exactly the collapsed-layer colour (labels and crosses are drawn in it)."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    target = np.array([int(COLLAPSED_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    return int((rgb == target).all(axis=-1).sum())


def _prune(tmp_path: Path, widths, *flags: str) -> tuple[Path, dict]:
    model = nets.seeded(nets.mlp, bias=False, widths=widths)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    out = tmp_path / "out"
    shape = f"1,{widths[0]}"
    assert main(["prune", str(path), "--input-shape", shape, "--out", str(out), *flags]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_cli_draws_a_60_layer_model(tmp_path):
    out, report = _prune(tmp_path, (16,) * LAYERS + (4,), "--sparsity", "0.9", "--iterations", "8")
    assert len(report["layers"]) == LAYERS and not report["collapsed_layers"]
    check_report_png(out / "report.png", LAYERS)
    assert _red_pixels(out / "report.png") == 0  # nothing collapsed, nothing red


def test_collapsed_layers_are_marked(tmp_path):
    # magnitude at compression 100 empties the narrow layers of this MLP (test_cli's case)
    widths = (8, 64, 8, 64, 8, 64, 8, 4)
    out, report = _prune(tmp_path, widths, "--compression", "100", "--method", "magnitude")
    assert report["collapsed_layers"]
    check_report_png(out / "report.png", len(widths) - 1)
    assert _red_pixels(out / "report.png") > 50


def _report(**changes) -> dict:
    report = {
        "format": "torchscript",
        "precision": "float32",
        "config": {"method": "synflow"},
        "totals": {"sparsity": 0.5, "kept": 5, "prunable": 10},
        "flops": {"ratio": 0.5},
        "layers": [{"name": "a.weight", "total": 10, "kept": 5}],
        "density_history": [0.7, 0.5],
    }
    report.update(changes)
    return report


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"layers": None}, "no layer table"),
        ({"layers": [{"name": "a", "total": 10, "kept": 11}]}, "keeps 11 of 10"),
        ({"layers": [{"name": "a", "total": float("nan"), "kept": 1}]}, "not a finite number"),
        ({"layers": [{"name": "a", "total": "10", "kept": 1}]}, "not a finite number"),
        ({"density_history": [0.5, "x"]}, "density_history[1]"),
        ({"totals": {}}, "totals.sparsity"),
    ],
)
def test_reports_that_cannot_be_drawn(changes, needle):
    with pytest.raises(ReportError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        report_png(_report(**changes))


def test_long_reports_are_capped():
    """A report with thousands of layers and rounds (from a job, so possibly hostile) is drawn
    with at most MAX_LAYERS bars and says so."""
    layers = [{"name": f"l{i}.weight", "total": 10, "kept": 1 + i % 9} for i in range(5000)]
    figure = draw(_report(layers=layers, density_history=[0.5] * 100_000))
    bars = figure.axes[1]
    assert len(bars.get_yticklabels()) == MAX_LAYERS
    assert f"first {MAX_LAYERS} of 5000" in bars.get_title()
    assert len(figure.axes[0].lines[0].get_xdata()) <= 2001
