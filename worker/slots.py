"""Job uids unique per host: a root worker leases a uid for each job through a lock file.

A job runs as its own uid so that RLIMIT_NPROC counts only its processes and so that its start
may kill whatever an earlier job of that uid left behind. Several workers on one host (one per
GPU) must therefore never run two jobs as the same uid at once: each job holds an exclusive
`flock` on `<slot dir>/uid-<uid>.lock` from before its sandbox starts until its last process is
gone. The kernel drops the lock when the holder dies, so a killed worker frees its slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from jobs.stores.private import private_dir

#: how often a worker whose host has every slot taken looks again
RETRY_S = 0.2


class NoFreeSlot(Exception):
    """Every uid slot of the host stayed taken for the whole wait."""


class UidSlots:
    def __init__(self, directory: Path, base: int, count: int):
        self.directory = Path(directory)
        self.base = base
        self.count = count

    def _try(self, uid: int) -> int | None:
        path = self.directory / f"uid-{uid}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def lease(self, timeout: float) -> Iterator[int]:
        """Hold the first free uid of base .. base + count - 1 while the block runs."""
        private_dir(self.directory)
        deadline = time.monotonic() + timeout
        while True:
            for uid in range(self.base, self.base + self.count):
                fd = self._try(uid)
                if fd is not None:
                    try:
                        yield uid
                    finally:
                        os.close(fd)  # releases the lock
                    return
            if time.monotonic() >= deadline:
                raise NoFreeSlot(
                    f"all {self.count} job uids from {self.base} are in use on this host "
                    "(raise SYNFLOW_SANDBOX_UID_SLOTS or run fewer workers here)"
                )
            time.sleep(RETRY_S)
