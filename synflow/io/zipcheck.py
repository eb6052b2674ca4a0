"""Read a zip's central directory without inflating anything, in bounded reads.

This is the check the API can afford on an untrusted upload: the end-of-central-directory
record (zip64 too), then the directory itself in fixed-size chunks, with the entry count and the
directory's size bounded from the end record *before* a single entry is parsed. It checks member
names, declared sizes, declared compression ratios, compression methods (stored and deflate only)
and that members do not overlap. Python's `zipfile` is not used: it reads the whole directory
into objects first (8M entries took 107 s and 5.9 GB) and would inflate bzip2 without a cap.

Declared sizes can lie; `synflow.io.archive.inspect_zip` (run in the sandboxed child) inflates
every member with an output cap to count the real ones.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from synflow.errors import InvalidModelError
from synflow.io.limits import ArchiveLimits, GiB, MiB

STORED = 0
DEFLATED = 8
ALLOWED_METHODS = {STORED: "stored", DEFLATED: "deflate"}
#: names of the methods we refuse, for the message
_METHOD_NAMES = {9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstandard", 95: "xz", 98: "ppmd"}

_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory record
_EOCD_SIG = 0x06054B50
_LOCATOR = struct.Struct("<IIQI")  # zip64 end of central directory locator
_LOCATOR_SIG = 0x07064B50
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # zip64 end of central directory record
_EOCD64_SIG = 0x06064B50
_ENTRY = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory file header
_ENTRY_SIG = 0x02014B50
LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
LOCAL_HEADER_SIG = 0x04034B50
_MAX_COMMENT = 0xFFFF
_ZIP64_EXTRA = 0x0001
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
#: what one directory entry may take beyond its fixed header (name + extra + comment): the
#: directory's declared size is bounded by this times the entry cap before it is read
MAX_ENTRY_VARIABLE_BYTES = 4096
_READ_CHUNK = 1 * MiB


@dataclass(frozen=True)
class ZipEntry:
    """One member as the central directory declares it."""

    name: str
    method: int
    flags: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int  # of its local header, from the start of the file
    name_length: int  # bytes of the name as stored


def is_code(name: str) -> bool:
    """TorchScript code members, whose size `max_code_bytes` bounds."""
    return "/code/" in name or name.endswith(".debug_pkl")


def check_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or "\0" in name:
        raise InvalidModelError(f"archive member {name!r} has an empty or NUL name; refusing it")
    if name.startswith(("/", "\\")) or path.is_absolute() or ":" in path.parts[0]:
        raise InvalidModelError(f"archive member {name!r} has an absolute path; refusing it")
    if ".." in path.parts or "\\" in name:
        raise InvalidModelError(f"archive member {name!r} escapes the archive root; refusing it")


def _damaged(what: str) -> InvalidModelError:
    return InvalidModelError(
        f"the file starts like a zip archive but cannot be read as one ({what}); is it "
        "truncated? Upload the complete file written by torch.jit.save"
    )


def _read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def _directory_bounds(
    fh: BinaryIO, file_size: int, limits: ArchiveLimits
) -> tuple[int, int, int, int]:
    """(entry count, start, end, prefix) of the central directory, from the end records, every
    bound checked; `prefix` is the length of data prepended to the zip (offsets shift by it)."""
    tail_start = max(0, file_size - _EOCD.size - _MAX_COMMENT)
    tail = _read_at(fh, tail_start, file_size - tail_start)
    # the end record is the last signature whose comment runs exactly to the end of the file
    at = len(tail)
    while True:
        at = tail.rfind(_EOCD_SIG.to_bytes(4, "little"), 0, at)
        if at < 0:
            raise _damaged("no end-of-central-directory record")
        if at + _EOCD.size <= len(tail):
            _, disk, cd_disk, _, count, size, offset, comment = _EOCD.unpack_from(tail, at)
            if at + _EOCD.size + comment == len(tail):
                break
    eocd_pos = tail_start + at
    if disk != 0 or cd_disk != 0:
        raise InvalidModelError("multi-disk (split) zip archives are not accepted")
    end = eocd_pos  # where the directory must end (before the zip64 records, if any)
    locator_pos = eocd_pos - _LOCATOR.size
    locator = _read_at(fh, locator_pos, _LOCATOR.size) if locator_pos >= 0 else b""
    if len(locator) == _LOCATOR.size and _LOCATOR.unpack(locator)[0] == _LOCATOR_SIG:
        # the zip64 record sits right before its locator (torch writes one on every archive)
        record_at = locator_pos - _EOCD64.size
        if record_at < 0:
            raise _damaged("the zip64 end record is out of place")
        fields = _EOCD64.unpack(_read_at(fh, record_at, _EOCD64.size))
        if fields[0] != _EOCD64_SIG:
            raise _damaged("no zip64 end-of-central-directory record")
        count, size, offset = fields[7], fields[8], fields[9]
        end = record_at
    elif count == 0xFFFF or 0xFFFFFFFF in (size, offset):
        raise _damaged("zip64 sizes without a zip64 end record")
    # the entry cap and the directory's size are checked before any entry is parsed
    if count > limits.max_members:
        raise InvalidModelError(
            f"the archive has {count} members, more than the limit of {limits.max_members}"
        )
    if size > limits.max_members * (_ENTRY.size + MAX_ENTRY_VARIABLE_BYTES):
        raise InvalidModelError(
            f"the archive's directory is {size} bytes, more than {limits.max_members} members "
            "may take; refusing it"
        )
    if size > end or size < count * _ENTRY.size:
        raise _damaged("the central directory's declared size does not fit the file")
    start = end - size  # prepended data (a self-extracting stub) shifts every offset
    prefix = start - offset
    if prefix < 0:
        raise _damaged("the central directory's offset is past its end")
    return count, start, end, prefix


def _chunks(fh: BinaryIO, start: int, size: int) -> Iterator[bytes]:
    fh.seek(start)
    left = size
    while left > 0:
        chunk = fh.read(min(_READ_CHUNK, left))
        if not chunk:
            raise _damaged("the central directory is truncated")
        left -= len(chunk)
        yield chunk


def _zip64(extra: bytes, file_size: int, compress_size: int, offset: int) -> tuple[int, int, int]:
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        if tag == _ZIP64_EXTRA:
            values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            out = []
            for declared in (file_size, compress_size, offset):
                if declared == 0xFFFFFFFF:
                    if not values:
                        raise _damaged("a zip64 extra field is too short")
                    declared = values.pop(0)
                out.append(declared)
            return out[0], out[1], out[2]
        at += 4 + length
    return file_size, compress_size, offset


def _entries(fh: BinaryIO, count: int, start: int, end: int, prefix: int) -> Iterator[ZipEntry]:
    """Parse the directory [start, end) in bounded chunks; at most `count` entries."""
    buffer = bytearray()
    chunks = _chunks(fh, start, end - start)
    parsed = 0

    def need(n: int) -> bool:
        while len(buffer) < n:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            buffer.extend(chunk)
        return True

    while need(1):
        if parsed >= count:
            raise _damaged("the central directory holds more entries than its end record says")
        if not need(_ENTRY.size):
            raise _damaged("a central directory entry is truncated")
        fields = _ENTRY.unpack_from(buffer)
        if fields[0] != _ENTRY_SIG:
            raise _damaged("a central directory entry has a bad signature")
        flags, method, crc = fields[3], fields[4], fields[7]
        name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
        variable = name_len + extra_len + comment_len
        if variable > MAX_ENTRY_VARIABLE_BYTES:
            raise InvalidModelError(
                f"an archive member's name and extra fields take {variable} bytes, more than "
                f"{MAX_ENTRY_VARIABLE_BYTES}; refusing it"
            )
        if not need(_ENTRY.size + variable):
            raise _damaged("a central directory entry is truncated")
        raw_name = bytes(buffer[_ENTRY.size : _ENTRY.size + name_len])
        extra = bytes(buffer[_ENTRY.size + name_len : _ENTRY.size + name_len + extra_len])
        del buffer[: _ENTRY.size + variable]
        try:
            name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
        except UnicodeDecodeError:
            raise InvalidModelError("an archive member's name is not valid UTF-8") from None
        file_size, compress_size, offset = _zip64(extra, fields[9], fields[8], fields[16])
        parsed += 1
        yield ZipEntry(
            name, method, flags, crc, compress_size, file_size, offset + prefix, name_len
        )
    if parsed != count:
        raise _damaged(f"the end record declares {count} entries, the directory holds {parsed}")


def _check_entry(entry: ZipEntry, limits: ArchiveLimits) -> None:
    check_name(entry.name)
    if entry.flags & _FLAG_ENCRYPTED:
        raise InvalidModelError(f"archive member {entry.name!r} is encrypted; refusing it")
    if entry.method not in ALLOWED_METHODS:
        method = _METHOD_NAMES.get(entry.method, f"method {entry.method}")
        raise InvalidModelError(
            f"archive member {entry.name!r} is compressed with {method}; only stored and "
            "deflate members are accepted (torch.jit.save writes those): save the model again "
            "with torch.jit.save"
        )
    if entry.method == STORED and entry.compress_size != entry.file_size:
        raise _damaged(f"stored member {entry.name!r} declares two different sizes")
    if entry.file_size > limits.max_member_bytes:
        raise InvalidModelError(
            f"archive member {entry.name!r} is larger than the limit of "
            f"{limits.max_member_bytes / GiB:.1f} GiB"
        )
    ratio = entry.file_size / max(entry.compress_size, 1)
    if entry.file_size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
        raise InvalidModelError(
            f"archive member {entry.name!r} declares it inflates {ratio:.0f}x "
            f"(to {entry.file_size / MiB:.1f} MiB): refusing a likely zip bomb"
        )


def add_to_totals(entry_name: str, size: int, totals: list[int], limits: ArchiveLimits) -> None:
    """Count one member's size into `totals` = [all, code]; raise past the archive's limits."""
    totals[0] += size
    if totals[0] > limits.max_total_bytes:
        raise InvalidModelError(
            f"the archive inflates beyond the limit of {limits.max_total_bytes / GiB:.1f} GiB"
        )
    if is_code(entry_name):
        totals[1] += size
        if totals[1] > limits.max_code_bytes:
            raise InvalidModelError(
                f"the archive carries more than {limits.max_code_bytes / MiB:.0f} MiB "
                "of TorchScript code; refusing it"
            )


def read_directory(path: str | Path, limits: ArchiveLimits | None = None) -> list[ZipEntry]:
    """The members of a zip whose directory passed every declared-size check, in file order.

    Reads at most the end records and the central directory (bounded by the entry cap), never a
    member's data; raises InvalidModelError naming the check that failed.
    """
    limits = limits or ArchiveLimits()
    try:
        with open(path, "rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            count, start, end, prefix = _directory_bounds(fh, file_size, limits)
            entries = []
            totals = [0, 0]
            for entry in _entries(fh, count, start, end, prefix):
                _check_entry(entry, limits)
                add_to_totals(entry.name, entry.file_size, totals, limits)
                entries.append(entry)
    except (struct.error, OverflowError, ValueError) as exc:
        raise _damaged(str(exc)) from exc
    _check_layout(entries, start)
    return entries


def _check_layout(entries: list[ZipEntry], directory_start: int) -> None:
    """Members lie one after another before the directory: no two share bytes (overlapping
    members are how a small zip inflates to far more than its declared total)."""
    ordered = sorted(entries, key=lambda e: e.header_offset)
    for entry, following in zip(ordered, [*ordered[1:], None], strict=True):
        limit = following.header_offset if following is not None else directory_start
        span = LOCAL_HEADER.size + entry.name_length + entry.compress_size
        if entry.header_offset + span > limit:
            raise InvalidModelError(
                f"archive member {entry.name!r} overlaps another member or the directory; "
                "refusing it"
            )


def member_names(path: str | Path, limits: ArchiveLimits | None = None) -> list[str]:
    """Names of the members, after the cheap checks of `read_directory` (no inflation)."""
    return [entry.name for entry in read_directory(path, limits)]
