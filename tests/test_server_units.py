"""Settings, the typed-ahead cache, the debouncer, the model worker, and engine loading."""

from __future__ import annotations

import os
import threading
import time

import pytest

from intarsia.model.errors import IntarsiaError, ModelNotFoundError
from intarsia.server.lsp.cache import TypedAheadCache
from intarsia.model.factory import open_engine
from intarsia.model.test_engine import TestEngine
from intarsia.server.lsp.settings import Settings, parse_settings
from intarsia.server.lsp.executor import JobCancelled, ModelWorker
from intarsia.server.lsp.session import Debouncer

# ------------------------------------------------------------------------------------------------ settings


def test_defaults_and_camel_case():
    s, w = parse_settings({"intarsia": {"maxTokens": 32, "debounceMs": 10, "multiline": "never",
                                        "remoteEndpoint": "http://127.0.0.1:8080", "engine": "remote"}})
    assert w == []
    assert (s.max_tokens, s.debounce_ms, s.multiline, s.engine) == (32, 10, "never", "remote")
    assert s.remote_endpoint == "http://127.0.0.1:8080"
    assert s.device == "auto" and s.context_budget_tokens == Settings().context_budget_tokens
    s2, w2 = parse_settings({"max_tokens": 7}, s)  # snake_case, flat; the rest kept
    assert s2.max_tokens == 7 and s2.debounce_ms == 10 and not w2


@pytest.mark.parametrize("raw, field, expect", [
    ({"maxTokens": -1}, "max_tokens", "maxTokens"),
    ({"maxTokens": "many"}, "max_tokens", "maxTokens"),
    ({"maxTokens": True}, "max_tokens", "maxTokens"),
    ({"device": "tpu"}, "device", "device"),
    ({"engine": 3}, "engine", "engine"),
    ({"debounceMs": 1e9}, "debounce_ms", "debounceMs"),
    ({"languages": [1, 2]}, "languages", "languages"),
    ({"triggerCharacters": ["ab"]}, "trigger_characters", "triggerCharacters"),
    ({"acceptanceCheckSeconds": []}, "acceptance_check_seconds", "acceptanceCheckSeconds"),
    ({"test": {"tokenDelayMs": -5}}, "test_token_delay_ms", "tokenDelayMs"),
    ({"whatIsThis": 1}, None, "whatIsThis"),
])
def test_bad_values_warn_and_keep_the_old_value(raw, field, expect):
    s, w = parse_settings(raw)
    assert len(w) == 1 and expect in w[0]
    if field is not None:
        assert getattr(s, field) == getattr(Settings(), field)


def test_not_an_object():
    s, w = parse_settings([1, 2])
    assert s == Settings() and "expected an object" in w[0]
    assert parse_settings(None) == (Settings(), [])


def test_languages_list_and_map():
    s, _ = parse_settings({"languages": ["Python", "rust"]})
    assert s.language_enabled("python") and not s.language_enabled("markdown")
    s, _ = parse_settings({"languages": {"markdown": False}})
    assert s.language_enabled("python") and not s.language_enabled("markdown")
    assert Settings().language_enabled("anything")


def test_context_budget_must_be_below_the_prompt_budget():
    s, w = parse_settings({"promptBudgetTokens": 1000, "contextBudgetTokens": 2000})
    assert s.context_budget_tokens == 500 and "contextBudgetTokens" in w[0]


def test_engine_key_changes_only_for_engine_settings():
    a = Settings()
    assert parse_settings({"maxTokens": 9}, a)[0].engine_key() == a.engine_key()
    assert parse_settings({"model": "other"}, a)[0].engine_key() != a.engine_key()


def test_settings_json_roundtrip():
    s, _ = parse_settings({"engine": "test", "test": {"table": {"a": "b"}, "tokenDelayMs": 5}, "languages": ["go"]})
    again, w = parse_settings(s.to_json())
    assert not w and again == s


# ------------------------------------------------------------------------------------------------ cache


def test_typed_ahead_returns_the_rest():
    c = TypedAheadCache()
    text = "x = \nprint(x)\n"
    c.put("u", text, 4, "compute(1)", "s1")
    typed = text[:4] + "comp" + text[4:]
    hit = c.lookup("u", typed, 8)
    assert hit is not None and hit.remaining == "ute(1)" and hit.typed == 4 and hit.entry.suggestion_id == "s1"
    assert c.lookup("u", text, 4).remaining == "compute(1)"  # nothing typed yet


@pytest.mark.parametrize("doc, offset", [
    ("x = cumpute\nprint(x)\n", 8),  # typed something else
    ("x = comp\nprint(y)\n", 8),  # the text after the cursor changed
    ("y = comp\nprint(x)\n", 8),  # the text before changed
    ("x = compute(1)\nprint(x)\n", 14),  # all of it typed: nothing left
    ("x = comp\nprint(x)\n", 7),  # cursor not after the typed part
])
def test_typed_ahead_misses(doc, offset):
    c = TypedAheadCache()
    c.put("u", "x = \nprint(x)\n", 4, "compute(1)", "s1")
    assert c.lookup("u", doc, offset) is None
    assert c.lookup("other", "x = \nprint(x)\n", 4) is None


def test_cache_is_bounded_and_forgets():
    c = TypedAheadCache(per_document=2, documents=2)
    for i in range(4):
        c.put("u", f"t{i}", 2, "abc", f"s{i}")
    assert len(c) == 2
    c.put("v", "a", 1, "b", "x")
    c.put("w", "a", 1, "b", "y")
    assert c.lookup("u", "t3", 2) is None  # the oldest document was evicted
    c.forget("w")
    assert c.lookup("w", "a", 1) is None and c.lookup("v", "a", 1) is not None


# ------------------------------------------------------------------------------------------------ debounce


