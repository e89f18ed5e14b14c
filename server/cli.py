"""The `intarsia` command line.

    intarsia model list|fetch|build|info
    intarsia complete FILE --line N --column M
    intarsia doctor
    intarsia serve [--tcp --port N]
    intarsia stats

Errors print one line (`intarsia: error: ...`) on stderr and exit with status 1; logs go to stderr, results to
stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from intarsia.model import shipped
from intarsia.model.build import BuildOptions, build, find_built
from intarsia.model.engine import GenerationRequest
from intarsia.model.errors import IntarsiaError
from intarsia.model.factory import FIM_ADAPTER, EngineSpec, open_engine
from intarsia.model.fetch import fetch, is_fetched, verify
from intarsia.model.lookup import DEFAULT_DRAFT
from intarsia.model.ort_engine import available_providers
from intarsia.model.registry import DEFAULT_MODEL, get_spec, registry, resolve_source
from intarsia.model.trained import AdapterStore
from intarsia.server.core.acceptance import run_stats
from intarsia.server.core.completion import PipelineOptions, run_completion
from intarsia.server.core.context import ContextProvider, RepoIndex
from intarsia.server.core.documents import Document
from intarsia.server.core.prompt import PromptBudget
from intarsia.training import budget as tb
from intarsia.training.examples import RenderOptions
from intarsia.training.run import TrainOptions, dry_run, evaluate_repository, train_repository
from intarsia.training.trainer import TrainConfig

log = logging.getLogger("intarsia")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------------------------------- model


def cmd_model_list(args: argparse.Namespace) -> int:
    for name, spec in registry().items():
        src = resolve_source(name)
        built = find_built(src, BuildOptions())
        state = "built" if built else ("fetched" if is_fetched(spec) else "not fetched")
        mark = "*" if name == DEFAULT_MODEL else " "
        print(f"{mark} {name:22s} {_human(spec.gguf_size):>10s}  {state:12s} {spec.description}")
    return 0


def cmd_model_fetch(args: argparse.Namespace) -> int:
    path = fetch(get_spec(args.name), progress=not args.quiet)
    print(path)
    return 0


def _options(args: argparse.Namespace):
    return BuildOptions(precision=args.precision, provider=args.device, accuracy_level=args.accuracy_level)


def cmd_model_build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    built = build(args.model, _options(args), force=args.force, progress=not args.quiet, fim_format=args.fim_format,
                  fim_adapter=not args.no_fim_adapter)
    log.info("built in %.1f s", time.perf_counter() - t0)
    if built.fim_adapter is not None:
        log.info("fill-in-the-middle adapter: %s (applied at run time; --no-fim-adapter to leave it out)",
                 built.fim_adapter)
    print(built.path)
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    src = resolve_source(args.model)
    built = find_built(src, _options(args))
    info: dict = {"source": src.kind, "name": src.name}
    if src.spec is not None:
        info.update(gguf_sha256=src.spec.gguf_sha256, gguf_size=src.spec.gguf_size, license=src.spec.license,
                    pieces=[f"{p.dist}=={p.version}" for p in src.spec.parts])
    try:
        fim = shipped.shipped_for(src)
        if fim is not None:
            info["fim_adapter"] = {"name": fim.name, "path": str(fim.path), "sha256": fim.sha256,
                                   "scores": fim.manifest.get("scores", {})}
    except IntarsiaError as e:
        info["fim_adapter"] = {"error": str(e)}
    if built is None:
        info["built"] = None
    else:
        info["built"] = str(built.path)
        info["manifest"] = {k: v for k, v in built.manifest.items() if k != "transcode"}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model      {info['name']} ({info['source']})")
    if "fim_adapter" in info:
        fa = info["fim_adapter"]
        print(f"fim adapter {fa.get('name')} sha256 {fa.get('sha256', '')[:16]}" if "error" not in fa
              else f"fim adapter damaged: {fa['error']}")
    if src.spec is not None:
        print(f"gguf       {_human(src.spec.gguf_size)}, sha256 {src.spec.gguf_sha256}")
    if built is None:
        print("built      no (run: intarsia model build " + (args.model or "") + ")")
        return 0
    m = built.manifest
    print(f"built      {built.path}")
    for key in ("precision", "execution_provider", "accuracy_level", "fim_format", "lora_inputs", "logits_rows",
                "built_at"):
        if key in m and not (key == "accuracy_level" and m.get("execution_provider") == "cuda"):
            print(f"{key:10s} {m[key]}")  # (accuracy levels are for the CPU's MatMulNBits)
    rounding = (m.get("transcode") or {}).get("max_rounding_error")
    if rounding is not None:
        print(f"rounding   every weight is gguf's value rounded once to fp16 (largest change {rounding:.3g})")
    if "size_bytes" in m:
        print(f"size       {_human(m['size_bytes'])}")
    for cls, desc in (m.get("scheme") or {}).items():
        print(f"  {cls:14s} {desc}")
    return 0


# ------------------------------------------------------------------------------------------- complete


def engine_spec(args: argparse.Namespace, *, workspace: Optional[str] = None, build: bool = True) -> EngineSpec:
    """The engine the CLI's --engine/--model/--device/--adapter/... options name (see model.factory)."""
    adapter = getattr(args, "adapter", None)
    return EngineSpec(kind=getattr(args, "engine", "ort"), model=args.model, device=args.device,
                      precision=args.precision, accuracy_level=args.accuracy_level,
                      threads=getattr(args, "threads", None),
                      lookup_draft=getattr(args, "lookup_draft", None) if getattr(args, "lookup_draft", None)
                      is not None else DEFAULT_DRAFT,
                      fim_format=args.fim_format, adapter=None if adapter in (None, "none") else adapter,
                      workspace=workspace, fim_adapter=not args.no_fim_adapter,
                      remote_endpoint=getattr(args, "endpoint", None), remote_model=getattr(args, "remote_model", None),
                      build=build, progress_bars=not args.quiet, warm_up=False)


