"""Base vs adapted on held-out files, through the serving pipeline, and the promotion gate.

Samples come from held-out files only:
- `next-line`: a one-line statement inside a function; its code is removed and the cursor sits after the line's
  indentation, the rest of the file follows (the editor's "type the next line");
- `fim`: a statement or block of 2-8 lines removed from a function body, cursor where it started.

Each sample is completed by `server.core.completion.run_completion` (scope, prompt within the budget, the same repository
context as the server, the ONNX Runtime engine with the adapter selected per request, the grammar post-processing)
and scored by exact match (whitespace at line ends ignored) and edit similarity (difflib ratio); `shown` is the
share of samples where a syntactically valid suggestion came out, `parses` the share of non-empty suggestions that
parse in place (by construction 100 % of what is shown). Perplexity over the middles of held-out FIM examples comes
from transformers + peft (`adapter_perplexity`).

The gate (`gate`): the candidate is promoted only if its exact match over all samples beats the reference (the
served model: the base, or the currently promoted adapter), or ties it with a higher edit similarity.
"""

from __future__ import annotations

import difflib
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import tree_sitter
from intarsia.grammars.registry import get_language
from intarsia.model.trust import check_hf_folder, check_peft_folder
from intarsia.server.core.completion import PipelineOptions, run_completion
from intarsia.server.core.documents import Snapshot
from intarsia.server.core.prompt import PromptBudget

from .crawl import SourceFile
from .examples import ParsedFile
from .trainer import perplexity

FUNCTION_TYPES = frozenset({"function_definition", "function_declaration", "method_definition", "method_declaration",
                            "function_item", "arrow_function", "function_expression", "constructor_declaration"})


@dataclass(frozen=True)
class EvalSample:
    path: str
    language: str
    kind: str  # next-line | fim
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


def eval_samples(files: Sequence[SourceFile], *, next_line: int = 40, fim: int = 20, seed: int = 0) -> list[EvalSample]:
    """Seeded samples from held-out files (see the module docstring)."""
    lines_pool, fim_pool = [], []
    for f in files:
        lang = get_language(f.language)
        if lang is None:
            continue
        doc = ParsedFile(f, lang)
        for node in doc.captures("statements", "statement"):
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
                lines_pool.append(EvalSample(f.rel, f.language, "next-line", doc.text[:s] + doc.text[e:], s, body))
            elif 2 <= node.end_point[0] - node.start_point[0] + 1 <= 8 and len(body) <= 600:
                fim_pool.append(EvalSample(f.rel, f.language, "fim", doc.text[:s] + doc.text[e:], s, body))
    rng = random.Random(seed)
    rng.shuffle(lines_pool)
    rng.shuffle(fim_pool)
    return lines_pool[:next_line] + fim_pool[:fim]


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip()


@dataclass(frozen=True)
class EvalSettings:
    """How held-out samples are completed: within the budget the server uses on the device the adapter will be
    served on (`PromptBudget.served`), so the gate judges the prompts users get."""

    budget: PromptBudget = PromptBudget.served("cpu")
    max_tokens_line: int = 48
    max_tokens_fim: int = 128


def evaluate(engine, fmt, samples: Sequence[EvalSample], *, adapter: Optional[str], root: Path,
             context=None, settings: EvalSettings = EvalSettings(), repo_name: Optional[str] = None,
             progress: bool = False, label: str = "eval") -> dict:
    """Scores of one model variant (`adapter`: an engine adapter name, or BASE for the base model)."""
    rows = []
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc=label, unit="sample", leave=False)
    for i, s in enumerate(it):
        lang = get_language(s.language)
        snap = Snapshot(uri=f"intarsia-eval:{i}:{s.path}", version=0, text=s.text, offset=s.offset,
                        language_id=s.language, language=lang, path=s.path, invoked=True,
                        fs_path=str(root / s.path))
        opts = PipelineOptions(max_tokens=settings.max_tokens_line if s.kind == "next-line" else settings.max_tokens_fim,
                               multiline="never" if s.kind == "next-line" else "always",
                               budget=settings.budget, repo_name=repo_name, adapter=adapter)
        t0 = time.perf_counter()
        out = run_completion(snap, engine=engine, fim_format=fmt, options=opts, context=context)
        ms = (time.perf_counter() - t0) * 1000
        got = out.text.split("\n", 1)[0] if s.kind == "next-line" else out.text
        exact = _norm(got) == _norm(s.target)
        sim = difflib.SequenceMatcher(None, _norm(got), _norm(s.target)).ratio()
        rows.append({"path": s.path, "kind": s.kind, "target": s.target, "got": got, "exact": exact,
                     "similarity": round(sim, 4), "shown": bool(out.text.strip()), "raw": out.raw,
                     "ms": round(ms, 1), "prompt_tokens": out.prompt_tokens})
    return {"summary": summarize(rows), "rows": rows}


