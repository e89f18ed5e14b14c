"""`intarsia train REPO` and `intarsia eval REPO`: crawl → examples → LoRA → evaluate → gate → store → promote.

The order within the time budget (`training.budget`): crawl and cut examples; render the ones the budget can use
(new or changed files first when the promoted adapter is continued); complete the held-out samples with the served
model (this measures what evaluation costs); print the plan; train, with the step count planned from the first
step's throughput and a stop at the deadline; complete the samples with the candidate; decide with the paired
bootstrap (`training.gate`); store, promote.

The model store (`intarsia.model.trained.AdapterStore`) keeps one versioned folder per trained adapter and a
pointer to the promoted one; the language server serves the promoted adapter of its workspace at run time
(ONNX Runtime adapters: never merged) and swaps to a newly promoted one between two requests.
"""

from __future__ import annotations

import contextlib
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
from typing import Optional, Union

from intarsia.model import shipped as shipped_adapters
from intarsia.model.cache import sha256_file
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

from . import budget as tb
from .crawl import CrawlResult, crawl, recent_files
from .evaluate import (
    EvalSettings,
    ResultCache,
    SampleCounts,
    adapter_perplexity,
    eval_samples,
    evaluate,
    seconds_per_sample,
    take,
    write_report,
)
from .examples import (
    Example,
    RenderOptions,
    accepted_examples,
    at_end_of_file,
    budget_for,
    file_examples,
    make_context,
    render_example,
    render_mode,
    split_files,
    unit_draw,
)
from .gate import GateSettings, decide
from .trainer import (
    Calibration,
    Tokenized,
    TrainConfig,
    TrainError,
    check_init_adapter,
    first_epoch,
    resolve_device,
    sequences_per_step,
    tokenize,
    train_lora,
)

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
    # Held-out samples per kind (evaluate.SampleCounts); with a time budget they are cut down, not below
    # eval_min_samples, when evaluation alone would take more than half of it (training.budget).
    eval_next_line: int = 80
    eval_line_rest: int = 60
    eval_block: int = 40
    eval_body: int = 20
    eval_fim: Optional[int] = None  # the former name of eval_block (statements or blocks in a body)
    eval_min_samples: int = tb.MIN_EVAL_SAMPLES
    eval_base: bool = False  # also score the plain base model when it is not the served one (report only)
    gate: GateSettings = GateSettings()
    perplexity_examples: int = 16
    render: RenderOptions = RenderOptions()
    config: TrainConfig = TrainConfig()
    promote: bool = True
    use_acceptance_log: bool = True
    progress: bool = True
    # Start from the base model's shipped fill-in-the-middle adapter (model.shipped) when it has one: the
    # repository adapter continues it (same rank and targets) and replaces it when served.
    from_fim_adapter: bool = True
    # Continue the workspace's promoted adapter when there is one (same rank and targets): a later run builds on
    # what was learned, the files changed since it trained on first.
    continue_promoted: bool = True
    # Minutes (a number), a duration ("20m", "1h"), "auto" (budget.DEFAULT_CPU_BUDGET_S on a CPU, none on CUDA)
    # or None (no budget). See training.budget.
    time_budget: Union[str, float, None] = tb.AUTO
    # With a time budget, steps get smaller (down to one sequence) when the budget would give fewer than this.
    min_steps: int = 16

    def __post_init__(self):
        if self.eval_fim is not None:
            object.__setattr__(self, "eval_block", self.eval_fim)
            object.__setattr__(self, "eval_fim", None)
        self.sample_counts  # noqa: B018  (validates the counts)
        tb.parse_time_budget(self.time_budget)
        if self.eval_min_samples < 0 or self.min_steps < 0:
            raise IntarsiaError("eval_min_samples and min_steps must be ≥ 0")

    @property
    def sample_counts(self) -> SampleCounts:
        return SampleCounts(self.eval_next_line, self.eval_line_rest, self.eval_block, self.eval_body)


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
                budget: PromptBudget, desc: str, *, token_target: Optional[int] = None,
                paths: Optional[set] = None) -> list[Tokenized]:
    """Each example's served prompt + middle + end token. The prompt is the server's within `budget`, except that
    a training sequence holds at most `config.context_length` tokens: a longer prompt loses the start of its
    prefix (the context and the suffix are kept). `token_target`: stop once that many tokens are rendered;
    `paths` collects the files of the examples rendered."""
    eos = tokenizer.convert_tokens_to_ids(fmt.end_tokens[0])
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    context = make_context(root, context_files) if budget.context > 0 else None
    name = options.render.repo_name or root.name
    limit = options.config.context_length
    out = []
    done = 0
    it = examples
    if options.progress:
        it = tqdm(examples, desc=desc, unit="example", leave=False)
    for k, ex in enumerate(it):
        if token_target is not None and done >= token_target:
            break
        middle_tokens = count(ex.middle) + 1
        if middle_tokens > limit // 2:
            continue
        # (an explicit `render.budget`, a study of another budget, applies to every kind as it is)
        served = budget_for(ex.kind, budget) if options.render.budget is None else budget
        fitted = replace(served, prompt=min(served.prompt, limit - middle_tokens))
        mode = render_mode(options.render, ex, options.seed)
        prompt = render_example(ex, fmt, count, fitted, context, root, uid=str(k), mode=mode, repo_name=name)
        t = tokenize(tokenizer, prompt, ex.middle, eos)
        if len(t.ids) <= limit:
            out.append(t)
            done += len(t.ids)
            if paths is not None:
                paths.add(ex.path)
    if options.progress and hasattr(it, "close"):
        it.close()
    return out


