"""Bad input over the raw wire: malformed JSON, non-objects, unknown methods, malformed params, positions past
the end, documents never opened, binary and multi-megabyte documents. Each gets an error response or an empty
result, and the server stays up (checked after every case)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from test_server_lsp import SERVER


class RawClient:
    """Speaks JSON-RPC over the server's stdin/stdout byte by byte, so that it can send anything."""

    def __init__(self, cache: Path):
        self.proc = subprocess.Popen(SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "INTARSIA_CACHE": str(cache)})
        self.inbox: "queue.Queue[dict]" = queue.Queue()
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        self._id = 0

    def _read(self) -> None:
        f = self.proc.stdout
        while True:
            length = None
            while True:
                line = f.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line == b"\r\n" and length is not None:
                    break
            self.inbox.put(json.loads(f.read(length)))

    def send_bytes(self, body: bytes) -> None:
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def send(self, obj) -> None:
        self.send_bytes(json.dumps(obj).encode())

    def request(self, method: str, params=None, *, raw_id=None) -> dict:
        self._id += 1
        msg_id = self._id if raw_id is None else raw_id
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.wait_for(lambda m: m.get("id") == msg_id and "method" not in m)

    def notify(self, method: str, params=None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    def wait_for(self, pred, timeout: float = 10.0) -> dict:
        end = time.monotonic() + timeout
        kept = []
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching message")
                m = self.inbox.get(timeout=left)
                if pred(m):
                    return m
                if "method" in m and "id" in m:  # a request from the server: answer it
                    self.send({"jsonrpc": "2.0", "id": m["id"], "result": None})
                else:
                    kept.append(m)
        finally:
            for m in kept:
                self.inbox.put(m)

    def alive(self) -> None:
        """The server still answers."""
        res = self.request("workspace/executeCommand", {"command": "intarsia.status"})
        assert res["result"]["state"] == "ready", res
        assert self.proc.poll() is None


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    c = RawClient(root / "cache")
    res = c.request("initialize", {"processId": None, "rootUri": root.as_uri(),
                                   "capabilities": {"general": {"positionEncodings": ["utf-16"]}},
                                   "initializationOptions": {"intarsia": {
                                       "engine": "test", "debounceMs": 0, "maxDocumentBytes": 2_000_000,
                                       "test": {"table": {"x = ": "1"}}}}})
    assert "capabilities" in res["result"]
    c.notify("initialized", {})
    for _ in range(200):
        if c.request("workspace/executeCommand", {"command": "intarsia.status"})["result"]["state"] == "ready":
            break
        time.sleep(0.02)
    c.root = root
    yield c
    if c.proc.poll() is None:
        c.request("shutdown")
        c.notify("exit")
        try:
            c.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            c.proc.kill()
    c.proc.stdin.close()


def _inline(c: RawClient, uri: str, line: int, character: int) -> dict:
    return c.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
        "context": {"triggerKind": 1}})


def _open(c: RawClient, uri: str, text: str, language: str = "python") -> None:
    c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": 1,
                                                       "text": text}})


def test_malformed_json_gets_a_parse_error(raw):
    raw.send_bytes(b'{"jsonrpc": "2.0", "id": 99, "method": ')
    m = raw.wait_for(lambda m: m.get("error", {}).get("code") == -32700)
    assert m["id"] == 99  # the id of a body that does not parse is recovered, so the client can match it
    raw.send_bytes(b"\xff\xfe not utf-8 at all")
    raw.wait_for(lambda m: m.get("error", {}).get("code") == -32700)
    raw.alive()


@pytest.mark.parametrize("payload", [[1, 2, 3], "just a string", 42, {"id": 5, "method": "initialize"}])
def test_non_jsonrpc_messages_get_invalid_request(raw, payload):
    raw.send(payload)
    m = raw.wait_for(lambda m: m.get("error", {}).get("code") == -32600)
    assert m["id"] == (5 if isinstance(payload, dict) else None)
    raw.alive()


def test_second_initialize_is_refused(raw):
    res = raw.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    assert res["error"]["code"] == -32600 and "already initialized" in res["error"]["message"]
    raw.alive()


def test_unknown_methods(raw):
    res = raw.request("textDocument/noSuchThing", {})
    assert res["error"]["code"] == -32601
    raw.notify("$/noSuchNotification", {"x": 1})
    raw.notify("custom/unknown", None)
    raw.alive()


