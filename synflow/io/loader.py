"""Load any supported model file into a `LoadedModel`, by content-detected format."""

from __future__ import annotations

from pathlib import Path

from synflow.errors import InvalidModelError
from synflow.io.archive import ArchiveLimits
from synflow.io.formats import ONNX, TORCHSCRIPT, detect_format
from synflow.model import LoadedModel


def load_model(path: str | Path, archive_limits: ArchiveLimits | None = None) -> LoadedModel:
    """Check the file (format by content, archive limits) and load it; never unpickles."""
    fmt = detect_format(path, archive_limits)
    if fmt == TORCHSCRIPT:
        from synflow.io.torchscript import read_torchscript

        return read_torchscript(path)
    if fmt == ONNX:
        try:
            from synflow.io.onnx import load_onnx
        except ImportError as exc:  # pragma: no cover - ONNX support lands separately
            raise InvalidModelError("ONNX models are not supported by this build") from exc
        return load_onnx(path)
    raise InvalidModelError(f"unsupported model format {fmt!r}")
