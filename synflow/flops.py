"""Multiply-accumulate counts of the layers that hold prunable weights, dense and pruned.

The model runs once on the all-ones input under a `TorchDispatchMode` that sees every aten op,
also inside TorchScript. Each convolution / matrix product whose weight argument shares storage
with a prunable weight is counted: every weight element is used once per output position
(input position for transposed convolutions), so MACs = positions x weight elements, and the
pruned count uses the kept elements instead. FLOPs are reported as 2 x MACs.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from synflow.feed import model_dtype, ones_inputs
from synflow.inputs import InputSpec

aten = torch.ops.aten

_CONV_OPS = {
    aten.convolution.default,
    aten._convolution.default,
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
}
# index of the left matrix operand; aten.linear(x, W) computes x @ W.T, so W is on the right
_LEFT_OPERAND = {
    aten.mm.default: 0,
    aten.matmul.default: 0,
    aten.bmm.default: 0,
    aten.addmm.default: 1,
    aten.baddbmm.default: 1,
}
_MATMUL_OPS = {
    aten.addmm.default,
    aten.mm.default,
    aten.linear.default,
    aten.matmul.default,
    aten.bmm.default,
    aten.baddbmm.default,
}


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class _Counter(TorchDispatchMode):
    def __init__(self, owners: dict[int, str]):
        super().__init__()
        self.owners = owners
        self.positions: dict[str, int] = defaultdict(int)

    def _owner(self, t: object) -> str | None:
        if isinstance(t, torch.Tensor):
            key = _storage_key(t)
            if key is not None:
                return self.owners.get(key)
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONV_OPS and len(args) >= 2 and isinstance(out, torch.Tensor):
            name = self._owner(args[1])
            transposed = func in (aten.convolution.default, aten._convolution.default) and bool(
                args[6]
            )
            if name is not None:
                ref = args[0] if transposed else out
                channels = ref.shape[1] if ref.dim() > 1 else 1
                self.positions[name] += ref.numel() // max(channels, 1)
        elif func in _MATMUL_OPS and isinstance(out, torch.Tensor) and out.dim() >= 2:
            left = _LEFT_OPERAND.get(func)
            for index, arg in enumerate(args):
                name = self._owner(arg)
                if name is not None and isinstance(arg, torch.Tensor) and arg.dim() >= 2:
                    # each weight element is used once per row of `out` when the weight is the
                    # right operand (x @ W), once per column when it is the left one (W @ x)
                    axis = -2 if index == left else -1
                    self.positions[name] += out.numel() // max(out.shape[axis], 1)
                    break
        return out


@torch.no_grad()
def count_positions(
    module: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    inputs: tuple[InputSpec, ...] | tuple[int, ...],
    dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """How many times each named weight tensor's elements are used in one forward pass.

    `inputs`: one spec per forward argument (a bare shape: one floating input). Floating inputs
    are fed in `dtype`, by default the module's own (a float16 model gets float16 ones)."""
    if inputs and not isinstance(inputs[0], InputSpec):
        inputs = (InputSpec(tuple(inputs)),)  # type: ignore[arg-type]
    floating = dtype if dtype is not None else model_dtype(module)
    owners = {}
    for name, t in weights.items():
        key = _storage_key(t)
        if key is not None:
            owners[key] = name
    counter = _Counter(owners)
    device = next(iter(weights.values())).device if weights else torch.device("cpu")
    with counter:
        module(*ones_inputs(inputs, floating, device))  # type: ignore[arg-type]
    return dict(counter.positions)
