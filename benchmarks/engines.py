"""Engine speed, side by side in one run: our ORT engine vs transformers generate() vs llama.cpp (same GGUF).

Prompts: a ~500-token and a ~1,500-token FIM prompt cut from real source (CPython's standard library, read from
this interpreter's installation), greedy, 64 new tokens forced (end tokens ignored so every engine decodes the
same count). For each engine, in its own subprocess (so peak RSS is its own):
- first-token latency and prefill tokens/s for each prompt, cold (no shared prefix with the previous request);
- decode tokens/s over the 64 tokens;
- first-token latency when 95 % of the prompt is shared with the previous request (an edit near the cursor);
- peak RSS.

    python benchmarks/engines.py [--engines ort-exact,transformers,llama.cpp] [--model NAME] [--threads 2]

Decoding: ORT engines decode greedy requests with prompt-lookup drafts (the served default, `model.lookup`);
"ort-exact:nolookup" decodes one token per pass; "llama.cpp:lookup" gives llama.cpp the same drafts and
acceptance. Drafts help where the continuation repeats the prompt, so decode speed depends on the text.

`ort-exact-lora` is the served engine with a rank-16 run-time LoRA adapter on all seven projections (what a
workspace trained with `intarsia train` is served with), to compare with `ort-exact`.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SOURCES = ("argparse.py", "inspect.py")  # two unrelated files, so the two prompts share no prefix


def fim_prompt(fmt, encode, source: Path, target_tokens: int) -> str:
    """A FIM prompt of about `target_tokens` tokens: 80 % prefix / 20 % suffix around a line in a function."""
    text = source.read_text()
    lines = text.splitlines(keepends=True)
    # Cursor: the start of an indented statement line near the middle of the file.
    mid = len(lines) // 2
    while mid < len(lines) and not lines[mid].startswith("        "):
        mid += 1
    prefix_lines, suffix_lines = lines[:mid], lines[mid + 1:]
    pre_budget, suf_budget = int(target_tokens * 0.8), int(target_tokens * 0.2)
    prefix, suffix = "", ""
    for ln in reversed(prefix_lines):
        if len(encode(ln + prefix)) > pre_budget:
            break
        prefix = ln + prefix
    for ln in suffix_lines:
        if len(encode(suffix + ln)) > suf_budget:
            break
        suffix += ln
    indent = lines[mid][: len(lines[mid]) - len(lines[mid].lstrip())]
    return fmt.render(prefix + indent, "\n" + suffix)


def edited(prompt: str, share: float) -> str:
    """The same prompt with a small edit at `share` of its length (everything before it unchanged)."""
    cut = int(len(prompt) * share)
    nl = prompt.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    return prompt[:cut] + "    # edited here\n" + prompt[cut:]


def _random_adapter(hf_dir: Path, model_dir: Path, rank: int = 16) -> Path:
    """A peft LoRA of `rank` on every projection (random A and B, so it really changes the output), exported as
    an ONNX Runtime adapter into a temporary folder."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from intarsia.model.lora import LORA_TARGETS, export_adapter

    tmp = Path(tempfile.mkdtemp(prefix="intarsia-lora-bench-"))
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                                      target_modules=list(LORA_TARGETS)))
    model.save_pretrained(str(tmp / "peft"))
    del model
    export_adapter(tmp / "peft", model_dir, tmp / "bench.onnx_adapter")
    return tmp / "bench.onnx_adapter"


