"""`intarsia serve` end to end over stdio (pytest-lsp), under the recorded capabilities of VS Code 1.96 and
Neovim 0.11 (tests/data/clients, hand-recorded): every method, positions in the negotiated encoding (VS Code:
UTF-16; Neovim: UTF-8) with emoji, CJK and CRLF, incremental sync, commands, settings, progress.

The helpers at the top are shared by the other end-to-end test modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_asyncio
from lsprotocol import types as t
from lsprotocol.converters import get_converter
from pytest_lsp import LanguageClient
from pytest_lsp.client import make_test_lsp_client

SERVER = [sys.executable, "-m", "intarsia.server.cli", "serve"]
CLIENT_FILES = {
    "vscode": Path(__file__).parent / "data" / "clients" / "vscode_v1.96.json",
    "neovim": Path(__file__).parent / "data" / "clients" / "neovim_v0.11.json",
}
ENCODING = {"vscode": "utf-16", "neovim": "utf-8"}


def init_params(client_name: str, root: Optional[Path], options: Any) -> t.InitializeParams:
    data = json.loads(CLIENT_FILES[client_name].read_text())
    data.pop("_comment", None)
    data["processId"] = os.getpid()
    data["rootUri"] = root.as_uri() if root else None
    if root:
        data["workspaceFolders"] = [{"uri": root.as_uri(), "name": root.name}]
    data["initializationOptions"] = options
    return get_converter().structure(data, t.InitializeParams)


@contextlib.asynccontextmanager
async def running_server(client_name: str, root: Optional[Path], options: Any, *, cache: Optional[Path] = None,
                         args: tuple[str, ...] = (), configuration_delay: float = 0.0):
    """A server process initialized by a pytest-lsp client with the given recorded capabilities (the client answers
    workspace/configuration after `configuration_delay` seconds)."""
    own_cache = cache is None
    cache = cache or Path(tempfile.mkdtemp(prefix="intarsia-lsp-cache-"))
    client = make_test_lsp_client()
    client.applied_edits = []  # type: ignore[attr-defined]
    client.apply_result = True  # type: ignore[attr-defined]

    @client.feature(t.WORKSPACE_APPLY_EDIT)
    def apply_edit(ls: LanguageClient, params: t.ApplyWorkspaceEditParams):
        ls.applied_edits.append(params)
        return t.ApplyWorkspaceEditResult(applied=ls.apply_result,
                                          failure_reason=None if ls.apply_result else "refused by the test")

    if configuration_delay:  # in place of pytest-lsp's own handler (registering a second one is refused)
        async def slow_configuration(params: t.ConfigurationParams):
            await asyncio.sleep(configuration_delay)
            return [None for _ in params.items]

        client.protocol.fm.features[t.WORKSPACE_CONFIGURATION] = slow_configuration

    env = {**os.environ, "INTARSIA_CACHE": str(cache)}
    await client.start_io(*SERVER, *args, env=env)
    shut_down = False
    try:
        client.init_result = await client.initialize_session(  # type: ignore[attr-defined]
            init_params(client_name, root, options))
        client.cache_dir = cache  # type: ignore[attr-defined]
        yield client
        await client.shutdown_session()
        shut_down = True
    finally:
        await _stop(client, shut_down)
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)


async def _stop(client: LanguageClient, shut_down: bool) -> None:
    """Stop the client and its server. pygls's `stop` waits for the server process to exit, which it does only after
    `exit`: when a test failed before `shutdown_session` it would wait forever (a failed assertion became a
    30-minute timeout), so the server is told to exit, and killed if it does not within a few seconds."""
    server = getattr(client, "_server", None)  # the process pygls started; pygls has no public handle on it
    if not shut_down and server is not None and server.returncode is None:
        try:
            client.protocol.notify(t.EXIT, None)
        except Exception:  # the pipe is already closed
            pass
    try:
        await asyncio.wait_for(asyncio.shield(client.stop()), timeout=10)
    except asyncio.TimeoutError:
        if server is not None and server.returncode is None:
            server.kill()
        await asyncio.wait_for(client.stop(), timeout=10)


async def command(client: LanguageClient, name: str, *arguments: Any) -> Any:
    return await client.workspace_execute_command_async(
        t.ExecuteCommandParams(command=name, arguments=list(arguments) or None))


async def status(client: LanguageClient, uri: Optional[str] = None) -> dict:
    return await command(client, "intarsia.status", *([{"uri": uri}] if uri else []))


async def wait_ready(client: LanguageClient, timeout: float = 30) -> dict:
    t0 = time.monotonic()
    while True:
        st = await status(client)
        if st["state"] == "ready":
            return st
        assert st["state"] != "failed", st["error"]
        assert time.monotonic() - t0 < timeout, st
        await asyncio.sleep(0.02)


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(t.DidOpenTextDocumentParams(
        text_document=t.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))


def change(client: LanguageClient, uri: str, version: int, start: tuple[int, int], end: tuple[int, int],
           text: str) -> None:
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[t.TextDocumentContentChangePartial(
            range=t.Range(start=t.Position(*start), end=t.Position(*end)), text=text)]))


async def inline(client: LanguageClient, uri: str, line: int, character: int, *, invoked: bool = False
                 ) -> t.InlineCompletionList:
    kind = t.InlineCompletionTriggerKind.Invoked if invoked else t.InlineCompletionTriggerKind.Automatic
    return await client.text_document_inline_completion_async(t.InlineCompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(line, character),
        context=t.InlineCompletionContext(trigger_kind=kind)))


async def complete(client: LanguageClient, uri: str, line: int, character: int,
                   trigger: Optional[str] = None) -> t.CompletionList:
    ctx = t.CompletionContext(trigger_kind=t.CompletionTriggerKind.Invoked) if trigger is None else \
        t.CompletionContext(trigger_kind=t.CompletionTriggerKind.TriggerCharacter, trigger_character=trigger)
    return await client.text_document_completion_async(t.CompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(line, character), context=ctx))


async def suggest(client: LanguageClient, name: str, uri: str, line: int, character: int) -> Optional[tuple]:
    """(text, range start, range end, accept command) through the request this client would use."""
    if name == "vscode":
        res = await inline(client, uri, line, character, invoked=True)
        if not res.items:
            return None
        it = res.items[0]
        return it.insert_text, it.range.start, it.range.end, it.command
    res = await complete(client, uri, line, character)
    if not res.items:
        return None
    it = res.items[0]
    return it.text_edit.new_text, it.text_edit.range.start, it.text_edit.range.end, it.command


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ fixtures

UTIL = '''def polygon_area(points):
    """Shoelace formula."""
    total = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2
'''

TABLE = {
    "total = ": "compute()",
    '😀漢"; z = ': "len(s)",
    "def area(points):\r\n    \"\"\"Area of a polygon.\"\"\"\r\n    ": "return polygon_area(points)\r\n",
    "y = poly": "gon_area(pts)",
    "result = polygon_area(": "pts)",
    '    >>> twice(4)\n    8\n    """\n    ': "return 2 * n\n",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["vscode", "neovim"])
