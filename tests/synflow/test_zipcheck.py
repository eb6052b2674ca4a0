"""The API's zip check (`synflow.io.zipcheck`) against Python's zipfile as the reference on
honest archives, and against hostile ones: refused by what they declare, in bounded memory and
time, without inflating; `inspect_zip` (the child's check) streams with an output cap."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synflow.errors import InvalidModelError
from synflow.io.archive import inspect_zip
from synflow.io.formats import TORCHSCRIPT, detect_format
from synflow.io.limits import ArchiveLimits
from synflow.io.zipcheck import member_names, read_directory
from tests.security import hostile_zips
from tests.synflow import nets


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.jit.save(torch.jit.script(nets.seeded(nets.plain_cnn)), str(path))
    return path


def reference(path) -> list[tuple[str, int, int, int]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, i.compress_type, i.file_size, i.CRC) for i in z.infolist()]


def ours(path, limits=None) -> list[tuple[str, int, int, int]]:
    return [(e.name, e.method, e.file_size, e.crc) for e in read_directory(path, limits)]


def test_torchscript_directory_equals_zipfiles(scripted):
    assert ours(scripted) == reference(scripted)
    assert inspect_zip(scripted) == [name for name, *_ in reference(scripted)]
    assert detect_format(scripted) == TORCHSCRIPT


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("prefix", [b"", b"#!/bin/sh\nexit 0\n"])
@pytest.mark.parametrize("comment", [b"", b"a comment"])
def test_written_by_zipfile(tmp_path, zip64, prefix, comment):
    """Stored and deflate members, zip64 records, prepended data, a comment: the same members
    as zipfile reads, and they inflate."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for i, method in enumerate([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED] * 3):
            info = zipfile.ZipInfo(f"m/data/{i}")
            info.compress_type = method
            with z.open(info, "w", force_zip64=zip64) as fh:
                fh.write(bytes(range(256)) * (i + 1) * 40)
        z.writestr("m/unicode-é", b"x", compress_type=zipfile.ZIP_DEFLATED)
        z.comment = comment
    path = tmp_path / "a.zip"
    path.write_bytes(prefix + buffer.getvalue())
    assert ours(path) == reference(path)
    assert inspect_zip(path) == [name for name, *_ in reference(path)]


def test_bzip2_bomb_is_refused_by_its_declared_method(tmp_path, scripted):
    path = hostile_zips.bzip2_bomb(tmp_path / "bz.pt", scripted)
    assert path.stat().st_size < 100_000
    assert reference(path)[-1][1:3] == (zipfile.ZIP_BZIP2, 2 << 30)  # zipfile agrees on what it is
    for check in (member_names, inspect_zip):
        with pytest.raises(InvalidModelError, match="bzip2; only stored and deflate"):
            check(path)


def test_garbage_bzip2_and_lzma_members_are_refused(tmp_path, scripted):
    garbage = hostile_zips.garbage_bzip2(tmp_path / "junk.pt", scripted)
    lzma = tmp_path / "lzma.zip"
    with zipfile.ZipFile(lzma, "w", compression=zipfile.ZIP_LZMA) as z:
        z.writestr("m/data/0", b"x" * 1000)
    for path, method in ((garbage, "bzip2"), (lzma, "lzma")):
        for check in (member_names, inspect_zip):
            with pytest.raises(InvalidModelError, match=method):
                check(path)


def _bounded(check, path, limits=None) -> tuple[str, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InvalidModelError) as info:
            check(path, limits)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return str(info.value), time.perf_counter() - started, peak


def test_entry_count_is_refused_before_the_directory_is_parsed(tmp_path):
    path = hostile_zips.many_entries(tmp_path / "many.zip", 100_000)
    message, seconds, peak = _bounded(lambda p, limits: detect_format(p), path)
    assert "100000 members, more than the limit of 20000" in message
    assert seconds < 0.5 and peak < 1 << 20  # nothing parsed, only the end records read


def test_a_lying_entry_count_is_refused_by_the_directory_size(tmp_path):
    path = hostile_zips.many_entries(tmp_path / "liar.zip", 500_000, declared=10)
    message, seconds, peak = _bounded(member_names, path, ArchiveLimits(max_members=100))
    assert "directory is 23500000 bytes" in message
    assert seconds < 0.5 and peak < 1 << 20
    # within the size bound but more entries than declared: stops at the first extra one
    path = hostile_zips.many_entries(tmp_path / "liar2.zip", 2_000, declared=10)
    message, _, peak = _bounded(member_names, path, ArchiveLimits(max_members=100))
    assert "more entries than its end record says" in message and peak < 4 << 20


def test_members_may_not_overlap(tmp_path):
    path = hostile_zips.many_entries(tmp_path / "overlap.zip", 50)
    assert len(zipfile.ZipFile(path).namelist()) == 50  # a zip that zipfile reads
    with pytest.raises(InvalidModelError, match="overlaps"):
        member_names(path)


def test_deflate_bomb(tmp_path, scripted):
    honest = hostile_zips.deflate_bomb(tmp_path / "honest.pt", scripted, compressed_mib=2)
    message, seconds, _ = _bounded(member_names, honest)
    assert "declares it inflates" in message and seconds < 0.5
    liar = hostile_zips.deflate_bomb(tmp_path / "liar.pt", scripted, 2, honest=False)
    assert detect_format(liar) == TORCHSCRIPT  # the API passes it on cheaply
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InvalidModelError, match="zip bomb"):
        inspect_zip(liar)  # the child stops it at the ratio, in chunks
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - started < 5 and peak < 16 << 20


def test_sizes_that_lie_small_are_caught_when_inflating(tmp_path, scripted):
    members = hostile_zips.torchscript_members(scripted)
    deflater = zlib_raw(b"y" * 100_000)
    root = members[0].name.split("/")[0]
    liar = hostile_zips.Member(f"{root}/data/5", deflater, zipfile.ZIP_DEFLATED, 10)
    path = hostile_zips.write_zip(tmp_path / "small-liar.pt", [*members, liar])
    member_names(path)
    with pytest.raises(InvalidModelError, match="does not match its declared size"):
        inspect_zip(path)


def zlib_raw(data: bytes) -> bytes:
    import zlib

    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_archives_raise_only_invalid_model(tmp_path_factory, scripted, data):
    """Truncated, bit-flipped or random archives: InvalidModelError, never anything else."""
    raw = bytearray(scripted.read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(4, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(len(raw) - 2000, len(raw) - 1))
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
    else:
        raw = bytearray(b"PK\x03\x04" + data.draw(st.binary(max_size=4096)))
    path = tmp_path_factory.mktemp("damaged") / "d.pt"
    path.write_bytes(bytes(raw))
    for check in (member_names, inspect_zip):
        try:
            check(path)  # a damage that leaves a readable archive may pass
        except InvalidModelError as exc:  # anything else escaping fails the test
            assert exc.message
