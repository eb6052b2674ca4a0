"""The sandbox against real attacks: each test starts a real sandboxed Python child.

Every attacking child records what happened to each attempt in scratch/result.json, so a test
also proves that the attack ran (a child that crashed early would otherwise "pass"). Two policies:
FULL (everything this host allows: as root, namespaces and a uid of its own), USERNS (what a
worker that is not root gets where user namespaces are allowed: namespaces, no uid of its own)
and DEGRADED (no namespaces, no uid change: a host without either still gets rlimits, Landlock,
seccomp and a new session).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from worker.sandbox import SandboxLimits, SandboxPolicy, read_scratch_file, start

PY = sys.executable
IS_ROOT = os.geteuid() == 0
#: a uid range no one else uses; random so that a leftover of an earlier run cannot interfere
UID = random.randrange(200_000, 260_000, 2)

FULL: dict = {}
#: the unprivileged route (a user namespace owning the others), taken here although we are root
USERNS = {"user_namespace": "always", "drop_privileges": False}
DEGRADED = {"namespaces": False, "drop_privileges": False}
POLICIES = pytest.mark.parametrize(
    "extra", [FULL, USERNS, DEGRADED], ids=["full", "userns", "degraded"]
)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside scratch that file permissions alone would let anyone write to."""
    path = tmp_path / "outside"
    path.mkdir()
    path.chmod(0o777)
    return path


def policy(scratch: Path, uid: int = UID, **kw) -> SandboxPolicy:
    limits = kw.pop("limits", SandboxLimits(memory_bytes=2 << 30, cpu_seconds=60, wall_seconds=60))
    return SandboxPolicy(scratch=scratch, uid=uid, gid=uid, limits=limits, **kw)


def run(code: str, pol: SandboxPolicy, timeout: float = 90):
    proc = start([PY, "-c", textwrap.dedent(code)], pol)
    proc.wait(timeout)
    return proc


def result(proc) -> dict:
    try:
        return json.loads(read_scratch_file(proc.policy.scratch, "result.json"))
    except FileNotFoundError:
        stderr = proc.stderr_tail().decode(errors="replace")
        raise AssertionError(
            f"the child left no result ({proc.describe_exit()}): {stderr}"
        ) from None


def processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except FileNotFoundError:
                pass
    return found


#: prelude of attacking children: try(name, fn) records the outcome of one attempt
ATTEMPTS = """
import json, os, socket, sys
outcomes = {}
def attempt(name, fn):
    try:
        outcomes[name] = "ok: " + repr(fn())[:200]
    except BaseException as e:
        outcomes[name] = "error: " + type(e).__name__ + ": " + str(e)
def done(**extra):
    with open("result.json", "w") as f:
        json.dump({**outcomes, **extra}, f)
"""


@POLICIES
def test_writes_outside_scratch_are_refused(scratch, outside, extra):
    targets = {
        "world-writable dir": outside / "written.txt",
        "tmp": Path("/tmp") / f"sandbox-escape-{os.getpid()}.txt",
        "project": Path(__file__).with_name(f"escape-{os.getpid()}.txt"),
    }
    code = ATTEMPTS + "".join(
        f"attempt({name!r}, lambda: open({str(path)!r}, 'w').write('x'))\n"
        for name, path in targets.items()
    )
    code += "attempt('scratch', lambda: open('mine.txt', 'w').write('x'))\ndone()\n"
    proc = run(code, policy(scratch, **extra))
    outcomes = result(proc)
    assert proc.returncode == 0, proc.describe_exit()
    assert outcomes["scratch"] == "ok: 1"
    for name, path in targets.items():
        assert outcomes[name].startswith("error:"), (name, outcomes[name])
        assert not path.exists(), name


