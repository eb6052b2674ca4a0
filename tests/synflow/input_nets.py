"""Models for the input and dtype tests: several inputs, token ids, half precision."""

from __future__ import annotations

import torch
from torch import nn

from tests.synflow import nets


class TwoInputs(nn.Module):
    """Two float tensors, each through its own layer, joined."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x) + self.b(y)))


class Tokens(nn.Module):
    """Token ids (int64) -> Embedding -> Linear layers, summed over the sequence."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids)))).sum(1)


def half_model(dtype: torch.dtype) -> nn.Module:
    """The residual CNN (BatchNorm with non-trivial statistics) in `dtype`."""
    return nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=5)).eval().to(dtype)


class SumOfRows(nn.Module):
    """The embedding's documented linear part (synflow/linearise.py): every position receives
    the sum of all rows. A reference twin swaps it in for the lookup."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.weight = emb.weight

    def forward(self, x):
        return self.weight.sum(0).expand(*x.shape, -1)


def linearised_twin(module: nn.Module) -> nn.Module:
    """The same model (same values) with its `emb` lookup replaced by the sum of all rows: what
    the scoring passes compute, for the reference to run."""
    twin = type(module)()
    twin.load_state_dict(module.state_dict())
    twin.emb = SumOfRows(twin.emb)
    return twin.eval()
