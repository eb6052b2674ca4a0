"""The weights still alive, as a compact index, so that late rounds cost what is alive.

After round t of an exponential schedule only d^(t/n) of the weights are alive (10% from round 50
on at d = 0.01), and pruned weights never come back. `AliveIndex` keeps, per prunable tensor,
the positions of its alive weights in position order (int32: a tensor has fewer than 2^31
entries) and one score buffer sized to them. A scoring pass then gathers each alive weight's
score into that buffer (the linearised weights stay as they are), the selection runs on the
buffer, and pruning zeroes only the newly pruned weights and mask entries: nothing after the
backward pass touches the pruned ones again.

Compact order is position order (tensor order, then element order), so ties broken by position
in the compact buffer are broken by position in the model, and each tensor's alive weights are a
contiguous slice (what zero-score tie spreading needs).
"""

from __future__ import annotations

import torch

from synflow import kernels


class AliveIndex:
    """Per-tensor alive positions and a score buffer sized to them (see the module docstring).

    The positions of all tensors sit back to back in one int32 buffer (`positions` are views of
    it), so that pruning is a few whole-buffer ops rather than a handful per tensor."""

    def __init__(self, masks: list[torch.Tensor]):
        """`masks`: one bool tensor per prunable tensor (True = alive), in position order."""
        flat = [m.reshape(-1) for m in masks]
        self.totals = [m.numel() for m in flat]
        self.counts = [int(torch.count_nonzero(m)) for m in flat]
        device = flat[0].device if flat else torch.device("cpu")
        self._positions = torch.empty(sum(self.counts), dtype=torch.int32, device=device)
        offset = 0
        for m, n in zip(flat, self.counts, strict=True):
            # int64 from nonzero one tensor at a time: the transient is one tensor's alive count
            self._positions[offset : offset + n].copy_(torch.nonzero(m).squeeze(1))
            offset += n
        self._buffer: torch.Tensor | None = None
        self.views: list[torch.Tensor] = []

    @property
    def alive(self) -> int:
        return sum(self.counts)

    @property
    def positions(self) -> list[torch.Tensor]:
        """Tensor i's alive positions (int32, ascending), a view of the shared buffer."""
        return list(self._positions.split(self.counts))

    def prepare(self, dtype: torch.dtype) -> torch.Tensor:
        """The score buffer (one slice per tensor in `views`), sized to the alive weights. It is
        allocated once, at the first (largest) alive count, and reused as a prefix after."""
        buffer = self._buffer
        if buffer is None or buffer.dtype != dtype or buffer.numel() < self.alive:
            buffer = self._buffer = None  # free the old one before allocating its successor
            buffer = self._buffer = torch.empty(
                self.alive, dtype=dtype, device=self._positions.device
            )
        self.views = list(buffer[: self.alive].split(self.counts))
        self._position_views = self.positions
        return buffer[: self.alive]

    def score(self, i: int, weight: torch.Tensor, grad: torch.Tensor) -> None:
        """Score = weight * gradient for tensor i's alive entries, into its slice of the buffer
        (|.| and the finiteness check run once on the whole buffer)."""
        view, positions = self.views[i], self._position_views[i]
        torch.index_select(weight.detach().reshape(-1), 0, positions, out=view)
        view.mul_(grad.reshape(-1).index_select(0, positions))

    def score_outer(self, i: int, weight: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> None:
        """`score` for a weight whose gradient is the outer product of g and x (a one-row linear
        layer, `synflow.outer`): the gradient is formed at the alive entries only."""
        kernels.gather_outer(weight.detach(), self._position_views[i], g, x, self.views[i])

    def prune(
        self, keep: torch.Tensor, weights: list[torch.Tensor], masks: list[torch.Tensor]
    ) -> None:
        """Apply a selection: `keep` (bool over the compact buffer) says which alive entries stay.
        The others become zero in `weights` and False in `masks` (flat views, one per tensor, in
        place), and leave the index."""
        gone_at = torch.nonzero(~keep).squeeze(1)  # few: this round's share
        if gone_at.numel() == 0:
            return
        ends = torch.tensor(self.counts, dtype=torch.int64, device=keep.device).cumsum(0)
        owner = torch.bucketize(gone_at, ends, right=True)
        gone_counts = torch.bincount(owner, minlength=len(self.counts)).tolist()
        gone = self._positions.index_select(0, gone_at).long()  # index_fill_ wants int64
        for i, here in enumerate(gone.split(gone_counts)):
            if here.numel():
                weights[i].index_fill_(0, here, 0.0)
                masks[i].index_fill_(0, here, False)
        self._positions = kernels.compress(self._positions, keep)
        self.counts = [n - g for n, g in zip(self.counts, gone_counts, strict=True)]