@POLICIES
def test_secrets_outside_scratch_cannot_be_read(scratch, tmp_path, extra):
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    private = secret_dir / "private.key"
    private.write_text("TOPSECRET-0600")
    private.chmod(0o600)
    public = tmp_path / "public.txt"  # readable by anyone as far as file permissions go
    public.write_text("TOPSECRET-0644")
    public.chmod(0o644)
    tmp_path.chmod(0o755)
    code = ATTEMPTS + (
        f"attempt('private', lambda: open({str(private)!r}).read())\n"
        f"attempt('public', lambda: open({str(public)!r}).read())\n"
        "attempt('shadow', lambda: open('/etc/shadow').read())\n"
        "attempt('root home', lambda: os.listdir('/root'))\n"
        "print(outcomes)\ndone()\n"
    )
    proc = run(code, policy(scratch, **extra))
    outcomes = result(proc)
    for name in ("private", "public", "shadow"):
        assert outcomes[name].startswith("error:"), (name, outcomes[name])
    # the interpreter lives under /root here: with namespaces, only that path is bound back
    assert ".ssh" not in outcomes["root home"]
    logs = b"".join(read_scratch_file(scratch, n) for n in ("stdout.log", "stderr.log"))
    assert b"TOPSECRET" not in logs


@POLICIES
def test_no_tcp_connection_reaches_a_loopback_listener(scratch, extra):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = ATTEMPTS + (
            f"attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3))\n"
            "attempt('tcp6', lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))\n"
            "attempt('raw', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))\n"
            "attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))\n"
            "attempt('pair', lambda: socket.socketpair(socket.AF_UNIX))\n"
            "done()\n"
        )
        proc = run(code, policy(scratch, **extra))
        outcomes = result(proc)
        with pytest.raises(BlockingIOError):
            listener.accept()
    for name in ("tcp", "tcp6", "raw", "netlink"):
        assert outcomes[name].startswith("error:"), (name, outcomes[name])
    assert outcomes["pair"].startswith("ok:")  # socket pairs (used by libraries) still work


@POLICIES
def test_unix_sockets_outside_scratch_cannot_be_reached(scratch, tmp_path, extra):
    tmp_path.chmod(0o755)
    path = tmp_path / "service.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(8)
        listener.setblocking(False)
        path.chmod(0o777)
        code = ATTEMPTS + (
            f"attempt('unix', lambda: socket.socket(socket.AF_UNIX).connect({str(path)!r}))\n"
            f"attempt('dgram', lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)"
            f".sendto(b'x', {str(path)!r}))\n"
            "done()\n"
        )
        proc = run(code, policy(scratch, **extra))
        outcomes = result(proc)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert outcomes["unix"].startswith("error:"), outcomes["unix"]
    assert outcomes["dgram"].startswith("error:"), outcomes["dgram"]


@POLICIES
def test_udp_datagrams_are_not_sent(scratch, extra):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        code = ATTEMPTS + (
            "def send():\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    return s.sendto(b'leak', ('127.0.0.1', {port}))\n"
            "attempt('udp', send)\ndone()\n"
        )
        proc = run(code, policy(scratch, **extra))
        outcomes = result(proc)
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            receiver.recv(100)
    assert outcomes["udp"].startswith("error:"), outcomes["udp"]


def test_fork_bomb_is_contained_by_the_process_limit(scratch):
    uid = UID + 1  # its own uid: RLIMIT_NPROC counts every process of the uid
    limits = SandboxLimits(max_processes=32, cpu_seconds=60, wall_seconds=60)
    code = """
        import json, os, time
        first, made, refused = os.getpid(), 0, 0
        end = time.time() + 2
        while time.time() < end:
            try:
                if os.fork() == 0:
                    continue  # every child bombs too
                made += 1
            except OSError:
                refused += 1
                time.sleep(0.001)
        if os.getpid() == first:
            json.dump({"made": made, "refused": refused}, open("result.json", "w"))
        os._exit(0)
    """
    proc = run(code, policy(scratch, uid=uid, limits=limits))
    outcomes = result(proc)
    assert outcomes["refused"] > 0 and outcomes["made"] < 32, outcomes
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the worker can still fork
    if IS_ROOT:
        assert processes_of_uid(uid) == []  # the whole bomb died with the job


