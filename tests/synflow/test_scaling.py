"""Power-of-two rescaling: exact multiples of the float32 scores, and refused where unsound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synflow import PruneConfig, prune
from synflow.masks import Masks
from synflow.scaling import Range, choose_exponents, trace_forward
from synflow.scorers.synflow import SynFlowScorer
from tests.synflow import nets


def _scorer(loaded, shape, precision="float32"):
    ctx, params = nets.scoring_context(
        loaded, shape, precision, prune_bias=True, prune_batchnorm=True
    )
    return SynFlowScorer(ctx), params


@pytest.mark.parametrize("how", ["eager", "script", "trace"])
def test_rescaled_scores_are_exact_power_of_two_multiples(how):
    """Biases, BatchNorm with non-zero mean and shift, residual adds, pooling: every score of
    the rescaled float32 pass is bit for bit 2^(a + b) times the unscaled one."""
    shape = (1, 3, 8, 8)
    model = nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=4), seed=4)
    scorer, params = _scorer(nets.as_loaded(model, how, shape), shape)
    masks = Masks.dense(params)
    # prune a few weights so that zeros take part too
    first = next(iter(masks))
    masks[first].view(-1)[::3] = False
    with scorer:
        plain = scorer.score(masks)
        flow = scorer.flow
        scorer.set_scale(masks, -70, -45)
        scaled = scorer.score(masks)
        assert scorer.flow == flow
    for key in plain:
        assert torch.equal(scaled[key], plain[key] * 2.0**-115), key
    assert any(bool((s > 0).any()) for s in plain.values())


def test_auto_rescales_an_overflowing_net_and_keeps_the_float64_ranking():
    """40 layers of gain 2^4 overflow float32 (R ~ 2^160) but not float64."""
    widths = (64,) * 41 + (10,)
    model = nets.seeded(nets.mlp, seed=0, bias=True, widths=widths)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.uniform_(-0.5, 0.5)  # mean |w| = 1/4, gain 64/4 = 2^4
    config = PruneConfig(sparsity=0.9, input_shape=(1, 64), iterations=10)
    auto = prune(nets.as_loaded(model), config, precision="auto")
    exact = prune(nets.as_loaded(model), config, precision="float64")
    assert auto.precision == "float32" and auto.scale is not None, auto.precision_note
    inter = sum(int((auto.masks[k] & exact.masks[k]).sum()) for k in exact.masks)
    union = sum(int((auto.masks[k] | exact.masks[k]).sum()) for k in exact.masks)
    assert inter / union >= 0.995
    with pytest.raises(Exception, match="overflows float32"):
        prune(nets.as_loaded(model), config, precision="float32")


class Shifted(nn.Module):
    """Adds a non-zero constant: not positively homogeneous."""

    def __init__(self, depth: int = 40):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(64, 64, bias=False) for _ in range(depth))
        for layer in self.layers:
            nn.init.uniform_(layer.weight, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x)) + 1.0
        return x


def test_non_homogeneous_overflow_falls_back_to_float64():
    config = PruneConfig(sparsity=0.5, input_shape=(1, 64), iterations=2)
    result = prune(nets.as_loaded(nets.seeded(Shifted)), config, precision="auto")
    assert result.precision == "float64"
    assert result.scale is None
    assert "not positively homogeneous" in result.precision_note


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()), "sigmoid"),
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "layer_norm"),
        (Shifted(2), "non-zero constant"),
    ],
)
def test_tracer_refuses_non_homogeneous_ops(module, reason):
    module = torch.jit.script(module.eval())
    state = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    trace = trace_forward(module, torch.ones(1, 4 if reason != "non-zero constant" else 64), state)
    assert trace.error is not None and reason in trace.error


def test_tracer_assigns_additive_constants_their_degree():
    model = nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=1))
    module = torch.jit.script(model.eval())
    names = {id(t): n for n, t in list(module.named_parameters()) + list(module.named_buffers())}
    state = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    trace = trace_forward(module, torch.ones(1, 3, 8, 8), state)
    assert trace.error is None and trace.output_degree == 1
    degree = {names[k]: d for k, d in trace.degrees.items()}
    assert degree["stem.weight"] == 0 and degree["stem.bias"] == 1
    assert degree["bn.weight"] == 0 and degree["bn.running_var"] == 0
    assert degree["bn.running_mean"] == 1 and degree["bn.bias"] == 1
    assert degree["fc.weight"] == 0 and degree["fc.bias"] == 1


def test_choose_exponents_centres_and_refuses_too_wide_spans():
    a, b, slack = choose_exponents([Range(0, 200, 1, 0), Range(100, 300, 1, 1)])
    assert -126 + slack <= a and 200 + a <= 127 - slack
    assert 100 + a + b >= -126 and 300 + a + b <= 127
    assert choose_exponents([Range(-10, 250, 1, 0)]) is None


def _log2_range_reference(t: torch.Tensor):
    """log2 of the smallest non-zero and the largest |t|, written the obvious way."""
    a = t.abs()
    hi = float(a.amax())
    if hi == 0.0:
        return None
    lo = float(torch.where(a > 0, a, torch.full_like(a, math.inf)).amin())
    if not math.isfinite(hi):
        return (math.log2(lo) if math.isfinite(lo) else math.inf, math.inf)
    return math.log2(lo), math.log2(hi)


def test_log2_range_fast_path_for_non_negative_values_equals_reference() -> None:
    from synflow.scaling import log2_range

    g = torch.Generator().manual_seed(0)
    cases = [
        torch.zeros(5),
        torch.tensor([0.0, 1e-30, 3.0]),
        torch.tensor([2.0, 3.0]),
        torch.tensor([-1.0, 0.0, 4.0]),
        torch.tensor([0.0, math.inf]),
        torch.tensor([math.inf]),
        torch.tensor([-math.inf, 1.0]),
        torch.tensor([1.0, math.nan]),
        torch.rand(100, generator=g) * (torch.rand(100, generator=g) > 0.5),
        torch.randn(100, dtype=torch.float64, generator=g),
    ]
    for t in cases:
        assert log2_range(t) == _log2_range_reference(t), t


def test_fewer_recentres_keep_the_masks(monkeypatch):
    """Re-centring the scale (a traced pass) once R has moved by the slack the last trace left,
    rather than every few orders, changes no mask: every rescaled score is the same power-of-two
    multiple either way, so the rankings agree bit for bit when no value left float32's range."""
    from synflow.scorers import synflow as synflow_scorer

    widths = (64,) * 41 + (10,)
    model = nets.seeded(nets.mlp, seed=1, bias=True, widths=widths)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.uniform_(-0.5, 0.5)  # R ~ 2^160: rescaled float32
    config = PruneConfig(sparsity=0.999, input_shape=(1, 64), iterations=40)
    traces = []
    recentre = SynFlowScorer._recentre_from_trace

    def counted(self):
        traces.append(self.rounds)
        recentre(self)

    monkeypatch.setattr(SynFlowScorer, "_recentre_from_trace", counted)
    runs = {}
    for rule in ("adaptive", "every order"):
        if rule == "every order":
            monkeypatch.setattr(
                synflow_scorer.SynFlowScorer, "_recentre_drift", property(lambda s: 1.0)
            )
        traces.clear()
        result = prune(nets.as_loaded(model), config, precision="auto")
        assert result.precision == "float32" and result.scale is not None
        runs[rule] = (result.masks, len(traces))
    (adaptive, few), (frequent, many) = runs["adaptive"], runs["every order"]
    assert 1 <= few < many, (few, many)
    assert all(torch.equal(adaptive[k], frequent[k]) for k in adaptive)
