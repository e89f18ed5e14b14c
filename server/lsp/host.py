"""The engine of a language-server session: loading it in the background, its state, and hot swaps of the
trained adapter.

Loading takes seconds (a model, its adapters, a warm-up generation) and a swap must not cut a request in half, so
both run as jobs on the model thread (`executor.ModelWorker`), between two completions. What the session reads
(`loaded`, `state`, `error`) changes only on the event loop, when a job has finished: a request snapshots
`loaded` on the loop and hands it to its job, and never sees an engine being replaced under it.

The workspace's promoted adapter (`intarsia train`, `intarsia model rollback`) is looked for by a timer on the
loop, once a second (one stat of the store's pointer); a change schedules a swap job. Completion requests never
start one.

Threading rule: every `EngineHost` method is called on the event loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Callable, Optional, Protocol

from intarsia.model.errors import IntarsiaError
from intarsia.model.factory import EngineSpec, LoadedEngine, open_engine

from .executor import Job, ModelWorker, settled

log = logging.getLogger(__name__)

TRAINED_CHECK_SECONDS = 1.0  # how often the store's pointer is looked at


class UI(Protocol):
    """What the session asks of the client (implemented by the LSP layer; always called on the event loop)."""

    def show_message(self, level: str, message: str) -> None: ...

    def log_message(self, level: str, message: str) -> None: ...

    async def progress_begin(self, title: str, message: str) -> Optional[str]: ...

    def progress_report(self, token: Optional[str], message: str, percentage: Optional[int]) -> None: ...

    def progress_end(self, token: Optional[str], message: str) -> None: ...


class NullUI:
    """A UI that remembers messages (tests, `intarsia complete`)."""

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


class EngineHost:
    """See the module docstring. `on_change` is called (on the loop) whenever what the engine answers may have
    changed (a reload, a swap): the session forgets its cached suggestions. `on_error` shows a message once."""

    def __init__(self, worker: ModelWorker, ui: UI, *, on_change: Callable[[], None],
                 on_error: Callable[[str], None]):
        self.worker = worker
        self.ui = ui
        self.on_change = on_change
        self.on_error = on_error
        self.loaded: Optional[LoadedEngine] = None
        self.state = "idle"  # idle | loading | ready | failed
        self.error: Optional[str] = None
        self._gen = 0
        self._task: Optional[asyncio.Task] = None
        self._swap_job: Optional[Job] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._closed = False

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.loaded is not None

    # ---- loading

    def starting(self) -> None:
        """The session loads an engine as soon as its settings are known (the client is being asked for its
        configuration, up to a few seconds): from now on the state is "loading", never "idle", so a status asked in
        between tells the truth."""
        if self.state == "idle":
            self.state = "loading"

    def reload(self, spec: EngineSpec) -> "asyncio.Task":
        """Load the engine `spec` names; the previous one stops answering now and is closed on the model thread
        before the new one opens (two models need not fit in memory together)."""
        loop = asyncio.get_running_loop()
        self._gen += 1
        old, self.loaded = self.loaded, None
        self.state, self.error = "loading", None
        self.on_change()
        self._task = loop.create_task(self._load(self._gen, spec, old))
        return self._task

    async def _load(self, gen: int, spec: EngineSpec, old: Optional[LoadedEngine]) -> None:
        token = await self.ui.progress_begin("Intarsia", f"loading the {spec.kind} engine")
        loop = asyncio.get_running_loop()

        def progress(message: str, pct: Optional[int]) -> None:
            try:
                loop.call_soon_threadsafe(self.ui.progress_report, token, message, pct)
            except RuntimeError:
                pass

        def work(cancel: threading.Event) -> LoadedEngine:
            if old is not None:
                old.close()
            return open_engine(spec, progress=progress, cancel=cancel)

        t0 = time.perf_counter()
        job = self.worker.submit("__load__", work)
        try:
            loaded = await settled(job, loop)
        except IntarsiaError as e:
            self._failed(gen, str(e), token)
            return
        except Exception as e:  # an unexpected failure: say so, keep serving (empty answers)
            log.exception("loading the engine failed")
            self._failed(gen, f"unexpected error: {type(e).__name__}: {e}", token)
            return
        if loaded is None or gen != self._gen or self._closed:
            if loaded is not None:
                self.worker.submit("__close__", lambda c: loaded.close(), replace=False)
            self.ui.progress_end(token, "superseded")
            return
        self.loaded = loaded
        self.state = "ready"
        self.on_change()
        log.info("engine ready: %s (%.1f s)", loaded.description, time.perf_counter() - t0)
        self.ui.progress_end(token, f"ready: {loaded.description}")
        if loaded.store is not None:
            self._watch_trained(loop)

    def _failed(self, gen: int, message: str, token: Optional[str]) -> None:
        if gen == self._gen:
            self.state, self.error = "failed", message
        self.ui.progress_end(token, "failed")
        log.error("cannot load the engine: %s", message)
        self.on_error(f"Intarsia: {message}")

    # ---- trained adapters

    def _watch_trained(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()

        def tick() -> None:
            self._timer = None
            if self._closed or not self.ready or self.loaded.store is None:
                return
            try:
                self.check_trained_adapter()
            except Exception:  # a store that cannot be read now may be readable later
                log.debug("checking the trained adapter failed", exc_info=True)
            self._timer = loop.call_later(TRAINED_CHECK_SECONDS, tick)

        self._timer = loop.call_later(TRAINED_CHECK_SECONDS, tick)

    def check_trained_adapter(self) -> Optional[Job]:
        """Swap to the adapter `intarsia train` promoted (or rolled back to) for this workspace, if the store's
        pointer changed: a job on the model thread between two requests (load the new adapter, make it the
        default, unload the old one), so no request is dropped and none sees half a swap. Returns the job, or None
        when there is nothing to do."""
        loaded = self.loaded
        if not self.ready or loaded.store is None:
            return None
        if self._swap_job is not None and not self._swap_job.future.done():
            return self._swap_job
        if loaded.store.stamp() == loaded.trained_stamp:
            return None
        loop = asyncio.get_running_loop()

        def done(fut: concurrent.futures.Future) -> None:
            exc = fut.exception() if not fut.cancelled() else None
            if exc is not None:
                loaded.trained_stamp = loaded.store.stamp()  # do not retry a broken adapter every second
                log.warning("cannot swap to the newly promoted adapter: %s", exc)
            if not loop.is_closed():
                loop.call_soon_threadsafe(self.on_change)

        job = self.worker.submit("__adapter__", lambda cancel: loaded.swap_trained(), replace=False)
        job.future.add_done_callback(done)
        self._swap_job = job
        self.on_change()
        return job

    # ---- shutdown

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loaded, self.loaded = self.loaded, None
        self.state = "idle"
        if loaded is not None:
            try:
                job = self.worker.submit("__close__", lambda c: loaded.close(), replace=False)
                await asyncio.wait_for(settled(job, asyncio.get_running_loop()), timeout=5)
            except Exception:
                log.debug("closing the engine failed", exc_info=True)


__all__ = ["EngineHost", "UI", "NullUI", "TRAINED_CHECK_SECONDS"]
