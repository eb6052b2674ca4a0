"""Load any supported model file into a `LoadedModel`, by content-detected format."""

from __future__ import annotations

from pathlib import Path

from synflow.errors import InvalidModelError
from synflow.io.formats import ONNX, PT2, TORCHSCRIPT, detect_format
from synflow.io.limits import InputLimits
from synflow.model import LoadedModel


def load_model(path: str | Path, limits: InputLimits | None = None) -> LoadedModel:
    """Check the file (format by content, size and structure limits) and load it.

    Never unpickles: pickles are refused by `detect_format` before any loader runs.
    """
    limits = limits or InputLimits()
    fmt = detect_format(path, limits.archive)
    if fmt == TORCHSCRIPT:
        from synflow.io.torchscript import read_torchscript

        return read_torchscript(path)
    if fmt == PT2:
        from synflow.io.pt2 import read_pt2

        return read_pt2(path, limits.archive)
    if fmt == ONNX:
        from synflow.io.onnx import load_onnx

        return load_onnx(path, limits.onnx)
    raise InvalidModelError(f"unsupported model format {fmt!r}")