def split_at(text: str, line: int, column: int) -> tuple[str, str]:
    """(prefix, suffix) of `text` at 1-based `line` and `column` (column counted in characters)."""
    lines = text.splitlines(keepends=True)
    if line < 1 or line > max(len(lines), 1) + (1 if text.endswith("\n") else 0):
        raise IntarsiaError(f"line {line} is outside the file (1..{len(lines)})")
    offset = sum(len(ln) for ln in lines[: line - 1])
    cur = lines[line - 1] if line - 1 < len(lines) else ""
    body = cur.rstrip("\r\n")
    if column < 1 or column > len(body) + 1:
        raise IntarsiaError(f"column {column} is outside line {line} (1..{len(body) + 1})")
    offset += column - 1
    return text[:offset], text[offset:]


def cmd_complete(args: argparse.Namespace) -> int:
    """What an editor would show at the position: the served pipeline (scope, repository context of the workspace,
    the prompt within the served budget, post-processing). `--raw`: the bare FIM prompt's output, for debugging."""
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IntarsiaError(f"cannot read {path}: {e.strerror}") from None
    if b"\0" in data[:8192]:
        raise IntarsiaError(f"{path} looks like a binary file")
    text = data.decode("utf-8", errors="replace")
    prefix, suffix = split_at(text, args.line, args.column)
    workspace = Path(args.workspace or path.resolve().parent).resolve()
    if not workspace.is_dir():
        raise IntarsiaError(f"--workspace {workspace} is not a folder")
    loaded = open_engine(engine_spec(args, workspace=str(workspace)))
    with loaded.engine as engine:
        if args.raw:
            fmt = loaded.fim_format
            stops = (*fmt.stop_strings, "\n") if args.single_line else fmt.stop_strings
            res = engine.generate(GenerationRequest(prompt=fmt.render(prefix, suffix), max_new_tokens=args.max_tokens,
                                                    stop=tuple(stops)))
            t = res.timings
            log.info("raw completion: %d prompt tokens, %d new, first token %.0f ms, total %.0f ms, finish=%s",
                     t.prompt_tokens, t.new_tokens, t.first_token_s * 1000, t.total_s * 1000, res.finish_reason)
            shown = res.text
        else:
            rel = path.resolve().relative_to(workspace).as_posix() if path.resolve().is_relative_to(workspace) \
                else path.name
            doc = Document(path.resolve().as_uri(), text, 0, path=rel, fs_path=str(path.resolve()))
            index = RepoIndex(workspace)
            if args.context_tokens != 0:
                index.build()
            budget = PromptBudget.served(engine.provider)
            if args.context_tokens is not None:
                budget = replace(budget, context=args.context_tokens)
            options = PipelineOptions(max_tokens=args.max_tokens, multiline="never" if args.single_line else "auto",
                                      budget=budget, repo_name=workspace.name)
            out = run_completion(doc.snapshot(len(prefix), invoked=True), engine=engine, fim_format=loaded.fim_format,
                                 options=options, context=ContextProvider(index))
            if args.json:
                print(json.dumps({"engine": loaded.description, **out.to_json(), "raw": out.raw}, indent=1))
                return 0
            if not out.text:
                print(f"intarsia: no suggestion here ({out.reason})", file=sys.stderr)
            shown = out.text
    sys.stdout.write(shown)
    if not shown.endswith("\n"):
        sys.stdout.write("\n")
    return 0


