"""The session without the protocol: readiness, cancellation, stale versions, bursts, the typed-ahead cache,
speculation after an accept, debounce, retention checks, function bodies."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from intarsia.server.lsp.settings import parse_settings
from intarsia.server.lsp.host import NullUI
from intarsia.server.lsp.session import Session

pytestmark = pytest.mark.asyncio

URI = "file:///ws/app.py"
SRC = "def add(a, b):\n    return \n"  # cursor: line 1, character 11


def _session(tmp_path, table=None, **extra) -> Session:
    # Counting tests: no speculative next suggestion and no pre-warming unless a test asks for them.
    extra = {"speculate": False, "prewarm": False, **extra}
    raw = {"engine": "test", "debounceMs": 0, "contextBudgetTokens": 0,
           "test": {"table": table or {"return ": "a + b"}, **extra.pop("test", {})}, **extra}
    settings, warnings = parse_settings(raw)
    assert not warnings
    return Session(settings=settings, root=None, ui=NullUI())


async def _ready(s: Session, timeout: float = 5.0) -> None:
    s.start()
    t0 = time.monotonic()
    while s.host.state != "ready":
        assert s.host.state != "failed", s.host.error
        assert time.monotonic() - t0 < timeout
        await asyncio.sleep(0.01)


@pytest.fixture
def cache_dir(isolated_cache):
    return isolated_cache


async def test_not_ready_answers_empty_at_once(tmp_path, cache_dir):
    s = _session(tmp_path, test={"loadDelayMs": 400})
    s.start()
    s.did_open(URI, "python", 1, SRC)
    t0 = time.perf_counter()
    assert await s.complete(URI, 1, 11) is None
    assert time.perf_counter() - t0 < 0.25
    assert s.counters["not_ready"] == 1 and s.host.state == "loading"
    await _ready(s)
    sug = await s.complete(URI, 1, 11)
    assert sug is not None and sug.text == "a + b" and sug.source == "model"
    await s.shutdown()


async def test_newer_request_joins_or_cancels_the_running_one(tmp_path, cache_dir):
    s = _session(tmp_path, table={"return ": "a+" * 30 + "c"}, test={"tokenDelayMs": 20})
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    # The same place again (or characters typed at the cursor): the running generation is joined, not restarted.
    first = asyncio.create_task(s.complete(URI, 1, 11, invoked=True))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(s.complete(URI, 1, 11, invoked=True))
    a, b = await asyncio.gather(first, second)
    assert a is not None and b is not None and a.text == b.text and b.text.endswith("c")
    assert s.counters["joined"] == 1 and s.host.loaded.engine.calls == 1
    # An edit elsewhere: the running generation stops early and the newer request runs.
    s.host.loaded.engine.table = [("return ", "b+" * 30 + "d")]
    other = "file:///ws/other.py"
    s.did_open(other, "python", 1, SRC)
    t0 = time.perf_counter()
    first = asyncio.create_task(s.complete(other, 1, 11, invoked=True))
    await asyncio.sleep(0.1)
    s.did_change(other, 2, [((0, 0, 0, 0), "# sum\n")])
    second = asyncio.create_task(s.complete(other, 2, 11, invoked=True))
    a, b = await asyncio.gather(first, second)
    assert a is None and b is not None and b.text.endswith("d")
    assert s.counters["superseded"] + s.counters["stale"] >= 1
    # The first generation stopped early: both together took far less than two full ones (2 x 61 x 20 ms).
    assert time.perf_counter() - t0 < 2.0
    await s.shutdown()


async def test_cancelled_task_stops_the_engine(tmp_path, cache_dir):
    s = _session(tmp_path, table={"return ": "x + " * 100}, test={"tokenDelayMs": 20})
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    task = asyncio.create_task(s.complete(URI, 1, 11, invoked=True))
    await asyncio.sleep(0.1)
    task.cancel()  # what pygls does on $/cancelRequest
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.counters["cancelled"] == 1
    # The model thread is free again quickly (the generation would have taken 4 s).
    s.update_settings({"test": {"tokenDelayMs": 0, "table": {"return ": "a"}}}, reload=False)
    s.host.loaded.engine.token_delay_s = 0.0
    s.host.loaded.engine.table = [("return ", "a")]
    t0 = time.perf_counter()
    sug = await s.complete(URI, 1, 11, invoked=True)
    assert sug is not None and sug.text == "a"
    assert time.perf_counter() - t0 < 1.0
    await s.shutdown()


async def test_stale_result_is_dropped_but_cached(tmp_path, cache_dir):
    s = _session(tmp_path, table={"return ": "a + b"}, test={"tokenDelayMs": 30})
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    task = asyncio.create_task(s.complete(URI, 1, 11, invoked=True))
    await asyncio.sleep(0.05)
    s.did_change(URI, 2, [((1, 11, 1, 11), "a")])  # the user typed the first character meanwhile
    assert await task is None
    assert s.counters["stale"] == 1
    # The next request is answered from the typed-ahead cache: the rest, no model call.
    calls = s.host.loaded.engine.calls
    sug = await s.complete(URI, 1, 12)
    assert sug is not None and sug.text == " + b" and sug.source == "cache"
    assert s.host.loaded.engine.calls == calls
    await s.shutdown()


async def test_typed_ahead_then_divergence(tmp_path, cache_dir):
    s = _session(tmp_path, table={"return ": "compute(a, b)", "return x": "1"})
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    first = await s.complete(URI, 1, 11)
    assert first.text == "compute(a, b)"
    s.did_change(URI, 2, [((1, 11, 1, 11), "comp")])
    hit = await s.complete(URI, 1, 15)
    assert hit.text == "ute(a, b)" and hit.source == "cache" and hit.id == first.id
    assert s.counters["engine_calls"] == 1
    s.did_change(URI, 3, [((1, 11, 1, 15), "x")])  # typed something else: the model runs again
    again = await s.complete(URI, 1, 12)
    assert again.text == "1" and again.source == "model" and s.counters["engine_calls"] == 2
    # One "shown" per suggestion in the acceptance counters.
    assert s.tracker.counts["shown"] == 2
    await s.shutdown()


async def test_a_generation_that_disagrees_with_what_was_typed_since_stops_at_once(tmp_path, cache_dir):
    # A slow line (61 tokens x 30 ms) that the user does not type: the request after the key joins it and it stops
    # at its next token, instead of running to its end before the model answers the text as it is now.
    s = _session(tmp_path, table={"return ": "a+" * 30 + "c", "return x": " * 2"}, test={"tokenDelayMs": 30})
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    first = asyncio.create_task(s.complete(URI, 1, 11, invoked=True))
    await asyncio.sleep(0.2)  # a few tokens are out
    t0 = time.perf_counter()
    s.did_change(URI, 2, [((1, 11, 1, 11), "x")])
    first.cancel()  # the client cancels the request of the previous key
    with pytest.raises(asyncio.CancelledError):
        await first
    second = await s.complete(URI, 1, 12)
    elapsed = time.perf_counter() - t0
    assert second is not None and second.text == " * 2" and second.source == "model"
    assert s.counters["diverged"] == 1 and s.host.loaded.engine.calls == 2
    assert elapsed < 1.0  # (the rest of the first line alone would be 1.6 s)
    await s.shutdown()


async def test_a_generation_that_agrees_with_what_was_typed_since_goes_on(tmp_path, cache_dir):
    s = _session(tmp_path, table={"return ": "compute(a, b)", "return c": "1"}, test={"tokenDelayMs": 30})
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    first = asyncio.create_task(s.complete(URI, 1, 11, invoked=True))
    await asyncio.sleep(0.1)
    s.did_change(URI, 2, [((1, 11, 1, 11), "c")])
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = await s.complete(URI, 1, 12)
    assert second is not None and second.text == "ompute(a, b)" and second.source == "cache"
    assert s.counters["diverged"] == 0 and s.host.loaded.engine.calls == 1
    await s.shutdown()


async def test_accept_prepares_the_next_suggestion(tmp_path, cache_dir):
    table = {"return ": "a + b", "return a + b": "  # sum"}
    s = _session(tmp_path, table=table, test={"tokenDelayMs": 5})
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    sug = await s.complete(URI, 1, 11)
    assert s.accept(sug.id)
    assert s.counters["speculations"] == 1
    # The client applies the insertion (after or before sending the accept).
    s.did_change(URI, 2, [((1, 11, 1, 11), "a + b")])
    nxt = await s.complete(URI, 1, 16)
    assert nxt is not None and nxt.text == "  # sum" and nxt.source == "speculation"
    assert s.counters["speculative_hits"] == 1
    assert s.counters["engine_calls"] == 2  # the first completion and the speculation, nothing more
    await s.shutdown()


async def test_accept_after_typing_ahead(tmp_path, cache_dir):
    table = {"return ": "compute(a, b)", "return compute(a, b)": "  # result"}
    s = _session(tmp_path, table=table)
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    first = await s.complete(URI, 1, 11)
    s.did_change(URI, 2, [((1, 11, 1, 11), "comp")])
    rest = await s.complete(URI, 1, 15)
    assert rest.id == first.id and rest.text == "ute(a, b)"
    assert s.accept(rest.id)
    await asyncio.sleep(0.05)  # the speculation runs meanwhile
    s.did_change(URI, 3, [((1, 15, 1, 15), "ute(a, b)")])
    nxt = await s.complete(URI, 1, 24)
    assert nxt.text == "  # result" and nxt.source == "speculation"
    assert s.counters["engine_calls"] == 2
    events = [json.loads(x) for x in s.tracker.log.path.read_text().splitlines()]
    (acc,) = [e for e in events if e["event"] == "accepted"]
    assert (acc["chars"], acc["typed"]) == (9, 4)
    await s.shutdown()


async def test_debounce_skips_requests_overtaken_by_typing(tmp_path, cache_dir):
    s = _session(tmp_path, table={"return ": "a + b", "return a": " + b"}, debounceMs=300)
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    s.did_change(URI, 2, [((1, 11, 1, 11), "")])  # an edit: the debounce has a rhythm to follow
    older = asyncio.create_task(s.complete(URI, 1, 11))
    await asyncio.sleep(0.05)
    s.did_change(URI, 3, [((1, 11, 1, 11), "a")])
    newer = asyncio.create_task(s.complete(URI, 1, 12))
    assert await older is None
    got = await newer
    assert got is not None and got.text == " + b"
    assert s.counters["engine_calls"] == 1 and s.counters["superseded"] + s.counters["stale"] >= 1
    # An explicit invocation does not wait.
    t0 = time.perf_counter()
    assert (await s.complete(URI, 1, 12, invoked=True)) is not None
    assert time.perf_counter() - t0 < 0.25
    await s.shutdown()


async def test_burst_of_changes_and_requests(tmp_path, cache_dir):
    s = _session(tmp_path, table={"total = ": "compute()"}, test={"tokenDelayMs": 3})
    await _ready(s)
    s.did_open(URI, "python", 1, "")
    typed = ""
    tasks = []
    line = "total = "
    for i, ch in enumerate(line):
        s.did_change(URI, i + 2, [((0, i, 0, i), ch)])
        typed += ch
        tasks.append(asyncio.create_task(s.complete(URI, 0, i + 1)))
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    assert s.documents.get(URI).text == line
    assert results[-1] is not None and results[-1].text == "compute()"
    assert all(r is None for r in results[:-1])  # every earlier request was stale or superseded
    assert s.counters["superseded"] + s.counters["stale"] == len(line) - 1
    assert s.counters["engine_calls"] < len(line) - 2  # queued jobs that were overtaken never ran
    await s.shutdown()


async def test_skipped_documents_never_reach_the_engine(tmp_path, cache_dir):
    s = _session(tmp_path, languages={"markdown": False}, maxDocumentBytes=2048)
    await _ready(s)
    s.did_open("file:///ws/a.md", "markdown", 1, "return ")
    s.did_open("file:///ws/b.bin", "plaintext", 1, "return \x00\x01")
    s.did_open("file:///ws/big.py", "python", 1, "x = 1\n" * 1000 + "return ")
    assert await s.complete("file:///ws/a.md", 0, 7, invoked=True) is None
    assert await s.complete("file:///ws/b.bin", 0, 7, invoked=True) is None
    assert await s.complete("file:///ws/big.py", 1000, 7, invoked=True) is None
    assert await s.complete("file:///ws/never-opened.py", 0, 0, invoked=True) is None
    s.did_open(URI, "python", 1, SRC)
    assert await s.complete(URI, 99, 0, invoked=True) is None  # past the end
    assert s.counters["engine_calls"] == 0 and s.counters["skipped"] == 5
    assert not s.did_change("file:///ws/never-opened.py", 3, [((0, 0, 0, 0), "x")])
    await s.shutdown()


async def test_retention_is_checked_after_accept(tmp_path, cache_dir):
    s = _session(tmp_path, acceptanceCheckSeconds=[0.05, 0.15])
    await _ready(s)
    s.did_open(URI, "python", 1, SRC)
    sug = await s.complete(URI, 1, 11)
    s.did_change(URI, 2, [((1, 11, 1, 11), sug.text)])
    assert s.accept(sug.id)
    s.did_change(URI, 3, [((0, 0, 0, 0), "import os\n")])  # an edit above moves the anchor
    await asyncio.sleep(0.1)
    s.did_change(URI, 4, [((2, 15, 2, 16), "c")])  # "a + b" -> "a + c" before the second check
    await asyncio.sleep(0.3)
    await s.shutdown()
    events = [json.loads(x) for x in s.tracker.log.path.read_text().splitlines()]
    kept = [(e["after_s"], e["similarity"]) for e in events if e["event"] == "retained"]
    assert kept == [(0.05, 1.0), (0.15, 0.8)]


async def test_generate_function(tmp_path, cache_dir):
    src = 'def area(r):\n    """Area of a circle."""\n    pass\n'
    s = _session(tmp_path, table={'circle."""\n    ': "return 3.14159 * r * r\n"})
    await _ready(s)
    s.did_open(URI, "python", 1, src)
    res = await s.generate_function(URI, 0, 5)
    assert res.ok, res.reason
    assert (res.start, res.end) == ((1, 27), (2, 8)) and res.new_text == "\n    return 3.14159 * r * r"
    bad = await s.generate_function(URI, 99, 0)
    assert not bad.ok
    await s.shutdown()


