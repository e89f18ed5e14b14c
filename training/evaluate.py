"""The served model vs a candidate adapter on held-out files, through the serving pipeline.

Samples come from held-out files only, from the places users complete (`eval_samples`, `SampleCounts`), each tagged
with its kind:
- `next-line`: a one-line statement inside a function; its code is removed and the cursor sits after the line's
  indentation, the rest of the file follows (the editor's "type the next line");
- `line-rest`: the same kind of line cut after one of its tokens (and the space after it): the cursor is where
  the user stopped typing, the rest of the line is the target;
- `block`: a statement or block of 2-8 lines removed from a function body, cursor where it started;
- `body`: a function's body after its signature and docstring, cut by `find_function_target` as
  `intarsia.generateFunction` (and training's docstring examples) cut it, completed at the body slot within the
  command's budget (`examples.budget_for`: its prompt keeps the long suffix).

Each sample is completed by `server.core.completion.run_completion` (scope, prompt within the served budget, the
same repository context as the server, the ONNX Runtime engine with the adapter selected per request, the grammar
post-processing) and scored by exact match (whitespace at line ends ignored) and edit similarity (difflib ratio);
`shown` is the share of samples where a syntactically valid suggestion came out. Perplexity over the middles of
held-out FIM examples comes from transformers + peft (`adapter_perplexity`).

What makes a few hundred samples affordable on a CPU:
- cached prompts: samples are completed file by file in the order of their offsets, with the server's context
  selection per document, so consecutive prompts share their beginning and the engine reuses its KV cache; token
  counts are memoized across the passes;
- short generations: a sample generates at most its target's length plus a margin (8 tokens and a quarter),
  within the kind's cap: an answer that is right and then stops fits, a longer one could not match anyway;
- cached results (`ResultCache`): a completion is stored under everything that decides it (the prompt, the
  document, the adapter's weights, the built model, the settings and the code of the pipeline), so the served
  model's pass is not repeated while its prompts do not change, and a promoted candidate's rows serve as the
  reference of the next run.

Whether the candidate is better is decided by `training.gate` (a paired bootstrap over these rows).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import tree_sitter
from intarsia.grammars.registry import get_language
from intarsia.model.cache import write_json_atomic
from intarsia.model.errors import IntarsiaError
from intarsia.model.trust import check_hf_folder, check_peft_folder
from intarsia.server.core.completion import PipelineOptions, context_files, prompt_parts, run_completion
from intarsia.server.core.documents import Snapshot
from intarsia.server.core.prompt import PromptBudget

from .crawl import SourceFile
from .examples import ParsedFile, budget_for, docstring_examples
from .trainer import perplexity

FUNCTION_TYPES = frozenset({"function_definition", "function_declaration", "method_definition", "method_declaration",
                            "function_item", "arrow_function", "function_expression", "constructor_declaration"})
SAMPLE_KINDS = ("next-line", "line-rest", "block", "body")
LINE_KINDS = frozenset({"next-line", "line-rest"})
MAX_BLOCK_CHARS = 600
MAX_BODY_CHARS = 800
MAX_BODY_LINES = 15


class EvalError(IntarsiaError):
    """Evaluation settings out of range."""


@dataclass(frozen=True)
class SampleCounts:
    """Held-out samples per kind (see the module docstring); 200 by default, the most where users complete most."""

    next_line: int = 80
    line_rest: int = 60
    block: int = 40
    body: int = 20

    def __post_init__(self):
        for kind, n in self.by_kind().items():
            if not isinstance(n, int) or n < 0:
                raise EvalError(f"the number of {kind} samples must be a whole number ≥ 0, not {n!r}")

    def by_kind(self) -> dict[str, int]:
        return {"next-line": self.next_line, "line-rest": self.line_rest, "block": self.block, "body": self.body}

    @property
    def total(self) -> int:
        return sum(self.by_kind().values())


@dataclass(frozen=True)
class EvalSample:
    path: str
    language: str
    kind: str  # SAMPLE_KINDS
    text: str  # the document without the gap
    offset: int
    target: str


def _in_function(node: tree_sitter.Node) -> bool:
    p = node.parent
    while p is not None:
        if p.type in FUNCTION_TYPES:
            return True
        p = p.parent
    return False


def _leaf_ends(node: tree_sitter.Node) -> list[int]:
    """Byte offsets where the leaves (tokens) under `node` end, in order."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if n.child_count == 0:
            out.append(n.end_byte)
        else:
            stack.extend(reversed(n.children))
    return out


