"""Headroom for prompt-lookup decoding: what verifying drafted tokens in one pass could win on CPU decode.

Greedy prompt-lookup decoding (`intarsia.model.lookup`, what the ORT engine does) drafts the next tokens by
finding the last n-gram (n = 3, 2, 1) of prompt + output earlier in that text and copying what followed it;
one forward pass over [next token] + draft verifies the draft, and every drafted token that equals the greedy
choice comes for free. The engine's real speed-up is measured by benchmarks/engines.py and fim_quality.py
(":nolookup" engines decode without it); this script explains it. The output is the plain
greedy output (only the number of passes changes), so it keeps the exactness the served model is built for.

Two measurements, one run:
- acceptance, offline: on the greedy generations recorded by `fim_quality.py` (re-tokenized), the tokens each
  pass would yield for a draft of up to --draft tokens;
- cost, on the served exact ORT model: milliseconds of one decode pass that appends 1, 2, 3, 5 or 9 tokens
  after a ~500-token prompt (onnxruntime-genai's own append/rewind, --threads threads).

    python benchmarks/lookup_headroom.py [--draft 4] [--threads 2] [--runs FILE ...]

Prints one JSON object. The estimated speed-up is tokens per pass divided by the cost of a pass of the mean
appended length relative to a one-token pass (upper bound: the pruned graph computes the LM head for the last
position only, and verifying needs it for every drafted position).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RUNS = [
    ("fim_adapter_single_line_200.json", "ort-exact+fim"),
    ("fim_adapter_stage1_multi_line_80.json", "ort-exact+fim"),
    ("fim_adapter_stage1_random_span_80.json", "ort-exact+fim"),
    ("fim_multi_line_100.json", "ort-exact"),
]


def passes(prompt: list[int], output: list[int], k: int) -> tuple[int, int]:
    """(passes, tokens appended over all passes) to produce `output` greedily with the engine's drafter
    (`intarsia.model.lookup.PromptLookup`, up to k tokens a draft)."""
    from intarsia.model.lookup import PromptLookup

    ctx = PromptLookup(prompt)
    i = count = appended = 0
    while i < len(output):
        draft = ctx.draft(k)
        accepted = 0
        while accepted < len(draft) and i + accepted < len(output) and output[i + accepted] == draft[accepted]:
            accepted += 1
        appended += 1 + len(draft)
        ctx.extend(output[i:i + accepted + 1])
        i += accepted + 1
        count += 1
    return count, appended


def acceptance(runs: list[tuple[Path, str]], k: int, encode) -> dict:
    import fim_quality as fq

    from intarsia.model.fim import QWEN25_CODER

    out = {}
    for path, engine in runs:
        data = json.loads(path.read_text())
        problems = {p["task_id"]: p for p in fq.load_problems(data["task"], None, data.get("seed", 7))}
        tokens = n_passes = appended = 0
        for row in data["engines"][engine]["rows"]:
            prob = problems[row["task_id"]]
            generated = encode(row["raw"])
            if not generated:
                continue
            p, a = passes(encode(QWEN25_CODER.render(prob["prompt"], prob["suffix"])), generated, k)
            tokens, n_passes, appended = tokens + len(generated), n_passes + p, appended + a
        out[f"{path.name}:{engine}"] = {
            "task": data["task"], "tokens": tokens, "passes": n_passes,
            "tokens_per_pass": round(tokens / max(n_passes, 1), 3),
            "mean_appended_per_pass": round(appended / max(n_passes, 1), 2),
        }
    return out


def pass_cost(model_dir: Path, threads: int, lengths=(1, 2, 3, 5, 9), reps: int = 12) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    cfg = og.Config(str(model_dir))
    cfg.clear_providers()
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(cfg)
    tok = og.Tokenizer(model)
    prompt = tok.encode(Path(subprocess.__file__).read_text()[30000:33000])[:500]
    out = {}
    for m in lengths:
        times = []
        for _ in range(reps):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(prompt) + 32, do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(np.asarray(prompt, dtype=np.int32))
            for step in range(3):
                piece = np.asarray(prompt[100 + step:100 + step + m], dtype=np.int32)
                t0 = time.perf_counter()
                gen.append_tokens(piece)
                times.append(time.perf_counter() - t0)
                gen.rewind_to(len(prompt))
        out[m] = round(statistics.median(times) * 1e3, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draft", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", nargs="*", type=Path, default=None,
                    help="fim_quality.py result files (default: the recorded 0.5B runs); engine: the first one")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from intarsia.model.build import BuildOptions, build
    from intarsia.model.registry import resolve_source

    built = build(resolve_source(args.model), BuildOptions(), progress=True)
    tokenizer = Tokenizer.from_file(str(built.path / "tokenizer.json"))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text).ids

    if args.runs:
        runs = [(p, next(iter(json.loads(p.read_text())["engines"]))) for p in args.runs]
    else:
        runs = [(HERE / "results" / name, engine) for name, engine in RUNS]
    acc = acceptance(runs, args.draft, encode)
    cost = pass_cost(built.path, args.threads)

    def cost_at(length: float) -> float:
        # Linear between the measured lengths.
        keys = sorted(cost)
        lo = max([k for k in keys if k <= length], default=keys[0])
        hi = min([k for k in keys if k >= length], default=keys[-1])
        if hi == lo:
            return cost[lo]
        return cost[lo] + (cost[hi] - cost[lo]) * (length - lo) / (hi - lo)

    for r in acc.values():
        relative = cost_at(min(r["mean_appended_per_pass"], max(cost))) / cost[1]
        r["pass_cost_vs_one_token"] = round(relative, 3)
        r["estimated_decode_speedup"] = round(r["tokens_per_pass"] / relative, 2)
    print(json.dumps({"benchmark": "lookup_headroom", "model": str(built.path), "draft_tokens": args.draft,
                      "threads": args.threads, "pass_ms_by_appended_tokens": cost, "acceptance": acc}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