async def lsp(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("workspace")
    (root / "util.py").write_text(UTIL)
    (root / "notes.md").write_text("# Notes\n")
    options = {"intarsia": {"engine": "test", "debounceMs": 0, "test": {"table": TABLE},
                            "acceptanceCheckSeconds": [0.2, 0.4]}}
    async with running_server(request.param, root, options) as client:
        client.name = request.param  # type: ignore[attr-defined]
        client.root = root  # type: ignore[attr-defined]
        client.ready_status = await wait_ready(client)  # type: ignore[attr-defined]
        yield client


pytestmark = pytest.mark.asyncio(loop_scope="module")


def uri_of(client, name: str) -> str:
    return (client.root / name).as_uri()


# ------------------------------------------------------------------------------------------------ tests


async def test_capabilities(lsp):
    caps = lsp.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert list(caps.completion_provider.trigger_characters) == [".", "(", "["]
    sync = caps.text_document_sync
    assert sync.change == t.TextDocumentSyncKind.Incremental and sync.open_close
    assert set(caps.execute_command_provider.commands) >= {
        "intarsia.generateFunction", "intarsia.accept", "intarsia.acceptPartial", "intarsia.status",
        "intarsia.reloadModel"}
    assert caps.position_encoding == ENCODING[lsp.name]
    assert lsp.init_result.server_info.name == "intarsia"
    assert lsp.ready_status["encoding"] == ENCODING[lsp.name]


async def test_model_loading_reports_progress(lsp):
    reports = list(lsp.progress_reports.values())
    assert len(reports) == 1
    kinds = [r.kind for r in reports[0]]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert reports[0][0].title == "Intarsia" and reports[0][-1].message.startswith("ready")


async def test_positions_with_emoji_and_cjk(lsp):
    uri = uri_of(lsp, "unicode.py")
    line = 's = "😀漢"; z = '
    open_doc(lsp, uri, "import os\n" + line + "\nprint(z)\n")
    # 12 ASCII characters, 😀 (2 UTF-16 units, 4 UTF-8 bytes) and 漢 (1 unit, 3 bytes): the end is at 15 / 19.
    col = {"utf-16": 15, "utf-8": 19}[ENCODING[lsp.name]]
    got = await suggest(lsp, lsp.name, uri, 1, col)
    assert got is not None
    text, start, end, cmd = got
    assert text == "len(s)"
    assert (end.line, end.character) == (1, col)
    assert (start.line, start.character) == (1, col)  # no word before the cursor: an insertion
    assert cmd.command == "intarsia.accept" and cmd.arguments[0]["id"]


async def test_crlf_document_and_function_body(lsp):
    uri = uri_of(lsp, "shapes.py")
    src = 'from util import polygon_area\r\n\r\n\r\ndef area(points):\r\n    """Area of a polygon."""\r\n    pass\r\n'
    open_doc(lsp, uri, src)
    lsp.applied_edits.clear()
    res = await command(lsp, "intarsia.generateFunction", {"uri": uri, "position": {"line": 3, "character": 6}})
    assert res["applied"] is True, res
    assert res["function"] == "area"
    (params,) = lsp.applied_edits
    if lsp.name == "vscode":  # documentChanges with the version the edit was made for
        (dc,) = params.edit.document_changes
        assert dc.text_document.uri == uri and dc.text_document.version == 1
        (edit,) = dc.edits
    else:  # Neovim 0.11 has no documentChanges: plain changes
        assert params.edit.document_changes is None
        (edit,) = params.edit.changes[uri]
    assert edit.new_text == "\r\n    return polygon_area(points)"
    assert (edit.range.start.line, edit.range.start.character) == (4, 28)
    assert (edit.range.end.line, edit.range.end.character) == (5, 8)
    # The client refusing the edit is reported, not an error.
    lsp.apply_result = False
    res = await command(lsp, "intarsia.generateFunction", uri, {"line": 3, "character": 6})
    lsp.apply_result = True
    assert res["applied"] is False and "refused by the test" in res["reason"]
    # No docstring: nothing generated, a reason.
    open_doc(lsp, uri_of(lsp, "nodoc.py"), "def f(x):\n    return x\n")
    res = await command(lsp, "intarsia.generateFunction", uri_of(lsp, "nodoc.py"), 0, 4)
    assert res["applied"] is False and "docstring" in res["reason"]


async def test_generate_function_reports_the_docstring_examples(lsp):
    uri = uri_of(lsp, "twice.py")
    open_doc(lsp, uri, 'def twice(n):\n    """Twice n.\n\n    >>> twice(4)\n    8\n    """\n    pass\n')
    lsp.messages.clear()
    res = await command(lsp, "intarsia.generateFunction", uri, 0, 4)
    assert res["applied"] is True, res
    v = res["verification"]
    assert v["verified"] is True and (v["examples"], v["passed"], v["candidates"], v["chosen"]) == (1, 1, 1, 0)
    assert v["results"] == [{"example": "twice(4) -> 8", "line": 3, "status": "passed", "detail": ""}]
    text = "Intarsia: body of twice: 1/1 docstring examples pass (the greedy body)"
    assert v["message"] in text
    t0 = time.monotonic()
    while not lsp.messages and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.02)
    assert [(m.type, m.message) for m in lsp.messages] == [(t.MessageType.Info, text)]
    # No examples in the docstring: nothing to report, no message.
    area = uri_of(lsp, "area.py")
    open_doc(lsp, area, 'def area(points):\r\n    """Area of a polygon."""\r\n    pass\r\n')
    lsp.messages.clear()
    res = await command(lsp, "intarsia.generateFunction", area, 0, 6)
    assert res["applied"] is True and res["verification"] is None
    await asyncio.sleep(0.1)
    assert lsp.messages == []


