"""Load any supported model file into a `LoadedModel`, by content-detected format."""

from __future__ import annotations

from pathlib import Path

from synflow.io.formats import detect_format, format_spec
from synflow.io.limits import InputLimits
from synflow.model import LoadedModel


def load_model(
    path: str | Path, limits: InputLimits | None = None, workdir: str | Path | None = None
) -> LoadedModel:
    """Check the file (format by content, size and structure limits) and load it.

    Never unpickles: pickles are refused by `detect_format` before any loader runs. A format
    that unpacks (an ONNX bundle) does so in a temporary folder under `workdir` (default: the
    system's temporary folder), removed before this returns.
    """
    limits = limits or InputLimits()
    path = Path(path)
    fmt = detect_format(path, limits.archive)
    return format_spec(fmt).load(path, limits, Path(workdir) if workdir is not None else None)
