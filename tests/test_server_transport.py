"""The wire: framing that resynchronises after any bad frame, JSON-RPC envelopes answered with the error the
specification names, a bounded seeded fuzz run against the real server (every valid request after every kind of
malformed message is answered), requests after shutdown, no memory kept per notification, huge integers in
settings, and the TCP (token, one client) and Unix socket (0600) transports."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intarsia.server.lsp import transport as T
from test_server_lsp import SERVER
from test_server_robustness import RawClient


def frame(obj) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def request(i: int, method: str = "workspace/executeCommand", params=None) -> dict:
    return {"jsonrpc": "2.0", "id": i, "method": method,
            "params": params if params is not None else {"command": "intarsia.status"}}


def bodies(events) -> list[bytes]:
    return [e.body for e in events if isinstance(e, T.Frame)]


# ------------------------------------------------------------------------------------------------ frames

GOOD = frame(request(7))

BAD_FRAMES = {
    "missing Content-Length": b"Content-Type: application/vscode-jsonrpc\r\n\r\n{}",
    "zero": b"Content-Length: 0\r\n\r\n{}",
    "negative": b"Content-Length: -5\r\n\r\n{}",
    "not a number": b"Content-Length: many\r\n\r\n{}",
    "hexadecimal": b"Content-Length: 0x1f\r\n\r\n" + b"x" * 31,
    "conflicting duplicates": b"Content-Length: 5\r\nContent-Length: 9\r\n\r\n{}",
    "larger than the limit": b"Content-Length: 100000000000\r\n\r\n{}",
    "larger than 2**63": b"Content-Length: 99999999999999999999\r\n\r\n{}",
    "one short": b"Content-Length: 7\r\n\r\n" + b'{"a": 1}',
    "header line too long": b"X-" + b"a" * 20000 + b"\r\n\r\n",
    "noise": bytes(range(256)) * 4,
    "no header at all": b'{"jsonrpc": "2.0", "id": 3, "method": "x"}',
}


@pytest.mark.parametrize("bad", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_the_frame_after_a_bad_one_is_found(bad):
    r = T.FrameReader()
    events = r.events(bad + GOOD + GOOD)
    assert bodies(events)[-2:] == [GOOD.split(b"\r\n\r\n", 1)[1]] * 2
    assert any(isinstance(e, T.FrameError) for e in events)


def test_lenient_but_exact_framing():
    body = json.dumps(request(1)).encode()
    r = T.FrameReader()
    # LF-only line ends, header names in any case, equal duplicates, stray blank lines between messages.
    assert bodies(r.events(b"content-length: %d\n\n" % len(body) + body)) == [body]
    assert bodies(r.events(b"\r\n" + b"Content-Length: %d\r\nCONTENT-LENGTH: %d\r\n\r\n" % (len(body), len(body))
                           + body)) == [body]
    # Byte by byte.
    out = []
    for b in frame(request(2)):
        out += r.events(bytes([b]))
    assert bodies(out) == [json.dumps(request(2)).encode()]


def test_memory_stays_bounded_whatever_arrives():
    r = T.FrameReader()
    chunk = os.urandom(1 << 16).replace(b"\n", b" ")
    for _ in range(200):  # 12.5 MiB of noise without a header
        r.events(chunk)
        assert r.buffered <= T.MAX_HEADER_BYTES + (1 << 16)
    r.events(b"Content-Length: 999999999999\r\n\r\n" + b"z" * 100000)
    assert r.buffered < 32
    assert bodies(r.events(GOOD)) == [GOOD.split(b"\r\n\r\n", 1)[1]]


_garbage = st.binary(max_size=200).filter(lambda b: b"content-length:" not in b.lower())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_garbage, st.integers(0, 10_000)), min_size=1, max_size=6), st.data())
def test_every_valid_frame_survives_noise_before_it(parts, data):
    stream, want = b"", []
    for garbage, i in parts:
        body = json.dumps(request(i)).encode()
        stream += garbage + b"\r\n\r\n" + frame(body)
        want.append(body)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    r, got = T.FrameReader(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got += bodies(r.events(stream[a:b]))
    assert got[-len(want):] == want


# ------------------------------------------------------------------------------------------------ envelopes


def test_bodies_that_do_not_parse_keep_their_id():
    assert T.parse_body(b'{"jsonrpc": "2.0", "id": 41, "method": "x", "params": {')[1].id == 41
    assert T.parse_body(b'{"params": {"id": 3}, "id": "a\\"b", "method": ')[1].id == 'a"b'
    deep = b'{"jsonrpc": "2.0", "id": 5, "method": "m", "params": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    msg, bad, _ = T.parse_body(deep)
    assert msg is None and bad.id == 5 and bad.code == T.PARSE_ERROR
    assert T.parse_body(b'\xff{"id": 9, "jsonrpc": "2.0"}')[1].id == 9


@pytest.mark.parametrize("body, code, msg_id", [
    (b"[1, 2]", T.INVALID_REQUEST, None),
    (b'"text"', T.INVALID_REQUEST, None),
    (b'{"jsonrpc": "1.0", "id": 3, "method": "x"}', T.INVALID_REQUEST, 3),
    (b'{"id": 3, "method": "x"}', T.INVALID_REQUEST, 3),
    (b'{"jsonrpc": "2.0", "id": 1.5, "method": "x"}', T.INVALID_REQUEST, None),
    (b'{"jsonrpc": "2.0", "id": true, "method": "x"}', T.INVALID_REQUEST, None),
    (b'{"jsonrpc": "2.0", "id": 4, "method": 12}', T.INVALID_REQUEST, 4),
    (b'{"jsonrpc": "2.0", "id": 4, "method": "x", "params": "p"}', T.INVALID_REQUEST, 4),
    (b'{"jsonrpc": "2.0"}', T.INVALID_REQUEST, None),
])
def test_envelopes_that_are_not_json_rpc(body, code, msg_id):
    msg, bad, _ = T.parse_body(body)
    assert msg is None and bad.code == code and bad.id == msg_id


def test_nested_jsonrpc_keys_are_plain_data_and_a_long_length_gives_its_bytes_back():
    inner = {"jsonrpc": "2.0", "method": "exit"}
    msg, bad, rest = T.parse_body(json.dumps(request(2, params={"command": "c", "arguments": [inner]})).encode()
                                  + b"Conte")
    assert bad is None and msg["params"]["arguments"] == [inner] and rest == b"Conte"
    assert T.parse_body(b'{"jsonrpc": "2.0", "id": 2, "method": "x"} trailing')[1].code == T.PARSE_ERROR


# ------------------------------------------------------------------------------------------------ the server


def _malformed(rng: random.Random, i: int) -> tuple[bytes, object]:
    """A malformed message and the id its error answer must carry (None: any answer or none)."""
    good = json.dumps(request(i)).encode()
    kind = rng.randrange(16)
    if kind == 0:
        return b"Content-Type: x\r\n\r\n" + good, None
    if kind == 1:
        return b"Content-Length: 0\r\n\r\n" + good, None
    if kind == 2:
        return b"Content-Length: %s\r\n\r\n" % rng.choice([b"-12", b"abc", b"0x40", b"1e3", b" ", b"+5"]) + good, None
    if kind == 3:  # a length one to three bytes short: the request's id is still answered
        return b"Content-Length: %d\r\n\r\n" % (len(good) - rng.randint(1, 3)) + good, i
    if kind == 4:  # one to three bytes long: the next header's first bytes are given back
        return b"Content-Length: %d\r\n\r\n" % (len(good) + rng.randint(1, 3)) + good, i
    if kind == 5:
        return b"Content-Length: %d\nContent-Length: %d\n\n" % (len(good), len(good) + 1) + good, None
    if kind == 6:
        return b"Content-Length: %d\r\n\r\n" % rng.choice([10 ** 11, 2 ** 63, 2 ** 64 + 7]) + good, None
    if kind == 7:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))), None
    if kind == 8:
        deep = "[" * 3000 + "]" * 3000
        return frame(('{"jsonrpc": "2.0", "id": %d, "method": "workspace/executeCommand", "params": '
                      '{"command": "intarsia.status", "arguments": %s}}' % (i, deep)).encode()), i
    if kind == 9:
        return frame(good[: rng.randint(1, len(good) - 1)]), None
    if kind == 10:
        return frame({"jsonrpc": "1.0", "id": i, "method": "workspace/executeCommand"}), i
    if kind == 11:  # objects with a "jsonrpc" key inside params are data, not messages
        return frame(request(i, params={"command": "intarsia.status",
                                        "arguments": [{"jsonrpc": "2.0", "id": 1, "method": "exit"}]})), i
    if kind == 12:
        return frame({"jsonrpc": "2.0", "id": rng.choice([1.5, True, [1], {"a": 1}]), "method": "x"}), None
    if kind == 13:
        return frame(request(i, "textDocument/inlineCompletion", {"textDocument": 3})), i
    if kind == 14:
        return frame({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration",
                      "params": {"settings": {"intarsia": {"maxTokens": 10 ** 400,
                                                           "acceptanceCheckSeconds": [10 ** 400]}}}}), None
    return frame(b"\xc3\x28" + good), i


@pytest.fixture
def fresh(tmp_path):
    c = RawClient(tmp_path / "cache")
    res = c.request("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                                   "initializationOptions": {"intarsia": {
                                       "engine": "test", "acceptanceCheckSeconds": [10 ** 400]}}})
    assert "capabilities" in res["result"]
    c.notify("initialized", {})
    yield c
    if c.proc.poll() is None:
        c.proc.kill()
    c.proc.wait()


def test_fuzzed_messages_never_silence_the_server(fresh):
    rng = random.Random(20261202)
    next_id = 1000
    for _ in range(240):
        bad, answered_id = _malformed(rng, next_id)
        next_id += 1
        fresh.proc.stdin.write(bad)
        fresh.send(request(next_id))  # a valid request right behind it must be answered
        res = fresh.wait_for(lambda m, i=next_id: m.get("id") == i and "method" not in m, timeout=20)
        assert "result" in res, res
        next_id += 1
        if answered_id is not None:
            fresh.wait_for(lambda m, i=answered_id: m.get("id") == i, timeout=20)
    assert fresh.proc.poll() is None
    # didChangeConfiguration with an integer too large for a float keeps the message's other values.
    fresh.notify("workspace/didChangeConfiguration",
                 {"settings": {"intarsia": {"acceptanceCheckSeconds": [10 ** 400], "debounceMs": 7}}})
    st_ = fresh.request("workspace/executeCommand", {"command": "intarsia.status"})["result"]
    assert st_["settings"]["debounceMs"] == 7


def test_requests_after_shutdown_are_answered_and_exit_is_clean(fresh):
    assert "error" not in fresh.request("shutdown")
    res = fresh.request("workspace/executeCommand", {"command": "intarsia.status"})
    assert res["error"]["code"] == -32600 and "shutting down" in res["error"]["message"]
    res = fresh.request("textDocument/inlineCompletion", {})
    assert res["error"]["code"] == -32600
    fresh.notify("exit")
    assert fresh.proc.wait(timeout=15) == 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_notifications_leave_nothing_behind(fresh, tmp_path):
    uri = (tmp_path / "typing.py").as_uri()
    fresh.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                           "text": "x = 1\n"}})

    def burst(n: int, start: int) -> None:
        out = bytearray()
        for v in range(start, start + n):
            out += frame({"jsonrpc": "2.0", "method": "textDocument/didChange",
                          "params": {"textDocument": {"uri": uri, "version": v},
                                     "contentChanges": [{"range": {"start": {"line": 0, "character": 4},
                                                                   "end": {"line": 0, "character": 5}},
                                                         "text": str(v % 10)}]}})
        fresh.proc.stdin.write(bytes(out))
        fresh.proc.stdin.flush()
        fresh.request("workspace/executeCommand", {"command": "intarsia.status"})

    burst(2000, 2)  # warm up (allocator pools, caches)
    before = _rss_kb(fresh.proc.pid)
    burst(20000, 3000)
    st_ = fresh.request("workspace/executeCommand", {"command": "intarsia.status", "arguments": [{"uri": uri}]})
    grown = _rss_kb(fresh.proc.pid) - before
    assert st_["result"]["document"]["version"] == 22999
    assert st_["result"]["open_requests"] <= 2, st_["result"]["open_requests"]
    # A future kept per notification grew RSS by ~38 MB over 20,000 of them.
    assert grown < 12_000, f"RSS grew by {grown} kB over 20,000 notifications"


# ------------------------------------------------------------------------------------------------ transports


def _read_frame(f) -> dict:
    length = None
    while True:
        line = f.readline()
        if not line:
            raise EOFError
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line in (b"\r\n", b"\n") and length is not None:
            return json.loads(f.read(length))


def _connect(port: int, tries: int = 200) -> socket.socket:
    for _ in range(tries):
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server did not listen on 127.0.0.1")


def _init(token=None) -> bytes:
    options = {"intarsia": {"engine": "test"}}
    if token is not None:
        options["token"] = token
    return frame({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"processId": None, "rootUri": Path.cwd().as_uri(), "capabilities": {},
                             "initializationOptions": options}})


def _start(args, tmp_path, **env):
    return subprocess.Popen([*SERVER, *args], stderr=subprocess.PIPE,
                            env={**os.environ, "INTARSIA_CACHE": str(tmp_path / "c"),
                                 "XDG_RUNTIME_DIR": str(tmp_path), **env})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stderr.close()


def test_tcp_needs_this_starts_token_and_takes_one_client(tmp_path):
    port = _free_port()
    proc = _start(["--tcp", "--port", str(port)], tmp_path, INTARSIA_TOKEN="s3cret-token")
    try:
        # Without the token, or with a wrong one: an error, nothing about the workspace, the connection closed.
        for token in (None, "guess"):
            sock = _connect(port)
            f = sock.makefile("rwb")
            f.write(_init(token))
            f.flush()
            res = _read_frame(f)
            assert res["id"] == 1 and "result" not in res and "token" in res["error"]["message"]
            assert f.read() == b""  # closed
            sock.close()
        # The editor, with the token; a second client meanwhile is turned away at once.
        sock = _connect(port)
        f = sock.makefile("rwb")
        f.write(_init("s3cret-token"))
        f.flush()
        res = _read_frame(f)
        assert "inlineCompletionProvider" in res["result"]["capabilities"]
        intruder = _connect(port)
        intruder.settimeout(10)
        assert intruder.recv(100) == b""
        intruder.close()
        # Not on the other interfaces.
        me = socket.gethostbyname(socket.gethostname())
        if not me.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((me, port), timeout=1).close()
        f.write(frame({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
        f.flush()
        while _read_frame(f).get("id") != 2:  # notifications (progress, messages) may come first
            pass
        f.write(frame({"jsonrpc": "2.0", "method": "exit"}))
        f.flush()
        sock.close()
        assert proc.wait(timeout=15) == 0
    finally:
        _stop(proc)


def test_tcp_token_is_generated_and_kept_private(tmp_path):
    proc = _start(["--tcp", "--port", "0"], tmp_path)
    try:
        line = proc.stderr.readline().decode()
        while "listening on 127.0.0.1:" not in line:
            line = proc.stderr.readline().decode()
            assert line, "no listening line"
        port = int(line.split("127.0.0.1:")[1].split(";")[0])
        token = line.split("initializationOptions.token = ")[1].split(",")[0].split()[0]
        kept = tmp_path / "intarsia" / f"serve-{port}.token"
        assert kept.read_text().strip() == token and len(token) >= 24
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
        sock = _connect(port)
        f = sock.makefile("rwb")
        f.write(_init(token))
        f.flush()
        assert "capabilities" in _read_frame(f)["result"]
        f.close()
        sock.close()
        assert proc.wait(timeout=15) == 1  # the client left without shutdown
    finally:
        _stop(proc)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_unix_socket_is_private(tmp_path):
    path = tmp_path / "s" / "intarsia.sock"
    path.parent.mkdir()
    proc = _start(["--socket", str(path)], tmp_path)
    try:
        for _ in range(200):
            if path.exists():
                break
            time.sleep(0.05)
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        f = sock.makefile("rwb")
        f.write(_init())
        f.flush()
        assert "capabilities" in _read_frame(f)["result"]
        f.write(frame({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
        f.flush()
        while _read_frame(f).get("id") != 2:
            pass
        f.write(frame({"jsonrpc": "2.0", "method": "exit"}))
        f.flush()
        sock.close()
        assert proc.wait(timeout=15) == 0
        assert not path.exists()
    finally:
        _stop(proc)
