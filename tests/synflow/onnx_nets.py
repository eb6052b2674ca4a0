"""Networks exported to ONNX for the ONNX tests, and their TorchScript twins.

The exporters fold each BatchNorm into the convolution before it, so the ONNX graph of a
torchvision network is not the network itself. The TorchScript twin that the ONNX masks are
compared with is therefore the *same folded network with the same numbers*: torch folds the
BatchNorms (`torch.fx.experimental.optimization.fuse`), then every parameter gets the value of
the ONNX initializer it corresponds to (same shape, values equal to float rounding).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from onnx import numpy_helper
from torch import nn
from torch.fx.experimental.optimization import fuse

IMAGE = (1, 3, 32, 32)


def vgg11_bn_cifar(classes: int = 10) -> nn.Module:
    """torchvision's VGG-11-BN feature extractor with the CIFAR head of the SynFlow paper.

    torchvision's own head pools to 7x7 and needs 224x224 inputs (133M parameters; one prune
    takes minutes on a CPU): the legacy exporter cannot export its 7x7 adaptive pooling from the
    1x1 map that a 32x32 input leaves.
    """
    model = torchvision.models.vgg11_bn(num_classes=classes)
    model.avgpool = nn.Flatten()
    model.classifier = nn.Linear(512, classes)
    return model


TORCHVISION = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "vgg11_bn": vgg11_bn_cifar,
}


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def convnet() -> nn.Module:
    """Conv + BatchNorm, a transposed convolution and a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )


SMALL = {"mlp": mlp, "convnet": convnet}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = SMALL[name]() if name in SMALL else TORCHVISION[name]()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding changes the weights
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def export(
    model: nn.Module, example: torch.Tensor, path: Path, exporter: str, fold: bool = True
) -> Path:
    """exporter: "legacy13", "legacy17" (TorchScript-based) or "dynamo" (its default opset).

    `fold=False` keeps BatchNormalization nodes (legacy exporter only).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter.startswith("legacy"):
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=int(exporter.removeprefix("legacy")),
                input_names=["input"],
                dynamic_axes={"input": {0: "batch"}},
                training=torch.onnx.TrainingMode.EVAL if fold else torch.onnx.TrainingMode.PRESERVE,
                do_constant_folding=fold,
            )
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False)
    return path


def initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def twin_torchscript(
    model: nn.Module, onnx_path: Path, example: torch.Tensor, out: Path, fold: bool = True
) -> tuple[Path, dict[str, str]]:
    """The (folded) network carrying the ONNX file's numbers, saved as TorchScript.

    Returns the .pt path and the map TorchScript key -> ONNX initializer name.
    """
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fuse(model) if fold and has_bn else model
    stored = {k: torch.from_numpy(v.copy()) for k, v in initializers(onnx_path).items()}
    names: dict[str, str] = {}
    with torch.no_grad():
        for key, param in folded.named_parameters():
            transposed = False
            name = _closest(param, stored, transposed)
            if name is None and param.dim() == 2:  # MatMul stores the (in, out) matrix
                transposed = True
                name = _closest(param, stored, transposed)
            if name is None and not param.any():
                continue  # an all-zero bias that the dynamo exporter's optimizer dropped
            assert name is not None, f"no ONNX initializer matches {key}"
            param.copy_(stored[name].T if transposed else stored[name])
            names[key] = name
    traced = torch.jit.trace(folded, example)
    path = out / "twin.pt"
    torch.jit.save(traced, str(path))
    return path, names


def _closest(param: torch.Tensor, stored: dict[str, torch.Tensor], transposed: bool):
    best, best_error = None, None
    for name, value in stored.items():
        value = value.T if transposed and value.dim() == 2 else value
        if value.shape != param.shape or not value.is_floating_point():
            continue
        error = float((value - param).abs().max()) if value.numel() else 0.0
        if error <= 1e-4 * max(1.0, float(param.abs().max())) and (
            best_error is None or error < best_error
        ):
            best, best_error = name, error
    return best
