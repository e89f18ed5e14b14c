"""Run a Python program that nobody has reviewed: generated code, and the examples it is judged on.

Verified generation (`verification.py`) runs every candidate body of `intarsia.generateFunction` against its
docstring's examples before one is applied, and the benchmarks run the hidden tests of a dataset the same way. Such
code may loop, allocate without end, write files, read the environment or open connections, so it never runs in
the server's process, its working folder or its environment:

- `python -I -B` (isolated: no user site folder, no PYTHON* variables, no bytecode written), the interpreter the
  server runs on, with an almost empty environment (PATH, a HOME and TMPDIR inside the temporary folder, one
  thread for the numerical libraries);
- a fresh temporary folder as the working folder, deleted afterwards: the program never sees the workspace;
- inside a new network namespace (`unshare --net`, as root of a new user namespace where a user may not create
  one alone) where the machine allows one, so it cannot reach any network, the loopback included;
- limits set by a small launcher before the program's first line: address space, CPU seconds, file size, open
  files; a wall-clock timeout after which the whole process group is killed;
- writes confined to that folder by Landlock where the kernel has it (Linux 5.13+): the program may read what
  the user may read (the interpreter, the installed packages) but create, change or remove nothing elsewhere;
- its output goes to files in that folder (which the file-size limit bounds), never into the server's memory
  without a bound.

The limits are set inside the child (no `preexec_fn`, which is unsafe in the server's threaded process).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Output kept from a run (the tail): enough for a report line and a traceback.
OUTPUT_LIMIT = 256 << 10

# Landlock (Linux 5.13+): the system calls (the same numbers on every architecture) and the file-system rights
# that change something: writing, truncating, creating, removing, renaming across folders.
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446
_WRITE_FILE, _TRUNCATE = 1 << 1, 1 << 14
_WRITE_RIGHTS = {1: sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12)), 2: 1 << 13, 3: _TRUNCATE}

# Sets the limits, confines writes to the working folder (where the kernel has Landlock), then runs the program
# file as __main__ (sys.argv[1:] = [the file]).
_LAUNCHER = """\
import resource, runpy, sys
def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
_limit(resource.RLIMIT_AS, {memory})
_limit(resource.RLIMIT_CPU, {cpu})
_limit(resource.RLIMIT_FSIZE, {fsize})
_limit(resource.RLIMIT_NOFILE, {nofile})
def _confine():
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall({create}, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return
    rights = sum(r for v, r in {rights}.items() if v <= abi)
    class Ruleset(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64)]
    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    attr = Ruleset(rights)
    ruleset = libc.syscall({create}, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return
    for path, allowed in ((os.getcwd(), rights), ("/dev/null", rights & ({write_file} | {truncate}))):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        libc.syscall({add_rule}, ruleset, 1, ctypes.byref(PathBeneath(allowed, fd)), ctypes.c_uint32(0))
        os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) == 0:  # PR_SET_NO_NEW_PRIVS, which Landlock requires
        libc.syscall({restrict}, ruleset, ctypes.c_uint32(0))
    os.close(ruleset)
try:
    _confine()
except Exception:
    pass
del _limit, _confine, resource
path = sys.argv[1]
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""


@dataclass(frozen=True)
class Limits:
    """What a sandboxed program may use."""

    timeout_s: float = 3.0  # wall clock, interpreter start-up not counted (2 s are added for it)
    memory_bytes: int = 2 << 30  # address space
    file_bytes: int = 16 << 20  # the largest file it may write (its output included)
    open_files: int = 64


@dataclass(frozen=True)
class RunResult:
    passed: bool  # exited with status 0 within the time limit
    status: str  # "passed" | "failed" | "timeout"
    detail: str  # the last line of its error output, or why it failed
    stdout: str = ""  # what it printed (the last OUTPUT_LIMIT characters)


@functools.lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for args in ((exe, "--net", "--map-root-user"), (exe, "--net")):
        try:
            if subprocess.run([*args, "true"], capture_output=True, timeout=5).returncode == 0:
                return args
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def network_isolated() -> bool:
    """Whether programs run without any network (a new network namespace is available here)."""
    return bool(_unshare_prefix())


@functools.lru_cache(maxsize=1)
def writes_confined() -> bool:
    """Whether programs can write only inside their temporary folder (the kernel has Landlock)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(_LANDLOCK_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))) >= 1
    except (OSError, AttributeError):
        return False


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - OUTPUT_LIMIT, 0))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def run(program: str, limits: Limits = Limits()) -> RunResult:
    """Execute `program` in the sandbox and report whether it exited 0 within `limits.timeout_s` seconds."""
    with tempfile.TemporaryDirectory(prefix="intarsia-sandbox-") as td:
        path = os.path.join(td, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        launcher = _LAUNCHER.format(memory=int(limits.memory_bytes), cpu=int(limits.timeout_s) + 2,
                                    fsize=int(limits.file_bytes), nofile=int(limits.open_files),
                                    create=_LANDLOCK_CREATE, add_rule=_LANDLOCK_ADD_RULE, restrict=_LANDLOCK_RESTRICT,
                                    rights=_WRITE_RIGHTS, write_file=_WRITE_FILE, truncate=_TRUNCATE)
        cmd = [*_unshare_prefix(), sys.executable, "-I", "-B", "-c", launcher, path]
        env = {"PATH": "/usr/bin:/bin", "HOME": td, "TMPDIR": td, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        out_path, err_path = os.path.join(td, ".stdout"), os.path.join(td, ".stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(cmd, cwd=td, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True)
            except OSError as e:
                return RunResult(False, "failed", f"cannot start the sandbox: {e}")
            try:
                code = proc.wait(timeout=limits.timeout_s + 2.0)  # interpreter start-up and namespace set-up
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                return RunResult(False, "timeout", f"no exit within {limits.timeout_s:g} s", _tail(out_path))
            finally:
                _kill_group(proc)  # whatever it left running in its group
        stdout = _tail(out_path)
        if code == 0:
            return RunResult(True, "passed", "", stdout)
        lines = _tail(err_path).strip().splitlines()
        detail = lines[-1] if lines else (f"killed by signal {-code}" if code < 0 else f"exit status {code}")
        return RunResult(False, "failed", detail, stdout)


def run_program(program: str, *, timeout: float = 3.0, memory_bytes: int = 2 << 30) -> RunResult:
    """`run` with a time and a memory limit (the benchmarks' call)."""
    return run(program, Limits(timeout_s=timeout, memory_bytes=memory_bytes))


__all__ = ["Limits", "RunResult", "OUTPUT_LIMIT", "network_isolated", "writes_confined", "run", "run_program"]
