"""One completion, plain synchronous Python (no LSP types, no event loop):

    document snapshot → should_complete (scope) → repository context → prompt within the budget → engine
    → post-processing (grammars) → the text to insert

`run_completion(snapshot, engine=..., fim_format=..., options=..., cancel=...)` runs one completion and returns a
`CompletionOutcome` with the per-stage timings, which it also logs. The engine is stopped early once the scope
needs no more lines. The server runs it on its model thread, `intarsia complete` from the shell, and training's
evaluation on held-out samples: all three get the same text for the same snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from intarsia.grammars.context import CursorContext, cursor_context
from intarsia.grammars.lexer import indent_width, leading_ws
from intarsia.grammars.postprocess import postprocess
from intarsia.grammars.scope import MAX_TOKENS_BLOCK, MAX_TOKENS_LINE, Scope, ScopeDecision, scope_for_context
from intarsia.model.engine import FINISH_CANCELLED, FINISH_LENGTH, Engine, GenerationRequest
from intarsia.model.errors import IntarsiaError
from intarsia.model.fim import FimFormat, RepoFile

from .documents import Snapshot, line_content_end
from .prompt import PromptBudget, PromptParts, build_prompt

log = logging.getLogger(__name__)


class ContextSource(Protocol):
    def select(self, snapshot: Snapshot, budget_tokens: int, count_tokens: Callable[[str], int]) -> list[RepoFile]:
        ...


# Tokens per forward pass of a pre-fill: a request that arrives meanwhile waits for the chunk in progress (and,
# with onnxruntime-genai, so does the server's event loop: it holds the GIL during a pass). 32 tokens are ~0.35 s
# on two cores, at ~14 % less throughput than 64, spent in idle time.
PREFILL_CHUNK = 32


@dataclass(frozen=True)
class QuickStart:
    """A first suggestion at a cold place from a short prompt: when more than `cold_tokens` of the full prompt
    would have to be computed (no KV cache holds them), the engine gets the same repository context (cached per
    file) and only `window_tokens` of the file around the cursor, or the window alone when that context is not
    cached either (a file seen for the first time), and at most `max_new_tokens` are generated; the full prompt is
    pre-filled afterwards."""

    window_tokens: int = 256
    cold_tokens: int = 384
    quantum: int = 8  # lines: the short window's start moves in small steps
    max_new_tokens: int = 48  # the first answer comes sooner; the next request (a warm prompt) may say more


@dataclass(frozen=True)
class PipelineOptions:
    max_tokens: int = 128
    multiline: str = "auto"
    budget: PromptBudget = field(default_factory=PromptBudget)
    repo_name: Optional[str] = None
    adapter: Optional[str] = None
    quick: Optional[QuickStart] = None


@dataclass(frozen=True)
class StageTimings:
    scope_ms: float = 0.0
    context_ms: float = 0.0
    prompt_ms: float = 0.0
    engine_ms: float = 0.0
    first_token_ms: float = 0.0
    post_ms: float = 0.0
    total_ms: float = 0.0

    def to_json(self) -> dict:
        return {k: round(v, 2) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class CompletionOutcome:
    text: str
    reason: str
    scope: str = "none"
    raw: str = ""
    finish_reason: str = ""
    timings: StageTimings = StageTimings()
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV cache the engine kept from the previous request
    new_tokens: int = 0
    # Forward passes after the first token when the engine decodes with prompt-lookup drafts (fewer than
    # new_tokens - 1 when drafts were accepted); None for other engines.
    decode_passes: Optional[int] = None
    context_files: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    cancelled: bool = False
    engine_called: bool = False
    quick: bool = False  # answered from the short prompt (`QuickStart`); the full one is worth pre-filling

    def to_json(self) -> dict:
        return {"text": self.text, "reason": self.reason, "scope": self.scope, "finish_reason": self.finish_reason,
                "timings": self.timings.to_json(), "prompt_tokens": self.prompt_tokens,
                "reused_tokens": self.reused_tokens, "new_tokens": self.new_tokens,
                "decode_passes": self.decode_passes, "context_files": list(self.context_files),
                "rules": list(self.rules), "cancelled": self.cancelled, "quick": self.quick}


def should_complete(snapshot: Snapshot, options: PipelineOptions,
                    cursor: Optional[CursorContext] = None) -> ScopeDecision:
    """The scope at the cursor (NONE: no completion here), adjusted to the multi-line setting. `cursor`: what the
    grammar says about the cursor, built once per completion and handed on to post-processing."""
    if cursor is None:
        cursor = cursor_context(snapshot.text, snapshot.offset, snapshot.language, snapshot.tree)
    d = scope_for_context(cursor, invoked=snapshot.invoked)
    if options.multiline == "never" and d.scope is Scope.BLOCK:
        return ScopeDecision(Scope.LINE, d.reason + " (multiline: never)", min(d.max_new_tokens, MAX_TOKENS_LINE),
                             stop=d.stop, max_lines=1, indent_floor=d.indent_floor)
    if options.multiline == "always" and d.scope is Scope.LINE:
        le = line_content_end(snapshot.text, snapshot.offset)
        if snapshot.text[snapshot.offset:le].strip() == "":
            return ScopeDecision(Scope.BLOCK, d.reason + " (multiline: always)", MAX_TOKENS_BLOCK, stop=d.stop,
                                 indent_floor=d.indent_floor)
    return d


DIVERGED = "diverged from what was typed since"  # the reason of a generation `TypedSince` stopped


class TypedSince:
    """What the user has typed at a generation's cursor since its snapshot, shared by the event loop and the model
    thread while the generation runs.

    The loop sets `typed` when a request types ahead of the generation (and joins it); the model thread appends
    each streamed piece to `raw`. As soon as the two disagree, no request can be answered from this generation
    any more (the typed-ahead cache shows a suggestion only to a user who typed its first characters), so it is
    stopped at its next token instead of after its last: on a CPU, the half second or more that a whole line
    takes, while the user types on and the next generation waits. Plain attribute assignments of `str` values:
    a stale read only delays the stop by a token.

    `at_line_start`: the snapshot's cursor has only indentation before it on its line, where post-processing
    may drop or change the model's leading whitespace: it is then not compared."""

    def __init__(self, at_line_start: bool = False):
        self.at_line_start = at_line_start
        self.typed = ""
        self.raw = ""

    def disagrees(self) -> bool:
        typed, raw = self.typed, self.raw
        if not typed or not raw:
            return False
        if self.at_line_start:
            typed, raw = typed.lstrip(" \t"), raw.lstrip(" \t")
            if not typed or not raw:
                return False
        n = min(len(typed), len(raw))
        return typed[:n] != raw[:n]


