"""What repository context (BM25 over tree-sitter chunks of the other files) adds to next-line completion.

A real repository (default: the `peft` package installed here, ~250 Python files; --repo for another folder) is
indexed as the server indexes a workspace (`RepoIndex`, `ContextProvider`). Files are held out by a hash of
their path (--held-out share); in each, lines of code inside function bodies are sampled (seeded). For each sample
the line's code is removed (the cursor sits after its indentation, the rest of the file follows) and the real
pipeline (`run_completion`: scope, prompt within the budget, ORT engine, grammar post-processing) completes it
twice: with repository context (--context-tokens) and without (0). Scores: exact match of the suggested line
(stripped) and edit similarity (difflib ratio), and how often context was found.

    python benchmarks/retrieval_gain.py [--repo DIR] [--samples 40] [--prompt-tokens 1024] [--context-tokens 512]

Prints one JSON object on stdout (per-sample rows with --rows).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import random
import re
import statistics
import sys
from pathlib import Path

CODE_LINE = re.compile(r"^( {4,})(?![#@)\]}])(?!(?:else|try|finally|pass|break|continue)\b)\S.{9,}$")


def held_out(rel: str, share: float) -> bool:
    h = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < share


def samples_from(root: Path, files: list[str], n: int, seed: int) -> list[tuple[str, int]]:
    """(file, line index) pairs: lines of code in function bodies, not inside strings or docstrings."""
    import ast

    pool = []
    for rel in files:
        text = (root / rel).read_text(errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.split("\n")
        stmt_lines = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for st in ast.walk(node):
                    if isinstance(st, ast.stmt) and st is not node and st.lineno == st.end_lineno \
                            and not isinstance(st, ast.Expr):
                        stmt_lines.add(st.lineno - 1)
        pool += [(rel, i) for i in sorted(stmt_lines) if CODE_LINE.match(lines[i])]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=None)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--context-tokens", type=int, default=512)
    ap.add_argument("--model", default=None)
    ap.add_argument("--rows", action="store_true")
    ap.add_argument("--context-mode", choices=["file", "region"], default="file",
                    help="repository context chosen once per file (the server's) or per region of lines")
    ap.add_argument("--window-tokens", type=int, default=None,
                    help="cap the current file's part of the prompt (the short cold-start prompt's window)")
    args = ap.parse_args()

    from intarsia.grammars.registry import get_language
    from intarsia.model.build import BuildOptions, build
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.model.ort_engine import OrtEngine
    from intarsia.model.registry import resolve_source
    from intarsia.server.core.context import ContextProvider, RepoIndex
    from intarsia.server.core.files import list_files
    from intarsia.server.core.completion import PipelineOptions, QuickStart, run_completion
    from intarsia.server.core.documents import Snapshot
    from intarsia.server.core.prompt import PromptBudget

    if args.repo is None:
        import peft

        args.repo = Path(peft.__file__).parent
    root = args.repo.resolve()
    files = [f for f in list_files(root) if f.endswith(".py")]
    held = [f for f in files if held_out(f, args.held_out)]
    picks = samples_from(root, held, args.samples, args.seed)
    index = RepoIndex(root)
    index.build()
    provider = ContextProvider(index, per_file=args.context_mode == "file")
    lang = get_language("python")
    built = build(resolve_source(args.model), BuildOptions(), progress=True)
    rows = []
    with OrtEngine(built.path) as engine:
        for k, (rel, i) in enumerate(picks):
            text = (root / rel).read_text(errors="replace")
            lines = text.split("\n")
            target = lines[i]
            indent = target[: len(target) - len(target.lstrip())]
            doc = "\n".join(lines[:i] + [indent] + lines[i + 1:])
            offset = sum(len(x) + 1 for x in lines[:i]) + len(indent)
            row = {"file": rel, "line": i + 1, "target": target.strip()}
            for name, budget in (("with_context", args.context_tokens), ("without_context", 0)):
                snap = Snapshot(uri=(root / rel).as_uri(), version=1, text=doc, offset=offset, language_id="python",
                                language=lang, path=rel, invoked=True, fs_path=str(root / rel))
                opts = PipelineOptions(max_tokens=48, budget=PromptBudget(prompt=args.prompt_tokens, context=budget,
                                                                          suffix=64), repo_name=root.name,
                                       quick=None if args.window_tokens is None else
                                       QuickStart(window_tokens=args.window_tokens, cold_tokens=-1))
                out = run_completion(snap, engine=engine, fim_format=QWEN25_CODER, options=opts,
                                     context=provider if budget else None)
                got = out.text.split("\n", 1)[0].strip()
                row[name] = {"text": got, "exact": got == row["target"],
                             "similarity": round(difflib.SequenceMatcher(None, got, row["target"]).ratio(), 3),
                             "context_files": len(out.context_files), "prompt_tokens": out.prompt_tokens}
            rows.append(row)
            print(f"\r{k + 1}/{len(picks)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def summary(name: str) -> dict:
        r = [x[name] for x in rows]
        return {"exact_match": round(100 * sum(x["exact"] for x in r) / len(r), 1),
                "edit_similarity": round(100 * statistics.mean(x["similarity"] for x in r), 1),
                "with_context_files": round(100 * sum(x["context_files"] > 0 for x in r) / len(r), 1),
                "mean_prompt_tokens": round(statistics.mean(x["prompt_tokens"] for x in r), 1)}

    result = {"repo": str(root), "files": len(files), "held_out_files": len(held), "samples": len(rows),
              "seed": args.seed, "prompt_tokens": args.prompt_tokens, "context_tokens": args.context_tokens,
              "context_mode": args.context_mode, "window_tokens": args.window_tokens,
              "index": index.stats(), "with_context": summary("with_context"),
              "without_context": summary("without_context")}
    if args.rows:
        result["rows"] = rows
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
