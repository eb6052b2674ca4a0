"""Example models built in code (random initialisation, no downloads), saved as TorchScript.

For trying the CLI and the service without a model of one's own, and for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from synflow.io.torchscript import quiet_deprecation


def mlp(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )  # fmt: skip


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int = 10) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return build


#: name -> (builder, input shape)
EXAMPLES: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (1, 1, 28, 28)),
    "resnet18": (_torchvision("resnet18"), (1, 3, 224, 224)),
    "resnet50": (_torchvision("resnet50"), (1, 3, 224, 224)),
    "vgg11_bn": (_torchvision("vgg11_bn"), (1, 3, 224, 224)),
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), (1, 3, 224, 224)),
}


def write_example(name: str, out: str | Path, num_classes: int = 10, seed: int = 0):
    """Script the example model `name` and save it to `out`; returns its input shape."""
    builder, shape = EXAMPLES[name]
    torch.manual_seed(seed)
    model = builder(num_classes=num_classes).eval()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with quiet_deprecation():
        torch.jit.save(torch.jit.script(model), str(out))
    return shape
