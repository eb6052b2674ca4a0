"""ONNX bundles: one zip holding an `.onnx` and the external data files it names.

This is how a model with external data travels as one upload (`zip -j -0 bundle.zip m.onnx
m.onnx.data`). The sniffer (`synflow.io.sniff.is_onnx_bundle`) only reads the zip's central
directory; this loader, which in the service runs in the sandboxed child, does the rest:

- `synflow.io.archive.inspect_zip` with the archive limits (members, real inflated sizes,
  ratios, no absolute or `..` names);
- a flat layout: every member a regular file at the top level (no folders, no links);
- extraction, streamed with the same caps, into a private temporary folder under `workdir`,
  from which `synflow.io.onnx.load_onnx` reads the data files by the rules of
  `synflow.io.onnx_external`; the folder is removed before the loader returns.

The pruned model goes back as `model.zip` holding `model.onnx` (and `model.onnx.data` when the
input had external data), members stored uncompressed: pruned weights compress so well that a
deflated bundle could trip the zip-bomb ratio check when it is uploaded again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from synflow.errors import InvalidModelError
from synflow.io.archive import inspect_zip
from synflow.io.atomic import write_atomically
from synflow.io.formats import ONNX, ONNX_BUNDLE, model_file
from synflow.io.limits import ArchiveLimits, InputLimits, MiB
from synflow.io.sniff import bundle_models
from synflow.model import LoadedModel

_CHUNK = 1 * MiB
_NAME_IN_MESSAGE = 60


def _quote(name: str) -> str:
    return repr(name[:_NAME_IN_MESSAGE] + ("..." if len(name) > _NAME_IN_MESSAGE else ""))


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if info.is_dir() or "/" in name or name in ("", ".", ".."):
        raise InvalidModelError(
            f"bundle member {_quote(name)} is a folder or inside one; put the .onnx and its "
            "data files at the top level (zip -j -0 bundle.zip model.onnx model.onnx.data)"
        )
    if "\0" in name:
        raise InvalidModelError(f"bundle member {_quote(name)} has a NUL in its name")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise InvalidModelError(
            f"bundle member {_quote(name)} is a symbolic link; links are never followed, "
            "zip the files themselves"
        )
    if kind not in (0, stat.S_IFREG):
        raise InvalidModelError(f"bundle member {_quote(name)} is not a regular file")


def _extract(archive: zipfile.ZipFile, folder: Path, limits: ArchiveLimits) -> None:
    """Every member into `folder`, each written to a new file, never beyond the limits."""
    total = 0
    seen: set[str] = set()
    for info in archive.infolist():
        _check_member(info)
        if info.filename in seen:
            raise InvalidModelError(f"the bundle holds {_quote(info.filename)} twice")
        seen.add(info.filename)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(folder / info.filename, flags, 0o600)
        size = 0
        with os.fdopen(fd, "wb") as out, archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                size += len(chunk)
                total += len(chunk)
                if size > limits.max_member_bytes or total > limits.max_total_bytes:
                    raise InvalidModelError(
                        f"bundle member {_quote(info.filename)} inflates beyond the archive "
                        "limits; refusing it"
                    )
                out.write(chunk)


def load_onnx_bundle(
    path: str | Path, limits: InputLimits | None = None, workdir: Path | None = None
) -> LoadedModel:
    """The registry's loader: check the zip, unpack it privately, load its `.onnx`."""
    from synflow.io.onnx import load_onnx

    path = Path(path)
    limits = limits or InputLimits()
    names = inspect_zip(path, limits.archive)
    models = bundle_models(names)
    if len(models) != 1:
        raise InvalidModelError(
            f"an ONNX bundle holds exactly one .onnx at its top level; this one has {len(models)}"
        )
    folder = Path(tempfile.mkdtemp(prefix=".bundle-", dir=workdir))
    try:
        try:
            with zipfile.ZipFile(path) as archive:
                _extract(archive, folder, limits.archive)
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError, zlib.error) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc  # no paths
            raise InvalidModelError(f"the bundle cannot be unpacked: {why}") from exc
        model = load_onnx(folder / models[0], limits.onnx, data_dir=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dataclasses.replace(model, format=ONNX_BUNDLE, source=path)


def write_onnx_bundle(model: LoadedModel, out_dir: Path) -> list[str]:
    """The registry's writer: `model.zip` with the pruned `.onnx` in the layout it came in."""
    from synflow.io.onnx import write_layout

    out_dir = Path(out_dir)
    name = model_file(ONNX_BUNDLE)
    folder = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir))
    try:
        members = write_layout(model.origin, folder, model_file(ONNX))

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for member in members:
                    archive.write(folder / member, member)

        write_atomically(out_dir / name, write)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [name]
