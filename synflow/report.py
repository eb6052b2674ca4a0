"""The JSON report: what was pruned, where, and what it costs to run."""

from __future__ import annotations

import math
from typing import Any

from synflow import __version__
from synflow.engine import PruneResult
from synflow.feed import integer_inputs
from synflow.inputs import format_input_spec, format_input_specs
from synflow.model import LoadedModel
from synflow.structured.nm import nm_summary

FLOP_NOTE = "FLOPs = 2 x multiply-accumulates of the layers holding prunable weights"


def layer_rows(result: PruneResult, shapes: dict[str, tuple[int, ...]], positions: dict[str, int]):
    rows = []
    for t in result.tensors:
        mask = result.masks[t.key]
        total = mask.numel()
        kept = int(mask.sum())
        row: dict[str, Any] = {
            "name": t.key,
            "layer": t.layer,
            "layer_type": t.layer_type,
            "role": t.role,
            "shape": list(shapes[t.key]),
            "total": total,
            "kept": kept,
            "density": kept / total if total else 1.0,
        }
        if t.node:  # ONNX: the node that uses the initializer, as the file names it
            row["node"], row["op_type"] = t.node, t.op_type
        uses = positions.get(t.key)
        if uses is not None and t.role == "weight":
            row["flops_dense"] = 2 * uses * total
            row["flops_pruned"] = 2 * uses * kept
        rows.append(row)
    return rows


def build_report(
    model: LoadedModel,
    result: PruneResult,
    positions: dict[str, int] | None,
    wall_seconds: float,
    artifacts: dict[str, Any],
) -> dict[str, Any]:
    shapes = {t.key: tuple(result.masks[t.key].shape) for t in result.tensors}
    rows = layer_rows(result, shapes, positions or {})
    prunable_total = sum(r["total"] for r in rows)
    prunable_kept = sum(r["kept"] for r in rows)
    all_params = sum(p.numel() for p in dict(model.module.named_parameters()).values())
    warnings: list[str] = []
    collapsed = [r["name"] for r in rows if r["total"] and r["kept"] == 0]
    for name in collapsed:
        warnings.append(
            f"layer collapse: {name} was pruned away entirely; if it is not on a residual "
            "branch, the network is disconnected (lower the compression)"
        )
    for name, (round_, cause) in result.zero_score_layers.items():
        warnings.append(
            f"zero flow: every remaining weight of {name} scored 0 in round {round_} ({cause}); "
            "zero-score ties are pruned evenly across such layers, so none is emptied by them"
        )
    flops: dict[str, Any] | None = None
    if positions is not None:
        dense = sum(r.get("flops_dense", 0) for r in rows)
        pruned = sum(r.get("flops_pruned", 0) for r in rows)
        flops = {
            "dense": dense,
            "pruned": pruned,
            "ratio": pruned / dense if dense else 1.0,
            "note": FLOP_NOTE,
        }
        uncounted = [r["name"] for r in rows if r["role"] == "weight" and "flops_dense" not in r]
        if uncounted:
            warnings.append(
                "FLOPs not counted for weights the forward pass did not use as a convolution "
                "or matrix product: " + ", ".join(uncounted[:10])
            )
    else:
        warnings.append("FLOPs not counted: no input_shape (or inputs) was given")
    integers = integer_inputs(result.inputs)
    if integers:
        fed = f"integer inputs ({format_input_specs(tuple(integers))}) were fed all ones"
        if result.linearised_ops.get("embedding"):
            warnings.append(
                f"{fed}; their embedding lookups were scored as a one-hot all-ones input (every "
                "position receives the sum of all rows, see synflow/linearise.py)"
            )
        else:
            warnings.append(
                f"{fed} (every token id or index 1); their scores reflect that one value"
            )
    report = {
        "synflow_version": __version__,
        "format": model.format,
        "config": result.config.normalized(),
        "input_shape": list(result.input_shape) if result.input_shape else None,
        "inputs": [format_input_spec(s) for s in result.inputs] if result.inputs else None,
        "device": result.device,
        "precision": result.precision,
        # float32 with the input x 2^a and the backward seed x 2^b (exact power-of-two rescaling)
        "scale": list(result.scale) if result.scale else None,
        "precision_note": result.precision_note,
        "totals": {
            "prunable": prunable_total,
            "kept": prunable_kept,
            "pruned": prunable_total - prunable_kept,
            "density": prunable_kept / prunable_total if prunable_total else 1.0,
            "sparsity": 1.0 - prunable_kept / prunable_total if prunable_total else 0.0,
            "parameters": all_params,
            "parameters_kept": all_params - (prunable_total - prunable_kept),
        },
        "flops": flops,
        "layers": rows,
        # how the prunable parameters were found, and every parameter left dense with the reason
        "discovery": result.discovery,
        "dense": [
            {"name": d.key, "shape": list(d.shape), "total": math.prod(d.shape), "reason": d.reason}
            for d in result.dense
        ],
        "collapsed_layers": collapsed,
        "zero_score_layers": [
            {"name": name, "round": round_, "cause": cause}
            for name, (round_, cause) in result.zero_score_layers.items()
        ],
        # ops scored by their linear part (synflow.linearise), with their count in one pass
        "linearised_ops": result.linearised_ops,
        "warnings": warnings,
        "density_history": result.history,
        "timing": {"prune_seconds": result.seconds, "wall_seconds": wall_seconds},
        "artifacts": artifacts,
    }
    nm = result.config.grain.n_m
    if nm is not None:
        report["structured"] = nm_summary(result.tensors, result.masks, result.nm_skipped, nm)
    return report
