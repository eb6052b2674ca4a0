"""Per-weight scores of a module's convolution and linear weights, from the scorer registry.

Channel pruning scores the model as it is after each round (already smaller), so every round
opens the registered scorer (`synflow`, `magnitude`, `random`) on the current module: the same
SynFlow arithmetic as unstructured pruning (linearisation, power-of-two rescaling, float64
fallback), with every weight kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synflow.inputs import InputSpec
from synflow.masks import Masks
from synflow.model import LoadedModel, PrunableTensor, layer_type
from synflow.scorers.base import ScoringContext
from synflow.scorers.registry import scorer_spec
from synflow.structured.channels import WEIGHT_TYPES, WeightScores


class RegistryScores:
    """A `ScoreFn` over the registered scorer `method`; remembers the precision it last used."""

    def __init__(
        self,
        method: str,
        fmt: str,
        inputs: tuple[InputSpec, ...],
        *,
        device: torch.device,
        precision: str,
        seed: int,
    ):
        self.scorer = scorer_spec(method).load()
        self.fmt = fmt
        self.inputs = inputs
        self.device = device
        self.precision = precision
        self.generator = torch.Generator().manual_seed(seed)
        self.used_precision = "float32"

    def __call__(self, module: nn.Module) -> WeightScores:
        layers = {n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_TYPES)}
        tensors = [
            PrunableTensor(f"{n}.weight", f"{n}.weight", n, layer_type(m), "weight")
            for n, m in layers.items()
        ]
        params = {t.key: layers[t.layer].weight for t in tensors}
        ctx = ScoringContext(
            model=LoadedModel(format=self.fmt, module=module, source=Path()),
            tensors=tensors,
            params=params,
            inputs=self.inputs,
            device=self.device,
            generator=self.generator,
            precision=self.precision,
        )
        if self.device.type != "cpu":
            module.to(self.device)
        try:
            with self.scorer(ctx) as scorer:
                scores = scorer.score(Masks.dense(params))
                self.used_precision = str(getattr(scorer, "precision", "float32"))
        finally:
            module.to("cpu")
        return {layers[t.layer]: scores[t.key].detach().abs().cpu() for t in tensors}