@POLICIES
def test_memory_bomb_fails_with_a_clear_reason(scratch, extra):
    limits = SandboxLimits(memory_bytes=256 << 20, cpu_seconds=60, wall_seconds=60)
    code = """
        hoard = []
        while True:
            hoard.append(bytearray(32 << 20))
    """
    proc = run(code, policy(scratch, limits=limits, **extra))
    assert proc.returncode != 0
    assert "exceeded the memory limit (256 MiB)" in proc.describe_exit()


@POLICIES
def test_busy_loop_hits_the_cpu_limit(scratch, extra):
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=60)
    proc = run("while True: pass", policy(scratch, limits=limits, **extra))
    assert proc.returncode == -signal.SIGXCPU
    assert proc.describe_exit() == "CPU time limit exceeded (1 s, SIGXCPU)"


def test_sleeper_hits_the_wall_clock_limit(scratch):
    limits = SandboxLimits(cpu_seconds=60, wall_seconds=1.0)
    started = time.monotonic()
    proc = run("import time; time.sleep(60)", policy(scratch, limits=limits))
    assert time.monotonic() - started < 10
    assert proc.returncode == -signal.SIGKILL
    assert proc.describe_exit() == "wall-clock limit exceeded (1 s)"


@POLICIES
def test_segfault_is_reported_as_sigsegv(scratch, extra):
    proc = run("import ctypes; ctypes.string_at(0)", policy(scratch, **extra))
    assert proc.returncode == -signal.SIGSEGV
    assert proc.describe_exit() == "killed by SIGSEGV (segmentation fault)"


#: a grandchild that leaves the job's session and keeps touching a file in scratch
DAEMON = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                with open("heartbeat", "a") as f:
                    f.write(".")
                time.sleep(0.05)
        os._exit(0)
    time.sleep(0.5)
    open("result.json", "w").write("{}")
    time.sleep(float(os.environ.get("LINGER", "0")))
