"""The homogeneity check refuses what it cannot prove, and every precision fallback is reachable.

The deep nets here have 40 layers of gain 2^4, so R ~ 2^160 overflows float32 and `auto` must
decide between power-of-two rescaling (homogeneous nets only) and float64. Each refused op must
send the run to float64 with a `precision_note`, and the masks then equal float64's exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from synflow import PruneConfig, prune
from synflow.errors import DegenerateFlowError
from synflow.model import LoadedModel
from synflow.scaling import trace_forward
from tests.synflow import nets

WIDTH, DEPTH = 64, 40
SHAPE = (1, WIDTH)
CONFIG = PruneConfig(sparsity=0.9, input_shape=SHAPE, iterations=2)


class Deep(nn.Module):
    """40 bias-free linear layers of gain 2^4 with ReLU, and one extra op after layer `at`."""

    def __init__(self, kind: str = "none", at: int = DEPTH // 2):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH))
        for layer in self.layers:
            nn.init.uniform_(layer.weight, -0.5, 0.5)  # mean |w| = 1/4: gain 64/4 = 2^4
        self.register_buffer("bound", torch.full((WIDTH,), 0.5))
        self.register_buffer("zero_bound", torch.zeros(WIDTH))
        self.register_buffer("int_ones", torch.ones(WIDTH, dtype=torch.int64))
        self.kind, self.at = kind, at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = torch.relu(layer(x))
            if i == self.at:
                x = self.extra_op(x)
        return x

    def extra_op(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kind
        if kind == "clamp_tensor":
            return torch.clamp_min(x, self.bound)
        if kind == "floor_div":  # on a residual branch: floor's gradient is zero
            return x + torch.div(x, 2, rounding_mode="floor")
        if kind == "int_add":
            return x + self.int_ones
        if kind == "long_round_trip":  # on a residual branch: no gradient through integers
            return x + x.long().float() / 4
        if kind == "half_round_trip":  # no gradient through float16 (it would overflow there)
            return x + x.detach().half().float() / 4
        if kind == "max_indices":
            return x.index_select(1, torch.max(x, 1)[1].repeat(x.shape[1]))
        if kind == "clamp_zero_tensor":
            return torch.clamp_min(x, self.zero_bound)
        if kind == "div_by_two":
            return x / 2
        if kind == "times_int":
            return x * self.int_ones
        if kind == "double_round_trip":
            return x + x.double().float() / 4
        return x


#: refused op -> the words of its reason; where it sits (round trips early: values stay small)
REFUSED = {
    "clamp_tensor": ("clamp_min with a non-zero tensor bound", DEPTH // 2),
    "floor_div": ("rounding division", DEPTH // 2),
    "int_add": ("add adds terms of different degrees", DEPTH // 2),
    "long_round_trip": ("cast to int64 (a dtype round trip)", 1),
    "half_round_trip": ("cast to float16 (a dtype round trip)", 1),
    "max_indices": ("integer or boolean values computed from an activation", DEPTH // 2),
}
ACCEPTED = ["none", "clamp_zero_tensor", "div_by_two", "times_int", "double_round_trip"]


def as_model(module: nn.Module, how: str, shape=SHAPE) -> LoadedModel:
    module = module.eval()
    if how == "fx":
        return LoadedModel(
            format="torchscript", module=torch.fx.symbolic_trace(module), source=Path("<fx>")
        )
    if how == "trace":
        traced = torch.jit.trace(module, torch.ones(shape), check_trace=False)
        return nets.as_loaded(traced, "eager")
    return nets.as_loaded(module, how, shape)


def _state(module):
    return {
        id(t): t
        for t in list(module.parameters()) + list(module.buffers())
        if t.is_floating_point()
    }


@pytest.mark.parametrize("how", ["eager", "script", "trace", "fx"])
@pytest.mark.parametrize("kind", list(REFUSED))
def test_tracer_refuses(kind, how):
    words, at = REFUSED[kind]
    module = as_model(nets.seeded(Deep, kind=kind, at=at), how).module
    trace = trace_forward(module, torch.ones(SHAPE), _state(module))
    assert trace.error is not None and words in trace.error, trace.error


@pytest.mark.parametrize("how", ["eager", "script"])
@pytest.mark.parametrize("kind", ACCEPTED)
def test_tracer_accepts_what_it_can_prove(kind, how):
    module = as_model(nets.seeded(Deep, kind=kind), how).module
    trace = trace_forward(module, torch.ones(SHAPE), _state(module))
    assert trace.error is None


#: every refused op in eager and FX form; the issue's clamp also scripted and traced (the tracer
#: tests above see every op in all four forms)
RUN_CASES = [(kind, how) for kind in REFUSED for how in ("eager", "fx")] + [
    ("clamp_tensor", "script"),
    ("clamp_tensor", "trace"),
]


@pytest.mark.parametrize(("kind", "how"), RUN_CASES, ids=[f"{k}-{h}" for k, h in RUN_CASES])
def test_refused_op_runs_float64_with_a_note_and_float64_masks(kind, how):
    words, at = REFUSED[kind]
    module = nets.seeded(Deep, kind=kind, at=at)
    auto = prune(as_model(module, how), CONFIG, precision="auto")
    exact = prune(as_model(module, how), CONFIG, precision="float64")
    assert auto.precision == "float64" and auto.scale is None
    assert auto.precision_note.startswith("not positively homogeneous: ")
    assert words in auto.precision_note
    assert list(auto.masks) == list(exact.masks)
    for key in exact.masks:
        assert torch.equal(auto.masks[key], exact.masks[key]), key


def test_an_accepted_op_still_rescales_in_float32():
    auto = prune(as_model(nets.seeded(Deep, kind="clamp_zero_tensor"), "eager"), CONFIG)
    assert auto.precision == "float32" and auto.scale is not None
    assert auto.precision_note is None


# --- every precision note and fallback message ---------------------------------------------


class TinyBranch(nn.Module):
    """A deep branch (R ~ 2^160) plus a parallel one of weights 2^-120: both of degree 1, so the
    net is homogeneous, but its values span more orders than float32 holds."""

    def __init__(self):
        super().__init__()
        self.deep = Deep()
        self.tiny = nn.Linear(WIDTH, WIDTH, bias=False)
        nn.init.constant_(self.tiny.weight, 2.0**-120)

    def forward(self, x):
        return self.deep(x) + self.tiny(x)


class ConstantOverflow(nn.Module):
    """A gain computed from a parameter, g^2 / (g^2 + 1) ~ 1: of degree 0, so no power of two
    rescales it, and g^2 = 10^40 overflows float32 (inf / inf) but not float64."""

    def __init__(self):
        super().__init__()
        self.deep = Deep()
        self.gain = nn.Parameter(torch.tensor(1e20))

    def forward(self, x):
        square = self.gain * self.gain
        return self.deep(x) * (square / (square + 1))


class Branches(nn.Module):
    """Branches on the value of an activation (`.item()`)."""

    def __init__(self):
        super().__init__()
        self.deep = Deep()

    def forward(self, x):
        x = self.deep(x)
        if float(x.sum()) > 0:
            return x
        return -x


class BatchStatistics(nn.Module):
    """A BatchNorm that always uses batch statistics (track_running_stats=False: training mode
    even in eval), after a padded conv (so positions differ) and before the deep part."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, WIDTH, 3, padding=1)
        self.bn = nn.BatchNorm1d(WIDTH, track_running_stats=False)
        self.deep = Deep()

    def forward(self, x):  # x: (1, 4, 8)
        x = self.bn(self.conv(x))
        return self.deep(x.transpose(1, 2))


