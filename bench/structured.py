"""Structured pruning side by side: params, GMACs and measured latency per model and variant.

    python bench/structured.py [--size 224] [--iterations 10] [--models resnet18,...]

Rows per model (random init, torchvision): dense; unstructured SynFlow at 50% (zeros in a dense
graph); channel SynFlow and random channels at 50% of each group's channels (local scope: one
architecture, so the same MACs, as Torch-Pruning's L1 would give at 50% local); Torch-Pruning's
L1 magnitude importance with global ranking at 50%; channel SynFlow and random channel pruning
(global) at the same MACs as that L1 model (density found by bisection); and N:M 2:4 SynFlow
masks. Latency: torch and onnxruntime (each variant exported with the legacy exporter), CPU,
batch 1, the median of rounds that run every variant of the model once in turn (at least
REPEATS rounds and MIN_SECONDS), so a change of the machine's load hits all of them alike; GPU
figures only where CUDA is present.

`--accuracy EPOCHS` adds a second table: the same channel variants of 10-class models pruned at
initialisation at 32x32, then trained from scratch for EPOCHS epochs on scikit-learn's bundled
digits (8x8 images upscaled to 32x32, grey repeated over 3 channels; 80/20 split, fixed seed; no
download), BatchNorm statistics re-estimated on the training set, and tested on the
held-out fifth. `--seeds 0,1,2` repeats it per seed (initialisation,
random channels, training order) and prints the mean, spread and each seed's accuracy;
`--accuracy-only` skips the latency tables.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
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
BISECTION_STEPS = 6
#: interleaved timing rounds per variant, at least, and for at least this long per model (the
#: service's report uses latency.REPEATS)
REPEATS = 30
MIN_SECONDS = 10.0


def onnx_run(module: torch.nn.Module, x: torch.Tensor, tmp: str, name: str):
    """An onnxruntime run of the exported module; None where the legacy exporter refuses the
    model at this size (VGG's adaptive pooling below 224x224)."""
    path = str(Path(tmp) / f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (x,), path, dynamo=False, input_names=["x"])
        except torch.onnx.errors.OnnxExporterError:
            return None
    return latency.onnxruntime_run(path, (x,))


def measured_rows(name: str, variants: list, x: torch.Tensor) -> list[dict]:
    """Counts and latencies of every variant of one model, all timed interleaved (round after
    round of one run each), so that a change of the machine's load hits every variant alike."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (variant, module) in enumerate(variants):
            runs[("torch", variant)] = lambda m=module: m(x)
            ort_run = onnx_run(module, x, tmp, str(i))
            if ort_run is not None:
                runs[("ort", variant)] = ort_run
        with torch.inference_mode():
            ms = latency.interleaved_ms(runs, repeats=REPEATS, min_seconds=MIN_SECONDS)
    out = []
    for variant, module in variants:
        macs, params = tp.utils.count_ops_and_params(module, x)
        out.append({"model": name, "variant": variant, "params_m": params / 1e6,
                    "gmacs": macs / 1e9, "ort_ms": ms.get(("ort", variant)),
                    "torch_ms": ms[("torch", variant)],
                    "cuda_ms": latency.cuda_ms(module, (x,))})  # fmt: skip
    return out


def synflow_channels(module, x, density, iterations, scope, method="synflow", seed=0):
    scores = RegistryScores(method, "torchscript", (InputSpec(tuple(x.shape)),),
                            device=torch.device("cpu"), precision="auto", seed=seed)  # fmt: skip
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
            "grouped_density": kept / total, "torch_ms": latency.torch_ms(model, (x,)),
            "gpu_2to4_speedup": "not measured (no CUDA device)" if not torch.cuda.is_available()
            else "measure with to_sparse_semi_structured on fp16 linear layers"}  # fmt: skip


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=32, mode="bilinear").repeat(1, 3, 1, 1)
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


def recalibrate_batchnorm(module, x_train) -> None:
    """BatchNorm running statistics re-estimated on the training set with the final weights:
    MobileNetV3's momentum of 0.01 leaves them near their initial values after a few hundred
    steps, and the eval-mode model then predicts one class (0.106 dense, 5 epochs)."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the pass
    module.train()
    with torch.no_grad():
        for chunk in x_train.split(256):
            module(chunk)


def trained_accuracy(module, data, epochs: int, seed: int = 0) -> float:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y_train)).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
    recalibrate_batchnorm(module, x_train)
    module.eval()
    with torch.no_grad():
        predicted = torch.cat([module(chunk).argmax(1) for chunk in x_test.split(256)])
    return float((predicted == y_test).float().mean())


def channel_variants(base, x, iterations, seed=0):
    """(name, model) of the channel variants compared at equal MACs."""
    yield "channel SynFlow 50% local", synflow_channels(copy.deepcopy(base), x, 0.5, iterations,
                                                        "local", seed=seed)  # fmt: skip
    yield "channel random 50% local", synflow_channels(copy.deepcopy(base), x, 0.5, iterations,
                                                       "local", "random", seed)  # fmt: skip
    l1 = tp_l1(copy.deepcopy(base), x, 0.5)
    yield "Torch-Pruning L1, global 50%", l1
    target = tp.utils.count_ops_and_params(l1, x)[0]
    for method in ("synflow", "random"):
        model, _, density = matched(
            lambda m, d, method=method: synflow_channels(m, x, d, iterations, "global", method,
                                                         seed),
            base, x, target, iterations,
        )  # fmt: skip
        yield f"channel {method}, global, L1's MACs (d={density:.3f})", model


