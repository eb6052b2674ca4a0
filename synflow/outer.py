"""Linear layers scored from the factors of their weight gradient, never forming it.

A linear layer that reads one row (batch 1, which the all-ones input of SynFlow gives every MLP
and every classifier head of a CNN) has the weight gradient dR/dW = g x^T: entry (i, j) is the
single product g_i * x_j of the output's gradient and the input. Autograd writes that product
into a fresh weight-sized buffer each pass, only for the scorer to read it back and multiply it
into the weights: on a 50M-weight MLP that costs more than the rest of the pass (fresh pages are
faulted in each round). `OuterScoring`, a `TorchFunctionMode` active during the plain scoring
passes, routes such calls to `F.linear` / `aten.linear` through `ScoredLinear`, whose backward
computes the input's gradient as autograd would (`grad.mm(weight)`), then hands
(weight, g, x) to the scorer, which forms |W| * (g_i * x_j) in place or at the alive entries
only (`synflow.kernels.mul_outer`, `gather_outer`). The arithmetic is the same product, so the
scores are bit for bit those of the autograd pass.

Not routed (autograd as before): weights not offered (biases, non-2-D), inputs with more than
one row or a layout for which autograd's mm backward takes its column-major form, TorchScript
code (no Python dispatch). A weight read twice in one pass raises `SharedWeight`, and so must
the scorer when such a weight receives a gradient some other way: its score needs the whole
sum, so the caller runs the pass again without routing it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: The linear entry points of eager modules (`F.linear`) and of exported graphs (`aten.linear`).
LINEAR = frozenset({F.linear, torch._C._nn.linear, torch.ops.aten.linear.default})

#: Called with (weight, g, x) once per routed weight and pass, g and x 1-D.
ScoreOuter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


class SharedWeight(Exception):
    """A routed weight is read more than once in a pass: it must be scored by autograd."""

    def __init__(self, weight: torch.Tensor):
        super().__init__("a weight routed to outer-product scoring is read more than once")
        self.weight = weight


def one_row(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `F.linear(x, weight)` reads a single row that autograd's mm backward treats as
    row-major, so that dR/dW is exactly the outer product and dR/dx is `grad.mm(weight)`."""
    if weight.dim() != 2 or weight.shape[0] == 0:
        return False
    if x.dtype != weight.dtype or x.device != weight.device:
        return False
    width = weight.shape[1]
    if x.dim() == 0 or width < 2 or x.numel() != width or x.stride(-1) != 1:
        return False
    # mm's backward takes its column-major branch for a one-row input whose row stride is 1
    return all(stride != 1 for stride in x.stride()[:-1])


class ScoredLinear(torch.autograd.Function):
    """`F.linear(x, weight, bias)`; its backward gives x its gradient and hands the weight's
    factors to `score` instead of returning the weight's gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, score: ScoreOuter):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.score = score
        ctx.bias_shape = None if bias is None else bias.shape
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = grad.reshape(1, -1)
        grad_x = g.mm(weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(ctx.bias_shape) if ctx.needs_input_grad[2] else None
        ctx.score(weight, g.reshape(-1), x.detach().reshape(-1))  # after dR/dx read the weight
        return grad_x, None, grad_bias, None


class OuterScoring(TorchFunctionMode):
    """Routes one-row linear calls on the offered weights through `ScoredLinear`."""

    def __init__(self, weights: set[int], score: ScoreOuter):
        super().__init__()
        self._weights = weights
        self._score = score
        #: ids of the weights routed in this pass
        self.routed: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LINEAR:
            x, weight, bias = _linear_args(args, kwargs)
            if id(weight) in self._weights and isinstance(x, torch.Tensor) and one_row(x, weight):
                if id(weight) in self.routed:
                    raise SharedWeight(weight)
                self.routed.add(id(weight))
                return ScoredLinear.apply(x, weight, bias, self._score)
        return func(*args, **kwargs)


def _linear_args(args: tuple, kwargs: dict) -> tuple:
    names = ("input", "weight", "bias")
    values = list(args) + [None] * (3 - len(args))
    for i, name in enumerate(names):
        if name in kwargs:
            values[i] = kwargs[name]
    return values[0], values[1], values[2]
