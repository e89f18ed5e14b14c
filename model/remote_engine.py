"""An engine that asks an OpenAI-compatible server (vLLM, llama.cpp's llama-server, ...) for completions.

`POST {base_url}/v1/completions` with `prompt`, `max_tokens`, `temperature`, `top_p`, `seed` (sampling with a
request's seed), `stop` and, by default, `stream: true` (server-sent events: `data: {...}` lines ending with
`data: [DONE]`). Servers cap the stop list (OpenAI and others take at most 4), so only the first `max_server_stops` stop strings are sent and
all of them are applied locally with `StopMatcher`, which also decides where the text is cut. Cancelling shuts
the connection down, which makes the server stop generating.

Fill-in-the-middle: `generate(request)` sends `request.prompt` as it is (an already rendered FIM prompt).
`generate_fim(prefix, suffix, request)` builds the prompt itself: with `use_suffix=True` it sends
`prompt=prefix, suffix=suffix` and lets the server apply its own FIM template (vLLM/OpenAI style); otherwise
it renders `fim_format.render(prefix, suffix)` and sends that as the prompt. `request.prompt` is ignored there.

Tokens: `encode` uses a local tokenizer when `tokenizer` (a tokenizer.json file or a folder holding one) is
given, else the server's `/tokenize` endpoint (llama.cpp and vLLM have one); when neither works it raises
EngineError. `count_tokens` falls back to an estimate (one token per 3 characters) in that case.
`GenerationResult.token_ids` is empty (servers send text, not ids); `timings.new_tokens` is the server's
`usage.completion_tokens` when it reports usage, else the number of streamed pieces.

The model runs on the server's machine, not this one: `provider` is "remote". The server serves the model (and
any adapter) it was started with and keeps its own prompt cache, so the engine has the `Engine` defaults for
the rest: no adapters (`GenerationRequest.adapter` is not sent), and `reset_cache` has nothing to forget.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import math
import socket
import ssl
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Optional

from .decoding import HfTokenizerFile
from .engine import (
    FINISH_CANCELLED,
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    Engine,
    GenerationRequest,
    GenerationResult,
    StopMatcher,
    Stopwatch,
    TextCallback,
)
from .errors import EngineError
from .fim import QWEN25_CODER, FimFormat

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_ESTIMATE = 3.0


class _Cancelled(Exception):
    pass


class RemoteEngine(Engine):
    """Completions from an OpenAI-compatible HTTP server (see the module docstring)."""

    name = "remote"
    provider = "remote"

    def __init__(
        self,
        base_url: str,
        *,
        model: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = 30,
        fim_format: FimFormat = QWEN25_CODER,
        use_suffix: bool = False,
        tokenizer: Optional[Path | str] = None,
        stream: bool = True,
        max_server_stops: int = 4,
    ):
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise EngineError(f"invalid server URL '{base_url}' (expected http://host:port)")
        path = parsed.path.rstrip("/")
        if path.endswith("/v1"):  # accept both http://host:port and http://host:port/v1
            path = path[: -len("/v1")]
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._root = path
        self.base_url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.fim_format = fim_format
        self.use_suffix = use_suffix
        self.stream_responses = stream
        self.max_server_stops = max(int(max_server_stops), 0)
        self._tok = None
        if tokenizer is not None:
            p = Path(tokenizer)
            if p.is_dir():
                p = p / "tokenizer.json"
            if not p.is_file():
                raise EngineError(f"tokenizer file {p} does not exist")
            self._tok = HfTokenizerFile(p)
        self._server_tokenize: Optional[bool] = None  # unknown until tried

    # ---- HTTP ------------------------------------------------------------------------------------------------

    def _url(self, endpoint: str) -> str:
        return f"{self.base_url}{endpoint}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def _connect(self, conn: http.client.HTTPConnection, endpoint: str) -> None:
        url = self._url(endpoint)
        try:
            conn.connect()
        except ConnectionRefusedError:
            raise EngineError(f"cannot connect to {url}: connection refused") from None
        except (socket.timeout, TimeoutError):
            raise EngineError(f"cannot connect to {url}: no answer within {self.timeout:g} s") from None
        except OSError as e:
            raise EngineError(f"cannot reach {url}: {e.strerror or e}") from None

    def _open(self, conn: http.client.HTTPConnection, endpoint: str, body: dict) -> http.client.HTTPResponse:
        """Send a POST and return the response; HTTP errors and network failures become EngineError."""
        url = self._url(endpoint)
        if conn.sock is None:
            self._connect(conn, endpoint)
        try:
            data = json.dumps(body).encode("utf-8")
            conn.request("POST", self._root + endpoint, body=data, headers=self._headers())
            resp = conn.getresponse()
        except ConnectionRefusedError:
            raise EngineError(f"cannot connect to {url}: connection refused") from None
        except (socket.timeout, TimeoutError):
            raise EngineError(f"{url} did not answer within {self.timeout:g} s") from None
        except OSError as e:
            raise EngineError(f"cannot reach {url}: {e.strerror or e}") from None
        except http.client.HTTPException as e:
            raise EngineError(f"bad HTTP answer from {url}: {type(e).__name__}") from None
        if resp.status >= 400:
            detail = _error_detail(_read_safely(resp))
            raise EngineError(f"{url} answered HTTP {resp.status}{': ' + detail if detail else ''}")
        return resp

    # ---- tokens ----------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        if self._tok is not None:
            return self._tok.encode(text)
        if self._server_tokenize is not False:
            ids = self._tokenize_on_server(text)
            if ids is not None:
                return ids
        raise EngineError(f"cannot tokenize for {self.base_url}: give RemoteEngine a tokenizer.json")

    def count_tokens(self, text: str) -> int:
        """Exact with a tokenizer (local or the server's), else an estimate of one token per 3 characters."""
        try:
            return len(self.encode(text))
        except EngineError:
            return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)

    def _tokenize_on_server(self, text: str) -> Optional[list[int]]:
        conn = self._connection()
        body: dict[str, Any] = {"content": text, "prompt": text, "add_special": False}
        if self.model:
            body["model"] = self.model
        try:
            resp = self._open(conn, "/tokenize", body)
            data = json.loads(_read_safely(resp) or "{}")
        except (EngineError, ValueError) as e:
            log.info("no usable /tokenize endpoint at %s (%s); token counts are estimates", self.base_url, e)
            self._server_tokenize = False
            return None
        finally:
            conn.close()
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            self._server_tokenize = False
            return None
        self._server_tokenize = True
        return tokens

    # ---- generation ------------------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: Optional[threading.Event] = None,
        on_text: Optional[TextCallback] = None,
    ) -> GenerationResult:
        """Complete `request.prompt` (sent as is)."""
        return self._complete(request, {"prompt": request.prompt}, cancel, on_text)

    def generate_fim(
        self,
        prefix: str,
        suffix: str,
        request: GenerationRequest,
        *,
        cancel: Optional[threading.Event] = None,
        on_text: Optional[TextCallback] = None,
    ) -> GenerationResult:
        """Fill in between `prefix` and `suffix`; `request` gives everything but the prompt."""
        if self.use_suffix:
            return self._complete(request, {"prompt": prefix, "suffix": suffix}, cancel, on_text)
        prompt = self.fim_format.render(prefix, suffix)
        return self._complete(dataclasses.replace(request, prompt=prompt), {"prompt": prompt}, cancel, on_text)

    def _complete(
        self,
        request: GenerationRequest,
        fields: dict,
        cancel: Optional[threading.Event],
        on_text: Optional[TextCallback],
    ) -> GenerationResult:
        sw = Stopwatch()
        body: dict[str, Any] = dict(fields)
        if self.model:
            body["model"] = self.model
        body["max_tokens"] = int(request.max_new_tokens)
        body["temperature"] = float(request.temperature)
        if request.top_p < 1:
            body["top_p"] = float(request.top_p)
        if request.seed is not None and request.temperature > 0:
            body["seed"] = int(request.seed)  # (OpenAI, vLLM and llama.cpp servers take it)
        stops = [s for s in request.stop if s]
        if stops and self.max_server_stops:
            body["stop"] = stops[: self.max_server_stops]
        if getattr(request, "ignore_eos", False):
            body["ignore_eos"] = True  # vLLM and llama.cpp extension
        body["stream"] = self.stream_responses
        if self.stream_responses:
            body["stream_options"] = {"include_usage": True}
        url = self._url("/v1/completions")
        matcher = StopMatcher(stops)
        state = _StreamState()

        if cancel is not None and cancel.is_set():
            return self._result(matcher, FINISH_CANCELLED, sw, state, fields)
        if request.max_new_tokens <= 0:
            return self._result(matcher, FINISH_LENGTH, sw, state, fields)

        conn = self._connection()
        watcher = _CancelWatcher(conn, cancel) if cancel is not None else None
        finish: Optional[str] = None
        try:
            self._connect(conn, "/v1/completions")
            if watcher is not None:
                watcher.start()  # from here on, cancel shuts the socket down
            resp = self._open(conn, "/v1/completions", body)
            content_type = resp.getheader("Content-Type", "")
            if self.stream_responses and "text/event-stream" in content_type:
                finish = self._read_stream(resp, matcher, state, sw, cancel, on_text, url)
            else:
                finish = self._read_whole(resp, matcher, state, sw, cancel, on_text, url)
        except EngineError:
            if cancel is not None and cancel.is_set():
                finish = FINISH_CANCELLED
            else:
                raise
        except _Cancelled:
            finish = FINISH_CANCELLED
        except (OSError, http.client.HTTPException, ValueError) as e:
            if cancel is not None and cancel.is_set():
                finish = FINISH_CANCELLED
            elif isinstance(e, (socket.timeout, TimeoutError)):
                raise EngineError(f"{url} stopped sending for {self.timeout:g} s") from None
            else:
                raise EngineError(f"the answer from {url} broke off: {_short(e)}") from None
        finally:
            if watcher is not None:
                watcher.stop()
            conn.close()
        if finish != FINISH_STOP:
            tail = matcher.flush() if not matcher.stopped else ""
            if tail and on_text is not None:
                on_text(tail)
        if matcher.stopped:
            finish = FINISH_STOP
        return self._result(matcher, finish or FINISH_LENGTH, sw, state, fields)

    def _feed(self, piece: str, matcher: StopMatcher, state: "_StreamState", sw: Stopwatch, on_text) -> None:
        if not piece:
            return
        sw.mark_token()
        state.pieces += 1
        out = matcher.feed(piece)
        if out and on_text is not None:
            on_text(out)

    def _read_stream(self, resp, matcher, state, sw, cancel, on_text, url) -> str:
        finish: Optional[str] = None
        while True:
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            raw = resp.readline()
            if not raw:
                break  # the server closed the stream (without [DONE])
            line = raw.decode("utf-8", errors="replace").strip()
            if not line or line.startswith(":") or not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
            except ValueError:
                raise EngineError(f"{url} sent an event that is not JSON: {data[:80]}") from None
            if isinstance(event, dict) and event.get("error"):
                raise EngineError(f"{url} reported an error: {_error_detail(json.dumps(event))}")
            reason = self._apply_event(event, matcher, state, sw, on_text)
            finish = reason or finish
            if matcher.stopped:
                return FINISH_STOP
        if cancel is not None and cancel.is_set():
            raise _Cancelled()
        return finish or FINISH_LENGTH

    def _read_whole(self, resp, matcher, state, sw, cancel, on_text, url) -> str:
        raw = resp.read()
        if cancel is not None and cancel.is_set():
            raise _Cancelled()
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise EngineError(f"{url} did not answer with JSON") from None
        if not isinstance(data, dict) or not data.get("choices"):
            raise EngineError(f"{url} answered without choices")
        reason = self._apply_event(data, matcher, state, sw, on_text)
        if matcher.stopped:
            return FINISH_STOP
        return reason or FINISH_LENGTH

    def _apply_event(self, event: Any, matcher, state: "_StreamState", sw, on_text) -> Optional[str]:
        """Feed one completion object (a stream chunk or the whole answer); return a finish reason if it has one."""
        if not isinstance(event, dict):
            return None
        usage = event.get("usage")
        if isinstance(usage, dict):
            state.usage = usage
        timings = event.get("timings")
        if isinstance(timings, dict):
            state.server_timings = timings
        reason = None
        choices = event.get("choices") or []
        if choices and isinstance(choices[0], dict):
            choice = choices[0]
            self._feed(choice.get("text") or "", matcher, state, sw, on_text)
            fr = choice.get("finish_reason")
            if fr:
                reason = _map_finish(fr, choice)
        return reason

    def _result(self, matcher: StopMatcher, finish: str, sw: Stopwatch, state: "_StreamState", fields: dict):
        usage = state.usage or {}
        prompt_tokens = usage.get("prompt_tokens")
        if not isinstance(prompt_tokens, int):
            text = fields.get("prompt", "") + fields.get("suffix", "")
            if self._tok is not None:
                prompt_tokens = len(self._tok.encode(text))
            else:
                prompt_tokens = math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)
        new_tokens = usage.get("completion_tokens")
        if not isinstance(new_tokens, int):
            new_tokens = state.pieces
        reused = 0
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            reused = details["cached_tokens"]
        elif state.server_timings and isinstance(state.server_timings.get("cache_n"), int):
            reused = state.server_timings["cache_n"]
        extra: dict[str, Any] = {"url": self._url("/v1/completions")}
        if state.usage:
            extra["usage"] = state.usage
        return GenerationResult(
            text=matcher.text,
            token_ids=(),
            finish_reason=finish,
            timings=sw.timings(prompt_tokens, min(reused, prompt_tokens), new_tokens),
            extra=extra,
        )


