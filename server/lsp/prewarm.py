"""Idle-time pre-warming: compute the prompt the next request at the cursor will need while the user reads.

On a CPU the first suggestion at a new place costs a prefill of the whole prompt (seconds); the next keystrokes
there cost a few tokens, because the engine keeps the KV cache of the common prefix. The server does not wait for
the request: when the cursor moves (`intarsia/didMoveCursor`, sent by our editor clients), when a document is
opened, after an edit once the typing pauses, and after a suggestion that came from the short cold-start prompt,
it prefills the prompt of a completion at that cursor (`core.completion.prefill_completion`: the short prompt,
then the full one) as a low-priority job on the model thread. Any completion request cancels pending and running
pre-warm work at once (the engine checks between chunks of 64 tokens), and what was computed stays in the KV
cache for the request to reuse.

Bookkeeping (`stats`): jobs started / completed / cancelled, tokens computed, the model thread's CPU time spent,
and the part of it thrown away (a pre-warm whose prompt the next completion in that document did not reuse).

Threading rule: every method runs on the event loop; the prefill itself runs in a job on the model thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from intarsia.server.core.completion import CompletionOutcome, PipelineOptions, prefill_completion
from intarsia.server.core.documents import Snapshot

from .executor import Job, ModelWorker, settled

log = logging.getLogger(__name__)

JOB_KEY = "__prewarm__"
CURSOR_DELAY_S = 0.03  # the client already debounced its cursor notifications
EDIT_DELAY_S = 0.35  # after an edit: only once typing pauses (each keystroke brings its own request)
OPEN_DELAY_S = 0.3


@dataclass
class _Warm:
    uri: str
    job: Job
    started: float
    cpu_s: float = 0.0
    tokens: int = 0
    done: bool = False


class Prewarmer:
    """See the module docstring. `snapshot_at(uri, offset, version)` returns the snapshot to warm (None: the
    document moved on); `engine()` returns (engine, fim_format) or None when not ready; `options()` the pipeline
    options; `context` the repository context source."""

    def __init__(self, worker: ModelWorker, *, snapshot_at: Callable[[str, int, int], Optional[Snapshot]],
                 engine: Callable[[], Optional[tuple]], options: Callable[[], PipelineOptions], context,
                 enabled: Callable[[], bool]):
        self.worker = worker
        self.snapshot_at = snapshot_at
        self.engine = engine
        self.options = options
        self.context = context
        self.enabled = enabled
        self._timer: Optional[asyncio.TimerHandle] = None
        self._running: Optional[_Warm] = None
        self._last: dict[str, _Warm] = {}  # the latest finished pre-warm per document, until a completion there
        self.stats = {"scheduled": 0, "jobs": 0, "completed": 0, "cancelled": 0, "tokens": 0, "cpu_s": 0.0,
                      "wasted_cpu_s": 0.0, "useful": 0, "wasted": 0}

    # ---- scheduling

    def schedule(self, uri: str, offset: int, version: int, delay_s: float) -> None:
        """Pre-warm a completion at `offset` of `uri` (as it is at `version`) in `delay_s`, replacing any pending
        one."""
        if not self.enabled():
            return
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self.stats["scheduled"] += 1
        self._timer = loop.call_later(delay_s, self._fire, uri, offset, version)

    def cancel(self) -> None:
        """A request needs the model thread: drop the pending pre-warm and stop the running one."""
        self._cancel_timer()
        if self._running is not None and not self._running.done:
            self.worker.cancel(JOB_KEY)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self, uri: str, offset: int, version: int) -> None:
        self._timer = None
        ready = self.engine()
        snapshot = self.snapshot_at(uri, offset, version)
        if ready is None or snapshot is None:
            return
        engine, fim_format = ready
        options, context = self.options(), self.context
        warm_box: dict = {}

        def work(cancel: threading.Event) -> int:
            t = time.thread_time()
            try:
                return prefill_completion(snapshot, engine=engine, fim_format=fim_format, options=options,
                                          cancel=cancel, context=context)
            finally:
                warm_box["cpu_s"] = time.thread_time() - t

        job = self.worker.submit(JOB_KEY, work)
        warm = _Warm(uri, job, time.monotonic())
        self._running = warm
        self.stats["jobs"] += 1
        fut = settled(job, asyncio.get_running_loop())

        def finished(f: asyncio.Future) -> None:
            warm.done = True
            warm.cpu_s = warm_box.get("cpu_s", 0.0)
            self.stats["cpu_s"] += warm.cpu_s
            if self._running is warm:
                self._running = None
            exc = f.exception() if not f.cancelled() else None
            if exc is not None:
                log.debug("pre-warm of %s failed: %s", uri, exc)
            tokens = f.result() if not f.cancelled() and exc is None else None
            if tokens is None or job.cancel.is_set():
                self.stats["cancelled"] += 1
            else:
                self.stats["completed"] += 1
            warm.tokens = tokens or 0
            self.stats["tokens"] += warm.tokens
            if warm.tokens:
                self._last[uri] = warm  # judged by the next completion in this document
            log.debug("pre-warm %s@%d: %d tokens in %.2f s CPU", uri, offset, warm.tokens, warm.cpu_s)

        fut.add_done_callback(finished)

    # ---- accounting

    def completed(self, uri: str, outcome: Optional[CompletionOutcome]) -> None:
        """A completion ran in `uri`: the pre-warm before it was useful if the engine reused most of what it
        computed (the KV cache kept at least that many tokens), else its CPU time was thrown away."""
        warm = self._last.pop(uri, None)
        if warm is None or outcome is None or not outcome.engine_called:
            return
        if outcome.reused_tokens >= warm.tokens // 2:
            self.stats["useful"] += 1
        else:
            self.stats["wasted"] += 1
            self.stats["wasted_cpu_s"] += warm.cpu_s

    def forget(self, uri: str) -> None:
        warm = self._last.pop(uri, None)
        if warm is not None:
            self.stats["wasted"] += 1
            self.stats["wasted_cpu_s"] += warm.cpu_s

    def status(self) -> dict:
        out = dict(self.stats)
        out["cpu_s"] = round(out["cpu_s"], 3)
        out["wasted_cpu_s"] = round(out["wasted_cpu_s"], 3)
        out["running"] = self._running is not None and not self._running.done
        return out


__all__ = ["Prewarmer", "JOB_KEY", "CURSOR_DELAY_S", "EDIT_DELAY_S", "OPEN_DELAY_S"]
