"""`TestEngine`: a deterministic `Engine` for protocol tests and editor integration work (setting engine "test").

It finds the FIM prefix and suffix in the prompt, answers from a table (the longest key the prefix ends with),
else with a rule (the rest of an earlier line that starts like the current one), and emits the answer token by
token with an optional delay, checking the cancel event before each token like the real engines. A table value
starting with `RAISE_MARKER` makes it raise (tests of the server's error handling).
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from typing import Mapping, Optional, Sequence

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

# A table value that makes the test engine raise (tests of the server's error handling).
RAISE_MARKER = "!raise "


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
    ):
        self.fim_format = fim_format
        items = table.items() if isinstance(table, Mapping) else table
        # Longest keys first: the most specific entry wins.
        self.table = sorted(((k, v) for k, v in items if k), key=lambda kv: -len(kv[0]))
        self.token_delay_s = max(float(token_delay_s), 0.0)
        self.calls = 0
        self.last_prompt: Optional[str] = None
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

    # ---- generation

    def split_prompt(self, prompt: str) -> tuple[str, str]:
        """(prefix, suffix) of the current file in a rendered FIM prompt."""
        f = self.fim_format
        p = prompt.rfind(f.prefix_token)
        if p < 0:
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
            self.calls += 1
            self.last_prompt = request.prompt
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
            timings=sw.timings(prompt_tokens, 0, produced),
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


__all__ = ["TestEngine", "RAISE_MARKER"]
