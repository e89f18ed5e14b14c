"""What a KV slot costs in memory, measured: the ORT engine with --slots caches, filled one after the other with
prompts from different places of a real file, and the process's RSS after each.

The KV cache of a slot is allocated for its whole length (`past_present_share_buffer`): layers x KV heads x head
size x 2 (K and V) x 4 bytes (fp32 on the CPU) per token. The RSS also shows what onnxruntime-genai keeps per
generator besides it.

    python benchmarks/kv_slots_memory.py [--model qwen2.5-coder-0.5b] [--slots 4] [--length 2560]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--length", type=int, default=2560, help="tokens a slot holds (the server: budget + 512)")
    ap.add_argument("--prompt-chars", type=int, default=6000)
    args = ap.parse_args()

    from intarsia.model.build import BuildOptions, build
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.model.ort_engine import OrtEngine
    from intarsia.model.registry import resolve_source

    src = resolve_source(args.model)
    built = build(src, BuildOptions(), progress=True)
    text = (Path(sysconfig.get_paths()["stdlib"]) / "subprocess.py").read_text()
    before = rss_mb()
    rows = []
    with OrtEngine(built.path, provider="cpu", kv_slots=args.slots, max_length=args.length) as eng:
        loaded = rss_mb()
        for k in range(args.slots):
            start = 4000 + k * 15000
            prompt = QWEN25_CODER.render(text[start:start + args.prompt_chars], text[start + args.prompt_chars:
                                                                                     start + args.prompt_chars + 400])
            r = eng.generate(GenerationRequest(prompt, max_new_tokens=8))
            rows.append({"slots": eng.kv_slots, "prompt_tokens": r.timings.prompt_tokens, "rss_mb": rss_mb(),
                         "kv_allocated_mb": round(eng.kv_cache_bytes / 2 ** 20, 1)})
        per_slot = [b["rss_mb"] - a["rss_mb"] for a, b in zip(rows, rows[1:])]
        out = {"model": src.name, "slot_length": args.length, "kv_bytes_per_token": eng.kv_bytes_per_token,
               "kv_mb_per_slot": round(eng.kv_bytes_per_token * args.length / 2 ** 20, 1),
               "rss_mb": {"before_load": before, "loaded": loaded}, "rows": rows,
               "rss_mb_per_extra_slot": per_slot,
               "rss_mb_per_extra_slot_mean": round(sum(per_slot) / len(per_slot), 1) if per_slot else None}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
