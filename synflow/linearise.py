"""What the SynFlow passes do with the ops that would block the flow on the all-ones input.

SynFlow scores the *linearised* network: |weights|, an all-ones input. A ReLU network is then
linear on its (non-negative) values and the scores follow the paper. Other activations are not:
the linearised pre-activations are large and positive, so ReLU6, sigmoid/hardsigmoid gates and
softmax saturate (zero gradient: MobileNetV2 scores 52 of its 53 layers exactly 0), LayerNorm maps
the constant input to exactly 0, and identical tokens make attention uniform, which gives query and
key weights zero gradient. `Linearised` is a `TorchDispatchMode` active during the scoring passes
only (forward and backward); it replaces these aten ops by their linear part, so the rule is the
same for eager, TorchScript, FX and exported programs:

- **Ramps** (positively homogeneous, degree 1): ReLU6/hardtanh(0, t) become ReLU (their
  unbounded ramp; hardtanh with a negative lower bound becomes the identity); SiLU, hardswish,
  GELU, tanh, ELU and mish become the identity, their slope for large positive input. On the
  non-negative linearised values each equals its linear part exactly.
- **Gates** sigmoid and hardsigmoid: `g = (s + c) / (2c)`, with c = max(s) frozen (a constant for
  the gradient). It maps [0, max] linearly onto [1/2, 1], the gate's values at 0 and saturated,
  is positively homogeneous of degree 0 (so `x * gate(x)` keeps x's degree and squeeze-excitation
  blocks do not square the flow), and its slope 1/(2c) scores the gate's weights. A gate whose
  input is all zero (a dead branch) is the constant 1/2, as sigmoid(0) is.
- **Softmax** (attention, classifiers): `A = S / rowsum(S)`, the row sums frozen. For identical
  tokens A is exactly softmax's uniform 1/n, and since the row sums are constants for the
  gradient, queries and keys are scored on the attention logits they produce (with a normalised
  gradient every row-stochastic A gives identical tokens the same output, so q and k would score
  0). Attention logits are scored linearly: this is a research choice, not the paper's.
  Scaled-dot-product attention runs its math kernel during scoring so that the softmax is seen.
- **LayerNorm**: its affine part `|gamma| * x + |beta|` (the normalisation maps the all-ones
  input to 0, and would make R negative after post-LN blocks). RMSNorm is left as it computes: it
  does not zero a constant input.
- **Embeddings**: the lookup of the linearised network is a one-hot all-ones input, i.e. every
  position receives the sum of all rows, and every row is scored.

Plain ReLU networks meet none of these ops, so their scores are bit for bit those of the reference
code. Every substitute is positively homogeneous (frozen scales have the degree of what they
normalise), so `synflow.scaling` can still trace degrees and rescale by powers of two; a frozen
scale is a constant only for the gradient, its value is measured each pass.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

aten = torch.ops.aten


def _packets(*names: str) -> frozenset:
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


#: Activations replaced by the identity (out of place / in place), and their backward ops.
IDENTITY = _packets("silu", "gelu", "tanh", "hardswish", "elu", "mish", "selu", "celu")
IDENTITY_INPLACE = _packets("silu_", "gelu_", "tanh_", "hardswish_", "elu_", "mish_", "selu_")
IDENTITY_BACKWARD = _packets(
    "silu_backward", "gelu_backward", "tanh_backward", "hardswish_backward", "elu_backward",
    "mish_backward",
)  # fmt: skip
GATES = _packets("sigmoid", "hardsigmoid")
GATES_INPLACE = _packets("sigmoid_", "hardsigmoid_")
GATE_BACKWARD = _packets("sigmoid_backward", "hardsigmoid_backward")
SOFTMAX = _packets("_softmax", "_safe_softmax", "softmax")
SOFTMAX_BACKWARD = _packets("_softmax_backward_data")


class Linearised(TorchDispatchMode):
    """Replaces the blocking ops by their linear part (see the module docstring).

    One instance serves one forward pass and its backward pass: the backward of a frozen-scale
    op needs the scale its forward measured, kept here by the output's storage."""

    def __init__(self) -> None:
        super().__init__()
        #: data_ptr of a gate/softmax output -> the frozen scale its gradient is divided by
        self._frozen: dict[int, torch.Tensor | None] = {}
        #: how often each op was replaced, e.g. {"sigmoid": 30}
        self.replaced: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        rule = _RULES.get(packet)
        if rule is None:
            return func(*args, **kwargs)
        self.replaced[str(packet).removeprefix("aten.")] += 1
        return rule(self, packet, args, kwargs)

    # -- rules --------------------------------------------------------------------------------
    def _identity(self, packet, args, kwargs):
        return aten.clone(args[0])

    def _identity_inplace(self, packet, args, kwargs):
        return args[0]

    def _pass_gradient(self, packet, args, kwargs):
        return aten.clone(args[0])

    def _hardtanh(self, packet, args, kwargs):
        x = args[0]
        low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        inplace = packet is aten.hardtanh_
        if low < 0:
            return x if inplace else aten.clone(x)
        if low == 0:
            return aten.relu_(x) if inplace else aten.relu(x)
        return aten.clamp_min_(x, low) if inplace else aten.clamp_min(x, low)

    def _hardtanh_backward(self, packet, args, kwargs):
        grad, x = args[0], args[1]
        low = args[2] if len(args) > 2 else kwargs.get("min_val", -1.0)
        if low < 0:
            return aten.clone(grad)
        return aten.threshold_backward(grad, x, low)  # the ramp's gradient: where x > low

    def _gate(self, packet, args, kwargs):
        s = args[0]
        c = aten.detach(aten.amax(s))
        if _is_zero(c):
            out = aten.fill_(s, 0.5) if packet in GATES_INPLACE else aten.full_like(s, 0.5)
            self._frozen[out.data_ptr()] = None
            return out
        two_c = aten.mul(c, 2.0)
        if packet in GATES_INPLACE:
            out = aten.div_(aten.add_(s, c), two_c)
        else:
            out = aten.div(aten.add(s, c), two_c)
        self._frozen[out.data_ptr()] = two_c
        return out

    def _gate_backward(self, packet, args, kwargs):
        grad, saved = args[0], args[1]
        if packet is aten.hardsigmoid_backward:  # saves its input: measure the scale again
            c = aten.amax(saved)
            return aten.zeros_like(grad) if _is_zero(c) else aten.div(grad, aten.mul(c, 2.0))
        scale = self._frozen.get(saved.data_ptr())
        return aten.zeros_like(grad) if scale is None else aten.div(grad, scale)

    def _softmax(self, packet, args, kwargs):
        s, dim = args[0], args[1]
        s = aten.clamp_min(s, 0.0)  # masked logits (-inf) carry no flow
        rows = aten.detach(aten.sum(s, [dim], True))
        if _is_zero(aten.amin(rows)):  # a row without flow: uniform, as softmax of a constant
            with _disable_current_modes():
                n = s.shape[dim]
                rows = torch.where(rows > 0, rows, torch.full_like(rows, 1.0))
                s = torch.where(rows > 0, s, torch.full_like(s, 1.0 / n))
        out = aten.div(s, rows)
        self._frozen[out.data_ptr()] = rows
        return out

    def _softmax_backward(self, packet, args, kwargs):
        grad, output = args[0], args[1]
        rows = self._frozen.get(output.data_ptr())
        if rows is None:
            raise RuntimeError("softmax backward without its linearised forward")
        return aten.div(grad, rows)

    def _layer_norm(self, packet, args, kwargs):
        x, shape = args[0], list(args[1])
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        bias = args[3] if len(args) > 3 else kwargs.get("bias")
        out = aten.mul(x, weight) if weight is not None else aten.clone(x)
        if bias is not None:
            out = aten.add(out, bias)
        stats = list(x.shape[: x.dim() - len(shape)]) + [1] * len(shape)
        return out, aten.new_zeros(x, stats), aten.new_ones(x, stats)

    def _layer_norm_backward(self, packet, args, kwargs):
        grad, x, shape = args[0], args[1], list(args[2])
        weight, mask = args[5], args[7]
        lead = list(range(x.dim() - len(shape)))
        gx = aten.mul(grad, weight) if weight is not None else aten.clone(grad)
        gw = aten.sum(aten.mul(grad, x), lead) if mask[1] and weight is not None else None
        gb = aten.sum(grad, lead) if mask[2] and args[6] is not None else None
        return gx if mask[0] else None, gw, gb

    def _embedding(self, packet, args, kwargs):
        weight, indices = args[0], args[1]
        row = aten.sum(weight, [0])  # one-hot all-ones input: the sum of all rows
        return aten.clone(aten.expand(row, [*indices.shape, weight.shape[1]]))

    def _embedding_backward(self, packet, args, kwargs):
        grad, rows = args[0], args[2]
        total = aten.sum(aten.reshape(grad, [-1, grad.shape[-1]]), [0])
        return aten.clone(aten.expand(total, [rows, grad.shape[-1]]))


