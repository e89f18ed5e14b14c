"""A small line-oriented lexer: strings, comments, brackets and logical lines.

Tree-sitter is the judge of validity; this lexer only answers cheap structural questions about a
completion before and between parses: where its logical lines start (Python indentation), how deep
its brackets go relative to the cursor, where it closes a bracket opened before the cursor, and what
the last significant character of a line is (a block header ends with ``:`` or ``{``).

It scans from a known state (`LexState`), so a completion can be lexed as the continuation of the
text before the cursor (inside a string, inside brackets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Optional

from .registry import Syntax

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {")": "(", "]": "[", "}": "{"}
_TAB = 8  # tab stop used by CPython's tokenizer and tree-sitter-python's scanner


@dataclass(frozen=True)
class LexState:
    stack: tuple[str, ...] = ()  # open brackets, innermost last
    string: Optional[str] = None  # closing delimiter of the string being scanned
    string_raw: bool = False  # no backslash escapes (Go backticks, Rust/C++ raw strings)
    block_comment: bool = False
    continuation: bool = False  # Python: the previous line ended with a backslash
    line_comment: bool = False  # the text ended inside a line comment (continued by the next scan)


class LineInfo(NamedTuple):  # a named tuple: one is built per scanned line, and a frozen dataclass costs 10x
    start: int  # index of the first character of the line in the scanned text
    end: int  # index of the line's newline ("\r\n" or "\n"), or len(text)
    next_start: int  # index just after the newline (== end for the last line)
    logical_start: bool  # the line starts a new logical line (a statement or a clause)
    indent: int  # visual width of the leading whitespace (tab stops of 8); -1 when not at a line start
    indent_text: str  # the leading whitespace itself
    blank: bool  # whitespace only (outside strings)
    comment_only: bool  # nothing but a comment (and whitespace)
    last_code: str  # last significant character outside comments ("" if none)
    head: str  # first word of the line when it starts a logical line ("" otherwise)
    depth_end: int  # bracket depth after the line (relative to nothing: absolute stack size)
    in_string_end: bool  # the line ends inside a (multi-line) string or block comment


class ScanResult(NamedTuple):
    lines: tuple[LineInfo, ...]
    end_state: LexState
    # Index of the first closing bracket that closes a bracket opened before the scanned text.
    first_outer_close: Optional[int]
    # (index, stack size after) of every closing bracket that closed a bracket opened before the text.
    outer_closes: tuple[tuple[int, int], ...]
    # Index of the first closing bracket that matches nothing or the wrong opener.
    first_mismatch: Optional[int]
    # Index of the closing delimiter of a string that was open when the scan started.
    string_close: Optional[int]
    min_depth: int  # smallest stack size reached, relative to the initial state (<= 0)
    unterminated_string: bool  # a one-line string ran into the end of a line


_HEAD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|@|\S")
_CHAR_LIT_RE = re.compile(r"'(?:\\(?:u\{[0-9A-Fa-f]{1,6}\}|x[0-9A-Fa-f]{2}|[0-7]{1,3}|.)|[^\\'\r\n])'")
_WS = " \t\f"
_INDENT_RE = re.compile(r"[ \t\f]*")


def indent_width(ws: str) -> int:
    if "\t" not in ws and "\f" not in ws:
        return len(ws)
    width = 0
    for ch in ws:
        if ch == "\t":
            width = (width // _TAB + 1) * _TAB
        elif ch == "\f":
            width = 0
        else:
            width += 1
    return width


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(_WS))]


def first_logical(lines, at_line_start: bool) -> Optional[LineInfo]:
    """The first logical line of a scanned completion, when the completion starts one: it is inserted at a
    line start (`at_line_start`) and its first line with content starts a logical line."""
    if not at_line_start:
        return None
    k_content = next((k for k, info in enumerate(lines) if not info.blank), None)
    for k, info in enumerate(lines):
        if info.logical_start:
            return info if k == k_content else None
    return None


class Lexer:
    """Lexer for one `Syntax`; instances are cached per syntax and are stateless (thread-safe)."""

    _cache: dict[Syntax, "Lexer"] = {}

    def __init__(self, syntax: Syntax):
        self.syntax = syntax
        specials = set("()[]{}")
        specials.update(q[0] for q in syntax.quotes)
        specials.update(q[0] for q in syntax.multiline_quotes)
        if syntax.char_quote:
            specials.add(syntax.char_quote)
        for c in syntax.line_comments:
            specials.add(c[0])
        if syntax.block_comment:
            specials.add(syntax.block_comment[0][0])
        if syntax.family == "python":
            specials.add("\\")
        self._special = re.compile("[" + re.escape("".join(sorted(specials))) + "]")
        self._python = syntax.family == "python"
        # First characters of comment openers: only these need the (slower) comment test.
        self._comment_first = frozenset(c[0] for c in syntax.line_comments) | \
            (frozenset(syntax.block_comment[0][0]) if syntax.block_comment else frozenset())

    @classmethod
    def for_syntax(cls, syntax: Syntax) -> "Lexer":
        lexer = cls._cache.get(syntax)
        if lexer is None:
            lexer = cls._cache[syntax] = cls(syntax)
        return lexer

    # -- public -------------------------------------------------------------------------------------------

    def scan(self, text: str, state: LexState = LexState(), *, at_line_start: bool = True) -> ScanResult:
        """Scan `text` starting in `state`. `at_line_start`: text[0] begins a physical line."""
        syn = self.syntax
        stack = list(state.stack)
        base = base0 = len(stack)
        min_depth = 0
        string = state.string
        string_raw = state.string_raw
        block = state.block_comment
        cont = state.continuation
        in_comment = state.line_comment
        string_close: Optional[int] = None
        open_string_at_start = string is not None
        first_outer: Optional[int] = None
        outer_closes: list[tuple[int, int]] = []
        first_mismatch: Optional[int] = None
        unterminated = False
        lines: list[LineInfo] = []
        n = len(text)
        pos = 0
        line_is_start = at_line_start
        multiline = syn.multiline_quotes
        while True:
            nl = text.find("\n", pos)
            if nl < 0:
                end = next_start = n
            else:
                end = nl - 1 if nl > pos and text[nl - 1] == "\r" else nl
                next_start = nl + 1
            # State at the start of this line.
            in_str_or_comment = string is not None or block
            if self._python:
                logical = line_is_start and not stack and not in_str_or_comment and not cont
            else:
                logical = line_is_start and not in_str_or_comment
            cont = False
            if line_is_start and not in_str_or_comment:
                j = _INDENT_RE.match(text, pos, end).end()
                indent_text = text[pos:j]
                indent = indent_width(indent_text)
            else:
                j = pos
                indent_text = ""
                indent = -1
            content_start = j
            last_code = ""
            has_code = False
            has_comment = False
            if in_comment:  # a line comment started before this text continues to the end of the line
                in_comment = False
                has_comment = True
                j = end
            while j < end:
                if string is not None:
                    k = text.find(string, j, end) if string_raw else self._find_end(text, j, end, string)
                    if k < 0:
                        j = end
                        break
                    if open_string_at_start and string_close is None:
                        string_close = k
                    j = k + len(string)
                    string = None
                    string_raw = False
                    last_code = '"'
                    has_code = True
                    continue
                if block:
                    k = text.find(syn.block_comment[1], j, end) if syn.block_comment else -1
                    has_comment = True
                    if k < 0:
                        j = end
                        break
                    j = k + len(syn.block_comment[1])
                    block = False
                    continue
                m = self._special.search(text, j, end)
                seg_end = m.start() if m else end
                if seg_end > j:
                    seg = text[j:seg_end].rstrip()
                    if seg:
                        last_code = seg[-1]
                        has_code = True
                if m is None:
                    j = end
                    break
                i = m.start()
                ch = text[i]
                # Comments.
                if ch in self._comment_first and any(text.startswith(c, i) for c in syn.line_comments):
                    has_comment = True
                    if nl < 0:
                        in_comment = True
                    j = end
                    break
                if ch in self._comment_first and syn.block_comment and text.startswith(syn.block_comment[0], i):
                    block = True
                    has_comment = True
                    j = i + len(syn.block_comment[0])
                    continue
                if ch in OPENERS:
                    stack.append(ch)
                    last_code = ch
                    has_code = True
                    j = i + 1
                    continue
                if ch in CLOSERS:
                    last_code = ch
                    has_code = True
                    want = CLOSERS[ch]
                    if stack and stack[-1] == want:
                        stack.pop()
                        if len(stack) < base:  # closed a bracket opened before the scanned text
                            base = len(stack)
                            outer_closes.append((i, len(stack)))
                            if first_outer is None:
                                first_outer = i
                    else:
                        if first_mismatch is None:
                            first_mismatch = i
                        if first_outer is None:
                            first_outer = i
                        if want in stack:  # recover like a parser would: close up to the match
                            while stack[-1] != want:
                                stack.pop()
                            stack.pop()
                            base = min(base, len(stack))
                    min_depth = min(min_depth, len(stack) - base0)
                    j = i + 1
                    continue
                if ch == "\\" and self._python:
                    if i + 1 >= end:
                        cont = True
                    j = i + 2
                    continue
                if syn.char_quote and ch == syn.char_quote and ch not in syn.quotes:
                    cm = _CHAR_LIT_RE.match(text, i, end)
                    has_code = True
                    last_code = ch
                    j = cm.end() if cm else i + 1
                    continue
                # Strings.
                delim, raw = self._string_start(text, i, end)
                if delim is None:
                    last_code = ch
                    has_code = True
                    j = i + 1
                    continue
                string = delim[1]
                string_raw = raw
                has_code = True
                j = i + len(delim[0])
            # End of line.
            if string is not None and string not in multiline and not string_raw and nl >= 0:
                if not (self._python and end > pos and text[end - 1] == "\\"):
                    unterminated = True
                    string = None  # a one-line string cannot continue past the newline
            blank = not has_code and not has_comment
            head = ""
            if logical and has_code:
                hm = _HEAD_RE.match(text, content_start, end)
                head = hm.group() if hm else ""
            lines.append(
                LineInfo(
                    start=pos,
                    end=end,
                    next_start=next_start,
                    logical_start=logical and has_code,
                    indent=indent,
                    indent_text=indent_text,
                    blank=blank and string is None and not block,
                    comment_only=has_comment and not has_code,
                    last_code=last_code,
                    head=head,
                    depth_end=len(stack),
                    in_string_end=string is not None or block,
                )
            )
            if nl < 0:
                break
            pos = next_start
            line_is_start = True
        return ScanResult(
            lines=tuple(lines),
            end_state=LexState(tuple(stack), string, string_raw, block, cont, in_comment),
            first_outer_close=first_outer,
            string_close=string_close,
            outer_closes=tuple(outer_closes),
            first_mismatch=first_mismatch,
            min_depth=min_depth,
            unterminated_string=unterminated,
        )

    # -- helpers ------------------------------------------------------------------------------------------

    @staticmethod
    def _find_end(text: str, k: int, end: int, delim: str) -> int:
        """Index of the unescaped `delim` at or after k (before end), or -1."""
        first = delim[0]
        while True:
            a = text.find(first, k, end)
            b = text.find("\\", k, end)
            if a < 0 and b < 0:
                return -1
            if b >= 0 and (a < 0 or b < a):
                k = b + 2
                if k >= end:
                    return -1
                continue
            if text.startswith(delim, a):
                return a
            k = a + 1

    def _string_start(self, text: str, i: int, end: int) -> tuple[Optional[tuple[str, str]], bool]:
        """If a string starts at i: ((opening text, closing delimiter), raw)."""
        syn = self.syntax
        ch = text[i]
        if syn.raw_strings == "rust" and ch == '"':
            j = i
            hashes = 0
            while j > 0 and text[j - 1] == "#":
                j -= 1
                hashes += 1
            if j > 0 and text[j - 1] == "r" and (j < 2 or not (text[j - 2].isalnum() or text[j - 2] == "_")
                                                 or text[j - 2] == "b"):
                return ('"', '"' + "#" * hashes), True
        if syn.raw_strings == "cpp" and ch == '"' and i > 0 and text[i - 1] == "R":
            paren = text.find("(", i + 1, min(end, i + 18))
            if paren > 0:
                return (text[i:paren + 1], ")" + text[i + 1:paren] + '"'), True
        for q in syn.multiline_quotes:
            if text.startswith(q, i):
                return (q, q), q in syn.raw_quotes
        if ch in syn.quotes:
            return (ch, ch), ch in syn.raw_quotes
        return None, False
