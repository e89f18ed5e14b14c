"""HumanEval infilling, side by side: reference fp32 (transformers), the served ORT model, builder int4, llama.cpp.

Same problems for every engine (rows shuffled with random.Random(seed), first --limit), the raw
`<|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>` prompt, greedy, --max-new-tokens, stop at the format's stop
strings. Single-line tasks keep the first line of the generation (the second when the generation starts with a
newline, as Qwen's harness does). Scores: exact match (stripped line vs stripped canonical line), pass@1 by
executing prompt + completion + suffix + tests in a sandbox (benchmarks/sandbox.py), the share of generations
that stop by themselves (end token or FIM sentinel before the token limit), agreement with the reference's
first line, and speed (prefill and decode tokens/s, first-token latency) and size on disk.

    python benchmarks/fim_quality.py --limit 100 --engines reference,ort-exact,ort-int4,llama.cpp
    python benchmarks/fim_quality.py --limit 200 --engines ort-exact,ort-exact+fim --postprocess   # FIM adapter
    python benchmarks/fim_quality.py --task multi-line --limit 40 \
        --engines ort-exact:nolookup,ort-exact,llama.cpp,llama.cpp:lookup --compare-to ort-exact:nolookup

Decoding: ORT engines use prompt-lookup decoding (the served default, `model.lookup`), ":nolookup" turns it
off; llama.cpp decodes plainly, ":lookup" gives it the same drafts and acceptance.

Prints one JSON object on stdout (and --out FILE); a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sandbox import humaneval_infilling_program, network_isolated, run_program  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "humaneval-infilling"
SETS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}


def load_problems(name: str, limit: int | None, seed: int, data_dir: Path = DATA) -> list[dict]:
    with gzip.open(data_dir / SETS[name], "rt") as f:
        rows = [json.loads(line) for line in f]
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit else rows


def first_line(text: str) -> str:
    """Qwen's HumanEval-FIM rule: the first line, or the second if the generation starts with a newline."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[0].strip() == "":
        return lines[1]
    return lines[0]


def completion_for(task: str, text: str) -> str:
    if task == "single-line":
        return first_line(text) + "\n"
    return text


def exact(task: str, completion: str, canonical: str) -> bool:
    if task == "single-line":
        return completion.strip() == canonical.strip()
    return [ln.strip() for ln in completion.strip().splitlines() if ln.strip()] == [
        ln.strip() for ln in canonical.strip().splitlines() if ln.strip()
    ]


def dir_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_engine(kind: str, model: str, threads: int, adapter: Path | None = None):
    """(engine, size_on_disk_bytes, description) for an engine name. A "+fim" suffix applies the model's
    shipped fill-in-the-middle adapter (model/adapters/), "+adapter" the peft folder given by --adapter
    (ORT engines: at run time; the reference: through peft)."""
    from intarsia.model.build import build, hf_folder_for, resolve_gguf
    from intarsia.model.registry import resolve_source

    src = resolve_source(model)
    gguf = resolve_gguf(src, progress=True)
    kind, _, decoding = kind.partition(":")
    if decoding not in ("", "lookup", "nolookup"):
        raise SystemExit(f"unknown decoding :{decoding} (lookup or nolookup)")
    kind, _, plus = kind.partition("+")
    peft_dir = None
    if plus == "fim":
        from intarsia.model.shipped import shipped_for

        shipped = shipped_for(src)
        if shipped is None:
            raise SystemExit(f"{src.name} ships no fill-in-the-middle adapter")
        peft_dir = shipped.path
    elif plus == "adapter":
        if adapter is None:
            raise SystemExit("engine '+adapter' needs --adapter PEFT_FOLDER")
        peft_dir = adapter
    elif plus:
        raise SystemExit(f"unknown engine suffix +{plus} (fim or adapter)")
    label = f" + LoRA {peft_dir.name}" if peft_dir is not None else ""
    if kind == "reference":
        from intarsia.model.hf_engine import HfEngine

        hf = hf_folder_for(src, gguf)
        return (HfEngine(hf, device="cpu", adapter_dir=peft_dir), dir_size(hf),
                "transformers fp32 on the dequantized GGUF" + label)
    if kind.startswith("ort-"):
        from intarsia.model.ort_engine import OrtEngine

        from engines import ort_options

        opts, provider = ort_options(kind)
        built = build(src, opts, fim_adapter=False)
        size = sum(p.stat().st_size for p in built.path.iterdir() if p.name.startswith("model.onnx"))
        adapters = {}
        if peft_dir is not None:
            from intarsia.model.lora import export_adapter

            out = built.path / "adapters" / f"bench-{peft_dir.resolve().name}.onnx_adapter"
            export_adapter(peft_dir, built.path, out)
            adapters["a"] = out
        engine = OrtEngine(built.path, provider=provider, threads=threads, adapters=adapters,
                           default_adapter="a" if adapters else None, lookup_draft=0 if decoding == "nolookup" else None)
        how = "" if decoding != "nolookup" else ", plain decoding"
        if opts.provider == "cuda" and engine.provider != "cuda":
            how += ", run on the CPU provider"
        return engine, size, f"ONNX Runtime {opts.variant}" + label + how
    if kind == "llama.cpp":
        from peers import LlamaCppEngine

        from intarsia.model.lookup import DEFAULT_DRAFT

        lookup = DEFAULT_DRAFT if decoding == "lookup" else 0
        return (LlamaCppEngine(gguf, threads=threads, lookup_draft=lookup), dir_size(gguf),
                "llama.cpp (llama-cpp-python) on the GGUF" + (", prompt-lookup decoding" if lookup else ""))
    raise SystemExit(f"unknown engine {kind}")


