"""What a sandboxed job may do: limits, paths, identity and environment.

Plain dataclasses (no pydantic): the launcher reads them back in a fresh interpreter where every
millisecond of import time is setup cost. The service's Settings fill them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: the folder holding the project's packages: a checkout, or site-packages once installed
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: the only packages of the project a job imports (read only); the rest of a checkout (data,
#: dotfiles such as .env and .git, other code) stays out of the job's reach
CODE_PACKAGES = ("synflow", "worker")
#: folder in scratch whose links to CODE_PACKAGES are the job's PYTHONPATH
CODE_VIEW = ".code"

#: the first job slot's uid and gid; slot N runs as DEFAULT_JOB_UID + N (see `slot_identity`)
DEFAULT_JOB_UID = 61000

#: system paths every job may read and execute: libraries, loader config, /proc and /sys
#: (torch reads CPU topology there). /etc only where the dynamic loader or libc need it.
SYSTEM_READ_ONLY = (
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/alternatives",
    "/proc", "/sys",
)  # fmt: skip

#: devices a job may open read-write (with ioctls: CUDA drives the GPU through them)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
GPU_DEVICE_PREFIXES = ("nvidia",)

#: environment variables copied from the worker when set (no secrets: an allow list)
PASSTHROUGH_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LANG", "LC_ALL")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits, enforced by the kernel (rlimits) and the launcher (wall clock)."""

    #: RLIMIT_DATA: heap and private mappings. Not RLIMIT_AS, which breaks many-threaded torch
    #: and CUDA (it reserves address space far beyond what it uses).
    memory_bytes: int = 8 << 30
    #: RLIMIT_CPU, summed over the job's threads: SIGXCPU at the limit, SIGKILL 2 s later
    cpu_seconds: int = 3600
    #: killed by the launcher after this long, whatever it is doing
    wall_seconds: float = 3600.0
    #: RLIMIT_NPROC: processes *and threads* of the job's uid (hence one uid per job slot)
    max_processes: int = 256
    #: RLIMIT_FSIZE: the largest file the job may write (its outputs and logs included)
    max_file_bytes: int = 8 << 30
    #: RLIMIT_NOFILE
    max_open_files: int = 1024


@dataclass(frozen=True)
class SandboxPolicy:
    """Everything `start` needs besides the command line."""

    #: the job's only writable directory; made the job's own (chown) and its cwd, HOME and TMPDIR
    scratch: Path
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    #: inputs the job may read besides the interpreter, the project's code and system libraries
    read_only_paths: tuple[Path, ...] = ()
    #: files of `read_only_paths` the service keeps private (mode 0600): a root worker makes
    #: them readable by the job's gid (0640) for the job's duration only
    granted_files: tuple[Path, ...] = ()
    #: folders the job's filesystem view replaces with an empty one (what the job needs inside
    #: is bound back): the service's data, artifacts and scratch roots. The checkout around the
    #: project's code is always hidden.
    hidden_paths: tuple[Path, ...] = ()
    #: identity of the job when the worker is root: give each concurrent job slot its own uid,
    #: because RLIMIT_NPROC counts all processes of a uid system-wide, and because starting a
    #: job first kills every process of its uid (leftovers of a worker that died)
    uid: int = DEFAULT_JOB_UID
    gid: int = DEFAULT_JOB_UID
    #: OMP/MKL thread count; None keeps the worker's setting (or the libraries' default)
    threads: int | None = None
    #: extra environment variables (never put secrets here)
    env: dict[str, str] = field(default_factory=dict)
    #: file names in scratch for the job's stdout and stderr (the same name merges them)
    stdout_name: str = "stdout.log"
    stderr_name: str = "stderr.log"
    #: layers that must be active or the job does not start (e.g. {"uid-drop", "landlock-fs",
    #: "seccomp"} in production); see `layers.py` for the names
    required_layers: frozenset[str] = frozenset()
    #: turn off to emulate a host without namespaces (a default Docker seccomp profile)
    namespaces: bool = True
    #: "auto": a user namespace when the worker is not root (the only way it gets namespaces);
    #: "always": also as root, which then keeps the job on the worker's uid (tests use this to
    #: exercise the unprivileged route); "never"
    user_namespace: Literal["auto", "always", "never"] = "auto"
    #: turn off only to emulate an unprivileged host in tests: as root, the job then keeps root
    drop_privileges: bool = True
    #: where the launcher keeps its control files (root-only, never visible to the job)
    control_root: Path | None = None


def slot_identity(slot: int, base: int = DEFAULT_JOB_UID) -> tuple[int, int]:
    """(uid, gid) for job slot `slot`: a distinct uid per concurrently running job."""
    return base + slot, base + slot


def is_checkout(root: Path = PROJECT_ROOT) -> bool:
    """Whether the project runs from a source tree (not from an installed site-packages)."""
    return root.name not in ("site-packages", "dist-packages")


def code_paths() -> list[str]:
    """The project's packages a job imports: the only part of a checkout it may read."""
    return [str(PROJECT_ROOT / name) for name in CODE_PACKAGES]


def python_read_only_paths() -> list[str]:
    """The interpreter, its standard library, the venv and site-packages (not the checkout).

    Other sys.path entries (e.g. the worker's current directory or a checkout on PYTHONPATH)
    are left out: the project's own packages are `code_paths()`; pass anything else the job
    needs in `read_only_paths`.
    """
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths = set(prefixes)
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    for entry in sys.path:
        if not entry or not os.path.isabs(entry):
            continue
        under_prefix = any(entry == p or entry.startswith(p.rstrip("/") + "/") for p in prefixes)
        if under_prefix or os.path.basename(entry) in ("site-packages", "dist-packages"):
            paths.add(entry)
    return sorted(p for p in paths if os.path.exists(p))


def device_paths() -> list[str]:
    found = [d for d in DEVICES if os.path.exists(d)]
    with contextlib.suppress(OSError):
        found += [
            f"/dev/{name}"
            for name in sorted(os.listdir("/dev"))
            if name.startswith(GPU_DEVICE_PREFIXES)
        ]
    return found


def job_environment(policy: SandboxPolicy) -> dict[str, str]:
    """A minimal environment: nothing of the worker's except an allow list (no secrets)."""
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    bin_dir = os.path.dirname(sys.executable)
    env.update(
        PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        PYTHONPATH=str(Path(policy.scratch) / CODE_VIEW),
        HOME=str(policy.scratch),
        TMPDIR=str(policy.scratch),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        PYTHONNOUSERSITE="1",
        # the job's uid has no passwd entry: libraries that ask getpass.getuser() get this
        USER="sandbox",
        LOGNAME="sandbox",
    )
    env.setdefault("LANG", "C.UTF-8")
    threads = policy.threads
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads is not None:
            env[name] = str(threads)
        elif name in os.environ:
            env[name] = os.environ[name]
    env.update(policy.env)
    return env
