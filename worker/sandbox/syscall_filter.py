"""Seccomp: syscalls the job never needs fail, and only AF_UNIX sockets can be created.

A deny list over libseccomp (PyPI `pyseccomp`): a model loader needs files, memory, threads and
device ioctls (CUDA), but never a network socket, a connection to a Unix socket, a new namespace,
a mount, ptrace, BPF, kernel keyrings or io_uring (whose operations bypass seccomp). `clone3`
answers ENOSYS so that glibc falls back to `clone`, whose flags seccomp can inspect (clone3
passes them in memory). Syscalls of other architectures (e.g. 32-bit int 0x80) kill the process:
libseccomp's default.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools

from . import linux

#: denied with EPERM: escaping or widening the sandbox, or kernel attack surface
DENIED_SYSCALLS = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup",
    "sethostname", "setdomainname", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "ioperm", "iopl", "uselib", "lookup_dcookie", "nfsservctl",
)  # fmt: skip


@functools.cache
def compile_filter() -> bytes:
    """The filter as classic BPF for this machine's architecture (built once per worker).

    Built in the worker with libseccomp and loaded by the job's setup with a plain prctl: the
    launcher need not load libseccomp (its import runs ldconfig, ~0.1 s per job).
    Raises OSError when pyseccomp or libseccomp2 is missing.
    """
    import tempfile  # here, not at the top: the launcher imports this module too

    try:
        import pyseccomp as sc
    except ImportError as e:
        raise OSError(errno.ENOENT, f"pyseccomp is not installed: {e}") from e
    deny = sc.ERRNO(errno.EPERM)
    filt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        # a name unknown to this libseccomp/architecture cannot be called here either
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            filt.add_rule(deny, name)
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in linux.CLONE_NAMESPACE_FLAGS:
        filt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # EAFNOSUPPORT reads as "this family is not supported here", which is the truth in here
    no_family = sc.ERRNO(errno.EAFNOSUPPORT)
    filt.add_rule(no_family, "socket", sc.Arg(0, sc.NE, linux.AF_UNIX))
    filt.add_rule(no_family, "socketpair", sc.Arg(0, sc.NE, linux.AF_UNIX))
    # Landlock (ABI <= 7) does not cover connecting to a Unix socket by path (a Docker or Redis
    # socket, say): refuse connect(), and sendto() with an address. Socket pairs still work.
    filt.add_rule(sc.ERRNO(errno.EACCES), "connect")
    filt.add_rule(sc.ERRNO(errno.EACCES), "sendto", sc.Arg(4, sc.NE, 0))
    with tempfile.TemporaryFile() as f:
        filt.export_bpf(f)
        f.seek(0)
        return f.read()


def install(bpf: bytes) -> list[str]:
    """Load a compiled filter into this thread and everything it starts later.

    Requires no_new_privs (or CAP_SYS_ADMIN); the job's setup sets it first.
    """
    instructions = ctypes.create_string_buffer(bpf, len(bpf))
    program = _SockFprog(len(bpf) // 8, ctypes.cast(instructions, ctypes.c_void_p))
    linux.prctl(linux.PR_SET_SECCOMP, linux.SECCOMP_MODE_FILTER, ctypes.addressof(program))
    return ["seccomp"]


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))
