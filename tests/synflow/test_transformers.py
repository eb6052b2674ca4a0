"""Transformers under the linearisation rules: every layer carries flow, or the run says why."""

from __future__ import annotations

import pytest
import torch

from synflow import PruneConfig, prune
from synflow.errors import DegenerateFlowError
from synflow.inputs import parse_input_specs
from synflow.masks import Masks
from synflow.scorers.base import ScoringContext
from synflow.scorers.synflow import SynFlowScorer
from tests.synflow import arch_nets, nets

TOKENS = ["int64:1,16"]
TOKENS_SPECS = parse_input_specs(TOKENS)
MODELS = {"bert_like": arch_nets.BertLike, "gpt_like": arch_nets.GptLike}


@pytest.mark.parametrize("name", list(MODELS))
def test_random_head_every_layer_scores_and_none_is_emptied(name):
    model = nets.seeded(MODELS[name], seed=0)
    # enough rounds for SynFlow to avoid layer collapse (3 rounds empty a post-LN FFN)
    config = PruneConfig(sparsity=0.9, inputs=TOKENS, iterations=20, prune_embedding=True)
    result = prune(nets.as_loaded(model, "script"), config)
    assert result.zero_score_layers == {}  # no layer lost its flow to a saturated op
    # SynFlow itself may empty a residual branch (the skip carries the flow, so the network
    # stays connected: the run would fail otherwise); the GPT-like's last MLP goes at 0.9
    emptied = [k for k, m in result.masks.items() if not m.any()]
    assert all(".mlp." in k or ".linear" in k for k in emptied), emptied
    assert any("in_proj_weight" in k for k in result.masks), list(result.masks)
    assert "tokens.weight" in result.masks
    assert {"native_layer_norm", "embedding"} <= set(result.linearised_ops)
    assert any("softmax" in op for op in result.linearised_ops)


def test_queries_and_keys_score_in_round_one():
    """Identical tokens: the query and key rows of in_proj get flow through the linear logits."""
    model = nets.seeded(arch_nets.GptLike, seed=1)
    loaded = nets.as_loaded(model, "eager")
    found = loaded.discover(False, False, (), inputs=(torch.ones(1, 16, dtype=torch.long),))
    named = dict(loaded.module.named_parameters())
    params = {t.key: named[t.param_name] for t in found.prunable}
    ctx = ScoringContext(
        loaded, found.prunable, params, TOKENS_SPECS, torch.device("cpu"), torch.Generator()
    )
    scorer = SynFlowScorer(ctx)
    with scorer:
        scores = scorer.score(Masks.dense(params))
        assert scorer.flow > 0  # LayerNorm's affine part keeps R positive
    d = 32
    qkv = scores["blocks.0.attn.in_proj_weight"]
    for part in (qkv[:d], qkv[d : 2 * d], qkv[2 * d :]):
        assert float(part.amax()) > 0


def test_zero_initialised_head_fails_and_names_it():
    """torchvision-style zero head: R = 0 for every mask, so the run refuses and says which
    layer blocks the flow, instead of pruning at random."""
    model = nets.seeded(arch_nets.BertLike, seed=0)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    config = PruneConfig(sparsity=0.9, inputs=TOKENS, iterations=2)
    with pytest.raises(DegenerateFlowError, match=r"all-zero weights.*head\.weight"):
        prune(nets.as_loaded(model, "script"), config)


def test_post_ln_flow_is_positive():
    """Post-LN blocks (torch's default encoder layer) would make R negative with the real
    normalisation; with its affine part R is positive and every layer scores."""
    model = nets.seeded(arch_nets.BertLike, seed=2)
    loaded = nets.as_loaded(model, "eager")
    found = loaded.discover(False, False, (), inputs=(torch.ones(1, 16, dtype=torch.long),))
    named = dict(loaded.module.named_parameters())
    params = {t.key: named[t.param_name] for t in found.prunable}
    ctx = ScoringContext(
        loaded, found.prunable, params, TOKENS_SPECS, torch.device("cpu"), torch.Generator()
    )
    with SynFlowScorer(ctx) as scorer:
        scores = scorer.score(Masks.dense(params))
        assert scorer.flow > 0
    assert all(float(s.amax()) > 0 for s in scores.values())
