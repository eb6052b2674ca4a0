"""Exact power-of-two rescaling of the linearised network, so that float32 cannot overflow.

SynFlow's linearised network multiplies the all-ones input by |W| layer after layer; on deep
networks (torchvision ResNet-50 at 224x224: R ~ 2^241) float32 overflows. Multiplying by a power
of two is exact in floating point, so when the network is *positively homogeneous* in its input
(f(2^a x) = 2^(a k) f(x)) we can feed 2^a instead of 1 and seed the backward pass with 2^b instead
of 1: every forward value is then exactly 2^(a k) times, every gradient 2^(a j + b) times, and
every score exactly 2^(a deg(R) + b) times the value that float32 with an unbounded exponent would
compute. The ranking, ties and mantissas included, is that of the unbounded float32 computation.

Homogeneity holds for convolutions and matrix products, ReLU, pooling, views, and adds of branches
of equal degree. Additive constants break it unless they are scaled too: a bias added to a tensor
of degree k is scaled by 2^(a k); a BatchNorm in eval mode computes (x - mu) / sqrt(var + eps) *
gamma + beta, so mu and beta take the degree of x (gamma, var and eps stay as they are).

`trace_homogeneity` runs one forward pass under a `TorchDispatchMode` and checks every aten op the
model executes (eager, TorchScript and FX modules alike), assigns each parameter and buffer the
degree its use requires, and records the magnitude range of every intermediate value so that
`choose_exponents` can place them all inside float32's normal range. Any op it does not know, an
op that is not homogeneous in its inputs (sigmoid, LayerNorm's eps, adding a non-zero constant),
a parameter needed at two different degrees, or a value-dependent branch (`.item()` on an
activation) makes the network "not homogeneous", and the caller falls back to float64.

The check is an allow-list: an op is accepted only when the rule for it proves the output
homogeneous, arguments included. So a tensor bound of `clamp_min` (unless all zero), a rounding
division (`div(..., rounding_mode=...)`), an integer or boolean tensor added to an activation,
a cast of an activation to an integer, boolean or half-precision dtype (`x.long().float()`
rounds, `x.half()` has a smaller range), dropout in training mode, and any integer or boolean
value computed from an activation (indices of a max, say) used later are all refused.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from synflow import kernels

aten = torch.ops.aten

#: log2 of the smallest normal and (just below) the largest finite float32.
FLOAT32_MIN_EXP = -126
FLOAT32_MAX_EXP = 127
#: Binary orders of magnitude kept free at both ends, for values the trace cannot see (partial
#: sums inside a kernel, the drift of magnitudes as pruning proceeds).
DEFAULT_MARGIN = 4
#: Binary orders a scaled additive constant (bias, BatchNorm mean/shift) may reach into the
#: subnormal range: float32 subnormals reach 2^-149, 23 orders below the smallest normal.
CONSTANT_UNDERFLOW_ALLOWANCE = 23 - DEFAULT_MARGIN


def _ops(*names: str) -> frozenset:
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


#: Output has the degree of the first tensor argument (shape/layout changes, copies).
SAME_AS_FIRST = _ops(
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "expand_as",
    "squeeze", "unsqueeze", "flatten", "alias", "detach", "slice", "select", "narrow",
    "as_strided", "contiguous", "clone", "_to_copy", "lift_fresh", "unfold", "split",
    "split_with_sizes", "chunk", "unbind", "index_select", "repeat", "dropout", "feature_dropout",
    "alpha_dropout", "_reshape_alias", "view_as", "reshape_as", "flip", "roll",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "mean", "sum", "amax", "amin", "max", "min",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d",
    "upsample_bilinear2d", "upsample_trilinear3d", "pixel_shuffle", "pixel_unshuffle",
    "relu", "relu_", "abs", "abs_", "neg", "neg_", "channel_shuffle", "native_dropout",
)  # fmt: skip
#: Degree = sum of the two operands' degrees (bilinear products).
PRODUCTS = _ops("mm", "bmm", "matmul", "mv", "dot", "mul", "mul_")
#: All floating tensor operands must share one degree (or be all zero).
SAME_DEGREE = _ops(
    "add", "add_", "sub", "sub_", "cat", "stack", "maximum", "minimum", "where", "hstack",
    "vstack", "concat", "concatenate",
)  # fmt: skip
#: Homogeneous only when the extra scalar argument (threshold, slope, pad value) allows it.
RELU_LIKE = _ops("leaky_relu", "leaky_relu_", "clamp_min", "clamp_min_", "threshold",
                 "threshold_", "constant_pad_nd", "pad")  # fmt: skip
FACTORIES = _ops(
    "ones", "zeros", "full", "empty", "ones_like", "zeros_like", "full_like", "empty_like",
    "scalar_tensor", "arange", "new_ones", "new_zeros", "new_full", "new_empty", "empty_strided",
    "zeros_like", "fill", "fill_",
)  # fmt: skip
BATCH_NORMS = _ops(
    "native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "batch_norm",
    "_batch_norm_impl_index", "cudnn_batch_norm", "miopen_batch_norm",
)  # fmt: skip
CONVOLUTIONS = _ops(
    "convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "mkldnn_convolution", "_slow_conv2d_forward",
    "thnn_conv2d", "slow_conv3d", "linear", "_convolution_mode",
)  # fmt: skip
ADDMMS = _ops("addmm", "addmv", "baddbmm", "addbmm")
#: Casts: exact (up to rounding that commutes with powers of two) only into float32 / float64.
CASTS = _ops("_to_copy", "to", "type_as")
EXACT_DTYPES = frozenset({torch.float32, torch.float64})
DROPOUTS = _ops("native_dropout", "dropout", "feature_dropout", "alpha_dropout")


class NotHomogeneous(Exception):
    """The network is not positively homogeneous in its input; the reason is the message."""


@dataclass
class Range:
    """log2 of the smallest non-zero and the largest magnitude of some values, and how they scale:
    by 2^(a * a_degree + b * b_degree) under input scale 2^a and backward seed 2^b."""

    lo: float
    hi: float
    a_degree: int
    b_degree: int = 0


@dataclass
class Trace:
    output: object
    error: str | None  # why the network is not positively homogeneous; None when it is
    output_degree: int = 1
    #: degree of each parameter/buffer the forward pass used, by id() of the live tensor
    degrees: dict[int, int] = field(default_factory=dict)
    ranges: list[Range] = field(default_factory=list)
    #: forward intermediates (tensor, degree), for hooks that record the backward magnitudes
    activations: list[tuple[torch.Tensor, int]] = field(default_factory=list)


def log2_range(t: torch.Tensor) -> tuple[float, float] | None:
    """(log2 min non-zero |t|, log2 max |t|), or None when t has no non-zero finite element."""
    if t is None or not t.is_floating_point() or t.numel() == 0:
        return None
    t = t.detach()
    low, high = (float(v) for v in torch.aminmax(t))
    if low >= 0:  # (not NaN) the linearised network's values and gradients: no |.| copy
        if high == 0.0:
            return None
        lo = low if low > 0 else kernels.min_positive(t)
        if not math.isfinite(high):
            return (math.log2(lo) if math.isfinite(lo) else math.inf, math.inf)
        return math.log2(lo), math.log2(high)
    a = t.abs()
    hi = float(a.amax())
    if hi == 0.0:
        return None
    lo = float(torch.where(a > 0, a, torch.full_like(a, math.inf)).amin())
    if not math.isfinite(hi):
        return (math.log2(lo) if math.isfinite(lo) else math.inf, math.inf)
    return math.log2(lo), math.log2(hi)


class _Free:
    """Degree of a parameter (or view of one) not yet fixed by any use."""

    def __init__(self, key: int):
        self.key = key


class HomogeneityTracer(TorchDispatchMode):
    """Follows the degree (in the input scale) of every tensor through one forward pass."""

    def __init__(self, state: dict[int, torch.Tensor], record_ranges: bool = True):
        super().__init__()
        #: (first byte, end byte, id()) of every parameter/buffer, sorted: a view of one lies
        #: inside its interval (several may share one storage, e.g. a flat buffer)
        self._spans = sorted(
            (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), key)
            for key, t in state.items()
            if t.numel() > 0
        )
        self._starts = [span[0] for span in self._spans]
        self._state = state
        self.degrees: dict[int, int] = {}
        self._deg = WeakIdKeyDictionary()
        self.record_ranges = record_ranges
        self.ranges: list[Range] = []
        self.activations: list[tuple[torch.Tensor, int]] = []
        self.error: str | None = None
        #: integer/boolean tensors computed from an activation (their values depend on it)
        self._tainted = WeakIdKeyDictionary()

    # -- degrees ------------------------------------------------------------------------------
    def mark(self, t: torch.Tensor, degree: int) -> None:
        self._deg[t] = degree

    def degree_of(self, t: torch.Tensor) -> int | _Free:
        if t in self._deg:
            return self._deg[t]
        key = self._owner(t)
        if key is None:
            return 0  # a constant of the graph
        if key in self.degrees:
            return self.degrees[key]
        return _Free(key)

    def _owner(self, t: torch.Tensor) -> int | None:
        if t.numel() == 0 or t.device.type == "meta":
            return None
        i = bisect.bisect_right(self._starts, t.data_ptr()) - 1
        if i >= 0 and t.data_ptr() < self._spans[i][1]:
            return self._spans[i][2]
        return None

    def _fix(self, d: int | _Free, degree: int, why: str) -> int:
        if isinstance(d, _Free):
            known = self.degrees.setdefault(d.key, degree)
            if known != degree:
                raise NotHomogeneous(f"a parameter is used at two degrees ({known} and {degree})")
            return degree
        if d != degree:
            raise NotHomogeneous(why)
        return d

    def _fixed(self, d: int | _Free) -> int:
        return self._fix(d, 0, "") if isinstance(d, _Free) else d

    def _same(self, tensors: list[torch.Tensor], what: str) -> int:
        """One degree for additive operands; all-zero constants fit any degree."""
        degs = [self.degree_of(t) for t in tensors]
        known = {d for d in degs if not isinstance(d, _Free)}
        nonzero_known = {
            d for d, t in zip(degs, tensors, strict=True) if not isinstance(d, _Free) and _any(t)
        }
        if len(nonzero_known) > 1:
            raise NotHomogeneous(f"{what} adds terms of different degrees {sorted(nonzero_known)}")
        target = next(iter(nonzero_known)) if nonzero_known else max(known, default=0)
        for d in degs:
            if isinstance(d, _Free):
                self._fix(d, target, "")
        return target

    # -- dispatch -----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.error is not None:
            return out
        try:
            self._check_arguments(func, args, kwargs, out)
            degree = self._rule(func, args, kwargs)
        except NotHomogeneous as exc:
            self.error = str(exc)  # raising here would surface as the model's own error
            return out
        self._taint(args, kwargs, out)
        if isinstance(degree, _Free):
            if func.overloadpacket not in (aten.detach, aten.alias) and any(
                isinstance(o, torch.Tensor) and self._owner(o) is None for o in flatten(out)
            ):
                degree = self._fixed(degree)  # a copy, not a view: its use no longer tells
            else:
                return out
        for o in flatten(out):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                self._deg[o] = degree
                if self.record_ranges and degree != 0:
                    r = log2_range(o)
                    if r is not None:
                        self.ranges.append(Range(r[0], r[1], degree))
                    self.activations.append((o, degree))
        return out

    def _check_arguments(self, func, args, kwargs, out) -> None:
        """What the per-op rules below do not see: integer and boolean operands, dtypes."""
        packet = func.overloadpacket
        name = str(packet).removeprefix("aten.")
        operands = [t for t in flatten(list(args) + list(kwargs.values()))]
        if any(isinstance(t, torch.Tensor) and t in self._tainted for t in operands):
            if packet is aten._local_scalar_dense or packet is aten.is_nonzero:
                raise NotHomogeneous("the model branches on the value of an activation")
            raise NotHomogeneous(
                f"{name} uses integer or boolean values computed from an activation"
            )
        first = next((t for t in operands if _is_float(t)), None)
        if first is None or not self._nonzero_degree(first):
            return
        if packet in CASTS:
            dtypes = {o.dtype for o in flatten(out) if isinstance(o, torch.Tensor)}
            if not dtypes <= EXACT_DTYPES:
                got = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
                raise NotHomogeneous(f"an activation is cast to {got} (a dtype round trip)")
        if packet in (aten.div, aten.div_) and (
            kwargs.get("rounding_mode") is not None or any(isinstance(a, str) for a in args)
        ):
            raise NotHomogeneous("div with rounding_mode (rounding division)")
        if packet in (aten.clamp_min, aten.clamp_min_) and len(args) > 1:
            bound = args[1]
            if isinstance(bound, torch.Tensor) and _any(bound):
                raise NotHomogeneous("clamp_min with a non-zero tensor bound")
        if packet in DROPOUTS:
            p, train = (args[1], args[2]) if len(args) > 2 else (0.0, False)
            if train and p:
                raise NotHomogeneous(f"{name} in training mode (random)")

    def _nonzero_degree(self, t: torch.Tensor) -> bool:
        d = self.degree_of(t)
        return not isinstance(d, _Free) and d != 0

    def _taint(self, args, kwargs, out) -> None:
        """Integer/boolean outputs of an op that read an activation depend on its value."""
        outs = [
            o for o in flatten(out) if isinstance(o, torch.Tensor) and not o.is_floating_point()
        ]
        if not outs:
            return
        inputs = [
            t for t in flatten(list(args) + list(kwargs.values())) if isinstance(t, torch.Tensor)
        ]
        if any(
            (t.is_floating_point() and self._nonzero_degree(t)) or t in self._tainted
            for t in inputs
        ):
            for o in outs:
                self._tainted[o] = True

    def _rule(self, func, args, kwargs) -> int:
        packet = func.overloadpacket
        tensors = [t for t in flatten(list(args) + list(kwargs.values())) if _is_float(t)]
        if packet in FACTORIES:
            return 0
        if packet is aten._local_scalar_dense or packet is aten.is_nonzero:
            if tensors and self._fixed(self.degree_of(tensors[0])) != 0:
                raise NotHomogeneous("the model branches on the value of an activation")
            return 0
        degs = [self.degree_of(t) for t in tensors]
        if packet in SAME_AS_FIRST and degs and isinstance(degs[0], _Free):
            return degs[0]  # a view or copy of a parameter: still free (found by storage)
        if all(isinstance(d, _Free) or d == 0 for d in degs):
            for d in degs:
                self._fixed(d)  # parameters used only among constants: degree 0
            return 0
        name = str(packet).removeprefix("aten.")
        if packet in SAME_AS_FIRST:
            if packet in (aten.amax, aten.amin, aten.max, aten.min) and len(tensors) > 1:
                return self._same(tensors, name)
            return self._fixed(degs[0])
        if packet in RELU_LIKE:
            extra = [a for a in args[1:] if isinstance(a, int | float)]
            if packet in (aten.leaky_relu, aten.leaky_relu_):
                extra = []  # any slope keeps positive homogeneity
            if any(v != 0 for v in extra) or any(
                isinstance(a, list | tuple) and any(v != 0 for v in a if isinstance(v, float))
                for a in args[2:]
            ):
                raise NotHomogeneous(f"{name} with a non-zero constant")
            return self._fixed(degs[0])
        if packet in SAME_DEGREE:
            # every tensor operand counts, integer and boolean ones as constants of degree 0
            operands = [t for t in flatten(list(args)) if isinstance(t, torch.Tensor)]
            scalars = [a for a in args[1:] if isinstance(a, int | float)]
            if packet is aten.where:
                operands = operands[1:]  # the condition selects, it is not added
            elif packet not in (aten.add, aten.add_, aten.sub, aten.sub_):
                scalars = []  # cat/stack's dim, not a term
            if any(v != 0 for v in scalars):
                raise NotHomogeneous(f"{name} of a non-zero constant")
            if len(operands) == 1:
                return self._fixed(self.degree_of(operands[0]))
            return self._same(operands, name)
        if packet in PRODUCTS:
            if len(tensors) == 1:  # times a Python scalar
                return self._fixed(degs[0])
            return sum(self._fixed(d) for d in degs[:2])
        if packet in (aten.div, aten.div_):
            if len(tensors) == 1:
                return self._fixed(degs[0])
            return self._fixed(degs[0]) - self._fixed(degs[1])
        if packet in CONVOLUTIONS:
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            d = self._fixed(self.degree_of(x)) + self._fixed(self.degree_of(w))
            if _is_float(bias) and _any(bias):
                self._fix(self.degree_of(bias), d, f"{name} bias of degree != output degree")
            return d
        if packet in ADDMMS:
            c, m1, m2 = args[0], args[1], args[2]
            d = self._fixed(self.degree_of(m1)) + self._fixed(self.degree_of(m2))
            beta = kwargs.get("beta", 1)
            if _any(c) and beta != 0:
                self._fix(self.degree_of(c), d, f"{name} adds a term of another degree")
            return d
        if packet in BATCH_NORMS:
            return self._batch_norm(packet, args, kwargs)
        raise NotHomogeneous(f"{name} is not known to be positively homogeneous")

    def _batch_norm(self, packet, args, kwargs) -> int:
        if packet is aten._native_batch_norm_legit and len(args) > 3 and isinstance(args[3], bool):
            x, weight, bias = args[:3]  # the no_stats overload: batch statistics only
            mean = var = None
            training = args[3]
        else:
            x, weight, bias, mean, var = args[:5]
            no_training = packet is aten._native_batch_norm_legit_no_training
            training = False if no_training else args[5]
        if training:
            raise NotHomogeneous("batch norm in training mode (batch statistics)")
        dx = self._fixed(self.degree_of(x))
        dw = self._fixed(self.degree_of(weight)) if _is_float(weight) else 0
        if _is_float(var):
            self._fix(self.degree_of(var), 0, "batch norm variance of non-zero degree")
        if _is_float(mean) and _any(mean):
            self._fix(self.degree_of(mean), dx, "batch norm mean of another degree than x")
        if _is_float(bias) and _any(bias):
            self._fix(self.degree_of(bias), dx + dw, "batch norm shift of another degree")
        return dx + dw


def _is_float(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _any(t: torch.Tensor) -> bool:
    return bool(t.detach().ne(0).any())


def flatten(x: object) -> list:
    """The leaves of nested lists and tuples of op arguments or results, in order."""
    if isinstance(x, list | tuple):
        out = []
        for v in x:
            out.extend(flatten(v))
        return out
    return [x]


def choose_exponents(
    ranges: list[Range], margin: int = DEFAULT_MARGIN
) -> tuple[int, int, int] | None:
    """(a, b, slack): the input exponent a and seed exponent b that put every range inside the
    float32 normal range with the most slack (binary orders to spare); None if the slack would be
    below `margin`, i.e. when the values span too many orders for float32."""
    if any(not (math.isfinite(r.lo) and math.isfinite(r.hi)) for r in ranges):
        return None
    if not ranges:
        return 0, 0, FLOAT32_MAX_EXP
    # only the extremes of each (a_degree, b_degree) group constrain the choice
    groups: dict[tuple[int, int], Range] = {}
    for r in ranges:
        g = groups.setdefault(
            (r.a_degree, r.b_degree), Range(r.lo, r.hi, *(r.a_degree, r.b_degree))
        )
        g.lo, g.hi = min(g.lo, r.lo), max(g.hi, r.hi)
    ranges = list(groups.values())
    best: tuple[int, int, int] | None = None
    a_limit = 2 * (FLOAT32_MAX_EXP - FLOAT32_MIN_EXP) + 2048
    for a in range(-a_limit, a_limit + 1):
        # constraints on b: lo + ja + mb >= MIN + s and hi + ja + mb <= MAX - s, m in {0, 1}
        slack_a = math.inf
        b_lo, b_hi = -math.inf, math.inf
        for r in ranges:
            lo, hi = r.lo + r.a_degree * a, r.hi + r.a_degree * a
            if r.b_degree == 0:
                slack_a = min(slack_a, lo - FLOAT32_MIN_EXP, FLOAT32_MAX_EXP - hi)
            else:
                b_lo = max(b_lo, FLOAT32_MIN_EXP - lo)
                b_hi = min(b_hi, FLOAT32_MAX_EXP - hi)
        if slack_a < margin:
            continue
        if b_lo == -math.inf:
            b, slack_b = 0, math.inf
        else:
            b = math.floor((b_lo + b_hi) / 2)
            slack_b = min(b - b_lo, b_hi - b)
        slack = math.floor(min(slack_a, slack_b))
        if slack >= margin and (best is None or slack > best[2]):
            best = (a, b, slack)
    return best


def trace_forward(
    module: torch.nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...],
    state: dict[int, torch.Tensor],
    inner: TorchDispatchMode | None = None,
) -> Trace:
    """Run `module(*x)` (floating inputs of degree 1) under the tracer; `state` = id -> every
    parameter/buffer. `inner`: a mode entered inside the tracer (it sees the ops that mode issues
    instead of the ones it replaces: `synflow.linearise`).

    Returns the output with the degree of every state tensor the pass used, the magnitude ranges
    of the forward values (and of the scaled constants), and the intermediates for backward hooks;
    or the reason the network is not positively homogeneous.
    """
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)

    def marked() -> HomogeneityTracer:
        tracer = HomogeneityTracer(state)
        for t in xs:
            if t.is_floating_point():
                tracer.mark(t, 1)
        return tracer

    tracer = marked()
    try:
        with tracer, inner or contextlib.nullcontext():
            output = module(*xs)
    except Exception:
        # TorchScript's profiling executor can fail the first run of a traced graph under a
        # dispatch mode (scalar constants); a bare run (which raises the model's own error if it
        # cannot run) specialises the graph, and the traced run is tried once more
        module(*xs)
        tracer = marked()
        with tracer, inner or contextlib.nullcontext():
            output = module(*xs)
    trace = Trace(output, tracer.error)
    if trace.error is not None:
        return trace
    degrees = {
        tracer._fixed(tracer.degree_of(t))
        for t in flatten(_tensors_in(output))
        if _is_float(t) and _any(t)
    }
    if len(degrees) > 1:
        trace.error = f"the outputs have different degrees {sorted(degrees)}"
        return trace
    trace.output_degree = degrees.pop() if degrees else 1
    trace.degrees = dict(tracer.degrees)
    trace.ranges = list(tracer.ranges)
    trace.activations = tracer.activations
    for key, degree in trace.degrees.items():
        r = log2_range(state[key]) if degree != 0 else None
        if r is not None:
            # A scaled constant only joins sums with values of its degree: its own tiny entries
            # may go subnormal (they lie below those sums' resolution), but none may vanish.
            trace.ranges.append(Range(r[0] + CONSTANT_UNDERFLOW_ALLOWANCE, r[1], degree))
    return trace


def _tensors_in(x: object) -> list:
    if isinstance(x, dict):
        return [_tensors_in(v) for v in x.values()]
    if isinstance(x, list | tuple):
        return [_tensors_in(v) for v in x]
    return [x]