class _EarlyStop:
    """Watches streamed text and sets the generation's event once the scope needs no more lines: `max_lines`
    lines with content, or (Python blocks) a line after the first indented at or below `indent_floor`; or once
    the text disagrees with what the user typed since (`TypedSince`: `diverged`)."""

    def __init__(self, event: threading.Event, decision: ScopeDecision, cursor_line_has_content: bool,
                 first_line: Optional[Callable[[str], None]] = None, typed: Optional[TypedSince] = None):
        self.event = event
        self.typed = typed
        self.diverged = False
        self.max_lines = decision.max_lines
        self.floor = decision.indent_floor
        self.cursor_line_has_content = cursor_line_has_content
        self.first_line = first_line  # called once with the text up to the first line with content, when more follow
        self.text = ""
        self.buf = ""
        self.lines = 0
        self.content_lines = 0
        self.stopped = False

    def __call__(self, piece: str) -> None:
        if self.stopped or self.diverged:
            return
        self.text += piece
        self.buf += piece
        if self.typed is not None:
            self.typed.raw = self.text
            if self.typed.disagrees():
                self.diverged = True
                self.event.set()
                return
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            first = self.lines == 0
            self.lines += 1
            if line.strip() or (first and self.cursor_line_has_content):
                self.content_lines += 1
                if not first and self.floor is not None and indent_width(leading_ws(line)) <= self.floor:
                    self._stop()
                    return
            if self.max_lines is not None and self.content_lines >= self.max_lines:
                self._stop()
                return
            if self.content_lines == 1 and line.strip() and self.first_line is not None:
                done, self.first_line = self.first_line, None
                done(self.text[:len(self.text) - len(self.buf)])

    def _stop(self) -> None:
        self.stopped = True
        self.event.set()


def _log_outcome(snapshot: Snapshot, out: CompletionOutcome) -> None:
    t = out.timings
    log.info(
        "completion %s@%d v%d: %s; scope %s, context %.1f ms (%d files), prompt %.1f ms (%d tokens, %d reused), "
        "engine %.1f ms (first token %.1f ms, %d tokens%s, %s), post %.1f ms, total %.1f ms, %d chars",
        snapshot.path or snapshot.uri, snapshot.offset, snapshot.version, out.reason, out.scope, t.context_ms,
        len(out.context_files), t.prompt_ms, out.prompt_tokens, out.reused_tokens, t.engine_ms, t.first_token_ms,
        out.new_tokens, "" if out.decode_passes is None else f", {out.decode_passes} decode passes",
        out.finish_reason or "-", t.post_ms, t.total_ms, len(out.text))


def context_files(snapshot: Snapshot, engine: Engine, options: PipelineOptions,
                  context: Optional[ContextSource]) -> list[RepoFile]:
    """Repository context for the snapshot within `options.budget.context` (none when it fails: context is an
    improvement, never a reason to lose the completion)."""
    if context is None or options.budget.context <= 0:
        return []
    try:
        return context.select(snapshot, options.budget.context, engine.count_tokens)
    except Exception:
        log.warning("repository context failed", exc_info=True)
        return []