# --------------------------------------------------------------------------------------------- doctor

DOCTOR_SAMPLE = (
    "def fibonacci(n):\n"
    '    """Return the n-th Fibonacci number."""\n'
    "    if n < 2:\n"
    "        return n\n"
    "    return ",
    "\n\n\nprint(fibonacci(10))\n",
)


def cmd_doctor(args: argparse.Namespace) -> int:
    import onnxruntime

    ok = True

    def line(status: str, what: str) -> None:
        print(f"[{status:4s}] {what}")

    src = resolve_source(args.model)
    line("ok", f"model: {src.name} ({src.kind})")
    if src.spec is not None:
        good, msg = verify(src.spec)
        line("ok" if good else "FAIL", msg)
        ok &= good
    line("ok", f"onnxruntime {onnxruntime.__version__}, providers: {', '.join(onnxruntime.get_available_providers())}")
    try:
        line("ok", f"onnxruntime-genai providers usable here: {', '.join(available_providers())}")
    except Exception as e:  # pragma: no cover - reported, not fatal
        line("warn", f"cannot list onnxruntime-genai providers: {e}")
    t0 = time.perf_counter()
    try:
        loaded = open_engine(engine_spec(args, build=False))
    except IntarsiaError as e:
        line("FAIL", str(e))
        return 1
    load_s = time.perf_counter() - t0
    built = loaded.built
    line("ok", f"built model: {built.path} ({built.manifest.get('precision')}, "
               f"{built.manifest.get('execution_provider')})")
    fmt = loaded.fim_format
    line("ok", f"FIM format {fmt.name}: tokens {', '.join(fmt.special_tokens)} found")
    if loaded.fim_adapter_error is not None:
        ok = False
        line("FAIL", loaded.fim_adapter_error)
    elif loaded.base_adapter is not None:
        line("ok", f"fill-in-the-middle adapter verified against its manifest: {loaded.adapters[FIM_ADAPTER].name}")
    prompt = fmt.render(*DOCTOR_SAMPLE)
    with loaded.engine as engine:
        res = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=24, stop=(*fmt.stop_strings, "\n")))
    t = res.timings
    line("ok", f"engine loaded in {load_s:.1f} s; probe: {t.prompt_tokens} prompt tokens, first token "
               f"{t.first_token_s * 1000:.0f} ms, {t.new_tokens} tokens in {t.total_s * 1000:.0f} ms "
               f"({t.decode_tps:.1f} tok/s decode)")
    print("prompt sent:")
    print(json.dumps(prompt))
    print("completion:")
    print(json.dumps(res.text))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from intarsia.server.lsp.server import serve  # (pygls loads only for the server)

    rc = serve(tcp=args.tcp, port=args.port, socket_path=args.socket, verbose=args.verbose, log_file=args.log_file)
    # Model and indexing threads must not keep the process alive once the client is gone.
    logging.shutdown()
    os._exit(rc)


def cmd_stats(args: argparse.Namespace) -> int:
    png = Path(args.png) if args.png else None
    print(run_stats(args.workspace, png, chart=not args.no_chart, as_json=args.json))
    return 0


# ----------------------------------------------------------------------------------------------- training


