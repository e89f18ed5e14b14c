"""In-process decoding: what the ONNX Runtime and transformers engines share, so that they cannot drift apart.

The transformers engine is the reference the ONNX Runtime engine is tested against token for token. That
comparison only means something if everything around the forward pass is one piece of code: how a request is
checked and its prompt encoded, how tokens become text and where stop strings cut it, when cancel is
honoured, how end tokens and the token limit finish a generation, how sampling picks a token, and how a
failure surfaces (an EngineError, except the caller's own streaming-callback error, which passes through
unchanged). This module holds that piece: `LocalEngine`, the base of the in-process engines, with the one
`generate`; the token loop (`decode_loop`, `TextAssembler`, `sample_token`); and `HfTokenizerFile`, the
tokenizer.json reader every engine (the remote one included) splits text with. An engine module keeps only
what is its own runtime's: how a forward pass runs and what it caches.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from .engine import (BASE_ADAPTER, FINISH_CANCELLED, FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Engine, GenerationRequest,
                     GenerationResult, StopMatcher, Stopwatch, TextCallback)
from .errors import EngineError

# --------------------------------------------------------------------------------------------------------------
# Tokens and text
# --------------------------------------------------------------------------------------------------------------


class HfTokenizerFile:
    """Encode/decode with a `tokenizer.json` (the `tokenizers` library); special tokens are kept in decoded text."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)


class TextAssembler:
    """Turns generated token ids into final text: incremental decoding plus stop-string matching.

    Decoding re-decodes the generated ids each step (a few hundred ids at most, microseconds), preceded by
    `context_ids` (the last prompt token) so tokenizers that strip a leading space from the first token of a
    decode (SentencePiece) still produce the right text; the context's own text is cut off. Text that ends in
    an incomplete UTF-8 sequence (U+FFFD at the end) is held back until the next token completes it.
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        stops: Sequence[str],
        context_ids: Sequence[int] = (),
    ):
        self._decode = decode
        self._ctx = list(context_ids)
        self._ctx_len = len(decode(self._ctx)) if self._ctx else 0
        self._ids: list[int] = []
        self._stable = 0  # characters of decoded text already fed to the matcher
        self.matcher = StopMatcher(stops)

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    @property
    def text(self) -> str:
        return self.matcher.text

    def _decoded(self) -> str:
        return self._decode(self._ctx + self._ids)[self._ctx_len :]

    def add(self, token_id: int) -> str:
        """Add one generated token; return the text that became final (may be empty)."""
        self._ids.append(int(token_id))
        text = self._decoded()
        if text.endswith("\ufffd"):
            return ""
        piece = text[self._stable :]
        self._stable = len(text)
        return self.matcher.feed(piece) if piece else ""

    def finish(self) -> str:
        """Release everything still held back (incomplete characters, a possible stop-string start)."""
        if self.matcher.stopped:
            return ""
        text = self._decoded() if self._ids else ""
        out = ""
        piece = text[self._stable :]
        self._stable = len(text)
        if piece:
            out += self.matcher.feed(piece)
        if not self.matcher.stopped:
            out += self.matcher.flush()
        return out


# --------------------------------------------------------------------------------------------------------------
# The token loop
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LoopOutcome:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


def decode_loop(
    request: GenerationRequest,
    next_token: Callable[[], int],
    assembler: TextAssembler,
    eos_ids: Iterable[int],
    stopwatch: Stopwatch,
    *,
    max_new_tokens: Optional[int] = None,
    cancel: Optional[threading.Event] = None,
    on_text: Optional[TextCallback] = None,
) -> LoopOutcome:
    """The token loop every local engine runs.

    `cancel` is checked before every call of `next_token` (each call runs at most one forward pass). Returned
    `token_ids` are all generated tokens, the end token included when one ended the generation; `text` is cut
    before the first stop string and never contains the end token. With `request.ignore_eos` (benchmarks) the
    loop runs to the token limit: end tokens are ordinary tokens, stop strings still cut `text`, and the finish
    reason is "length" unless cancelled.
    """
    ignore_eos = bool(getattr(request, "ignore_eos", False))
    eos = frozenset() if ignore_eos else frozenset(int(e) for e in eos_ids)
    limit = request.max_new_tokens if max_new_tokens is None else max_new_tokens
    ids: list[int] = []
    finish = FINISH_LENGTH
    for _ in range(max(limit, 0)):
        if cancel is not None and cancel.is_set():
            finish = FINISH_CANCELLED
            break
        tok = int(next_token())
        stopwatch.mark_token()
        ids.append(tok)
        if tok in eos:
            finish = FINISH_EOS
            break
        piece = assembler.add(tok)
        if piece and on_text is not None:
            on_text(piece)
        if assembler.stopped and not ignore_eos:
            finish = FINISH_STOP
            break
    tail = assembler.finish()
    if tail and on_text is not None:
        on_text(tail)
    if assembler.stopped and not ignore_eos:
        finish = FINISH_STOP
    return LoopOutcome(text=assembler.text, token_ids=tuple(ids), finish_reason=finish)


def sample_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy when temperature <= 0, else temperature + nucleus (top-p) sampling."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if 0 < top_p < 1:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]
        q = p[keep] / p[keep].sum()
        return int(keep[rng.choice(len(keep), p=q)])
    return int(rng.choice(len(p), p=p))


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts are hundreds of tokens and usually share almost all of them.
    step = 64
    while i + step <= n and list(a[i : i + step]) == list(b[i : i + step]):
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


# --------------------------------------------------------------------------------------------------------------
# The in-process engine
# --------------------------------------------------------------------------------------------------------------


class _GuardedCallback:
    """Calls `on_text` and remembers an exception it raised, so engines can re-raise it unchanged."""

    def __init__(self, fn: TextCallback):
        self._fn = fn
        self.raised: Optional[BaseException] = None

    def __call__(self, piece: str) -> None:
        try:
            self._fn(piece)
        except BaseException as e:
            self.raised = e
            raise


def first_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@dataclass(frozen=True)
class PreparedRequest:
    """A request as `LocalEngine.generate` hands it to an engine's `_generate_locked`: checked and encoded."""

    request: GenerationRequest
    prompt: list[int]  # the encoded prompt: not empty, shorter than the context
    max_new: int  # tokens that may follow: request.max_new_tokens, cut to what the context has room for
    adapter: Optional[str]  # the adapter to run with (None: the base model)
    stopwatch: Stopwatch  # started before the prompt was encoded
    cancel: Optional[threading.Event]
    on_text: Optional[TextCallback]  # guarded: an exception it raises is re-raised unchanged by `generate`