def prompt_parts(snapshot: Snapshot, engine: Engine, fim_format: FimFormat, options: PipelineOptions,
                 files: list[RepoFile]) -> PromptParts:
    """The full prompt at the cursor, within the budget."""
    return build_prompt(fim_format, engine.count_tokens, snapshot.text, snapshot.offset, budget=options.budget,
                        context_files=files, path=snapshot.path, repo_name=options.repo_name)


def quick_parts(snapshot: Snapshot, engine: Engine, fim_format: FimFormat, options: PipelineOptions,
                files: list[RepoFile], full: PromptParts) -> Optional[PromptParts]:
    """The short prompt (`QuickStart`) when more than `cold_tokens` of the full one are not cached, else None:
    the window with the repository context when that context is cached (at most `cold_tokens` left to compute),
    else whichever of the window with or without it leaves the fewest tokens to compute."""
    q = options.quick
    if q is None:
        return None
    cold = full.prompt_tokens - engine.cached_tokens(full.prompt, adapter=options.adapter)
    if cold <= q.cold_tokens:
        return None
    best, best_cold = None, cold
    for with_files in ((files, []) if files else (files,)):
        short = build_prompt(fim_format, engine.count_tokens, snapshot.text, snapshot.offset, budget=options.budget,
                             context_files=with_files, path=snapshot.path, repo_name=options.repo_name,
                             window_tokens=q.window_tokens, quantum=q.quantum)
        short_cold = short.prompt_tokens - engine.cached_tokens(short.prompt, adapter=options.adapter)
        if short_cold <= q.cold_tokens:
            return short  # (the first that is warm enough: the one with the repository context when it is)
        if short_cold < best_cold:
            best, best_cold = short, short_cold
    return best


def prefill_completion(snapshot: Snapshot, *, engine: Engine, fim_format: FimFormat,
                       options: PipelineOptions = PipelineOptions(), cancel: Optional[threading.Event] = None,
                       context: Optional[ContextSource] = None) -> int:
    """Pre-warm: compute the KV cache of the prompt a completion at this cursor would send (the short one first
    when `options.quick` applies, then the full one), stopping at `cancel`. Returns the tokens computed."""
    files = context_files(snapshot, engine, options, context)
    full = prompt_parts(snapshot, engine, fim_format, options, files)
    done = 0
    short = quick_parts(snapshot, engine, fim_format, options, files, full) if options.quick else None
    for parts in ((short, full) if short is not None else (full,)):
        if cancel is not None and cancel.is_set():
            break
        done += engine.prefill(parts.prompt, adapter=options.adapter, cancel=cancel,
                               reserve=max(options.max_tokens, 64), chunk=PREFILL_CHUNK)
    return done


