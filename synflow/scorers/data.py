"""What the data-driven scorers (SNIP, GraSP) share: the calibration batch through the masked
model, and the cross-entropy loss their papers score with.

While open, the model is in eval mode (as the reference code prunes: `prune_train_mode` off),
each prunable weight holds its masked value (pruned entries 0), and only prunable weights require
gradients; on close every weight gets its original storage back, bit for bit.
"""

from __future__ import annotations

from typing import Self

import torch
import torch.nn.functional as F

from synflow.calibration import check_labels
from synflow.errors import CalibrationError
from synflow.masks import Masks
from synflow.scorers.base import Scorer


class DataScorer(Scorer):
    #: the method's name in messages
    method = ""

    def __enter__(self) -> Self:
        if self.ctx.calibration is None:
            raise CalibrationError(f"{self.method} needs calibration data (inputs and labels)")
        module = self.ctx.model.module
        self._was_training = module.training
        module.eval()
        self._grad_flags = [(p, p.requires_grad) for p in module.parameters()]
        for p, _ in self._grad_flags:
            p.requires_grad_(False)
        self._originals = {key: p.detach() for key, p in self.ctx.params.items()}
        for p in self.ctx.params.values():
            p.requires_grad_(True)
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for key, p in self.ctx.params.items():
                p.data = self._originals[key]
        for p, flag in self._grad_flags:
            p.requires_grad_(flag)
            p.grad = None
        self.ctx.model.module.train(self._was_training)

    def _load(self, masks: Masks) -> list[torch.nn.Parameter]:
        """Put the masked weights in place; the prunable parameters, in order."""
        with torch.no_grad():
            for key, p in self.ctx.params.items():
                original = self._originals[key]
                p.data = torch.where(masks[key].to(original.device), original, 0)
        return list(self.ctx.params.values())

    def loss(self, temperature: float = 1.0) -> torch.Tensor:
        """Mean cross-entropy of the model's logits / temperature against the labels."""
        calibration = self.ctx.calibration
        assert calibration is not None
        module = self.ctx.model.module
        x = calibration.inputs.to(self.ctx.device)
        if x.is_floating_point():
            x = x.to(next(iter(self.ctx.params.values())).dtype)
        output = module(x)
        labels = check_labels(calibration, output, self.method)
        return F.cross_entropy(output.float() / temperature, labels)


def gradients(
    value: torch.Tensor, params: list[torch.nn.Parameter], create_graph: bool = False
) -> list[torch.Tensor]:
    """d value / d param for each param; zeros where the value does not depend on it."""
    grads = torch.autograd.grad(value, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
