"""File in, artifacts out: the unit of work shared by the CLI, the library and the worker.

`prune_file` loads a model, prunes it, and writes four artifacts into a directory, each under a
temporary name renamed into place once complete, so a reader never sees half a file:

- `masks.safetensors`   one bool tensor per pruned parameter, True = kept
- `weights.safetensors` every tensor of the model's state, pruned entries zero
- the pruned model in its own format, named by the format registry (`synflow.io.formats`):
  `model.pt`, `model.onnx` (plus `model.onnx.data` when the input kept its tensors outside)...
- `report.json`         per-layer table, totals, FLOPs, warnings, settings, timings
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from synflow.calibration import load_calibration
from synflow.config import PruneConfig
from synflow.device import check_device
from synflow.engine import CancelCheck, ProgressCallback, PruneResult, apply_masks, prune
from synflow.feed import forward_failure, model_dtype, runs_on
from synflow.flops import count_positions
from synflow.granularity import CHANNEL
from synflow.io.atomic import first_missing, write_atomically
from synflow.io.calibration import check_method_data, inspect_calibration
from synflow.io.limits import InputLimits
from synflow.io.loader import load_model
from synflow.model import LoadedModel
from synflow.report import build_report
from synflow.scorers.registry import scorer_spec

MASKS = "masks.safetensors"
WEIGHTS = "weights.safetensors"
REPORT = "report.json"


#: the masks file's metadata entry mapping each key to the graph node that uses it (ONNX)
NODES_METADATA = "synflow.nodes"


def masks_metadata(result: PruneResult) -> dict[str, str] | None:
    """`{NODES_METADATA: JSON {key: {"node": name, "op_type": type}}}` where the keys are graph
    initializers (ONNX), else None; safetensors metadata values are strings."""
    nodes = {t.key: {"node": t.node, "op_type": t.op_type} for t in result.tensors if t.node}
    return {NODES_METADATA: json.dumps(nodes, sort_keys=True)} if nodes else None


def published_state(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The model's tensors under their published keys, as independent contiguous CPU copies.

    A model that publishes under its module's own names (`keys` empty: TorchScript) gives its
    whole `state_dict()`, buffers included; one that renames (ONNX: initializer names) gives
    its parameters under their keys (its buffers are converter internals)."""
    if not model.keys:
        state = model.module.state_dict()
    else:
        state = {model.key_of(n): p for n, p in model.module.named_parameters()}
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def prune_file(
    model_path: str | Path,
    config: PruneConfig,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    precision: str = "auto",
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    limits: InputLimits | None = None,
    calibration: str | Path | None = None,
) -> dict[str, Any]:
    """Prune the model at `model_path` and write the artifacts to `out_dir`; returns the report.

    `calibration`: a safetensors file of `inputs` and `labels` for the data-driven methods.
    A failed run leaves no folder behind that it created (a folder that existed is kept)."""
    out = Path(out_dir)
    created = first_missing(out)
    try:
        return _prune_into(
            model_path, config, out, device, precision, progress, should_cancel, limits,
            calibration,
        )  # fmt: skip
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _prune_into(
    model_path: str | Path,
    config: PruneConfig,
    out: Path,
    device: str,
    precision: str,
    progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    limits: InputLimits | None,
    calibration_path: str | Path | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    check_device(device)  # before the load: a missing GPU is known without reading the model
    calibration_limits = (limits or InputLimits()).calibration
    info = (
        None
        if calibration_path is None
        else inspect_calibration(calibration_path, calibration_limits)
    )
    check_method_data(scorer_spec(config.method), info)  # before loading anything
    calibration = None
    if calibration_path is not None:
        calibration = load_calibration(calibration_path, calibration_limits)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_path, limits, workdir=out)
    if config.grain.name == CHANNEL:
        from synflow.structured.run import prune_channels_into

        return prune_channels_into(
            model, config, out, device=device, precision=precision, progress=progress,
            should_cancel=should_cancel, started=started,
        )  # fmt: skip
    result = prune(
        model,
        config,
        device=device,
        precision=precision,
        progress=progress,
        should_cancel=should_cancel,
        calibration=calibration,
    )
    apply_masks(model, result)

    positions = None
    if result.inputs is not None:
        named = dict(model.module.named_parameters())
        weights = {t.key: named[t.param_name] for t in result.tensors if t.role == "weight"}
        try:
            positions = count_positions(model.module, weights, result.inputs)
        except (RuntimeError, torch.jit.Error) as exc:  # e.g. magnitude never ran forward
            dtype = model_dtype(model.module)
            raise forward_failure(
                exc, result.inputs, lambda batched: runs_on(model.module, batched, dtype)
            ) from exc

    masks = {k: v.contiguous() for k, v in result.masks.items()}
    metadata = masks_metadata(result)
    write_atomically(out / MASKS, lambda p: save_file(masks, str(p), metadata=metadata))
    write_atomically(out / WEIGHTS, lambda p: save_file(published_state(model), str(p)))
    model_files = model.save(out)

    names = {"masks": MASKS, "weights": WEIGHTS, "model": model_files[0]}
    if len(model_files) > 1:
        names["model_data"] = model_files[1:]
    names["report"] = REPORT
    report = build_report(model, result, positions, time.perf_counter() - started, names)
    text = json.dumps(report, indent=2)
    write_atomically(out / REPORT, lambda p: p.write_text(text))
    return report
