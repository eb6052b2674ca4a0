"""A job's scratch folder: bounded while the job runs, discarded without blocking the next.

The sandbox caps each file (RLIMIT_FSIZE) but not how many files a job makes. The worker looks
at the whole folder every poll with a scan that stops past the limit (its cost is bounded by
`max_files`, not by what the job made) and stops the job that goes over. Afterwards the folder
is renamed into `<scratch root>/.trash` at once and deleted by a background thread.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

TRASH = ".trash"


@dataclass(frozen=True)
class ScratchUsage:
    files: int  # files, folders and links, the folder itself not counted
    bytes: int  # allocated on disk (st_blocks), so sparse files count what they use
    complete: bool  # False: the scan stopped early (more than max_entries entries)


def usage(folder: Path, max_entries: int) -> ScratchUsage:
    """Entries and bytes under `folder`, never following links, stopping after max_entries."""
    files = size = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue  # removed meanwhile, or not a folder
        with entries:
            for entry in entries:
                files += 1
                if files > max_entries:
                    return ScratchUsage(files, size, complete=False)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                size += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return ScratchUsage(files, size, complete=True)


def over_limit(folder: Path, max_files: int, max_bytes: int) -> str | None:
    """Why the folder is over its limits, in words a user can act on; None when it is not."""
    found = usage(folder, max_files)
    if not found.complete or found.files > max_files:
        return (
            f"the job created more than {max_files} files in its scratch folder and was "
            "stopped (SYNFLOW_SCRATCH_MAX_FILES)"
        )
    if found.bytes > max_bytes:
        return (
            f"the job used more than {max_bytes} bytes in its scratch folder and was stopped "
            "(SYNFLOW_SCRATCH_MAX_BYTES)"
        )
    return None


def discard(folder: Path) -> threading.Thread | None:
    """Move `folder` into the scratch root's trash and delete the trash in the background.

    The rename is instant whatever the folder holds; leftovers of a worker that died while
    deleting are removed by the next call. Returns the deleting thread (tests join it).
    """
    folder = Path(folder)
    trash = folder.parent / TRASH
    try:
        trash.mkdir(mode=0o700, exist_ok=True)
        os.rename(folder, trash / f"{folder.name}-{uuid.uuid4().hex[:8]}")
    except FileNotFoundError:
        pass
    except OSError:  # e.g. another filesystem: delete in place, still in the background
        trash = folder
    thread = threading.Thread(target=_empty, args=(trash,), name="scratch-cleanup", daemon=True)
    thread.start()
    return thread


def _empty(trash: Path) -> None:
    if trash.name != TRASH:
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        names = os.listdir(trash)
    except OSError:
        return
    for name in names:
        shutil.rmtree(trash / name, ignore_errors=True)