def accuracy_rows(names, iterations, epochs, seeds=(0,), data=None) -> list[dict]:
    """One row per model, variant and seed; the seed draws the initialisation, the random
    channels and the training order (the split stays fixed). `data`: digits() by default."""
    data = digits() if data is None else data
    x = torch.ones(1, 3, 32, 32)
    rows = []
    for name in names:
        for seed in seeds:
            torch.manual_seed(seed)
            base = getattr(torchvision.models, name)(num_classes=10).eval()
            variants = [
                ("dense", copy.deepcopy(base)),
                *channel_variants(base, x, iterations, seed),
            ]
            for variant, model in variants:
                macs, params = tp.utils.count_ops_and_params(model, x)
                rows.append(
                    {
                        "model": name,
                        "variant": variant,
                        "seed": seed,
                        "params_m": params / 1e6,
                        "gmacs": macs / 1e9,
                        "accuracy": trained_accuracy(model, data, epochs, seed),
                    }
                )
                print(f"{name} seed {seed} {variant}: {rows[-1]['accuracy']:.3f}",
                      file=sys.stderr, flush=True)  # fmt: skip
    return rows


def accuracy_table(rows: list[dict]) -> list[dict]:
    """Rows of `accuracy_rows` merged over seeds: mean and sample standard deviation (the
    bisected density, in the variant's name, differs per seed, so it is listed apart)."""
    merged: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        merged.setdefault((r["model"], r["variant"].split(" (d=")[0]), []).append(r)
    table = []
    for (model, variant), group in merged.items():
        accs = [r["accuracy"] for r in group]
        table.append({
            "model": model, "variant": variant, "seeds": len(group),
            "params_m": statistics.mean(r["params_m"] for r in group),
            "gmacs": statistics.mean(r["gmacs"] for r in group),
            "mean": statistics.mean(accs),
            "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accuracies": accs,
            "densities": [r["variant"].split(" (d=")[1].rstrip(")") for r in group
                          if " (d=" in r["variant"]],
        })  # fmt: skip
    return table


def print_row(r: dict) -> None:
    gpu = f"{r['cuda_ms']:.2f}" if r["cuda_ms"] is not None else "not measured"
    ort = f"{r['ort_ms']:.2f}" if r["ort_ms"] is not None else "not exportable"
    print(f"| {r['model']} | {r['variant']} | {r['params_m']:.2f} | {r['gmacs']:.4f} | "
          f"{ort} | {r['torch_ms']:.2f} | {gpu} |", flush=True)  # fmt: skip


def latency_tables(args) -> None:
    x = torch.ones(1, 3, args.size, args.size)
    print(f"input 1x3x{args.size}x{args.size}, {args.iterations} rounds, CPU batch 1, median of "
          f"interleaved rounds (at least {REPEATS}, {MIN_SECONDS:g} s), "
          f"torch {torch.__version__}")  # fmt: skip
    print("| model | variant | params (M) | GMACs | onnxruntime ms | torch ms | GPU ms |")
    print("|---|---|---|---|---|---|---|", flush=True)
    nm_rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = getattr(torchvision.models, name)().eval()
        loaded = LoadedModel(format="torchscript", module=copy.deepcopy(base), source=Path())
        config = PruneConfig(sparsity=0.5, iterations=args.iterations, input_shape=tuple(x.shape))
        apply_masks(loaded, prune(loaded, config))
        variants = [("dense", base), ("unstructured SynFlow 50%", loaded.module)]
        variants += channel_variants(base, x, args.iterations)
        for r in measured_rows(name, variants, x):
            print_row(r)
        nm_rows.append(nm_figures(name, base, x, args.iterations))
    print()
    print("| model | 2:4 grouped layers | dense layers | density of grouped | torch ms | "
          "GPU 2:4 speedup |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in nm_rows:
        print(
            f"| {r['model']} | {r['grouped_layers']} | {r['dense_layers']} | "
            f"{r['grouped_density']:.3f} | {r['torch_ms']:.2f} | {r['gpu_2to4_speedup']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--accuracy", type=int, default=0, metavar="EPOCHS",
                        help="also train on the bundled digits for EPOCHS epochs")  # fmt: skip
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the accuracy runs")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="skip the latency tables (the accuracy table alone)")  # fmt: skip
    args = parser.parse_args()
    if not args.accuracy_only:
        latency_tables(args)
    if args.accuracy:
        seeds = [int(v) for v in args.seeds.split(",")]
        print()
        print(f"digits accuracy after {args.accuracy} epochs from the pruned initialisation, "
              f"32x32, seeds {seeds}")  # fmt: skip
        print("| model | variant | params (M) | GMACs | test accuracy, mean ± sd | per seed |")
        print("|---|---|---|---|---|---|")
        rows = accuracy_rows(args.models.split(","), args.iterations, args.accuracy, seeds)
        for r in accuracy_table(rows):
            density = f" (d={', '.join(r['densities'])})" if r["densities"] else ""
            print(f"| {r['model']} | {r['variant']}{density} | {r['params_m']:.3f} | "
                  f"{r['gmacs']:.4f} | {r['mean']:.3f} ± {r['sd']:.3f} | "
                  f"{' '.join(f'{a:.3f}' for a in r['accuracies'])} |")  # fmt: skip


if __name__ == "__main__":
    main()
