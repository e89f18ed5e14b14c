"""Model work off the event loop: the executor, cancellation, stale versions, debounce, and the session.

`ModelWorker` owns one `ThreadPoolExecutor(max_workers=1)`: every engine call (loading, completions,
function bodies) runs there, one at a time, never on pygls' own pool (which also reads stdin). A job has a
key (the document URI); submitting a newer job with the same key cancels the older one: its cancel event is
set (the engines check it before every token) and, if it has not started, it never runs.

`Session` is the language server without the protocol: open documents, settings, the engine, repository
context, the typed-ahead cache, speculation after accepts and the acceptance log. `lsp.py` translates LSP
messages into calls of its methods, on the event loop. A completion:

1. snapshots the document on the event loop (text, version, parse tree copy, other open documents);
2. answers from the typed-ahead cache (or a speculative suggestion) when it can, with no model call;
3. waits an adaptive debounce (`Debouncer`) unless the user invoked it explicitly, and gives up if the
   document changed or a newer request arrived meanwhile;
4. runs `pipeline.run_completion` on the model thread; `$/cancelRequest` or a newer request cancels it;
5. drops the result if the document's version changed meanwhile (it still goes into the cache).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from intarsia.model.errors import IntarsiaError

from . import pipeline
from .acceptance import AcceptanceLog, AcceptanceTracker, Anchor
from .cache import TypedAheadCache
from .context import ContextProvider, RepoIndex
from .engines import LoadedEngine, load_engine, swap_trained_adapter
from .settings import Settings, parse_settings

log = logging.getLogger(__name__)

TRAINED_CHECK_SECONDS = 1.0  # how often a request may look for a newly promoted trained adapter


# ------------------------------------------------------------------------------------------------ executor


class JobCancelled(Exception):
    """The job was cancelled before it started."""


@dataclass(eq=False)
class Job:
    key: str
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Optional[concurrent.futures.Future] = None
    superseded: bool = False
    started: bool = False


class ModelWorker:
    """One thread for all model work; a newer job with the same key cancels the older one."""

    def __init__(self, name: str = "intarsia-model"):
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, key: str, fn: Callable[[threading.Event], Any], *, replace: bool = True) -> Job:
        job = Job(key)
        with self._lock:
            if self._closed:
                raise RuntimeError("the model worker is shut down")
            old = self._jobs.get(key)
            if old is not None and replace:
                old.superseded = True
                old.cancel.set()
                if old.future is not None:
                    old.future.cancel()
            self._jobs[key] = job
            job.future = self._executor.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[threading.Event], Any]) -> Any:
        try:
            if job.cancel.is_set():
                raise JobCancelled(job.key)
            job.started = True
            return fn(job.cancel)
        finally:
            with self._lock:
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]

    def cancel(self, key: str) -> bool:
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            return False
        job.cancel.set()
        if job.future is not None:
            job.future.cancel()
        return True

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def shutdown(self, wait: bool = False) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for j in jobs:
            j.cancel.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)


class Debouncer:
    """How long to wait before starting a completion, from the rhythm of recent edits.

    It keeps an exponential average of the intervals between edits. A request right after an edit waits until
    the next edit is overdue (1.5 average intervals after the last one), at most `max_s`: fast typing waits a
    little, a pause (or the first edit) much less, so no model work is started for text about to change.
    """

    def __init__(self) -> None:
        self.last: Optional[float] = None
        self.ema: Optional[float] = None

    def on_change(self, now: float) -> None:
        if self.last is not None:
            interval = now - self.last
            if interval < 2.0:  # longer gaps are pauses, not typing rhythm
                self.ema = interval if self.ema is None else 0.7 * self.ema + 0.3 * interval
        self.last = now

    def delay(self, now: float, max_s: float) -> float:
        if max_s <= 0 or self.last is None:
            return 0.0
        since = now - self.last
        expected = 1.5 * self.ema if self.ema is not None else max_s
        return max(0.0, min(max_s, expected - since))


# ------------------------------------------------------------------------------------------------ session


class UI(Protocol):
    """What the session asks of the client (implemented by lsp.py; always called on the event loop)."""

    def show_message(self, level: str, message: str) -> None: ...

    def log_message(self, level: str, message: str) -> None: ...

    async def progress_begin(self, title: str, message: str) -> Optional[str]: ...

    def progress_report(self, token: Optional[str], message: str, percentage: Optional[int]) -> None: ...

    def progress_end(self, token: Optional[str], message: str) -> None: ...


class NullUI:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def show_message(self, level: str, message: str) -> None:
        self.messages.append((level, message))

    def log_message(self, level: str, message: str) -> None:
        self.messages.append((level, message))

    async def progress_begin(self, title: str, message: str) -> Optional[str]:
        return None

    def progress_report(self, token: Optional[str], message: str, percentage: Optional[int]) -> None:
        pass

    def progress_end(self, token: Optional[str], message: str) -> None:
        pass


@dataclass(frozen=True)
class Suggestion:
    id: str
    text: str
    uri: str
    version: int
    offset: int
    source: str  # "model" | "cache" | "speculation"
    scope: str
    latency_ms: float


@dataclass(frozen=True)
class FunctionEdit:
    ok: bool
    reason: str
    uri: str = ""
    version: int = 0
    start: tuple[int, int] = (0, 0)  # LSP positions in the session's encoding
    end: tuple[int, int] = (0, 0)
    new_text: str = ""
    name: str = ""


@dataclass
class _Speculation:
    text: str
    offset: int
    job: Job
    done: Optional[asyncio.Future] = None


def uri_to_path(uri: str) -> Optional[str]:
    p = urllib.parse.urlparse(uri)
    if p.scheme != "file":
        return None
    path = urllib.request.url2pathname(urllib.parse.unquote(p.path))
    if p.netloc and p.netloc != "localhost":
        path = f"//{p.netloc}{path}"
    return path


class Session:
    """See the module docstring. Every method is called on the event loop thread."""

    def __init__(self, *, settings: Settings = Settings(), root: Optional[str] = None, encoding: str = "utf-16",
                 ui: Optional[UI] = None):
        self.settings = settings
        self.root = os.path.realpath(root) if root else None
        self.repo_name = os.path.basename(self.root) if self.root else None
        self.encoding = encoding if encoding in pipeline.ENCODINGS else "utf-16"
        self.ui: UI = ui or NullUI()
        self.documents = pipeline.DocumentStore()
        self.worker = ModelWorker()
        self.aux = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="intarsia-aux")
        self.cache = TypedAheadCache()
        self.index: Optional[RepoIndex] = RepoIndex(self.root) if self.root else None
        self.context = ContextProvider(self.index)
        self.tracker = AcceptanceTracker(AcceptanceLog(self.root, enabled=settings.acceptance_log))
        self.loaded: Optional[LoadedEngine] = None
        self.engine_state = "idle"  # idle | loading | ready | failed
        self.engine_error: Optional[str] = None
        self.counters: dict[str, int] = {k: 0 for k in (
            "requests", "completions", "engine_calls", "cache_hits", "speculative_hits", "speculations",
            "cancelled", "superseded", "stale", "not_ready", "empty", "skipped")}
        self.last: Optional[dict] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._debouncers: dict[str, Debouncer] = {}
        self._seq: dict[str, int] = {}
        self._speculation: dict[str, _Speculation] = {}
        self._recent: "OrderedDict[str, pipeline.NeighborDoc]" = OrderedDict()
        self._shown_errors: set[str] = set()
        self._load_gen = 0
        self._load_task: Optional[asyncio.Task] = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._index_cancel = threading.Event()
        self._closed = False
        self._trained_checked = 0.0
        self._swap_job: Optional[Job] = None

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start loading the engine and indexing the workspace (both in the background)."""
        self._loop = asyncio.get_running_loop()
        if self.index is not None and self.settings.context_budget_tokens > 0:
            self.aux.submit(self._build_index)
        self.reload()

    def _build_index(self) -> None:
        try:
            self.index.build(self._index_cancel)
        except Exception:
            log.warning("indexing %s failed", self.root, exc_info=True)

    def reload(self) -> "asyncio.Task":
        self._loop = self._loop or asyncio.get_running_loop()
        self._load_gen += 1
        self.engine_state = "loading"
        self.engine_error = None
        self.cache.clear()
        self._load_task = self._loop.create_task(self._load(self._load_gen, self.settings))
        return self._load_task

    async def _load(self, gen: int, settings: Settings) -> None:
        token = await self.ui.progress_begin("Intarsia", f"loading the {settings.engine} engine")
        loop = asyncio.get_running_loop()

        def progress(message: str, pct: Optional[int]) -> None:
            try:
                loop.call_soon_threadsafe(self.ui.progress_report, token, message, pct)
            except RuntimeError:
                pass

        def work(cancel: threading.Event) -> LoadedEngine:
            old, self.loaded = self.loaded, None
            if old is not None:
                old.engine.close()
            return load_engine(settings, progress=progress, cancel=cancel, workspace=self.root)

        t0 = time.perf_counter()
        job = self.worker.submit("__load__", work)
        try:
            loaded = await self._result(job)
        except IntarsiaError as e:
            self._load_failed(gen, str(e), token)
            return
        except Exception as e:  # an unexpected failure: say so, keep serving (empty answers)
            log.exception("loading the engine failed")
            self._load_failed(gen, f"unexpected error: {type(e).__name__}: {e}", token)
            return
        if loaded is None or gen != self._load_gen:
            if loaded is not None:
                self.worker.submit("__close__", lambda c: loaded.engine.close(), replace=False)
            self.ui.progress_end(token, "superseded")
            return
        self.loaded = loaded
        self.engine_state = "ready"
        log.info("engine ready: %s (%.1f s)", loaded.description, time.perf_counter() - t0)
        self.ui.progress_end(token, f"ready: {loaded.description}")

    def _load_failed(self, gen: int, message: str, token: Optional[str]) -> None:
        if gen == self._load_gen:
            self.engine_state = "failed"
            self.engine_error = message
        self.ui.progress_end(token, "failed")
        log.error("cannot load the engine: %s", message)
        self.show_once("error", f"Intarsia: {message}")

    def check_trained_adapter(self, *, force: bool = False) -> Optional[Job]:
        """Swap to the adapter `intarsia train` promoted (or rolled back to) for this workspace, if it changed.

        One stat of the store's pointer, at most once a second; the swap itself runs on the model thread between
        two requests (load the new adapter, make it the default, unload the old one), so no request is dropped
        and none sees half a swap. Suggestions cached from the old adapter are forgotten."""
        loaded = self.loaded
        if loaded is None or loaded.store is None or self.engine_state != "ready":
            return None
        now = time.monotonic()
        if not force and now - self._trained_checked < TRAINED_CHECK_SECONDS:
            return None
        self._trained_checked = now
        if self._swap_job is not None and not self._swap_job.future.done():
            return self._swap_job
        if loaded.store.stamp() == loaded.trained_stamp:
            return None
        loop = self._loop

        def work(cancel: threading.Event) -> Optional[str]:
            return swap_trained_adapter(loaded)

        def done(fut: concurrent.futures.Future) -> None:
            exc = fut.exception() if not fut.cancelled() else None
            if exc is not None:
                loaded.trained_stamp = loaded.store.stamp()  # do not retry a broken adapter on every request
                log.warning("cannot swap to the newly promoted adapter: %s", exc)
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.cache.clear)

        job = self.worker.submit("__adapter__", work, replace=False)
        job.future.add_done_callback(done)
        self._swap_job = job
        self.cache.clear()
        return job

    def show_once(self, level: str, message: str) -> None:
        if message in self._shown_errors:
            return
        self._shown_errors.add(message)
        self.ui.show_message(level, message)

    async def shutdown(self) -> None:
        self._closed = True
        self._index_cancel.set()
        for h in list(self._timers):
            h.cancel()
        self._timers.clear()
        loaded, self.loaded = self.loaded, None
        self.engine_state = "idle"
        if loaded is not None:
            try:
                job = self.worker.submit("__close__", lambda c: loaded.engine.close(), replace=False)
                await asyncio.wait_for(self._result(job), timeout=5)
            except Exception:
                log.debug("closing the engine failed", exc_info=True)
        self.worker.shutdown(wait=False)
        self.aux.shutdown(wait=False, cancel_futures=True)

    # ---- settings -------------------------------------------------------------------------------------------

    def update_settings(self, raw: Any, *, reload: bool = True) -> list[str]:
        new, warnings = parse_settings(raw, self.settings)
        for w in warnings:
            log.warning("settings: %s", w)
        old = self.settings
        self.settings = new
        self.tracker.log.enabled = new.acceptance_log
        if new.context_budget_tokens != old.context_budget_tokens:
            self.context.invalidate()
        if reload and new.engine_key() != old.engine_key() and self._loop is not None:
            self.reload()
        return warnings

    def options(self) -> pipeline.PipelineOptions:
        s = self.settings
        suffix = s.suffix_budget_tokens
        if suffix is None:  # auto: short on a CPU, where the suffix is re-read on every keystroke
            engine = self.loaded.engine if self.loaded is not None else None
            on_cpu = getattr(engine, "provider", None) == "cpu"
            suffix = pipeline.SUFFIX_MAX_TOKENS_CPU if on_cpu else pipeline.SUFFIX_MAX_TOKENS
        return pipeline.PipelineOptions(max_tokens=s.max_tokens, multiline=s.multiline,
                                        prompt_budget_tokens=s.prompt_budget_tokens,
                                        context_budget_tokens=s.context_budget_tokens, suffix_budget_tokens=suffix,
                                        repo_name=self.repo_name)

    # ---- documents ------------------------------------------------------------------------------------------

    def _paths(self, uri: str) -> tuple[Optional[str], Optional[str]]:
        fs = uri_to_path(uri)
        if fs is None:
            return None, None
        if self.root:
            try:
                return Path(fs).resolve().relative_to(self.root).as_posix(), fs
            except (ValueError, OSError):
                pass
        return os.path.basename(fs), fs

    def did_open(self, uri: str, language_id: str, version: int, text: str) -> None:
        rel, fs = self._paths(uri)
        doc = pipeline.Document(uri, text, version, language_id, path=rel, fs_path=fs,
                                max_parse_bytes=self.settings.max_document_bytes)
        self.documents.open(doc)
        if rel:
            self._recent.pop(rel, None)

    def did_change(self, uri: str, version: int, changes: Sequence[tuple[Optional[tuple[int, int, int, int]], str]]
                   ) -> bool:
        doc = self.documents.get(uri)
        if doc is None:
            log.warning("didChange for %s, which is not open: ignored", uri)
            return False
        try:
            for rng, text in changes:
                start, end = doc.apply_change(rng, text, self.encoding)
                self.tracker.on_change(uri, start, end, len(text))
        except Exception:
            # The text is no longer known to match the client's: forget the document rather than complete
            # against wrong text (it comes back with the next didOpen).
            log.exception("cannot apply a change to %s: the document is dropped until it is opened again", uri)
            self.did_close(uri)
            return False
        doc.version = version
        self._debouncers.setdefault(uri, Debouncer()).on_change(time.monotonic())
        return True

    def did_close(self, uri: str) -> None:
        doc = self.documents.close(uri)
        self.worker.cancel(uri)
        self._cancel_speculation(uri)
        self._debouncers.pop(uri, None)
        self._seq.pop(uri, None)
        self.cache.forget(uri)
        if doc is not None and doc.path and not doc.binary and doc.size_bytes < 512_000:
            self._recent[doc.path] = pipeline.NeighborDoc(doc.path, doc.version, doc.text)
            while len(self._recent) > 8:
                self._recent.popitem(last=False)

    def did_save(self, uri: str, text: Optional[str] = None) -> None:
        if self.index is None:
            return
        _, fs = self._paths(uri)
        if fs is None:
            return
        doc = self.documents.get(uri)
        if text is None and doc is not None:
            text = doc.text
        self.aux.submit(self.index.update_file, fs, text)

    def _neighbors(self, uri: str) -> tuple[pipeline.NeighborDoc, ...]:
        open_docs = self.documents.neighbors(uri)
        names = {n.path for n in open_docs}
        recent = [n for n in reversed(self._recent.values()) if n.path not in names]
        return open_docs + tuple(recent)

    # ---- completions ----------------------------------------------------------------------------------------

    def _result(self, job: Job) -> "asyncio.Future":
        """An asyncio future for a job's result: None when the job was cancelled or superseded."""
        loop = self._loop or asyncio.get_running_loop()
        af: asyncio.Future = loop.create_future()

        def settle(f: concurrent.futures.Future) -> None:
            if af.done():
                return
            if f.cancelled():
                af.set_result(None)
                return
            exc = f.exception()
            if isinstance(exc, JobCancelled):
                af.set_result(None)
            elif exc is not None:
                af.set_exception(exc)
            else:
                af.set_result(f.result())

        def done(f: concurrent.futures.Future) -> None:
            try:
                loop.call_soon_threadsafe(settle, f)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        job.future.add_done_callback(done)
        return af

    async def _await(self, job: Job, af: Optional[asyncio.Future] = None) -> Any:
        af = af if af is not None else self._result(job)
        try:
            return await asyncio.shield(af)
        except asyncio.CancelledError:
            # $/cancelRequest (or shutdown): stop the engine at its next token.
            job.cancel.set()
            if job.future is not None:
                job.future.cancel()
            self.counters["cancelled"] += 1
            raise

    def _position(self, uri: str, line: int, character: int) -> Optional[tuple[pipeline.Document, int]]:
        doc = self.documents.get(uri)
        if doc is None:
            log.info("completion for %s, which is not open: empty answer", uri)
            return None
        try:
            return doc, doc.offset_at(line, character, self.encoding, strict=True)
        except pipeline.PositionError as e:
            log.info("completion at %d:%d in %s: %s: empty answer", line, character, uri, e)
            return None

    def _completable(self, doc: pipeline.Document) -> Optional[str]:
        if not self.settings.language_enabled(doc.language_id):
            return f"language '{doc.language_id}' is disabled"
        if doc.binary:
            return "binary document"
        if doc.size_bytes > self.settings.max_document_bytes:
            return f"document larger than maxDocumentBytes ({doc.size_bytes} bytes)"
        return None

    def _suggest(self, doc: pipeline.Document, offset: int, text: str, sid: str, source: str, scope: str,
                 t0: float) -> Suggestion:
        latency = (time.perf_counter() - t0) * 1000
        s = Suggestion(sid, text, doc.uri, doc.version, offset, source, scope, latency)
        self.counters["completions"] += 1
        self.tracker.shown(sid, uri=doc.uri, path=doc.path, offset=offset, text=text, language=doc.language_id,
                           scope=scope, source=source, latency_ms=latency)
        return s

    async def complete(self, uri: str, line: int, character: int, *, invoked: bool = False) -> Optional[Suggestion]:
        """The suggestion at a position, or None (nothing to suggest, not ready, stale, superseded)."""
        t0 = time.perf_counter()
        self.counters["requests"] += 1
        found = self._position(uri, line, character)
        if found is None:
            self.counters["skipped"] += 1
            return None
        doc, offset = found
        why = self._completable(doc)
        if why is not None:
            log.debug("no completion in %s: %s", uri, why)
            self.counters["skipped"] += 1
            return None
        seq = self._seq[uri] = self._seq.get(uri, 0) + 1
        version, text = doc.version, doc.text
        self.check_trained_adapter()

        hit = self.cache.lookup(uri, text, offset)
        if hit is not None:
            self.worker.cancel(uri)  # a generation for an earlier position of this document is not needed
            self.counters["cache_hits"] += 1
            if hit.entry.source == "speculation":
                self.counters["speculative_hits"] += 1
            return self._suggest(doc, offset, hit.remaining, hit.entry.suggestion_id,
                                 "speculation" if hit.entry.source == "speculation" and hit.typed == 0 else "cache",
                                 "cached", t0)
        if self.engine_state != "ready" or self.loaded is None:
            self.counters["not_ready"] += 1
            return None

        spec = self._speculation.get(uri)
        if spec is not None and spec.offset == offset and spec.text == text:
            outcome = await self._await(spec.job, spec.done)
            source = "speculation"
            if outcome is not None:
                self.counters["speculative_hits"] += 1
        else:
            if spec is not None:
                self._cancel_speculation(uri)
            if not invoked:
                deb = self._debouncers.get(uri)
                delay = deb.delay(time.monotonic(), self.settings.debounce_ms / 1000.0) if deb else 0.0
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._seq.get(uri) != seq:
                    self.counters["superseded"] += 1
                    return None
                if self.documents.get(uri) is not doc or doc.version != version:
                    self.counters["stale"] += 1
                    return None
            snapshot = doc.snapshot(offset, invoked=invoked, neighbors=self._neighbors(uri))
            loaded = self.loaded
            options = self.options()

            def work(cancel: threading.Event) -> pipeline.CompletionOutcome:
                return pipeline.run_completion(snapshot, engine=loaded.engine, fim_format=loaded.fim_format,
                                               options=options, cancel=cancel, context=self.context)

            job = self.worker.submit(uri, work)
            outcome = await self._await(job)
            source = "model"
            if job.superseded:  # a newer request for this document cancelled this one
                self.counters["superseded"] += 1
                if outcome is not None and outcome.engine_called:
                    self.counters["engine_calls"] += 1
                return None
        if outcome is None:
            return None
        if outcome.engine_called and source == "model":
            self.counters["engine_calls"] += 1
        self.last = {"uri": uri, "offset": offset, "version": version, "source": source, **outcome.to_json()}
        sid = uuid.uuid4().hex[:12]
        if outcome.text:
            self.cache.put(uri, text, offset, outcome.text, sid)
        if self.documents.get(uri) is not doc or doc.version != version:
            self.counters["stale"] += 1
            log.debug("dropping a completion for %s v%d: the document is at v%d", uri, version, doc.version)
            return None
        if outcome.cancelled:
            return None
        if not outcome.text:
            self.counters["empty"] += 1
            return None
        return self._suggest(doc, offset, outcome.text, sid, source, outcome.scope, t0)

    def cancel_pending(self, uri: str) -> None:
        self.worker.cancel(uri)

    # ---- accepts and speculation ------------------------------------------------------------------------------

    def accept(self, sid: str, accepted_chars: Optional[int] = None) -> bool:
        shown = self.tracker.get(sid)
        anchor = self.tracker.accepted(sid, accepted_chars)
        if anchor is None or shown is None:
            return False
        self._schedule_checks(anchor)
        n = len(anchor.text) - (shown.offset - shown.origin)  # what this accept inserts at shown.offset
        self._speculate(shown.uri, shown.offset, shown.text[:n])
        return True

    def _schedule_checks(self, anchor: Anchor) -> None:
        """Check after each of `acceptanceCheckSeconds` whether the accepted text is still in the document."""
        if self._loop is None or not self.settings.acceptance_log:
            return
        checks = sorted(set(self.settings.acceptance_check_seconds))
        for after in checks:
            holder: dict[str, asyncio.TimerHandle] = {}

            def fire(after: float = after, last: bool = after == checks[-1], holder: dict = holder) -> None:
                self._timers.discard(holder.get("handle"))
                doc = self.documents.get(anchor.uri)
                text = doc.text if doc is not None else None
                if text is None:  # closed since: the saved file tells
                    fs = uri_to_path(anchor.uri)
                    try:
                        text = Path(fs).read_text(encoding="utf-8", errors="replace") if fs else None
                    except OSError:
                        text = None
                if not self._closed:
                    self.aux.submit(self.tracker.check, anchor, text, after)
                if last:
                    self.tracker.done(anchor)

            holder["handle"] = self._loop.call_later(after, fire)
            self._timers.add(holder["handle"])

    def _cancel_speculation(self, uri: str) -> None:
        spec = self._speculation.pop(uri, None)
        if spec is not None:
            spec.job.cancel.set()
            if spec.job.future is not None:
                spec.job.future.cancel()

    def _speculate(self, uri: str, offset: int, accepted: str) -> None:
        """Prepare the suggestion for the document as it is once `accepted` is inserted at `offset`."""
        doc = self.documents.get(uri)
        if doc is None or self.loaded is None or self.engine_state != "ready" or self._completable(doc):
            return
        text = doc.text
        if text[offset:offset + len(accepted)] == accepted:
            predicted = text  # the client applied the insertion before sending the accept
        else:
            predicted = text[:offset] + accepted + text[offset:]
        cursor = offset + len(accepted)
        self._cancel_speculation(uri)
        snap = pipeline.Snapshot(uri=uri, version=-1, text=predicted, offset=cursor, language_id=doc.language_id,
                                 language=doc.language, path=doc.path, tree=None, invoked=False,
                                 neighbors=self._neighbors(uri), fs_path=doc.fs_path)
        loaded = self.loaded
        options = self.options()

        def work(cancel: threading.Event) -> pipeline.CompletionOutcome:
            return pipeline.run_completion(snap, engine=loaded.engine, fim_format=loaded.fim_format, options=options,
                                           cancel=cancel, context=self.context)

        job = self.worker.submit("spec:" + uri, work)
        spec = _Speculation(predicted, cursor, job)
        spec.done = self._result(job)
        self._speculation[uri] = spec
        self.counters["speculations"] += 1

        def finished(f: asyncio.Future) -> None:
            if self._speculation.get(uri) is spec:
                del self._speculation[uri]
            if f.cancelled() or f.exception() is not None:
                return
            out = f.result()
            if out is not None and out.engine_called:
                self.counters["engine_calls"] += 1
            if out is not None and out.text:
                self.cache.put(uri, predicted, cursor, out.text, uuid.uuid4().hex[:12], source="speculation")

        spec.done.add_done_callback(finished)

    # ---- generateFunction ---------------------------------------------------------------------------------

    async def generate_function(self, uri: str, line: int, character: int) -> FunctionEdit:
        found = self._position(uri, line, character)
        if found is None:
            return FunctionEdit(False, "the document is not open or the position is outside it")
        doc, offset = found
        why = self._completable(doc)
        if why is not None:
            return FunctionEdit(False, why)
        if self.engine_state != "ready" or self.loaded is None:
            return FunctionEdit(False, f"the model is not ready ({self.engine_state})")
        snapshot = doc.snapshot(offset, invoked=True, neighbors=self._neighbors(uri))
        version = doc.version
        loaded = self.loaded
        options = self.options()

        def work(cancel: threading.Event) -> pipeline.FunctionOutcome:
            return pipeline.generate_function(snapshot, engine=loaded.engine, fim_format=loaded.fim_format,
                                              options=options, cancel=cancel, context=self.context)

        job = self.worker.submit("fn:" + uri, work)
        out = await self._await(job)
        if out is None:
            return FunctionEdit(False, "cancelled")
        if out.engine_called:
            self.counters["engine_calls"] += 1
        if not out.ok:
            return FunctionEdit(False, out.reason, uri, version, name=out.name)
        if self.documents.get(uri) is not doc or doc.version != version:
            self.counters["stale"] += 1
            return FunctionEdit(False, "the document changed while the body was generated", uri, version,
                                name=out.name)
        return FunctionEdit(True, out.reason, uri, version, doc.position_at(out.start, self.encoding),
                            doc.position_at(out.end, self.encoding), out.new_text, out.name)

    # ---- status ---------------------------------------------------------------------------------------------

    def status(self, uri: Optional[str] = None) -> dict:
        loaded = self.loaded
        out = {
            "state": self.engine_state,
            "error": self.engine_error,
            "engine": self.settings.engine,
            "model": loaded.description if loaded else None,
            "model_path": loaded.model_path if loaded else None,
            "fim_format": loaded.fim_format.name if loaded else None,
            "trained_adapter": loaded.trained_version if loaded else None,
            "fim_adapter": bool(loaded and loaded.base_adapter),
            "encoding": self.encoding,
            "root": self.root,
            "documents": len(self.documents),
            "counters": dict(self.counters),
            "cache": {"entries": len(self.cache), "hits": self.cache.hits, "misses": self.cache.misses},
            "acceptance": {**self.tracker.counts, "log": str(self.tracker.log.path),
                           "enabled": self.tracker.log.enabled},
            "index": self.index.stats() if self.index is not None else None,
            "pending": self.worker.pending(),
            "last": self.last,
            "settings": self.settings.to_json(),
        }
        if uri is not None:
            doc = self.documents.get(uri)
            out["document"] = None if doc is None else {
                "version": doc.version, "length": len(doc.text), "language": doc.language_id,
                "sha256": hashlib.sha256(doc.text.encode("utf-8", "surrogatepass")).hexdigest(),
                "parsed": doc.language is not None and doc.snapshot(0).tree is not None}
        return out


__all__ = ["ModelWorker", "Job", "JobCancelled", "Debouncer", "Session", "Suggestion", "FunctionEdit", "UI", "NullUI",
           "uri_to_path"]
