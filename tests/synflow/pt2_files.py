"""torch.export `.pt2` files for the tests: real exports of small models, and hostile variants
made by rewriting one member of a real archive (the JSON program, a weight's config or bytes)."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class TwoInputs(nn.Module):
    """forward(x, y): two float tensors of different widths."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, y):
        return self.head(torch.relu(self.a(x) + self.b(y)))


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()


def export(module: nn.Module, args: tuple, path: Path) -> Path:
    torch.export.save(torch.export.export(module, args), str(path))
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rewrite(src: Path, dst: Path, edits: dict[str, Callable[[bytes], bytes | None]]) -> Path:
    """Copy the archive, passing each member whose name ends with a key through its edit (None:
    leave the member out); `edits` keys that match nothing are added as new members."""
    found = set()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for name, data in members(src).items():
            edit = next((f for suffix, f in edits.items() if name.endswith(suffix)), None)
            if edit is not None:
                found.update(s for s in edits if name.endswith(s))
                data = edit(data)
            if data is not None:
                out.writestr(name, data)
        root = next(iter(members(src))).split("/")[0]
        for suffix in set(edits) - found:
            data = edits[suffix](b"")
            if data is not None:
                out.writestr(f"{root}/{suffix}", data)
    return dst


def edit_json(change: Callable[[Any], None]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        value = json.loads(data)
        change(value)
        return json.dumps(value).encode()

    return edit


class MarkerPickle:
    """Unpickling this creates `path` (open(path, "w")): proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def marker_pickle(path: Path) -> bytes:
    return pickle.dumps(MarkerPickle(path))


def weight_member(path: Path, key: str) -> str:
    """The member (without its root folder) holding the raw bytes of the weight `key`."""
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0]
        config = json.loads(archive.read(f"{root}/data/weights/model_weights_config.json"))
    return f"data/weights/{config['config'][key]['path_name']}"


def nodes(program: dict) -> list[dict]:
    return program["graph_module"]["graph"]["nodes"]