async def test_incremental_sync_matches_the_client_text(lsp):
    uri = uri_of(lsp, "sync.py")
    text = "a = 1\nb = '漢字😀'\n"
    open_doc(lsp, uri, text)
    enc = ENCODING[lsp.name]
    # Insert after the emoji on line 1: "b = '漢字😀" is 4 + 1 + 2 + 2 (UTF-16) or 4 + 1 + 6 + 4 (UTF-8) units.
    col = 9 if enc == "utf-16" else 15
    change(lsp, uri, 2, (1, col), (1, col), "!")
    change(lsp, uri, 3, (0, 4), (0, 5), "42")  # replace "1"
    change(lsp, uri, 4, (2, 0), (2, 0), "c = a\r\n")  # a CRLF line at the end
    change(lsp, uri, 5, (1, 0), (2, 0), "")  # delete line 1 with its line break
    expected = "a = 42\nc = a\r\n"
    st = await status(lsp, uri)
    assert st["document"]["version"] == 5 and st["document"]["sha256"] == sha(expected)
    assert st["document"]["parsed"] is True
    # A full-text change also works.
    lsp.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=6),
        content_changes=[t.TextDocumentContentChangeWholeDocument(text="total = ")]))
    got = await suggest(lsp, lsp.name, uri, 0, 8)
    assert got is not None and got[0] == "compute()"


