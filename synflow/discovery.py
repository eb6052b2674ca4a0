"""Which parameters are prunable: those the model *uses as a weight*, seen in the ops it runs.

One forward pass on the all-ones input runs under a `TorchDispatchMode` that sees every aten op
(eager, TorchScript and FX modules alike). An operand is matched to a parameter by storage: a
tensor whose data lies inside a parameter's bytes (a view, a transpose, a chunk of a packed
matrix) is that parameter, and so is a copy made from one by a layout or dtype op (`repeat`,
`contiguous`, `.float()`). Each use gives the parameter a role:

- `weight`: the weight operand of a convolution (every overload, transposed too), linear, a
  matrix product (mm, bmm, matmul, addmm, baddbmm, einsum, bilinear), or a fused recurrent or
  attention kernel (LSTM/GRU/RNN and their cells: `weight_ih`, `weight_hh`; fused multi-head
  attention: `in_proj_weight`, `out_proj.weight`);
- `embedding`: the table of an embedding lookup;
- `bias`: the additive operand of those ops (conv/addmm bias, or a parameter added to their
  output);
- `norm_weight` / `norm_bias`: the scale / shift of batch, layer, group or instance norm.

A parameter with several uses takes the strongest role (weight > embedding > norm_weight > bias
> norm_bias): a decoder weight tied to an embedding is a linear weight. Anything else (a
residual scale multiplied in, a positional embedding added to activations, a parameter the
forward pass never touches) is not a weight operand and stays dense, as do integer parameters.

On the reference code's networks (conv/linear layers, biases, BatchNorm) this finds exactly
what its `masked_parameters` finds, in the same (parameter) order.
"""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from synflow.scaling import flatten

aten = torch.ops.aten

WEIGHT = "weight"
EMBEDDING = "embedding"
BIAS = "bias"
NORM_WEIGHT = "norm_weight"
NORM_BIAS = "norm_bias"
#: strongest first: a parameter used in two ways takes the first role that applies
ROLE_PRIORITY = (WEIGHT, EMBEDDING, NORM_WEIGHT, BIAS, NORM_BIAS)

#: Why a parameter stays dense (the report's `dense` list).
EXCLUDED = "excluded"
INTEGER_DTYPE = "integer dtype"
NOT_WEIGHT_OPERAND = "not a weight operand"
UNUSED = "not used by the forward pass"
OPTION_OFF = {
    BIAS: "bias (prune_bias is off)",
    NORM_WEIGHT: "normalisation weight (prune_batchnorm is off)",
    NORM_BIAS: "normalisation bias (prune_bias and prune_batchnorm are not both on)",
    EMBEDDING: "embedding (prune_embedding is off)",
}


def _ops(*names: str) -> frozenset:
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


#: Output is the first operand in another layout or dtype: a parameter stays itself through it.
PASS_THROUGH = _ops(
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "expand_as",
    "squeeze", "unsqueeze", "flatten", "unflatten", "alias", "detach", "slice", "select",
    "narrow", "as_strided", "contiguous", "clone", "_to_copy", "lift_fresh", "split",
    "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "chunk", "unbind", "repeat",
    "_reshape_alias", "view_as", "reshape_as", "_conj", "resolve_conj", "resolve_neg",
    "transpose_", "t_", "squeeze_", "unsqueeze_",
)  # fmt: skip
#: Every parameter operand is a weight (matrix products, bilinear forms).
PRODUCTS = _ops("mm", "bmm", "matmul", "mv", "einsum", "_trilinear", "tensordot")
#: addmm(c, m1, m2): c is additive, m1 and m2 are multiplied.
ADDMMS = _ops("addmm", "addmm_", "addmv", "addmv_", "baddbmm", "baddbmm_", "addbmm", "addbmm_")
#: conv(x, weight, bias, ...) and linear(x, weight, bias).
CONVOLUTIONS = _ops(
    "convolution", "_convolution", "_convolution_mode", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "mkldnn_convolution",
    "_slow_conv2d_forward", "thnn_conv2d", "slow_conv3d", "slow_conv3d_forward",
    "slow_conv_transpose2d", "slow_conv_transpose3d", "slow_conv_dilated2d",
    "slow_conv_dilated3d", "_nnpack_spatial_convolution", "cudnn_convolution",
    "cudnn_convolution_transpose", "miopen_convolution", "miopen_convolution_transpose",
    "miopen_depthwise_convolution", "_conv_depthwise2d", "conv_depthwise3d", "linear",
    "_mps_convolution", "_mps_convolution_transpose",
)  # fmt: skip
#: Fused kernels that take their weights as operands: matrices are weights, vectors biases.
FUSED = _ops(
    "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell", "mkldnn_rnn_layer", "mkldnn_rnn", "_cudnn_rnn", "miopen_rnn",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "quantized_lstm_cell",
    "_native_multi_head_attention", "_transformer_encoder_layer_fwd",
)  # fmt: skip
EMBEDDINGS = _ops("embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only")
#: norm op -> (index of the scale, index of the shift)
NORMS = {
    op: where
    for names, where in [
        (
            (
                "native_batch_norm",
                "_native_batch_norm_legit",
                "_native_batch_norm_legit_no_training",
                "batch_norm",
                "_batch_norm_impl_index",
                "cudnn_batch_norm",
                "miopen_batch_norm",
                "instance_norm",
                "native_group_norm",
            ),
            (1, 2),
        ),
        (("native_layer_norm", "layer_norm", "group_norm"), (2, 3)),
        (("rms_norm", "_fused_rms_norm"), (2, None)),
    ]
    for op in _ops(*names)
}
ADDS = _ops("add", "add_", "sub", "sub_")