async def test_failed_load_is_reported_once(tmp_path, cache_dir):
    settings, _ = parse_settings({"engine": "ort", "model": str(tmp_path / "no-such-model")})
    ui = NullUI()
    s = Session(settings=settings, ui=ui)
    s.start()
    await s.host._task
    assert s.host.state == "failed" and s.host.error
    await s.reload()
    errors = [m for lvl, m in ui.messages if lvl == "error"]
    assert len(errors) == 1
    s.did_open(URI, "python", 1, SRC)
    assert await s.complete(URI, 1, 11, invoked=True) is None
    await s.shutdown()


async def test_suffix_budget_is_short_on_a_cpu_engine_unless_set(tmp_path, cache_dir):
    from intarsia.server.core import prompt as PR

    s = _session(tmp_path)
    await _ready(s)
    s.host.loaded.engine.provider = "gpu"  # an engine that does not run on the CPU
    assert s.options().budget.suffix == PR.SUFFIX_MAX_TOKENS
    s.host.loaded.engine.provider = "cpu"  # what OrtEngine reports on a CPU
    assert s.options().budget.suffix == PR.PromptBudget.served("cpu").suffix == PR.SUFFIX_MAX_TOKENS_CPU
    s2 = _session(tmp_path, suffixBudgetTokens=100)
    await _ready(s2)
    s2.host.loaded.engine.provider = "cpu"
    assert s2.options().budget.suffix == 100
    await s.shutdown()
    await s2.shutdown()
