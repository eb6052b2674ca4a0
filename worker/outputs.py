"""What the child leaves in scratch, read as untrusted: control files (progress, outcome) and
the artifacts, checked to be plain files (no links: the child owned scratch and could have
planted them), complete and consistent before anything is published; and what the worker
draws from the checked report (report.png)."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

from jobs.stores.artifacts import ARTIFACT_FILES, DRAWN_FILES
from synflow.io.formats import model_file
from worker.sandbox import read_scratch_file

MAX_SAFETENSORS_HEADER = 100 << 20
MAX_CONTROL_FILE = 1 << 20  # progress.json, outcome.json
MAX_REPORT = 64 << 20


class InvalidOutput(Exception):
    pass


def read_json(scratch: Path, name: str, max_bytes: int = MAX_CONTROL_FILE) -> dict[str, Any] | None:
    """A small JSON file the child wrote in scratch: never through a link, never more than
    `max_bytes`; None when missing or not a JSON object."""
    try:
        data = read_scratch_file(scratch, name, max_bytes=max_bytes)
    except (OSError, ValueError):
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def safetensors_header(data: bytes, name: str) -> dict[str, Any]:
    """The JSON header of a safetensors file's bytes (no tensor is loaded)."""
    if len(data) < 8:
        raise InvalidOutput(f"{name} is truncated")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_SAFETENSORS_HEADER or 8 + size > len(data):
        raise InvalidOutput(f"{name} has an implausible header size")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise InvalidOutput(f"{name} has no valid header")
    header.pop("__metadata__", None)
    return header


def check_artifacts(scratch: Path, fmt: str) -> tuple[list[str], dict[str, Any]]:
    """The artifact files, after checking they are plain files (no links: the child owned
    scratch and could have planted them), complete, and agree with each other."""
    out = scratch / "out"
    info = os.lstat(out) if os.path.lexists(out) else None
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise InvalidOutput("the pruning process did not write its output folder")
    files = [*ARTIFACT_FILES.values(), model_file(fmt)]
    for name in files:
        try:
            info = os.lstat(out / name)
        except FileNotFoundError:
            raise InvalidOutput(f"the pruning process did not write {name}") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0 or info.st_nlink != 1:
            raise InvalidOutput(f"{name} is not a plain, non-empty file")
    report = read_json(scratch, f"out/{ARTIFACT_FILES['report']}", MAX_REPORT)
    if report is None or not isinstance(report.get("layers"), list):
        raise InvalidOutput("report.json is not a valid report")
    masks = safetensors_header(_head(out / ARTIFACT_FILES["masks"]), ARTIFACT_FILES["masks"])
    layers = {row["name"]: row for row in report["layers"]}
    if set(masks) != set(layers):
        raise InvalidOutput("masks.safetensors and report.json name different tensors")
    for name, info in masks.items():
        if info.get("dtype") != "BOOL" or info.get("shape") != layers[name]["shape"]:
            raise InvalidOutput(f"mask {name} has the wrong dtype or shape")
    safetensors_header(_head(out / ARTIFACT_FILES["weights"]), ARTIFACT_FILES["weights"])
    return files, report


def draw_artifacts(report: dict[str, Any]) -> dict[str, bytes]:
    """The files drawn from the checked report, here outside the sandbox (it reads only the
    report's JSON); a report that cannot be drawn is invalid output (ReportError)."""
    from synflow.plot import report_png

    return {DRAWN_FILES["report.png"]: report_png(report)}


def _head(path: Path) -> bytes:
    """The safetensors header bytes of an output file (already checked to be a plain file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            return raw
        (size,) = struct.unpack("<Q", raw)
        return raw + fh.read(min(size, MAX_SAFETENSORS_HEADER + 1))


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The job's `result`: totals, FLOPs and the per-layer table of the report."""
    totals = report["totals"]
    return {
        "sparsity": totals["sparsity"],
        "density": totals["density"],
        "prunable": totals["prunable"],
        "kept": totals["kept"],
        "parameters": totals["parameters"],
        "parameters_kept": totals["parameters_kept"],
        "flops": report.get("flops"),
        "layers": [
            {k: row.get(k) for k in ("name", "layer_type", "shape", "total", "kept", "density")}
            for row in report["layers"]
        ],
        "warnings": report.get("warnings", []),
        "device": report.get("device"),
        "precision": report.get("precision"),
        "seconds": report.get("timing", {}).get("wall_seconds"),
    }
