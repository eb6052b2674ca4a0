"""Masks: a dict of boolean tensors keyed by parameter name, True = kept."""

from __future__ import annotations

import torch


class Masks(dict[str, torch.Tensor]):
    """Refuses anything but boolean tensors, and can report its own density."""

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
            raise TypeError(f"mask {key!r} must be a bool tensor, got {type(value).__name__}")
        super().__setitem__(key, value)

    @classmethod
    def dense(cls, tensors: dict[str, torch.Tensor]) -> Masks:
        masks = cls()
        for name, tensor in tensors.items():
            masks[name] = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        return masks

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> Masks:
        masks = cls()
        for name, tensor in tensors.items():
            masks[name] = tensor
        return masks

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.values())

    @property
    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.values())

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def clone(self) -> Masks:
        return Masks.from_dict({k: v.clone() for k, v in self.items()})

    def cpu(self) -> Masks:
        return Masks.from_dict({k: v.cpu() for k, v in self.items()})