def test_malformed_params_get_invalid_params_with_the_id(raw):
    res = raw.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///a.py"}})  # no position
    assert res["error"]["code"] == -32602 and res["id"] == raw._id
    assert "position" in res["error"]["message"]
    res = raw.request("textDocument/completion", {"textDocument": 7, "position": "here"}, raw_id="str-id")
    assert res["error"]["code"] == -32602 and res["id"] == "str-id"
    raw.notify("textDocument/didChange", {"textDocument": {"uri": 3}})  # broken notification: ignored
    raw.alive()


def test_positions_past_the_end_and_unopened_documents(raw):
    uri = (raw.root / "small.py").as_uri()
    _open(raw, uri, "x = \n")
    assert _inline(raw, uri, 0, 4)["result"]["items"][0]["insertText"] == "1"
    assert _inline(raw, uri, 50, 0)["result"]["items"] == []
    # A character past the end of the line means the end of the line (as the LSP says).
    assert _inline(raw, uri, 0, 400)["result"]["items"][0]["range"]["start"] == {"line": 0, "character": 4}
    assert _inline(raw, (raw.root / "never.py").as_uri(), 0, 0)["result"]["items"] == []
    res = raw.request("textDocument/completion", {"textDocument": {"uri": "file:///never.py"},
                                                  "position": {"line": 3, "character": 3}})
    assert res["result"]["items"] == []
    raw.alive()


def test_changes_for_unknown_documents_and_ranges_past_the_end(raw):
    raw.notify("textDocument/didChange", {"textDocument": {"uri": "file:///ghost.py", "version": 2},
                                          "contentChanges": [{"range": {"start": {"line": 0, "character": 0},
                                                                        "end": {"line": 0, "character": 0}},
                                                              "text": "x"}]})
    uri = (raw.root / "clamp.py").as_uri()
    _open(raw, uri, "a\n")
    raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                          "contentChanges": [{"range": {"start": {"line": 9, "character": 9},
                                                                        "end": {"line": 12, "character": 0}},
                                                              "text": "x = "}]})
    st = raw.request("workspace/executeCommand", {"command": "intarsia.status", "arguments": [{"uri": uri}]})
    assert st["result"]["document"]["length"] == len("a\nx = ") and st["result"]["document"]["version"] == 2
    raw.notify("textDocument/didClose", {"textDocument": {"uri": "file:///ghost.py"}})
    raw.notify("textDocument/didSave", {"textDocument": {"uri": "file:///ghost.py"}})
    raw.alive()


def test_binary_and_huge_documents(raw):
    uri = (raw.root / "blob.bin").as_uri()
    _open(raw, uri, "x = \x00\x01\x02" + "\ufffd" * 100, language="plaintext")
    assert _inline(raw, uri, 0, 4)["result"]["items"] == []
    big = (raw.root / "big.py").as_uri()
    text = "y = 1\n" * 600_000 + "x = "  # 3.6 MB
    t0 = time.monotonic()
    _open(raw, big, text)
    assert _inline(raw, big, 600_000, 4)["result"]["items"] == []
    # Edits to it are still applied (the document stays in sync), quickly.
    raw.notify("textDocument/didChange", {"textDocument": {"uri": big, "version": 2},
                                          "contentChanges": [{"range": {"start": {"line": 0, "character": 0},
                                                                        "end": {"line": 0, "character": 1}},
                                                              "text": "z"}]})
    st = raw.request("workspace/executeCommand", {"command": "intarsia.status", "arguments": [{"uri": big}]})
    assert st["result"]["document"]["version"] == 2 and st["result"]["document"]["length"] == len(text)
    assert time.monotonic() - t0 < 10
    raw.alive()


def test_requests_before_initialize_and_exit_without_shutdown(tmp_path):
    c = RawClient(tmp_path / "cache")
    res = c.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///a.py"},
                                                      "position": {"line": 0, "character": 0},
                                                      "context": {"triggerKind": 2}})
    assert res["result"]["items"] == []
    res = c.request("workspace/executeCommand", {"command": "intarsia.status"})
    assert res["result"] == {"state": "uninitialized"}
    c.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    c.notify("exit")
    assert c.proc.wait(timeout=10) == 1
    c.proc.stdin.close()


def test_stdout_carries_only_protocol_messages(tmp_path):
    # A client that closes stdin: the server ends, and every byte it wrote to stdout was a framed message.
    proc = subprocess.run(SERVER, input=b"Content-Length: 2\r\n\r\n{}", capture_output=True, timeout=20,
                          env={**os.environ, "INTARSIA_CACHE": str(tmp_path / "cache")})
    out = proc.stdout
    while out:
        assert out.startswith(b"Content-Length: "), out[:80]
        head, _, rest = out.partition(b"\r\n\r\n")
        n = int(head.split(b"\r\n")[0].split(b":")[1])
        json.loads(rest[:n])
        out = rest[n:]
