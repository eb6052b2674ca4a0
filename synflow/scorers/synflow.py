"""Synaptic flow scores (Tanaka et al., NeurIPS 2020), as the reference code computes them.

While open, the scorer keeps the module *linearised*: eval mode, every floating-point parameter and
buffer replaced by its absolute value, pruned weights zero. Each `score()` feeds an all-ones input,
sums the output into R and returns |theta * dR/dtheta| for the prunable weights. On close every
tensor gets its original storage back (no sign arithmetic, so restoring is exact).

Precision: "float32" reproduces the reference's arithmetic; "float64" is slower but covers a far
larger dynamic range; "auto" starts in the model's own float32 and moves the rest of the run to
float64 the first time R or a score is not finite (torchvision ResNet-50 at 224x224 overflows
float32 in this algorithm). If float64 overflows too, the run fails with a clear error rather than
ranking infinities.
"""

from __future__ import annotations

from typing import Self

import torch

from synflow.errors import DegenerateFlowError, InvalidInputShapeError, InvalidModelError
from synflow.masks import Masks
from synflow.scorers.base import Scorer


def output_sum(output: object) -> torch.Tensor:
    """R: the sum of every floating-point tensor the model returns (tuples, lists, dicts)."""
    if isinstance(output, torch.Tensor):
        return output.sum() if output.is_floating_point() else None  # type: ignore[return-value]
    if isinstance(output, dict):
        parts = [output_sum(v) for v in output.values()]
    elif isinstance(output, list | tuple):
        parts = [output_sum(v) for v in output]
    else:
        return None  # type: ignore[return-value]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None  # type: ignore[return-value]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


class SynFlowScorer(Scorer):
    def __enter__(self) -> Self:
        if self.ctx.input_shape is None:
            raise InvalidInputShapeError(
                "SynFlow needs input_shape (e.g. 1,3,224,224): the shape of one input batch"
            )
        module = self.ctx.model.module
        self._was_training = module.training
        module.eval()
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        for tensor in self._state_tensors():
            # detach() aliases the original storage; `tensor.data = ...` below swaps only the
            # live tensor's storage, so the alias keeps the exact original values.
            self._saved[id(tensor)] = (tensor, tensor.detach(), tensor.requires_grad)
        prunable = {id(p) for p in self.ctx.params.values()}
        for tensor, _, _ in self._saved.values():
            if isinstance(tensor, torch.nn.Parameter):
                tensor.requires_grad_(id(tensor) in prunable)
        start = "float64" if self.ctx.precision == "float64" else "float32"
        self._linearize(getattr(torch, start))
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for tensor, original, requires_grad in self._saved.values():
                tensor.data = original
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.requires_grad_(requires_grad)
        self.ctx.model.module.train(self._was_training)

    def _state_tensors(self) -> list[torch.Tensor]:
        module = self.ctx.model.module
        seen: set[int] = set()
        tensors = []
        for tensor in [p for _, p in module.named_parameters()] + [
            b for _, b in module.named_buffers()
        ]:
            if tensor.is_floating_point() and id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(tensor)
        return tensors

    def _linearize(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        with torch.no_grad():
            for tensor, original, _ in self._saved.values():
                tensor.data = original.to(self.ctx.device, dtype).abs()

    @property
    def precision(self) -> str:
        return "float64" if self.dtype == torch.float64 else "float32"

    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        params = self.ctx.params
        with torch.no_grad():
            for key, p in params.items():
                p.mul_(masks[key].to(p.dtype))
        flow, grads = self._flow()
        if (
            not _finite(flow, grads)
            and self.ctx.precision == "auto"
            and self.dtype != torch.float64
        ):
            self._linearize(torch.float64)
            with torch.no_grad():
                for key, p in params.items():
                    p.mul_(masks[key].to(p.dtype))
            flow, grads = self._flow()
        if not _finite(flow, grads):
            raise DegenerateFlowError(
                f"synaptic flow overflows {self.precision} on this model (R = {float(flow):.3g}); "
                "its layers multiply the all-ones input beyond the floating-point range. "
                "Rescale the initialisation or prune a shallower model"
            )
        if float(flow) == 0.0:
            raise DegenerateFlowError(self._zero_flow_message(masks))
        scores = {}
        any_positive = False
        for (key, p), g in zip(params.items(), grads, strict=True):
            s = (g * p).abs_() if g is not None else torch.zeros_like(p)
            scores[key] = s.detach()
            any_positive = any_positive or bool((s > 0).any())
        if not any_positive:
            raise DegenerateFlowError(self._zero_flow_message(masks))
        return scores

    def _flow(self) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        module = self.ctx.model.module
        x = torch.ones(self.ctx.input_shape, dtype=self.dtype, device=self.ctx.device)
        try:
            with torch.enable_grad():
                flow = output_sum(module(x))
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            shape = list(self.ctx.input_shape)
            raise InvalidInputShapeError(
                f"the model rejected an input of shape {shape}: {first}. "
                "Pass the input_shape the model expects (batch first)"
            ) from exc
        if flow is None:
            raise InvalidModelError(
                "the model returns no floating-point tensor, so there is no output to sum"
            )
        if not flow.requires_grad:
            return flow.detach(), tuple(None for _ in self.ctx.params)
        grads = torch.autograd.grad(flow, list(self.ctx.params.values()), allow_unused=True)
        return flow.detach(), grads

    def _zero_flow_message(self, masks: Masks) -> str:
        zero_layers = [
            key for key, p in self.ctx.params.items() if not bool(p.detach().ne(0).any())
        ]
        emptied = [key for key, m in masks.items() if not bool(m.any())]
        if emptied:
            return (
                "synaptic flow is zero: pruning emptied "
                + ", ".join(emptied[:5])
                + " so nothing reaches the output; lower the compression"
            )
        if zero_layers:
            return (
                "synaptic flow is zero: these layers have all-zero weights and block it: "
                + ", ".join(zero_layers[:5])
                + ". The reference algorithm would then empty every layer; initialise them "
                "with non-zero values (e.g. a zero-initialised classifier head) before pruning"
            )
        return (
            "synaptic flow is zero: no path from the all-ones input through the prunable "
            "weights reaches the output, so every score ties; check the model and input_shape"
        )


def _finite(flow: torch.Tensor, grads: tuple[torch.Tensor | None, ...]) -> bool:
    if not bool(torch.isfinite(flow)):
        return False
    return all(g is None or bool(torch.isfinite(g).all()) for g in grads)
