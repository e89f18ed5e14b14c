"""Run generated code in a sandboxed subprocess: time limit, resource limits, temp dir, no network.

The program runs as `python -I` (isolated: no user site, no PYTHON* variables) in a fresh temporary folder,
with an empty environment, limits on address space, CPU time, file size, open files and processes, and
inside a new network namespace (`unshare --net`) where the machine allows one, so it cannot reach anything.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class RunResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    detail: str


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
    return bool(_unshare_prefix())


def _limits(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    os.setsid()


def run_program(program: str, *, timeout: float = 3.0, memory_bytes: int = 2 << 30) -> RunResult:
    """Execute `program` and report whether it exited 0 within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="intarsia-sandbox-") as td:
        path = os.path.join(td, "program.py")
        with open(path, "w") as f:
            f.write(program)
        cmd = [*_unshare_prefix(), sys.executable, "-I", "-B", path]
        try:
            proc = subprocess.run(
                cmd,
                cwd=td,
                env={"PATH": "/usr/bin:/bin", "HOME": td, "TMPDIR": td},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout + 2.0,  # interpreter start-up and namespace set-up
                preexec_fn=functools.partial(_limits, memory_bytes, int(timeout) + 2),
            )
        except subprocess.TimeoutExpired:
            return RunResult(False, "timeout", f"no exit within {timeout} s")
        if proc.returncode == 0:
            return RunResult(True, "passed", "")
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return RunResult(False, "failed", err[-1] if err else f"exit status {proc.returncode}")


def humaneval_infilling_program(problem: dict, completion: str) -> str:
    """The program upstream's harness executes: prompt + completion + suffix + test + check(entry_point)."""
    return (
        problem["prompt"] + completion + problem["suffix"] + "\n" + problem["test"] + "\n"
        + f"check({problem['entry_point']})\n"
    )
