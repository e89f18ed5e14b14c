"""Train the shipped fill-in-the-middle LoRA adapter with Intarsia's own training pipeline, and record it.

Corpus: the CPython standard library of the Python running this script (PSF licence; on every machine), minus its
tests and GUI/demo/packaging folders, a deterministic sample of `--files` files, optionally plus the sources of
installed packages whose licence is MIT, BSD, Apache-2.0 or PSF (`--package NAME`, repeatable). The files are
copied into a corpus folder with their licence texts and a file list (path, sha256, source, licence).

Before training, the corpus is checked for overlap with every evaluation set in ../shared/data (HumanEval and
its infilling sets, HumanEval+, MBPP+): no file may define a function named like a task's entry point with a
body line of its canonical solution, and the share of canonical-solution lines (normalized, ≥ 20 characters)
found verbatim in the corpus is reported; files that share a 3-line window with a solution are dropped.

Training is `intarsia.training` as `intarsia train` runs it (crawl with secret masking and de-duplication,
tree-sitter spans, whole lines and line windows, random spans, docstring → body, prompts rendered by the server's
`build_prompt` with repository context, a share without any repository header, targets ending with
<|endoftext|>; packed LoRA with peft) on the default model's dequantized weights.

    python benchmarks/train_fim_adapter.py train [--model qwen2.5-coder-0.5b] [--max-steps 110] ...
    python benchmarks/fim_quality.py --engines ort-exact,ort-exact+fim ... --out single.json
    python benchmarks/train_fim_adapter.py record single.json multi.json ...   # scores into the manifest

`train` writes the adapter (PEFT safetensors in float16 + config) and `manifest.json` into `model/adapters/<name>/`
(the folder the package ships), prints the manifest as JSON on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data"

# Standard-library folders left out: tests, GUI, demos, bundled wheels, encoding tables, 2to3.
STDLIB_SKIP = ("test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
               "dist-packages", "encodings", "__phello__", "pydoc_data", "config-3")
PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC)\b", re.I)

# Span kinds for a general FIM adapter: whole lines and line windows (the cursor at a line start, as in
# HumanEval's single- and multi-line infilling), tree-sitter nodes, rests of lines and random spans.
FIM_KIND_WEIGHTS = (("line", 0.3), ("lines", 0.14), ("statement", 0.1), ("line-rest", 0.1), ("random", 0.12),
                    ("function-body", 0.06), ("block", 0.08), ("arguments", 0.1))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _norm(line: str) -> str:
    return " ".join(line.strip().split())


def eval_solution_lines(data_dir: Path = DATA) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """Normalized canonical-solution lines (≥ 20 chars) per task, and the 3-line windows, from every set."""
    import gzip

    lines: dict[str, set[str]] = {}
    windows: dict[str, list[str]] = {}

    def add(task: str, code: str, entry: str | None) -> None:
        ls = [_norm(x) for x in code.splitlines() if _norm(x)]
        lines.setdefault(task, set()).update(x for x in ls if len(x) >= 20)
        windows.setdefault(task, []).extend("\n".join(ls[i:i + 3]) for i in range(len(ls) - 2))
        if entry:
            lines[task].add(f"def {entry}(")

    for p in sorted(data_dir.rglob("*.jsonl*")):
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            for row in f:
                try:
                    r = json.loads(row)
                except ValueError:
                    continue
                task = f"{p.parent.name}/{r.get('task_id', '?')}"
                code = (r.get("canonical_solution") or r.get("code") or "")
                add(task, code, r.get("entry_point"))
    return lines, windows


def overlap_report(files: dict[str, str], data_dir: Path = DATA) -> tuple[dict, set[str]]:
    """(report, files to drop): tasks whose solution lines/windows occur in the corpus."""
    lines, windows = eval_solution_lines(data_dir)
    corpus_lines: dict[str, set[str]] = {}
    corpus_windows: dict[str, set[str]] = {}
    for rel, text in files.items():
        ls = [_norm(x) for x in text.splitlines() if _norm(x)]
        corpus_lines[rel] = set(ls) | {m.group(0) for m in re.finditer(r"def \w+\(", text)}
        corpus_windows[rel] = {"\n".join(ls[i:i + 3]) for i in range(len(ls) - 2)}
    all_lines = set().union(*corpus_lines.values()) if corpus_lines else set()
    all_windows = set().union(*corpus_windows.values()) if corpus_windows else set()
    drop: set[str] = set()
    window_hits, entry_and_line = [], []
    total, found = 0, 0
    for task, ls in lines.items():
        body = {x for x in ls if not x.startswith("def ")}
        total += len(body)
        found += len(body & all_lines)
        wins = set(windows.get(task, ())) & all_windows
        if wins:
            window_hits.append(task)
            drop.update(rel for rel, w in corpus_windows.items() if w & wins)
        entries = {x for x in ls if x.startswith("def ")}
        if entries and entries & all_lines and body & all_lines:
            entry_and_line.append(task)
    report = {"tasks": len(lines), "solution_lines": total, "solution_lines_found_in_corpus": found,
              "share_found": round(found / total, 4) if total else 0.0,
              "tasks_sharing_a_3_line_window": sorted(window_hits),
              "tasks_with_entry_point_and_a_solution_line": sorted(entry_and_line),
              "files_dropped": sorted(drop)}
    return report, drop


def stdlib_files(limit: int, seed: int) -> list[tuple[Path, str]]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(lib.rglob("*.py")):
        rel = p.relative_to(lib)
        if any(part in STDLIB_SKIP or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        out.append((p, "Lib/" + rel.as_posix()))
    random.Random(seed).shuffle(out)
    return sorted(out[:limit], key=lambda x: x[1]) if limit else sorted(out, key=lambda x: x[1])


def package_files(name: str) -> tuple[list[tuple[Path, str]], str, str]:
    from importlib import metadata

    dist = metadata.distribution(name)
    meta = dist.metadata
    lic = " ".join(filter(None, [meta.get("License-Expression"), meta.get("License"),
                                 *[c for c in meta.get_all("Classifier") or [] if c.startswith("License")]]))
    if not PERMISSIVE.search(lic or ""):
        raise SystemExit(f"{name}: licence {lic!r} is not MIT/BSD/Apache/PSF/ISC; not used")
    files = []
    lic_text = ""
    for f in dist.files or []:
        p = Path(dist.locate_file(f))
        if f.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")) and p.is_file():
            lic_text += p.read_text(errors="replace")
        if f.suffix == ".py" and p.is_file() and "tests" not in f.parts and "test" not in f.parts:
            files.append((p, f"{name}/{f.as_posix()}"))
    return files, lic[:200], lic_text


def build_corpus(out: Path, args) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    chosen: list[tuple[Path, str, str]] = []
    licences = {}
    lib = Path(sysconfig.get_paths()["stdlib"])
    for p, rel in stdlib_files(args.files, args.seed):
        chosen.append((p, rel, "PSF-2.0"))
    lic_path = lib / "LICENSE.txt"
    licences["cpython-stdlib"] = {"licence": "PSF-2.0", "version": platform.python_version(),
                                  "text_sha256": _sha(lic_path.read_bytes()) if lic_path.exists() else None}
    if lic_path.exists():
        shutil.copy2(lic_path, out / "LICENSE-cpython.txt")
    for name in args.package:
        files, lic, text = package_files(name)
        from importlib import metadata

        licences[name] = {"licence": lic, "version": metadata.version(name)}
        (out / f"LICENSE-{name}.txt").write_text(text or lic)
        chosen += [(p, rel, lic) for p, rel in files]
    texts = {}
    for p, rel, _ in chosen:
        try:
            texts[rel] = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    overlap, drop = overlap_report(texts)
    listing = []
    for p, rel, lic in chosen:
        if rel not in texts or rel in drop:
            continue
        dest = out / "src" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(texts[rel], encoding="utf-8")
        listing.append({"path": rel, "sha256": _sha(texts[rel].encode()), "licence": lic})
    data_hash = _sha("\n".join(f"{x['path']}\0{x['sha256']}" for x in listing).encode())
    (out / "FILES.json").write_text(json.dumps(listing, indent=0))
    return {"files": len(listing), "lines": sum(texts[x["path"]].count("\n") for x in listing),
            "licences": licences, "data_hash": data_hash, "overlap_with_eval_sets": overlap, "listing": listing}


def save_half(src: Path, dest: Path) -> None:
    """The adapter's weights in float16 (half the size; the run-time export computes in float64 and casts to the
    graph's type, peft upcasts to the model's), written atomically."""
    from safetensors.torch import load_file, save_file

    import torch

    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(src)).items()}
    tmp = dest.with_name(dest.name + ".part")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, dest)


def train(args) -> int:
    from transformers import AutoTokenizer

    from intarsia.model.build import BuildOptions, build, check_fim
    from intarsia.model.shipped import adapter_dir_for, write_manifest
    from intarsia.server.core.prompt import PromptBudget
    from intarsia.training.examples import RenderOptions
    from intarsia.training.run import TrainOptions, prepare, resolve_base
    from intarsia.training.trainer import TrainConfig, resolve_device, train_lora

    t0 = time.perf_counter()
    work = Path(args.work).expanduser()
    corpus_dir = work / "corpus"
    corpus = build_corpus(corpus_dir, args)
    print(f"corpus: {corpus['files']} files, {corpus['lines']} lines; eval overlap: "
          f"{corpus['overlap_with_eval_sets']['share_found']:.2%} of solution lines, "
          f"{len(corpus['overlap_with_eval_sets']['files_dropped'])} file(s) dropped", file=sys.stderr)
    device = resolve_device(args.device)
    src, hf_dir = resolve_base(args.model)
    built = build(src, BuildOptions())
    fmt = check_fim(built.path, built.manifest.get("fim_format"), src.name)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    config = TrainConfig(rank=args.rank, alpha=2 * args.rank, dropout=0.05, learning_rate=args.lr,
                         max_steps=args.max_steps, batch_tokens=args.batch_tokens,
                         context_length=args.context_length, warmup_ratio=0.05, seed=args.seed)
    # The shipped adapter's recorded budget (its manifest's command): short prompts, many examples per CPU hour.
    budget = PromptBudget(prompt=args.prompt_tokens, context=args.context_tokens, suffix=args.suffix_tokens)
    opts = TrainOptions(base=args.model, device=device, held_out=0.0, seed=args.seed,
                        examples_per_lines=args.per_lines, max_examples=args.max_examples,
                        kind_weights=FIM_KIND_WEIGHTS, docstring_share=args.docstring_share,
                        eof_share=args.eof_share,
                        use_acceptance_log=False,
                        render=RenderOptions(budget=budget, repo_name="cpython", bare_share=args.bare_share,
                                             path_only_share=args.path_share),
                        config=config)
    data = prepare(corpus_dir / "src", opts, fmt=fmt, tokenizer=tokenizer, budget=budget)
    summary = data.summary()
    print(f"{len(data.tokenized)} examples, {summary['tokens']} tokens; kinds {summary['examples_by_kind']}",
          file=sys.stderr)
    init = Path(args.init).resolve() if args.init else None
    previous = None
    if init is not None:
        from intarsia.model.shipped import MANIFEST, read_manifest

        previous = read_manifest(init) if (init / MANIFEST).is_file() else None
        if previous is not None and "adapter_sha256" in previous:
            previous = {k: previous.get(k) for k in ("adapter_sha256", "command", "seed", "config", "training",
                                                     "render", "kind_weights", "continued_from")}
    key = hashlib.sha256(json.dumps([sys.argv[1:], str(init)]).encode()).hexdigest()[:10]
    run_dir = work / f"run-{key}"
    result = train_lora(hf_dir, data.tokenized, run_dir, config, device=device, init_adapter=init)
    out_dir = Path(args.out) if args.out else adapter_dir_for(src.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(result.adapter_dir / "adapter_config.json", out_dir / "adapter_config.json")
    save_half(result.adapter_dir / "adapter_model.safetensors", out_dir / "adapter_model.safetensors")
    training = result.record()
    manifest = {
        "name": out_dir.name,
        "purpose": "fill-in-the-middle in the served prompt format, stopping with the end token",
        "base": {"model": src.name, "gguf_sha256": getattr(src.spec, "gguf_sha256", None) if src.spec else None,
                 "fim_format": fmt.name},
        "data": {"description": "CPython standard library sample (and --package sources), tree-sitter FIM spans",
                 "data_hash": corpus["data_hash"], "files": corpus["files"], "lines": corpus["lines"],
                 "licences": corpus["licences"], "examples": len(data.tokenized),
                 "examples_by_kind": summary["examples_by_kind"], "tokens": summary["tokens"],
                 "overlap_with_eval_sets": {k: v for k, v in corpus["overlap_with_eval_sets"].items()},
                 "file_list": [f"{x['path']} {x['sha256'][:16]}" for x in corpus["listing"]]},
        "render": {"prompt_tokens": args.prompt_tokens, "context_tokens": args.context_tokens,
                   "suffix_tokens": args.suffix_tokens, "bare_share": args.bare_share,
                   "path_only_share": args.path_share},
        "kind_weights": dict(FIM_KIND_WEIGHTS),
        "eof_share": args.eof_share,
        # A continued run: the adapter it started from (its manifest's figures), so both steps are on record.
        "continued_from": previous if init is not None else None,
        "config": {"rank": config.rank, "alpha": config.alpha, "dropout": config.dropout,
                   "target_modules": list(config.target_modules), "learning_rate": config.learning_rate,
                   "max_steps": config.max_steps, "batch_tokens": config.batch_tokens,
                   "context_length": config.context_length},
        "training": {k: v for k, v in training.items() if k not in ("adapter_dir",)},
        "command": "python benchmarks/train_fim_adapter.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "device": device},
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "scores": {},
    }
    write_manifest(out_dir, manifest)
    print(json.dumps({k: v for k, v in manifest.items() if k != "data"} | {
        "data": {k: v for k, v in manifest["data"].items() if k != "file_list"}}, indent=1))
    return 0


def record(args) -> int:
    """Put fim_quality.py results (base vs adapted engines) into the manifest's scores."""
    from intarsia.model.shipped import adapter_dir_for, read_manifest, write_manifest

    out_dir = Path(args.out) if args.out else adapter_dir_for(args.model or "qwen2.5-coder-0.5b")
    manifest = read_manifest(out_dir)
    for p in args.results:
        res = json.loads(Path(p).read_text())
        task = res.get("task", Path(p).stem)
        if "_full" in Path(p).stem:
            task += " (full set)"  # kept beside the side-by-side sample
        manifest["scores"][task] = {
            "n": res.get("n"), "seed": res.get("seed"), "max_new_tokens": res.get("max_new_tokens"),
            "command": res.get("command"),
            "engines": {name: e.get("summary", {}) for name, e in res.get("engines", {}).items()}}
    write_manifest(out_dir, manifest)
    print(json.dumps(manifest["scores"], indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", default="qwen2.5-coder-0.5b")
    t.add_argument("--work", default=str(Path.home() / ".cache" / "intarsia" / "fim-adapter"))
    t.add_argument("--out", default=None, help="adapter folder (default: the one the package ships)")
    t.add_argument("--files", type=int, default=400, help="standard-library files sampled (0: all)")
    t.add_argument("--package", action="append", default=[])
    t.add_argument("--device", default="auto")
    t.add_argument("--max-steps", type=int, default=110)
    t.add_argument("--rank", type=int, default=16)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--batch-tokens", type=int, default=2048)
    t.add_argument("--context-length", type=int, default=1024)
    t.add_argument("--prompt-tokens", type=int, default=384)
    t.add_argument("--context-tokens", type=int, default=128)
    t.add_argument("--suffix-tokens", type=int, default=128)
    t.add_argument("--bare-share", type=float, default=0.5)
    t.add_argument("--path-share", type=float, default=0.2)
    t.add_argument("--per-lines", type=int, default=40)
    t.add_argument("--docstring-share", type=float, default=0.15)
    t.add_argument("--max-examples", type=int, default=4000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eof-share", type=float, default=0.0,
                   help="share of examples whose file ends after the definition holding the gap")
    t.add_argument("--init", default=None, help="peft folder to continue (e.g. the shipped adapter)")
    r = sub.add_parser("record")
    r.add_argument("results", nargs="+")
    r.add_argument("--model", default=None)
    r.add_argument("--out", default=None)
    args = ap.parse_args()
    return train(args) if args.cmd == "train" else record(args)


if __name__ == "__main__":
    raise SystemExit(main())