def _train_options(args: argparse.Namespace):
    cfg = TrainConfig(rank=args.rank, alpha=args.alpha if args.alpha is not None else 2 * args.rank,
                      learning_rate=args.lr, epochs=args.epochs, max_steps=args.max_steps,
                      batch_tokens=args.batch_tokens, context_length=args.context_length, seed=args.seed,
                      save_every=args.save_every,
                      gradient_checkpointing={"auto": None, "on": True, "off": False}[args.gradient_checkpointing])
    render = RenderOptions()  # the server's prompt budget on the training device (training.run.served_budget)
    return TrainOptions(base=args.base, device=args.device, held_out=args.held_out,
                        recent_commits=args.recent_commits, seed=args.seed, max_examples=args.max_examples,
                        eval_next_line=args.eval_next_line, eval_line_rest=args.eval_line_rest,
                        eval_block=args.eval_block, eval_body=args.eval_body,
                        eval_min_samples=args.eval_min_samples, eval_base=args.eval_base, render=render, config=cfg,
                        promote=not args.no_promote, use_acceptance_log=not args.no_acceptance_log,
                        progress=not args.quiet, from_fim_adapter=not args.from_base,
                        continue_promoted=not args.no_continue, time_budget=args.time_budget,
                        min_steps=args.min_steps)


def cmd_train(args: argparse.Namespace) -> int:
    opts = _train_options(args)
    repo = Path(args.repo)
    if args.dry_run:
        report = dry_run(repo, opts)
        if args.json:
            print(json.dumps(report, indent=1))
            return 0
        print(f"repository: {report['repo']}")
        print(f"files: {report['files']} kept, {report['train_files']} to train on, "
              f"{report['held_out_files']} held out")
        print(f"examples: {report['examples']} " + json.dumps(report["examples_by_kind"]))
        print(f"held-out samples: {sum(report['eval_samples_by_kind'].values())} "
              + json.dumps(report["eval_samples_by_kind"]))
        print(f"accepted suggestions used: {report['accepted_examples']}; lines with masked secrets: "
              f"{report['masked_secret_lines']}")
        print(f"skipped: {sum(report['skipped'].values())} " + json.dumps(report["skipped"]))
        for row in report["skipped_files"][: args.show_skipped]:
            print(f"  skip {row['path']}: {row['reason']}")
        return 0
    command = "intarsia train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else f"intarsia train {repo}"
    report = train_repository(repo, opts, command=command)
    if "scores" not in report:  # a non-main process of a multi-process run
        return 0
    slim = {k: v for k, v in report.items() if k != "rows"}
    if args.json:
        print(json.dumps(slim, indent=1, default=str))
    else:
        d = report["decision"]
        for name, sc in report["scores"].items():
            a = sc["all"] or {}
            print(f"{name:8s} exact match {a.get('exact_match')}  edit similarity {a.get('edit_similarity')}  "
                  f"shown {a.get('shown')}  (n={a.get('samples')})")
        print(f"perplexity: {report.get('perplexity')}")
        gate = report.get("gate") or {}
        pct = f"{100 * gate.get('confidence', 0.9):g} %"
        for kind, c in [("all", gate.get("overall"))] + list((gate.get("by_kind") or {}).items()):
            if c:
                em, es = c["exact_gain"], c["similarity_gain"]
                print(f"gain vs {report['reference']:8s} {kind:9s} n={c['samples']:<4d} exact match "
                      f"{em['mean']:+.1f} [{em['low']:+.1f}, {em['high']:+.1f}]  edit similarity {es['mean']:+.1f} "
                      f"[{es['low']:+.1f}, {es['high']:+.1f}]  ({pct} intervals)")
        print(f"{report['version']}: {'promoted' if d['promoted'] else 'not promoted'} ({d['why']})")
        print(f"report: {report['version_dir']}/report.md")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    opts = _train_options(args)
    report = evaluate_repository(Path(args.repo), base=args.base, adapter=args.adapter, options=opts)
    print(json.dumps(report, indent=1))
    return 0


def _store(args: argparse.Namespace):
    repo = Path(args.repo).expanduser()
    if not repo.is_dir():
        raise IntarsiaError(f"{repo} is not a folder")
    return AdapterStore(repo, resolve_source(args.base).cache_name)


