"""The completion pipeline, plain synchronous Python (no LSP types, no event loop).

    document snapshot → should_complete (scope) → repository context → prompt within a token budget → engine
    → post-processing (grammars) → the text to insert

Documents: `Document` holds the text of an open document (and, for a known language, an incrementally
parsed tree-sitter tree); LSP positions are converted here, in the encoding the client negotiated ("utf-16"
by default, "utf-8" or "utf-32"), with the LSP's line breaks (\\n, \\r\\n, \\r). `Document.snapshot(offset)`
returns an immutable `Snapshot` (the text is an immutable str, the tree a copy) that a worker thread can use
while the event loop keeps applying edits.

Prompts (`build_prompt`): repository context first (at most half of the budget), then the current file
around the cursor in whole lines. The prefix start moves in steps of `PREFIX_LINE_QUANTUM` lines and the suffix
is capped at `SUFFIX_MAX_TOKENS`, because consecutive prompts share their tokens up to the cursor (the engine
reuses that KV cache) and everything after the cursor is computed again on each keystroke.

`run_completion(snapshot, engine=..., fim_format=..., options=..., cancel=...)` runs one completion and returns
a `CompletionOutcome` with the per-stage timings, which it also logs. The engine is stopped early once the
scope needs no more lines. `generate_function(...)` writes the body of the function at the cursor (signature
and docstring present, body empty or a placeholder).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import tree_sitter

from intarsia.grammars.document import ParsedDocument
from intarsia.grammars.lexer import indent_width, leading_ws
from intarsia.grammars.postprocess import postprocess
from intarsia.grammars.registry import Language, get_language, language_for_path
from intarsia.grammars.scope import MAX_TOKENS_BLOCK, MAX_TOKENS_LINE, Scope, ScopeDecision, completion_scope
from intarsia.model.engine import FINISH_CANCELLED, FINISH_LENGTH, Engine, GenerationRequest
from intarsia.model.errors import IntarsiaError
from intarsia.model.fim import FimFormat, RepoFile

log = logging.getLogger(__name__)

ENCODINGS = ("utf-16", "utf-8", "utf-32")
_NL = re.compile(r"\r\n|\r|\n")
# Characters/lines of document text assumed per token when cutting a window before counting exactly.
_CHARS_PER_TOKEN_MAX = 8
# The start of the prompt's prefix moves in steps of this many lines, so that consecutive prompts share their
# beginning (the engines reuse the KV cache of the common token prefix).
PREFIX_LINE_QUANTUM = 32
# The suffix is recomputed on every keystroke (it follows the cursor in the prompt): keep it short, shorter still
# on a CPU, where re-reading 256 tokens takes longer than the keystroke budget.
SUFFIX_MAX_TOKENS = 256
SUFFIX_MAX_TOKENS_CPU = 48


class PositionError(ValueError):
    """An LSP position outside the document."""


class DocumentError(ValueError):
    """A change that cannot be applied (a range outside the document)."""


# ------------------------------------------------------------------------------------------------ positions


def _line_content_end(text: str, start: int) -> int:
    """Index of the line break ending the line that starts at `start` (or len(text))."""
    nl = text.find("\n", start)
    end = len(text) if nl < 0 else nl
    cr = text.find("\r", start, end)
    return end if cr < 0 else cr


def _units(ch: str, encoding: str) -> int:
    if encoding == "utf-16":
        return 2 if ord(ch) > 0xFFFF else 1
    if encoding == "utf-8":
        return len(ch.encode("utf-8", "surrogatepass"))
    return 1


def _index_in_line(line_text: str, character: int, encoding: str) -> int:
    """str index in `line_text` of a position `character` code units in (clamped to the line's end; a position
    inside a character is moved to its start)."""
    if character <= 0:
        return 0
    if encoding == "utf-32" or line_text.isascii():
        return min(character, len(line_text))
    units = 0
    for i, ch in enumerate(line_text):
        w = _units(ch, encoding)
        if units + w > character:
            return i
        units += w
    return len(line_text)


def offset_at(text: str, line: int, character: int, encoding: str = "utf-16", *, strict: bool = False,
              index: Optional["LineIndex"] = None) -> int:
    """str index of an LSP position. Beyond the last line: the end of the document, or PositionError with
    `strict`. Beyond the end of a line: the line's end (as the LSP specifies). `index`: the text's LineIndex
    (built here when not given)."""
    if line < 0 or character < 0:
        raise PositionError(f"negative position {line}:{character}")
    start = (index or LineIndex(text)).line_start(line)
    if start < 0:
        if strict:
            raise PositionError(f"line {line} is past the end of the document")
        return len(text)
    end = _line_content_end(text, start)
    return start + _index_in_line(text[start:end], character, encoding)


def position_at(text: str, offset: int, encoding: str = "utf-16", *, index: Optional["LineIndex"] = None
                ) -> tuple[int, int]:
    """(line, character) of a str index, `character` in `encoding` code units. An index between the \\r and
    the \\n of a line break is on the line the pair ends."""
    offset = max(0, min(offset, len(text)))
    index = index or LineIndex(text)
    line = index.line_of(offset)
    seg = text[index.line_start(line):offset]
    if encoding == "utf-32" or seg.isascii():
        return line, len(seg)
    if encoding == "utf-16":
        return line, len(seg) + sum(1 for ch in seg if ord(ch) > 0xFFFF)
    return line, len(seg.encode("utf-8", "surrogatepass"))


class LineIndex:
    """Where each line of a text starts (LSP line breaks: \\n, \\r\\n, \\r), kept up to date through edits.

    Converting an LSP position walks no lines: the start of line n is an array lookup and the line of an offset
    a binary search. An edit recomputes only the starts inside the replaced span and shifts the ones after it
    (one vector add), so a document with millions of lines costs milliseconds per keystroke, not seconds."""

    def __init__(self, text: str):
        self.starts = _all_line_starts(text)

    @property
    def lines(self) -> int:
        return len(self.starts)

    def line_start(self, line: int) -> int:
        """str index where 0-based `line` starts, or -1 when the text has fewer lines."""
        return int(self.starts[line]) if 0 <= line < len(self.starts) else -1

    def line_of(self, offset: int) -> int:
        return int(np.searchsorted(self.starts, offset, side="right")) - 1

    def edit(self, start: int, end: int, new_len: int, new_text: str) -> None:
        """The text's [start, end) was replaced by `new_len` characters; `new_text` is the whole text after."""
        starts = self.starts
        # Whether s starts a line depends on the characters at s - 1 and s: only starts in [start, end] of the
        # old text can change; those after it move by the length difference.
        i = int(np.searchsorted(starts, max(start, 1), side="left"))
        j = int(np.searchsorted(starts, end, side="right"))
        lo, hi = max(start, 1), start + new_len
        fresh = [m.end() for m in _NL.finditer(new_text, max(lo - 1, 0), min(hi + 1, len(new_text)))
                 if lo <= m.end() <= hi]
        tail = starts[j:]
        delta = new_len - (end - start)
        if delta:
            tail = tail + delta
        self.starts = np.concatenate((starts[:i], np.asarray(fresh, dtype=np.int64), tail))


