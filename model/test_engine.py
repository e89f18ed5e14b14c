"""`TestEngine`: a deterministic `Engine` for protocol tests and editor integration work (setting engine "test").

It finds the FIM prefix and suffix in the prompt, answers from a table (the longest key the prefix ends with),
else with a rule (the rest of an earlier line that starts like the current one), and emits the answer token by
token with an optional delay, checking the cancel event before each token like the real engines. A table value
starting with `RAISE_MARKER` makes it raise (tests of the server's error handling).

Like the default model it has a chat template (ChatML, `TEST_CHAT_TEMPLATE`): a chat prompt is answered from the
table by the longest key its last user message ends with. It has no adapters: a request may name none
(`adapter=None`) or the base model (`BASE_ADAPTER`); `last_adapter` records what the last request asked for.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from typing import Mapping, Optional, Sequence

from .engine import (
    BASE_ADAPTER,
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

# A table value that makes the test engine raise (tests of the server's error handling).
RAISE_MARKER = "!raise "

# The chat format of the test engine: ChatML, the format of the default model's template.
TEST_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CHAT_USER = "<|im_start|>user\n"
_CHAT_END = "<|im_end|>"


_TOKEN_RE = re.compile(r"[A-Za-z_0-9]+|[ \t]+|\r?\n|[^\sA-Za-z_0-9]", re.UNICODE)


class TestEngine(Engine):
    """Deterministic completions from a table or a rule; see the module docstring."""

    __test__ = False  # not a pytest test class
    name = "test"
    provider = "test"  # runs on no device: the server's non-CPU prompt defaults apply

    def __init__(
        self,
        *,
        fim_format: FimFormat = QWEN25_CODER,
        table: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        token_delay_s: float = 0.0,
        chat_template: Optional[str] = TEST_CHAT_TEMPLATE,
    ):
        self.fim_format = fim_format
        self._chat_template = chat_template
        self.last_adapter: Optional[str] = None
        items = table.items() if isinstance(table, Mapping) else table
        # Longest keys first: the most specific entry wins.
        self.table = sorted(((k, v) for k, v in items if k), key=lambda kv: -len(kv[0]))
        self.token_delay_s = max(float(token_delay_s), 0.0)
        self.calls = 0
        self.last_prompt: Optional[str] = None
        self.prefills = 0
        self._kv: list[str] = []  # the pieces of the last prompt run or pre-filled: a one-slot "KV cache"
        self._lock = threading.Lock()
        self._closed = False
        specials = sorted(set(fim_format.special_tokens), key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(s) for s in specials)) if specials else None

    # ---- tokens

    def _pieces(self, text: str) -> list[str]:
        out: list[str] = []
        pos = 0
        if self._special_re is not None:
            for m in self._special_re.finditer(text):
                out.extend(_TOKEN_RE.findall(text[pos:m.start()]))
                out.append(m.group(0))
                pos = m.end()
        out.extend(_TOKEN_RE.findall(text[pos:]))
        return out

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(p.encode("utf-8", "surrogatepass")) & 0xFFFF for p in self._pieces(text)]

    def count_tokens(self, text: str) -> int:
        return len(self._pieces(text))

    # ---- a stand-in KV cache (pre-warming tests)

    def cached_tokens(self, prompt: str, *, adapter: Optional[str] = None) -> int:
        pieces = self._pieces(prompt)
        n = 0
        for a, b in zip(self._kv, pieces):
            if a != b:
                break
            n += 1
        return min(n, max(len(pieces) - 1, 0))

    def prefill(self, prompt: str, *, adapter: Optional[str] = None, cancel: Optional[threading.Event] = None,
                reserve: int = 256, chunk: int = 64) -> int:
        """"Computes" the prompt's pieces not in the stand-in cache, `token_delay_s` per chunk of `chunk`."""
        with self._lock:
            if self._closed:
                raise EngineError("the test engine is closed")
            self.prefills += 1
        pieces = self._pieces(prompt)
        have = self.cached_tokens(prompt)
        self._kv = self._kv[:have]
        pos = have
        while pos < len(pieces):
            if cancel is not None and cancel.is_set():
                break
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            pos = min(pos + chunk, len(pieces))
            self._kv = pieces[:pos]
        return pos - have

    @property
    def chat_template(self) -> Optional[str]:
        return self._chat_template

    # ---- generation

    def split_prompt(self, prompt: str) -> tuple[str, str]:
        """(prefix, suffix) of the current file in a rendered FIM prompt; for a chat prompt, (its last user
        message, "")."""
        f = self.fim_format
        p = prompt.rfind(f.prefix_token)
        if p < 0:
            u = prompt.rfind(_CHAT_USER)
            if u >= 0 and self._chat_template is not None:
                message = prompt[u + len(_CHAT_USER):]
                e = message.find(_CHAT_END)
                return (message[:e] if e >= 0 else message), ""
            return prompt, ""
        rest = prompt[p + len(f.prefix_token) + len(f.prefix_sep):]
        s = rest.find(f.suffix_token)
        if s < 0:
            return rest, ""
        prefix = rest[:s]
        if f.suffix_sep and prefix.endswith(f.suffix_sep):
            prefix = prefix[: -len(f.suffix_sep)]
        suffix = rest[s + len(f.suffix_token):]
        m = suffix.rfind(f.middle_token)
        if m >= 0:
            suffix = suffix[:m]
        if f.middle_sep and suffix.endswith(f.middle_sep):
            suffix = suffix[: -len(f.middle_sep)]
        return prefix, suffix

    def answer(self, prefix: str, suffix: str) -> str:
        for key, value in self.table:
            if prefix.endswith(key):
                return value
        return _echo_rule(prefix)

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: Optional[threading.Event] = None,
        on_text: Optional[TextCallback] = None,
    ) -> GenerationResult:
        with self._lock:
            if self._closed:
                raise EngineError("the test engine is closed")
            if request.adapter not in (None, BASE_ADAPTER):
                raise EngineError(f"adapter '{request.adapter}' is not loaded (the test engine has no adapters)")
            self.calls += 1
            self.last_prompt = request.prompt
            self.last_adapter = request.adapter
            reused = self.cached_tokens(request.prompt)
            self._kv = self._pieces(request.prompt)
        sw = Stopwatch()
        prompt_tokens = self.count_tokens(request.prompt)
        prefix, suffix = self.split_prompt(request.prompt)
        answer = self.answer(prefix, suffix)
        if answer.startswith(RAISE_MARKER):
            raise RuntimeError(answer[len(RAISE_MARKER):] or "test engine failure")
        sw.mark_prefill_done()
        matcher = StopMatcher(request.stop)
        pieces = self._pieces(answer)
        finish = FINISH_EOS
        produced = 0
        for i, piece in enumerate(pieces):
            if cancel is not None and cancel.is_set():
                finish = FINISH_CANCELLED
                break
            if produced >= request.max_new_tokens:
                finish = FINISH_LENGTH
                break
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            sw.mark_token()
            produced += 1
            out = matcher.feed(piece)
            if out and on_text is not None:
                on_text(out)
            if matcher.stopped:
                finish = FINISH_STOP
                break
        if not matcher.stopped:
            tail = matcher.flush()
            if tail and on_text is not None:
                on_text(tail)
        ids = tuple(self.encode(matcher.text))
        return GenerationResult(
            text=matcher.text,
            token_ids=ids,
            finish_reason=finish,
            timings=sw.timings(prompt_tokens, reused, produced),
            extra={"engine": "test"},
        )

    def close(self) -> None:
        self._closed = True


def _echo_rule(prefix: str) -> str:
    """The rest of the latest earlier line that starts with the current line's text (indentation aside)."""
    ls = prefix.rfind("\n") + 1
    typed = prefix[ls:].lstrip(" \t")
    if not typed.strip():
        return ""
    for line in reversed(prefix[:ls].splitlines()):
        body = line.lstrip(" \t")
        if body.startswith(typed) and len(body) > len(typed):
            return body[len(typed):]
    return ""


__all__ = ["TestEngine", "RAISE_MARKER", "TEST_CHAT_TEMPLATE"]