def _line_rest(doc: ParsedFile, node: tree_sitter.Node, s: int, e: int, rng: random.Random) -> Optional[EvalSample]:
    """The line of `node` (s..e, alone on its line) cut after one of its tokens, the space after it included."""
    cuts = []
    for b in _leaf_ends(node):
        c = doc.char(b)
        if c < s or c >= e:
            continue
        if doc.text[c:c + 1] == " ":
            c += 1
        if len(doc.text[c:e].strip()) >= 3:
            cuts.append(c)
    if not cuts:
        return None
    c = rng.choice(sorted(set(cuts)))
    return EvalSample(doc.file.rel, doc.file.language, "line-rest", doc.text[:c] + doc.text[e:], c, doc.text[c:e])


def file_samples(f: SourceFile, *, seed: int = 0) -> dict[str, list[EvalSample]]:
    """Every sample of each kind one held-out file offers (before the draw), in file order."""
    pools: dict[str, list[EvalSample]] = {k: [] for k in SAMPLE_KINDS}
    lang = get_language(f.language)
    if lang is None:
        return pools
    doc = ParsedFile(f, lang)
    rng = random.Random(f"{seed}:{f.rel}")
    # (in file order: a query's captures do not come in a fixed order, and the draws below follow this one)
    for node in sorted(doc.captures("statements", "statement"), key=lambda n: (n.start_byte, n.end_byte)):
        if node.has_error or not _in_function(node):
            continue
        s, e = doc.span(node)
        body = doc.text[s:e]
        if node.start_point[0] == node.end_point[0]:
            ls = doc.text.rfind("\n", 0, s) + 1
            le = doc.text.find("\n", e)
            le = len(doc.text) if le < 0 else le
            if doc.text[ls:s].strip() or doc.text[e:le].strip() or len(body) < 10:
                continue  # not alone on its line
            if node.type == "expression_statement" and body.lstrip()[:1] in "\"'":
                continue  # a docstring
            pools["next-line"].append(EvalSample(f.rel, f.language, "next-line", doc.text[:s] + doc.text[e:], s,
                                                 body))
            rest = _line_rest(doc, node, s, e, rng)
            if rest is not None:
                pools["line-rest"].append(rest)
        elif 2 <= node.end_point[0] - node.start_point[0] + 1 <= 8 and len(body) <= MAX_BLOCK_CHARS:
            pools["block"].append(EvalSample(f.rel, f.language, "block", doc.text[:s] + doc.text[e:], s, body))
    for ex in sorted(docstring_examples(doc), key=lambda e: len(e.prefix)):
        if len(ex.middle) <= MAX_BODY_CHARS and ex.middle.count("\n") < MAX_BODY_LINES:
            pools["body"].append(EvalSample(f.rel, f.language, "body", ex.prefix + ex.suffix, len(ex.prefix),
                                            ex.middle))
    return pools


def eval_samples(files: Sequence[SourceFile], counts: SampleCounts = SampleCounts(), *,
                 seed: int = 0) -> list[EvalSample]:
    """Seeded samples from held-out files: up to `counts` of each kind, grouped by kind (SAMPLE_KINDS order),
    each kind in the order of its draw (so `take` keeps a fair share of each)."""
    pools: dict[str, list[EvalSample]] = {k: [] for k in SAMPLE_KINDS}
    for f in files:
        for kind, got in file_samples(f, seed=seed).items():
            pools[kind] += got
    out = []
    for kind, n in counts.by_kind().items():
        pool = pools[kind]
        random.Random(f"{seed}:{kind}").shuffle(pool)
        out += pool[:n]
    return out