def summarize(rows: Sequence[dict]) -> dict:
    def part(rs):
        if not rs:
            return None
        return {"samples": len(rs),
                "exact_match": round(100 * sum(r["exact"] for r in rs) / len(rs), 1),
                "edit_similarity": round(100 * statistics.mean(r["similarity"] for r in rs), 1),
                "shown": round(100 * sum(r["shown"] for r in rs) / len(rs), 1),
                "mean_ms": round(statistics.mean(r["ms"] for r in rs), 1)}

    return {"all": part(rows), "next-line": part([r for r in rows if r["kind"] == "next-line"]),
            "fim": part([r for r in rows if r["kind"] == "fim"])}


def gate(candidate: dict, reference: dict) -> tuple[bool, str]:
    """(promote?, why) from two `summarize` results."""
    c, r = candidate["all"], reference["all"]
    if c is None or r is None:
        return False, "no evaluation samples"
    if c["exact_match"] > r["exact_match"]:
        return True, f"exact match {c['exact_match']} > {r['exact_match']}"
    if c["exact_match"] == r["exact_match"] and c["edit_similarity"] > r["edit_similarity"]:
        return True, f"exact match tied at {c['exact_match']}, edit similarity {c['edit_similarity']} > " \
                     f"{r['edit_similarity']}"
    return False, f"exact match {c['exact_match']} vs {r['exact_match']}, edit similarity {c['edit_similarity']} " \
                  f"vs {r['edit_similarity']}: not better than the served model"


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


def write_report(report: dict, out_dir: Path, *, chart: bool = True) -> dict[str, Path]:
    """report.json, report.md and (with matplotlib) report.png in `out_dir`; returns {file name: path}."""
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
    lines += ["| model | samples | exact match | edit similarity | shown | next-line EM | FIM EM | perplexity |",
              "|---|---|---|---|---|---|---|---|"]
    ppl = slim.get("perplexity") or {}
    for name, res in (slim.get("scores") or {}).items():
        a, nl, fm = res.get("all") or {}, res.get("next-line") or {}, res.get("fim") or {}
        lines.append(f"| {name} | {a.get('samples', 0)} | {a.get('exact_match', '-')} | {a.get('edit_similarity', '-')} "
                     f"| {a.get('shown', '-')} | {nl.get('exact_match', '-')} | {fm.get('exact_match', '-')} "
                     f"| {ppl.get(name, '-')} |")
    tr = slim.get("training") or {}
    if tr:
        lines += ["", f"Training: {tr.get('steps')} steps, {tr.get('tokens')} tokens in {tr.get('seconds', 0):.0f} s "
                      f"({tr.get('tokens_per_s')} tokens/s) on {tr.get('device')}; loss {tr.get('first_loss')} → "
                      f"{tr.get('last_loss')}."]
    data = slim.get("data") or {}
    if data:
        lines += ["", f"Data: {data.get('train_files')} training files, {data.get('held_out_files')} held out, "
                      f"{data.get('examples')} examples ({data.get('tokens')} tokens); skipped: "
                      f"{json.dumps(data.get('skipped', {}))}."]
    p = out_dir / "report.md"
    p.write_text("\n".join(lines) + "\n")
    files["report.md"] = p
    if chart and slim.get("scores"):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return files
        names = list(slim["scores"])
        metrics = [("exact_match", "exact match"), ("edit_similarity", "edit similarity"), ("shown", "shown")]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        w = 0.8 / len(names)
        for k, name in enumerate(names):
            vals = [(slim["scores"][name].get("all") or {}).get(m, 0) for m, _ in metrics]
            ax.bar([i + k * w for i in range(len(metrics))], vals, w, label=name)
        ax.set_xticks([i + w * (len(names) - 1) / 2 for i in range(len(metrics))], [t for _, t in metrics])
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend()
        ax.set_title("held-out files: base vs adapted")
        fig.tight_layout()
        p = out_dir / "report.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        files["report.png"] = p
    return files


__all__ = ["EvalSample", "EvalSettings", "adapter_perplexity", "eval_samples", "evaluate", "gate", "summarize",
           "write_report"]
