"""`intarsia train REPO` and `intarsia eval REPO`: crawl → examples → LoRA → evaluate → gate → store → promote.

The model store (`intarsia.model.trained.AdapterStore`) keeps one versioned folder per trained adapter and a
pointer to the promoted one; the language server serves the promoted adapter of its workspace at run time
(ONNX Runtime adapters: never merged) and swaps to a newly promoted one between two requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from intarsia.model import shipped as shipped_adapters
from intarsia.model.build import BuildOptions, build, check_fim, hf_folder_for, resolve_gguf
from intarsia.model.engine import BASE_ADAPTER
from intarsia.model.errors import IntarsiaError
from intarsia.model.factory import FIM_ADAPTER, EngineSpec, open_engine
from intarsia.model.fim import FimFormat
from intarsia.model.lora import export_adapter
from intarsia.model.registry import resolve_source
from intarsia.model.trained import AdapterStore, onnx_adapter_for
from intarsia.server.core.acceptance import read_events, workspace_log_path
from intarsia.server.core.prompt import PromptBudget
from tqdm import tqdm

from .crawl import CrawlResult, crawl, recent_files
from .evaluate import EvalSettings, adapter_perplexity, eval_samples, evaluate, gate, write_report
from .examples import (
    Example,
    RenderOptions,
    accepted_examples,
    at_end_of_file,
    file_examples,
    make_context,
    render_example,
    render_mode,
    split_files,
    unit_draw,
)
from .trainer import Tokenized, TrainConfig, TrainError, check_init_adapter, resolve_device, tokenize, train_lora

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    base: Optional[str] = None
    device: str = "auto"
    held_out: float = 0.1
    recent_commits: int = 0
    seed: int = 0
    examples_per_lines: int = 12
    max_examples: int = 0  # 0: all
    # Span kinds and their shares ((kind, weight) pairs; None: examples.KIND_WEIGHTS) and the share of
    # docstring → body examples per file.
    kind_weights: Optional[tuple[tuple[str, float], ...]] = None
    docstring_share: float = 0.25
    # Share of examples whose file is cut after the top-level definition holding the gap (examples.at_end_of_file)
    eof_share: float = 0.0
    eval_next_line: int = 40
    eval_fim: int = 20
    perplexity_examples: int = 16
    render: RenderOptions = RenderOptions()
    config: TrainConfig = TrainConfig()
    promote: bool = True
    use_acceptance_log: bool = True
    progress: bool = True
    # Start from the base model's shipped fill-in-the-middle adapter (model.shipped) when it has one: the
    # repository adapter continues it (same rank and targets) and replaces it when served.
    from_fim_adapter: bool = True


@dataclass
class PreparedData:
    crawl: CrawlResult
    train_files: list
    held_files: list
    examples: list[Example]
    held_examples: list[Example]
    accepted: int = 0
    tokenized: list[Tokenized] = field(default_factory=list)
    held_tokenized: list[Tokenized] = field(default_factory=list)

    def summary(self) -> dict:
        return {"files": len(self.crawl.files), "train_files": len(self.train_files),
                "held_out_files": len(self.held_files), "examples": len(self.examples),
                "examples_by_kind": dict(Counter(e.kind for e in self.examples).most_common()),
                "accepted_examples": self.accepted, "masked_secret_lines": self.crawl.masked_lines,
                "tokens": sum(len(t.ids) for t in self.tokenized) if self.tokenized else None,
                "skipped": self.crawl.skip_counts(), "data_hash": self.crawl.data_hash()}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_base(base: Optional[str], *, progress: bool = True):
    """(source, hf_dir) of the base model: the Hugging Face folder the LoRA is trained on."""
    src = resolve_source(base)
    if src.kind == "hf":
        return src, src.path
    if src.kind in ("registry", "gguf"):
        return src, hf_folder_for(src, resolve_gguf(src, progress=progress), progress=progress)
    raise IntarsiaError(f"cannot train on {src.name}: training needs a GGUF, a registry model or a Hugging Face "
                        "folder (a built ONNX folder has no trainable weights)")


def served_budget(options: TrainOptions, device: str) -> PromptBudget:
    """The prompt budget examples are rendered and candidates judged with: the server's on `device` (the device the
    adapter is trained for and served on), unless `options.render.budget` overrides it."""
    return options.render.budget or PromptBudget.served("cuda" if device == "cuda" else "cpu")


def prepare(repo: Path, options: TrainOptions, *, fmt: Optional[FimFormat] = None, tokenizer=None,
            budget: PromptBudget = PromptBudget.served("cpu")) -> PreparedData:
    """Crawl, split, cut examples; with `tokenizer` and `fmt`, render (within `budget`) and tokenize them too."""
    repo = Path(repo).expanduser().resolve() if Path(repo).expanduser().exists() else Path(repo)
    result = crawl(repo, progress=options.progress)
    recent = recent_files(result.root, options.recent_commits)
    train_files, held_files = split_files(result.files, held_out=options.held_out, seed=options.seed, recent=recent)
    if not train_files:
        raise IntarsiaError(f"{repo}: every supported file is held out; nothing is left to train on")
    weights = dict(options.kind_weights) if options.kind_weights is not None else None
    examples = [e for f in train_files for e in file_examples(f, seed=options.seed,
                                                               per_lines=options.examples_per_lines,
                                                               weights=weights,
                                                               docstring_share=options.docstring_share)]
    if options.eof_share > 0:
        examples = [at_end_of_file(e) if unit_draw(options.seed, "eof:" + e.key()) < options.eof_share else e
                    for e in examples]
    accepted = []
    if options.use_acceptance_log:
        events = read_events([workspace_log_path(str(result.root))])
        accepted = accepted_examples(train_files, events)
        examples += accepted
    if options.max_examples and len(examples) > options.max_examples:
        rng = random.Random(options.seed)
        examples = rng.sample(examples, options.max_examples)
    held_examples = [e for f in held_files for e in file_examples(f, seed=options.seed + 1,
                                                                 per_lines=options.examples_per_lines,
                                                                 max_per_file=8)]
    data = PreparedData(result, train_files, held_files, examples, held_examples, len(accepted))
    if tokenizer is not None and fmt is not None:
        data.tokenized = _render_all(data.examples, train_files, result.root, fmt, tokenizer, options, budget,
                                     "render")
        data.held_tokenized = _render_all(data.held_examples[: options.perplexity_examples * 2], train_files,
                                          result.root, fmt, tokenizer, options, budget, "render held-out")
    return data


def _render_all(examples, context_files, root: Path, fmt: FimFormat, tokenizer, options: TrainOptions,
                budget: PromptBudget, desc: str) -> list[Tokenized]:
    """Each example's served prompt + middle + end token. The prompt is the server's within `budget`, except that
    a training sequence holds at most `config.context_length` tokens: a longer prompt loses the start of its
    prefix (the context and the suffix are kept)."""
    eos = tokenizer.convert_tokens_to_ids(fmt.end_tokens[0])
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    context = make_context(root, context_files) if budget.context > 0 else None
    name = options.render.repo_name or root.name
    limit = options.config.context_length
    out = []
    it = examples
    if options.progress:
        it = tqdm(examples, desc=desc, unit="example", leave=False)
    for k, ex in enumerate(it):
        middle_tokens = count(ex.middle) + 1
        if middle_tokens > limit // 2:
            continue
        fitted = replace(budget, prompt=min(budget.prompt, limit - middle_tokens))
        mode = render_mode(options.render, ex, options.seed)
        prompt = render_example(ex, fmt, count, fitted, context, root, uid=str(k), mode=mode, repo_name=name)
        t = tokenize(tokenizer, prompt, ex.middle, eos)
        if len(t.ids) <= limit:
            out.append(t)
    return out


def _run_key(data: PreparedData, src_key: str, options: TrainOptions, init: str = "") -> str:
    blob = json.dumps({"data": data.crawl.data_hash(), "base": src_key, "init": init,
                       "config": asdict(options.config),
                       "render": asdict(options.render), "seed": options.seed, "held_out": options.held_out,
                       "examples": len(data.examples), "tokens": sum(len(t.ids) for t in data.tokenized)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dry_run(repo: Path, options: TrainOptions) -> dict:
    """What would be trained on: files kept and skipped (with reasons), the split, example counts."""
    data = prepare(repo, options)
    return {"repo": str(data.crawl.root), **data.summary(),
            "train": [f.rel for f in data.train_files], "held_out": [f.rel for f in data.held_files],
            "skipped_files": [{"path": p, "reason": r} for p, r in data.crawl.skipped]}


def _eval_engine(base: Optional[str], device: str, adapters: dict[str, Path], *, shipped: bool):
    """The served engine (ONNX Runtime, this build) with the adapters compared by name; the shipped FIM adapter
    is loaded as `FIM_ADAPTER` when the model has one. Requests name their adapter (BASE_ADAPTER: none)."""
    return open_engine(EngineSpec(model=base, device="cuda" if device == "cuda" else "cpu", build=True,
                                  fim_adapter=shipped, trained_adapter=False, warm_up=False,
                                  extra_adapters=tuple((k, str(v)) for k, v in adapters.items()))).engine


def _fim_start(src, options: TrainOptions):
    """(shipped adapter or None, adapter to start from or None) for a training run on `src`."""
    try:
        shipped = shipped_adapters.shipped_for(src)
    except IntarsiaError as e:
        log.warning("the shipped fill-in-the-middle adapter is not used: %s", e)
        return None, None
    if shipped is None or not options.from_fim_adapter:
        return shipped, None
    try:
        check_init_adapter(shipped.path, options.config)
    except TrainError as e:
        _say(f"training from the base model, not from the shipped FIM adapter: {e}")
        return shipped, None
    _say(f"starting from the shipped fill-in-the-middle adapter {shipped.name} ({shipped.sha256[:12]})")
    return shipped, shipped


def train_repository(repo: Path, options: TrainOptions = TrainOptions(), *, stop_after: Optional[int] = None,
                     command: Optional[str] = None) -> dict:
    """The whole `intarsia train` (see the module docstring). Returns the report (also written to the version
    folder). `stop_after` interrupts training after that many steps (tests of resuming)."""
    from transformers import AutoTokenizer  # (torch and transformers load only when training starts)

    t_start = time.perf_counter()
    device = resolve_device(options.device)
    src, hf_dir = resolve_base(options.base, progress=options.progress)
    # exact: the GGUF's own blocks on the CPU, their fp16 rounding on CUDA; a Hugging Face folder as it is
    build_opts = BuildOptions(provider="cuda" if device == "cuda" else "cpu")
    built = build(src, build_opts, progress=options.progress, fim_adapter=False)
    fmt = check_fim(built.path, built.manifest.get("fim_format"), src.name)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False)
    budget = served_budget(options, device)
    _say(f"crawling {repo} …")
    data = prepare(repo, options, fmt=fmt, tokenizer=tokenizer, budget=budget)
    root = data.crawl.root
    summary = data.summary()
    _say(f"{summary['train_files']} training files, {summary['held_out_files']} held out, "
         f"{len(data.tokenized)} examples ({summary['tokens']} tokens); skipped {summary['skipped']}")
    if not data.tokenized:
        raise IntarsiaError(f"{repo}: no training example fits the context length")
    store = AdapterStore(root, src.cache_name)
    shipped, init = _fim_start(src, options)
    run_dir = store.run_dir(_run_key(data, src.cache_name, options, init.sha256 if init is not None else ""))
    result = train_lora(hf_dir, data.tokenized, run_dir, options.config, device=device, progress=options.progress,
                        stop_after=stop_after, init_adapter=init.path if init is not None else None)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return {"process": PartialState().process_index, "trained": True}
    training = result.record()
    _say(f"trained {result.steps} steps in {result.seconds:.0f} s; loss {result.first_loss:.3f} → "
         f"{result.last_loss:.3f}; evaluating on {len(data.held_files)} held-out files …")

    # Evaluate: base, the currently served adapter (if any) and the candidate, same samples, same context.
    current = store.current()
    tmp_version_dir = run_dir / "candidate"
    shutil.rmtree(tmp_version_dir, ignore_errors=True)
    build_key = built.manifest.get("build_key", "model")
    cand_onnx = tmp_version_dir / "candidate.onnx_adapter"
    export_adapter(result.adapter_dir, built.path, cand_onnx, name="candidate")
    adapters = {"candidate": cand_onnx}
    if current is not None:
        adapters["current"] = onnx_adapter_for(current, built.path, build_key)
    samples = eval_samples(data.held_files, next_line=options.eval_next_line, fim=options.eval_fim,
                           seed=options.seed)
    settings = EvalSettings(budget=budget)
    context = make_context(root, data.crawl.files) if budget.context > 0 else None
    scores, rows = {}, {}
    with _eval_engine(options.base, device, adapters, shipped=shipped is not None) as engine:
        variants = [("base", BASE_ADAPTER)] + \
                   ([("shipped", FIM_ADAPTER)] if FIM_ADAPTER in engine.adapter_names else []) + \
                   ([("current", "current")] if current else []) + [("adapted", "candidate")]
        for name, adapter in variants:
            res = evaluate(engine, fmt, samples, adapter=adapter, root=root, context=context, settings=settings,
                           repo_name=root.name, progress=options.progress, label=f"eval {name}")
            scores[name], rows[name] = res["summary"], res["rows"]
    ppl = {}
    if options.perplexity_examples and data.held_tokenized:
        ppl = adapter_perplexity(hf_dir, result.adapter_dir, data.held_tokenized, device=device,
                                 limit=options.perplexity_examples)
    # The gate compares with what the server would serve without this adapter.
    reference = "current" if current is not None else ("shipped" if "shipped" in scores else "base")
    promote, why = gate(scores["adapted"], scores[reference])
    report = {"repo": str(root), "base": {"name": src.name, "key": src.cache_name, "model_dir": str(built.path),
                                         "hf_dir": str(hf_dir)},
              "started_from": {"adapter": init.name, "sha256": init.sha256} if init is not None else None,
              "command": command, "data": {**summary, "examples": len(data.tokenized)}, "training": training,
              "config": asdict(options.config), "render": asdict(options.render), "budget": asdict(budget),
              "samples": len(samples),
              "scores": scores, "perplexity": ppl, "reference": reference,
              "decision": {"promoted": bool(promote and options.promote), "passed_gate": promote, "why": why},
              "seconds": round(time.perf_counter() - t_start, 1), "rows": rows}
    report_files = write_report(report, run_dir / "report")
    manifest = {"base": report["base"], "started_from": report["started_from"], "data_hash": summary["data_hash"],
                "data": report["data"],
                "config": report["config"], "render": report["render"], "scores": scores, "perplexity": ppl,
                "decision": report["decision"], "command": command, "seed": options.seed,
                "training": {k: v for k, v in training.items() if k != "losses"}}
    version = store.add_version(result.adapter_dir, manifest, report_files)
    # The candidate's export is valid for this built model: keep it with the version.
    (version.path / "onnx").mkdir(exist_ok=True)
    shutil.copy2(cand_onnx, version.path / "onnx" / f"{build_key[:16] or 'model'}.onnx_adapter")
    report["version"] = version.name
    report["version_dir"] = str(version.path)
    if promote and options.promote:
        store.promote(version.name)
        _say(f"promoted {version.name}: {why}")
    else:
        kept = ("current adapter " + current.name if current else
                "shipped FIM adapter" if reference == "shipped" else "base model")
        _say(f"kept the {kept}: {why}"
             if not promote else f"{version.name} passed the gate ({why}) but --no-promote was given")
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are not needed once the version exists
    return report


def evaluate_repository(repo: Path, *, base: Optional[str] = None, adapter: str = "current",
                        options: TrainOptions = TrainOptions()) -> dict:
    """`intarsia eval`: the base model vs an adapter (the promoted one, a version name, or a peft folder) on the
    held-out files of `repo` (the same split as training)."""
    src = resolve_source(base)
    device = resolve_device(options.device)
    built = build(src, BuildOptions(provider="cuda" if device == "cuda" else "cpu"), progress=options.progress,
                  fim_adapter=False)
    fmt = check_fim(built.path, built.manifest.get("fim_format"), src.name)
    data = prepare(repo, options)
    root = data.crawl.root
    store = AdapterStore(root, src.cache_name)
    adapters: dict[str, Path] = {}
    label = None
    if adapter not in ("none", ""):
        if Path(adapter).expanduser().is_dir():  # a peft folder: exported for this build by the engine factory
            adapters["adapted"] = Path(adapter).expanduser()
            label = str(adapter)
        else:
            v = store.current() if adapter == "current" else store.version(adapter)
            if v is None:
                raise IntarsiaError(f"no trained adapter is promoted for {root} (train one with `intarsia train`)")
            adapters["adapted"] = onnx_adapter_for(v, built.path, built.manifest.get("build_key", "model"))
            label = v.name
    samples = eval_samples(data.held_files, next_line=options.eval_next_line, fim=options.eval_fim, seed=options.seed)
    settings = EvalSettings(budget=served_budget(options, device))
    context = make_context(root, data.crawl.files) if settings.budget.context > 0 else None
    shipped, _ = _fim_start(src, replace(options, from_fim_adapter=False))
    scores = {}
    with _eval_engine(base, device, adapters, shipped=shipped is not None) as engine:
        variants = [("base", BASE_ADAPTER)] + \
                   ([("shipped", FIM_ADAPTER)] if FIM_ADAPTER in engine.adapter_names else []) + \
                   ([("adapted", "adapted")] if "adapted" in adapters else [])
        for name, ad in variants:
            scores[name] = evaluate(engine, fmt, samples, adapter=ad, root=root, context=context, settings=settings,
                                    repo_name=root.name, progress=options.progress, label=f"eval {name}")["summary"]
    return {"repo": str(root), "base": src.name, "adapter": label, "samples": len(samples),
            "held_out_files": len(data.held_files), "scores": scores}


__all__ = ["PreparedData", "TrainOptions", "dry_run", "evaluate_repository", "prepare", "resolve_base",
           "train_repository"]
