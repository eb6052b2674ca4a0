"""Write a file so that no reader ever sees half of it: a temporary name, then one rename.

Every artifact (masks, weights, model, report, report.png) goes through here, so all of them
get one mode, `FILE_MODE`, whatever the umask or the library that wrote the bytes (safetensors
creates 0600 files, `open()` 0644): on the command line as in the service's store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: the mode of every artifact file: read and write for its owner only (models, masks and
#: reports are often private); the service stores everything with it (jobs/stores/private.py)
FILE_MODE = 0o600


def set_file_mode(path: Path) -> None:
    """Give an existing file FILE_MODE, never following a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` for a temporary name beside `path`, give it FILE_MODE, then rename
    it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        set_file_mode(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what mkdir(parents) creates):
    removing it undoes a failed write into `path`."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing
