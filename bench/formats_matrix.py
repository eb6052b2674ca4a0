"""Every way in, tried as a user would: format x exporter x input kind, through `prune_file`.

    python bench/formats_matrix.py [--iterations 5] [--sparsity 0.9]

For each case the model is built in code (random init), exported with torch's own exporter,
pruned with the library (`synflow.prune_file`, what the CLI and the worker run), and the pruned
model is loaded back with its own runtime (torch.jit.load, torch.export.load, onnxruntime) and
run on ones. A case passes when the kept count is exactly floor(density * prunable), the output is
finite, and every weight in `weights.safetensors` is zero exactly where the masks say. Prints a
markdown table (status, seconds for the prune, prunable and kept counts); not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import shutil
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

import synflow
from synflow.io.torchscript import quiet_deprecation


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(12, 32), nn.Linear(6, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x) + self.b(y)))


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.fc, self.out = nn.Linear(32, 64), nn.Linear(64, 100)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.emb(ids))))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


#: input kind -> (model factory, example inputs, --input specs for formats that do not state them)
KINDS: dict[str, tuple[Callable[[], nn.Module], tuple, list[str]]] = {
    "float32 image (ResNet-18)": (resnet18, (torch.ones(1, 3, 32, 32),), ["1,3,32,32"]),
    "two float inputs": (
        TwoInputs, (torch.ones(1, 12), torch.ones(1, 6)), ["1,12", "1,6"],
    ),
    "int64 tokens": (
        Tokens, (torch.ones(1, 16, dtype=torch.int64),), ["int64:1,16"],
    ),
    "float16 CNN": (small_cnn, (torch.ones(1, 3, 16, 16),), ["float16:1,3,16,16"]),
    "bfloat16 CNN": (small_cnn, (torch.ones(1, 3, 16, 16),), ["bfloat16:1,3,16,16"]),
}  # fmt: skip
HALF = {"float16 CNN": torch.float16, "bfloat16 CNN": torch.bfloat16}


def export(kind: str, exporter: str, folder: Path) -> tuple[Path, bool]:
    """The exported file and whether the format states its inputs."""
    factory, args, _ = KINDS[kind]
    torch.manual_seed(0)
    model = factory().eval()
    dtype = HALF.get(kind)
    if dtype is not None:
        model = model.to(dtype)
        args = tuple(a.to(dtype) for a in args)
    if exporter in ("torchscript script", "torchscript trace"):
        path = folder / "model.pt"
        with quiet_deprecation():
            ts = (
                torch.jit.script(model)
                if exporter.endswith("script")
                else torch.jit.trace(model, args)
            )
            torch.jit.save(ts, str(path))
        return path, False
    if exporter == "torch.export .pt2":
        path = folder / "model.pt2"
        torch.export.save(torch.export.export(model, args), str(path))
        return path, True
    path = folder / "model.onnx"
    if exporter == "onnx legacy (opset 17)":
        torch.onnx.export(model, args, str(path), opset_version=17, dynamo=False)
        return path, True
    torch.onnx.export(model, args, str(path), dynamo=True)  # external data: model.onnx.data
    if exporter == "onnx dynamo, bundle":
        bundle = folder / "bundle.zip"
        with zipfile.ZipFile(bundle, "w") as zf:
            for f in folder.iterdir():
                if f.name.startswith("model.onnx"):
                    zf.write(f, f.name)
        return bundle, True
    return path, True


def run_output(out: Path, report: dict, kind: str) -> None:
    """Load the pruned model with its own runtime and run it on ones; raise if not finite."""
    name = report["artifacts"]["model"]
    _, args, _ = KINDS[kind]
    dtype = HALF.get(kind)
    if dtype is not None:
        args = tuple(a.to(dtype) for a in args)
    if name.endswith(".pt"):
        with quiet_deprecation():
            y = torch.jit.load(str(out / name))(*args)
    elif name.endswith(".pt2"):
        y = torch.export.load(str(out / name)).module()(*args)
    else:
        import onnxruntime as ort

        path = out / name
        if name.endswith(".zip"):
            unpacked = out / "unpacked"
            with zipfile.ZipFile(path) as zf:
                zf.extractall(unpacked)
            path = next(unpacked.glob("*.onnx"))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {
            i.name: (a.float() if a.dtype == torch.bfloat16 else a).numpy()
            for i, a in zip(session.get_inputs(), args, strict=True)
        }
        y = torch.from_numpy(np.asarray(session.run(None, feeds)[0]).astype(np.float32))
    if not torch.isfinite(y.float()).all():
        raise AssertionError("the pruned model's output is not finite")


def check(out: Path, report: dict, density: float) -> tuple[int, int]:
    masks, weights = (
        load_file(str(out / "masks.safetensors")),
        load_file(str(out / "weights.safetensors")),
    )
    prunable = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    if kept != prunable - math.floor((1 - density) * prunable):
        raise AssertionError(f"kept {kept} of {prunable}: not the exact count")
    for key, mask in masks.items():
        w = weights[key]
        if bool((w[~mask] != 0).any()):
            raise AssertionError(f"{key}: a pruned entry is not zero")
    return prunable, kept


def one_case(kind: str, exporter: str, args: argparse.Namespace) -> tuple[str, float, str]:
    folder = Path(tempfile.mkdtemp(prefix="synflow-matrix-"))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporters' progress lines
            path, states_inputs = export(kind, exporter, folder)
        fields: dict = {"sparsity": args.sparsity, "iterations": args.iterations}
        if not states_inputs:
            fields["inputs"] = KINDS[kind][2]
        config = synflow.PruneConfig(**fields)
        out = folder / "out"
        started = time.perf_counter()
        report = synflow.prune_file(path, config, out)
        seconds = time.perf_counter() - started
        prunable, kept = check(out, report, config.density)
        run_output(out, report, kind)
        return "pass", seconds, f"{kept:,} / {prunable:,} kept, {report['precision']}"
    except Exception as exc:  # a failed case is a row, not a crash
        if args.verbose:
            traceback.print_exc()
        return "FAIL", float("nan"), f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


EXPORTERS = [
    "torchscript script",
    "torchscript trace",
    "torch.export .pt2",
    "onnx legacy (opset 17)",
    "onnx dynamo, loose files",
    "onnx dynamo, bundle",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--exporters", nargs="*", default=EXPORTERS)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, sparsity {args.sparsity}, {args.iterations} iterations\n")
    print("| input kind | format / exporter | result | prune time | notes |")
    print("|---|---|---|---|---|")
    for kind in args.kinds:
        for exporter in args.exporters:
            status, seconds, note = one_case(kind, exporter, args)
            shown = f"{seconds:.1f} s" if status == "pass" else "-"
            print(f"| {kind} | {exporter} | {status} | {shown} | {note} |", flush=True)


if __name__ == "__main__":
    main()
