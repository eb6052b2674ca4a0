"""`auto` rescales by powers of two when the flow underflows float32, not only on overflow."""

from __future__ import annotations

import torch
from torch import nn

from synflow import PruneConfig, prune
from tests.synflow import nets


def _tiny_deep_mlp(bias: bool) -> nn.Module:
    """40 layers, weights U(-1/512, 1/512): R ~ 2^-200, zero in float32."""
    model = nets.seeded(nets.mlp, seed=0, bias=bias, widths=(32,) * 41 + (10,))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.uniform_(-1 / 512, 1 / 512)
                if layer.bias is not None:
                    layer.bias.uniform_(-1 / 512, 1 / 512)
    return model


def test_auto_rescales_an_underflowing_net_and_equals_float64():
    model = _tiny_deep_mlp(bias=False)
    config = PruneConfig(sparsity=0.9, input_shape=(1, 32), iterations=10)
    auto = prune(nets.as_loaded(model), config, precision="auto")
    exact = prune(nets.as_loaded(model), config, precision="float64")
    assert auto.precision == "float32" and auto.scale is not None, auto.precision_note
    assert auto.precision_note is None
    for key in exact.masks:
        assert torch.equal(auto.masks[key], exact.masks[key]), key


def test_plain_float32_cannot_score_it():
    """What auto avoids: float32 without rescaling sees R = 0 and refuses the run."""
    import pytest

    from synflow.errors import DegenerateFlowError

    config = PruneConfig(sparsity=0.9, input_shape=(1, 32), iterations=1)
    with pytest.raises(DegenerateFlowError, match="synaptic flow is zero"):
        prune(nets.as_loaded(_tiny_deep_mlp(bias=False)), config, precision="float32")


def test_underflow_with_biases_rescales_the_constants_too():
    model = _tiny_deep_mlp(bias=True)
    config = PruneConfig(sparsity=0.9, input_shape=(1, 32), iterations=5)
    auto = prune(nets.as_loaded(model, "eager"), config, precision="auto")
    exact = prune(nets.as_loaded(model, "eager"), config, precision="float64")
    assert auto.precision == "float32" and auto.scale is not None, auto.precision_note
    for key in exact.masks:
        assert torch.equal(auto.masks[key], exact.masks[key]), key
