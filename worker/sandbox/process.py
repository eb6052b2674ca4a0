"""Start a sandboxed process and watch it: the worker's side of the sandbox.

`start(argv, policy)` writes the launch plan to a root-only control directory and starts the
launcher (see launcher.py), which applies every layer it can and execs argv. The returned
`SandboxedProcess` behaves like a `subprocess.Popen` for the worker's loop (poll, wait with
subprocess.TimeoutExpired, kill, returncode) and adds `layers` and `describe_exit()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import syscall_filter
from .launcher import SETUP_FAILED
from .policy import (
    CODE_PACKAGES,
    CODE_VIEW,
    PROJECT_ROOT,
    SYSTEM_READ_ONLY,
    SandboxPolicy,
    code_paths,
    device_paths,
    is_checkout,
    job_environment,
    python_read_only_paths,
)

#: after asking the launcher to stop, how long before it is SIGKILLed itself
KILL_GRACE_S = 5.0
#: the worker's own wall-clock backstop beyond the launcher's (which normally fires first)
WALL_BACKSTOP_S = 5.0
#: how much of the job's stderr `describe_exit` looks at
STDERR_TAIL_BYTES = 16384
#: what allocators print when RLIMIT_DATA refuses them memory
OUT_OF_MEMORY_SIGNS = (
    b"MemoryError",
    b"std::bad_alloc",
    b"Cannot allocate memory",
    b"can't allocate memory",
    b"out of memory",
)


class SandboxError(Exception):
    """The sandbox could not be started (a problem of the worker's setup, not of the job)."""


class SandboxedProcess:
    """A running (or finished) sandboxed job. Create with `start`."""

    def __init__(
        self,
        launcher: subprocess.Popen,
        policy: SandboxPolicy,
        control: Path,
        start_wall: float,
        grants: list[_Grant] | None = None,
    ):
        self._launcher = launcher
        self._grants = grants or []
        self._oom_kills_before = oom_kills()
        self._oom_kills_after: int | None = None
        self._start_wall = start_wall
        self.policy = policy
        self.control = control
        self.started_at = time.monotonic()
        self._started: dict | None = None
        self._exit: dict | None = None
        self._killed = False
        self._backstop_fired = False

    @property
    def pid(self) -> int:
        """The launcher's pid (the job itself may be in a pid namespace of its own)."""
        return self._launcher.pid

    # --- Popen-like ---------------------------------------------------------------------------

    def poll(self) -> int | None:
        if self._launcher.poll() is None:
            self._enforce_wall_backstop()
            return None
        self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the job to end; raises subprocess.TimeoutExpired like Popen.wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
            try:
                self._launcher.wait(step)
            except subprocess.TimeoutExpired:
                self._enforce_wall_backstop()
                if deadline is not None and time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(self._launcher.args, timeout) from None
                continue
            self._finish()
            return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        """Kill the job and everything it started (setsid()-ed grandchildren included)."""
        if self._launcher.poll() is not None:
            self._finish()
            return
        self._killed = True
        with contextlib.suppress(ProcessLookupError):
            self._launcher.send_signal(signal.SIGTERM)  # the launcher kills init, then sweeps
        try:
            self._launcher.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self._launcher.kill()  # init and the job die of PDEATHSIG
            self._launcher.wait()
        self._finish()

    @property
    def returncode(self) -> int | None:
        """Like Popen.returncode: the job's exit code, or -N if a signal N killed it."""
        if self._exit is None:
            return None
        status = self._exit.get("status") or {}
        if "signal" in status:
            return -status["signal"]
        return status.get("exit_code", SETUP_FAILED)

    # --- sandbox specifics --------------------------------------------------------------------

    @property
    def layers(self) -> list[str]:
        """The protections in force for this job, as reported by the job's own setup.

        Waits (briefly) for the setup to finish. Names starting with "!" are layers that were
        attempted and are not active, with why.
        """
        started = self._wait_started()
        return list(started.get("layers", [])) if started else []

    @property
    def setup_seconds(self) -> float | None:
        """Seconds from `start()` to the job's execve (launcher start-up included)."""
        started = self._wait_started()
        if not started:
            return None
        return started["at"] - self._start_wall

    def describe_exit(self) -> str:
        """Why the job ended, in words a user can act on."""
        if self._exit is None:
            return "still running"
        limits = self.policy.limits
        reason = self._exit.get("reason")
        if self._exit.get("setup_error"):
            return f"sandbox setup failed: {self._exit['setup_error']}"
        if reason == "wall" or self._backstop_fired:
            return f"wall-clock limit exceeded ({limits.wall_seconds:g} s)"
        if reason == "killed" or self._killed:
            return "killed by the worker (cancelled)"
        status = self._exit.get("status") or {}
        usage = self._exit.get("rusage") or {}
        sig = status.get("signal")
        code = status.get("exit_code")
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and usage.get("cpu_seconds", 0) >= limits.cpu_seconds
        ):
            return f"CPU time limit exceeded ({limits.cpu_seconds} s, SIGXCPU)"
        if sig == signal.SIGXFSZ:
            return f"file size limit exceeded ({limits.max_file_bytes} bytes, SIGXFSZ)"
        if code != 0 and self._looks_out_of_memory():
            return f"exceeded the memory limit ({limits.memory_bytes / 2**20:.0f} MiB)"
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            detail = {
                signal.SIGSEGV: " (segmentation fault)",
                signal.SIGBUS: " (bus error)",
                # not sent by the sandbox (that would be the wall clock or a cancel, above)
                signal.SIGKILL: " (the kernel's or the container's out-of-memory killer)"
                if self._oom_killed()
                else " (from outside the sandbox: none of its limits, and no out-of-memory "
                "kill on this host meanwhile)",
            }
            return f"killed by {name}{detail.get(sig, '')}"
        if code == 0:
            return "exited normally"
        return f"exited with status {code}"

    def stderr_tail(self, limit: int = STDERR_TAIL_BYTES) -> bytes:
        try:
            return read_scratch_file(self.policy.scratch, self.policy.stderr_name, tail=limit)
        except (OSError, ValueError):
            return b""

    # --- internals ----------------------------------------------------------------------------

    def _oom_killed(self) -> bool:
        """Evidence of an OOM kill while the job ran: the host's or our cgroup's counter grew."""
        after = self._oom_kills_after if self._oom_kills_after is not None else oom_kills()
        return after > self._oom_kills_before

    def _looks_out_of_memory(self) -> bool:
        tail = self.stderr_tail()
        return any(sign in tail for sign in OUT_OF_MEMORY_SIGNS)

    def _wait_started(self, timeout: float = 30.0) -> dict | None:
        deadline = time.monotonic() + timeout
        while self._started is None:
            path = self.control / "started.json"
            if path.exists():
                self._started = json.loads(path.read_text())
            elif self._launcher.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    self._started = json.loads(path.read_text())
                break
            else:
                time.sleep(0.005)
        return self._started

    def _enforce_wall_backstop(self) -> None:
        elapsed = time.monotonic() - self.started_at
        if elapsed > self.policy.limits.wall_seconds + WALL_BACKSTOP_S:
            self._backstop_fired = True
            self.kill()

    def _finish(self) -> None:
        if self._exit is not None:
            return
        self._oom_kills_after = oom_kills()
        for grant in self._grants:
            grant.revoke()
        self._grants = []
        self._wait_started(timeout=0)
        try:
            self._exit = json.loads((self.control / "exit.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            log = (self.control / "launcher.log").read_text(errors="replace")[-2000:]
            code = self._launcher.returncode
            self._exit = {
                "status": {"signal": -code} if code < 0 else {"exit_code": SETUP_FAILED},
                "reason": "killed" if self._killed else None,
                "setup_error": None if self._killed else f"launcher exited {code}: {log}",
            }
        shutil.rmtree(self.control, ignore_errors=True)


def start(argv: list[str], policy: SandboxPolicy) -> SandboxedProcess:
    """Start argv in the sandbox. The job's stdout and stderr go to files in scratch.

    The job dies with the thread that called this (a parent-death signal: Linux ties it to the
    thread), so call it from the thread that waits for the job, not from a short-lived one.
    """
    scratch = Path(policy.scratch).resolve()
    if not scratch.is_dir():
        raise SandboxError(f"scratch directory {scratch} does not exist")
    policy = replace(policy, scratch=scratch)
    _make_code_view(scratch)
    env = job_environment(policy)
    executable = shutil.which(argv[0], path=env["PATH"]) if "/" not in argv[0] else argv[0]
    if not executable:
        raise SandboxError(f"{argv[0]} not found on the sandbox's PATH")
    read_only = sorted(
        {
            *SYSTEM_READ_ONLY,
            *python_read_only_paths(),
            *code_paths(),
            *map(str, policy.read_only_paths),
        }
    )
    hidden = [str(PROJECT_ROOT)] if is_checkout() else []
    hidden += [str(Path(p).resolve()) for p in policy.hidden_paths]
    try:
        seccomp_bpf, seccomp_error = syscall_filter.compile_filter().hex(), None
    except OSError as e:
        seccomp_bpf, seccomp_error = None, str(e)
    control = Path(tempfile.mkdtemp(prefix="sandbox-", dir=policy.control_root))
    plan = {
        "argv": list(argv),
        "executable": os.path.abspath(executable),
        "env": env,
        "scratch": str(scratch),
        "read_only": [p for p in read_only if os.path.exists(p)],
        "hidden": [p for p in hidden if os.path.isdir(p)],
        "devices": device_paths(),
        "seccomp_bpf": seccomp_bpf,
        "seccomp_error": seccomp_error,
        "limits": asdict(policy.limits),
        "uid": policy.uid,
        "gid": policy.gid,
        "stdout_name": policy.stdout_name,
        "stderr_name": policy.stderr_name,
        "required_layers": sorted(policy.required_layers),
        "namespaces": policy.namespaces,
        "user_namespace": policy.user_namespace,
        "drop_privileges": policy.drop_privileges,
        "parent_pid": os.getpid(),
    }
    (control / "plan.json").write_text(json.dumps(plan))
    grants = []
    if os.geteuid() == 0 and policy.drop_privileges:
        for name in policy.granted_files:
            with contextlib.suppress(FileNotFoundError):  # gone: the job fails to read it
                grants.append(_Grant(Path(name), policy.gid))
    start_wall = time.time()
    try:
        launcher = _start_launcher(control)
    except BaseException:
        for grant in grants:
            grant.revoke()
        raise
    return SandboxedProcess(launcher, policy, control, start_wall, grants)


def _start_launcher(control: Path) -> subprocess.Popen:
    with open(control / "launcher.log", "wb") as log:
        return subprocess.Popen(
            # -S: site-packages and its .pth hooks cost ~50 ms and the launcher needs none of it
            [sys.executable, "-S", "-m", "worker.sandbox.launcher", str(control)],
            cwd=PROJECT_ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _make_code_view(scratch: Path) -> None:
    """scratch/.code: one link per package of CODE_PACKAGES, the job's PYTHONPATH, so the job
    imports the project's code without being able to list or read the rest of a checkout."""
    view = scratch / CODE_VIEW
    view.mkdir(exist_ok=True)
    for name in CODE_PACKAGES:
        link = view / name
        if not link.is_symlink():
            link.symlink_to(PROJECT_ROOT / name, target_is_directory=True)


class _Grant:
    """Group read on one private file for the job's gid, undone when the job ends."""

    def __init__(self, path: Path, gid: int):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SandboxError(f"{path.name}: only regular files can be granted to a job")
        self._fd, self._gid, self._mode = fd, st.st_gid, stat.S_IMODE(st.st_mode)
        os.fchown(fd, -1, gid)
        os.fchmod(fd, (self._mode & 0o700) | stat.S_IRGRP)

    def revoke(self) -> None:
        try:
            os.fchown(self._fd, -1, self._gid)
            os.fchmod(self._fd, self._mode)
        except OSError:
            pass  # the file was deleted meanwhile (the job was)
        finally:
            os.close(self._fd)


def oom_kills() -> int:
    """OOM kills so far on this host plus in our cgroup (cgroup v2 memory.events)."""
    total = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/vmstat", "rb") as f:
        for line in f:
            if line.startswith(b"oom_kill "):
                total += int(line.split()[1])
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/cgroup", "rb") as f:
            path = f.read().split(b"\n")[0].split(b":", 2)[2].decode().strip()
        with open(f"/sys/fs/cgroup{path}/memory.events", "rb") as f:
            for line in f:
                if line.startswith(b"oom_kill "):
                    total += int(line.split()[1])
    return total


def read_scratch_file(
    scratch: Path, name: str, max_bytes: int | None = None, tail: int | None = None
) -> bytes:
    """Read a file the job left in scratch without following any link.

    The job owns scratch while it runs and may have replaced any file or directory with a
    symlink or hard link to a file only the worker can read; this opens `name` (a relative path
    like "out/masks.safetensors") component by component, refusing links, and reads it only if
    it is a regular file with a single link. Call it after the job has ended.
    """
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{name!r} is not a plain relative path")
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            parent, fd = fd, -1
            try:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            finally:
                os.close(parent)
        parent, fd = fd, -1
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        finally:
            os.close(parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise ValueError(f"{name} in scratch is not a plain regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{name} in scratch is larger than {max_bytes} bytes")
        if tail is not None and st.st_size > tail:
            f.seek(st.st_size - tail)
        return f.read()
