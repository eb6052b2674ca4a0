"""The sandbox a job runs in, from the settings (docs/sandbox.md): what it may read, what its
view hides, its limits and its uid; and the one place the child process starts."""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.settings import Settings
from worker.sandbox import SandboxedProcess, SandboxLimits, SandboxPolicy, start
from worker.slots import UidSlots

CHILD_LOG = "child.log"  # the child's stdout and stderr, together


def uid_slots(settings: Settings) -> UidSlots:
    return UidSlots(
        settings.sandbox_slot_dir, settings.sandbox_uid_base, settings.sandbox_uid_slots
    )


def sandbox_policy(
    settings: Settings, scratch: Path, input_path: Path, uid: int | None = None
) -> SandboxPolicy:
    """The job's sandbox. `uid`: the slot leased for it (worker/slots.py; only a root worker
    uses it); it reads only its input, and its view hides the service's data folders."""
    uid = settings.sandbox_uid_base if uid is None else uid
    return SandboxPolicy(
        scratch=scratch,
        uid=uid,
        gid=uid,
        read_only_paths=(input_path,),
        granted_files=(input_path,),
        hidden_paths=tuple(
            {settings.data_dir.resolve(), settings.artifacts_path, settings.scratch_path}
        ),
        limits=SandboxLimits(
            memory_bytes=settings.sandbox_memory_bytes,
            cpu_seconds=settings.cpu_seconds,
            wall_seconds=settings.job_time_limit,
            max_processes=settings.sandbox_max_processes,
            max_file_bytes=settings.sandbox_max_file_bytes,
            max_open_files=settings.sandbox_max_open_files,
        ),
        stdout_name=CHILD_LOG,
        stderr_name=CHILD_LOG,
        required_layers=settings.required_layers,
    )


def launch_child(spec_path: Path, policy: SandboxPolicy) -> SandboxedProcess:
    """The one place the child process starts: in the sandbox (docs/sandbox.md). Call it from
    the thread that waits for the child: the child dies with that thread."""
    return start([sys.executable, "-m", "worker.child", str(spec_path)], policy)
