"""Load any supported model file into a `LoadedModel`, by content-detected format."""

from __future__ import annotations

from pathlib import Path

from synflow.errors import InvalidModelError
from synflow.io.formats import ONNX, TORCHSCRIPT, detect_format
from synflow.model import LoadedModel


def load_model(path: str | Path) -> LoadedModel:
    fmt = detect_format(path)
    if fmt == TORCHSCRIPT:
        from synflow.io.torchscript import load_torchscript

        return load_torchscript(path)
    if fmt == ONNX:
        try:
            from synflow.io.onnx import load_onnx
        except ImportError as exc:  # pragma: no cover - ONNX support lands separately
            raise InvalidModelError("ONNX models are not supported by this build") from exc
        return load_onnx(path)
    raise InvalidModelError(f"unsupported model format {fmt!r}")