class Huge(nn.Module):
    """Weights of 10^30: R overflows float64 too."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(12)))
        for layer in self.layers:
            nn.init.constant_(layer.weight, 1e30)

    def forward(self, x):
        return self.layers(x)


NOTES = {
    # name: (builder, input shape, note, hows)
    "spans_more_orders": (
        TinyBranch,
        SHAPE,
        "the flow spans more binary orders than float32 holds",
        ("eager", "script", "trace", "fx"),
    ),
    "overflowed_even_rescaled": (
        ConstantOverflow,
        SHAPE,
        "float32 overflowed even with power-of-two rescaling",
        ("eager", "script", "trace", "fx"),
    ),
    "branch_on_activation": (
        Branches,
        SHAPE,
        "not positively homogeneous: the model branches on the value of an activation",
        ("eager", "script"),  # tracing and symbolic tracing bake the branch in
    ),
    "batchnorm_training": (
        BatchStatistics,
        (1, 4, 8),
        "not positively homogeneous: batch norm in training mode (batch statistics)",
        ("eager", "script", "trace", "fx"),
    ),
}
NOTE_CASES = [(name, how) for name, case in NOTES.items() for how in case[3]]


@pytest.mark.parametrize(("case", "how"), NOTE_CASES, ids=[f"{c}-{h}" for c, h in NOTE_CASES])
def test_each_precision_note_is_reached(case, how):
    builder, shape, note, _ = NOTES[case]
    module = nets.seeded(builder)
    config = CONFIG.model_copy(update={"input_shape": shape})
    auto = prune(as_model(module, how, shape), config, precision="auto")
    assert auto.precision == "float64" and auto.scale is None
    assert auto.precision_note == note
    # the traced ConstantOverflow fails its first run under a dispatch mode (TorchScript's
    # profiling executor and its scalar constant): discovery retries and still uses the ops
    assert auto.discovery == "ops"
    exact = prune(as_model(module, how, shape), config, precision="float64")
    for key in exact.masks:
        assert torch.equal(auto.masks[key], exact.masks[key]), key


@pytest.mark.parametrize("precision", ["auto", "float64"])
@pytest.mark.parametrize("how", ["eager", "script", "fx"])
def test_float64_overflow_is_a_clear_error(precision, how):
    config = PruneConfig(sparsity=0.5, input_shape=SHAPE, iterations=2)
    with pytest.raises(DegenerateFlowError, match=r"synaptic flow overflows float64 on this model"):
        prune(as_model(nets.seeded(Huge), how), config, precision=precision)


def test_float32_overflow_without_auto_is_a_clear_error():
    with pytest.raises(DegenerateFlowError, match="synaptic flow overflows float32 on this model"):
        prune(as_model(nets.seeded(Deep), "eager"), CONFIG, precision="float32")
