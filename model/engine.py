"""The engine interface: generate a continuation of a prompt, greedy by default.

Every engine (ONNX Runtime, transformers, remote) implements `Engine.generate`, which takes a frozen
`GenerationRequest`, an optional cancel event that is checked before every new token, and an optional
callback that receives text as it becomes final (streaming). Stop strings are applied by `StopMatcher`,
shared by all engines so they cut at the same place.

`Engine` declares everything a caller may use on any engine, with defaults that are true of an engine that
has no such feature: where it runs (`provider`), the run-time adapter API (`can_load_adapters`,
`adapter_names`, `load_adapter`, `unload_adapter`, `default_adapter`) and `reset_cache`. Callers therefore
never probe an engine with getattr, and an engine that lacks a feature says so with an EngineError instead of
an AttributeError.
"""

from __future__ import annotations

import abc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from .chat import ChatMessage, ChatTemplateError, render_chat
from .errors import EngineError

FINISH_STOP = "stop"  # a stop string matched
FINISH_EOS = "eos"  # the model emitted an end token
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_CANCELLED = "cancelled"  # the cancel event was set

# An explicit "no adapter" name for `GenerationRequest.adapter` and `Engine.default_adapter` (None in a request
# means the engine's default adapter).
BASE_ADAPTER = ""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    # 0 means greedy. Sampling parameters are honoured by engines that support them.
    temperature: float = 0.0
    top_p: float = 1.0
    # Sampling only: the same seed, prompt and parameters give the same tokens (an engine's own random generator
    # when None). Greedy requests ignore it.
    seed: Optional[int] = None
    # Name of a loaded LoRA adapter to apply for this request (None: the engine's active default).
    adapter: Optional[str] = None
    # Benchmarks only: keep generating through end tokens so every engine produces max_new_tokens.
    ignore_eos: bool = False