def run_completion(
    snapshot: Snapshot,
    *,
    engine: Engine,
    fim_format: FimFormat,
    options: PipelineOptions = PipelineOptions(),
    cancel: Optional[threading.Event] = None,
    context: Optional[ContextSource] = None,
    on_first_line: Optional[Callable[[str], None]] = None,
    typed: Optional[TypedSince] = None,
) -> CompletionOutcome:
    """One completion at `snapshot.offset` (see the module docstring). Never raises for engine failures
    (`IntarsiaError`): they become an empty outcome whose reason says what failed.

    `on_first_line`: for a block, called (on this thread, while the engine goes on) with the suggestion's first
    line as soon as it is generated and fits where it goes, post-processed like a one-line suggestion: someone who
    typed ahead of this generation can be shown it before the block is done.

    `typed`: what the user typed at the cursor since the snapshot, updated by the caller while this runs; the
    generation stops as soon as its text disagrees with it (a cancelled outcome, reason "diverged")."""
    t0 = time.perf_counter()
    cancel = cancel if cancel is not None else threading.Event()
    cursor = cursor_context(snapshot.text, snapshot.offset, snapshot.language, snapshot.tree)
    decision = should_complete(snapshot, options, cursor)
    t_scope = time.perf_counter()
    if decision.scope is Scope.NONE:
        out = CompletionOutcome("", f"no completion: {decision.reason}", "none",
                                timings=StageTimings(scope_ms=(t_scope - t0) * 1000, total_ms=(t_scope - t0) * 1000))
        log.debug("completion %s@%d: %s", snapshot.path or snapshot.uri, snapshot.offset, out.reason)
        return out

    files = context_files(snapshot, engine, options, context)
    t_ctx = time.perf_counter()
    parts = prompt_parts(snapshot, engine, fim_format, options, files)
    quick = False
    if options.quick is not None:
        short = quick_parts(snapshot, engine, fim_format, options, files, parts)
        if short is not None:
            parts, quick = short, True
    t_prompt = time.perf_counter()
    ls = snapshot.text.rfind("\n", 0, snapshot.offset) + 1

    def first_line(raw: str) -> None:
        try:
            post = postprocess(snapshot.text, snapshot.offset, raw, language=snapshot.language, scope=Scope.LINE,
                               truncated=False, context=cursor)
        except Exception:  # (never at the cost of the block being generated)
            log.warning("checking a block's first line failed", exc_info=True)
            return
        line = post.text.rstrip("\r\n") if post.valid else ""
        if line.strip() and "\n" not in line and on_first_line is not None:
            on_first_line(line)

    watcher = _EarlyStop(cancel, decision, bool(snapshot.text[ls:snapshot.offset].strip()),
                         first_line if on_first_line is not None and decision.scope is Scope.BLOCK else None, typed)
    stops = tuple(dict.fromkeys((*fim_format.stop_strings, *decision.stop)))
    max_new = min(decision.max_new_tokens, options.max_tokens)
    if quick and options.quick is not None:
        max_new = min(max_new, options.quick.max_new_tokens)
    req = GenerationRequest(prompt=parts.prompt, max_new_tokens=max_new, stop=stops, adapter=options.adapter)
    timings_common = dict(scope_ms=(t_scope - t0) * 1000, context_ms=(t_ctx - t_scope) * 1000,
                          prompt_ms=(t_prompt - t_ctx) * 1000)
    if cancel.is_set():
        return CompletionOutcome("", "cancelled before the engine ran", decision.scope.value, cancelled=True,
                                 timings=StageTimings(**timings_common), prompt_tokens=parts.prompt_tokens,
                                 context_files=parts.context_files)
    try:
        res = engine.generate(req, cancel=cancel, on_text=watcher)
    except IntarsiaError as e:
        t_eng = time.perf_counter()
        log.warning("engine failed: %s", e)
        out = CompletionOutcome("", f"engine error: {e}", decision.scope.value,
                                timings=StageTimings(**timings_common, engine_ms=(t_eng - t_prompt) * 1000,
                                                     total_ms=(t_eng - t0) * 1000),
                                prompt_tokens=parts.prompt_tokens, context_files=parts.context_files,
                                engine_called=True)
        _log_outcome(snapshot, out)
        return out
    t_eng = time.perf_counter()
    first_ms = res.timings.first_token_s * 1000
    cancelled = watcher.diverged or (res.finish_reason == FINISH_CANCELLED and not watcher.stopped)
    if cancelled:
        why = DIVERGED if watcher.diverged else "cancelled"
        out = CompletionOutcome("", why, decision.scope.value, raw=res.text, finish_reason=res.finish_reason,
                                timings=StageTimings(**timings_common, engine_ms=(t_eng - t_prompt) * 1000,
                                                     first_token_ms=first_ms, total_ms=(t_eng - t0) * 1000),
                                prompt_tokens=parts.prompt_tokens, reused_tokens=res.timings.reused_tokens,
                                new_tokens=res.timings.new_tokens, context_files=parts.context_files,
                                cancelled=True, engine_called=True)
        _log_outcome(snapshot, out)
        return out
    # Stopped by the token limit or by the early stop: the last line may be unfinished.
    truncated = res.finish_reason == FINISH_LENGTH or watcher.stopped
    post = postprocess(snapshot.text, snapshot.offset, res.text, language=snapshot.language, scope=decision.scope,
                       truncated=truncated, context=cursor)
    text = post.text if post.valid else ""
    if decision.scope is Scope.LINE and text.endswith("\n") and "\n" not in text.rstrip("\r\n"):
        # One line: the document already has the line break (or it is the end of the file).
        text = text.rstrip("\r\n")
    t_post = time.perf_counter()
    finish = "early-stop" if watcher.stopped else res.finish_reason
    out = CompletionOutcome(
        text=text,
        reason=post.reason,
        scope=decision.scope.value,
        raw=res.text,
        finish_reason=finish,
        timings=StageTimings(**timings_common, engine_ms=(t_eng - t_prompt) * 1000, first_token_ms=first_ms,
                             post_ms=(t_post - t_eng) * 1000, total_ms=(t_post - t0) * 1000),
        prompt_tokens=res.timings.prompt_tokens or parts.prompt_tokens,
        reused_tokens=res.timings.reused_tokens,
        new_tokens=res.timings.new_tokens,
        decode_passes=res.extra.get("lookup_passes"),
        context_files=parts.context_files,
        rules=tuple(post.rules),
        engine_called=True,
        quick=quick,
    )
    _log_outcome(snapshot, out)
    return out


__all__ = ["ContextSource", "PipelineOptions", "StageTimings", "CompletionOutcome", "TypedSince", "DIVERGED",
           "should_complete", "run_completion"]
