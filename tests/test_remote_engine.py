"""RemoteEngine against a local imitation of an OpenAI-compatible /v1/completions server."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from intarsia.model.engine import (
    FINISH_CANCELLED,
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationRequest,
)
from intarsia.model.errors import EngineError
from intarsia.model.fim import QWEN25_CODER
from intarsia.model.remote_engine import RemoteEngine

from tiny import tokenizer_dir


class FakeServer:
    """Streams `pieces` (one SSE event each) or answers them joined as one JSON object.

    Like a real server it applies the stop strings it receives (at most 4, else HTTP 400) and cuts the text
    before the first one.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.pieces: list[str] = ["def ", "add", "(a", ", b", "):\n", "    return", " a + b\n"]
        self.finish = "length"
        self.stop_reason: object = "absent"
        self.status = 200
        self.error_body = '{"error": {"message": "model exploded\\nsecond line", "type": "server_error"}}'
        self.delay = 0.0  # seconds between events
        self.first_delay = 0.0  # seconds before the answer starts
        self.usage = True
        self.tokenize = False
        self.chunked = False  # Transfer-Encoding: chunked, as uvicorn (vLLM) sends event streams
        self.disconnected = threading.Event()
        self.events_sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append({"path": self.path, "body": body})
                server.headers.append(dict(self.headers))
                if self.path.endswith("/tokenize"):
                    if not server.tokenize:
                        return self._send(404, b'{"error": "not found"}')
                    ids = [ord(c) for c in body.get("content", "")]
                    return self._send(200, json.dumps({"tokens": ids}).encode())
                if server.first_delay:
                    time.sleep(server.first_delay)
                if server.status != 200:
                    return self._send(server.status, server.error_body.encode())
                stops = body.get("stop") or []
                if len(stops) > 4:
                    return self._send(400, b'{"error": {"message": "at most 4 stop sequences"}}')
                pieces, finish, stop_hit = server._cut(stops)
                if body.get("stream"):
                    self._stream(body, pieces, finish, stop_hit)
                else:
                    choice = {"index": 0, "text": "".join(pieces), "finish_reason": finish}
                    if server.stop_reason != "absent":
                        choice["stop_reason"] = stop_hit if stop_hit else server.stop_reason
                    out = {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}
                    if server.usage:
                        out["usage"] = {"prompt_tokens": 11, "completion_tokens": len(pieces)}
                    self._send(200, json.dumps(out).encode())

            def _send(self, status, data, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    server.disconnected.set()

            def _stream(self, body, pieces, finish, stop_hit):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                if server.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                raw_write = self.wfile.write

                def write(data: bytes) -> None:
                    if server.chunked:
                        # Split events over chunk frames so that lines span chunk boundaries.
                        for k in range(0, len(data), 7):
                            part = data[k : k + 7]
                            raw_write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    else:
                        raw_write(data)

                try:
                    for i, piece in enumerate(pieces):
                        choice = {"index": 0, "text": piece, "finish_reason": finish if i == len(pieces) - 1 else None}
                        if i == len(pieces) - 1 and server.stop_reason != "absent":
                            choice["stop_reason"] = stop_hit if stop_hit else server.stop_reason
                        write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                        self.wfile.flush()
                        server.events_sent += 1
                        if server.delay:
                            time.sleep(server.delay)
                    if server.usage and (body.get("stream_options") or {}).get("include_usage"):
                        usage = {
                            "prompt_tokens": 11,
                            "completion_tokens": len(pieces),
                            "prompt_tokens_details": {"cached_tokens": 7},
                        }
                        write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
                    write(b"data: [DONE]\n\n")
                    if server.chunked:
                        raw_write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    server.disconnected.set()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _cut(self, stops):
        """The pieces a server would send with these stop strings, the finish reason, and the stop that hit."""
        full = "".join(self.pieces)
        cut, hit = None, None
        for s in stops:
            i = full.find(s)
            if i != -1 and (cut is None or i < cut):
                cut, hit = i, s
        if cut is None:
            return list(self.pieces), self.finish, None
        out, n = [], 0
        for p in self.pieces:
            if n + len(p) >= cut:
                out.append(p[: cut - n])
                break
            out.append(p)
            n += len(p)
        return [p for p in out if p] or [""], "stop", hit

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streaming_request_body_and_text(server):
    eng = RemoteEngine(server.url, model="qwen", api_key="sekret", timeout=5)
    pieces: list[str] = []
    req = GenerationRequest("<|fim_prefix|>x<|fim_suffix|><|fim_middle|>", max_new_tokens=20, stop=("\n\n\n",))
    r = eng.generate(req, on_text=pieces.append)
    body = server.requests[-1]["body"]
    assert server.requests[-1]["path"] == "/v1/completions"
    assert body["prompt"] == req.prompt and "suffix" not in body
    assert body["max_tokens"] == 20 and body["temperature"] == 0.0 and body["stream"] is True
    assert body["stop"] == ["\n\n\n"] and body["model"] == "qwen"
    assert server.headers[-1]["Authorization"] == "Bearer sekret"
    assert r.text == "def add(a, b):\n    return a + b\n"
    assert "".join(pieces) == r.text
    assert r.finish_reason == FINISH_LENGTH
    assert r.timings.new_tokens == 7 and r.timings.prompt_tokens == 11 and r.timings.reused_tokens == 7
    assert r.timings.first_token_s <= r.timings.total_s
    assert r.token_ids == ()


def test_stop_list_capped_and_applied_locally(server):
    eng = RemoteEngine(server.url + "/v1/", timeout=5)  # a trailing /v1 is accepted
    stops = ("<a>", "<b>", "<c>", "<d>", "zz", "a + ")  # the last two are not sent
    pieces: list[str] = []
    r = eng.generate(GenerationRequest("p", max_new_tokens=20, stop=stops), on_text=pieces.append)
    assert server.requests[-1]["path"] == "/v1/completions"
    assert server.requests[-1]["body"]["stop"] == list(stops[:4])
    # " a + b" arrives as " a" + " + b": the stop string spans two events and is cut locally.
    assert r.text == "def add(a, b):\n    return "
    assert r.finish_reason == FINISH_STOP
    assert "".join(pieces) == r.text


def test_server_side_stop_and_eos(server):
    eng = RemoteEngine(server.url, timeout=5)
    r = eng.generate(GenerationRequest("p", max_new_tokens=20, stop=("return",)))
    assert r.text == "def add(a, b):\n    " and r.finish_reason == FINISH_STOP
    # vLLM tells an end token (stop_reason None) from a stop string.
    server.finish, server.stop_reason = "stop", None
    r = eng.generate(GenerationRequest("p", max_new_tokens=20))
    assert r.finish_reason == FINISH_EOS and r.text.endswith("a + b\n")
    r = eng.generate(GenerationRequest("p", max_new_tokens=20, stop=("(a",)))
    assert r.finish_reason == FINISH_STOP and r.text == "def add"


def test_held_back_text_released_when_server_stops(server):
    # The text ends with "\n", which could start the stop string "\n\n"; the server says it stopped on it.
    server.pieces = ["x = 1\n", "\ny = 2"]
    eng = RemoteEngine(server.url, timeout=5)
    pieces: list[str] = []
    r = eng.generate(GenerationRequest("p", max_new_tokens=20, stop=("\n\n",)), on_text=pieces.append)
    assert r.text == "x = 1" and r.finish_reason == FINISH_STOP
    server.pieces = ["x = 1\n"]
    server.finish = "length"
    pieces.clear()
    r = eng.generate(GenerationRequest("p", max_new_tokens=20, stop=("\n\n",)), on_text=pieces.append)
    assert r.text == "x = 1\n" and r.finish_reason == FINISH_LENGTH
    assert "".join(pieces) == r.text


def test_non_streaming(server):
    eng = RemoteEngine(server.url, timeout=5, stream=False)
    pieces: list[str] = []
    r = eng.generate(GenerationRequest("p", max_new_tokens=20, stop=("b):",)), on_text=pieces.append)
    assert server.requests[-1]["body"]["stream"] is False
    assert r.text == "def add(a, " and r.finish_reason == FINISH_STOP
    assert "".join(pieces) == r.text
    server.finish = "length"
    r = eng.generate(GenerationRequest("p", max_new_tokens=7))
    assert r.finish_reason == FINISH_LENGTH and r.timings.new_tokens == 7 and r.timings.prompt_tokens == 11


def test_fim_with_and_without_suffix(server):
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    req = GenerationRequest("ignored", max_new_tokens=8)
    RemoteEngine(server.url, use_suffix=True, timeout=5).generate_fim(prefix, suffix, req)
    body = server.requests[-1]["body"]
    assert body["prompt"] == prefix and body["suffix"] == suffix
    RemoteEngine(server.url, timeout=5).generate_fim(prefix, suffix, req)
    body = server.requests[-1]["body"]
    assert body["prompt"] == QWEN25_CODER.render(prefix, suffix) and "suffix" not in body


def test_cancel_closes_the_stream(server):
    server.pieces = [f"tok{i} " for i in range(400)]
    server.delay = 0.01
    eng = RemoteEngine(server.url, timeout=5)
    cancel = threading.Event()
    pieces: list[str] = []

    def on_text(p: str) -> None:
        pieces.append(p)
        if len(pieces) == 3:
            cancel.set()

    t0 = time.perf_counter()
    r = eng.generate(GenerationRequest("p", max_new_tokens=400), cancel=cancel, on_text=on_text)
    elapsed = time.perf_counter() - t0
    assert r.finish_reason == FINISH_CANCELLED
    assert r.text.startswith("tok0 tok1 tok2 ") and len(r.text) < 60
    assert elapsed < 2
    assert server.disconnected.wait(3)  # the server noticed that the client went away
    assert server.events_sent < 400


def test_cancel_while_waiting_for_the_answer(server):
    server.first_delay = 3
    eng = RemoteEngine(server.url, timeout=10, stream=False)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t0 = time.perf_counter()
    r = eng.generate(GenerationRequest("p", max_new_tokens=8), cancel=cancel)
    assert r.finish_reason == FINISH_CANCELLED and r.text == ""
    assert time.perf_counter() - t0 < 1.5


def test_cancel_before_start_sends_nothing(server):
    cancel = threading.Event()
    cancel.set()
    r = RemoteEngine(server.url, timeout=5).generate(GenerationRequest("p", max_new_tokens=8), cancel=cancel)
    assert r.finish_reason == FINISH_CANCELLED and not server.requests


def test_http_error_becomes_engine_error(server):
    server.status = 500
    eng = RemoteEngine(server.url, timeout=5)
    with pytest.raises(EngineError) as e:
        eng.generate(GenerationRequest("p", max_new_tokens=8))
    msg = str(e.value)
    assert "500" in msg and f"{server.url}/v1/completions" in msg and "model exploded" in msg
    assert "\n" not in msg


def test_connection_refused():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(EngineError, match="connection refused") as e:
        RemoteEngine(url, timeout=2).generate(GenerationRequest("p", max_new_tokens=8))
    assert url in str(e.value)


def test_timeout(server):
    server.first_delay = 2
    with pytest.raises(EngineError, match="did not answer within"):
        RemoteEngine(server.url, timeout=0.3).generate(GenerationRequest("p", max_new_tokens=8))


def test_bad_url():
    with pytest.raises(EngineError, match="URL"):
        RemoteEngine("localhost:8080")


def test_encode_local_server_and_estimate(server, tmp_path):
    tok_dir = tokenizer_dir(tmp_path / "tok")
    local = RemoteEngine(server.url, tokenizer=tok_dir, timeout=5)
    assert local.encode("def f():") == [750, 282, 4555]
    assert not server.requests  # no request needed
    # No tokenizer and no /tokenize endpoint: encode fails, count_tokens estimates.
    bare = RemoteEngine(server.url, timeout=5)
    with pytest.raises(EngineError, match="tokenize"):
        bare.encode("abcdef")
    assert bare.count_tokens("abcdef") == 2
    # A server with /tokenize (llama.cpp style).
    server.tokenize = True
    eng = RemoteEngine(server.url, timeout=5)
    assert eng.encode("ab") == [97, 98]
    assert server.requests[-1]["path"] == "/tokenize" and server.requests[-1]["body"]["content"] == "ab"


def test_ignore_eos_and_sampling_fields(server):
    eng = RemoteEngine(server.url, timeout=5)
    eng.generate(GenerationRequest("p", max_new_tokens=8, ignore_eos=True, temperature=0.7, top_p=0.9))
    body = server.requests[-1]["body"]
    assert body["ignore_eos"] is True and body["temperature"] == 0.7 and body["top_p"] == 0.9
    eng.generate(GenerationRequest("p", max_new_tokens=8))
    body = server.requests[-1]["body"]
    assert "ignore_eos" not in body and "top_p" not in body and "stop" not in body and "seed" not in body
    # A request's seed goes with sampling (servers make the sample reproducible); greedy requests need none.
    eng.generate(GenerationRequest("p", max_new_tokens=8, temperature=0.6, seed=11))
    assert server.requests[-1]["body"]["seed"] == 11
    eng.generate(GenerationRequest("p", max_new_tokens=8, seed=11))
    assert "seed" not in server.requests[-1]["body"]


def test_chunked_event_stream(server):
    server.chunked = True
    server.pieces = ["héllo ", "wörld ", "🎉", "\n"]
    pieces: list[str] = []
    r = RemoteEngine(server.url, timeout=5).generate(GenerationRequest("p", max_new_tokens=9), on_text=pieces.append)
    assert r.text == "héllo wörld 🎉\n" == "".join(pieces)
    assert r.finish_reason == FINISH_LENGTH and r.timings.new_tokens == 4
