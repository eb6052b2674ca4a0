"""Checks of a succeeded job's artifacts against the model that was uploaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import torch
from safetensors.torch import load_file

from tests.service.harness import INPUT_SHAPE

ARTIFACT_NAMES = {
    "masks": "masks.safetensors",
    "weights": "weights.safetensors",
    "model": "model.pt",
    "report": "report.json",
    "report.png": "report.png",
}


def download_all(client: httpx.Client, job: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, link in job["links"]["artifacts"].items():
        response = client.get(link)
        assert response.status_code == 200, response.text
        assert job["id"] in response.headers["content-disposition"]
        paths[name] = out / ARTIFACT_NAMES[name]
        paths[name].write_bytes(response.content)
    assert set(paths) == set(ARTIFACT_NAMES)
    return paths


def check_artifacts(paths: dict[str, Path], original: torch.nn.Module, job: dict) -> None:
    sparsity = job["config"]["sparsity"]
    state = original.state_dict()
    masks = load_file(paths["masks"])
    weights = load_file(paths["weights"])
    report = json.loads(paths["report"].read_text())

    # masks: one bool tensor per conv/linear weight, exact count of pruned weights
    prunable = [k for k in state if k.endswith(".weight")]
    assert sorted(masks) == sorted(prunable)
    for key, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == state[key].shape, key
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert total - kept == math.floor((1 - (1.0 - sparsity)) * total)

    # weights = original x mask (pruned entries zero, everything else untouched)
    assert sorted(weights) == sorted(state)
    for key, value in state.items():
        expected = value * masks[key] if key in masks else value
        assert torch.equal(weights[key], expected), key

    # the pruned model loads, runs, and carries the pruned weights
    pruned = torch.jit.load(str(paths["model"]))
    out = pruned(torch.ones(INPUT_SHAPE))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, weights[key]), key

    # the report and the job's result agree with the masks
    assert report["totals"]["prunable"] == total and report["totals"]["kept"] == kept
    layers = {row["name"]: row for row in report["layers"]}
    assert set(layers) == set(masks)
    for key, mask in masks.items():
        assert layers[key]["kept"] == int(mask.sum()) and layers[key]["total"] == mask.numel()
    assert report["config"]["sparsity"] == sparsity
    assert report["input_shape"] == list(INPUT_SHAPE)
    check_report_png(paths["report.png"], len(report["layers"]))
    result = job["result"]
    assert result["kept"] == kept and result["prunable"] == total
    assert result["sparsity"] == report["totals"]["sparsity"]
    assert [row["name"] for row in result["layers"]] == [row["name"] for row in report["layers"]]


def check_report_png(path: Path, layers: int) -> None:
    """A PNG that decodes, as wide as synflow/plot.py draws it and taller with more layers."""
    from PIL import Image

    from synflow.plot import DPI, HEADER_INCHES, INCHES_PER_LAYER, WIDTH_INCHES

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert image.format == "PNG"
        assert width == int(WIDTH_INCHES * DPI)
        assert height >= (HEADER_INCHES + INCHES_PER_LAYER * layers) * DPI
