"""Masks: a dict of boolean tensors keyed by parameter name, True = kept."""

from __future__ import annotations

import math

import torch

from synflow import kernels


def flat_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One 1-D tensor over `tensors` when they lie back to back, in order, in one storage (as the
    views of a flat buffer do); None otherwise. Lets whole-model operations run as one op."""
    if not tensors:
        return None
    first = tensors[0]
    storage_ptr = first.untyped_storage().data_ptr()
    expected = first.data_ptr()
    for t in tensors:
        if (
            not t.is_contiguous()
            or t.dtype != first.dtype
            or t.untyped_storage().data_ptr() != storage_ptr
            or t.data_ptr() != expected
        ):
            return None
        expected += t.numel() * t.element_size()
    total = sum(t.numel() for t in tensors)
    flat = torch.empty(0, dtype=first.dtype, device=first.device)
    return flat.set_(first.untyped_storage(), first.storage_offset(), (total,), (1,))


def flat_buffer(
    shapes: dict[str, torch.Size], dtype: torch.dtype, device: torch.device | str, fill=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One buffer and a view of it per name, back to back in the order given."""
    total = sum(math.prod(s) for s in shapes.values())
    if fill is None:
        buffer = torch.empty(total, dtype=dtype, device=device)
    else:
        buffer = torch.full((total,), fill, dtype=dtype, device=device)
    views, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        views[name] = buffer[offset : offset + n].view(shape)
        offset += n
    return buffer, views


class Masks(dict[str, torch.Tensor]):
    """Refuses anything but boolean tensors, and can report its own density."""

    #: the kept count, when whoever last wrote the masks knows it (saves a pass over them)
    _known_kept: int | None = None

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
            raise TypeError(f"mask {key!r} must be a bool tensor, got {type(value).__name__}")
        self._known_kept = None
        super().__setitem__(key, value)

    def with_kept(self, kept: int) -> Masks:
        """These masks, stating their kept count (the writer that edited them in place knows
        it); `kept` then costs nothing. Any later `masks[key] = ...` forgets it."""
        self._known_kept = kept
        return self

    @classmethod
    def dense(cls, tensors: dict[str, torch.Tensor]) -> Masks:
        masks = cls()
        for name, tensor in tensors.items():
            masks[name] = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        return masks

    @classmethod
    def dense_flat(cls, tensors: dict[str, torch.Tensor]) -> Masks:
        """All-True masks that are views of one buffer (whole-model ops run as one op)."""
        device = next(iter(tensors.values())).device if tensors else "cpu"
        shapes = {name: t.shape for name, t in tensors.items()}
        return cls.from_dict(flat_buffer(shapes, torch.bool, device, fill=True)[1])

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
        if self._known_kept is not None:
            return self._known_kept
        flat = flat_view(list(self.values()))
        if flat is not None:
            return kernels.count_true(flat)
        return sum(kernels.count_true(m) for m in self.values())

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
