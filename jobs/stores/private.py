"""Private files and folders: what the service stores is readable by the service's user only.

One mode for everything stored (uploads, job records, artifacts): files 0600, folders 0700,
owned by the user the API and the workers run as. A sandboxed job never reads these directly:
the worker grants the job read access to its own input only, for the job's duration.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from synflow.io.atomic import FILE_MODE, set_file_mode

__all__ = ["DIR_MODE", "FILE_MODE", "create_private_file", "private_dir", "private_file"]

#: every folder the service creates for what it stores
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parent as DIR_MODE folders (existing parents unchanged)."""
    path = Path(path)
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        os.chmod(folder, DIR_MODE)  # mkdir's mode passes through the umask
    return path


def private_file(path: Path) -> Path:
    """Give an existing file FILE_MODE (never following a link): the artifacts' mode
    (synflow/io/atomic.py), one for everything stored."""
    set_file_mode(path)
    return Path(path)


def create_private_file(path: Path) -> None:
    """Create `path` empty with FILE_MODE if it does not exist (so what opens it later, e.g.
    SQLite and its -wal and -shm companions, inherits the mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