class LocalEngine(Engine):
    """An engine whose model runs in this process: one `generate` for all of them.

    `generate` holds the engine's lock, refuses a closed engine, resolves the request's adapter
    (`_select_adapter`), encodes the prompt (an empty one, or one that fills the context, is an EngineError),
    computes how many tokens may follow it, and calls the subclass's `_generate_locked` with a
    `PreparedRequest`. Any other exception from there becomes "<runtime> generation failed: <first line>" after
    `_after_failure` has run, except an exception the caller's `on_text` raised, which propagates unchanged.

    A subclass calls `LocalEngine.__init__` first, then sets `_tok` (encode/decode), `context_length` and
    `eos_token_ids`, and names itself in messages with `_engine_label` ("the <label> engine is closed") and
    `_runtime_label` ("<label> generation failed: ...").
    """

    _engine_label = "local"
    _runtime_label = "local"
    context_length: int
    eos_token_ids: tuple[int, ...]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._tok: Any = None
        self._chat_template: Optional[str] = None  # a subclass reads it from its model folder (model.chat)

    @property
    def chat_template(self) -> Optional[str]:
        return self._chat_template

    # ---- tokenizer -------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids)

    # ---- generation ------------------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: Optional[threading.Event] = None,
        on_text: Optional[TextCallback] = None,
    ) -> GenerationResult:
        with self._lock:
            self._check_open()
            callback = _GuardedCallback(on_text) if on_text is not None else None
            try:
                sw = Stopwatch()
                adapter = self._select_adapter(request.adapter)
                prompt = self.encode(request.prompt)
                if not prompt:
                    raise EngineError("the prompt is empty")
                if len(prompt) >= self.context_length:
                    raise EngineError(
                        f"the prompt has {len(prompt)} tokens; the model's context is {self.context_length} tokens"
                    )
                max_new = min(max(request.max_new_tokens, 0), self.context_length - len(prompt))
                return self._generate_locked(PreparedRequest(request, prompt, max_new, adapter, sw, cancel, callback))
            except EngineError:
                raise
            except Exception as e:
                if callback is not None and callback.raised is e:
                    raise  # the caller's own error; the engine's state is consistent
                self._after_failure()
                raise EngineError(f"{self._runtime_label} generation failed: {first_line(e)}") from e

    @abc.abstractmethod
    def _generate_locked(self, job: PreparedRequest) -> GenerationResult:
        """Generate up to `job.max_new` tokens after `job.prompt` with `job.adapter` (under the lock)."""

    def _after_failure(self) -> None:
        """Called (under the lock) after the runtime raised: leave the engine fit for the next request."""

    def _run_loop(self, job: PreparedRequest, next_token: Callable[[], int]) -> LoopOutcome:
        """`decode_loop` with this engine's tokenizer and end tokens, text decoded after the last prompt token."""
        assembler = TextAssembler(self.decode, job.request.stop, job.prompt[-1:])
        return decode_loop(
            job.request,
            next_token,
            assembler,
            self.eos_token_ids,
            job.stopwatch,
            max_new_tokens=job.max_new,
            cancel=job.cancel,
            on_text=job.on_text,
        )

    @staticmethod
    def _result(
        job: PreparedRequest, text: str, ids: Sequence[int], finish: str, reused: int, extra: dict
    ) -> GenerationResult:
        """The result of `job`: timings counted from its stopwatch, `reused` prompt tokens from the cache."""
        return GenerationResult(
            text=text,
            token_ids=tuple(ids),
            finish_reason=finish,
            timings=job.stopwatch.timings(len(job.prompt), reused, len(ids)),
            extra=extra,
        )

    # ---- adapters --------------------------------------------------------------------------------------------

    def _select_adapter(self, requested: Optional[str]) -> Optional[str]:
        """The adapter a request runs with: its own, else the default; None for the base model."""
        name = self.default_adapter if requested is None else requested
        if name in (None, BASE_ADAPTER):
            return None
        if name not in self.adapter_names:
            raise EngineError(self._not_loaded_message(name))
        return name

    def _not_loaded_message(self, name: str) -> str:
        return f"adapter '{name}' is not loaded (loaded: {', '.join(self.adapter_names) or 'none'})"

    # ---- life ------------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"the {self._engine_label} engine is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._release_locked()
            self._closed = True

    def _release_locked(self) -> None:
        """Drop the model and whatever holds memory (under the lock, once)."""