async def test_completion_fallback_item(lsp):
    uri = uri_of(lsp, "fallback.py")
    open_doc(lsp, uri, "pts = []\ny = poly\n")
    res = await complete(lsp, uri, 1, 8)
    (item,) = res.items
    # The edit covers the word before the cursor, so that the client's filtering keeps the item.
    assert item.text_edit.new_text == "polygon_area(pts)"
    assert (item.text_edit.range.start.character, item.text_edit.range.end.character) == (4, 8)
    assert item.filter_text == "polygon_area(pts)" and item.label == "polygon_area(pts)"
    assert item.insert_text_format == t.InsertTextFormat.PlainText
    # Trigger characters: only the configured ones.
    open_doc(lsp, uri_of(lsp, "trig.py"), "result = polygon_area(\n")
    assert (await complete(lsp, uri_of(lsp, "trig.py"), 0, 22, trigger="(")).items
    assert not (await complete(lsp, uri_of(lsp, "trig.py"), 0, 22, trigger="@")).items


async def test_repository_context_and_status(lsp):
    uri = uri_of(lsp, "ctx.py")
    open_doc(lsp, uri, "pts = [(0, 0), (1, 0), (0, 1)]\nresult = polygon_area(\n")
    assert await suggest(lsp, lsp.name, uri, 1, 22) is not None
    st = await status(lsp)
    assert "util.py" in st["last"]["context_files"]
    assert st["index"]["ready"] and st["index"]["files"] >= 2
    assert st["last"]["timings"]["engine_ms"] >= 0 and st["settings"]["engine"] == "test"


async def test_accept_partial_accept_and_the_log(lsp):
    uri = uri_of(lsp, "accept.py")
    open_doc(lsp, uri, "total = \n")
    text, start, _, cmd = await suggest(lsp, lsp.name, uri, 0, 8)
    change(lsp, uri, 2, (0, 8), (0, 8), text)
    assert (await command(lsp, cmd.command, *cmd.arguments)) == {"recorded": True}
    open_doc(lsp, uri_of(lsp, "partial.py"), "total = \n")
    _, _, _, cmd2 = await suggest(lsp, lsp.name, uri_of(lsp, "partial.py"), 0, 8)
    sid = cmd2.arguments[0]["id"]
    assert (await command(lsp, "intarsia.acceptPartial", {"id": sid, "acceptedLength": 3})) == {"recorded": True}
    assert (await command(lsp, "intarsia.accept", {"id": "unknown"})) == {"recorded": False}
    with pytest.raises(Exception, match="acceptedLength"):
        await command(lsp, "intarsia.acceptPartial", {"id": sid})
    await asyncio.sleep(0.6)  # the retention checks (0.2 s and 0.4 s here)
    st = await status(lsp)
    assert st["acceptance"]["accepted"] >= 1 and st["acceptance"]["partial"] >= 1
    events = [json.loads(x) for x in Path(st["acceptance"]["log"]).read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"shown", "accepted", "partial", "retained"} <= kinds
    assert any(e["event"] == "retained" and e["similarity"] == 1.0 for e in events)


