"""Run generated code in the sandbox: the product's own (`intarsia.server.core.sandbox`), which verified generation
uses too, so that the benchmarks judge code exactly as the server does.

`run_program` executes a program as `python -I` in a fresh temporary folder with an almost empty environment,
limits on address space, CPU time, file size and open files, inside a new network namespace where the machine
allows one (`network_isolated()`), writes confined to that folder where the kernel has Landlock
(`writes_confined()`). This module adds only the HumanEval infilling harness.
"""

from __future__ import annotations

from intarsia.server.core.sandbox import RunResult, network_isolated, run_program, writes_confined

__all__ = ["RunResult", "network_isolated", "writes_confined", "run_program", "humaneval_infilling_program"]


def humaneval_infilling_program(problem: dict, completion: str) -> str:
    """The program upstream's harness executes: prompt + completion + suffix + test + check(entry_point)."""
    return (
        problem["prompt"] + completion + problem["suffix"] + "\n" + problem["test"] + "\n"
        + f"check({problem['entry_point']})\n"
    )