def _run_key(data: PreparedData, src_key: str, options: TrainOptions, init: str = "",
             config: Optional[TrainConfig] = None) -> str:
    blob = json.dumps({"data": data.crawl.data_hash(), "base": src_key, "init": init,
                       "config": asdict(config or options.config),
                       "render": asdict(options.render), "seed": options.seed, "held_out": options.held_out,
                       "examples": len(data.examples), "tokens": sum(len(t.ids) for t in data.tokenized)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dry_run(repo: Path, options: TrainOptions) -> dict:
    """What would be trained on: files kept and skipped (with reasons), the split, example counts."""
    data = prepare(repo, options)
    samples = eval_samples(data.held_files, options.sample_counts, seed=options.seed)
    return {"repo": str(data.crawl.root), **data.summary(),
            "eval_samples_by_kind": dict(Counter(s.kind for s in samples)),
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
    return shipped, shipped


@dataclass(frozen=True)
class StartPoint:
    """The adapter a run continues: the workspace's promoted one or the model's shipped FIM adapter."""

    kind: str  # "promoted" | "shipped"
    name: str
    path: Path
    sha256: str


def start_point(src, options: TrainOptions, current) -> tuple[Optional[object], Optional[StartPoint]]:
    """(the shipped FIM adapter or None, where training starts: None for the plain model). The promoted adapter
    (`current`, a store Version) is continued when `options.continue_promoted` and it has this run's rank, alpha
    and targets; else the shipped adapter (`options.from_fim_adapter`); else the plain model."""
    shipped, fim = _fim_start(src, options)
    if current is not None and options.continue_promoted and options.from_fim_adapter:
        try:
            check_init_adapter(current.adapter_dir, options.config)
            sha = current.manifest.get("adapter_sha256") or sha256_file(current.adapter_dir /
                                                                         "adapter_model.safetensors")
            return shipped, StartPoint("promoted", current.name, current.adapter_dir, sha)
        except (TrainError, OSError) as e:
            _say(f"not continuing the promoted adapter {current.name}: {e}")
    if fim is not None:
        return shipped, StartPoint("shipped", fim.name, fim.path, fim.sha256)
    return shipped, None


def changed_since(files, version) -> set[str]:
    """Paths of `files` that are new or changed since `version` (a store Version whose manifest lists the files
    it trained on with their hashes); all of them when it does not say."""
    seen = (version.manifest.get("trained_files") if version is not None else None) or {}
    if not isinstance(seen, dict) or not seen:
        return {f.rel for f in files}
    return {f.rel for f in files if seen.get(f.rel) != f.sha256[:16]}


def ordered_examples(examples: list[Example], first: set[str], seed: int) -> list[Example]:
    """`examples` in a seeded random order, the ones from the files in `first` ahead (what a time budget renders
    and trains on first)."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return sorted(out, key=lambda e: e.path not in first)


def _adapter_sha(adapter_dir: Path) -> str:
    return sha256_file(Path(adapter_dir) / "adapter_model.safetensors")


def train_repository(repo: Path, options: TrainOptions = TrainOptions(), *, stop_after: Optional[int] = None,
                     command: Optional[str] = None) -> dict:
    """The whole `intarsia train` (see the module docstring). Returns the report (also written to the version
    folder). `stop_after` interrupts training after that many steps (tests of resuming)."""
    from transformers import AutoTokenizer  # (torch and transformers load only when training starts)

    t_start = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - t_start

    device = resolve_device(options.device)
    budget_s = tb.resolve_time_budget(options.time_budget, device)
    src, hf_dir = resolve_base(options.base, progress=options.progress)
    # exact: the GGUF's own blocks on the CPU, their fp16 rounding on CUDA; a Hugging Face folder as it is
    build_opts = BuildOptions(provider="cuda" if device == "cuda" else "cpu")
    built = build(src, build_opts, progress=options.progress, fim_adapter=False)
    fmt = check_fim(built.path, built.manifest.get("fim_format"), src.name)
    build_id = f"{built.manifest.get('build_key', 'model')}@{device}"
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False)
    budget = served_budget(options, device)
    _say(f"crawling {repo} …")
    data = prepare(repo, options)
    root = data.crawl.root
    store = AdapterStore(root, src.cache_name)
    current = store.current()
    shipped, start = start_point(src, options, current)
    continuing = start is not None and start.kind == "promoted"
    first = changed_since(data.train_files, current) if continuing else set()
    if start is not None:
        _say(f"continuing the promoted adapter {start.name} ({len(first)} new or changed training files first)"
             if start.kind == "promoted" else
             f"starting from the shipped fill-in-the-middle adapter {start.name} ({start.sha256[:12]})")

    # Before measuring: a prior throughput sizes the examples to render and the step (training.budget).
    tkey = tb.throughput_key(device, options.config.context_length, options.config.rank)
    throughput_file = store.path / "throughput.json"
    prior = tb.prior_tokens_per_s(device, params=tb.model_params(hf_dir),
                                  measured=tb.read_throughput(throughput_file, tkey))
    config = options.config
    if budget_s is not None:
        config = replace(config, batch_tokens=tb.batch_for_budget(
            config.batch_tokens, config.context_length, prior * budget_s * tb.TRAIN_SHARE_GUESS, options.min_steps))
    rendered_paths: set[str] = set()
    data.tokenized = _render_all(ordered_examples(data.examples, first, options.seed), data.train_files, root, fmt,
                                 tokenizer, options, budget, "render",
                                 token_target=tb.render_token_target(budget_s, prior), paths=rendered_paths)
    data.held_tokenized = _render_all(data.held_examples[: options.perplexity_examples * 2], data.train_files, root,
                                      fmt, tokenizer, options, budget, "render held-out")
    summary = data.summary()
    _say(f"{summary['train_files']} training files, {summary['held_out_files']} held out, "
         f"{len(data.tokenized)} of {len(data.examples)} examples rendered ({summary['tokens']} tokens); "
         f"skipped {summary['skipped']}")
    if not data.tokenized:
        raise IntarsiaError(f"{repo}: no training example fits the context length")

    # The served model's evaluation comes first: it measures what the candidate's will cost.
    reference = "current" if current is not None else ("shipped" if shipped is not None else "base")
    ref_ids = {"current": (current.manifest.get("adapter_sha256") if current is not None else None),
               "shipped": shipped.sha256 if shipped is not None else None, "base": "base"}
    variants = [reference] + (["base"] if options.eval_base and reference != "base" else [])
    engine_names = {"current": "current", "shipped": FIM_ADAPTER, "base": BASE_ADAPTER}
    cache = ResultCache(store.path / "eval-cache.json")
    settings = EvalSettings(budget=budget, served=options.render.budget is None)
    context = make_context(root, data.crawl.files) if budget.context > 0 else None
    all_samples = eval_samples(data.held_files, options.sample_counts, seed=options.seed)
    factor = tb.LORA_EVAL_FACTOR if reference == "base" else 1.0
    scores, rows = {}, {}
    ref_adapters = {"current": onnx_adapter_for(current, built.path, built.manifest.get("build_key", "model"))} \
        if current is not None else {}

    def run_eval(engine, name: str, samples, label: str) -> dict:
        sha = ref_ids.get(name)
        return evaluate(engine, fmt, samples, adapter=engine_names[name], root=root, context=context,
                        settings=settings, repo_name=root.name, progress=options.progress, label=label,
                        cache=cache, cache_id=f"{name if name == 'base' else 'adapter'}:{sha}@{build_id}"
                        if sha else None)

    from accelerate import PartialState

    # (with `accelerate launch`, only the main process evaluates; the others only train)
    main_process = PartialState().is_main_process
    samples, open_s = all_samples, 0.0
    rows[reference] = []
    t_open = time.monotonic()
    with (_eval_engine(options.base, device, ref_adapters, shipped="shipped" in variants) if main_process
          else contextlib.nullcontext()) as engine:
        open_s = time.monotonic() - t_open
        if main_process and budget_s is not None and len(all_samples) > options.eval_min_samples:
            probe = take(all_samples, tb.PROBE_SAMPLES)
            probe_rows = {v: run_eval(engine, v, probe, f"time {v}")["rows"] for v in variants}
            per = seconds_per_sample(probe_rows[reference]) or 0.0
            fresh = sum(sum(not r["cached"] for r in rs) / max(1, len(rs)) for rs in probe_rows.values())
            n = tb.fit_eval_samples(len(all_samples), seconds_per_sample=per, passes=fresh + factor,
                                    budget_s=budget_s, floor=options.eval_min_samples)
            if n < len(all_samples):
                _say(f"evaluating {n} of {len(all_samples)} held-out samples: all of them would take "
                     f"~{tb.format_minutes(len(all_samples) * per * (fresh + factor))}, more than half of the "
                     f"{tb.format_minutes(budget_s)} budget (the rest is for training)")
            samples = take(all_samples, n)
        if main_process:
            _say(f"evaluating the served model ({reference}) on {len(samples)} held-out samples "
                 f"{dict(Counter(s.kind for s in samples))} …")
            for name in variants:
                res = run_eval(engine, name, samples, f"eval {name}")
                scores[name], rows[name] = res["summary"], res["rows"]
    eval_s = tb.evaluation_estimate([r["ms"] for r in rows[reference]], factor=factor, open_s=open_s,
                                    export_s=tb.EXPORT_S)
    held = data.held_tokenized[: options.perplexity_examples]
    ppl_examples = tb.fit_perplexity_examples(len(held), sum(len(t.ids) for t in held) / max(1, len(held)),
                                              tokens_per_s=prior, budget_s=budget_s)
    ppl_tokens = sum(len(t.ids) for t in held[:ppl_examples])

    def other_s(tps: float) -> float:
        return tb.RESERVE_S + tb.perplexity_estimate(ppl_tokens, passes=2 if ppl_examples else 0,
                                                     tokens_per_s=tps)

    deadline = t_start + budget_s - eval_s - other_s(prior) if budget_s is not None else None
    bin_tokens, bin_examples = first_epoch(data.tokenized, config)
    plan_args = dict(bin_tokens=bin_tokens, bin_examples=bin_examples, budget_s=budget_s, eval_s=eval_s,
                     eval_samples=len(samples), max_steps=config.max_steps, epochs=config.epochs)
    plans = [tb.plan_steps(tokens_per_s=prior, sequences_per_step=sequences_per_step(config),
                           elapsed_s=elapsed(), other_s=other_s(prior), **plan_args)]
    if main_process:
        _say(plans[0].describe())
        if plans[0].warning():
            _say("warning: " + plans[0].warning())

    def plan(cal: Calibration) -> int:
        p = tb.plan_steps(tokens_per_s=cal.tokens_per_s, sequences_per_step=cal.sequences_per_step,
                          elapsed_s=elapsed() - cal.seconds, other_s=other_s(cal.tokens_per_s), measured=True,
                          done_steps=cal.done_steps,
                          **{**plan_args, "bin_tokens": cal.bin_tokens, "bin_examples": cal.bin_examples})
        plans.append(p)
        _say(p.describe())
        if p.warning() and not plans[0].warning():
            _say("warning: " + p.warning())
        return p.steps

    run_dir = store.run_dir(_run_key(data, src.cache_name, options, start.sha256 if start is not None else "",
                                     config))
    result = train_lora(hf_dir, data.tokenized, run_dir, config, device=device, progress=options.progress,
                        stop_after=stop_after, init_adapter=start.path if start is not None else None,
                        plan=plan, deadline=deadline)
    if not main_process:
        return {"process": PartialState().process_index, "trained": True}
    training = result.record()
    stopped = f" (stopped early: {result.stopped})" if result.stopped else ""
    if result.resumed_from:
        stopped += f" (resumed at step {result.resumed_from})"
    _say(f"trained {result.steps} of {result.planned_steps} steps in {result.seconds:.0f} s{stopped}; loss "
         f"{result.first_loss:.3f} → {result.last_loss:.3f}; evaluating the candidate …")

    tmp_version_dir = run_dir / "candidate"
    shutil.rmtree(tmp_version_dir, ignore_errors=True)
    build_key = built.manifest.get("build_key", "model")
    cand_onnx = tmp_version_dir / "candidate.onnx_adapter"
    export_adapter(result.adapter_dir, built.path, cand_onnx, name="candidate")
    engine_names["adapted"] = "candidate"
    ref_ids["adapted"] = _adapter_sha(result.adapter_dir)
    with _eval_engine(options.base, device, {"candidate": cand_onnx}, shipped=False) as engine:
        res = run_eval(engine, "adapted", samples, "eval candidate")
        scores["adapted"], rows["adapted"] = res["summary"], res["rows"]
    ppl = {}
    if ppl_examples and data.held_tokenized:
        ppl = adapter_perplexity(hf_dir, result.adapter_dir, data.held_tokenized, device=device, limit=ppl_examples)
    # The gate compares with what the server would serve without this adapter, sample by sample.
    decision = decide(rows["adapted"], rows[reference], replace(options.gate, seed=options.seed))
    promote, why = decision.promote, decision.why
    if result.measured_tokens_per_s and result.steps > (result.resumed_from or 0) and not result.stopped:
        # (not after a stop at the budget: the same command must render the same examples to resume)
        tb.record_throughput(throughput_file, tkey, result.measured_tokens_per_s)
    started = {"kind": start.kind, "adapter": start.name, "sha256": start.sha256} if start is not None else None
    report = {"repo": str(root), "base": {"name": src.name, "key": src.cache_name, "model_dir": str(built.path),
                                         "hf_dir": str(hf_dir)},
              "started_from": started,
              "command": command, "data": {**summary, "examples": len(data.tokenized),
                                           "changed_files_first": len(first)},
              "training": training, "config": asdict(config), "render": asdict(options.render),
              "budget": asdict(budget), "time_budget_s": budget_s, "plan": plans[-1].to_json(),
              "samples": len(samples), "samples_by_kind": dict(Counter(s.kind for s in samples)),
              "scores": scores, "perplexity": ppl, "reference": reference, "gate": decision.to_json(),
              "decision": {"promoted": bool(promote and options.promote), "passed_gate": promote, "why": why},
              "cached_rows": sum(r["cached"] for rs in rows.values() for r in rs), "seconds": round(elapsed(), 1),
              "rows": rows}
    report_files = write_report(report, run_dir / "report")
    manifest = {"base": report["base"], "started_from": started, "data_hash": summary["data_hash"],
                "data": report["data"],
                # what a continuation counts as seen: the files with rendered examples (and those seen before)
                "trained_files": {f.rel: f.sha256[:16] for f in data.train_files
                                  if f.rel in rendered_paths or (continuing and f.rel not in first)},
                "config": report["config"], "render": report["render"], "scores": scores, "perplexity": ppl,
                "gate": {"overall": report["gate"]["overall"], "confidence": decision.confidence},
                "decision": report["decision"], "command": command, "seed": options.seed,
                "plan": report["plan"], "training": {k: v for k, v in training.items() if k != "losses"}}
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
    _say(f"took {tb.format_minutes(elapsed())} (planned {tb.format_minutes(plans[-1].total_s)}, budget "
         f"{tb.format_minutes(budget_s)})")
    if result.stopped and not (promote and options.promote):
        # Stopped at the budget: the checkpoint stays, and the same command resumes where training stopped.
        shutil.rmtree(tmp_version_dir, ignore_errors=True)
        shutil.rmtree(run_dir / "report", ignore_errors=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are not needed once the version exists
    return report


def evaluate_repository(repo: Path, *, base: Optional[str] = None, adapter: str = "current",
                        options: TrainOptions = TrainOptions()) -> dict:
    """`intarsia eval`: the served model (the shipped adapter, else the base model) vs an adapter (the promoted
    one, a version name, or a peft folder) on the held-out samples of `repo` (the same split as training), with
    the gate's paired comparison."""
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
    samples = eval_samples(data.held_files, options.sample_counts, seed=options.seed)
    settings = EvalSettings(budget=served_budget(options, device), served=options.render.budget is None)
    context = make_context(root, data.crawl.files) if settings.budget.context > 0 else None
    shipped, _ = _fim_start(src, replace(options, from_fim_adapter=False))
    scores, rows = {}, {}
    with _eval_engine(base, device, adapters, shipped=shipped is not None) as engine:
        variants = [("base", BASE_ADAPTER)] + \
                   ([("shipped", FIM_ADAPTER)] if FIM_ADAPTER in engine.adapter_names else []) + \
                   ([("adapted", "adapted")] if "adapted" in adapters else [])
        for name, ad in variants:
            res = evaluate(engine, fmt, samples, adapter=ad, root=root, context=context, settings=settings,
                           repo_name=root.name, progress=options.progress, label=f"eval {name}")
            scores[name], rows[name] = res["summary"], res["rows"]
    out = {"repo": str(root), "base": src.name, "adapter": label, "samples": len(samples),
           "held_out_files": len(data.held_files), "scores": scores}
    if "adapted" in rows:
        reference = "shipped" if "shipped" in rows else "base"
        out["reference"] = reference
        out["gate"] = decide(rows["adapted"], rows[reference], replace(options.gate, seed=options.seed)).to_json()
    return out


__all__ = ["PreparedData", "StartPoint", "TrainOptions", "changed_since", "dry_run", "evaluate_repository",
           "ordered_examples", "prepare", "resolve_base", "start_point", "train_repository"]
