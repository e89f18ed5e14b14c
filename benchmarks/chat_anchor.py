"""The model's own chat mode on HumanEval(+) and MBPP(+), through our engine: the anchor for the served build.

Issue #21's anchors (ANCHORS.md B: 61.6 HumanEval / 57.3 HumanEval+ for Qwen2.5-Coder-0.5B-Instruct) were measured
on the bf16 checkpoint, greedy, with a plain chat question holding the problem and the whole program written by
the model. What `intarsia.generateFunction` can reach depends on the model it serves (the GGUF's Q4_K_M blocks,
ONNX Runtime), so this script asks the served model the same plain way, without the server, the file view or
verification: one user message ("write a self-contained Python program for this task", the problem's text in a
code block), the answer opened with a ```python fence, greedy, 768 new tokens at most, the answer's code block
run against the hidden tests exactly as `generate_function.py` runs an edited file (the sandbox, HumanEval's own
`check`, then HumanEval+ / MBPP+ inputs against the canonical solution). The wording is ours, not EvalPlus's.

    python benchmarks/chat_anchor.py --datasets humaneval --out benchmarks/results/generate_function/anchor.json

Prints one JSON object on stdout (per dataset: pass@1 per score, p50 seconds; `--records`: every problem).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate_function as gf  # noqa: E402

QUESTION = "Write a self-contained Python program, in one markdown code block, that solves this task:\n```\n{task}\n```"
ANSWER = "Here is a self-contained Python program that solves the task and passes its tests:\n```python\n"
STOPS = ("\n```", "\nif __name__", "\nprint(", "\nassert ")
MAX_NEW_TOKENS = 768


def task_text(p: gf.Problem) -> str:
    """The problem as the dataset states it: the file the user wrote, without its placeholder body."""
    return p.source[:p.source.rindex("    pass\n")].strip()


def program_of(p: gf.Problem, answer: str) -> str:
    """What is run: the answer's code, after the task's own imports (a HumanEval prompt imports what its
    signature uses; the model may rely on them)."""
    imports = [ln for ln in task_text(p).split("\n") if ln.startswith(("import ", "from "))]
    return "\n".join(imports + [answer])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="humaneval")
    ap.add_argument("--limit", type=int, default=None, help="problems per dataset (a seeded shuffle's first N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="registry name (default: the default model)")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--records", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from intarsia.model.chat import ChatMessage
    from intarsia.model.engine import BASE_ADAPTER, GenerationRequest
    from intarsia.model.factory import open_engine
    from intarsia.server.lsp.settings import parse_settings

    settings, warnings = parse_settings({"model": args.model} if args.model else {})
    for w in warnings:
        print(w, file=sys.stderr)
    loaded = open_engine(settings.engine_spec(None))
    engine = loaded.engine
    out: dict = {"model": loaded.description, "question": QUESTION, "answer_prefix": ANSWER,
                 "max_new_tokens": MAX_NEW_TOKENS, "limit": args.limit, "seed": args.seed, "datasets": {}}
    for name in args.datasets.split(","):
        problems = gf._humaneval(args.limit, args.seed) if name == "humaneval" else gf._mbppplus(args.limit,
                                                                                                 args.seed)
        records = []
        for p in tqdm(problems, desc=name, file=sys.stderr, unit="fn"):
            prompt = engine.render_chat((ChatMessage("user", QUESTION.format(task=task_text(p))),)) + ANSWER
            t0 = time.perf_counter()
            res = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=MAX_NEW_TOKENS, stop=STOPS,
                                                    adapter=BASE_ADAPTER))
            seconds = time.perf_counter() - t0
            records.append({"task_id": p.task_id, "seconds": round(seconds, 2),
                            "new_tokens": res.timings.new_tokens,
                            "passed": gf.score(p, program_of(p, res.text), args.timeout), "answer": res.text})
        scores = list(records[0]["passed"]) if records else []
        out["datasets"][name] = {
            "problems": len(records),
            **{f"pass@1 {s}": round(100 * sum(r["passed"][s] for r in records) / len(records), 1) for s in scores},
            "p50_s": round(statistics.median(r["seconds"] for r in records), 2) if records else None,
            "records": records if args.records else None}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