@dataclass(frozen=True)
class Timings:
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose KV cache came from the previous request
    new_tokens: int
    first_token_s: float  # request start → first new token available
    prefill_s: float  # time spent on the prompt's (non-reused) tokens
    decode_s: float  # time spent on the remaining new tokens
    total_s: float

    @property
    def prefill_tps(self) -> float:
        n = self.prompt_tokens - self.reused_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        n = max(self.new_tokens - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    timings: Timings
    extra: dict = field(default_factory=dict)


TextCallback = Callable[[str], None]


class StopMatcher:
    """Incremental stop-string matching over streamed text.

    `feed(piece)` returns the part of the text that is final (cannot be the start of a stop string);
    `stopped` tells whether a stop string was seen, and `text` is the full output cut before it.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._buf = ""
        self._emitted = 0
        self.stopped = False
        self._longest = max((len(s) for s in self.stops), default=0)

    @property
    def text(self) -> str:
        return self._buf

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        start_search = max(0, len(self._buf) - self._longest + 1)
        self._buf += piece
        cut = None
        for s in self.stops:
            i = self._buf.find(s, start_search)
            if i != -1 and (cut is None or i < cut):
                cut = i
        if cut is not None:
            self._buf = self._buf[:cut]
            self.stopped = True
            out = self._buf[self._emitted :]
            self._emitted = len(self._buf)
            return out
        # Hold back a tail that could still become a stop string.
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self._buf)), 0, -1):
                if self._buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        safe = len(self._buf) - hold
        out = self._buf[self._emitted : safe] if safe > self._emitted else ""
        self._emitted = max(self._emitted, safe)
        return out

    def flush(self) -> str:
        out = self._buf[self._emitted :]
        self._emitted = len(self._buf)
        return out


class Engine(abc.ABC):
    """A text generator. Implementations must be safe to call from one worker thread at a time.

    Besides `generate` and `encode`, every engine has (defaults in brackets, for an engine without the feature):
    - `provider` ("unknown"): where the model runs: "cpu" or "cuda" for an in-process engine, "remote" for an
      engine that asks a server on another machine; "unknown" when the engine does not say (a test double).
      A plain attribute: it may be set.
    - `can_load_adapters` (False): whether `load_adapter`/`unload_adapter` work at run time.
    - `adapter_names` (()): names a request may select with `GenerationRequest.adapter`.
    - `load_adapter(name, path)` (raises EngineError): make the adapter at `path` selectable as `name`.
    - `unload_adapter(name)` (raises EngineError: the name is not loaded).
    - `default_adapter` (None): the adapter requests with `adapter=None` run with; None is the base model.
      Settable: to None or BASE_ADAPTER (the base model) on any engine, to a loaded name where the engine has one;
      an unknown name is an EngineError when set (engines without run-time adapters) or for the requests that use
      it (OrtEngine, where an adapter may be loaded after it is named).
    - `reset_cache()` (does nothing): forget what the engine keeps between requests; the next one runs cold.
    - `chat_template` (None): the model's own chat template (Jinja source, `model.chat`); `render_chat(messages)`
      renders a conversation with it (ChatTemplateError when the model has none).
    A request runs on the base model, without any adapter, with `GenerationRequest(adapter=BASE_ADAPTER)`:
    every engine honours it, whatever its default adapter.
    """

    name: str = "engine"
    provider: str = "unknown"
    can_load_adapters: bool = False

    @abc.abstractmethod
    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: Optional[threading.Event] = None,
        on_text: Optional[TextCallback] = None,
    ) -> GenerationResult:
        """Generate up to `request.max_new_tokens` tokens; check `cancel` before each token."""

    def stream(self, request: GenerationRequest, *, cancel: Optional[threading.Event] = None) -> Iterator[str]:
        """Yield text pieces as they are produced (runs `generate` in a helper thread)."""
        import queue

        q: "queue.Queue[object]" = queue.Queue()
        done = object()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.generate(request, cancel=cancel, on_text=q.put)
            except BaseException as e:  # re-raised in the consumer
                errors.append(e)
            finally:
                q.put(done)

        t = threading.Thread(target=run, name=f"{self.name}-stream", daemon=True)
        t.start()
        while True:
            item = q.get()
            if item is done:
                break
            yield item  # type: ignore[misc]
        t.join()
        if errors:
            raise errors[0]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as the engine's tokenizer splits it (special tokens recognised)."""

    # ---- adapters (defaults: an engine without run-time adapters) --------------------------------------------

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The adapters a request may name (BASE_ADAPTER, the base model, is always accepted)."""
        return ()

    def load_adapter(self, name: str, path: Path | str) -> None:
        """Load the adapter at `path` under `name` (replacing one of that name)."""
        raise EngineError(f"the {self.name} engine cannot load adapters at run time (asked to load '{name}')")

    def unload_adapter(self, name: str) -> None:
        """Forget the adapter `name`; when it was the default, the default becomes None (the base model)."""
        raise EngineError(f"adapter '{name}' is not loaded (the {self.name} engine has no run-time adapters)")

    @property
    def default_adapter(self) -> Optional[str]:
        """The adapter requests with `adapter=None` run with (None: the base model)."""
        return None

    @default_adapter.setter
    def default_adapter(self, name: Optional[str]) -> None:
        if name not in (None, BASE_ADAPTER):
            raise EngineError(f"adapter '{name}' is not loaded (the {self.name} engine has no run-time adapters)")

    # ---- chat ------------------------------------------------------------------------------------------------

    @property
    def chat_template(self) -> Optional[str]:
        """The model's chat template (Jinja source), None when the model has none (or the engine cannot say)."""
        return None

    def render_chat(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt of `messages` in the model's own chat format, ending where the assistant's answer starts
        (with `add_generation_prompt`). Raises ChatTemplateError when the model has no chat template."""
        template = self.chat_template
        if template is None:
            raise ChatTemplateError(f"the {self.name} engine's model has no chat template (no chat_template.jinja "
                                    "or tokenizer_config.json chat_template): it can only be prompted for code "
                                    "completion")
        return render_chat(template, messages, add_generation_prompt=add_generation_prompt)

    # ---- state -----------------------------------------------------------------------------------------------

    def reset_cache(self) -> None:
        """Forget any cache kept between requests (the next request runs cold). Default: nothing is kept."""

    @property
    def kv_slots(self) -> int:
        """KV caches kept between requests (0: none)."""
        return 0

    @property
    def kv_cache_bytes(self) -> int:
        """Memory those caches hold."""
        return 0

    def cached_tokens(self, prompt: str, *, adapter: Optional[str] = None) -> int:
        """How many tokens of `prompt` a request would not compute again (a kept KV cache). Default: 0."""
        return 0

    def prefill(self, prompt: str, *, adapter: Optional[str] = None, cancel: Optional[threading.Event] = None,
                reserve: int = 256, chunk: int = 64) -> int:
        """Compute the KV cache of `prompt` ahead of its request (idle-time pre-warming), stopping at `cancel`;
        returns the tokens computed. Default: an engine that keeps no cache computes nothing (0)."""
        return 0

    def close(self) -> None:
        """Release the model; the engine cannot be used afterwards."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stopwatch:
    """Collects the timing points of one generation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: Optional[float] = None
        self.prefill_end: Optional[float] = None

    def mark_prefill_done(self) -> None:
        if self.prefill_end is None:
            self.prefill_end = time.perf_counter()

    def mark_token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def timings(self, prompt_tokens: int, reused: int, new_tokens: int) -> Timings:
        end = time.perf_counter()
        first = (self.first or end) - self.t0
        prefill = (self.prefill_end or self.first or end) - self.t0
        return Timings(
            prompt_tokens=prompt_tokens,
            reused_tokens=reused,
            new_tokens=new_tokens,
            first_token_s=first,
            prefill_s=prefill,
            decode_s=max(end - (self.first or end), 0.0),
            total_s=end - self.t0,
        )