def test_debounce_adapts_to_typing_speed():
    d = Debouncer()
    assert d.delay(0.0, 0.2) == 0.0  # no edit yet
    d.on_change(10.0)
    assert d.delay(10.0, 0.2) == pytest.approx(0.2)  # no rhythm yet: the full wait
    fast = Debouncer()
    for i in range(10):
        fast.on_change(i * 0.06)
    now = 9 * 0.06
    assert fast.delay(now, 0.2) == pytest.approx(0.09, abs=0.01)  # 1.5 x 60 ms
    assert fast.delay(now + 0.2, 0.2) == 0.0  # a pause: no wait at all
    slow = Debouncer()
    for i in range(10):
        slow.on_change(i * 0.5)
    assert slow.delay(4.5, 0.2) == pytest.approx(0.2)  # capped by the setting
    assert slow.delay(4.5, 0.0) == 0.0


# ------------------------------------------------------------------------------------------------ worker


def test_newer_job_cancels_older_one():
    w = ModelWorker()
    started = threading.Event()
    seen = []

    def slow(cancel: threading.Event) -> str:
        started.set()
        for _ in range(200):
            if cancel.is_set():
                seen.append("cancelled")
                return "stopped"
            time.sleep(0.005)
        return "done"

    a = w.submit("doc", slow)
    started.wait(2)
    b = w.submit("doc", lambda c: "second")
    c = w.submit("other", lambda c: "third")
    assert a.future.result(2) == "stopped" and a.superseded
    assert b.future.result(2) == "second" and c.future.result(2) == "third"
    assert seen == ["cancelled"]
    w.shutdown(wait=True)


def test_queued_job_cancelled_before_it_starts_never_runs():
    w = ModelWorker()
    gate = threading.Event()
    ran = []
    w.submit("block", lambda c: gate.wait(2))
    q = w.submit("doc", lambda c: ran.append(1))
    q.cancel.set()  # as $/cancelRequest does while the job waits
    gate.set()
    with pytest.raises((JobCancelled, Exception)):
        q.future.result(2)
    assert ran == [] and w.pending() == []
    w.shutdown(wait=True)


def test_only_one_model_thread():
    w = ModelWorker()
    active = []
    peak = []
    lock = threading.Lock()

    def job(cancel):
        with lock:
            active.append(1)
            peak.append(len(active))
        time.sleep(0.01)
        with lock:
            active.pop()

    jobs = [w.submit(f"k{i}", job) for i in range(8)]
    for j in jobs:
        j.future.result(5)
    assert max(peak) == 1
    w.shutdown(wait=True)


# ------------------------------------------------------------------------------------------------ engines


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no thread priorities here")
def test_background_work_runs_below_the_model_threads_priority():
    import sys
    from intarsia.server.lsp.executor import BACKGROUND_NICE, background_executor

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    aux = background_executor()
    try:
        background = aux.submit(niceness).result(timeout=5)
    finally:
        aux.shutdown()
    model = ModelWorker()
    try:
        foreground = model.submit("k", lambda cancel: niceness()).future.result(timeout=5)
    finally:
        model.shutdown()
    if sys.platform.startswith("linux"):
        assert background == min(foreground + BACKGROUND_NICE, 19)
    else:
        assert background >= foreground


def test_load_test_engine():
    s, _ = parse_settings({"engine": "test", "test": {"table": {"a": "b"}, "tokenDelayMs": 2}})
    got = open_engine(s.engine_spec(None))
    assert isinstance(got.engine, TestEngine) and got.fim_format.name == "qwen2.5-coder"
    assert got.engine.token_delay_s == pytest.approx(0.002) and got.engine.table == [("a", "b")]


def test_load_reports_progress_and_can_be_cancelled():
    s, _ = parse_settings({"engine": "test", "test": {"loadDelayMs": 2000}})
    ev = threading.Event()
    threading.Timer(0.05, ev.set).start()
    seen = []
    t0 = time.monotonic()
    with pytest.raises(IntarsiaError, match="cancelled"):
        open_engine(s.engine_spec(None), progress=lambda m, p: seen.append((m, p)), cancel=ev)
    assert time.monotonic() - t0 < 1.0 and seen and seen[0][1] == 0


def test_missing_model_names_the_build_command(tmp_path, isolated_cache):
    s, _ = parse_settings({"engine": "ort", "model": "qwen2.5-coder-0.5b"})
    with pytest.raises(ModelNotFoundError, match="intarsia model build qwen2.5-coder-0.5b"):
        open_engine(s.engine_spec(None))


def test_remote_needs_an_endpoint():
    with pytest.raises(IntarsiaError, match="remoteEndpoint"):
        open_engine(Settings(engine="remote").engine_spec(None))
    got = open_engine(Settings(engine="remote", remote_endpoint="http://127.0.0.1:9").engine_spec(None))
    assert got.engine.name == "remote"


@pytest.mark.parametrize("typed, raw, at_line_start, disagrees", [
    ("", "abc", False, False),  # nothing typed yet
    ("a", "", False, False),  # nothing generated yet
    ("ab", "abc", False, False),
    ("abcd", "abc", False, False),  # typed past what is out so far: agrees up to there
    ("ax", "abc", False, True),
    ("x", "\nfoo", False, True),  # the model goes to the next line, the user types on this one
    ("foo", "    foo(", True, False),  # at a line's start the model's indentation may be dropped by post-processing
    ("fx", "    foo(", True, True),
    ("f", "    ", True, False),
    (" f", "foo", False, True),
])
def test_typed_since_disagrees(typed, raw, at_line_start, disagrees):
    from intarsia.server.core.completion import TypedSince

    t = TypedSince(at_line_start=at_line_start)
    t.typed, t.raw = typed, raw
    assert t.disagrees() is disagrees

