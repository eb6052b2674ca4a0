"""What the evidence benchmarks share: scikit-learn's bundled digits, small networks, pruning at
initialisation through the engine, masked training, and exact path existence.

The data ships inside the scikit-learn wheel (8x8 grey images, 1,797 of them, 10 classes), so
nothing is downloaded. Every network is pruned by `synflow.engine.prune`, the same call the CLI
and the worker make; SNIP and GraSP get a calibration batch of 10 training images per class.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synflow.calibration import Calibration  # noqa: E402
from synflow.config import PruneConfig  # noqa: E402
from synflow.engine import prune  # noqa: E402
from synflow.model import LoadedModel  # noqa: E402
from synflow.scorers.registry import scorer_spec  # noqa: E402

METHODS = ("synflow", "synflow-l2", "magnitude", "random", "erk", "snip", "grasp")
#: the train/test split is fixed; seeds change the initialisation, the pruning and the batches
SPLIT_SEED = 0
TEST_FRACTION = 1 / 3
CALIBRATION_PER_CLASS = 10


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor  # (N, 1, 8, 8), values in [0, 1]
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def calibration(self, seed: int) -> Calibration:
        """10 training images per class, chosen by `seed`."""
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.y_train), generator=gen)
        picked = torch.cat(
            [order[self.y_train[order] == c][:CALIBRATION_PER_CLASS] for c in range(10)]
        )
        return Calibration(self.x_train[picked], self.y_train[picked])


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Digits(*(torch.from_numpy(a) for a in (x_tr, y_tr, x_te, y_te)))


def mlp(widths: tuple[int, ...] = (64, 300, 100, 10)) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def convnet() -> nn.Module:
    """Three 3x3 convolutions and a linear classifier: 14.0k prunable weights."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )  # fmt: skip


def vgg(widths: tuple = (16, 16, "M", 32, 32, "M", 64, 64, "M"), batchnorm: bool = True):
    """A VGG-style stack for 1x8x8 inputs (conv-BN-ReLU, max pooling), then one linear layer."""
    layers: list[nn.Module] = []
    channels = 1
    for w in widths:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(channels, w, 3, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU())
        channels = w
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels, 10))


ARCHS = {"mlp": mlp, "convnet": convnet}
INPUT_SHAPE = (1, 1, 8, 8)


@torch.no_grad()
def paper_init(model: nn.Module) -> nn.Module:
    """The reference code's initialisation (ganguli-lab/Synaptic-Flow `_initialize_weights`):
    Kaiming-normal weights, zero biases, BatchNorm scale 1 and shift 0. The zero biases matter:
    with PyTorch's default (uniform, non-zero) biases the linearised network's flow from the
    biases of late layers outweighs the flow through thinned early layers, and iterative SynFlow
    empties them (bench/collapse.py measures both)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


#: how a network is initialised: the reference code's, or PyTorch's own layer defaults
INITS = {"paper": paper_init, "default": lambda model: model}


def build(arch, seed: int, init: str = "paper") -> nn.Module:
    torch.manual_seed(seed)
    return INITS[init](arch())


def prune_masks(
    model: nn.Module,
    method: str,
    compression: float,
    seed: int,
    digits: Digits,
    iterations: int | None = None,
) -> dict[str, torch.Tensor]:
    """The engine's masks for `model` at init (weights of conv and linear layers, global).
    Raises `DegenerateFlowError` when SynFlow's own pruning disconnects the network (the engine
    refuses to rank all-zero scores): the caller counts that as a collapse."""
    needs_data = scorer_spec(method).needs_data
    config = PruneConfig(
        compression=compression,
        method=method,
        seed=seed,
        iterations=iterations,
        input_shape=None if needs_data else INPUT_SHAPE,
    )
    loaded = LoadedModel(format="torchscript", module=model, source=Path("<memory>"))
    result = prune(loaded, config, calibration=digits.calibration(seed) if needs_data else None)
    names = {t.key: t.param_name for t in result.tensors}
    return {names[k]: m for k, m in result.masks.items()}


def shuffle_within_layers(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same number kept in each layer, at uniformly random positions."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in masks.items():
        flat = mask.flatten()
        out[name] = flat[torch.randperm(flat.numel(), generator=gen)].view_as(mask)
    return out


@dataclass(frozen=True)
class Budget:
    """The fixed training budget every pruned network gets (Adam, full passes over the train
    split); sized so that the full quality run fits in 20 minutes on a loaded 2-core CPU."""

    epochs: int = 15
    batch: int = 128
    lr: float = 3e-3


def train_masked(
    model: nn.Module, masks: dict[str, torch.Tensor], digits: Digits, seed: int, budget: Budget
) -> float:
    """Train with Adam, pruned weights held at zero after every step; the test accuracy."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=budget.lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(digits.y_train)
    model.train()
    for _ in range(budget.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, budget.batch):
            idx = order[start : start + budget.batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(digits.x_train[idx]), digits.y_train[idx]).backward()
            opt.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
    model.eval()
    with torch.no_grad():
        predicted = model(digits.x_test).argmax(1)
    return float((predicted == digits.y_test).float().mean())


