"""Small hand-made architectures for the linearisation tests and bench/coverage.py: a BERT-like
encoder and a GPT-like decoder on token ids, an LSTM/GRU classifier, Conv1d/Conv3d and
ConvTranspose nets (torch.nn only, random init)."""

from __future__ import annotations

import torch
from torch import nn


class BertLike(nn.Module):
    """Token + position embeddings, post-LN encoder blocks (torch's default), a pooled head."""

    def __init__(self, vocab: int = 100, d: int = 32, heads: int = 4, layers: int = 2, seq=16):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[:, : ids.shape[1]]
        return self.head(self.norm(self.encoder(x)).mean(1))


class GptBlock(nn.Module):
    """Pre-LN causal self-attention and a GELU MLP."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GptLike(nn.Module):
    """Token embeddings, pre-LN causal blocks, next-token logits."""

    def __init__(self, vocab: int = 100, d: int = 32, heads: int = 4, layers: int = 2, seq=16):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.blocks = nn.ModuleList([GptBlock(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.tokens(ids) + self.positions[:, :n]
        for block in self.blocks:
            x = block(x, self.mask[:n, :n])
        return self.lm_head(self.ln(x))


class RnnClassifier(nn.Module):
    """LSTM then GRU over a float sequence, last step to a linear head."""

    def __init__(self, features: int = 8, hidden: int = 16):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(x)
        x, _ = self.gru(x)
        return self.head(x[:, -1])


def conv1d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(4, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 16, 3, 2),
        nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 5),
    )  # fmt: skip


def conv3d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(2, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(), nn.Conv3d(6, 8, 3, 2),
        nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def conv_transpose_net() -> nn.Module:
    """A small encoder-decoder (segmentation-like) with ConvTranspose2d upsampling."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 2, 2), nn.ReLU(), nn.ConvTranspose2d(8, 2, 2, 2),
    )  # fmt: skip
