"""Deep networks: no overflow, no NaN, no degenerate ranking; zero flow is reported, not ranked."""

from __future__ import annotations

import pytest
import torch
import torchvision

from synflow import PruneConfig, prune
from synflow.errors import DegenerateFlowError
from synflow.masks import Masks
from synflow.selection import select
from tests.synflow import nets
from tests.synflow.test_properties import one_synflow_pass


@pytest.mark.slow
def test_resnet50_scores_finite_and_ranked_as_float64():
    """torchvision ResNet-50 at 1x3x224x224 overflows float32 in this algorithm."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    shape = (1, 3, 224, 224)
    auto, flow = one_synflow_pass(nets.as_loaded(model, "eager"), shape, "auto")
    exact, flow64 = one_synflow_pass(nets.as_loaded(model, "eager"), shape, "float64")
    assert flow == pytest.approx(flow64, rel=1e-5)
    for name, s in auto.items():
        assert torch.isfinite(s).all(), name
        assert (s > 0).any(), f"{name}: every score underflowed to zero"
    dense = Masks.dense(auto)
    ours = select(auto, dense, 0.1)
    ref = select(exact, dense, 0.1)
    inter = sum(int((ours[k] & ref[k]).sum()) for k in ref)
    union = sum(int((ours[k] | ref[k]).sum()) for k in ref)
    assert inter / union >= 0.995


def test_zero_initialised_head_is_reported_not_pruned():
    """torchvision's ViT zero-initialises its head: R = 0, nothing to rank."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    config = PruneConfig(sparsity=0.9, input_shape=(1, 3, 32, 32), iterations=3)
    with pytest.raises(DegenerateFlowError, match=r"heads\.head\.weight"):
        prune(nets.as_loaded(vit), config)


def test_zero_flow_from_an_emptied_layer_is_reported():
    model = nets.seeded(nets.mlp, bias=False)
    with torch.no_grad():
        model[2].weight.zero_()
    config = PruneConfig(sparsity=0.5, input_shape=(1, 20), iterations=2)
    with pytest.raises(DegenerateFlowError, match=r"2\.weight"):
        prune(nets.as_loaded(model), config)


def test_float32_overflow_falls_back_without_changing_finite_results():
    """Where float32 stays finite, auto is exactly the float32 (reference) arithmetic."""
    model = nets.seeded(nets.ResCNN, seed=3)
    config = PruneConfig(sparsity=0.9, input_shape=(1, 3, 8, 8), iterations=20)
    auto = prune(nets.as_loaded(model), config, precision="auto")
    f32 = prune(nets.as_loaded(model), config, precision="float32")
    assert auto.precision == "float32"
    assert all(torch.equal(auto.masks[k], f32.masks[k]) for k in f32.masks)