def line_done(text: str) -> bool:
    """The line `first_line` scores is complete: a newline after non-blank text."""
    nl = text.find("\n")
    while nl >= 0:
        if text[:nl].strip():
            return True
        nl = text.find("\n", nl + 1)
    return False


def run_engine(kind: str, engine, problems: list[dict], task: str, max_new: int, fmt,
               line_stop: bool = False) -> list[dict]:
    import threading

    from intarsia.model.engine import FINISH_EOS, FINISH_STOP, GenerationRequest

    out = []
    for i, prob in enumerate(problems):
        prompt = fmt.render(prob["prompt"], prob["suffix"])
        cancel = on_text = None
        if line_stop and task == "single-line":
            # Only the first line is scored: stop generating once it is complete (same cut for every engine).
            cancel, seen = threading.Event(), []

            def on_text(piece: str, seen=seen, cancel=cancel) -> None:
                seen.append(piece)
                if line_done("".join(seen)):
                    cancel.set()
        res = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=max_new, stop=fmt.stop_strings),
                              cancel=cancel, on_text=on_text)
        comp = completion_for(task, res.text)
        t = res.timings
        out.append({
            "task_id": prob["task_id"],
            "raw": res.text,
            "completion": comp,
            "stopped": res.finish_reason in (FINISH_EOS, FINISH_STOP),
            "finish": res.finish_reason,
            "exact": exact(task, comp, prob["canonical_solution"]),
            "prompt_tokens": t.prompt_tokens,
            "reused_tokens": t.reused_tokens,
            "new_tokens": t.new_tokens,
            "first_token_s": t.first_token_s,
            **{k: v for k, v in res.extra.items() if k.startswith("lookup_")},
            "prefill_s": t.prefill_s,
            "decode_s": t.decode_s,
        })
        print(f"\r{kind}: {i + 1}/{len(problems)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def parses(prob: dict, middle: str) -> bool:
    """Does prefix + middle + suffix compile as Python (the strictest in-context check: indentation too)?"""
    import ast

    try:
        ast.parse(prob["prompt"] + middle + prob["suffix"])
    except (SyntaxError, ValueError):
        return False
    return True


def postprocess_rows(rows: list[dict], problems: list[dict]) -> None:
    """Add the grammar post-processed completion (what the server would show) to each row."""
    from intarsia.grammars.postprocess import postprocess
    from intarsia.grammars.registry import get_language
    from intarsia.grammars.context import cursor_context
    from intarsia.grammars.scope import scope_for_context

    lang = get_language("python")
    by_id = {p["task_id"]: p for p in problems}
    for r in rows:
        prob = by_id[r["task_id"]]
        doc, off = prob["prompt"] + prob["suffix"], len(prob["prompt"])
        ctx = cursor_context(doc, off, lang)  # the scope's view of the cursor, handed to post-processing
        scope = scope_for_context(ctx, invoked=True).scope
        truncated = r.get("finish", "stop" if r["stopped"] else "length") == "length"
        res = postprocess(doc, off, r["raw"], language=lang, scope=scope, truncated=truncated, context=ctx)
        r["post"] = res.text
        r["post_scope"] = scope.name


def score(rows: list[dict], problems: list[dict], timeout: float, task: str) -> None:
    by_id = {p["task_id"]: p for p in problems}
    for r in rows:
        prob = by_id[r["task_id"]]
        res = run_program(humaneval_infilling_program(prob, r["completion"]), timeout=timeout)
        r["passed"] = res.passed
        r["status"] = res.status
        r["raw_parses"] = parses(prob, r["raw"])
        r["completion_parses"] = parses(prob, r["completion"])
        if "post" in r:
            r["post_exact"] = exact(task, r["post"], prob["canonical_solution"])
            r["post_passed"] = run_program(humaneval_infilling_program(prob, r["post"]), timeout=timeout).passed
            r["post_parses"] = bool(r["post"]) and parses(prob, r["post"])
            r["raw_passed"] = run_program(humaneval_infilling_program(prob, r["raw"]), timeout=timeout).passed


def summarize(rows: list[dict], ref_rows: list[dict] | None, task: str) -> dict:
    n = len(rows)
    prefill_tok = sum(r["prompt_tokens"] - r["reused_tokens"] for r in rows)
    prefill_s = sum(r["prefill_s"] for r in rows)
    decode_tok = sum(max(r["new_tokens"] - 1, 0) for r in rows)
    decode_s = sum(r["decode_s"] for r in rows)
    s = {
        "n": n,
        "exact_match": round(100 * sum(r["exact"] for r in rows) / n, 1),
        "pass_at_1": round(100 * sum(r["passed"] for r in rows) / n, 1),
        "stops_by_itself": round(100 * sum(r["stopped"] for r in rows) / n, 1),
        "prefill_tok_s": round(prefill_tok / prefill_s, 1) if prefill_s else None,
        "decode_tok_s": round(decode_tok / decode_s, 1) if decode_s else None,
        "first_token_ms_median": round(1000 * statistics.median(r["first_token_s"] for r in rows), 1),
        "mean_prompt_tokens": round(statistics.mean(r["prompt_tokens"] for r in rows), 1),
    }
    if rows and "lookup_passes" in rows[0]:
        # Prompt-lookup decoding: tokens after the first per forward pass, and the share of drafts accepted.
        passes = sum(r["lookup_passes"] for r in rows)
        drafted = sum(r["lookup_drafted"] for r in rows)
        s["decode_tokens_per_pass"] = round(decode_tok / passes, 2) if passes else None
        s["drafts_accepted"] = round(100 * sum(r["lookup_accepted"] for r in rows) / drafted, 1) if drafted else None
    if rows and "post" in rows[0]:
        shown = [r for r in rows if r["post"]]
        s["raw"] = {"pass_at_1": round(100 * sum(r["raw_passed"] for r in rows) / n, 1),
                    "parses_in_context": round(100 * sum(r["raw_parses"] for r in rows) / n, 1)}
        s["heuristic"] = {"exact_match": s["exact_match"], "pass_at_1": s["pass_at_1"],
                          "parses_in_context": round(100 * sum(r["completion_parses"] for r in rows) / n, 1)}
        s["postprocessed"] = {
            "exact_match": round(100 * sum(r["post_exact"] for r in rows) / n, 1),
            "pass_at_1": round(100 * sum(r["post_passed"] for r in rows) / n, 1),
            "suggestions_shown": round(100 * len(shown) / n, 1),
            "shown_that_parse_in_context": round(100 * sum(r["post_parses"] for r in shown) / len(shown), 1)
            if shown else None,
        }
    if ref_rows is not None:
        ref = {r["task_id"]: r for r in ref_rows}
        key = (lambda r: first_line(r["raw"]).rstrip()) if task == "single-line" else (lambda r: r["completion"])
        s["same_as_reference"] = round(100 * sum(key(r) == key(ref[r["task_id"]]) for r in rows) / n, 1)
    return s


def markdown(results: dict) -> str:
    cols = ["exact_match", "pass_at_1", "stops_by_itself", "same_as_reference", "prefill_tok_s", "decode_tok_s",
            "first_token_ms_median", "size_mb"]
    lines = ["| engine | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results["engines"].items():
        s = {**r["summary"], "size_mb": round(r["size_bytes"] / 2**20)}
        lines.append(f"| {name} | " + " | ".join(str(s.get(c, "—")) for c in cols) + " |")
    return "\n".join(lines)


def rescore(args: argparse.Namespace) -> int:
    old = json.loads(args.rescore.read_text())
    problems = load_problems(old["task"], old["n"], old["seed"])
    results = {**{k: v for k, v in old.items() if k != "engines"}, "engines": {},
               "rescored_from": str(args.rescore)}
    for kind, r in old["engines"].items():
        rows = r["rows"]
        if args.postprocess:
            postprocess_rows(rows, problems)
        score(rows, problems, args.timeout, old["task"])
        results["engines"][kind] = {**r, "summary": summarize(rows, None, old["task"]), "rows": rows}
    ref = results["engines"].get("reference")
    if ref is not None:
        for kind, r in results["engines"].items():
            if kind != "reference":
                r["summary"] = summarize(r["rows"], ref["rows"], old["task"])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    compact = {**results, "engines": {k: {kk: vv for kk, vv in v.items() if kk != "rows"}
                                      for k, v in results["engines"].items()}}
    print(markdown(results), file=sys.stderr)
    print(json.dumps(compact, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="single-line", choices=sorted(SETS))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--engines", default="reference,ort-exact,ort-int4,llama.cpp")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--line-stop", action="store_true",
                    help="single-line: stop generating once the scored first line is complete (saves time; "
                         "'stops by itself' then only counts generations that ended before that)")
    ap.add_argument("--adapter", type=Path, default=None, help="peft folder for engines named with +adapter")
    ap.add_argument("--compare-to", default="reference",
                    help="engine whose outputs the others' same_as_reference share is measured against")
    ap.add_argument("--postprocess", action="store_true",
                    help="also score the grammar post-processed completion (grammars/), raw vs post-processed")
    ap.add_argument("--rescore", type=Path, default=None,
                    help="re-score the rows of an earlier --out file (no generation), e.g. with --postprocess")
    args = ap.parse_args()
    if args.rescore:
        return rescore(args)

    from intarsia.model.fim import QWEN25_CODER

    problems = load_problems(args.task, args.limit, args.seed)
    results: dict = {"task": args.task, "n": len(problems), "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                     "threads": args.threads, "line_stop": args.line_stop,
                     "sandbox_network_isolated": network_isolated(),
                     "command": "python benchmarks/fim_quality.py " + " ".join(sys.argv[1:]), "engines": {}}
    for kind in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if kind.startswith("llama.cpp"):
            from peers import llama_cpp_available

            if not llama_cpp_available():
                print("llama.cpp: llama-cpp-python not installed, skipped", file=sys.stderr)
                continue
        t0 = time.perf_counter()
        engine, size, desc = make_engine(kind, args.model, args.threads, args.adapter)
        load_s = time.perf_counter() - t0
        try:
            rows = run_engine(kind, engine, problems, args.task, args.max_new_tokens, QWEN25_CODER, args.line_stop)
        finally:
            engine.close()
        if args.postprocess:
            postprocess_rows(rows, problems)
        score(rows, problems, args.timeout, args.task)
        summary = summarize(rows, None, args.task)
        results["engines"][kind] = {"description": desc, "size_bytes": size, "load_s": round(load_s, 1),
                                    "summary": summary, "rows": rows}
        print(f"{kind}: {json.dumps(summary)}", file=sys.stderr)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    # Agreement with the reference (--compare-to), whichever order the engines ran in.
    ref = results["engines"].get(args.compare_to)
    if ref is not None:
        results["compared_to"] = args.compare_to
        for kind, r in results["engines"].items():
            if kind != args.compare_to:
                r["summary"] = summarize(r["rows"], ref["rows"], args.task)
    print(markdown(results), file=sys.stderr)
    compact = {**results, "engines": {k: {kk: vv for kk, vv in v.items() if kk != "rows"}
                                      for k, v in results["engines"].items()}}
    print(json.dumps(compact, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