class _StreamState:
    def __init__(self) -> None:
        self.pieces = 0
        self.usage: Optional[dict] = None
        self.server_timings: Optional[dict] = None


class _CancelWatcher:
    """Shuts the connection's socket down as soon as `cancel` is set, unblocking a pending read."""

    def __init__(self, conn: http.client.HTTPConnection, cancel: threading.Event):
        self._conn = conn
        self._cancel = cancel
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="remote-cancel", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            if self._cancel.wait(0.02):
                sock = self._conn.sock
                if sock is not None and not self._done.is_set():
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)


def _map_finish(reason: str, choice: dict) -> str:
    if reason == "length":
        return FINISH_LENGTH
    if reason in ("stop", "eos"):
        # vLLM says which stop ended it: a string for a stop string, None or an id for an end token.
        if "stop_reason" in choice:
            return FINISH_STOP if isinstance(choice["stop_reason"], str) else FINISH_EOS
        return FINISH_STOP if reason == "stop" else FINISH_EOS
    return FINISH_STOP


def _read_safely(resp: http.client.HTTPResponse) -> str:
    try:
        return resp.read(65536).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return ""


def _error_detail(body: str) -> str:
    """The server's error message on one line (OpenAI style {"error": {"message": ...}} or plain text)."""
    text = body.strip()
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            text = str(err.get("message") or err.get("detail") or err)
        elif err:
            text = str(err)
    except ValueError:
        pass
    return _short(text)


def _short(e: Any, limit: int = 200) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"
