"""Namespaces (root only): no network, own pids, IPC and hostname, and a trimmed filesystem view.

As root, the launcher unshares the pid namespace; without root it first enters a user namespace
of its own (`enter_user_namespace`), which lets it create the others. The next process it forks
is pid 1 of the new pid namespace (the sandbox's init). When that init exits, the kernel kills
every process left in the namespace, including grandchildren that called setsid(): this is how
the whole job is reaped.

Init unshares the others and runs `trim_filesystem` inside its new mount namespace (changes stay
there). Over the home directories, /run, /tmp, /var/tmp and /dev/shm it mounts an empty tmpfs,
then bind-mounts back only the paths the job needs (read-only, except scratch). It does the same
for any directory the job's uid could not traverse (the interpreter here lives under /root, mode
700): the job sees the paths it needs and nothing else there. System directories are never
chmod-ed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from . import linux

#: name in the layer report -> unshare flag
NAMESPACES = {
    "net-namespace": linux.CLONE_NEWNET,
    "pid-namespace": linux.CLONE_NEWPID,
    "mount-namespace": linux.CLONE_NEWNS,
    "ipc-namespace": linux.CLONE_NEWIPC,
    "uts-namespace": linux.CLONE_NEWUTS,
}

#: directories always replaced by an empty tmpfs (plus what the job needs bound back)
MASKED = ("/root", "/home", "/run", "/tmp", "/var/tmp", "/dev/shm")
_MASK_OPTIONS = "mode=0755,size=1m,nr_inodes=4096"
#: statvfs flag -> mount flag, for the flags a bind remount must keep
_KEPT_FLAGS = (
    (os.ST_NOEXEC, linux.MS_NOEXEC),
    (os.ST_NOATIME, linux.MS_NOATIME),
    (os.ST_NODIRATIME, linux.MS_NODIRATIME),
    (os.ST_RELATIME, linux.MS_RELATIME),
)


def unshare(names: Iterable[str]) -> list[str]:
    """Unshare each namespace that the kernel (and any seccomp profile around us) allows."""
    done = []
    for name in names:
        try:
            linux.unshare(NAMESPACES[name])
        except OSError:
            continue
        done.append(name)
    return done


def enter_user_namespace() -> list[str]:
    """The route without root: a user namespace of our own, owning a new pid namespace.

    Only our own uid and gid are mapped (what an unprivileged process may do), so the job keeps
    the worker's uid; inside, we hold the capabilities to create and set up the other
    namespaces, which execve drops again for a non-root job. Returns the namespaces entered, or
    [] if the kernel or a seccomp profile refuses (Docker's default profile does).
    """
    uid, gid = os.geteuid(), os.getegid()
    try:
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWPID)
    except OSError:
        return []
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):  # fmt: skip
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return ["user-namespace", "pid-namespace"]


def traversable(directory: str, uid: int, gid: int) -> bool:
    st = os.stat(directory)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def hidden_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The outermost directory above `path` that `uid` cannot traverse, if any."""
    current = "/"
    for part in path.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        if not traversable(current, uid, gid):
            return current
    return None


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def trim_filesystem(
    read_only: Iterable[str],
    read_write: Iterable[str],
    uid: int,
    gid: int,
    new_proc: bool,
    hidden: Iterable[str] = (),
) -> None:
    """Mask private and shared-temporary directories and `hidden` (the checkout, the service's
    data), binding back what the job needs."""
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, None)
    needed = {os.path.realpath(p): False for p in read_only if os.path.exists(p)}
    needed.update({os.path.realpath(p): True for p in read_write if os.path.exists(p)})
    masks = {m for m in (*MASKED, *hidden) if os.path.isdir(m) and not os.path.islink(m)}
    masks.update(a for p in needed if (a := hidden_ancestor(p, uid, gid)))
    # a needed directory that contains a mask keeps its whole content: no mask there
    masks = {m for m in masks if not any(_inside(m, p) for p in needed)}
    masks = {m for m in masks if not any(m != o and _inside(m, o) for o in masks)}
    binds = sorted((p, rw) for p, rw in needed.items() if any(_inside(p, m) for m in masks))
    handles = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p, _ in binds}
    try:
        for mask in sorted(masks):
            flags = linux.MS_NOSUID | linux.MS_NODEV
            linux.mount("tmpfs", mask, "tmpfs", flags, _MASK_OPTIONS)
        for path, writable in binds:
            _bind_back(handles[path], path, writable)
    finally:
        for fd in handles.values():
            os.close(fd)
    if new_proc:
        flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
        linux.mount("proc", "/proc", "proc", flags, None)


def _bind_back(fd: int, path: str, writable: bool) -> None:
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    source = f"/proc/self/fd/{fd}"
    linux.mount(source, path, None, linux.MS_BIND | linux.MS_REC, None)
    # keep the flags the mount already has: in a user namespace they are locked (EPERM if lost)
    kept = os.statvfs(path).f_flag
    flags = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_NOSUID | linux.MS_NODEV
    for st_flag, ms_flag in _KEPT_FLAGS:
        if kept & st_flag:
            flags |= ms_flag
    if not writable:
        flags |= linux.MS_RDONLY
    linux.mount(None, path, None, flags, None)