async def test_settings_change_and_bad_values(lsp):
    uri = uri_of(lsp, "settings.py")
    open_doc(lsp, uri, "total = \n")
    lsp.messages.clear()
    lsp.workspace_did_change_configuration(t.DidChangeConfigurationParams(
        settings={"intarsia": {"languages": {"python": False}, "maxTokens": "lots"}}))
    st = await status(lsp)
    assert st["settings"]["languages"] == {"*": True, "python": False}
    assert await suggest(lsp, lsp.name, uri, 0, 8) is None
    await asyncio.sleep(0.05)
    warn = [m for m in lsp.messages if m.type == t.MessageType.Warning]
    assert warn and "maxTokens" in warn[-1].message
    lsp.workspace_did_change_configuration(t.DidChangeConfigurationParams(
        settings={"intarsia": {"languages": []}}))
    assert (await suggest(lsp, lsp.name, uri, 0, 8))[0] == "compute()"
    assert (await status(lsp))["state"] == "ready"  # no engine setting changed: no reload


async def test_close_and_save(lsp):
    uri = uri_of(lsp, "closing.py")
    open_doc(lsp, uri, "total = \n")
    assert await suggest(lsp, lsp.name, uri, 0, 8) is not None
    lsp.text_document_did_close(t.DidCloseTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=uri)))
    assert await suggest(lsp, lsp.name, uri, 0, 8) is None
    # didSave of a new file puts it in the index.
    newfile = lsp.root / "fresh_module.py"
    newfile.write_text("def fresh_helper_function():\n    return 1\n")
    before = (await status(lsp))["index"]["files"]
    open_doc(lsp, newfile.as_uri(), newfile.read_text())
    lsp.text_document_did_save(t.DidSaveTextDocumentParams(text_document=t.TextDocumentIdentifier(
        uri=newfile.as_uri())))
    for _ in range(100):
        if (await status(lsp))["index"]["files"] == before + 1:
            break
        await asyncio.sleep(0.02)
    assert (await status(lsp))["index"]["files"] == before + 1


async def test_engine_settings_reload_the_model(lsp):
    uri = uri_of(lsp, "reload.py")
    open_doc(lsp, uri, "fresh = \n")
    assert await suggest(lsp, lsp.name, uri, 0, 8) is None
    tokens = set(lsp.progress_reports)
    lsp.workspace_did_change_configuration(t.DidChangeConfigurationParams(
        settings={"intarsia": {"test": {"table": {**TABLE, "fresh = ": "value()"}}}}))
    await asyncio.sleep(0.05)
    await wait_ready(lsp)
    assert (await suggest(lsp, lsp.name, uri, 0, 8))[0] == "value()"
    assert len(set(lsp.progress_reports) - tokens) == 1  # the reload reported its progress
    assert (await command(lsp, "intarsia.reloadModel")) == {"state": "loading"}
    st = await wait_ready(lsp)
    assert st["model"].startswith("test engine")


async def test_configuration_is_pulled_when_the_notification_has_no_settings(lsp):
    uri = uri_of(lsp, "pulled.py")
    open_doc(lsp, uri, "total = \n")
    lsp.set_configuration({"maxTokens": 3, "multiline": "never"}, section="intarsia")
    lsp.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings=None))
    for _ in range(100):
        st = await status(lsp)
        if st["settings"]["maxTokens"] == 3:
            break
        await asyncio.sleep(0.02)
    assert st["settings"]["maxTokens"] == 3 and st["settings"]["multiline"] == "never"
    got = await suggest(lsp, lsp.name, uri, 0, 8)  # "compute()" is 3 tokens: it still fits
    assert got is not None and got[0] == "compute()"
    lsp.set_configuration({}, section="intarsia")
    lsp.workspace_did_change_configuration(t.DidChangeConfigurationParams(
        settings={"intarsia": {"maxTokens": 128, "multiline": "auto"}}))
    assert (await status(lsp))["settings"]["maxTokens"] == 128