def _all_line_starts(text: str) -> np.ndarray:
    """0 and the index after every line break of `text`, as int64 (vectorised: a 10M-line text in ~0.1 s)."""
    if not text:
        return np.zeros(1, dtype=np.int64)
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8) if text.isascii() else \
        np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lf = codes == 10
    breaks = lf
    if "\r" in text:
        cr = codes == 13
        lone = cr.copy()
        lone[:-1] &= ~lf[1:]  # a \r followed by \n ends its line at the \n
        breaks = lf | lone
    return np.concatenate((np.zeros(1, dtype=np.int64), np.flatnonzero(breaks).astype(np.int64) + 1))


# ------------------------------------------------------------------------------------------------ documents


@dataclass(frozen=True)
class NeighborDoc:
    """Another open (or recently edited) document, for repository context."""

    path: str
    version: int
    text: str


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of one document at one cursor, for the worker thread."""

    uri: str
    version: int
    text: str
    offset: int
    language_id: str
    language: Optional[Language]
    path: Optional[str]  # shown to the model (workspace-relative when possible)
    tree: Optional[tree_sitter.Tree] = None
    invoked: bool = False
    neighbors: tuple[NeighborDoc, ...] = ()
    # Absolute path of the document, for excluding it from repository context.
    fs_path: Optional[str] = None

    @property
    def prefix(self) -> str:
        return self.text[: self.offset]

    @property
    def suffix(self) -> str:
        return self.text[self.offset:]


def looks_binary(text: str) -> bool:
    return "\x00" in text[:65536]


class Document:
    """The text (and parse tree) of one open document."""

    def __init__(self, uri: str, text: str, version: int, language_id: str = "", *, path: Optional[str] = None,
                 fs_path: Optional[str] = None, max_parse_bytes: int = 1_000_000):
        self.uri = uri
        self.language_id = language_id or ""
        self.version = version
        self.path = path
        self.fs_path = fs_path
        self.language: Optional[Language] = get_language(language_id) if language_id else None
        if self.language is None:
            self.language = language_for_path(path or uri)
        self.max_parse_bytes = max_parse_bytes
        self._text = text
        self._lines = LineIndex(text)
        self._parsed: Optional[ParsedDocument] = None
        self.last_edit = time.monotonic()
        self._reparse()

    @property
    def text(self) -> str:
        return self._text

    @property
    def binary(self) -> bool:
        return looks_binary(self._text)

    @property
    def size_bytes(self) -> int:
        t = self._text
        return len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass"))

    def _reparse(self) -> None:
        self._parsed = None
        if self.language is None or len(self._text) > self.max_parse_bytes or looks_binary(self._text):
            return
        try:
            self._parsed = ParsedDocument(self._text, self.language)
        except Exception:  # a grammar failure must not lose the document
            log.warning("cannot parse %s", self.uri, exc_info=True)

    def apply_change(self, rng: Optional[tuple[int, int, int, int]], new_text: str,
                     encoding: str = "utf-16") -> tuple[int, int]:
        """Apply one `contentChanges` entry: `rng` (start line, start char, end line, end char) or None for the
        whole text. Returns the replaced (start, end) str indices of the text before the change."""
        if rng is None:
            old_len = len(self._text)
            self._text = new_text
            self._lines = LineIndex(new_text)
            self._reparse()
            self.last_edit = time.monotonic()
            return 0, old_len
        sl, sc, el, ec = rng
        start = offset_at(self._text, sl, sc, encoding, index=self._lines)
        end = offset_at(self._text, el, ec, encoding, index=self._lines)
        if end < start:
            start, end = end, start
        if self._parsed is not None:
            if len(self._text) - (end - start) + len(new_text) > self.max_parse_bytes:
                self._parsed = None
                self._text = self._text[:start] + new_text + self._text[end:]
            else:
                self._parsed.apply_edit(start, end, new_text)
                self._text = self._parsed.text
        else:
            self._text = self._text[:start] + new_text + self._text[end:]
            if self.language is not None and not looks_binary(new_text) and len(self._text) <= self.max_parse_bytes \
                    and not looks_binary(self._text):
                self._reparse()
        self._lines.edit(start, end, len(new_text), self._text)
        self.last_edit = time.monotonic()
        return start, end

    def offset_at(self, line: int, character: int, encoding: str = "utf-16", *, strict: bool = True) -> int:
        return offset_at(self._text, line, character, encoding, strict=strict, index=self._lines)

    def position_at(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        return position_at(self._text, offset, encoding, index=self._lines)

    def snapshot(self, offset: int, *, invoked: bool = False, neighbors: Sequence[NeighborDoc] = ()) -> Snapshot:
        tree = None
        text = self._text
        if self._parsed is not None:
            ptext, ptree = self._parsed.snapshot()
            if ptext is text:
                tree = ptree.copy()
        return Snapshot(uri=self.uri, version=self.version, text=text, offset=offset, language_id=self.language_id,
                        language=self.language, path=self.path, tree=tree, invoked=invoked,
                        neighbors=tuple(neighbors), fs_path=self.fs_path)


class DocumentStore:
    """Open documents by URI. Used from the event loop only (snapshots go to other threads)."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}

    def open(self, doc: Document) -> None:
        self._docs[doc.uri] = doc

    def close(self, uri: str) -> Optional[Document]:
        return self._docs.pop(uri, None)

    def get(self, uri: str) -> Optional[Document]:
        return self._docs.get(uri)

    def version(self, uri: str) -> Optional[int]:
        d = self._docs.get(uri)
        return None if d is None else d.version

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self):
        return iter(list(self._docs.values()))

    def neighbors(self, exclude_uri: str, limit: int = 8) -> tuple[NeighborDoc, ...]:
        """Other open documents, most recently edited first."""
        docs = sorted((d for d in self._docs.values() if d.uri != exclude_uri and d.path and not d.binary),
                      key=lambda d: -d.last_edit)
        return tuple(NeighborDoc(d.path or d.uri, d.version, d.text) for d in docs[:limit])


