"""The prompt of one completion, within one typed token budget.

`PromptBudget` is the budget: tokens for the whole prompt, for repository context and for the text after the
cursor. The server's settings produce it (`Settings.budget`), and training renders its examples and judges its
candidates with `PromptBudget.served(device)`, the same numbers, so an adapter is trained and gated on the prompts
users get.

`build_prompt`: repository context first (at most half of the budget), then the current file around the cursor
in whole lines. The prefix start moves in steps of `PREFIX_LINE_QUANTUM` lines and the suffix is capped, because
consecutive prompts share their tokens up to the cursor (the engine reuses that KV cache) and everything after the
cursor is computed again on each keystroke.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

from intarsia.model.fim import FimFormat, RepoFile

# Characters/lines of document text assumed per token when cutting a window before counting exactly.
_CHARS_PER_TOKEN_MAX = 8
# The start of the prompt's prefix moves in steps of this many lines, so that consecutive prompts share their
# beginning (the engines reuse the KV cache of the common token prefix).
PREFIX_LINE_QUANTUM = 32
# The suffix is recomputed on every keystroke (it follows the cursor in the prompt): keep it short, shorter still
# on a CPU, where re-reading 256 tokens takes longer than the keystroke budget.
SUFFIX_MAX_TOKENS = 256
SUFFIX_MAX_TOKENS_CPU = 48


@dataclass(frozen=True)
class PromptBudget:
    """Tokens of a prompt: all of it, the part for snippets of other files, and the part after the cursor."""

    prompt: int = 2048
    context: int = 512
    suffix: int = SUFFIX_MAX_TOKENS

    @classmethod
    def served(cls, device: str = "cpu") -> "PromptBudget":
        """What the server uses by default on `device` ("cpu", "cuda", or "remote" for a remote engine)."""
        return cls(suffix=SUFFIX_MAX_TOKENS_CPU if device == "cpu" else SUFFIX_MAX_TOKENS)

    def for_body(self) -> "PromptBudget":
        """The budget of a function body's prompt (`intarsia.generateFunction`, and training's body examples and
        held-out samples): the long suffix on every device, as it is computed once, not on every keystroke."""
        return replace(self, suffix=SUFFIX_MAX_TOKENS)


@dataclass(frozen=True)
class PromptParts:
    prompt: str
    prompt_tokens: int
    prefix_start: int  # str index of the document where the prompt's prefix starts
    suffix_end: int
    context_files: tuple[str, ...]


def _chars_within(piece_at: Callable[[int], str], limit: int, budget: int, count: Callable[[str], int]) -> int:
    """The largest n <= limit (found by shrinking) with count(piece_at(n)) <= budget: a cut by characters for
    text without usable line breaks."""
    n = min(limit, budget * 4)
    while n > 0:
        c = count(piece_at(n))
        if c <= budget:
            return n
        n = min(n - 1, int(n * budget / c * 0.9))
    return 0


def _line_starts(text: str, lo: int, hi: int) -> list[int]:
    """Indices in [lo, hi] where a line starts (after a \n)."""
    out = []
    pos = lo
    while True:
        nl = text.find("\n", pos, hi)
        if nl < 0:
            return out
        out.append(nl + 1)
        pos = nl + 1


def _fit_prefix(text: str, offset: int, budget: int, count: Callable[[str], int],
                quantum: int = PREFIX_LINE_QUANTUM) -> int:
    """Start index of a long prefix window (whole lines, start quantized) within `budget` tokens.

    Token counts are estimated from one count of a window and checked once or twice, not searched line by
    line: the tokenizer is the costly part of building a prompt."""
    if budget <= 0:
        return offset
    lo = max(0, offset - budget * _CHARS_PER_TOKEN_MAX)
    starts = ([0] if lo == 0 else []) + _line_starts(text, lo, offset)
    if not starts:  # one very long line: cut by characters
        return offset - _chars_within(lambda n: text[offset - n:offset], offset, budget, count)
    i = 0
    for _ in range(6):
        n = count(text[starts[i]:offset])
        if n <= budget:
            break
        if i == len(starts) - 1:  # the cursor's line alone is too long
            return offset - _chars_within(lambda k: text[offset - k:offset], offset - starts[i], budget, count)
        # Drop the estimated excess (plus 5 %) worth of characters, at the next line start.
        span = offset - starts[i]
        target = starts[i] + int(span * (n - budget) / n * 1.05) + 1
        j = i + 1
        while j < len(starts) - 1 and starts[j] < target:
            j += 1
        i = j
    else:
        return starts[-1]
    # Quantize by absolute line number so that the start stays put while the cursor moves within a few lines:
    # the earliest multiple of `quantum` lines that fits.
    first_line = text.count("\n", 0, starts[i])
    down = first_line // quantum * quantum
    j = i - (first_line - down)
    if down < first_line and j >= 0 and count(text[starts[j]:offset]) <= budget:
        return starts[j]
    return starts[min(i + (down + quantum - first_line if down < first_line else 0), len(starts) - 1)]


def _block_start(text: str, offset: int, quantum: int) -> int:
    """Index of the first line of the cursor's block of `quantum` lines (blocks counted from the text's start)."""
    line = text.count("\n", 0, offset)
    pos = text.rfind("\n", 0, offset) + 1
    for _ in range(line % quantum):
        pos = text.rfind("\n", 0, pos - 1) + 1
    return pos


def _fit_suffix(text: str, offset: int, budget: int, count: Callable[[str], int]) -> int:
    """End index of a long suffix window (whole lines) within `budget` tokens (estimate, then check)."""
    if budget <= 0:
        return offset
    hi = min(len(text), offset + budget * _CHARS_PER_TOKEN_MAX)
    ends = _line_starts(text, offset, hi)
    if hi == len(text) and (not ends or ends[-1] != len(text)):
        ends.append(len(text))
    if not ends:
        return offset + _chars_within(lambda n: text[offset:offset + n], hi - offset, budget, count)
    i = len(ends) - 1
    for _ in range(6):
        n = count(text[offset:ends[i]])
        if n <= budget:
            return ends[i]
        if i == 0:
            return offset + _chars_within(lambda k: text[offset:offset + k], ends[0] - offset, budget, count)
        target = offset + int((ends[i] - offset) * budget / n * 0.95)
        j = i - 1
        while j > 0 and ends[j] > target:
            j -= 1
        i = j
    return ends[0] if count(text[offset:ends[0]]) <= budget else offset


_BASE_TOKENS: "dict[tuple, int]" = {}
_BASE_LOCK = threading.Lock()


def _count_cached(count: Callable[[str], int], text: str) -> int:
    """count(text) for the repeated part of prompts (the rendered context), cached by content."""
    key = (id(getattr(count, "__self__", count)), len(text), hash(text))
    with _BASE_LOCK:
        n = _BASE_TOKENS.get(key)
    if n is None:
        n = count(text)
        with _BASE_LOCK:
            if len(_BASE_TOKENS) > 64:
                _BASE_TOKENS.clear()
            _BASE_TOKENS[key] = n
    return n


def build_prompt(fmt: FimFormat, count: Callable[[str], int], text: str, offset: int, *, budget: PromptBudget,
                 context_files: Sequence[RepoFile] = (), path: Optional[str] = None,
                 repo_name: Optional[str] = None, window_tokens: Optional[int] = None,
                 quantum: int = PREFIX_LINE_QUANTUM) -> PromptParts:
    """The FIM prompt for `text` at `offset`: repository context and as much of the file as `budget.prompt`
    allows.

    What is left after the context (never more than half of the prompt) goes to the prefix, except a quarter (at
    most `budget.suffix`) for the suffix: with prefix-suffix-middle prompts every keystroke changes the prompt at
    the cursor, so the whole suffix is recomputed each time, while the prefix comes from the KV cache.
    (`context_files` were chosen within `budget.context`.) `window_tokens` caps the current file's part (prefix
    and suffix) while the context stays whole: a quick prompt that shares the full one's context, and so its KV
    cache. The prefix starts on a multiple of `quantum` lines. `prompt_tokens` is an estimate (the sum of the
    parts); the engine reports the exact count."""
    total, suffix_max = budget.prompt, budget.suffix
    files = list(context_files)
    base = fmt.render("", "", repo_name=repo_name, context_files=files, path=path)
    base_tokens = _count_cached(count, base)
    while files and base_tokens > total // 2:  # context never takes more than half of the prompt
        files.pop(0)
        base = fmt.render("", "", repo_name=repo_name, context_files=files, path=path)
        base_tokens = _count_cached(count, base)
    left = max(total - base_tokens, 16)
    if window_tokens is not None:
        left = max(min(left, window_tokens), 16)
    suffix_budget = min(left // 4, suffix_max)
    pstart = -1
    if window_tokens is not None:
        # The window's start depends only on the text above the cursor's block of `quantum` lines (half the
        # prefix budget of it), so that typing inside the block, new lines included, keeps the prompt's
        # beginning and its KV cache; when the block itself outgrows the budget, the usual fit applies.
        block = _block_start(text, offset, quantum)
        above = _fit_prefix(text, block, (left - suffix_budget) // 2, count, quantum)
        if count(text[above:offset]) <= left - suffix_budget:
            pstart = above
    if pstart < 0:
        pstart = _fit_prefix(text, offset, left - suffix_budget, count, quantum)
    prefix_tokens = count(text[pstart:offset])
    if pstart == 0:  # the whole prefix fits: what it leaves over may go to the suffix (still capped)
        suffix_budget = min(left - prefix_tokens, suffix_max)
    send = _fit_suffix(text, offset, suffix_budget, count)
    prefix = text[pstart:offset]
    suffix = text[offset:send]
    prompt = fmt.render(prefix, suffix, repo_name=repo_name, context_files=files, path=path)
    est = base_tokens + prefix_tokens + count(text[offset:send])
    return PromptParts(prompt, est, pstart, send, tuple(f.path for f in files))


__all__ = ["PromptBudget", "PromptParts", "build_prompt", "PREFIX_LINE_QUANTUM", "SUFFIX_MAX_TOKENS",
           "SUFFIX_MAX_TOKENS_CPU"]
