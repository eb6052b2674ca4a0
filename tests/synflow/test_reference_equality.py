"""The engine's masks equal a plain reference implementation of DESIGN.md's algorithm."""

from __future__ import annotations

import copy

import pytest
import torch

from synflow import PruneConfig, prune
from tests.synflow import nets
from tests.synflow.reference import reference_synflow

CASES = {
    "mlp": (lambda bias: nets.mlp(bias=bias), (1, 20)),
    "rescnn": (lambda bias: nets.randomize_batchnorm(nets.ResCNN(bias=bias)), (1, 3, 8, 8)),
}


def _masks_equal(ours, ref):
    assert set(ours) == set(ref)
    for name in ref:
        assert torch.equal(ours[name], ref[name]), f"mask of {name} differs"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("iterations", [1, 100])
def test_engine_equals_reference(case, bias, sparsity, iterations):
    builder, shape = CASES[case]
    model = nets.seeded(builder, seed=3, bias=bias).eval()
    expected = reference_synflow(copy.deepcopy(model), shape, 1 - sparsity, iterations)
    config = PruneConfig(sparsity=sparsity, input_shape=shape, iterations=iterations)
    result = prune(nets.as_loaded(model, "script"), config, precision="float32")
    _masks_equal(result.masks, expected)


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_scope_and_schedule_equal_reference(scope, schedule):
    model = nets.seeded(nets.ResCNN, seed=5, bias=True).eval()
    shape = (1, 3, 8, 8)
    expected = reference_synflow(
        copy.deepcopy(model), shape, 0.05, 20, schedule=schedule, scope=scope
    )
    config = PruneConfig(
        compression=20, input_shape=shape, iterations=20, schedule=schedule, scope=scope
    )
    _masks_equal(prune(nets.as_loaded(model), config, precision="float32").masks, expected)


@pytest.mark.parametrize("flags", [(True, False), (False, True), (True, True)])
def test_bias_and_batchnorm_flags_equal_reference(flags):
    bias, batchnorm = flags
    model = nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=7, bias=True)).eval()
    shape = (1, 3, 8, 8)
    expected = reference_synflow(
        copy.deepcopy(model), shape, 0.2, 10, bias=bias, batchnorm=batchnorm
    )
    config = PruneConfig(
        sparsity=0.8, input_shape=shape, iterations=10, prune_bias=bias, prune_batchnorm=batchnorm
    )
    _masks_equal(prune(nets.as_loaded(model), config, precision="float32").masks, expected)


@pytest.mark.parametrize("how", ["eager", "script", "trace"])
def test_equal_to_paper_rule_when_no_ties(how):
    """Bit for bit the paper code's masks (score <= kthvalue) where no tie meets a threshold."""
    model = nets.seeded(nets.ResCNN, seed=11, bias=True).eval()
    shape = (1, 3, 8, 8)
    paper, tie = reference_synflow(copy.deepcopy(model), shape, 0.1, 100, rule="paper")
    assert not tie, "the case must be tie-free for the comparison to mean anything"
    config = PruneConfig(sparsity=0.9, input_shape=shape, iterations=100)
    ours = prune(nets.as_loaded(model, how, shape), config, precision="float32").masks
    _masks_equal(ours, paper)


def test_engine_leaves_model_unchanged():
    model = nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = nets.as_loaded(model)
    grads_before = [p.requires_grad for p in loaded.module.parameters()]
    prune(loaded, PruneConfig(sparsity=0.9, input_shape=(1, 3, 8, 8), iterations=5))
    after = loaded.module.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype
        assert torch.equal(after[k], v), k
    assert [p.requires_grad for p in loaded.module.parameters()] == grads_before
    assert not loaded.module.training