"""


def _assert_daemon_gone(scratch: Path, uid: int | None) -> None:
    beats = (scratch / "heartbeat").read_text()
    assert beats, "the grandchild never ran"
    time.sleep(0.5)
    assert (scratch / "heartbeat").read_text() == beats, "the grandchild outlived the job"
    if uid is not None:
        assert processes_of_uid(uid) == []


@POLICIES
def test_setsid_grandchild_dies_when_the_job_exits(scratch, extra):
    proc = run(DAEMON, policy(scratch, **extra))
    result(proc)
    assert proc.returncode == 0
    _assert_daemon_gone(scratch, UID if IS_ROOT and not extra else None)


@POLICIES
def test_kill_reaps_the_setsid_grandchild(scratch, extra):
    proc = start(
        [PY, "-c", textwrap.dedent(DAEMON)], policy(scratch, env={"LINGER": "60"}, **extra)
    )
    deadline = time.monotonic() + 30
    while not (scratch / "result.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert proc.describe_exit() == "killed by the worker (cancelled)"
    _assert_daemon_gone(scratch, UID if IS_ROOT and not extra else None)


def test_environment_holds_no_secrets(scratch, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "TOPSECRET")
    monkeypatch.setenv("SYNFLOW_API_KEYS", "TOPSECRET")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    code = "import json, os; json.dump(dict(os.environ), open('result.json', 'w'))"
    proc = run(code, policy(scratch, threads=2))
    env = result(proc)
    assert "TOPSECRET" not in json.dumps(env)
    assert env["HOME"] == env["TMPDIR"] == str(scratch.resolve())
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    allowed = {"PATH", "PYTHONPATH", "HOME", "TMPDIR", "LANG", "OMP_NUM_THREADS", "LC_CTYPE"}
    allowed |= {"MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONDONTWRITEBYTECODE"}
    allowed |= {"PYTHONUNBUFFERED", "PYTHONNOUSERSITE", "USER", "LOGNAME"}
    assert set(env) <= allowed, set(env) - allowed


def test_torch_runs_inside_the_sandbox_and_writes_to_scratch(scratch):
    code = """
        import time
        t0 = time.time()
        import torch
        t1 = time.time()
        import synflow.engine  # the project's code is importable too
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        out = net(torch.ones(4, 8))
        torch.save({"out": out}, "out.pt")
        open("result.json", "w").write(
            '{"shape": %s, "threads": %d, "import_s": %.3f}'
            % (list(out.shape), torch.get_num_threads(), t1 - t0))
    """
    limits = SandboxLimits(memory_bytes=4 << 30, cpu_seconds=120, wall_seconds=120)
    proc = run(code, policy(scratch, limits=limits, threads=1))
    assert proc.returncode == 0, proc.stderr_tail().decode(errors="replace")
    outcome = result(proc)
    assert outcome["shape"] == [4, 2] and outcome["threads"] == 1
    assert (scratch / "out.pt").stat().st_size > 0
    assert (scratch / "out.pt").stat().st_uid == os.getuid()  # handed back to the worker
    print(f"\nimport torch inside the sandbox: {outcome['import_s']:.2f} s")


@POLICIES
def test_engine_kernel_threads_run_inside_the_sandbox(scratch, extra):
    """On big buffers the engine's chunked kernels (`synflow.kernels`) start threads of their
    own, beside torch's: the sandbox lets them run and they give torch's answers."""
    code = """
        import json, threading
        import torch
        from synflow import kernels
        torch.set_num_threads(2)
        x = torch.arange(4 << 20, dtype=torch.float32)
        mask = x.remainder(3) != 0
        found = {
            "le": [kernels.count_le(x, 1000.5), int((x <= 1000.5).sum())],
            "true": [kernels.count_true(mask), int(mask.sum())],
            "threads": sorted(t.name for t in threading.enumerate() if "kernels" in t.name),
        }
        json.dump(found, open("result.json", "w"))
    """
    limits = SandboxLimits(memory_bytes=4 << 30, cpu_seconds=120, wall_seconds=120)
    proc = run(code, policy(scratch, limits=limits, threads=2, **extra))
    assert proc.returncode == 0, proc.stderr_tail().decode(errors="replace")
    outcome = result(proc)
    assert outcome["le"] == [1001, 1001]
    assert outcome["true"][0] == outcome["true"][1] == (4 << 20) - (4 << 20) // 3 - 1
    assert len(outcome["threads"]) == 2, outcome


def test_setup_cost_is_small(scratch):
    """Time from start() to the child's first line (a bare interpreter, no imports)."""
    costs = []
    for i in range(3):
        run_dir = scratch / str(i)
        run_dir.mkdir()
        begin = time.time()
        code = "import time; open('first', 'w').write(repr(time.time()))"
        proc = run(code, policy(run_dir))
        assert proc.returncode == 0, proc.describe_exit()
        costs.append((float((run_dir / "first").read_text()) - begin, proc.setup_seconds))
    best = min(costs)
    print(f"\nsandbox setup: start() to first line {best[0]:.3f} s (to execve {best[1]:.3f} s)")
    assert best[0] < 2.0


#: each layer the sandbox claims, checked by looking at it from inside the job
OBSERVE = (
    ATTEMPTS
    + """
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f if ":" in line)
with open("/proc/net/dev") as f:
    interfaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
attempt("read /usr/lib", lambda: len(os.listdir("/usr/lib")) > 0)
attempt("write /dev/null", lambda: open("/dev/null", "w").write("x"))
attempt("read outside", lambda: open(sys.argv[1]).read())
attempt("inet socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
attempt("unshare", lambda: (libc.unshare(0x10000000), ctypes.get_errno()))  # CLONE_NEWUSER
done(uid=os.getuid(), pid=os.getpid(), sid=os.getsid(0), interfaces=interfaces,
     seccomp=status["Seccomp"].strip(), no_new_privs=status["NoNewPrivs"].strip(),
     hostname=socket.gethostname())
"""
)


