"""Tied parameters (a decoder weight tied to an embedding): one parameter, one mask, one name."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from synflow import PruneConfig, prune
from synflow.io.torchscript import quiet_deprecation, save_torchscript
from synflow.model import LoadedModel
from synflow.pipeline import prune_file
from tests.synflow import nets

SHAPE = (1, 3)
VOCAB, DIM = 10, 4


class TiedLM(nn.Module):
    """Embedding -> linear -> decoder tied to the embedding, declared in either order."""

    def __init__(self, embedding_first: bool):
        super().__init__()
        if embedding_first:
            self.emb = nn.Embedding(VOCAB, DIM)
            self.mid = nn.Linear(DIM, DIM)
            self.dec = nn.Linear(DIM, VOCAB, bias=False)
        else:
            self.dec = nn.Linear(DIM, VOCAB, bias=False)
            self.mid = nn.Linear(DIM, DIM)
            self.emb = nn.Embedding(VOCAB, DIM)
        self.dec.weight = self.emb.weight

    def forward(self, x):
        return self.dec(torch.relu(self.mid(self.emb(x.long()))))


def _loaded(module: nn.Module, how: str) -> LoadedModel:
    module = module.eval()
    if how == "fx":
        return LoadedModel(
            format="torchscript", module=torch.fx.symbolic_trace(module), source=Path("<fx>")
        )
    with warnings.catch_warnings(), quiet_deprecation():
        warnings.simplefilter("ignore")
        return nets.as_loaded(module, how, SHAPE)


@pytest.mark.parametrize("how", ["eager", "script", "trace", "fx"])
@pytest.mark.parametrize("embedding_first", [True, False])
def test_tied_weight_is_one_prunable_parameter(how, embedding_first):
    model = _loaded(nets.seeded(TiedLM, seed=2, embedding_first=embedding_first), how)
    first = next(n for n, p in model.module.named_parameters() if p.shape == (VOCAB, DIM))
    assert first in ("emb.weight", "dec.weight")
    config = PruneConfig(sparsity=0.5, input_shape=SHAPE, iterations=3)
    for prune_embedding in (False, True):  # used as a linear weight: pruned either way
        result = prune(model, config.model_copy(update={"prune_embedding": prune_embedding}))
        assert list(result.masks) == sorted([first, "mid.weight"], key=_order(model))
        total = VOCAB * DIM + DIM * DIM
        assert result.masks.total == total  # the shared tensor counted once
        assert result.masks.total - result.masks.kept == math.floor(0.5 * total)
        role = {t.key: t.role for t in result.tensors}[first]
        assert role == "weight"


def _order(model):
    names = [n for n, _ in model.module.named_parameters()]
    return names.index


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("embedding_first", [True, False])
def test_tied_file_round_trip(tmp_path, how, embedding_first):
    """prune_file on a saved TorchScript file: masks under the first name, the weights and the
    pruned model zero exactly where the mask says, under both names."""
    model = _loaded(nets.seeded(TiedLM, seed=3, embedding_first=embedding_first), how)
    path = tmp_path / "tied.pt"
    save_torchscript(model, path)
    config = PruneConfig(sparsity=0.6, input_shape=SHAPE, iterations=4)
    report = prune_file(path, config, tmp_path / "out")
    masks = load_file(str(tmp_path / "out" / "masks.safetensors"))
    names = {"emb.weight", "dec.weight"}
    (tied,) = names & set(masks)
    assert report["totals"]["prunable"] == VOCAB * DIM + DIM * DIM
    weights = load_file(str(tmp_path / "out" / "weights.safetensors"))
    with quiet_deprecation():
        pruned = torch.jit.load(str(tmp_path / "out" / "model.pt"))
    state = pruned.state_dict()
    for name in names:
        assert torch.equal(weights[name] != 0, masks[tied]), name
        assert torch.equal(state[name] != 0, masks[tied]), name
    assert pruned(torch.ones(SHAPE)).shape == (1, 3, VOCAB)