def cmd_model_versions(args: argparse.Namespace) -> int:
    store = _store(args)
    cur = store.current()
    rows = store.versions()
    if not rows:
        print(f"no trained adapters for {store.workspace} ({store.base_key})")
        return 0
    for v in rows:
        sc = (v.manifest.get("scores") or {}).get("adapted", {}).get("all") or {}
        mark = "*" if cur is not None and cur.name == v.name else " "
        print(f"{mark} {v.name}  {v.manifest.get('created', '?')}  exact match {sc.get('exact_match', '-')}  "
              f"{'promoted' if v.promoted else 'not promoted'}: {(v.manifest.get('decision') or {}).get('why', '')}")
    return 0


def cmd_model_rollback(args: argparse.Namespace) -> int:
    store = _store(args)
    prev = store.rollback()
    print(f"serving {'trained adapter ' + prev.name if prev else 'the base model'} for {store.workspace}")
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    store = _store(args)
    v = store.promote(args.version)
    print(f"serving trained adapter {v.name} for {store.workspace}")
    return 0


def _add_train_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", help="the repository (a git work tree or a plain folder); it is only read")
    p.add_argument("--base", default=None, help="base model: registry name, .gguf, or Hugging Face folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--held-out", type=float, default=0.1, help="share of files held out for evaluation")
    p.add_argument("--recent-commits", type=int, default=0,
                   help="also hold out the files changed by the newest N commits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps (0: one pass over the data)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default: 2 × rank)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per optimizer step")
    p.add_argument("--context-length", type=int, default=1024, help="longest packed training sequence")
    p.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--save-every", type=int, default=25, help="checkpoint every N steps (resumable)")
    p.add_argument("--max-examples", type=int, default=0, help="sample at most N training examples (0: all)")
    p.add_argument("--time-budget", default="auto", metavar="DURATION",
                   help="minutes or a duration (20m, 1h, 1h30m) for the whole run, evaluation included; 'none': "
                        "no budget (default auto: 20 min on a CPU, none on CUDA)")
    p.add_argument("--min-steps", type=int, default=16,
                   help="with a time budget, make steps smaller when the budget gives fewer (0: keep --batch-tokens)")
    p.add_argument("--eval-next-line", type=int, default=80, help="held-out samples: the next line in a body")
    p.add_argument("--eval-line-rest", type=int, default=60, help="held-out samples: the rest of a line")
    p.add_argument("--eval-block", "--eval-fim", dest="eval_block", type=int, default=40,
                   help="held-out samples: a statement or block of 2-8 lines in a body")
    p.add_argument("--eval-body", type=int, default=20, help="held-out samples: a body from its docstring")
    p.add_argument("--eval-min-samples", type=int, default=tb.MIN_EVAL_SAMPLES,
                   help="with a time budget, never evaluate fewer held-out samples than this "
                        f"(default {tb.MIN_EVAL_SAMPLES})")
    p.add_argument("--eval-base", action="store_true",
                   help="also score the plain base model when it is not the served one (report only)")
    p.add_argument("--no-promote", action="store_true", help="evaluate and store, but do not promote")
    p.add_argument("--no-acceptance-log", action="store_true", help="do not learn from accepted suggestions")
    p.add_argument("--from-base", action="store_true",
                   help="start from the plain base model, not from its shipped fill-in-the-middle adapter")
    p.add_argument("--no-continue", action="store_true",
                   help="do not continue the workspace's promoted adapter (start from the shipped one)")
    p.add_argument("--json", action="store_true")


# ----------------------------------------------------------------------------------------------- main


