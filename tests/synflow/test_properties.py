"""Properties the paper and DESIGN.md promise, checked on the engine itself."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from synflow import PruneConfig, prune
from synflow.masks import Masks
from synflow.scorers.synflow import SynFlowScorer
from tests.synflow import nets


def one_synflow_pass(loaded, input_shape, dtype="float64"):
    ctx, params = nets.scoring_context(loaded, input_shape, dtype)
    with SynFlowScorer(ctx) as scorer:
        scores = scorer.score(Masks.dense(params))
        flow = scorer.flow
    return scores, flow


@pytest.mark.parametrize(
    ("builder", "shape"),
    [(lambda: nets.mlp(bias=False), (1, 20)), (lambda: nets.plain_cnn(bias=False), (1, 3, 8, 8))],
)
def test_conservation_every_layer_sums_to_R(builder, shape):
    """Theorem: on a bias-free, norm-free net each layer's total synaptic flow equals R."""
    loaded = nets.as_loaded(nets.seeded(builder, seed=1))
    scores, flow = one_synflow_pass(loaded, shape)
    assert flow > 0
    for name, s in scores.items():
        assert float(s.sum()) == pytest.approx(flow, rel=1e-9), name


WIDTHS = (8, 64, 8, 64, 8, 64, 8, 4)  # deep and narrow, alternating fan-in


def _kept_per_layer(method, iterations, compression=100):
    model = nets.seeded(nets.mlp, seed=0, bias=False, widths=WIDTHS)
    config = PruneConfig(
        compression=compression, input_shape=(1, 8), method=method, iterations=iterations
    )
    masks = prune(nets.as_loaded(model), config).masks
    return [int(m.sum()) for m in masks.values()]


def test_layer_collapse_avoided_by_iterative_synflow():
    magnitude = _kept_per_layer("magnitude", 1)
    single_shot = _kept_per_layer("synflow", 1)
    iterative = _kept_per_layer("synflow", 100)
    assert 0 in magnitude, "the case must make magnitude pruning collapse a layer"
    assert 0 in single_shot, "single-shot SynFlow collapses here too"
    assert all(k > 0 for k in iterative), iterative


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("method", ["synflow", "magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 0.999])
def test_exact_sparsity(scope, schedule, method, sparsity):
    model = nets.seeded(nets.ResCNN, seed=4, bias=True)
    config = PruneConfig(
        sparsity=sparsity,
        input_shape=(1, 3, 8, 8),
        method=method,
        iterations=7,
        scope=scope,
        schedule=schedule,
    )
    masks = prune(nets.as_loaded(model), config).masks
    if scope == "global":
        assert masks.total - masks.kept == math.floor(sparsity * masks.total)
    else:
        for name, m in masks.items():
            assert m.numel() - int(m.sum()) == math.floor(sparsity * m.numel()), name


def test_exact_count_even_when_all_scores_tie():
    """Uniform weights: every magnitude score ties; exactly the asked count still goes."""
    model = nets.mlp(bias=False)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    config = PruneConfig(sparsity=0.5, input_shape=(1, 20), method="magnitude")
    masks = prune(nets.as_loaded(model), config).masks
    assert masks.total - masks.kept == masks.total // 2
    first = next(iter(masks.values())).flatten()
    assert not first[: first.numel() // 2].any(), "ties go by position, lowest first"


def test_pruned_weights_stay_pruned():
    seen = []
    model = nets.seeded(nets.ResCNN, seed=9)
    config = PruneConfig(sparsity=0.95, input_shape=(1, 3, 8, 8), iterations=10, method="random")
    loaded = nets.as_loaded(model)
    from synflow import selection

    original = selection.select_inplace

    def spy(scores, masks, density, scope="global", **options):
        before = masks.clone()  # select_inplace reuses the masks' storage
        out = original(scores, masks, density, scope, **options)
        seen.append((before, out))
        return out

    selection_select = "synflow.engine.select_inplace"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selection_select, spy)
        prune(loaded, config)
    assert len(seen) == 10
    for before, after in seen:
        for name in before:
            assert not (after[name] & ~before[name]).any(), "a pruned weight came back"


def test_prunable_set_and_flags():
    model = nets.ResCNN(bias=True)
    loaded = nets.as_loaded(model)
    default = {t.key for t in loaded.prunable()}
    assert default == {
        n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1
    }
    with_bias = {t.key for t in loaded.prunable(prune_bias=True)}
    assert with_bias - default == {
        n
        for n, _ in model.named_parameters()
        if n.endswith("bias") and "bn" not in n and "shortcut.1" not in n
    }
    with_bn = {t.key for t in loaded.prunable(prune_batchnorm=True)}
    assert with_bn - default == {
        "bn.weight",
        "block1.bn1.weight",
        "block1.bn2.weight",
        "block2.bn1.weight",
        "block2.bn2.weight",
        "block2.shortcut.1.weight",
    }
    both = {t.key for t in loaded.prunable(prune_bias=True, prune_batchnorm=True)}
    assert both == {n for n, _ in model.named_parameters()}


def test_scale_parameter_is_not_prunable():
    """Found by layer type, not by rank: a (C,1,1) scale is not a convolution weight."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.scale = torch.nn.Parameter(torch.ones(4, 1, 1))

        def forward(self, x):
            return self.conv(x) * self.scale

    assert [t.key for t in nets.as_loaded(Scaled()).prunable()] == ["conv.weight"]


def test_exclude_keeps_matching_parameters_dense():
    model = nets.seeded(nets.ResCNN, seed=1)
    config = PruneConfig(
        sparsity=0.9, input_shape=(1, 3, 8, 8), iterations=5, exclude=("fc.*", "block1.*")
    )
    masks = prune(nets.as_loaded(model), config).masks
    assert "fc.weight" not in masks
    assert not any(k.startswith("block1.") for k in masks)
    assert masks.total - masks.kept == math.floor(0.9 * masks.total)


@pytest.mark.parametrize("method", ["synflow", "random", "magnitude"])
def test_deterministic_for_a_seed(method):
    def run(seed):
        model = nets.seeded(nets.ResCNN, seed=0)
        config = PruneConfig(
            sparsity=0.9, input_shape=(1, 3, 8, 8), method=method, iterations=5, seed=seed
        )
        return prune(nets.as_loaded(model), config).masks

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    differs = any(not torch.equal(a[k], c[k]) for k in a)
    assert differs == (method == "random")


def test_progress_after_every_round_and_cancel():
    events = []
    model = nets.seeded(nets.mlp)
    config = PruneConfig(sparsity=0.9, input_shape=(1, 20), iterations=12)
    result = prune(nets.as_loaded(model), config, progress=events.append)
    assert [e.iteration for e in events] == list(range(1, 13))
    assert events[-1].density == pytest.approx(result.masks.density)
    assert all(a.density >= b.density for a, b in itertools.pairwise(events))

    from synflow.errors import PruningCanceled

    calls = []

    def cancel_after_three():
        calls.append(1)
        return len(calls) > 3

    loaded = nets.as_loaded(nets.seeded(nets.mlp))
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    with pytest.raises(PruningCanceled):
        prune(loaded, config, should_cancel=cancel_after_three)
    assert len(calls) == 4
    assert all(torch.equal(before[k], v) for k, v in loaded.module.state_dict().items())
