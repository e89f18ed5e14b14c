"""`Session`: the language server without the protocol.

It holds the open documents, the settings, the engine (through `host.EngineHost`), repository context, the
typed-ahead cache, speculation after accepts and the acceptance log. The LSP layer (`server.py`) translates
messages into calls of its methods. A completion:

1. snapshots the document on the event loop (text, version, parse tree copy, other open documents);
2. answers from the typed-ahead cache (or a speculative suggestion) when it can, with no model call;
3. waits an adaptive debounce (`Debouncer`) unless the user invoked it explicitly, and gives up if the
   document changed or a newer request arrived meanwhile;
4. runs `core.completion.run_completion` on the model thread (`executor.ModelWorker`); `$/cancelRequest` or a
   newer request cancels it;
5. drops the result if the document's version changed meanwhile (it still goes into the cache), else returns a
   `Suggestion` that carries the positions the client needs, so the protocol layer converts it without looking
   at the document again.

Threading rule: every `Session` method is called on the event loop thread; work on the engine runs in jobs on
the model thread, with a snapshot taken on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from intarsia.model.registry import DEFAULT_MODEL
from intarsia.server.core.acceptance import AcceptanceLog, AcceptanceTracker, Anchor
from intarsia.server.core.completion import (DIVERGED, CompletionOutcome, PipelineOptions, QuickStart, TypedSince,
                                             run_completion)
from intarsia.server.core.context import ContextProvider, RepoIndex
from intarsia.server.core.documents import ENCODINGS, Document, DocumentStore, NeighborDoc, PositionError, Snapshot
from intarsia.server.core.functions import FunctionOutcome, generate_function
from intarsia.server.core.verification import Verification

from .cache import TypedAheadCache
from .executor import Job, ModelWorker, background_executor, settled
from .host import UI, EngineHost, NullUI
from .prewarm import CURSOR_DELAY_S, EDIT_DELAY_S, OPEN_DELAY_S, Prewarmer
from .settings import Settings, parse_settings

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ typing rhythm


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


@dataclass(frozen=True)
class Suggestion:
    """A suggestion to show, with the positions the client needs (in the session's encoding)."""

    id: str
    text: str
    uri: str
    version: int
    offset: int
    source: str  # "model" | "cache" | "speculation"
    scope: str
    latency_ms: float
    position: tuple[int, int] = (0, 0)  # where the text is inserted (the cursor)
    word: str = ""  # the identifier characters right before the cursor (the completion list's filter)
    word_start: tuple[int, int] = (0, 0)  # where that word starts


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
    strategy: str = ""  # how the body was asked for (core.function_prompts.STRATEGIES)
    attempts: tuple[str, ...] = ()  # "strategy: outcome" of each strategy tried
    verification: Optional[Verification] = None  # the docstring examples' verdict (core.verification)


@dataclass(eq=False)
class _Inflight:
    job: Job
    text: str
    offset: int
    fut: "asyncio.Future"
    orphaned: bool = False  # its request was cancelled: nobody waits for it
    # Set (on the loop) when a block's first line is in the typed-ahead cache while the block is still generated.
    first_line: Optional["asyncio.Future"] = None
    # What was typed at its cursor since (set on the loop, read by the model thread): it stops when they disagree.
    typed: Optional[TypedSince] = None

    def typed_ahead_to(self, text: str, offset: int) -> bool:
        """Record that the document is now `text` with the cursor at `offset`, typed ahead of this generation's
        snapshot; False when what the generation has produced so far already disagrees with the typed characters
        (nobody can be shown it: stop it)."""
        if self.typed is None:
            return True
        self.typed.typed = text[self.offset:offset]
        return not self.typed.disagrees()

    def stop(self) -> None:
        self.job.cancel.set()
        if self.job.future is not None:
            self.job.future.cancel()


def _typed_ahead(old_text: str, old_offset: int, text: str, offset: int) -> bool:
    """Whether `text` is `old_text` with characters inserted at `old_offset` (the cursor moved to `offset`)."""
    return offset >= old_offset and len(text) - offset == len(old_text) - old_offset \
        and text[offset:] == old_text[old_offset:] and text[:old_offset] == old_text[:old_offset]


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
        self.encoding = encoding if encoding in ENCODINGS else "utf-16"
        self.ui: UI = ui or NullUI()
        self.documents = DocumentStore()
        self.worker = ModelWorker()
        self.aux = background_executor()  # indexing, acceptance checks: at a lower CPU priority
        self.cache = TypedAheadCache()
        self.index: Optional[RepoIndex] = RepoIndex(self.root) if self.root else None
        self.context = ContextProvider(self.index)
        self.tracker = AcceptanceTracker(AcceptanceLog(self.root, enabled=settings.acceptance_log))
        self.host = EngineHost(self.worker, self.ui, on_change=self.cache.clear,
                               on_error=lambda message: self.show_once("error", message))
        self.prewarm = Prewarmer(self.worker, snapshot_at=self._snapshot_at, engine=self._ready_engine,
                                 options=self.options, context=self.context,
                                 enabled=lambda: self.settings.prewarm and self.host.ready)
        self.counters: dict[str, int] = {k: 0 for k in (
            "requests", "completions", "engine_calls", "cache_hits", "speculative_hits", "speculations",
            "cancelled", "superseded", "stale", "not_ready", "empty", "skipped", "quick_starts", "joined",
            "joined_hits", "first_lines", "diverged")}
        self.last: Optional[dict] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._debouncers: dict[str, Debouncer] = {}
        self._seq: dict[str, int] = {}
        self._speculation: dict[str, _Speculation] = {}
        self._inflight: dict[str, _Inflight] = {}
        self._asked: dict[str, tuple[int, int]] = {}  # (version, offset) of each document's latest request
        self._recent: "OrderedDict[str, NeighborDoc]" = OrderedDict()
        self._shown_errors: set[str] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._index_cancel = threading.Event()
        self._closed = False

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
        return self.host.reload(self.settings.engine_spec(self.root))

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
        await self.host.close()
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

    def options(self) -> PipelineOptions:
        loaded = self.host.loaded
        device = loaded.engine.provider if loaded is not None else "cpu"
        # The short cold-start prompt pays on a CPU, where a whole prompt's prefill takes seconds.
        quick = None
        if device == "cpu" and self.settings.quick_start_tokens > 0:
            quick = QuickStart(window_tokens=self.settings.quick_start_tokens)
        return PipelineOptions(max_tokens=self.settings.max_tokens, multiline=self.settings.multiline,
                               budget=self.settings.budget(device), repo_name=self.repo_name, quick=quick)

    def _ready_engine(self) -> Optional[tuple]:
        loaded = self.host.loaded
        return (loaded.engine, loaded.fim_format) if self.host.ready else None

    def _snapshot_at(self, uri: str, offset: int, version: int) -> Optional[Snapshot]:
        """A snapshot for pre-warming, if the document is still at `version` and completable."""
        doc = self.documents.get(uri)
        if doc is None or doc.version != version or self._completable(doc) or offset > len(doc.text):
            return None
        return doc.snapshot(offset, neighbors=self._neighbors(uri))

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
        doc = Document(uri, text, version, language_id, path=rel, fs_path=fs,
                                max_parse_bytes=self.settings.max_document_bytes)
        self.documents.open(doc)
        if rel:
            self._recent.pop(rel, None)
        if self._loop is not None:  # the file's repository context and head, shared by its prompts
            self.prewarm.schedule(uri, 0, version, OPEN_DELAY_S)

    def did_change(self, uri: str, version: int, changes: Sequence[tuple[Optional[tuple[int, int, int, int]], str]]
                   ) -> bool:
        doc = self.documents.get(uri)
        if doc is None:
            log.warning("didChange for %s, which is not open: ignored", uri)
            return False
        cursor = None
        try:
            for rng, text in changes:
                start, end = doc.apply_change(rng, text, self.encoding)
                self.tracker.on_change(uri, start, end, len(text))
                cursor = start + len(text)  # where typing leaves the cursor (clients without cursor notices)
        except Exception:
            # The text is no longer known to match the client's: forget the document rather than complete
            # against wrong text (it comes back with the next didOpen).
            log.exception("cannot apply a change to %s: the document is dropped until it is opened again", uri)
            self.did_close(uri)
            return False
        doc.version = version
        self._debouncers.setdefault(uri, Debouncer()).on_change(time.monotonic())
        if cursor is not None and self._loop is not None:
            self.prewarm.schedule(uri, cursor, version, EDIT_DELAY_S)  # (cancelled by the request that follows)
        return True

    def did_move_cursor(self, uri: str, version: int, line: int, character: int) -> None:
        """`intarsia/didMoveCursor`: pre-warm the prompt at the new place (a stale version is ignored, and so is
        the place the last request of the document already computed: the cursor after a keystroke)."""
        doc = self.documents.get(uri)
        if doc is None or doc.version != version or self._loop is None:
            return
        try:
            offset = doc.offset_at(line, character, self.encoding, strict=True)
        except PositionError:
            return
        if self._asked.get(uri) == (version, offset):
            return
        self._left_behind(uri, doc.text, offset)
        if not (self.settings.speculate and self.settings.prewarm and self._speculate_enter(uri, offset)):
            # (after the speculation, a pre-fill here would run just when the user starts typing, and hold the
            # model thread and, through the GIL, the event loop for a chunk: the speculation warms this prefix)
            self.prewarm.schedule(uri, offset, version, CURSOR_DELAY_S)

    def _left_behind(self, uri: str, text: str, offset: int) -> None:
        """The cursor moved to `offset` of `uri`: generations nobody waits for (orphaned by a cancelled request) and
        speculations that the document at this cursor cannot use any more are stopped, so that the model thread
        is free for the new place at once (on a CPU such a generation is seconds)."""
        for u, flight in list(self._inflight.items()):
            if flight.orphaned and not flight.fut.done() and not (
                    u == uri and _typed_ahead(flight.text, flight.offset, text, offset)
                    and flight.typed_ahead_to(text, offset)):
                flight.stop()
        for u, spec in list(self._speculation.items()):
            # (kept: the speculation for what the user may type or accept here, and one typed ahead of)
            if u != uri or not (_typed_ahead(text, offset, spec.text, spec.offset)
                                or _typed_ahead(spec.text, spec.offset, text, offset)):
                self._cancel_speculation(u)

    def did_close(self, uri: str) -> None:
        doc = self.documents.close(uri)
        self.worker.cancel(uri)
        self._cancel_speculation(uri)
        self._debouncers.pop(uri, None)
        self._seq.pop(uri, None)
        self._asked.pop(uri, None)
        self.cache.forget(uri)
        self.prewarm.forget(uri)
        if doc is not None and doc.path and not doc.binary and doc.size_bytes < 512_000:
            self._recent[doc.path] = NeighborDoc(doc.path, doc.version, doc.text)
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
        self.context.refresh(uri)  # its repository context is chosen again at its next completion
        self.aux.submit(self.index.update_file, fs, text)

    def _neighbors(self, uri: str) -> tuple[NeighborDoc, ...]:
        open_docs = self.documents.neighbors(uri)
        names = {n.path for n in open_docs}
        recent = [n for n in reversed(self._recent.values()) if n.path not in names]
        return open_docs + tuple(recent)

    # ---- completions ----------------------------------------------------------------------------------------

    async def _await(self, job: Job, af: Optional[asyncio.Future] = None, *, keep: bool = False) -> Any:
        """The job's result; when the request is cancelled, the job is stopped unless it is a completion in flight
        or `keep` (a speculation): those go on for the next request to join."""
        af = af if af is not None else settled(job, asyncio.get_running_loop())
        try:
            return await asyncio.shield(af)
        except asyncio.CancelledError:
            self.counters["cancelled"] += 1
            flight = next((f for f in self._inflight.values() if f.job is job), None)
            if keep and not self._closed:
                pass  # its result goes to the typed-ahead cache; the next request joins it or stops it
            elif flight is not None and not self._closed:
                # $/cancelRequest while typing: the generation goes on (its result goes to the typed-ahead cache)
                # until the next request, which joins it if it only typed ahead, and stops it otherwise.
                flight.orphaned = True
            else:
                job.cancel.set()  # (a body, a speculation, shutdown: stop the engine at its next token)
                if job.future is not None:
                    job.future.cancel()
            raise

    def _track(self, uri: str, job: Job, text: str, offset: int, sid: str,
               first_line: Optional["asyncio.Future"] = None, typed: Optional[TypedSince] = None
               ) -> "asyncio.Future":
        """Follow a completion job: when it ends, its suggestion goes to the typed-ahead cache (also when its
        request was cancelled), and it is no longer in flight. `first_line`: set when the block's first line went
        to the cache ahead of the block (`_first_line_sink`); `typed`: the job's `TypedSince`."""
        fut = settled(job, asyncio.get_running_loop())
        flight = _Inflight(job, text, offset, fut, first_line=first_line, typed=typed)
        self._inflight[uri] = flight

        def ended(f: asyncio.Future) -> None:
            if self._inflight.get(uri) is flight:
                del self._inflight[uri]
            if f.cancelled() or f.exception() is not None:
                return
            out = f.result()
            if out is not None and out.text and not out.cancelled:
                self.cache.put(uri, text, offset, out.text, sid)
            if out is not None and out.reason == DIVERGED:
                self.counters["diverged"] += 1
            if flight.orphaned and out is not None and out.engine_called:
                self.counters["engine_calls"] += 1

        fut.add_done_callback(ended)
        return fut

    def _first_line_sink(self, uri: str, text: str, offset: int, sid: str) -> tuple[Callable[[str], None],
                                                                                   "asyncio.Future"]:
        """A callback for the model thread (`run_completion(on_first_line=)`) that puts a block's first line in
        the typed-ahead cache, on the loop, and the future it sets then."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def on_loop(line: str) -> None:
            if self._closed or done.done():
                return
            self.cache.put(uri, text, offset, line, sid)
            self.counters["first_lines"] += 1
            done.set_result(True)

        def on_first_line(line: str) -> None:  # (the model thread)
            loop.call_soon_threadsafe(on_loop, line)

        return on_first_line, done

    async def _join(self, uri: str, text: str, offset: int, version: int, doc: Document) -> Optional[bool]:
        """Before a new generation: a generation still running for `uri` that this request only typed ahead of
        (the same text with characters inserted at its cursor) is waited for, and its result answers from the
        cache; one for another place (or an orphaned one elsewhere) is stopped, and so is one whose text so far
        disagrees with what was typed (it stops itself when it comes to disagree while it is waited for). True
        when one was joined. A block's first line, once generated, answers at once when it agrees with what was
        typed (the block goes on to the cache for the next keys)."""
        for u, flight in list(self._inflight.items()):
            if flight.fut.done():
                continue
            if u == uri and _typed_ahead(flight.text, flight.offset, text, offset) \
                    and flight.typed_ahead_to(text, offset):
                self.counters["joined"] += 1
                try:
                    if flight.first_line is not None and not flight.first_line.done():
                        await asyncio.wait((flight.fut, flight.first_line), return_when=asyncio.FIRST_COMPLETED)
                        if not flight.fut.done() and self.cache.lookup(uri, text, offset) is not None:
                            return True
                    await asyncio.shield(flight.fut)
                except Exception:
                    return None
                return True
            if flight.orphaned or u == uri:
                flight.stop()
        return None

    def _position(self, uri: str, line: int, character: int) -> Optional[tuple[Document, int]]:
        doc = self.documents.get(uri)
        if doc is None:
            log.info("completion for %s, which is not open: empty answer", uri)
            return None
        try:
            return doc, doc.offset_at(line, character, self.encoding, strict=True)
        except PositionError as e:
            log.info("completion at %d:%d in %s: %s: empty answer", line, character, uri, e)
            return None

    def _completable(self, doc: Document) -> Optional[str]:
        if not self.settings.language_enabled(doc.language_id):
            return f"language '{doc.language_id}' is disabled"
        if doc.binary:
            return "binary document"
        if doc.size_bytes > self.settings.max_document_bytes:
            return f"document larger than maxDocumentBytes ({doc.size_bytes} bytes)"
        return None

    def _suggest(self, doc: Document, offset: int, text: str, sid: str, source: str, scope: str,
                 t0: float) -> Suggestion:
        latency = (time.perf_counter() - t0) * 1000
        ws = offset
        while ws > 0 and (doc.text[ws - 1].isalnum() or doc.text[ws - 1] == "_"):
            ws -= 1
        s = Suggestion(sid, text, doc.uri, doc.version, offset, source, scope, latency,
                       position=doc.position_at(offset, self.encoding), word=doc.text[ws:offset],
                       word_start=doc.position_at(ws, self.encoding))
        self.counters["completions"] += 1
        log.debug("suggestion at %s@%d v%d from %s in %.1f ms: %d chars", doc.path or doc.uri, offset, doc.version,
                  source, latency, len(text))
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
        self.prewarm.cancel()  # a request has the model thread before any pre-warm
        self._asked[uri] = (version, offset)

        hit = self.cache.lookup(uri, text, offset)
        if hit is not None:
            flight = self._inflight.get(uri)
            if flight is None or flight.fut.done() or not _typed_ahead(flight.text, flight.offset, text, offset):
                self.worker.cancel(uri)  # a generation for an earlier position of this document is not needed
            # (else it is the block whose first line answers here: it goes on, for the keys after that line)
            self.counters["cache_hits"] += 1
            if hit.entry.source == "speculation":
                self.counters["speculative_hits"] += 1
            return self._suggest(doc, offset, hit.remaining, hit.entry.suggestion_id,
                                 "speculation" if hit.entry.source == "speculation" and hit.typed == 0 else "cache",
                                 "cached", t0)
        if not self.host.ready:
            self.counters["not_ready"] += 1
            return None

        for other in [u for u in self._speculation if u != uri]:
            self._cancel_speculation(other)  # the document being edited goes first
        spec = self._speculation.get(uri)
        sid = uuid.uuid4().hex[:12]
        if spec is not None and spec.offset == offset and spec.text == text:
            outcome = await self._await(spec.job, spec.done, keep=True)
            source = "speculation"
            if outcome is not None:
                self.counters["speculative_hits"] += 1
        else:
            if spec is not None and not spec.done.done() and _typed_ahead(spec.text, spec.offset, text, offset):
                # Typed ahead of a speculation still running (Enter, then the first characters): its result,
                # when it agrees with what was typed, is the answer.
                self.counters["joined"] += 1
                try:
                    await asyncio.shield(spec.done)
                except Exception:
                    pass
                hit = self.cache.lookup(uri, text, offset)
                if hit is not None:
                    self.counters["cache_hits"] += 1
                    self.counters["speculative_hits"] += 1
                    return self._suggest(doc, offset, hit.remaining, hit.entry.suggestion_id, "speculation", "cached",
                                         t0)
                if self.documents.get(uri) is not doc or doc.version != version:
                    self.counters["stale"] += 1
                    return None
            elif spec is not None:
                self._cancel_speculation(uri)
            joined = await self._join(uri, text, offset, version, doc)
            if joined is not None:
                hit = self.cache.lookup(uri, text, offset)
                if hit is not None:  # the earlier generation, typed ahead of: its rest is the answer
                    self.counters["cache_hits"] += 1
                    self.counters["joined_hits"] += 1
                    return self._suggest(doc, offset, hit.remaining, hit.entry.suggestion_id, "cache", "cached", t0)
                if self.documents.get(uri) is not doc or doc.version != version:
                    self.counters["stale"] += 1
                    return None
            if not invoked and joined is None:
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
            loaded = self.host.loaded
            options = self.options()

            on_first_line, first_line = self._first_line_sink(uri, text, offset, sid)
            typed = TypedSince(at_line_start=not text[text.rfind("\n", 0, offset) + 1:offset].strip())

            def work(cancel: threading.Event) -> CompletionOutcome:
                return run_completion(snapshot, engine=loaded.engine, fim_format=loaded.fim_format,
                                      options=options, cancel=cancel, context=self.context,
                                      on_first_line=on_first_line, typed=typed)

            job = self.worker.submit(uri, work)
            fut = self._track(uri, job, text, offset, sid, first_line, typed)
            outcome = await self._await(job, fut)
            source = "model"
            if job.superseded:  # a newer request for this document cancelled this one
                self.counters["superseded"] += 1
                if outcome is not None and outcome.engine_called:
                    self.counters["engine_calls"] += 1
                return None
        if outcome is None:
            return None
        self.prewarm.completed(uri, outcome)
        if outcome.engine_called and source == "model":
            self.counters["engine_calls"] += 1
        self.last = {"uri": uri, "offset": offset, "version": version, "source": source, **outcome.to_json()}
        if outcome.text and source != "model":  # (a model job's result is cached when it ends: `_track`)
            self.cache.put(uri, text, offset, outcome.text, sid)
        if self.documents.get(uri) is not doc or doc.version != version:
            self.counters["stale"] += 1
            log.debug("dropping a completion for %s v%d: the document is at v%d", uri, version, doc.version)
            return None
        if outcome.cancelled:
            return None
        if outcome.quick:
            self.counters["quick_starts"] += 1
        if not outcome.text:
            self.counters["empty"] += 1
            if outcome.quick:
                self.prewarm.schedule(uri, offset, version, CURSOR_DELAY_S)
            return None
        suggestion = self._suggest(doc, offset, outcome.text, sid, source, outcome.scope, t0)
        # The suggestion that follows this one's acceptance (Tab, Tab, ...), computed while it is on screen; after
        # a short-prompt answer the full prompt here is worth more.
        if outcome.quick:
            self.prewarm.schedule(uri, offset, version, CURSOR_DELAY_S)
        elif source == "model" and self.settings.speculate:
            self._speculate(uri, offset, outcome.text)
        return suggestion

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

    def _speculate_enter(self, uri: str, offset: int) -> bool:
        """The cursor came to the end of a line of code: the likeliest next key is Enter, which the editor follows
        with the line's indentation (one level more after a block opener). Prepare the suggestion there: one line
        (the first suggestion at a new place has to come before the user types past it; the next request there
        may say more). True when it was started."""
        doc = self.documents.get(uri)
        if doc is None:
            return False
        text = doc.text
        if text[offset:offset + 1] not in ("", "\n", "\r"):
            return False
        line = text[text.rfind("\n", 0, offset) + 1:offset]
        code = line.split("#", 1)[0].rstrip() if doc.language is not None and \
            doc.language.syntax.family == "python" else line.rstrip()
        if not code.strip():
            return False
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if code.endswith((":", "{", "(", "[")):
            indent += "\t" if indent.startswith("\t") else "    "
        return self._speculate(uri, offset, "\n" + indent, insert=True, one_line=True)

    def _speculate(self, uri: str, offset: int, accepted: str, *, insert: bool = False,
                   one_line: bool = False) -> bool:
        """Prepare the suggestion for the document as it is once `accepted` is inserted at `offset` (`insert`:
        it is not in the document yet, whatever follows the cursor; `one_line`: a single line). True when a
        speculation was started."""
        doc = self.documents.get(uri)
        if doc is None or not self.host.ready or self._completable(doc):
            return False
        text = doc.text
        if not insert and text[offset:offset + len(accepted)] == accepted:
            predicted = text  # the client applied the insertion before sending the accept
        else:
            predicted = text[:offset] + accepted + text[offset:]
        cursor = offset + len(accepted)
        self._cancel_speculation(uri)
        snap = Snapshot(uri=uri, version=-1, text=predicted, offset=cursor, language_id=doc.language_id,
                                 language=doc.language, path=doc.path, tree=None, invoked=False,
                                 neighbors=self._neighbors(uri), fs_path=doc.fs_path)
        loaded = self.host.loaded
        options = self.options()
        if one_line:
            options = replace(options, multiline="never")

        def work(cancel: threading.Event) -> CompletionOutcome:
            return run_completion(snap, engine=loaded.engine, fim_format=loaded.fim_format, options=options,
                                           cancel=cancel, context=self.context)

        job = self.worker.submit("spec:" + uri, work)
        spec = _Speculation(predicted, cursor, job)
        spec.done = settled(job, asyncio.get_running_loop())
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
        return True

    # ---- generateFunction ---------------------------------------------------------------------------------

    async def generate_function(self, uri: str, line: int, character: int) -> FunctionEdit:
        found = self._position(uri, line, character)
        if found is None:
            return FunctionEdit(False, "the document is not open or the position is outside it")
        doc, offset = found
        why = self._completable(doc)
        if why is not None:
            return FunctionEdit(False, why)
        if not self.host.ready:
            return FunctionEdit(False, f"the model is not ready ({self.host.state})")
        snapshot = doc.snapshot(offset, invoked=True, neighbors=self._neighbors(uri))
        version = doc.version
        loaded = self.host.loaded
        options = self.options()
        mode = self.settings.generate_function_mode
        # "auto" picks per model what the benchmark measured (core.function_prompts.AUTO_STRATEGIES): the model's
        # registry name for an in-process engine; the test and remote engines are no measured model.
        model = (self.settings.model or DEFAULT_MODEL) if self.settings.engine == "ort" else self.settings.engine
        verify = self.settings.verify_options()

        def work(cancel: threading.Event) -> FunctionOutcome:
            return generate_function(snapshot, engine=loaded.engine, fim_format=loaded.fim_format,
                                     options=options, cancel=cancel, context=self.context, mode=mode, model=model,
                                     verify=verify)

        job = self.worker.submit("fn:" + uri, work)
        out = await self._await(job)
        if out is None:
            return FunctionEdit(False, "cancelled")
        if out.engine_called:
            self.counters["engine_calls"] += 1
        if not out.ok:
            return FunctionEdit(False, out.reason, uri, version, name=out.name, attempts=out.attempts)
        if self.documents.get(uri) is not doc or doc.version != version:
            self.counters["stale"] += 1
            return FunctionEdit(False, "the document changed while the body was generated", uri, version,
                                name=out.name, strategy=out.strategy, attempts=out.attempts)
        return FunctionEdit(True, out.reason, uri, version, doc.position_at(out.start, self.encoding),
                            doc.position_at(out.end, self.encoding), out.new_text, out.name, out.strategy,
                            out.attempts, out.verification)

    # ---- status ---------------------------------------------------------------------------------------------

    def status(self, uri: Optional[str] = None) -> dict:
        loaded = self.host.loaded
        out = {
            "state": self.host.state,
            "error": self.host.error,
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
            "prewarm": self.prewarm.status(),
            "kv": {"slots": loaded.engine.kv_slots if loaded else 0,
                   "bytes": loaded.engine.kv_cache_bytes if loaded else 0},
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


__all__ = ["Debouncer", "Session", "Suggestion", "FunctionEdit", "uri_to_path"]
