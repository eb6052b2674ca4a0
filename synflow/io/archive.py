"""Inspect a zip archive before anything loads it, inflating every member with an output cap.

`torch.jit.load` trusts the archive: a 400 KB TorchScript zip whose code member inflates to
32 MiB kills the loading process with SIGSEGV. So every archive is checked here first, with the
standard library only. `synflow.io.zipcheck` reads the directory (entry cap, names, declared
sizes and ratios, stored and deflate only, no overlaps) without inflating; declared sizes can
lie, so each deflate member is then inflated here, streamed through `zlib` with `max_length`
and stopped at its cap, to count its real size and check its CRC. This inflation is meant for
the sandboxed child, under its limits; the API runs only the directory check.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import BinaryIO

from synflow.errors import InvalidModelError
from synflow.io.limits import ArchiveLimits, GiB, MiB
from synflow.io.zipcheck import (
    DEFLATED,
    LOCAL_HEADER,
    LOCAL_HEADER_SIG,
    ZipEntry,
    add_to_totals,
    is_code,
    read_directory,
)

_CHUNK = 1 * MiB


def _data_offset(fh: BinaryIO, entry: ZipEntry) -> int:
    fh.seek(entry.header_offset)
    header = fh.read(LOCAL_HEADER.size)
    if len(header) != LOCAL_HEADER.size or LOCAL_HEADER.unpack(header)[0] != LOCAL_HEADER_SIG:
        raise InvalidModelError(f"the zip archive is damaged: no local header for {entry.name!r}")
    *_, name_len, extra_len = LOCAL_HEADER.unpack(header)
    return entry.header_offset + LOCAL_HEADER.size + name_len + extra_len


def _inflated_size(fh: BinaryIO, entry: ZipEntry, cap: int) -> int:
    """Bytes the member inflates to, counting stops just past `cap` (never more is produced)."""
    fh.seek(_data_offset(fh, entry))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    left, size, crc = entry.compress_size, 0, 0
    while left > 0 and not inflater.eof:
        data = fh.read(min(_CHUNK, left))
        if not data:
            raise InvalidModelError(f"the zip archive is damaged: {entry.name!r} is truncated")
        left -= len(data)
        while data and not inflater.eof:
            out = inflater.decompress(data, _CHUNK)
            data = inflater.unconsumed_tail
            size += len(out)
            if size > cap:
                return size
            crc = zlib.crc32(out, crc)
    if not inflater.eof:
        raise InvalidModelError(f"the zip archive is damaged: {entry.name!r} is truncated")
    if crc != entry.crc or size != entry.file_size:
        raise InvalidModelError(
            f"the zip archive is damaged: {entry.name!r} does not match its declared size and CRC"
        )
    return size


def inspect_zip(path: str | Path, limits: ArchiveLimits | None = None) -> list[str]:
    """Member names of a zip that passed every check; InvalidModelError naming the one it failed."""
    limits = limits or ArchiveLimits()
    entries = read_directory(path, limits)
    totals = [0, 0]  # all members, code members: real sizes
    try:
        with open(path, "rb") as fh:
            for entry in entries:
                size = entry.file_size
                if entry.method == DEFLATED:
                    cap = min(limits.max_member_bytes, limits.max_total_bytes - totals[0])
                    if is_code(entry.name):
                        cap = min(cap, limits.max_code_bytes - totals[1])
                    # a bomb is stopped as soon as it passes the ratio, not at the size cap
                    ratio_cap = max(limits.ratio_floor_bytes,
                                    int(entry.compress_size * limits.max_ratio))  # fmt: skip
                    size = _inflated_size(fh, entry, max(min(cap, ratio_cap), 0))
                    ratio = size / max(entry.compress_size, 1)
                    if size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
                        raise InvalidModelError(
                            f"archive member {entry.name!r} inflates {ratio:.0f}x "
                            f"(to {size / MiB:.1f} MiB): refusing a likely zip bomb"
                        )
                if size > limits.max_member_bytes:
                    raise InvalidModelError(
                        f"archive member {entry.name!r} is larger than the limit of "
                        f"{limits.max_member_bytes / GiB:.1f} GiB"
                    )
                add_to_totals(entry.name, size, totals, limits)
    except (zlib.error, OSError, ValueError, OverflowError) as exc:
        raise InvalidModelError(f"the zip archive is damaged: {exc}") from exc
    return [entry.name for entry in entries]