@dataclass(frozen=True)
class Use:
    role: str
    op: str  # aten op name, e.g. "convolution", "addmm", "embedding"


class UseTracer(TorchDispatchMode):
    """Records, for each parameter, the roles in which the ops it reaches use it."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self._spans = sorted(
            (p.data_ptr(), p.data_ptr() + p.numel() * p.element_size(), name)
            for name, p in params.items()
            if p.numel() > 0
        )
        self._starts = [s[0] for s in self._spans]
        self._params = params
        self._copies = WeakIdKeyDictionary()  # tensor made from a parameter -> its name
        self._products = WeakIdKeyDictionary()  # outputs of weight ops (a bias is added to one)
        self.uses: dict[str, list[Use]] = {name: [] for name in params}
        #: parameters some op other than a layout change read (used, if not as a weight)
        self.touched: set[str] = set()

    def owner(self, t: object) -> str | None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return None
        if t in self._copies:
            return self._copies[t]
        if t.numel() == 0:
            return None
        i = bisect.bisect_right(self._starts, t.data_ptr()) - 1
        if i >= 0 and t.data_ptr() < self._spans[i][1]:
            name = self._spans[i][2]
            if self._params[name].device == t.device:
                return name
        return None

    def _use(self, t: object, role: str, op: str) -> None:
        name = self.owner(t)
        if name is not None:
            self.uses[name].append(Use(role, op))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        op = str(packet).removeprefix("aten.")
        is_product = False
        if packet in PASS_THROUGH:
            name = self.owner(args[0]) if args else None
            from_product = (
                bool(args) and isinstance(args[0], torch.Tensor) and (args[0] in self._products)
            )
            for o in flatten(out):
                if isinstance(o, torch.Tensor):
                    if name is not None:
                        self._copies[o] = name
                    if from_product:
                        self._products[o] = True
            return out
        for t in flatten(list(args) + list(kwargs.values())):
            name = self.owner(t)
            if name is not None:
                self.touched.add(name)
        if packet in PRODUCTS:
            for t in flatten(list(args) + list(kwargs.values())):
                self._use(t, WEIGHT, op)
            is_product = True
        elif packet in ADDMMS:
            self._use(args[0], BIAS, op)
            self._use(args[1], WEIGHT, op)
            self._use(args[2], WEIGHT, op)
            is_product = True
        elif packet in CONVOLUTIONS:
            self._use(args[1], WEIGHT, op)
            self._use(args[2] if len(args) > 2 else kwargs.get("bias"), BIAS, op)
            is_product = True
        elif packet in FUSED:
            for t in flatten(list(args) + list(kwargs.values())):
                if isinstance(t, torch.Tensor):
                    self._use(t, WEIGHT if t.dim() >= 2 else BIAS, op)
            is_product = True
        elif packet in EMBEDDINGS:
            self._use(args[0], EMBEDDING, op)
        elif packet in NORMS:
            scale, shift = NORMS[packet]
            self._use(_arg(args, kwargs, scale, "weight"), NORM_WEIGHT, op)
            if shift is not None:
                self._use(_arg(args, kwargs, shift, "bias"), NORM_BIAS, op)
        elif packet in ADDS and len(args) > 1:
            a, b = args[0], args[1]
            for this, other in ((a, b), (b, a)):
                if isinstance(other, torch.Tensor) and other in self._products:
                    self._use(this, BIAS, op)
        if is_product:
            for o in flatten(out):
                if isinstance(o, torch.Tensor):
                    self._products[o] = True
        return out


def _arg(args, kwargs, index: int, name: str):
    if index < len(args):
        return args[index]
    return kwargs.get(name)


def trace_uses(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], params: dict[str, torch.Tensor]
) -> UseTracer:
    """Run `module(*inputs)` once in eval mode, without gradients, and record every use of each
    of `params` (name -> tensor) in the returned tracer. The training flag is restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            tracer = UseTracer(params)
            try:
                with tracer:
                    module(*inputs)
                return tracer
            except Exception as exc:
                # TorchScript loses the model's own message under a dispatch mode: run it bare
                # (a model that cannot run fails again, fast, and says what went wrong)
                module(*inputs)
                first = exc
            # It runs bare: TorchScript's profiling executor can fail the *first* run of a
            # traced graph under a dispatch mode (scalar constants); the next run is specialised.
            tracer = UseTracer(params)
            try:
                with tracer:
                    module(*inputs)
            except Exception as exc:
                raise OpTraceFailed(f"{type(first).__name__}: {first}".splitlines()[0]) from exc
            return tracer
    finally:
        module.train(was_training)


class OpTraceFailed(Exception):
    """The model runs, but not under the dispatch-level trace (the caller falls back)."""


def role_of(uses: list[Use]) -> Use | None:
    """The strongest use of a parameter (None: no use the rule knows)."""
    for role in ROLE_PRIORITY:
        for use in uses:
            if use.role == role:
                return use
    return None


@dataclass(frozen=True)
class DenseParameter:
    """A parameter left dense, and why (the report lists every one)."""

    key: str  # published name
    param_name: str
    shape: tuple[int, ...]
    reason: str


def wanted(role: str, prune_bias: bool, prune_batchnorm: bool, prune_embedding: bool) -> bool:
    return {
        WEIGHT: True,
        EMBEDDING: prune_embedding,
        BIAS: prune_bias,
        NORM_WEIGHT: prune_batchnorm,
        NORM_BIAS: prune_bias and prune_batchnorm,
    }[role]


def matches(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pat) for pat in patterns for n in names)
