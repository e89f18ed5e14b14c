"""`intarsia train` on a real repository: base vs adapted on its held-out files, wall time, peak memory.

Default repository: the source of a library installed here from PyPI (`--package`, default `peft`) copied into a
temporary folder (it is read only; the copy keeps the run away from site-packages). The whole command runs: crawl,
tree-sitter examples with repository context, LoRA with peft (CPU fp32 or CUDA bf16), evaluation of base and
adapted through the serving pipeline on held-out files (next-line and FIM exact match, edit similarity, share
shown, perplexity), the gate, and the versioned store (promotion is not applied: --no-promote, so the benchmark
does not change what a server would serve).

    python benchmarks/train_repo.py [--repo DIR | --package NAME] [--max-steps 30] [--device auto] ...

Prints one JSON object on stdout: the report without per-sample rows (those stay in the version folder), plus
wall time, peak RSS of this process and its children, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=None)
    ap.add_argument("--package", default="peft")
    ap.add_argument("--base", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--context-length", type=int, default=768)
    ap.add_argument("--prompt-tokens", type=int, default=None,
                    help="study another prompt budget (default: the server's on the training device)")
    ap.add_argument("--context-tokens", type=int, default=None, help="study another repository context budget")
    ap.add_argument("--max-examples", type=int, default=1500)
    ap.add_argument("--eval-next-line", type=int, default=40)
    ap.add_argument("--eval-fim", type=int, default=20)
    ap.add_argument("--eval-line-rest", type=int, default=0, help="rest-of-line held-out samples (intarsia train: 60)")
    ap.add_argument("--eval-body", type=int, default=0, help="body-from-docstring held-out samples (intarsia train: 20)")
    ap.add_argument("--time-budget", default="none",
                    help="intarsia train's --time-budget (default none here: the steps given run to the end)")
    ap.add_argument("--held-out", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-base", action="store_true",
                    help="train from the plain model, not from the model's shipped FIM adapter")
    args = ap.parse_args()

    from dataclasses import replace

    from intarsia.server.core.prompt import PromptBudget
    from intarsia.training.examples import RenderOptions
    from intarsia.training.run import TrainOptions, train_repository
    from intarsia.training.trainer import TrainConfig

    tmp = None
    if args.repo is None:
        import importlib

        mod = importlib.import_module(args.package)
        tmp = Path(tempfile.mkdtemp(prefix="intarsia-bench-"))
        repo = tmp / args.package
        shutil.copytree(Path(mod.__file__).parent, repo, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        repo = args.repo
    lines = sum(p.read_text(errors="replace").count("\n") for p in Path(repo).rglob("*.py"))
    budget = None
    if args.prompt_tokens is not None or args.context_tokens is not None:
        served = PromptBudget.served("cuda" if args.device == "cuda" else "cpu")
        budget = replace(served, prompt=args.prompt_tokens or served.prompt,
                         context=served.context if args.context_tokens is None else args.context_tokens)
    opts = TrainOptions(
        base=args.base, device=args.device, held_out=args.held_out, seed=args.seed, max_examples=args.max_examples,
        eval_next_line=args.eval_next_line, eval_fim=args.eval_fim, promote=False, use_acceptance_log=False,
        eval_line_rest=args.eval_line_rest, eval_body=args.eval_body, time_budget=args.time_budget,
        from_fim_adapter=not args.from_base,
        render=RenderOptions(budget=budget),
        config=TrainConfig(rank=args.rank, alpha=2 * args.rank, learning_rate=args.lr, max_steps=args.max_steps,
                           epochs=args.epochs, batch_tokens=args.batch_tokens, context_length=args.context_length,
                           seed=args.seed))
    t0 = time.perf_counter()
    report = train_repository(repo, opts, command="benchmarks/train_repo.py " + " ".join(sys.argv[1:]))
    wall = time.perf_counter() - t0
    report.pop("rows", None)
    report.update({
        "wall_s": round(wall, 1),
        "python_lines": lines,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "package": args.package if args.repo is None else None,
    })
    print(json.dumps(report, indent=1, default=str))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
