"""Small networks built in code for the engine tests (random init, seeded)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from synflow.model import LoadedModel


def mlp(bias: bool = True, widths=(20, 32, 32, 10)) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Block(nn.Module):
    """Residual block with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, bias: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=bias), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResCNN(nn.Module):
    def __init__(self, bias: bool = True, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=bias)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8, 8, 1, bias)
        self.block2 = Block(8, 16, 2, bias)
        self.fc = nn.Linear(16, classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics and affine parameters (as after training)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def plain_cnn(bias: bool = False) -> nn.Module:
    """conv-relu-conv-relu-avgpool-linear: positively homogeneous when bias-free."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(6, 12, 3, stride=2, padding=1, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 10, bias=bias),
    )


def as_loaded(module: nn.Module, how: str = "script", example_shape=None) -> LoadedModel:
    """Wrap a module as the engine sees a loaded file: eager, scripted or traced."""
    module = module.eval()
    if how == "script":
        module = torch.jit.script(module)
    elif how == "trace":
        module = torch.jit.trace(module, torch.ones(example_shape))
    return LoadedModel(format="torchscript", module=module, source=Path("<memory>"))


def scoring_context(loaded: LoadedModel, shape, precision: str = "float32", **prunable):
    """(ScoringContext, params) for scoring `loaded` on the CPU: its prunable parameters by key."""
    from synflow.scorers.base import ScoringContext

    tensors = loaded.prunable(**prunable)
    named = dict(loaded.module.named_parameters())
    params = {t.key: named[t.param_name] for t in tensors}
    ctx = ScoringContext(
        loaded, tensors, params, shape, torch.device("cpu"), torch.Generator(), precision
    )
    return ctx, params


def seeded(builder, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return builder(**kwargs)
