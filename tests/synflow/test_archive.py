"""Archives are inspected before any loader sees them."""

from __future__ import annotations

import struct
import zipfile

import pytest
import torch

from synflow.errors import InvalidModelError
from synflow.io.archive import ArchiveLimits, inspect_zip
from synflow.io.loader import load_model
from tests.synflow import nets


@pytest.fixture
def scripted(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(nets.seeded(nets.plain_cnn)), str(path))
    return path


def _rewrite(src, dst, extra=(), compress=zipfile.ZIP_DEFLATED):
    """Copy a TorchScript zip, adding `extra` (name, bytes) members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        for name, data in extra:
            zout.writestr(name, data, compress_type=compress)
    return dst


def test_valid_archive_passes_and_loads(scripted):
    names = inspect_zip(scripted)
    assert any("/code/" in n for n in names)
    assert load_model(scripted).format == "torchscript"


def test_zip_bomb_code_member_is_refused_before_loading(tmp_path, scripted):
    """A small zip whose code member inflates to 32 MiB (this crashes torch.jit.load)."""
    root = zipfile.ZipFile(scripted).namelist()[0].split("/")[0]
    bomb = _rewrite(
        scripted, tmp_path / "bomb.pt", [(f"{root}/code/__torch__/big.py", b"#" * (32 << 20))]
    )
    assert bomb.stat().st_size < 400_000
    with pytest.raises(InvalidModelError, match=r"zip bomb|TorchScript code"):
        load_model(bomb)


@pytest.mark.parametrize("name", ["../evil.py", "model/../../evil.py", "/etc/passwd", "C:/x"])
def test_member_names_escaping_the_root_are_refused(tmp_path, scripted, name):
    path = _rewrite(scripted, tmp_path / "escape.pt", [(name, b"x")])
    with pytest.raises(InvalidModelError, match=r"absolute path|escapes"):
        inspect_zip(path)


def test_limits_are_enforced(tmp_path, scripted):
    with pytest.raises(InvalidModelError, match="members"):
        inspect_zip(scripted, ArchiveLimits(max_members=3))
    big = _rewrite(scripted, tmp_path / "big.pt", [("model/data/99", b"\0" * (3 << 20))],
                   compress=zipfile.ZIP_STORED)  # fmt: skip
    with pytest.raises(InvalidModelError, match="larger than the limit"):
        inspect_zip(big, ArchiveLimits(max_member_bytes=2 << 20))
    with pytest.raises(InvalidModelError, match="inflates beyond"):
        inspect_zip(big, ArchiveLimits(max_total_bytes=3 << 20))


def test_corrupt_member_data(tmp_path, scripted):
    data = bytearray(scripted.read_bytes())
    with zipfile.ZipFile(scripted) as z:
        info = next(i for i in z.infolist() if i.compress_type == zipfile.ZIP_DEFLATED)
    header = info.header_offset
    name_len, extra_len = struct.unpack("<HH", bytes(data[header + 26 : header + 30]))
    start = header + 30 + name_len + extra_len + 2
    data[start : start + 8] = b"\xff" * 8
    broken = tmp_path / "broken.pt"
    broken.write_bytes(bytes(data))
    with pytest.raises(InvalidModelError, match=r"damaged|cannot be read"):
        inspect_zip(broken)
