"""Detect a model file's format from its content, never from its name.

TorchScript archives are zip files with a `code/` tree and `constants.pkl`; torch.export programs
(`.pt2`) are zip files with `archive_format` and `models/*.json` under one root folder; a plain
`torch.save(model)` pickle is also a zip (or a legacy pickle) but has neither, and is refused
without ever being unpickled. ONNX files are protobuf `ModelProto` messages, recognised by their
leading field tags.
"""

from __future__ import annotations

from pathlib import Path

from synflow.errors import InvalidModelError
from synflow.io.archive import inspect_zip
from synflow.io.limits import ArchiveLimits
from synflow.io.pt2_archive import pt2_root

TORCHSCRIPT = "torchscript"
ONNX = "onnx"
PT2 = "pt2"

_ZIP_MAGIC = b"PK\x03\x04"
# ModelProto field tags that an exporter writes first: ir_version (1, varint) or
# opset_import (8), producer_name (2), producer_version (3), domain (4), graph (7).
_ONNX_FIRST_TAGS = {0x08, 0x12, 0x1A, 0x22, 0x3A, 0x42}
_PICKLE_PROTOCOL_OP = 0x80


def _zip_kind(path: Path, limits: ArchiveLimits | None) -> str:
    names = inspect_zip(path, limits)
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return TORCHSCRIPT
    if any(n.endswith("/data.pkl") for n in names):
        raise InvalidModelError(
            "this is a torch.save() pickle, not a TorchScript archive; pickles can run arbitrary "
            "code and are never loaded. Export the model with torch.jit.script(model) or "
            "torch.jit.trace(model, example) and save it with torch.jit.save(), or export ONNX"
        )
    if pt2_root(names) is not None:
        return PT2
    raise InvalidModelError(
        "the zip archive is neither a TorchScript model (no code/ or constants.pkl inside) nor a "
        "torch.export program (no archive_format or models/*.json); save the model with "
        "torch.jit.save() or torch.export.save()"
    )


def detect_format(path: str | Path, archive_limits: ArchiveLimits | None = None) -> str:
    """Return "torchscript", "pt2" or "onnx", or raise InvalidModelError saying what the file is.

    Zip archives are inspected against `archive_limits` (see `synflow.io.archive`) here, so no
    loader ever opens one that failed.
    """
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(8)
    if not head:
        raise InvalidModelError("the model file is empty")
    if head.startswith(_ZIP_MAGIC):
        return _zip_kind(path, archive_limits)
    if head[0] == _PICKLE_PROTOCOL_OP:
        raise InvalidModelError(
            "this is a Python pickle (e.g. a legacy torch.save file), which is never loaded "
            "because unpickling runs arbitrary code; export TorchScript (torch.jit.save) or ONNX"
        )
    if head[0] in _ONNX_FIRST_TAGS:
        return ONNX
    raise InvalidModelError(
        "unrecognised model file: expected a TorchScript archive (torch.jit.save), a torch.export "
        "program (torch.export.save, .pt2) or an ONNX model (.onnx)"
    )
