"""`granularity=channel` from a loaded model to artifacts: prune channels, write, measure, report.

The artifacts have the names and meanings of unstructured pruning, so every consumer (CLI,
worker, downloads) handles them alike:

- `masks.safetensors`: one bool tensor per convolution / linear weight, keyed and shaped as in the
  upload, True where the weight survives in the smaller model (its output and input channels
  both kept);
- `weights.safetensors`: the smaller model's own tensors, by module name;
- the smaller model in the upload's format (`FormatSpec.write_channels`);
- `report.json`: the usual report plus `structured`: params and MACs before and after, measured
  latency before and after, kept channels per layer, layers at the one-channel floor.

A run that removes nothing (no candidate group, or no MAC saved) fails instead of returning the
model unpruned.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from safetensors.torch import save_file

from synflow import discovery
from synflow.config import PruneConfig
from synflow.device import check_device
from synflow.engine import CancelCheck, Progress, ProgressCallback, PruneResult
from synflow.errors import InvalidInputShapeError, InvalidModelError
from synflow.feed import model_dtype, ones_inputs, resolve_inputs
from synflow.flops import count_positions
from synflow.io.atomic import write_atomically
from synflow.io.formats import format_spec
from synflow.masks import Masks
from synflow.model import LoadedModel, PrunableTensor, layer_type
from synflow.report import build_report
from synflow.structured import latency
from synflow.structured.channels import WEIGHT_TYPES, ChannelPruning, prune_channels
from synflow.structured.scoring import RegistryScores

TARGET_NOTE = (
    "exact: the kept channels of every coupled group, C0 - floor((1 - density) * C0) with at "
    "least 1 (local scope), or of all groups together (global scope); measured, not targeted: "
    "parameters, MACs and latency"
)
MAC_NOTE = "MACs and parameters of the whole model, counted by torch_pruning.utils"


def _weight_tensors(model: LoadedModel) -> list[PrunableTensor]:
    return [
        PrunableTensor(model.key_of(f"{n}.weight"), f"{n}.weight", n, layer_type(m), "weight")
        for n, m in model.module.named_modules()
        if isinstance(m, WEIGHT_TYPES)
    ]


def channel_masks(
    tensors: list[PrunableTensor], shapes: dict[str, torch.Size], run: ChannelPruning, groups
) -> Masks:
    """Per original weight: True where its output channel and its input channel both remain."""
    masks = Masks()
    for t in tensors:
        shape = shapes[t.key]
        keep = torch.zeros(shape, dtype=torch.bool)
        out_idx = run.alive_out[t.layer]
        if t.layer_type == "Linear" or groups[t.layer] == 1:
            in_idx = run.alive_in[t.layer]
            keep[out_idx.unsqueeze(1), in_idx.unsqueeze(0)] = True
        else:  # grouped / depthwise: the input axis is per group, it shrinks with the outputs
            keep[out_idx] = True
        masks[t.key] = keep
    return masks


def prune_channels_into(
    model: LoadedModel,
    config: PruneConfig,
    out: Path,
    *,
    device: str,
    precision: str,
    progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    started: float,
) -> dict[str, Any]:
    spec = format_spec(model.format)
    if spec.channel_writer is None:
        raise InvalidModelError(spec.channel_refusal)
    specs = resolve_inputs(model, config)
    if specs is None:
        raise InvalidInputShapeError(
            "channel pruning traces the model: give input_shape (e.g. 1,3,224,224) or inputs"
        )
    torch_device = check_device(device)
    module = model.module.eval()
    xs = ones_inputs(specs, model_dtype(module), "cpu")
    tensors = _weight_tensors(model)
    named = dict(module.named_parameters())
    shapes = {t.key: named[t.param_name].shape for t in tensors}
    groups = {t.layer: getattr(dict(module.named_modules())[t.layer], "groups", 1) for t in tensors}
    weights = {t.key: named[t.param_name] for t in tensors}
    positions = count_positions(module, weights, specs)
    with torch.no_grad():
        reference = _outputs(module(*xs))
    macs_before, params_before = tp.utils.count_ops_and_params(module, _example(xs))
    torch_before = latency.torch_ms(module, xs)
    cuda_before = latency.cuda_ms(module, xs)
    original_graph = getattr(model.origin, "graph", None)

    scores = RegistryScores(
        config.method, model.format, specs, device=torch_device, precision=precision,
        seed=config.seed,
    )  # fmt: skip

    def report_round(t: int, n: int, kept: float) -> None:
        if progress is not None:
            progress(Progress(t, n, kept))

    run = prune_channels(
        module,
        xs,
        scores,
        density=config.density,
        iterations=config.resolved_iterations,
        schedule=config.schedule,
        scope=config.resolved_scope,
        keep_layers=(lambda name: discovery.matches(config.exclude, name, f"{name}.weight"))
        if config.exclude
        else None,
        progress=report_round,
        should_cancel=should_cancel,
    )
    module.to("cpu")
    try:
        with torch.no_grad():
            after = _outputs(module(*xs))
    except RuntimeError as exc:
        raise InvalidModelError(
            "after removing channels the graph no longer runs "
            f"({str(exc).splitlines()[0][:200]}): it holds a shape fixed at export (e.g. a "
            "Reshape to a constant size); export with torch.onnx.export(..., dynamo=False), or "
            "use granularity unstructured or N:M"
        ) from exc
    _check_outputs(reference, after)
    macs_after, params_after = tp.utils.count_ops_and_params(module, _example(xs))
    if not macs_after < macs_before:
        raise InvalidModelError(
            f"channel pruning at density {config.density:g} removed no multiply-accumulate "
            f"({macs_before:,} before and after); raise the sparsity"
        )

    masks = channel_masks(tensors, shapes, run, groups)
    write_atomically(out / "masks.safetensors", lambda p: save_file(dict(masks), str(p)))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    write_atomically(out / "weights.safetensors", lambda p: save_file(state, str(p)))
    files = spec.write_channels(model, out, xs)
    latencies: dict[str, Any] = {
        "torch_cpu_ms": {"before": torch_before, "after": latency.torch_ms(module, xs)},
        "batch": 1,
        "statistic": f"median of {latency.REPEATS} runs after {latency.WARMUP} warm-up runs",
    }
    if original_graph is not None:
        latencies["onnxruntime_cpu_ms"] = latency.interleaved_ms(  # both graphs are at hand
            {
                "before": latency.onnxruntime_run(original_graph.SerializeToString(), xs),
                "after": latency.onnxruntime_run(str(out / files[0]), xs),
            }
        )
    cuda_after = latency.cuda_ms(module, xs)
    latencies["cuda_ms"] = (
        {"before": cuda_before, "after": cuda_after} if cuda_after is not None else latency.NO_GPU
    )

    result = PruneResult(
        masks=masks,
        tensors=tensors,
        config=config,
        inputs=specs,
        device=str(torch_device),
        precision=scores.used_precision.replace("torch.", ""),
        seconds=time.perf_counter() - started,
        history=run.history,
        discovery="layer type (torch-pruning dependency graph)",
    )
    names: dict[str, Any] = {"masks": "masks.safetensors", "weights": "weights.safetensors"}
    names["model"] = files[0]
    names["report"] = "report.json"
    report = build_report(model, result, positions, time.perf_counter() - started, names)
    report["totals"]["parameters"] = params_before
    report["totals"]["parameters_kept"] = params_after
    report["structured"] = {
        "granularity": "channel",
        "target": TARGET_NOTE,
        "groups": run.groups,
        "parameters": {"before": params_before, "after": params_after},
        "macs": {"before": macs_before, "after": macs_after, "note": MAC_NOTE},
        "latency": latencies,
        "channels": [
            {"layer": name, "key": model.key_of(f"{name}.weight"), "before": c0, "kept": c}
            for name, (c0, c) in run.channels.items()
        ],
        "floor_layers": run.floor_layers,
        "fixed_layers": run.fixed_layers,
        "output_shapes": [list(o.shape) for o in after],
    }
    if run.floor_layers:
        report["warnings"].append(
            "one-channel floor: " + ", ".join(run.floor_layers[:10]) + " kept a single channel "
            "(removing it would disconnect the network); lower the sparsity"
        )
    text = json.dumps(report, indent=2)
    write_atomically(out / "report.json", lambda p: p.write_text(text))
    return report


def _example(xs: tuple[torch.Tensor, ...]):
    return xs[0] if len(xs) == 1 else list(xs)


def _outputs(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, list | tuple):
        return [t for o in output for t in _outputs(o)]
    return []


def _check_outputs(reference: list[torch.Tensor], after: list[torch.Tensor]) -> None:
    """The smaller model answers in the same shapes, with finite values."""
    before_shapes = [tuple(o.shape) for o in reference]
    after_shapes = [tuple(o.shape) for o in after]
    if before_shapes != after_shapes:
        raise InvalidModelError(
            f"channel pruning changed the model's output shapes ({before_shapes} -> "
            f"{after_shapes}); exclude the output layers with `exclude`, or use granularity "
            "unstructured"
        )
    for o in after:
        if o.is_floating_point() and not torch.isfinite(o).all():
            raise InvalidModelError("the channel-pruned model returns values that are not finite")
