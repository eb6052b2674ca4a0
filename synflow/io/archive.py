"""Inspect a zip archive before anything loads it.

`torch.jit.load` trusts the archive: a 400 KB TorchScript zip whose code member inflates to
32 MiB kills the loading process with SIGSEGV. So every archive is checked here first, with the
standard library only: member count, per-member and total uncompressed size, compression ratio,
the size of the code it carries, and member names (no absolute paths, no `..`). Declared sizes
can lie, so compressed members are also inflated in bounded chunks to count their real size.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from synflow.errors import InvalidModelError

MiB = 1 << 20
GiB = 1 << 30
_CHUNK = 1 * MiB


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 20_000
    max_member_bytes: int = 8 * GiB
    max_total_bytes: int = 16 * GiB
    max_code_bytes: int = 16 * MiB  # all `code/` and `.debug_pkl` members together
    #: a compressed member larger than `ratio_floor_bytes` may inflate at most this much
    max_ratio: float = 50.0
    ratio_floor_bytes: int = 1 * MiB


def _is_code(name: str) -> bool:
    return "/code/" in name or name.endswith(".debug_pkl")


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or ":" in path.parts[0]:
        raise InvalidModelError(f"archive member {name!r} has an absolute path; refusing it")
    if ".." in path.parts or "\\" in name:
        raise InvalidModelError(f"archive member {name!r} escapes the archive root; refusing it")


def _inflated_size(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> int:
    size = 0
    with archive.open(info) as member:
        while chunk := member.read(_CHUNK):
            size += len(chunk)
            if size > cap:
                break
    return size


def inspect_zip(path: str | Path, limits: ArchiveLimits | None = None) -> list[str]:
    """Member names of a zip that passed every check; InvalidModelError naming the one it failed."""
    limits = limits or ArchiveLimits()
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > limits.max_members:
                raise InvalidModelError(
                    f"the archive has {len(infos)} members, more than the limit of "
                    f"{limits.max_members}"
                )
            total = code = 0
            for info in infos:
                _check_name(info.filename)
                size = info.file_size
                if info.compress_type != zipfile.ZIP_STORED:
                    cap = min(limits.max_member_bytes, limits.max_total_bytes - total)
                    if _is_code(info.filename):
                        cap = min(cap, limits.max_code_bytes - code)
                    size = max(size, _inflated_size(archive, info, cap))
                    ratio = size / max(info.compress_size, 1)
                    if size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
                        raise InvalidModelError(
                            f"archive member {info.filename!r} inflates {ratio:.0f}x "
                            f"(to {size / MiB:.1f} MiB): refusing a likely zip bomb"
                        )
                if size > limits.max_member_bytes:
                    raise InvalidModelError(
                        f"archive member {info.filename!r} is larger than the limit of "
                        f"{limits.max_member_bytes / GiB:.1f} GiB"
                    )
                total += size
                if total > limits.max_total_bytes:
                    raise InvalidModelError(
                        f"the archive inflates beyond the limit of "
                        f"{limits.max_total_bytes / GiB:.1f} GiB"
                    )
                if _is_code(info.filename):
                    code += size
                    if code > limits.max_code_bytes:
                        raise InvalidModelError(
                            f"the archive carries more than {limits.max_code_bytes / MiB:.0f} MiB "
                            "of TorchScript code; refusing it"
                        )
            return [info.filename for info in infos]
    except zipfile.BadZipFile as exc:
        raise InvalidModelError(
            f"the file starts like a zip archive but cannot be read as one ({exc}); "
            "is it truncated? Upload the complete file written by torch.jit.save"
        ) from exc
    except (EOFError, zlib.error, RuntimeError, ValueError) as exc:
        # zlib errors, CRC mismatches, encrypted members, truncated data
        raise InvalidModelError(f"the zip archive is damaged: {exc}") from exc
