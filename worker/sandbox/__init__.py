"""Run untrusted work (loading and pruning an uploaded model) in a sandboxed child process.

    proc = start([sys.executable, "-m", "worker.child", "job.json"], SandboxPolicy(scratch=...))
    proc.wait(timeout=...)        # or poll(); kill() cancels and reaps everything
    proc.describe_exit()          # "killed by SIGSEGV (segmentation fault)", ...
    proc.layers                   # the protections that were actually in force

What it guarantees and what it does not: docs/sandbox.md.
"""

from __future__ import annotations

import importlib

#: public name -> module. Loaded on first use (PEP 562) so that the launcher, which imports
#: worker.sandbox.launcher in a fresh interpreter, does not pay for subprocess and dataclasses.
_EXPORTS = {
    "DEFAULT_JOB_UID": "policy",
    "SandboxLimits": "policy",
    "SandboxPolicy": "policy",
    "slot_identity": "policy",
    "SandboxError": "process",
    "SandboxedProcess": "process",
    "read_scratch_file": "process",
    "start": "process",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
