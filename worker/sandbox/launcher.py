"""The sandbox launcher: `python -m worker.sandbox.launcher CONTROL_DIR`, started by `start()`.

A fresh, single-threaded interpreter (forking the worker itself would copy its threads and
locks). It reads CONTROL_DIR/plan.json and builds this process tree:

    launcher  (root, the worker's namespaces; subreaper; enforces the wall clock)
     └─ init  (root; pid 1 of the new pid namespace when there is one; trims the filesystem view)
         └─ job  (the job uid; rlimits, new session, no_new_privs, Landlock, seccomp; execve argv)

The job's layers are applied between fork and execve, so they bind everything it runs: Landlock
and seccomp are inherited by every thread and child it creates later. Reports travel from init
and the job (before execve only; the pipe is close-on-exec) to the launcher as JSON lines; the
launcher writes them to CONTROL_DIR (started.json, exit.json), which the job can never reach. Its
own messages go to CONTROL_DIR/launcher.log. The job talks to no one: its only channel is files
in scratch.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import sys
import time

from . import landlock, linux, namespaces, syscall_filter

TYPE_CHECKING = False  # (not importing typing: the launcher's start-up time is setup cost)
if TYPE_CHECKING:
    from typing import NoReturn

#: exit status of init or the job when the sandbox could not be set up (nothing of the job ran)
SETUP_FAILED = 125
#: grace between SIGXCPU at the soft CPU limit and SIGKILL at the hard one
CPU_HARD_GRACE_S = 2
#: how long a sweep of leftover processes may take before giving up
SWEEP_TIMEOUT_S = 10.0


def main(argv: list[str]) -> int:
    control = argv[1]
    with open(os.path.join(control, "plan.json")) as f:
        plan = json.load(f)
    # If the worker dies, so does the launcher, and then its init (and with it the pid namespace)
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != plan["parent_pid"]:
        return SETUP_FAILED
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    is_root = os.geteuid() == 0
    drop = is_root and plan["drop_privileges"]
    uid, gid = (plan["uid"], plan["gid"]) if drop else (os.getuid(), os.getgid())
    if drop:
        kill_all_of_uid(uid)  # leftovers of a previous job in this slot, if a worker died
        _own_scratch(plan["scratch"], uid, gid)
    # only the pid namespace here (it takes effect for the next fork): init unshares the others,
    # so that its filesystem changes do not hide the control directory from us
    ns = []
    if plan["namespaces"]:
        mode = plan["user_namespace"]
        if mode == "always" or (mode == "auto" and not is_root):
            # a user namespace maps only our own uid: no room for a job uid of its own
            ns = [] if drop else namespaces.enter_user_namespace()
        elif is_root:
            ns = namespaces.unshare(["pid-namespace"])
    reader, writer = os.pipe()
    stop = _Stopper()
    signal.signal(signal.SIGTERM, lambda *_: stop("killed"))
    signal.signal(signal.SIGALRM, lambda *_: stop("wall"))
    init_pid = os.fork()
    if init_pid == 0:
        os.close(reader)
        _run_init(plan, ns, drop, uid, gid, writer)
    os.close(writer)
    stop.init_pid = init_pid
    if stop.reason:  # a signal came before we knew whom to kill
        stop(stop.reason)
    pid_ns = "pid-namespace" in ns
    return _supervise(control, plan, stop, reader, pid_ns, uid if drop else None)


# --- launcher ---------------------------------------------------------------------------------


class _Stopper:
    """Kills init on SIGTERM (cancel) or SIGALRM (wall clock) and remembers why."""

    def __init__(self) -> None:
        self.init_pid: int | None = None
        self.reason: str | None = None

    def __call__(self, why: str) -> None:
        self.reason = self.reason or why
        if self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)  # with a pid namespace: the whole job


def _supervise(control: str, plan: dict, stop: _Stopper, reader: int, pid_ns: bool, uid) -> int:
    signal.setitimer(signal.ITIMER_REAL, plan["limits"]["wall_seconds"])
    events: dict = {}
    for line in _lines(reader, stop.init_pid):
        event = json.loads(line)
        events[event["event"]] = event
        if event["event"] in ("ready", "error") and "started" not in events:
            events["started"] = True
            _write_json(os.path.join(control, "started.json"), {**event, "at": time.time()})
    os.close(reader)
    _, init_status = os.waitpid(stop.init_pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not pid_ns:  # init is gone; nothing in the kernel reaps the rest for us
        sweep_descendants(uid)
    if uid is not None:  # give the outputs back to the worker (it needs no DAC override)
        _own_scratch(plan["scratch"], os.getuid(), os.getgid())
    exit_event = events.get("exit")
    result = {"reason": stop.reason, "setup_error": events.get("error", {}).get("error")}
    if exit_event and not stop.reason:
        result.update(status=exit_event["status"], rusage=exit_event["rusage"])
    else:  # init was killed (wall clock, cancel) or failed: report what happened to it
        result.update(status=_wait_status(init_status), rusage=None)
    _write_json(os.path.join(control, "exit.json"), {**result, "at": time.time()})
    return 0


def _lines(fd: int, init_pid: int):
    """Report lines until every writer is gone, or init is (a killed init's job, stuck before
    execve without a pid namespace, could otherwise hold the pipe open)."""
    buffer = b""
    while True:
        readable, _, _ = select.select([fd], [], [], 0.5)
        if not readable:
            if os.waitid(os.P_PID, init_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                continue
            readable, _, _ = select.select([fd], [], [], 0)  # init is gone: drain, then stop
            if not readable:
                return
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from complete


def _write_json(path: str, data: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.rename(path + ".tmp", path)


def _own_scratch(scratch: str, uid: int, gid: int) -> None:
    """chown the scratch tree (links themselves, never their targets; no recursion limit)."""
    os.lchown(scratch, uid, gid)
    os.chmod(scratch, 0o700)
    stack = [scratch]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                os.lchown(entry.path, uid, gid)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)


def kill_all_of_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (kill(-1) from a child that became that uid)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def sweep_descendants(uid: int | None) -> None:
    """Kill and reap every process left below us: the job's uid (if it has its own) and orphans.

    We are a subreaper, so orphans (a setsid() grandchild included) are re-parented to us.
    """
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while time.monotonic() < deadline:
        if uid is not None:
            kill_all_of_uid(uid)
        for child in _children_of(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.01)


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children


def _wait_status(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit_code": os.waitstatus_to_exitcode(status)}


# --- init ---------------------------------------------------------------------------------------


def _send(fd: int, event: dict) -> None:
    os.write(fd, (json.dumps(event) + "\n").encode())


def _run_init(plan: dict, ns: list[str], drop: bool, uid: int, gid: int, writer: int) -> NoReturn:
    try:
        for signum in (signal.SIGTERM, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher died: so do we
        os.umask(0o022)
        if "pid-namespace" in ns or (plan["namespaces"] and os.geteuid() == 0):
            ns = ns + namespaces.unshare(n for n in namespaces.NAMESPACES if n not in ns)
        layers = list(ns)
        if "mount-namespace" in ns:
            namespaces.trim_filesystem(
                plan["read_only"] + plan["devices"],
                [plan["scratch"]],
                uid,
                gid,
                new_proc="pid-namespace" in ns,
                hidden=plan["hidden"],
            )
            layers.append("private-filesystem-view")
        if "uts-namespace" in ns:
            linux.sethostname("sandbox")
        pid_ns = "pid-namespace" in ns
        layers.append("reaper-pid-namespace" if pid_ns else "reaper-subreaper")
        if not pid_ns:
            linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        me = os.getpid()
        job = os.fork()
        if job == 0:
            _run_job(plan, layers, drop, uid, gid, me, writer)
        _send(writer, {"event": "job", "pid": job})
        status, usage = _wait_for(job)
        if not pid_ns:
            sweep_descendants(uid if drop else None)
        _send(writer, {"event": "exit", "status": status, "rusage": usage})
        os._exit(0)
    except BaseException as e:  # report, never raise out of a forked child
        with contextlib.suppress(BaseException):
            _send(writer, {"event": "error", "error": f"init: {e}"})
        os._exit(SETUP_FAILED)


def _wait_for(job: int) -> tuple[dict, dict]:
    """Wait for the job, reaping re-parented orphans meanwhile (we may be pid 1)."""
    while True:
        pid, status, usage = os.wait4(-1, 0)
        if pid == job:
            return _wait_status(status), {
                "max_rss_kib": usage.ru_maxrss,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }


# --- job ----------------------------------------------------------------------------------------


def _run_job(
    plan: dict, layers: list[str], drop: bool, uid: int, gid: int, init_pid: int, writer: int
) -> NoReturn:
    try:
        limits = plan["limits"]
        _set_rlimits(limits, uid_count_offset=0 if drop else _tasks_of_uid(os.getuid()))
        layers.append("rlimits")
        if drop or os.geteuid() != 0:
            layers.append("rlimit-nproc")  # root ignores RLIMIT_NPROC
        os.setsid()
        layers.append("new-session")
        if drop:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            layers.append("uid-drop")
        # after the uid change (which clears it): the job dies with init
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != init_pid:
            raise RuntimeError("the sandbox init died during setup")
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        layers.append("no-new-privs")
        if not os.access(plan["executable"], os.X_OK):
            raise RuntimeError(
                f"{plan['executable']} is not executable by uid {os.getuid()} in the sandbox "
                "(without a mount namespace, the interpreter must live outside root's home)"
            )
        _redirect_output(plan)
        os.chdir(plan["scratch"])
        try:
            layers += landlock.restrict(plan["read_only"], [plan["scratch"]], plan["devices"])
        except OSError as e:
            layers.append(f"!landlock-unavailable: {e.strerror or e}")
        if plan["seccomp_error"]:
            layers.append(f"!seccomp-unavailable: {plan['seccomp_error']}")
        else:
            layers += syscall_filter.install(bytes.fromhex(plan["seccomp_bpf"]))
        missing = set(plan["required_layers"]) - set(layers)
        if missing:
            raise RuntimeError(f"required sandbox layers unavailable: {', '.join(sorted(missing))}")
        _send(writer, {"event": "ready", "layers": layers})
        os.execve(plan["executable"], plan["argv"], plan["env"])
    except BaseException as e:
        with contextlib.suppress(BaseException):
            _send(writer, {"event": "error", "error": str(e)})
        os._exit(SETUP_FAILED)


def _set_rlimits(limits: dict, uid_count_offset: int) -> None:
    cpu = int(limits["cpu_seconds"])
    nproc = limits["max_processes"] + uid_count_offset
    for which, soft, hard in (
        (resource.RLIMIT_DATA, limits["memory_bytes"], limits["memory_bytes"]),
        (resource.RLIMIT_CPU, cpu, cpu + CPU_HARD_GRACE_S),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_FSIZE, limits["max_file_bytes"], limits["max_file_bytes"]),
        (resource.RLIMIT_NOFILE, limits["max_open_files"], limits["max_open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(which, (soft, hard))


def _tasks_of_uid(uid: int) -> int:
    """Threads of `uid` now: without a uid of its own, the job's NPROC budget comes on top."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
    return count


def _redirect_output(plan: dict) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW
    scratch = plan["scratch"]
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(os.path.join(scratch, plan["stdout_name"]), flags, 0o600)
    if plan["stderr_name"] == plan["stdout_name"]:
        stderr = stdout
    else:
        stderr = os.open(os.path.join(scratch, plan["stderr_name"]), flags, 0o600)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in {stdin, stdout, stderr}:
        if fd > 2:
            os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
