"""Idle-time pre-warming, the speculative next suggestion and the short cold-start prompt, in the session: the
test engine's stand-in KV cache (protocol: scheduling, cancellation by requests, accounting) and a tiny real
ORT model (what a pre-warm computes is what the request then reuses; the short prompt at a cold place)."""

from __future__ import annotations

import asyncio
import time

import pytest

from intarsia.server.lsp.host import NullUI
from intarsia.server.lsp.session import Session
from intarsia.server.lsp.settings import Settings, parse_settings
from test_engines import SOURCE, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.asyncio

URI = "file:///ws/app.py"
LONG = "".join(f"value_{i} = compute_{i}(argument_{i})\n" for i in range(300)) + "def add(a, b):\n    return \n"


def _session(**raw) -> Session:
    settings, warnings = parse_settings({"engine": "test", "debounceMs": 0, "contextBudgetTokens": 0, **raw})
    assert not warnings
    return Session(settings=settings, root=None, ui=NullUI())


async def _ready(s: Session) -> None:
    s.start()
    for _ in range(500):
        if s.host.state == "ready":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(s.host.error)


async def _until(pred, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_a_cursor_move_prewarms_and_the_request_reuses_it(isolated_cache):
    s = _session(speculate=False, test={"table": {"return ": "a + b"}})
    await _ready(s)
    s.did_open(URI, "python", 1, LONG)
    s.did_move_cursor(URI, 1, 301, 11)
    await _until(lambda: s.prewarm.stats["completed"] >= 1)
    engine = s.host.loaded.engine
    assert engine.prefills >= 1 and s.prewarm.stats["tokens"] > 0
    sug = await s.complete(URI, 301, 11)
    assert sug.text == "a + b"
    assert s.last["reused_tokens"] >= s.last["prompt_tokens"] - 1  # everything but the last token was warm
    assert s.prewarm.stats["useful"] == 1 and s.prewarm.stats["wasted"] == 0
    # A stale version or a position outside the document is ignored.
    before = s.prewarm.stats["scheduled"]
    s.did_move_cursor(URI, 7, 1, 1)
    s.did_move_cursor(URI, 1, 9999, 0)
    assert s.prewarm.stats["scheduled"] == before
    await s.shutdown()


async def test_a_request_cancels_a_running_prewarm_at_once(isolated_cache):
    s = _session(test={"table": {"return ": "a + b"}, "tokenDelayMs": 100})
    await _ready(s)
    s.did_open(URI, "python", 1, LONG)
    s.did_move_cursor(URI, 1, 301, 11)
    await _until(lambda: s.prewarm.stats["jobs"] >= 1 and s.prewarm.status()["running"])
    t0 = time.monotonic()
    s.host.loaded.engine.token_delay_s = 0.0
    sug = await s.complete(URI, 301, 11, invoked=True)
    assert sug is not None and time.monotonic() - t0 < 1.0  # a whole pre-warm takes ~1.5 s here
    await _until(lambda: not s.prewarm.status()["running"])
    assert s.prewarm.stats["cancelled"] >= 1
    await s.shutdown()


async def test_pauses_in_typing_prewarm_and_prewarm_can_be_turned_off(isolated_cache):
    s = _session(test={"table": {"return ": "a + b"}})
    await _ready(s)
    s.did_open(URI, "python", 1, LONG)
    s.did_change(URI, 2, [((301, 11, 301, 11), "x")])
    await _until(lambda: s.prewarm.stats["completed"] >= 1)
    await s.shutdown()
    off = _session(prewarm=False, test={"table": {"return ": "a + b"}})
    await _ready(off)
    off.did_open(URI, "python", 1, LONG)
    off.did_move_cursor(URI, 1, 301, 11)
    await asyncio.sleep(0.2)
    assert off.prewarm.stats["jobs"] == 0 and off.host.loaded.engine.prefills == 0
    await off.shutdown()


async def test_a_shown_suggestion_prepares_the_one_after_its_acceptance(isolated_cache):
    s = _session(speculate=True, prewarm=False, test={"table": {"return ": "a + b", "a + b": "  # sum"}})
    await _ready(s)
    s.did_open(URI, "python", 1, "def add(a, b):\n    return \n")
    first = await s.complete(URI, 1, 11)
    assert first.text == "a + b" and s.counters["speculations"] == 1
    # Tab: the client inserts the text; the next request there is answered from the speculation.
    s.did_change(URI, 2, [((1, 11, 1, 11), "a + b")])
    await asyncio.sleep(0.05)
    nxt = await s.complete(URI, 1, 16)
    assert nxt.text == "  # sum" and nxt.source in ("speculation", "cache")
    assert s.counters["speculative_hits"] >= 1
    await s.shutdown()


async def test_a_cold_place_answers_from_the_short_prompt_then_warms_the_full_one(tiny, isolated_cache):  # noqa: F811
    s = Session(settings=Settings(engine="ort", model=str(tiny["ort"]), device="cpu", debounce_ms=0,
                                  context_budget_tokens=0, max_tokens=8, acceptance_log=False, speculate=False,
                                  prewarm=True, quick_start_tokens=128, kv_slots=3),
                root=None, ui=NullUI())
    await _ready(s)
    text = SOURCE[:6000] + "\n"
    s.did_open(URI, "python", 1, text)
    line = text.count("\n")
    first_outcome = None
    sug = await s.complete(URI, line, 0, invoked=True)
    first_outcome = dict(s.last)
    assert first_outcome["quick"] and first_outcome["prompt_tokens"] < 400, first_outcome
    await _until(lambda: s.prewarm.stats["completed"] >= 1 and not s.prewarm.status()["running"], 60)
    s.did_change(URI, 2, [((line, 0, line, 0), " ")])
    again = await s.complete(URI, line, 1, invoked=True)
    assert not s.last["quick"] and s.last["prompt_tokens"] > 1000
    assert s.last["reused_tokens"] >= s.last["prompt_tokens"] - 64  # the full prompt was warm
    assert s.status()["kv"]["slots"] >= 2
    assert sug is None or isinstance(sug.text, str)
    assert again is None or isinstance(again.text, str)
    await s.shutdown()


async def test_a_cursor_at_the_end_of_a_line_prepares_the_line_after_enter(isolated_cache):
    s = _session(speculate=True, prewarm=True, test={"table": {"\n    ": "return a + b"}})
    await _ready(s)
    src = "def add(a, b):\nprint(add(1, 2))\n"
    s.did_open(URI, "python", 1, src)
    scheduled = s.prewarm.stats["scheduled"]
    s.did_move_cursor(URI, 1, 0, 14)  # the end of the def line: Enter will indent one level more
    assert s.prewarm.stats["scheduled"] == scheduled  # (the speculation warms the prefix; no pre-fill behind it)
    await _until(lambda: URI not in s._speculation and s.counters["speculations"] == 1)
    s.did_change(URI, 2, [((0, 14, 0, 14), "\n    ")])  # Enter, and the editor's indentation
    sug = await s.complete(URI, 1, 4)
    assert sug.text == "return a + b" and sug.source in ("speculation", "cache")
    assert s.counters["engine_calls"] == 1  # the speculation's only
    # Typed ahead of a speculation still running: joined, answered from its result.
    s.host.loaded.engine.token_delay_s = 0.05
    s.host.loaded.engine.table = [("2))\n", "total = a + b")]
    s.did_move_cursor(URI, 2, 2, 16)  # the end of "print(add(1, 2))": Enter keeps its indentation
    await asyncio.sleep(0.05)
    s.did_change(URI, 3, [((2, 16, 2, 16), "\nto")])
    sug = await s.complete(URI, 3, 2)
    assert sug is not None and sug.text == "tal = a + b" and s.counters["joined"] >= 1
    await s.shutdown()


async def test_the_short_prompt_drops_repository_context_that_no_cache_holds():
    from intarsia.model.fim import QWEN25_CODER, RepoFile
    from intarsia.model.test_engine import TestEngine
    from intarsia.server.core.completion import PipelineOptions, QuickStart, prompt_parts, quick_parts
    from intarsia.server.core.documents import Snapshot
    from intarsia.server.core.prompt import PromptBudget

    engine = TestEngine()
    files = [RepoFile("lib/helpers.py", "".join(f"def helper_{i}(x):\n    return x * {i}\n" for i in range(20)))]
    snap = Snapshot(uri=URI, version=1, text=LONG, offset=len(LONG) - 1, language_id="python", language=None,
                    path="app.py")
    options = PipelineOptions(budget=PromptBudget(prompt=2048, context=512, suffix=48), quick=QuickStart(128))
    full = prompt_parts(snap, engine, QWEN25_CODER, options, files)
    # A file seen for the first time: nothing is cached, so the first answer comes from the window alone.
    cold = quick_parts(snap, engine, QWEN25_CODER, options, files, full)
    assert cold is not None and "helper_1" not in cold.prompt and cold.prompt_tokens < 200
    # Once the context is in a KV cache (the file's full prompt pre-filled), the short prompt keeps it.
    engine.prefill(full.prompt[: full.prompt.index("app.py")])
    warm = quick_parts(snap, engine, QWEN25_CODER, options, files, full)
    assert warm is not None and "helper_1" in warm.prompt
    assert engine.cached_tokens(warm.prompt) >= warm.prompt_tokens - 200
    # A warm full prompt needs no short one.
    engine.prefill(full.prompt)
    assert quick_parts(snap, engine, QWEN25_CODER, options, files, full) is None


async def test_a_cancelled_request_leaves_the_speculation_it_waited_for_running(isolated_cache):
    s = _session(speculate=True, prewarm=True, test={"table": {"\n    ": "return a + b"}})
    await _ready(s)
    s.host.loaded.engine.token_delay_s = 0.05
    s.did_open(URI, "python", 1, "def add(a, b):\nprint(add(1, 2))\n")
    s.did_move_cursor(URI, 1, 0, 14)
    await asyncio.sleep(0.05)
    s.did_change(URI, 2, [((0, 14, 0, 14), "\n    ")])  # Enter, as predicted, while the speculation runs
    first = asyncio.ensure_future(s.complete(URI, 1, 4))
    await asyncio.sleep(0.1)
    first.cancel()  # $/cancelRequest: the user typed on
    with pytest.raises(asyncio.CancelledError):
        await first
    s.did_change(URI, 3, [((1, 4, 1, 4), "re")])
    sug = await s.complete(URI, 1, 6)
    assert sug is not None and sug.text == "turn a + b"
    assert s.counters["engine_calls"] == 1  # the speculation went on and answered both
    await s.shutdown()


async def test_typing_inside_a_block_of_lines_keeps_the_short_prompts_beginning():
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.model.test_engine import TestEngine
    from intarsia.server.core.prompt import PromptBudget, build_prompt

    engine = TestEngine()
    budget = PromptBudget(prompt=2048, context=0, suffix=48)
    text = "".join(f"value_{i} = compute_{i}(argument_{i})\n" for i in range(300))
    cursor = text.index("value_289")  # the second line of the block of 8 lines starting at line 288
    starts = set()
    typed = ""
    for piece in ["total = ", "value_1 + value_2", "\n", "print(total)", "\n", "return total * 2"]:
        typed += piece
        doc = text[:cursor] + typed + text[cursor:]
        parts = build_prompt(QWEN25_CODER, engine.count_tokens, doc, cursor + len(typed), budget=budget,
                             window_tokens=128, quantum=8)
        assert parts.prompt_tokens <= 128 + 8
        starts.add(parts.prefix_start)
    assert len(starts) == 1, starts
    # Without a window the prefix takes the whole budget (the usual fit).
    full = build_prompt(QWEN25_CODER, engine.count_tokens, text, cursor, budget=budget)
    assert full.prefix_start < min(starts)


async def test_moving_elsewhere_stops_the_generations_nobody_waits_for(isolated_cache):
    s = _session(prewarm=False, speculate=False, test={"table": {"return ": "a + b"}, "tokenDelayMs": 100})
    await _ready(s)
    other = "file:///ws/other.py"
    s.did_open(URI, "python", 1, "def add(a, b):\n    return \n")
    s.did_open(other, "python", 1, "x = 1\n")
    first = asyncio.ensure_future(s.complete(URI, 1, 11, invoked=True))
    await _until(lambda: URI in s._inflight)
    first.cancel()  # $/cancelRequest: the generation goes on for a request that types ahead of it...
    with pytest.raises(asyncio.CancelledError):
        await first
    flight = s._inflight[URI]
    s.did_move_cursor(URI, 1, 1, 11)  # (the cursor where it was: nothing to stop)
    assert not flight.job.cancel.is_set()
    s.did_move_cursor(other, 1, 0, 5)  # ...until the user goes elsewhere: the model thread is free at once
    assert flight.job.cancel.is_set()
    await _until(lambda: URI not in s._inflight)
    await s.shutdown()


async def test_a_typed_ahead_request_gets_the_blocks_first_line_before_the_block_is_done(isolated_cache):
    block = "total = a + b\n    if total > 10:\n        total = 10\n    return total"
    s = _session(speculate=False, prewarm=False, test={"table": {"\n    ": block}, "tokenDelayMs": 40})
    await _ready(s)
    s.did_open(URI, "python", 1, "def add(a, b):\n    \n")
    first = asyncio.ensure_future(s.complete(URI, 1, 4))
    await asyncio.sleep(0.05)
    first.cancel()  # the user typed on: $/cancelRequest, the generation goes on
    with pytest.raises(asyncio.CancelledError):
        await first
    s.did_change(URI, 2, [((1, 4, 1, 4), "t")])
    t0 = time.monotonic()
    sug = await s.complete(URI, 1, 5)
    assert sug is not None and sug.text == "otal = a + b"
    assert URI in s._inflight and not s._inflight[URI].fut.done()  # the block is still being generated
    assert s.counters["first_lines"] == 1 and s.counters["joined"] == 1
    s.did_change(URI, 3, [((1, 5, 1, 5), "o")])
    again = await s.complete(URI, 1, 6)  # the next key, the block still running: its first line, from the cache
    assert again is not None and again.text == "tal = a + b"
    assert URI in s._inflight and not s._inflight[URI].job.cancel.is_set()  # the block goes on
    await _until(lambda: URI not in s._inflight)
    assert time.monotonic() - t0 > 0.3  # (the whole block took longer than its first line)
    s.did_change(URI, 4, [((1, 6, 1, 6), "t")])
    rest = await s.complete(URI, 1, 7)  # a key after the block is done: the whole block, from the cache
    assert rest is not None and rest.text == block[3:] and s.host.loaded.engine.calls == 1
    await s.shutdown()