@POLICIES
def test_layer_report_is_honest(scratch, tmp_path, extra):
    probe = tmp_path / "probe.txt"
    probe.write_text("visible")
    probe.chmod(0o644)
    tmp_path.chmod(0o755)
    proc = start([PY, "-c", OBSERVE, str(probe)], policy(scratch, **extra))
    proc.wait(60)
    seen = result(proc)
    layers = set(proc.layers)
    namespaces = {"pid-namespace", "net-namespace", "mount-namespace", "ipc-namespace"}
    namespaces |= {"uts-namespace", "private-filesystem-view", "reaper-pid-namespace"}
    always = {"rlimits", "new-session", "no-new-privs", "landlock-fs", "landlock-tcp", "seccomp"}
    assert always <= layers, layers
    if IS_ROOT and extra is FULL:  # this machine and CI: everything is active
        assert namespaces | {"uid-drop", "rlimit-nproc"} <= layers, layers
    if extra is USERNS:
        assert namespaces | {"user-namespace"} <= layers and "uid-drop" not in layers, layers
    if extra is DEGRADED:
        assert not layers & (namespaces | {"uid-drop", "user-namespace"}), layers
    assert not [layer for layer in layers if layer.startswith("!")], layers
    # ...and each claim holds, seen from inside
    assert seen["seccomp"] == "2" and seen["no_new_privs"] == "1"
    assert seen["inet socket"].startswith("error:")
    assert seen["unshare"] == "ok: (-1, 1)"  # EPERM from seccomp
    assert seen["read /usr/lib"] == "ok: True"
    assert seen["write /dev/null"] == "ok: 1"
    assert seen["read outside"].startswith("error:")  # Landlock (and the mount view)
    assert seen["sid"] == seen["pid"]
    assert ("uid-drop" in layers) == (seen["uid"] == UID)
    assert ("pid-namespace" in layers) == (seen["pid"] == 2)
    assert ("net-namespace" in layers) == (seen["interfaces"] == ["lo"])
    assert ("uts-namespace" in layers) == (seen["hostname"] == "sandbox")


def test_required_layers_fail_closed(scratch):
    code = "open('ran', 'w').write('x')"
    pol = policy(scratch, drop_privileges=False, required_layers=frozenset({"uid-drop"}))
    proc = run(code, pol)
    assert not (scratch / "ran").exists()
    assert proc.describe_exit() == (
        "sandbox setup failed: required sandbox layers unavailable: uid-drop"
    )


def test_scratch_files_are_read_without_following_links(scratch):
    code = """
        import os
        os.symlink("/etc/shadow", "masks.safetensors")
        open("real.txt", "w").write("fine")
        os.link("real.txt", "hardlink.txt")
        os.mkdir("out")
        open("out/report.json", "w").write("{}")
        os.symlink("/etc", "linked")
    """
    proc = run(code, policy(scratch))
    assert proc.returncode == 0, proc.stderr_tail()
    assert read_scratch_file(scratch, "out/report.json", max_bytes=10) == b"{}"
    with pytest.raises(ValueError):
        read_scratch_file(scratch, "out/report.json", max_bytes=1)
    with pytest.raises(OSError):
        read_scratch_file(scratch, "masks.safetensors")
    with pytest.raises(OSError):
        read_scratch_file(scratch, "linked/passwd")  # a linked directory is refused too
    with pytest.raises(ValueError):
        read_scratch_file(scratch, "real.txt")  # two links now: it might be someone else's file
    with pytest.raises(ValueError):
        read_scratch_file(scratch, "../outside")


def test_output_files_are_size_capped(scratch):
    limits = SandboxLimits(max_file_bytes=1 << 20, cpu_seconds=60, wall_seconds=60)
    code = ATTEMPTS + (
        "attempt('big file', lambda: open('big.bin', 'wb').write(b'x' * (2 << 20)))\n"
        "attempt('stdout', lambda: sys.stdout.write('y' * (2 << 20)) and sys.stdout.flush())\n"
        "done()\n"
    )
    proc = run(code, policy(scratch, limits=limits))
    outcomes = result(proc)
    assert "File too large" in outcomes["big file"]
    assert (scratch / "big.bin").stat().st_size <= 1 << 20
    assert (scratch / "stdout.log").stat().st_size <= 1 << 20