def take(samples: Sequence[EvalSample], n: int) -> list[EvalSample]:
    """`n` of `samples` (eval_samples' order), each kind keeping its share: the first of each kind's draw."""
    if n >= len(samples):
        return list(samples)
    by_kind: dict[str, list[EvalSample]] = {}
    for s in samples:
        by_kind.setdefault(s.kind, []).append(s)
    total = len(samples)
    quota = {k: (len(v) * n) // total for k, v in by_kind.items()}
    # what rounding down left over goes to the kinds with the largest remainders
    left = n - sum(quota.values())
    for k in sorted(by_kind, key=lambda k: -((len(by_kind[k]) * n) % total))[:left]:
        quota[k] += 1
    keep = {id(s) for k, v in by_kind.items() for s in v[:quota[k]]}
    return [s for s in samples if id(s) in keep]


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip()


@dataclass(frozen=True)
class EvalSettings:
    """How held-out samples are completed: within the budget the server uses on the device the adapter will be
    served on (`PromptBudget.served`), so the gate judges the prompts users get. `max_tokens_*`: each kind's cap;
    `short`: a sample generates at most its target's length plus a margin (see the module docstring). `served`:
    `budget` is the server's, and a body gets the command's long suffix (`examples.budget_for`); False: every kind
    gets `budget` as it is (a study of another budget)."""

    budget: PromptBudget = PromptBudget.served("cpu")
    max_tokens_line: int = 48
    max_tokens_block: int = 128
    max_tokens_body: int = 256
    short: bool = True
    served: bool = True

    def budget_for(self, kind: str) -> PromptBudget:
        return budget_for(kind, self.budget) if self.served else self.budget

    def cap(self, kind: str) -> int:
        if kind in LINE_KINDS:
            return self.max_tokens_line
        return self.max_tokens_body if kind == "body" else self.max_tokens_block


def generation_limit(target_tokens: int, cap: int, short: bool = True) -> int:
    """New tokens a sample may generate: its target's length, 8 more and a quarter (the end token, a slightly
    different answer), within `cap`."""
    return min(cap, target_tokens + 8 + target_tokens // 4) if short else cap


class _MemoCount:
    """The engine, its token counts memoized: a sample's prompt is built by every pass (and once more for the
    result cache's key); the tokenizer is the costly part of building it."""

    def __init__(self, engine):
        self._engine = engine
        self._counts: dict[str, int] = {}

    def count_tokens(self, text: str) -> int:
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = self._engine.count_tokens(text)
            if len(self._counts) > 50_000:
                self._counts.clear()
        return n

    def __getattr__(self, name):
        return getattr(self._engine, name)


def pipeline_fingerprint() -> str:
    """A digest of the code that decides a completion (grammars, the completion core, the model layer, the versions
    of ONNX Runtime and tree-sitter): cached results are only reused by the same code."""
    import intarsia.grammars
    import intarsia.model
    import intarsia.server.core

    from importlib import metadata

    h = hashlib.sha256()
    for dist in ("onnxruntime", "onnxruntime-genai", "onnxruntime-gpu", "onnxruntime-genai-cuda", "tree-sitter"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            pass
    for pkg in (intarsia.grammars, intarsia.server.core, intarsia.model):
        for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


class ResultCache:
    """Completed held-out samples by everything that decides them (see the module docstring), in a JSON file
    (None: in memory only). The newest `limit` entries are kept."""

    def __init__(self, path: Optional[Path] = None, *, limit: int = 20_000):
        self.path = Path(path) if path is not None else None
        self.limit = limit
        self._rows: dict[str, dict] = {}
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict):
                    self._rows = {k: v for k, v in data.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                self._rows = {}
        self.hits = 0

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def get(self, key: str) -> Optional[dict]:
        row = self._rows.get(key)
        if row is not None:
            self.hits += 1
        return row

    def put(self, key: str, row: dict) -> None:
        self._rows.pop(key, None)
        self._rows[key] = row
        while len(self._rows) > self.limit:
            self._rows.pop(next(iter(self._rows)))

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self._rows)


def evaluate(engine, fmt, samples: Sequence[EvalSample], *, adapter: Optional[str], root: Path,
             context=None, settings: EvalSettings = EvalSettings(), repo_name: Optional[str] = None,
             progress: bool = False, label: str = "eval", cache: Optional[ResultCache] = None,
             cache_id: Optional[str] = None) -> dict:
    """Scores of one model variant (`adapter`: an engine adapter name, or BASE for the base model). Rows are in
    the order of `samples` (they pair up across variants). With `cache` and `cache_id` (the adapter's weights and
    the built model, e.g. "trained:<sha256>@<build key>"), stored completions are reused and new ones stored."""
    rows: list[Optional[dict]] = [None] * len(samples)
    counted = _MemoCount(engine)
    order = sorted(range(len(samples)), key=lambda i: (samples[i].path, samples[i].offset, samples[i].kind, i))
    it = order
    if progress:
        from tqdm import tqdm

        it = tqdm(order, desc=label, unit="sample", leave=False)
    fingerprint = pipeline_fingerprint() if cache is not None and cache_id else ""
    for i in it:
        s = samples[i]
        lang = get_language(s.language)
        # One document per file (the server's context selection per document, the KV cache shared along it).
        snap = Snapshot(uri=f"intarsia-eval:{s.path}", version=0, text=s.text, offset=s.offset,
                        language_id=s.language, language=lang, path=s.path, invoked=True,
                        fs_path=str(root / s.path))
        line = s.kind in LINE_KINDS
        opts = PipelineOptions(max_tokens=generation_limit(counted.count_tokens(s.target), settings.cap(s.kind),
                                                           settings.short),
                               multiline="never" if line else "always",
                               budget=settings.budget_for(s.kind), repo_name=repo_name, adapter=adapter)
        key = None
        if cache is not None and cache_id:
            files = context_files(snap, counted, opts, context)
            prompt = prompt_parts(snap, counted, fmt, opts, files).prompt
            key = cache.key(cache_id, fingerprint, hashlib.sha256(prompt.encode()).hexdigest(),
                            hashlib.sha256(s.text.encode()).hexdigest(), s.offset, s.kind, s.target,
                            opts.max_tokens, opts.multiline)
            hit = cache.get(key)
            if hit is not None:
                rows[i] = _score(s, hit["text"], hit.get("raw", ""), hit.get("ms", 0.0), hit.get("prompt_tokens", 0),
                                 cached=True)
                continue
        t0 = time.perf_counter()
        out = run_completion(snap, engine=counted, fim_format=fmt, options=opts, context=context)
        ms = (time.perf_counter() - t0) * 1000
        rows[i] = _score(s, out.text, out.raw, ms, out.prompt_tokens, cached=False)
        if key is not None:
            cache.put(key, {"text": out.text, "raw": out.raw, "ms": round(ms, 1),
                            "prompt_tokens": out.prompt_tokens})
    if cache is not None:
        cache.save()
    done = [r for r in rows if r is not None]
    return {"summary": summarize(done), "rows": done}


def _score(s: EvalSample, text: str, raw: str, ms: float, prompt_tokens: int, *, cached: bool) -> dict:
    got = text.split("\n", 1)[0] if s.kind in LINE_KINDS else text
    sim = difflib.SequenceMatcher(None, _norm(got), _norm(s.target)).ratio()
    return {"path": s.path, "kind": s.kind, "offset": s.offset, "target": s.target, "got": got,
            "exact": _norm(got) == _norm(s.target), "similarity": round(sim, 4), "shown": bool(text.strip()),
            "raw": raw, "ms": round(ms, 1), "prompt_tokens": prompt_tokens, "cached": cached}


def seconds_per_sample(rows: Sequence[dict]) -> Optional[float]:
    """Mean seconds one pass spent per sample (cached rows count with the time they took when computed)."""
    ms = [r["ms"] for r in rows if r.get("ms")]
    return statistics.mean(ms) / 1000 if ms else None


def summarize(rows: Sequence[dict]) -> dict:
    def part(rs):
        if not rs:
            return None
        return {"samples": len(rs),
                "exact_match": round(100 * sum(r["exact"] for r in rs) / len(rs), 1),
                "edit_similarity": round(100 * statistics.mean(r["similarity"] for r in rs), 1),
                "shown": round(100 * sum(r["shown"] for r in rs) / len(rs), 1),
                "mean_ms": round(statistics.mean(r["ms"] for r in rs), 1)}

    out = {"all": part(rows)}
    for kind in SAMPLE_KINDS:
        got = part([r for r in rows if r["kind"] == kind])
        if got is not None:
            out[kind] = got
    return out


def adapter_perplexity(hf_dir: Path, adapter_dir: Optional[Path], examples, *, device: str = "cpu",
                       limit: int = 16, baseline: bool = True) -> dict:
    """Perplexity over held-out FIM middles: {"base": …, "adapted": …} (transformers + peft)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_hf_folder(hf_dir)  # no auto_map code, no pickle-only weights (model.trust)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, trust_remote_code=False,
                                                 use_safetensors=True).to(device)
    out = {}
    if baseline:
        out["base"] = perplexity(model, examples, device=device, limit=limit)
    if adapter_dir is not None:
        from peft import PeftModel

        check_peft_folder(adapter_dir)
        model = PeftModel.from_pretrained(model, str(adapter_dir)).to(device)
        out["adapted"] = perplexity(model, examples, device=device, limit=limit)
    del model
    return {k: (round(v, 3) if v is not None else None) for k, v in out.items()}


def _gate_lines(gate: dict) -> list[str]:
    pct = f"{100 * gate.get('confidence', 0.9):g} %"
    lines = [f"Candidate vs served model, paired by sample (gain in points, [{pct} bootstrap interval]):", "",
             "| kind | samples | served EM | candidate EM | EM gain | ES gain | won / lost |",
             "|---|---|---|---|---|---|---|"]
    parts = [("all", gate.get("overall"))] + list((gate.get("by_kind") or {}).items())
    for kind, c in parts:
        if not c:
            continue
        em, es = c["exact_gain"], c["similarity_gain"]
        lines.append(f"| {kind} | {c['samples']} | {c['exact_reference']:.1f} | {c['exact_candidate']:.1f} | "
                     f"{em['mean']:+.1f} [{em['low']:+.1f}, {em['high']:+.1f}] | "
                     f"{es['mean']:+.1f} [{es['low']:+.1f}, {es['high']:+.1f}] | {c['wins']} / {c['losses']} |")
    return lines + [""]


def write_report(report: dict, out_dir: Path, *, chart: bool = True) -> dict[str, Path]:
    """report.json, report.md and (with matplotlib) report.png in `out_dir`; returns {file name: path}. The gate's
    intervals (report["gate"], `training.gate.Decision.to_json`) are shown per kind of sample."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    slim = {k: v for k, v in report.items() if k != "rows"}
    p = out_dir / "report.json"
    p.write_text(json.dumps(report, indent=1, default=str) + "\n")
    files["report.json"] = p
    lines = [f"# Training report: {report.get('repo', '')}", ""]
    if report.get("decision"):
        d = report["decision"]
        lines += [f"**{'Promoted' if d['promoted'] else 'Not promoted'}**: {d['why']}", ""]
    gate = slim.get("gate") or {}
    if gate.get("overall"):
        lines += _gate_lines(gate)
    scores = slim.get("scores") or {}
    kinds = [k for k in SAMPLE_KINDS if any(k in (res or {}) for res in scores.values())]
    lines += ["| model | samples | exact match | edit similarity | shown | " +
              " | ".join(f"{k} EM" for k in kinds) + " | perplexity |",
              "|---|---|---|---|---|" + "---|" * len(kinds) + "---|"]
    ppl = slim.get("perplexity") or {}
    for name, res in scores.items():
        a = res.get("all") or {}
        per = " | ".join(str((res.get(k) or {}).get("exact_match", "-")) for k in kinds)
        lines.append(f"| {name} | {a.get('samples', 0)} | {a.get('exact_match', '-')} | "
                     f"{a.get('edit_similarity', '-')} | {a.get('shown', '-')} | {per} | {ppl.get(name, '-')} |")
    tr = slim.get("training") or {}
    if tr:
        stop = f", stopped early: {tr['stopped']}" if tr.get("stopped") else ""
        lines += ["", f"Training: {tr.get('steps')} of {tr.get('planned_steps') or tr.get('steps')} steps{stop}, "
                      f"{tr.get('tokens')} tokens in {tr.get('seconds', 0):.0f} s ({tr.get('tokens_per_s')} tokens/s) "
                      f"on {tr.get('device')}; loss {tr.get('first_loss')} → {tr.get('last_loss')}."]
    plan = slim.get("plan") or {}
    if plan:
        minutes = lambda s: "none" if s is None else f"{s / 60:.1f} min"  # noqa: E731
        lines += ["", f"Time: budget {minutes(plan.get('budget_s'))}, planned {minutes(plan.get('total_s'))} "
                      f"({plan.get('steps')} steps at {plan.get('tokens_per_s')} tokens/s), took "
                      f"{minutes(slim.get('seconds'))}."]
    data = slim.get("data") or {}
    if data:
        lines += ["", f"Data: {data.get('train_files')} training files, {data.get('held_out_files')} held out, "
                      f"{data.get('examples')} examples ({data.get('tokens')} tokens); skipped: "
                      f"{json.dumps(data.get('skipped', {}))}."]
    p = out_dir / "report.md"
    p.write_text("\n".join(lines) + "\n")
    files["report.md"] = p
    if chart and scores:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return files
        with_gate = bool(gate.get("overall"))
        fig, axes = plt.subplots(1, 2 if with_gate else 1, figsize=(12 if with_gate else 7, 3.8))
        ax = axes[0] if with_gate else axes
        names = list(scores)
        metrics = [("exact_match", "exact match"), ("edit_similarity", "edit similarity"), ("shown", "shown")]
        w = 0.8 / len(names)
        for k, name in enumerate(names):
            vals = [(scores[name].get("all") or {}).get(m, 0) for m, _ in metrics]
            ax.bar([i + k * w for i in range(len(metrics))], vals, w, label=name)
        ax.set_xticks([i + w * (len(names) - 1) / 2 for i in range(len(metrics))], [t for _, t in metrics])
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend()
        ax.set_title("held-out samples")
        if with_gate:
            ax = axes[1]
            parts = [("all", gate["overall"])] + list((gate.get("by_kind") or {}).items())
            for j, (metric, label, dx) in enumerate((("exact_gain", "exact match", -0.15),
                                                     ("similarity_gain", "edit similarity", 0.15))):
                xs = [i + dx for i in range(len(parts))]
                mid = [c[metric]["mean"] for _, c in parts]
                lo = [c[metric]["mean"] - c[metric]["low"] for _, c in parts]
                hi = [c[metric]["high"] - c[metric]["mean"] for _, c in parts]
                ax.errorbar(xs, mid, yerr=[lo, hi], fmt="o", capsize=4, label=label)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xticks(range(len(parts)), [f"{k}\n(n={c['samples']})" for k, c in parts])
            ax.set_ylabel("gain, points")
            ax.legend()
            ax.set_title(f"candidate - served: {100 * gate.get('confidence', 0.9):g} % intervals")
        fig.tight_layout()
        p = out_dir / "report.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        files["report.png"] = p
    return files


__all__ = ["EvalSample", "EvalSettings", "ResultCache", "SAMPLE_KINDS", "SampleCounts", "adapter_perplexity",
           "eval_samples", "evaluate", "file_samples", "generation_limit", "pipeline_fingerprint",
           "seconds_per_sample", "summarize", "take", "write_report"]