def _is_zero(t: torch.Tensor) -> bool:
    """Whether a scale is zero. Read outside the other modes: the answer does not depend on the
    power-of-two scale, so it is not a branch on a value in `synflow.scaling`'s sense."""
    with _disable_current_modes():
        return bool(t == 0)


_RULES = {
    **dict.fromkeys(IDENTITY, Linearised._identity),
    **dict.fromkeys(IDENTITY_INPLACE, Linearised._identity_inplace),
    **dict.fromkeys(IDENTITY_BACKWARD, Linearised._pass_gradient),
    **dict.fromkeys(_packets("hardtanh", "hardtanh_"), Linearised._hardtanh),
    **dict.fromkeys(_packets("hardtanh_backward"), Linearised._hardtanh_backward),
    **dict.fromkeys(GATES | GATES_INPLACE, Linearised._gate),
    **dict.fromkeys(GATE_BACKWARD, Linearised._gate_backward),
    **dict.fromkeys(SOFTMAX, Linearised._softmax),
    **dict.fromkeys(SOFTMAX_BACKWARD, Linearised._softmax_backward),
    **dict.fromkeys(_packets("native_layer_norm"), Linearised._layer_norm),
    **dict.fromkeys(_packets("native_layer_norm_backward"), Linearised._layer_norm_backward),
    **dict.fromkeys(_packets("embedding"), Linearised._embedding),
    **dict.fromkeys(_packets("embedding_dense_backward"), Linearised._embedding_backward),
}