def layer_alive(masks: dict[str, torch.Tensor]) -> bool:
    return all(bool(m.any()) for m in masks.values())


@torch.no_grad()
def path_exists(model: nn.Module, masks: dict[str, torch.Tensor], input_shape) -> bool:
    """Whether some input-output path runs through kept weights only, exactly: a float64 copy
    with every prunable weight set to its mask (1 kept, 0 pruned), every bias 0 and every
    normalisation the identity, fed ones; all values are then non-negative integers (path
    counts), no cancellation and no rounding to zero, so the output sum is > 0 iff a path
    exists (ReLU and max pooling pass non-negative values on)."""
    net = copy.deepcopy(model).double().eval()
    params = dict(net.named_parameters())
    for name, p in params.items():
        p.copy_(masks[name].double() if name in masks else torch.zeros_like(p))
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.fill_(1.0)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    total = float(net(torch.ones(input_shape, dtype=torch.float64)).sum())
    return math.isfinite(total) and total > 0


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def log_grid(low: float, high: float, points: int) -> list[float]:
    """`points` compressions evenly spaced in log10 from `low` to `high` (both included)."""
    a, b = math.log10(low), math.log10(high)
    return [10 ** (a + (b - a) * i / (points - 1)) for i in range(points)]


def plot_lines(
    path: Path,
    panels: dict[str, dict[str, list[tuple[float, float, float]]]],
    ylabel: str,
    hlines: dict[str, float] | None = None,
) -> None:
    """One panel per architecture, one line per method: (x, mean, spread) points, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for label, points in lines.items():
            if not points:
                continue
            xs, ms, ss = zip(*points, strict=True)
            ax.plot(xs, ms, marker="o", ms=3, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(ms, ss, strict=True)],
                            [m + s for m, s in zip(ms, ss, strict=True)], alpha=0.15)  # fmt: skip
        if hlines and title in hlines:
            ax.axhline(hlines[title], color="k", ls="--", lw=1, label="dense")
        ax.set_xscale("log")
        ax.set_xlabel("compression (prunable weights / kept)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def publish(
    results: dict,
    out: Path,
    name: str,
    started: float,
    markdown: Callable[[dict], str],
    plot: Callable[[dict, Path], None] | None = None,
) -> None:
    """Stamp a run's results with its wall time and the machine's load (figures from a shared
    machine must say so), write `out/NAME.json` (and `NAME.png`), print the table."""
    results["seconds"] = time.perf_counter() - started
    results["load_average"] = os.getloadavg()
    results["cpus"] = os.cpu_count()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    if plot is not None:
        plot(results, out / f"{name}.png")
    print(markdown(results))
    print(f"{results['seconds']:.0f} s on {results['cpus']} CPUs, load average "
          + ", ".join(f"{x:.1f}" for x in results["load_average"]))  # fmt: skip