# ------------------------------------------------------------------------------------------------ pipeline


class ContextSource(Protocol):
    def select(self, snapshot: Snapshot, budget_tokens: int, count_tokens: Callable[[str], int]) -> list[RepoFile]:
        ...


@dataclass(frozen=True)
class PipelineOptions:
    max_tokens: int = 128
    multiline: str = "auto"
    prompt_budget_tokens: int = 2048
    context_budget_tokens: int = 512
    suffix_budget_tokens: int = SUFFIX_MAX_TOKENS
    repo_name: Optional[str] = None
    adapter: Optional[str] = None


@dataclass(frozen=True)
class StageTimings:
    scope_ms: float = 0.0
    context_ms: float = 0.0
    prompt_ms: float = 0.0
    engine_ms: float = 0.0
    first_token_ms: float = 0.0
    post_ms: float = 0.0
    total_ms: float = 0.0

    def to_json(self) -> dict:
        return {k: round(v, 2) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class CompletionOutcome:
    text: str
    reason: str
    scope: str = "none"
    raw: str = ""
    finish_reason: str = ""
    timings: StageTimings = StageTimings()
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV cache the engine kept from the previous request
    new_tokens: int = 0
    # Forward passes after the first token when the engine decodes with prompt-lookup drafts (fewer than
    # new_tokens - 1 when drafts were accepted); None for other engines.
    decode_passes: Optional[int] = None
    context_files: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    cancelled: bool = False
    engine_called: bool = False

    def to_json(self) -> dict:
        return {"text": self.text, "reason": self.reason, "scope": self.scope, "finish_reason": self.finish_reason,
                "timings": self.timings.to_json(), "prompt_tokens": self.prompt_tokens,
                "reused_tokens": self.reused_tokens, "new_tokens": self.new_tokens,
                "decode_passes": self.decode_passes, "context_files": list(self.context_files),
                "rules": list(self.rules), "cancelled": self.cancelled}


def should_complete(snapshot: Snapshot, options: PipelineOptions) -> ScopeDecision:
    """The scope at the cursor (NONE: no completion here), adjusted to the multi-line setting."""
    d = completion_scope(snapshot.text, snapshot.offset, snapshot.language, tree=snapshot.tree,
                         invoked=snapshot.invoked)
    if options.multiline == "never" and d.scope is Scope.BLOCK:
        return ScopeDecision(Scope.LINE, d.reason + " (multiline: never)", min(d.max_new_tokens, MAX_TOKENS_LINE),
                             stop=d.stop, max_lines=1, indent_floor=d.indent_floor)
    if options.multiline == "always" and d.scope is Scope.LINE:
        le = _line_content_end(snapshot.text, snapshot.offset)
        if snapshot.text[snapshot.offset:le].strip() == "":
            return ScopeDecision(Scope.BLOCK, d.reason + " (multiline: always)", MAX_TOKENS_BLOCK, stop=d.stop,
                                 indent_floor=d.indent_floor)
    return d


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


def _fit_prefix(text: str, offset: int, budget: int, count: Callable[[str], int]) -> int:
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
    # the earliest multiple of PREFIX_LINE_QUANTUM lines that fits.
    first_line = text.count("\n", 0, starts[i])
    down = first_line // PREFIX_LINE_QUANTUM * PREFIX_LINE_QUANTUM
    j = i - (first_line - down)
    if down < first_line and j >= 0 and count(text[starts[j]:offset]) <= budget:
        return starts[j]
    return starts[min(i + (down + PREFIX_LINE_QUANTUM - first_line if down < first_line else 0), len(starts) - 1)]


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


def build_prompt(fmt: FimFormat, count: Callable[[str], int], text: str, offset: int, *, budget: int,
                 context_files: Sequence[RepoFile] = (), path: Optional[str] = None,
                 repo_name: Optional[str] = None, prefix_head: str = "", suffix_tail: str = "",
                 suffix_max: int = SUFFIX_MAX_TOKENS) -> PromptParts:
    """The FIM prompt for `text` at `offset`: repository context and as much of the file as `budget` allows.

    What is left after the context goes to the prefix, except a quarter (at most `suffix_max`) for the
    suffix: with prefix-suffix-middle prompts every keystroke changes the prompt at the cursor, so the whole
    suffix is recomputed each time, while the prefix comes from the KV cache. `prefix_head` and `suffix_tail`
    are appended to the prefix / prepended to the suffix as they are (generateFunction). `prompt_tokens` is an
    estimate (the sum of the parts); the engine reports the exact count."""
    files = list(context_files)
    base = fmt.render(prefix_head, suffix_tail, repo_name=repo_name, context_files=files, path=path)
    base_tokens = _count_cached(count, base)
    while files and base_tokens > budget // 2:  # context never takes more than half of the prompt
        files.pop(0)
        base = fmt.render(prefix_head, suffix_tail, repo_name=repo_name, context_files=files, path=path)
        base_tokens = _count_cached(count, base)
    left = max(budget - base_tokens, 16)
    suffix_budget = min(left // 4, suffix_max)
    pstart = _fit_prefix(text, offset, left - suffix_budget, count)
    prefix_tokens = count(text[pstart:offset])
    if pstart == 0:  # the whole prefix fits: what it leaves over may go to the suffix (still capped)
        suffix_budget = min(left - prefix_tokens, suffix_max)
    send = _fit_suffix(text, offset, suffix_budget, count)
    prefix = text[pstart:offset] + prefix_head
    suffix = suffix_tail + text[offset:send]
    prompt = fmt.render(prefix, suffix, repo_name=repo_name, context_files=files, path=path)
    est = base_tokens + prefix_tokens + count(text[offset:send])
    return PromptParts(prompt, est, pstart, send, tuple(f.path for f in files))


class _EarlyStop:
    """Watches streamed text and sets the generation's event once the scope needs no more lines: `max_lines`
    lines with content, or (Python blocks) a line after the first indented at or below `indent_floor`."""

    def __init__(self, event: threading.Event, decision: ScopeDecision, cursor_line_has_content: bool):
        self.event = event
        self.max_lines = decision.max_lines
        self.floor = decision.indent_floor
        self.cursor_line_has_content = cursor_line_has_content
        self.buf = ""
        self.lines = 0
        self.content_lines = 0
        self.stopped = False

    def __call__(self, piece: str) -> None:
        if self.stopped:
            return
        self.buf += piece
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            first = self.lines == 0
            self.lines += 1
            if line.strip() or (first and self.cursor_line_has_content):
                self.content_lines += 1
                if not first and self.floor is not None and indent_width(leading_ws(line)) <= self.floor:
                    self._stop()
                    return
            if self.max_lines is not None and self.content_lines >= self.max_lines:
                self._stop()
                return

    def _stop(self) -> None:
        self.stopped = True
        self.event.set()


def _log_outcome(snapshot: Snapshot, out: CompletionOutcome) -> None:
    t = out.timings
    log.info(
        "completion %s@%d v%d: %s; scope %s, context %.1f ms (%d files), prompt %.1f ms (%d tokens, %d reused), "
        "engine %.1f ms (first token %.1f ms, %d tokens%s, %s), post %.1f ms, total %.1f ms, %d chars",
        snapshot.path or snapshot.uri, snapshot.offset, snapshot.version, out.reason, out.scope, t.context_ms,
        len(out.context_files), t.prompt_ms, out.prompt_tokens, out.reused_tokens, t.engine_ms, t.first_token_ms,
        out.new_tokens, "" if out.decode_passes is None else f", {out.decode_passes} decode passes",
        out.finish_reason or "-", t.post_ms, t.total_ms, len(out.text))


def run_completion(
    snapshot: Snapshot,
    *,
    engine: Engine,
    fim_format: FimFormat,
    options: PipelineOptions = PipelineOptions(),
    cancel: Optional[threading.Event] = None,
    context: Optional[ContextSource] = None,
    decision: Optional[ScopeDecision] = None,
) -> CompletionOutcome:
    """One completion at `snapshot.offset` (see the module docstring). Never raises for engine failures
    (`IntarsiaError`): they become an empty outcome whose reason says what failed."""
    t0 = time.perf_counter()
    cancel = cancel if cancel is not None else threading.Event()
    if decision is None:
        decision = should_complete(snapshot, options)
    t_scope = time.perf_counter()
    if decision.scope is Scope.NONE:
        out = CompletionOutcome("", f"no completion: {decision.reason}", "none",
                                timings=StageTimings(scope_ms=(t_scope - t0) * 1000, total_ms=(t_scope - t0) * 1000))
        log.debug("completion %s@%d: %s", snapshot.path or snapshot.uri, snapshot.offset, out.reason)
        return out

    count = engine.count_tokens
    files: list[RepoFile] = []
    if context is not None and options.context_budget_tokens > 0:
        try:
            files = context.select(snapshot, options.context_budget_tokens, count)
        except Exception:  # context is an optional improvement: never lose the completion for it
            log.warning("repository context failed", exc_info=True)
    t_ctx = time.perf_counter()
    parts = build_prompt(fim_format, count, snapshot.text, snapshot.offset, budget=options.prompt_budget_tokens,
                         context_files=files, path=snapshot.path, repo_name=options.repo_name,
                         suffix_max=options.suffix_budget_tokens)
    t_prompt = time.perf_counter()

    ls = snapshot.text.rfind("\n", 0, snapshot.offset) + 1
    watcher = _EarlyStop(cancel, decision, bool(snapshot.text[ls:snapshot.offset].strip()))
    stops = tuple(dict.fromkeys((*fim_format.stop_strings, *decision.stop)))
    req = GenerationRequest(prompt=parts.prompt, max_new_tokens=min(decision.max_new_tokens, options.max_tokens),
                            stop=stops, adapter=options.adapter)
    timings_common = dict(scope_ms=(t_scope - t0) * 1000, context_ms=(t_ctx - t_scope) * 1000,
                          prompt_ms=(t_prompt - t_ctx) * 1000)
    if cancel.is_set():
        return CompletionOutcome("", "cancelled before the engine ran", decision.scope.value, cancelled=True,
                                 timings=StageTimings(**timings_common), prompt_tokens=parts.prompt_tokens,
                                 context_files=parts.context_files)
    try:
        res = engine.generate(req, cancel=cancel, on_text=watcher)
    except IntarsiaError as e:
        t_eng = time.perf_counter()
        log.warning("engine failed: %s", e)
        out = CompletionOutcome("", f"engine error: {e}", decision.scope.value,
                                timings=StageTimings(**timings_common, engine_ms=(t_eng - t_prompt) * 1000,
                                                     total_ms=(t_eng - t0) * 1000),
                                prompt_tokens=parts.prompt_tokens, context_files=parts.context_files,
                                engine_called=True)
        _log_outcome(snapshot, out)
        return out
    t_eng = time.perf_counter()
    first_ms = res.timings.first_token_s * 1000
    cancelled = res.finish_reason == FINISH_CANCELLED and not watcher.stopped
    if cancelled:
        out = CompletionOutcome("", "cancelled", decision.scope.value, raw=res.text, finish_reason=res.finish_reason,
                                timings=StageTimings(**timings_common, engine_ms=(t_eng - t_prompt) * 1000,
                                                     first_token_ms=first_ms, total_ms=(t_eng - t0) * 1000),
                                prompt_tokens=parts.prompt_tokens, new_tokens=res.timings.new_tokens,
                                context_files=parts.context_files, cancelled=True, engine_called=True)
        _log_outcome(snapshot, out)
        return out
    # Stopped by the token limit or by the early stop: the last line may be unfinished.
    truncated = res.finish_reason == FINISH_LENGTH or watcher.stopped
    post = postprocess(snapshot.text, snapshot.offset, res.text, language=snapshot.language, scope=decision.scope,
                       tree=snapshot.tree, truncated=truncated)
    text = post.text if post.valid else ""
    if decision.scope is Scope.LINE and text.endswith("\n") and "\n" not in text.rstrip("\r\n"):
        # One line: the document already has the line break (or it is the end of the file).
        text = text.rstrip("\r\n")
    t_post = time.perf_counter()
    finish = "early-stop" if watcher.stopped else res.finish_reason
    out = CompletionOutcome(
        text=text,
        reason=post.reason,
        scope=decision.scope.value,
        raw=res.text,
        finish_reason=finish,
        timings=StageTimings(**timings_common, engine_ms=(t_eng - t_prompt) * 1000, first_token_ms=first_ms,
                             post_ms=(t_post - t_eng) * 1000, total_ms=(t_post - t0) * 1000),
        prompt_tokens=res.timings.prompt_tokens or parts.prompt_tokens,
        reused_tokens=res.timings.reused_tokens,
        new_tokens=res.timings.new_tokens,
        decode_passes=res.extra.get("lookup_passes"),
        context_files=parts.context_files,
        rules=tuple(post.rules),
        engine_called=True,
    )
    _log_outcome(snapshot, out)
    return out


# ------------------------------------------------------------------------------------------------ functions


@dataclass(frozen=True)
class FunctionTarget:
    """Where the body of a function goes: replace text[start:end] with lead + body + trail."""

    name: str
    start: int
    end: int
    lead: str  # newline + indentation that precede the body
    trail: str  # text after the body (brace languages: newline + the closing brace's indentation)


@dataclass(frozen=True)
class FunctionOutcome:
    ok: bool
    reason: str
    start: int = 0
    end: int = 0
    new_text: str = ""
    name: str = ""
    timings: StageTimings = StageTimings()
    raw: str = ""
    engine_called: bool = False


_PY_PLACEHOLDERS = re.compile(r"^(pass|\.\.\.|raise\s+NotImplementedError\b.*|#.*)$", re.S)


def _node_text(text: str, data: bytes, node: tree_sitter.Node) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "surrogatepass")


def _char(data: bytes, b: int) -> int:
    return len(data[:b].decode("utf-8", "surrogatepass"))


def _innermost_function(language: Language, tree: tree_sitter.Tree, b: int) -> Optional[tree_sitter.Node]:
    q = language.query("functions")
    if q is None:
        return None
    qc = tree_sitter.QueryCursor(q)
    best = None
    for node in qc.captures(tree.root_node).get("function", []):
        if node.start_byte <= b <= node.end_byte:
            if best is None or node.end_byte - node.start_byte < best.end_byte - best.start_byte:
                best = node
    return best


def _line_indent(text: str, index: int) -> str:
    ls = text.rfind("\n", 0, index) + 1
    return leading_ws(text[ls:index + 1] if index < len(text) else text[ls:])


def _newline_of(text: str, index: int) -> str:
    nl = text.find("\n", index)
    if nl > 0 and text[nl - 1] == "\r":
        return "\r\n"
    return "\n"


def _indent_unit(text: str) -> str:
    tabs = len(re.findall(r"^\t", text, re.M))
    spaces = re.findall(r"^( +)\S", text, re.M)
    if tabs > len(spaces):
        return "\t"
    widths = sorted({len(s) for s in spaces})
    return " " * (widths[0] if widths and widths[0] in (2, 4, 8) else 4)


def find_function_target(text: str, offset: int, language: Optional[Language],
                         tree: Optional[tree_sitter.Tree] = None) -> FunctionTarget | str:
    """The body slot of the function at `offset`, or a reason why there is none."""
    if language is None:
        return "no grammar for this document's language"
    data = text.encode("utf-8", "surrogatepass")
    if tree is None:
        tree = language.new_parser().parse(data)
    b = len(text[:offset].encode("utf-8", "surrogatepass"))
    fn = _innermost_function(language, tree, b)
    if fn is None:
        return "the cursor is not on or in a function"
    name_node = fn.child_by_field_name("name")
    name = _node_text(text, data, name_node) if name_node is not None else "<anonymous>"
    body = fn.child_by_field_name("body")
    if body is None:
        return f"function {name} has no body to fill"
    if language.syntax.family == "python":
        stmts = [c for c in body.named_children]
        if not stmts or stmts[0].type != "expression_statement" or not stmts[0].named_children \
                or stmts[0].named_children[0].type != "string":
            return f"function {name} has no docstring: write the signature and the docstring first"
        doc = stmts[0]
        rest = stmts[1:]
        for s in rest:
            if not _PY_PLACEHOLDERS.match(_node_text(text, data, s).strip()):
                return f"function {name} already has a body"
        start = _char(data, doc.end_byte)
        end = _char(data, rest[-1].end_byte) if rest else start
        indent = _line_indent(text, _char(data, doc.start_byte))
        return FunctionTarget(name, start, end, _newline_of(text, start) + indent, "")
    # Brace languages: a doc comment right above the function, an empty body between braces.
    body_text = _node_text(text, data, body)
    if not (body_text.startswith("{") and body_text.endswith("}")):
        return f"function {name} has no block body"
    fn_start = _char(data, fn.start_byte)
    line_start = text.rfind("\n", 0, fn_start) + 1
    dq = language.query("docstrings")
    has_doc = False
    if dq is not None:
        for node in tree_sitter.QueryCursor(dq).captures(tree.root_node).get("docstring", []):
            ce = _char(data, node.end_byte)
            if ce <= line_start and text[ce:line_start].strip() == "" and text.count("\n", ce, line_start) <= 2:
                has_doc = True
                break
    if not has_doc:
        return f"function {name} has no doc comment: write the signature and the doc comment first"
    inner_start = _char(data, body.start_byte) + 1
    inner_end = _char(data, body.end_byte) - 1
    inner = text[inner_start:inner_end]
    stripped = re.sub(r"//[^\n]*|/\*.*?\*/", "", inner, flags=re.S)
    if stripped.strip():
        return f"function {name} already has a body"
    outer = _line_indent(text, fn_start)
    nl = _newline_of(text, fn_start)
    return FunctionTarget(name, inner_start, inner_end, nl + outer + _indent_unit(text), nl + outer)


def generate_function(
    snapshot: Snapshot,
    *,
    engine: Engine,
    fim_format: FimFormat,
    options: PipelineOptions = PipelineOptions(),
    cancel: Optional[threading.Event] = None,
    context: Optional[ContextSource] = None,
) -> FunctionOutcome:
    """Generate the body of the function at the cursor with block scope; only a syntax-checked body is
    returned (as the replacement of text[start:end])."""
    t0 = time.perf_counter()
    target = find_function_target(snapshot.text, snapshot.offset, snapshot.language, snapshot.tree)
    if isinstance(target, str):
        return FunctionOutcome(False, target)
    text = snapshot.text
    prefix = text[:target.start] + target.lead
    suffix = target.trail + text[target.end:]
    doc = prefix + suffix
    at = len(prefix)
    body_snap = Snapshot(uri=snapshot.uri, version=snapshot.version, text=doc, offset=at,
                         language_id=snapshot.language_id, language=snapshot.language, path=snapshot.path,
                         invoked=True, neighbors=snapshot.neighbors, fs_path=snapshot.fs_path)
    files: list[RepoFile] = []
    if context is not None and options.context_budget_tokens > 0:
        try:
            files = context.select(body_snap, options.context_budget_tokens, engine.count_tokens)
        except Exception:
            log.warning("repository context failed", exc_info=True)
    t_ctx = time.perf_counter()
    parts = build_prompt(fim_format, engine.count_tokens, doc, at, budget=options.prompt_budget_tokens,
                         context_files=files, path=snapshot.path, repo_name=options.repo_name)
    t_prompt = time.perf_counter()
    req = GenerationRequest(prompt=parts.prompt, max_new_tokens=max(MAX_TOKENS_BLOCK, options.max_tokens),
                            stop=fim_format.stop_strings, adapter=options.adapter)
    try:
        res = engine.generate(req, cancel=cancel)
    except IntarsiaError as e:
        return FunctionOutcome(False, f"engine error: {e}", name=target.name, engine_called=True)
    t_eng = time.perf_counter()
    if res.finish_reason == FINISH_CANCELLED:
        return FunctionOutcome(False, "cancelled", name=target.name, raw=res.text, engine_called=True)
    post = postprocess(doc, at, res.text, language=snapshot.language, scope=Scope.BLOCK,
                       truncated=res.finish_reason == FINISH_LENGTH)
    t_post = time.perf_counter()
    timings = StageTimings(context_ms=(t_ctx - t0) * 1000, prompt_ms=(t_prompt - t_ctx) * 1000,
                           engine_ms=(t_eng - t_prompt) * 1000, first_token_ms=res.timings.first_token_s * 1000,
                           post_ms=(t_post - t_eng) * 1000, total_ms=(t_post - t0) * 1000)
    log.info("generateFunction %s in %s: %s; %d prompt tokens, engine %.0f ms, post %.1f ms",
             target.name, snapshot.path or snapshot.uri, post.reason, parts.prompt_tokens, timings.engine_ms,
             timings.post_ms)
    body = post.text.rstrip() if post.valid else ""
    if not body:
        return FunctionOutcome(False, f"no syntactically valid body for {target.name}: {post.reason}",
                               name=target.name, timings=timings, raw=res.text, engine_called=True)
    return FunctionOutcome(True, post.reason, target.start, target.end, target.lead + body + target.trail,
                           target.name, timings, res.text, engine_called=True)


__all__ = [
    "ENCODINGS", "PositionError", "DocumentError", "offset_at", "position_at", "NeighborDoc", "Snapshot",
    "Document", "DocumentStore", "PipelineOptions", "StageTimings", "CompletionOutcome", "should_complete",
    "build_prompt", "PromptParts", "run_completion", "FunctionTarget", "FunctionOutcome", "find_function_target",
    "generate_function", "looks_binary",
]
