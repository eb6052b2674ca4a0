"""Recognise a model file by its content, cheaply: the first bytes and, for a zip, the names in
its central directory. Nothing here inflates, unpickles or parses the model, so the API can run
it on an upload; the loaders check the rest inside the sandboxed child.

Each sniffer answers one question, "is this format X?", for the format registry
(`synflow.io.formats`). `refusal` says what a file that no sniffer claims is, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from synflow.errors import InvalidModelError
from synflow.io.limits import ArchiveLimits
from synflow.io.pt2_archive import pt2_root
from synflow.io.zipcheck import member_names

ZIP_MAGIC = b"PK\x03\x04"
#: ModelProto field tags that an exporter writes first: ir_version (1, varint) or
#: opset_import (8), producer_name (2), producer_version (3), domain (4), graph (7).
ONNX_FIRST_TAGS = frozenset({0x08, 0x12, 0x1A, 0x22, 0x3A, 0x42})
PICKLE_PROTOCOL_OP = 0x80
HEAD_BYTES = 8


@dataclass(frozen=True)
class Sample:
    """What the sniffers see of a file: its first bytes, and a zip's member names."""

    head: bytes
    zip_names: tuple[str, ...] | None = None  # None: not a zip

    @classmethod
    def read(cls, path: str | Path, limits: ArchiveLimits | None = None) -> Sample:
        with Path(path).open("rb") as fh:
            head = fh.read(HEAD_BYTES)
        if not head:
            raise InvalidModelError("the model file is empty")
        if not head.startswith(ZIP_MAGIC):
            return cls(head)
        # the directory's names after zipcheck's bounded checks; nothing is inflated (the loaders
        # run `synflow.io.archive.inspect_zip` before they open a member)
        return cls(head, tuple(member_names(path, limits or ArchiveLimits())))


# --- one sniffer per format (registry entries name them) --------------------------------------


def is_torchscript(sample: Sample) -> bool:
    """torch.jit.save writes `<root>/code/...` and `<root>/constants.pkl`."""
    names = sample.zip_names or ()
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


def is_pt2(sample: Sample) -> bool:
    """torch.export.save writes `<root>/archive_format` and `<root>/models/<name>.json`."""
    return sample.zip_names is not None and pt2_root(list(sample.zip_names)) is not None


def is_onnx(sample: Sample) -> bool:
    """A protobuf ModelProto: its first byte is the tag of a field exporters write first."""
    return sample.zip_names is None and sample.head[0] in ONNX_FIRST_TAGS


def bundle_models(names: tuple[str, ...] | list[str]) -> list[str]:
    """The top-level `.onnx` members of a bundle's member list."""
    return [n for n in names if n.lower().endswith(".onnx") and len(PurePosixPath(n).parts) == 1]


def is_onnx_bundle(sample: Sample) -> bool:
    """A zip of one `.onnx` at the top level and its data files (not a TorchScript archive)."""
    if sample.zip_names is None or is_torchscript(sample) or is_pt2(sample):
        return False
    return len(bundle_models(sample.zip_names)) == 1


# --- what a file no format claims is -----------------------------------------------------------


def refusal(sample: Sample) -> str:
    """The message for a file that no registered format recognises."""
    if sample.zip_names is not None:
        return _zip_refusal(sample.zip_names)
    if sample.head[0] == PICKLE_PROTOCOL_OP:
        return (
            "this is a Python pickle (e.g. a legacy torch.save file), which is never loaded "
            "because unpickling runs arbitrary code; export TorchScript (torch.jit.save) or ONNX"
        )
    return (
        "unrecognised model file: expected a TorchScript archive (torch.jit.save), a "
        "torch.export program (torch.export.save, .pt2), an ONNX model (.onnx), or a zip of an "
        ".onnx and its external data files"
    )


def _zip_refusal(names: tuple[str, ...]) -> str:
    if any(n.endswith("/data.pkl") for n in names):
        return (
            "this is a torch.save() pickle, not a TorchScript archive; pickles can run arbitrary "
            "code and are never loaded. Export the model with torch.jit.script(model) or "
            "torch.jit.trace(model, example) and save it with torch.jit.save(), or export ONNX"
        )
    if any(n.endswith("archive_format") or "/models/" in n for n in names):
        return (
            "the zip looks like a torch.export (.pt2) archive but lacks its archive_format or "
            "models/*.json under one root folder; save the program with torch.export.save()"
        )
    models = bundle_models(names)
    if len(models) > 1:
        return (
            f"the zip holds {len(models)} .onnx files at its top level; an ONNX bundle holds "
            "exactly one model and its data files"
        )
    return (
        "the zip archive is not a TorchScript model (no code/ or constants.pkl inside) nor an "
        "ONNX bundle (one .onnx and its data files at the top level: "
        "zip -j bundle.zip model.onnx model.onnx.data); save TorchScript with torch.jit.save()"
    )
