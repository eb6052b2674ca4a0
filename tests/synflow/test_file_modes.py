"""Every artifact file gets one mode, FILE_MODE (0600), whatever the umask and whichever library
wrote its bytes: safetensors, torch, onnx, the JSON report, the PNG, ONNX external data."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

from synflow.cli import main
from synflow.io.atomic import FILE_MODE
from tests.synflow.onnx_nets import build


@pytest.fixture
def umask():
    def set_umask(value: int) -> None:
        os.umask(value)

    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_the_mode_is_owner_only():
    assert FILE_MODE == 0o600


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_onnx_with_external_data(tmp_path, umask, mask):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build("convnet"), (torch.ones(1, 3, 8, 8),), str(path), dynamo=True,
                          external_data=True)  # fmt: skip
    assert (tmp_path / "m.onnx.data").exists()
    umask(mask)
    out = tmp_path / "out"
    assert (
        main(["prune", str(path), "--sparsity", "0.5", "--iterations", "2", "--out", str(out)]) == 0
    )
    assert modes(out) == dict.fromkeys(
        ["masks.safetensors", "weights.safetensors", "model.onnx", "model.onnx.data",
         "report.json", "report.png"], FILE_MODE,
    )  # fmt: skip
