"""`intarsia serve` under load and failure, end to end: $/cancelRequest, stale versions, bursts of changes and
requests, a handler error, requests before the model is ready, a missing model and reloads
(the transports: test_server_transport.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled

from test_server_lsp import (
    change,
    command,
    inline,
    open_doc,
    running_server,
    sha,
    status,
    wait_ready,
)

SLOW = "x+" * 29 + "y"  # 59 tokens (a line completion may have 64), 25 ms each: 1.5 s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lsp(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    table = {"slow = ": SLOW, "fast = ": "1", "boom = ": "!raise simulated engine bug", "total = ": "compute()"}
    options = {"intarsia": {"engine": "test", "debounceMs": 0, "maxTokens": 512, "contextBudgetTokens": 0,
                            "test": {"table": table, "tokenDelayMs": 25}}}
    async with running_server("vscode", root, options) as client:
        client.root = root
        await wait_ready(client)
        yield client


pytestmark = pytest.mark.asyncio(loop_scope="module")


def _uri(lsp, name):
    return (lsp.root / name).as_uri()


async def test_cancel_request_stops_generation(lsp):
    uri = _uri(lsp, "cancel.py")
    open_doc(lsp, uri, "slow = \n")
    before = (await status(lsp))["counters"]["cancelled"]
    params = t.InlineCompletionParams(text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(0, 7),
                                      context=t.InlineCompletionContext(
                                          trigger_kind=t.InlineCompletionTriggerKind.Invoked))
    fut = lsp.protocol.send_request(t.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me")
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    lsp.cancel_request(t.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wrap_future(fut)
    assert time.monotonic() - t0 < 0.8  # not the ~1.3 s the rest of the generation takes
    st = await status(lsp)
    assert st["counters"]["cancelled"] == before + 1
    # The model thread is free: a fast completion is not stuck behind the cancelled one.
    open_doc(lsp, _uri(lsp, "after.py"), "fast = \n")
    t0 = time.monotonic()
    res = await inline(lsp, _uri(lsp, "after.py"), 0, 7, invoked=True)
    assert res.items[0].insert_text == "1" and time.monotonic() - t0 < 1.0


async def test_stale_version_is_dropped(lsp):
    uri = _uri(lsp, "stale.py")
    open_doc(lsp, uri, "slow = \n")
    task = asyncio.ensure_future(inline(lsp, uri, 0, 7, invoked=True))
    await asyncio.sleep(0.15)
    change(lsp, uri, 2, (0, 7), (0, 7), "x")  # the user typed while the model ran
    res = await task
    assert not res.items
    assert (await status(lsp))["counters"]["stale"] >= 1
    # The stale result went into the typed-ahead cache: the next request is answered from it at once.
    t0 = time.monotonic()
    res = await inline(lsp, uri, 0, 8)
    assert res.items and res.items[0].insert_text == SLOW[1:] and time.monotonic() - t0 < 0.6
    st = await status(lsp)
    assert st["last"]["source"] == "model" and st["counters"]["cache_hits"] >= 1


async def test_newer_request_for_the_same_place_joins_the_running_generation(lsp):
    uri = _uri(lsp, "newer.py")
    open_doc(lsp, uri, "slow = \n")
    first = asyncio.ensure_future(inline(lsp, uri, 0, 7, invoked=True))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(inline(lsp, uri, 0, 7, invoked=True))
    a, b = await asyncio.gather(first, second)
    assert b.items[0].insert_text == SLOW  # the newest request gets the answer, from the one generation
    assert (await status(lsp))["counters"]["joined"] >= 1


async def test_burst_of_changes_and_requests(lsp):
    uri = _uri(lsp, "burst.py")
    open_doc(lsp, uri, "")
    line = "total = "
    futures = []
    for i, ch in enumerate(line):
        change(lsp, uri, i + 2, (0, i), (0, i), ch)
        futures.append(asyncio.ensure_future(inline(lsp, uri, 0, i + 1)))
    # Another document in between must not be disturbed.
    open_doc(lsp, _uri(lsp, "other.py"), "fast = \n")
    other = asyncio.ensure_future(inline(lsp, _uri(lsp, "other.py"), 0, 7))
    results = await asyncio.gather(*futures)
    assert [len(r.items) for r in results[:-1]] == [0] * (len(line) - 1)
    assert results[-1].items[0].insert_text == "compute()"
    assert (await other).items[0].insert_text == "1"
    st = await status(lsp, uri)
    assert st["document"]["version"] == len(line) + 1 and st["document"]["sha256"] == sha(line)


async def test_handler_error_answers_an_error_and_the_server_stays_up(lsp):
    uri = _uri(lsp, "boom.py")
    open_doc(lsp, uri, "boom = \n")
    with pytest.raises(JsonRpcException, match="simulated engine bug") as err:
        await inline(lsp, uri, 0, 7, invoked=True)
    assert not err.value.data  # no traceback on the wire: it is in the server's log
    open_doc(lsp, _uri(lsp, "fine.py"), "fast = \n")
    res = await inline(lsp, _uri(lsp, "fine.py"), 0, 7, invoked=True)
    assert res.items[0].insert_text == "1"


async def test_bad_command_arguments(lsp):
    with pytest.raises(JsonRpcException, match="expected"):
        await command(lsp, "intarsia.accept", 42)
    with pytest.raises(JsonRpcException, match="location"):
        await command(lsp, "intarsia.generateFunction", "file:///x.py", -1, 0)
    with pytest.raises(JsonRpcException):
        await command(lsp, "intarsia.noSuchCommand")
    res = await command(lsp, "intarsia.generateFunction", {"uri": "file:///never/opened.py",
                                                           "position": {"line": 0, "character": 0}})
    assert res["applied"] is False
    assert (await status(lsp))["state"] == "ready"


async def test_reload_model_reports_progress_again(lsp):
    tokens = set(lsp.progress_reports)
    assert (await command(lsp, "intarsia.reloadModel"))["state"] == "loading"
    await wait_ready(lsp)
    new = set(lsp.progress_reports) - tokens
    assert len(new) == 1
    assert [r.kind for r in lsp.progress_reports[new.pop()]][-1] == "end"


# ------------------------------------------------------------------------------------------------ separate servers


async def test_requests_before_the_model_is_ready_get_an_empty_answer(tmp_path):
    options = {"intarsia": {"engine": "test", "debounceMs": 0, "test": {"loadDelayMs": 1500,
                                                                       "table": {"fast = ": "1"}}}}
    async with running_server("vscode", tmp_path, options) as lsp:
        uri = (tmp_path / "a.py").as_uri()
        open_doc(lsp, uri, "fast = \n")
        t0 = time.monotonic()
        res = await inline(lsp, uri, 0, 7, invoked=True)
        assert not res.items and time.monotonic() - t0 < 0.5
        assert (await status(lsp))["state"] == "loading"
        await wait_ready(lsp)
        assert (await inline(lsp, uri, 0, 7, invoked=True)).items[0].insert_text == "1"
        (reports,) = lsp.progress_reports.values()
        assert [r.kind for r in reports] == ["begin", "report", "report", "end"]


async def test_the_state_is_loading_while_the_client_is_asked_for_its_configuration(tmp_path):
    options = {"intarsia": {"engine": "test", "debounceMs": 0}}
    async with running_server("vscode", tmp_path, options, configuration_delay=1.0) as lsp:
        await asyncio.sleep(0.2)  # `initialized` has been handled; the configuration's answer is not in yet
        assert (await status(lsp))["state"] == "loading"
        await wait_ready(lsp)


async def test_missing_model_is_shown_once_with_the_fix(tmp_path):
    options = {"intarsia": {"engine": "ort", "model": str(tmp_path / "missing-model.gguf")}}
    async with running_server("neovim", tmp_path, options) as lsp:
        for _ in range(200):
            st = await status(lsp)
            if st["state"] == "failed":
                break
            await asyncio.sleep(0.02)
        assert st["state"] == "failed"
        await command(lsp, "intarsia.reloadModel")
        for _ in range(200):
            if (await status(lsp))["state"] == "failed":
                break
            await asyncio.sleep(0.02)
        errors = [m for m in lsp.messages if m.type == t.MessageType.Error]
        assert len(errors) == 1, errors
        uri = (tmp_path / "a.py").as_uri()
        open_doc(lsp, uri, "x = \n")
        res = await lsp.text_document_completion_async(t.CompletionParams(
            text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(0, 4)))
        assert not res.items


async def test_missing_registry_model_names_the_build_command(tmp_path):
    options = {"intarsia": {"engine": "ort", "model": "qwen2.5-coder-0.5b"}}
    async with running_server("vscode", tmp_path, options, cache=tmp_path / "empty-cache") as lsp:
        for _ in range(300):
            if (await status(lsp))["state"] == "failed":
                break
            await asyncio.sleep(0.02)
        (msg,) = [m.message for m in lsp.messages if m.type == t.MessageType.Error]
        assert "intarsia model build qwen2.5-coder-0.5b" in msg


async def test_settings_warning_at_initialize(tmp_path):
    options = {"intarsia": {"engine": "test", "debounceMs": "soon", "bogus": 1}}
    async with running_server("vscode", tmp_path, options) as lsp:
        await wait_ready(lsp)
        await asyncio.sleep(0.05)
        (msg,) = [m.message for m in lsp.messages if m.type == t.MessageType.Warning]
        assert "debounceMs" in msg and "bogus" in msg
        assert any("debounceMs" in m.message for m in lsp.log_messages)
