"""Tie a process's life to its parent's: Linux kills it (SIGKILL) when the parent dies, so a
killed `synflow serve` or worker leaves no orphan behind."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
#: set by `synflow serve` for its embedded worker: the pid the worker must not outlive
PARENT_PID_ENV = "_SYNFLOW_PARENT_PID"


def die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
