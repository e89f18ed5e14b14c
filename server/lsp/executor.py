"""The model thread: every engine call of the language server runs here, one at a time.

pygls runs handlers on the event loop (and reads stdin with its own pool); a generation takes hundreds of
milliseconds to seconds, so it must not run on either. `ModelWorker` owns one `ThreadPoolExecutor(max_workers=1)`.
A job has a key (the document URI, or "__load__" …); submitting a newer job with the same key supersedes the older
one: its cancel event is set (the engines check it before every token) and, if it has not started, it never runs.

Threading rule: `submit`, `cancel` and `pending` may be called from any thread (they take the lock); the job's
function runs on the model thread and gets the job's cancel event.

`background_executor()` is the other thread, for work nobody waits for (repository indexing, acceptance checks):
it runs at a lower CPU priority, so that on a laptop's few cores it never takes the CPU from a generation (the
first index build of a workspace made completions three times slower for its 15 s on two cores).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


log = logging.getLogger(__name__)

BACKGROUND_NICE = 10  # added to the process's niceness for the background thread


def _lower_priority() -> None:
    """Lower the calling thread's CPU priority (Linux: a thread is a task with its own niceness; elsewhere, or
    without permission, nothing changes)."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE)
    except OSError as e:
        log.debug("could not lower the background thread's priority: %s", e)


def background_executor(name: str = "intarsia-aux") -> concurrent.futures.ThreadPoolExecutor:
    """One thread for background work, at a lower CPU priority than the model thread and the event loop."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lower_priority)


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


def settled(job: Job, loop: asyncio.AbstractEventLoop) -> "asyncio.Future":
    """An asyncio future (of `loop`) for a job's result: None when the job was cancelled or superseded before it
    ran, its exception when it raised."""
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


__all__ = ["ModelWorker", "Job", "JobCancelled", "settled", "background_executor", "BACKGROUND_NICE"]