#: Landlock alone, applied by the real module in a plain child (no namespaces, no seccomp)
LANDLOCK_ONLY = """
import json, os, socket, sys
from worker.sandbox import landlock
allowed, port, outside, scratch = sys.argv[1:5]
print(landlock.restrict(json.loads(allowed), [scratch]))
try:
    socket.create_connection(("127.0.0.1", int(port)), timeout=3)
    print("connected")
except OSError as e:
    print("tcp", e.errno)
try:
    open(outside).read()
    print("read outside")
except OSError as e:
    print("read", e.errno)
open(os.path.join(scratch, "ok"), "w").write("x")
"""

#: the seccomp filter alone, compiled and loaded by the real module in a plain child
SECCOMP_ONLY = """
import ctypes, errno, os, socket
from worker.sandbox import linux, syscall_filter
linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
print(syscall_filter.install(syscall_filter.compile_filter()))
libc = ctypes.CDLL(None, use_errno=True)
for name, call in (("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
                   ("unshare", lambda: linux.unshare(linux.CLONE_NEWUSER))):
    try:
        call()
        print(name, "allowed")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
libc.syscall.restype = ctypes.c_long
print("clone3", libc.syscall(435, None, 0), errno.errorcode[ctypes.get_errno()])
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_landlock_alone_blocks_files_and_tcp(tmp_path, scratch):
    """Defense in depth: Landlock holds even without namespaces, seccomp or a uid change."""
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        allowed = json.dumps(["/usr", "/lib", "/lib64", "/etc", "/proc", sys.prefix,
                              sys.base_prefix, str(Path(__file__).parents[2])])  # fmt: skip
        argv = [PY, "-c", LANDLOCK_ONLY, allowed, str(listener.getsockname()[1]), str(outside)]
        out = subprocess.run(
            [*argv, str(scratch)], capture_output=True, text=True, timeout=60,
            env={"PYTHONPATH": str(Path(__file__).parents[2])},
        )  # fmt: skip
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "['landlock-fs', 'landlock-tcp', 'landlock-scope']"
    assert lines[1:] == ["tcp 13", "read 13"]  # EACCES for both
    assert (scratch / "ok").exists()


def test_seccomp_alone_blocks_sockets_and_namespaces(scratch):
    out = subprocess.run(
        [PY, "-c", SECCOMP_ONLY], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(Path(__file__).parents[2])}, cwd=scratch,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['seccomp']",
        "inet EAFNOSUPPORT",
        "unshare EPERM",
        "clone3 -1 ENOSYS",  # so that glibc falls back to clone(), whose flags seccomp checks
        "fork 7",
    ]


def test_probe_command_prints_the_layers():
    out = subprocess.run(
        [PY, "-m", "worker.sandbox"], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["exit"] == "exited normally"
    assert {"landlock-fs", "seccomp", "rlimits"} <= set(report["layers"])


#: a stand-in worker: starts a job that lingers (with a setsid() daemon), then waits forever
WORKER = """
import sys, textwrap, time
from pathlib import Path
from worker.sandbox import SandboxPolicy, start
scratch, uid, code = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
policy = SandboxPolicy(scratch=scratch, uid=uid, gid=uid, env={"LINGER": "60"},
                       control_root=scratch.parent)  # a dying worker leaves its control files
proc = start([sys.executable, "-c", code], policy)
time.sleep(60)
"""


def test_job_dies_with_a_killed_worker(scratch):
    uid = UID + 2
    worker = subprocess.Popen(
        [PY, "-c", WORKER, str(scratch), str(uid), textwrap.dedent(DAEMON)],
        cwd=Path(__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 30
        while not (scratch / "result.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (scratch / "result.json").exists(), "the job never started"
    finally:
        worker.kill()  # kill -9: no cleanup code of the worker runs
        worker.wait()
    time.sleep(0.5)  # parent-death signals travel launcher -> init -> (pid namespace) job
    _assert_daemon_gone(scratch, uid if IS_ROOT else None)