def one(name: str, model: str | None, threads: int, new_tokens: int) -> dict:
    from intarsia.model.build import BuildOptions, build, hf_folder_for, resolve_gguf
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.model.lookup import DEFAULT_DRAFT
    from intarsia.model.registry import resolve_source

    kind, _, decoding = name.partition(":")
    if decoding not in ("", "lookup", "nolookup"):
        raise SystemExit(f"unknown decoding :{decoding} (lookup or nolookup)")
    ort_draft = 0 if decoding == "nolookup" else None

    src = resolve_source(model)
    gguf = resolve_gguf(src, progress=False)
    t0 = time.perf_counter()
    if kind == "ort-exact-lora":
        # The served path with a trained adapter: a rank-16 LoRA on all seven projections, applied at run time.
        from intarsia.model.ort_engine import OrtEngine

        built = build(src, BuildOptions(), progress=False)
        adapter = _random_adapter(hf_folder_for(src, gguf, progress=False), built.path)
        t0 = time.perf_counter()
        engine = OrtEngine(built.path, threads=threads, adapters={"lora": adapter}, default_adapter="lora",
                           lookup_draft=ort_draft)
    elif kind.startswith("ort-"):
        from intarsia.model.ort_engine import OrtEngine

        opts, provider = ort_options(kind)
        built = build(src, opts, progress=False)
        engine = OrtEngine(built.path, provider=provider, threads=threads, lookup_draft=ort_draft)
    elif kind == "transformers":
        from intarsia.model.hf_engine import HfEngine

        engine = HfEngine(hf_folder_for(src, gguf, progress=False), device="cpu")
    elif kind == "llama.cpp":
        from peers import LlamaCppEngine

        engine = LlamaCppEngine(gguf, threads=threads, lookup_draft=DEFAULT_DRAFT if decoding == "lookup" else 0)
    else:
        raise SystemExit(f"unknown engine {kind}")
    load_s = time.perf_counter() - t0

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    p500 = fim_prompt(QWEN25_CODER, engine.encode, stdlib / SOURCES[0], 500)
    p1500 = fim_prompt(QWEN25_CODER, engine.encode, stdlib / SOURCES[1], 1500)
    out: dict = {"engine": name, "load_s": round(load_s, 2), "threads": threads}
    # Warm-up on an unrelated short prompt (first-call allocations), then the measured runs.
    engine.generate(GenerationRequest(prompt=QWEN25_CODER.render("x = ", "\n"), max_new_tokens=2))
    for name, prompt in (("p500", p500), ("p1500", p1500)):
        r = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=new_tokens, ignore_eos=True))
        t = r.timings
        out[name] = {
            "prompt_tokens": t.prompt_tokens,
            "reused_tokens": t.reused_tokens,
            "first_token_ms": round(t.first_token_s * 1000, 1),
            "prefill_tok_s": round((t.prompt_tokens - t.reused_tokens) / t.first_token_s, 1),
            "new_tokens": t.new_tokens,
            "decode_tok_s": round(t.decode_tps, 2),
            "total_ms": round(t.total_s * 1000, 1),
            **{k: v for k, v in r.extra.items() if k.startswith("lookup_")},
        }
    r = engine.generate(GenerationRequest(prompt=edited(p1500, 0.95), max_new_tokens=1))
    out["p1500_95pct_shared"] = {
        "prompt_tokens": r.timings.prompt_tokens,
        "reused_tokens": r.timings.reused_tokens,
        "first_token_ms": round(r.timings.first_token_s * 1000, 1),
    }
    engine.close()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def ort_options(kind: str):
    """(BuildOptions, provider to run on) for an engine name "ort-PRECISION" (CPU build) or "ort-PRECISION-cuda"
    (the CUDA build, run on CUDA when this machine has it, else on ONNX Runtime's CPU provider, which runs the
    same fp16 graph: slower, for checking what it computes)."""
    from intarsia.model.build import BuildOptions

    precision = kind.split("-", 1)[1]
    provider = "cpu"
    if precision.endswith("-cuda"):
        precision, provider = precision[: -len("-cuda")], "cuda"
    opts = BuildOptions(precision=precision, provider=provider, accuracy_level=4, lora_inputs=(precision == "exact"))
    return opts, ("auto" if provider == "cuda" else "cpu")


def machine() -> dict:
    """The CPU the figures come from (they differ between machines of the same kind)."""
    import os
    import platform

    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    name = name or platform.processor()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags]
    return {"cpu": name, "cores": os.cpu_count(), "simd": simd}


def ratios(engines: dict) -> dict:
    """Our engine over llama.cpp's, for each pair that ran: the served decoding (ort-exact) against plain
    llama.cpp, and like against like (ort-exact:nolookup vs llama.cpp; ort-exact vs llama.cpp:lookup)."""
    pairs = {"ratios_vs_llama_cpp": ("ort-exact", "llama.cpp"),
             "ratios_plain_vs_llama_cpp_plain": ("ort-exact:nolookup", "llama.cpp"),
             "ratios_lookup_vs_llama_cpp_lookup": ("ort-exact", "llama.cpp:lookup")}
    out = {}
    for key, (a, b) in pairs.items():
        ours, peer = engines.get(a, {}), engines.get(b, {})
        if "p500" in ours and "p500" in peer:
            out[key] = {
                p: {"decode": round(ours[p]["decode_tok_s"] / peer[p]["decode_tok_s"], 2),
                    "prefill": round(ours[p]["prefill_tok_s"] / peer[p]["prefill_tok_s"], 2)}
                for p in ("p500", "p1500")
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines",
                    default="ort-exact,ort-exact:nolookup,ort-int4,transformers,llama.cpp,llama.cpp:lookup")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.model, args.threads, args.new_tokens)))
        return 0
    results = {"new_tokens": args.new_tokens, "threads": args.threads, "machine": machine(), "engines": {}}
    for kind in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if kind.startswith("llama.cpp"):
            from peers import llama_cpp_available

            if not llama_cpp_available():
                results["engines"][kind] = {"skipped": "llama-cpp-python not installed"}
                continue
        cmd = [sys.executable, __file__, "--one", kind, "--threads", str(args.threads),
               "--new-tokens", str(args.new_tokens)]
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results["engines"][kind] = {"error": proc.stderr.strip().splitlines()[-1:] }
        else:
            results["engines"][kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{kind}: {json.dumps(results['engines'][kind])}", file=sys.stderr)
    results.update(ratios(results["engines"]))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