def _add_model_opts(p: argparse.ArgumentParser, model_required: bool = False) -> None:
    if model_required:
        p.add_argument("model", help="registry name, .gguf file, or model folder")
    else:
        p.add_argument("--model", "-m", default=None, help="registry name, .gguf file, or model folder "
                                                              "(default: qwen2.5-coder-0.5b)")
    p.add_argument("--precision", default="exact", choices=["exact", "int4", "int8", "fp32", "fp16"],
                   help="exact: the GGUF's own blocks, no second quantization (default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="execution provider")
    p.add_argument("--accuracy-level", type=int, default=4, help="MatMulNBits accuracy level (4: int8 activations)")
    p.add_argument("--fim-format", default=None, help="override the FIM format (default: from the model)")
    p.add_argument("--no-fim-adapter", action="store_true",
                   help="leave out the model's shipped fill-in-the-middle adapter (the plain model)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intarsia", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (stderr)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="fetch, build and inspect models")
    msub = model.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("list", help="known models and their state")
    p.set_defaults(func=cmd_model_list)
    p = msub.add_parser("fetch", help="download and verify a registry model")
    p.add_argument("name")
    p.set_defaults(func=cmd_model_fetch)
    p = msub.add_parser("build", help="build the ONNX Runtime model")
    _add_model_opts(p, model_required=False)
    p.add_argument("model_pos", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.set_defaults(func=cmd_model_build)
    p = msub.add_parser("info", help="what is cached and how it was built")
    _add_model_opts(p)
    p.add_argument("model_pos", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)
    for name, func, hlp in (("versions", cmd_model_versions, "trained adapters of a workspace (* = served)"),
                            ("rollback", cmd_model_rollback, "serve the previously promoted adapter again"),
                            ("promote", cmd_model_promote, "serve a given trained version")):
        p = msub.add_parser(name, help=hlp)
        p.add_argument("repo", help="the workspace folder the adapters were trained on")
        if name == "promote":
            p.add_argument("version", help="a version name such as v0002")
        p.add_argument("--base", default=None, help="base model (default: qwen2.5-coder-0.5b)")
        p.set_defaults(func=func)

    p = sub.add_parser("train", help="fine-tune a LoRA adapter on a repository, evaluate it, promote it if better")
    _add_train_opts(p)
    p.add_argument("--dry-run", action="store_true", help="only show what would be trained on")
    p.add_argument("--show-skipped", type=int, default=20, help="skipped files listed by --dry-run")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="base vs trained adapter on a repository's held-out files")
    _add_train_opts(p)
    p.add_argument("--adapter", default="current", help="current | none | vNNNN | PEFT_FOLDER")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("complete", help="print what an editor would show at a position of a file")
    p.add_argument("file")
    p.add_argument("--line", type=int, required=True, help="1-based line")
    p.add_argument("--column", type=int, required=True, help="1-based column (characters)")
    _add_model_opts(p)
    p.add_argument("--engine", default="ort", choices=["ort", "hf", "remote"])
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible server URL for --engine remote")
    p.add_argument("--remote-model", default=None, help="model name to send to the remote server")
    p.add_argument("--adapter", default="none", help="none | PATH (peft folder or .onnx_adapter)")
    p.add_argument("--workspace", default=None,
                   help="the workspace for repository context and its trained adapter (default: the file's folder)")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="repository context budget (default: the server's; 0: none)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--single-line", action="store_true", help="complete the current line only")
    p.add_argument("--raw", action="store_true",
                   help="the bare fill-in-the-middle prompt's raw output (no scope, context or post-processing)")
    p.add_argument("--json", action="store_true", help="the outcome as JSON: text, scope, timings, context files")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--lookup-draft", type=int, default=None, metavar="N",
                   help="tokens drafted per pass by prompt-lookup decoding (0 turns it off; default 3)")
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("doctor", help="check the model, tokens, providers, and time a probe completion")
    _add_model_opts(p)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("serve", help="run the language server (stdio; --tcp listens on 127.0.0.1 and asks for a "
                                     "token; --socket PATH on a Unix socket)")
    p.add_argument("--tcp", action="store_true", help="listen on TCP (127.0.0.1 only) instead of stdio")
    p.add_argument("--port", type=int, default=2087, help="TCP port (default 2087; 0: any free port)")
    p.add_argument("--socket", default=None, metavar="PATH",
                   help="listen on a Unix socket (mode 0600) instead of stdio")
    p.add_argument("--log-file", default=None, help="write logs to this file instead of stderr")
    p.add_argument("--stdio", action="store_true", help="use stdio (the default; accepted for editor configs)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stats", help="acceptance rates of the suggestions (local acceptance log)")
    p.add_argument("--workspace", default=None, help="only this workspace folder (default: all)")
    p.add_argument("--png", default=None, help="chart file (default: <cache>/workspaces/acceptance.png)")
    p.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if getattr(args, "model_pos", None):
        args.model = args.model_pos
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except IntarsiaError as e:
        print(f"intarsia: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("intarsia: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
