"""Speed of syntax-aware post-processing on a ~2,000-line Python file, with the incremental path.

The document is a real standard-library module (`subprocess.py`, cut at a top-level boundary near
2,000 lines). For each sampled cursor position a few of the file's own lines are removed (the gap the
model must fill), the open document is updated with `ParsedDocument.apply_edit` (tree edit + reparse),
and the scope + `postprocess` run on it (one `cursor_context` shared by both, as the server does) with a
realistic raw completion: the removed lines
followed by typical junk (the next line repeated, top-level code, a line cut off mid-expression by the
token limit - passed as `truncated=True` - or nothing). Then the lines are put back (another incremental edit).

Prints one JSON object: p50/p95/max of post-processing (ms), of scope decision, of the incremental
edits, and the share of samples where the removed lines came back exactly.

With `--rounds N` the same samples run N times in one process (a shared machine's speed drifts from
minute to minute): the figures pool every round, and `postprocess_p95_by_round_ms` shows the spread.

    python benchmarks/postprocess_speed.py [--samples 400] [--rounds 3] [--seed 0] [--file PATH]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

from intarsia.grammars import ParsedDocument, cursor_context, get_language, postprocess, scope_for_context

TARGET_LINES = 2000


def load_source(path: str | None) -> tuple[str, str]:
    path = path or subprocess.__file__
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    if len(lines) > TARGET_LINES:
        # Cut just before a definition (at any depth) so the document stays well-formed.
        cut = TARGET_LINES
        while cut > TARGET_LINES // 2:
            if lines[cut].lstrip().startswith(("def ", "class ")):
                try:
                    ast.parse("".join(lines[:cut]))
                    break
                except SyntaxError:
                    pass
            cut -= 1
        lines = lines[:cut]
    return path, "".join(lines)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def summary(values: list[float]) -> dict:
    return {
        "p50": round(percentile(values, 0.50), 3),
        "p95": round(percentile(values, 0.95), 3),
        "max": round(max(values), 3) if values else None,
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="run the samples this many times (figures pool all)")
    ap.add_argument("--file", default=None, help="Python file to use (default: the stdlib subprocess.py)")
    args = ap.parse_args(argv)

    py = get_language("python")
    path, source = load_source(args.file)
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    doc = ParsedDocument(source, py)
    assert not doc.tree.root_node.has_error, "benchmark source must parse cleanly"
    rng = random.Random(args.seed)
    # Gaps are whole statements (1-3 lines; a simple statement or a small compound one), as a model
    # is asked to fill them.
    spans = sorted({
        (node.lineno - 1, node.end_lineno)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.stmt) and 1 <= node.end_lineno - node.lineno + 1 <= 3
        and node.end_lineno < len(lines) - 1
    })
    junk_kinds = ["repeat-next-line", "top-level-code", "cut-mid-expression", "none"]

    post_ms: list[float] = []
    cold_ms: list[float] = []
    scope_ms: list[float] = []
    edit_ms: list[float] = []
    kept = 0
    checks = 0
    by_kind: dict[str, list[float]] = {k: [] for k in junk_kinds}
    picks = [rng.choice(spans) for _ in range(args.samples)]
    round_p95: list[float] = []
    for n in range(args.samples * max(1, args.rounds)):
        if n and n % args.samples == 0:
            round_p95.append(round(percentile(post_ms[-args.samples:], 0.95), 3))
        i, stop = picks[n % args.samples]
        k = stop - i
        middle = "".join(lines[i:i + k])
        start, end = starts[i], starts[i + k]
        t0 = time.perf_counter()
        doc.apply_edit(start, end, "")
        edit_ms.append((time.perf_counter() - t0) * 1e3)
        kind = junk_kinds[n % len(junk_kinds)]
        nxt = lines[i + k] if i + k < len(lines) else ""
        if kind == "repeat-next-line":
            completion = middle + nxt
        elif kind == "top-level-code":
            completion = middle + "\nprint('debug', locals())\n"
        elif kind == "cut-mid-expression":
            completion = middle + nxt[: max(1, len(nxt) * 2 // 3)].rstrip("\n")
        else:
            completion = middle
        text = doc.text
        t0 = time.perf_counter()
        ctx = cursor_context(text, start, py, doc)
        decision = scope_for_context(ctx, invoked=True)
        t1 = time.perf_counter()
        result = postprocess(text, start, completion, language=py, scope=decision.scope, context=ctx,
                             truncated=kind == "cut-mid-expression")
        t2 = time.perf_counter()
        scope_ms.append((t1 - t0) * 1e3)
        post_ms.append((t2 - t1) * 1e3)
        by_kind[kind].append((t2 - t1) * 1e3)
        # Without the scope call before it (no shared cursor analysis): a fresh copy of the text.
        cold_text = (text + " ")[:-1]
        t3 = time.perf_counter()
        postprocess(cold_text, start, completion, language=py, scope=decision.scope, tree=doc,
                    truncated=kind == "cut-mid-expression")
        cold_ms.append((time.perf_counter() - t3) * 1e3)
        checks += result.checks
        kept += result.text == middle
        t0 = time.perf_counter()
        doc.apply_edit(start, start, middle)
        edit_ms.append((time.perf_counter() - t0) * 1e3)
    round_p95.append(round(percentile(post_ms[-args.samples:], 0.95), 3))
    assert doc.text == source, "document drifted from the source after edits"
    total = len(post_ms)

    out = {
        "benchmark": "postprocess_speed",
        "file": os.path.basename(path),
        "lines": len(lines),
        "bytes": len(source.encode("utf-8")),
        "samples": args.samples,
        "rounds": max(1, args.rounds),
        # Server flow: the scope, generation, then postprocess at the same cursor (the cursor
        # analysis built for the scope decision is reused).
        "postprocess_ms": summary(post_ms),
        "postprocess_p95_by_round_ms": round_p95,
        "postprocess_cold_ms": summary(cold_ms),
        "postprocess_by_junk_ms": {k: summary(v) for k, v in by_kind.items()},
        "scope_ms": summary(scope_ms),
        "scope_plus_postprocess_p95_ms": round(percentile([a + b for a, b in zip(scope_ms, post_ms)], 0.95), 3),
        "apply_edit_ms": summary(edit_ms),
        "validity_checks_mean": round(checks / max(1, total), 2),
        "restored_exactly_share": round(kept / max(1, total), 4),
        "target_p95_ms": 2.0,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
