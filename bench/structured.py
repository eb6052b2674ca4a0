"""Structured pruning side by side: params, GMACs and measured latency per model and variant.

    python bench/structured.py [--size 224] [--iterations 10] [--models resnet18,...]

Rows per model (random init, torchvision): dense; unstructured SynFlow at 50% (zeros in a dense
graph); channel SynFlow at 50% of each group's channels (local scope: the same architecture as
Torch-Pruning's L1 and random channel pruning at 50%, so all three have the same MACs); Torch-
Pruning's L1 magnitude importance with global ranking at 50%; channel SynFlow and random channel
pruning (global) at the same MACs as that L1 model (density found by bisection); and N:M 2:4
SynFlow masks. Latency: onnxruntime, CPU, batch 1, median of repeated runs, of each variant
exported with the legacy exporter; GPU figures are measured only where CUDA is present.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision

from synflow.config import PruneConfig
from synflow.engine import apply_masks, prune
from synflow.inputs import InputSpec
from synflow.model import LoadedModel
from synflow.structured import latency
from synflow.structured.channels import output_layers, prune_channels
from synflow.structured.scoring import RegistryScores

MODELS = ("resnet18", "mobilenet_v3_small", "vgg11_bn")
#: relative MAC difference accepted when matching another model's MACs
MAC_TOLERANCE = 0.02
BISECTION_STEPS = 8


def onnx_ms(module: torch.nn.Module, x: torch.Tensor) -> float:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = str(Path(tmp) / "m.onnx")
        torch.onnx.export(module, (x,), path, dynamo=False, input_names=["x"])
        return latency.onnxruntime_ms(path, (x,))


def row(name: str, variant: str, module: torch.nn.Module, x: torch.Tensor) -> dict:
    macs, params = tp.utils.count_ops_and_params(module, x)
    return {"model": name, "variant": variant, "params_m": params / 1e6, "gmacs": macs / 1e9,
            "ort_ms": onnx_ms(module, x), "cuda_ms": latency.cuda_ms(module, (x,))}  # fmt: skip


def synflow_channels(module, x, density, iterations, scope, method="synflow"):
    scores = RegistryScores(method, "torchscript", (InputSpec(tuple(x.shape)),),
                            device=torch.device("cpu"), precision="auto", seed=0)  # fmt: skip
    prune_channels(module, x, scores, density=density, iterations=iterations, scope=scope)
    return module


def tp_l1(module, x, ratio):
    pruner = tp.pruner.MetaPruner(
        module, x, importance=tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True,
        pruning_ratio=ratio, ignored_layers=output_layers(tp.DependencyGraph().build_dependency(
            module, example_inputs=x)),
    )  # fmt: skip
    pruner.step()
    return module


def matched(make, base, x, target_macs, iterations):
    """`make(copy, density)` at the density whose MACs come closest to `target_macs`."""
    lo, hi, best = 0.05, 1.0, None
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        model = make(copy.deepcopy(base), mid)
        macs = tp.utils.count_ops_and_params(model, x)[0]
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (model, macs, mid)
        if abs(macs - target_macs) <= MAC_TOLERANCE * target_macs:
            break
        lo, hi = (mid, hi) if macs < target_macs else (lo, mid)
    return best


def nm_figures(name, base, x, iterations) -> dict:
    model = copy.deepcopy(base)
    loaded = LoadedModel(format="torchscript", module=model, source=Path())
    config = PruneConfig(granularity="2:4", iterations=iterations, input_shape=tuple(x.shape))
    result = prune(loaded, config)
    apply_masks(loaded, result)
    grouped = [t.key for t in result.tensors if t.key not in result.nm_skipped]
    total = sum(result.masks[k].numel() for k in grouped)
    kept = sum(int(result.masks[k].sum()) for k in grouped)
    return {"model": name, "grouped_layers": len(grouped), "dense_layers": len(result.nm_skipped),
            "grouped_density": kept / total, "ort_ms": onnx_ms(model, x),
            "gpu_2to4_speedup": "not measured (no CUDA device)" if not torch.cuda.is_available()
            else "measure with to_sparse_semi_structured on fp16 linear layers"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    x = torch.ones(1, 3, args.size, args.size)
    rows, nm_rows = [], []
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = getattr(torchvision.models, name)().eval()
        rows.append(row(name, "dense", base, x))
        loaded = LoadedModel(format="torchscript", module=copy.deepcopy(base), source=Path())
        config = PruneConfig(sparsity=0.5, iterations=args.iterations, input_shape=tuple(x.shape))
        apply_masks(loaded, prune(loaded, config))
        rows.append(row(name, "unstructured SynFlow 50%", loaded.module, x))
        local = synflow_channels(copy.deepcopy(base), x, 0.5, args.iterations, "local")
        rows.append(row(name, "channel SynFlow 50% (= L1 / random 50% local)", local, x))
        l1 = tp_l1(copy.deepcopy(base), x, 0.5)
        rows.append(row(name, "Torch-Pruning L1, global 50%", l1, x))
        target = tp.utils.count_ops_and_params(l1, x)[0]
        for method in ("synflow", "random"):
            model, _, density = matched(
                lambda m, d, method=method: synflow_channels(m, x, d, args.iterations, "global",
                                                             method),
                base, x, target, args.iterations,
            )  # fmt: skip
            rows.append(row(name, f"channel {method}, global, L1's MACs (d={density:.3f})",
                            model, x))  # fmt: skip
        nm_rows.append(nm_figures(name, base, x, args.iterations))
    print(f"input 1x3x{args.size}x{args.size}, {args.iterations} rounds, onnxruntime CPU batch 1 "
          f"(median of {latency.REPEATS}), torch {torch.__version__}")  # fmt: skip
    print("| model | variant | params (M) | GMACs | onnxruntime ms | GPU ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        gpu = f"{r['cuda_ms']:.2f}" if r["cuda_ms"] is not None else "not measured"
        print(f"| {r['model']} | {r['variant']} | {r['params_m']:.2f} | {r['gmacs']:.3f} | "
              f"{r['ort_ms']:.2f} | {gpu} |")  # fmt: skip
    print()
    print("| model | 2:4 grouped layers | dense layers | density of grouped | onnxruntime ms | "
          "GPU 2:4 speedup |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in nm_rows:
        print(
            f"| {r['model']} | {r['grouped_layers']} | {r['dense_layers']} | "
            f"{r['grouped_density']:.3f} | {r['ort_ms']:.2f} | {r['gpu_2to4_speedup']} |"
        )


if __name__ == "__main__":
    main()
