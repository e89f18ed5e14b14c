"""Post-processing of a raw fill-in-the-middle output: only code that parses in place is shown.

Rules, in the order they apply (`PostResult.rules` lists those that changed the completion):

1. ``newline-style`` - line endings converted to the document's (CRLF documents stay CRLF).
2. ``indent-style`` - leading tabs/spaces converted to the document's indentation style.
3. ``incomplete-last-line`` - with ``truncated=True`` (the engine hit its token limit) the unfinished
   last line is dropped.
4. ``block-end`` - the completion leaves the definition it started in: a line dedented to the
   header of the outermost function holding the cursor (or of the innermost class, outside
   functions), a brace closing that function's body. Outside functions, a completion that starts a
   def/class ends with it (``single-definition``). Python: statements after return/raise/continue/
   break in the same block, when nothing after them returns to an outer level, are dead
   (``unreachable``); comments dedented to the definition's level just before its end go with it.
   Whole lines inserted before existing code: a return/raise/continue/break at the level of the next
   line of code would make that code dead, so the completion ends before it (``dead-suffix``).
5. ``suffix-overlap`` - the completion runs into the text after the cursor (rewrites the rest of the
   line and/or the following lines, or repeats the blank line that follows), or rejoins it: one of its
   later whole lines is one of the next two lines of code, indentation included, and specific enough
   (not `else:` or `}`), when whole lines are inserted: removed from there on.
6. Candidates, in order of preference: LINE scope - the first line (``scope-line``; longer only when
   one line cannot be valid: then the whole completion when the model ended it itself, else the
   shortest valid extension); BLOCK scope and the middle of a line - the longest prefix (in the
   middle of a line the completion may end mid-line: the rest of the line continues it). Cut points:
   line ends (``syntax-truncate``), before a bracket or quote that closes one opened before the
   cursor (``closing-bracket``), before closing punctuation already after the cursor
   (``closing-overlap``).
7. Validity, per candidate (the first valid one wins): with the candidate inserted, no ERROR or
   MISSING node appears that was not there before - errors already in the document are matched by
   position, so a document broken elsewhere still gets suggestions, and a candidate leaving no error
   at all is preferred to one that leaves old errors in place - and, for Python, indentation stays
   consistent (tree-sitter-python does not check it: `_IndentChecker`). Python also has to get past
   CPython's own parser (tree-sitter-python accepts some code it rejects: a `try:` left without
   `except`, `a == *b`, a second `else:`): the window with the candidate must compile wherever it
   compiled before; where the text is already broken around the cursor, the whole definition is
   compiled and an error left on the candidate's lines, or after them in that definition, is the
   candidate's to fix (`_Validator._compiles`). Without a grammar, bracket/string balance on the
   cursor's line stands in.
8. ``reindent`` - indentation fitted to the cursor's block: the indentation already typed before the
   cursor repeated by the model is dropped (tried first right after a block header, where both
   parse), a block shifted as a whole is moved to the expected level (tried when nothing else is
   valid).

Nothing valid means no suggestion (`text == ""`, `valid is False`), never a broken one.
"""

from __future__ import annotations

import ast
import logging
import re
import symtable
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import tree_sitter

from .context import WINDOW_MAX_BYTES, CursorContext, TreeLike, Window, context_for
from .document import encode, insertion_parse, utf8_len
from .lexer import LexState, Lexer, LineInfo, ScanResult, indent_width, leading_ws
from .registry import Language
from .scope import Scope

logger = logging.getLogger(__name__)

MAX_CHECKS = 12  # validity checks per completion variant
# Validity tiers, best first: no error at all where the insertion is judged; no error that was not there
# before; only old errors re-recovered away from the edit.
CLEAN, NO_NEW, RELAXED = 0, 1, 2
_EXTRA_CHECKS = 4  # checks spent looking for a CLEAN candidate after a NO_NEW/RELAXED one
_JUNCTION_LINE, _JUNCTION_STRUCTURE = 1, 2  # how the text before an edit is broken at the cursor
_EXTEND_LINES = 60  # how far after the cursor a bracket left open by a candidate may be closed
_SUFFIX_LOOKAHEAD = 4000  # characters of the suffix compared for overlap
_CLOSING_PUNCT = set(")]}>\"'`;:,")
_TERMINATORS = ("return", "raise", "continue", "break")
_DEF_HEADS = ("def", "class", "async", "@")
_CLAUSE_HEADS = ("elif", "else", "except", "finally")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Python's own parser has the last word on Python: tree-sitter-python accepts some code CPython rejects
# (`try:` without `except`, `x == *y`, a second `else:`). It compiles the validity window when that is at most
# _COMPILE_WINDOW_CHARS long and, where the text is broken around the cursor, the definition holding it when
# that is at most _COMPILE_REGION_CHARS (about 0.15 ms per KB each; longer ones keep tree-sitter's verdict).
_COMPILE_WINDOW_CHARS = 3000
_COMPILE_REGION_CHARS = 2000
_COMPILE_FILENAME = "<intarsia-check>"
_CANNOT_JUDGE = ("", 0, 0)
_UNFINISHED_AT_END = ("expected 'except' or 'finally' block", "expected an indented block")
_ABOUT_LINE_RE = re.compile(r"\bon line (\d+)")  # "expected an indented block after 'if' statement on line 3"


@dataclass(frozen=True)
class Removal:
    rule: str
    text: str


@dataclass(frozen=True)
class PostResult:
    text: str  # what to insert at the cursor ("" = no suggestion)
    valid: bool  # text is non-empty and passed the validity check
    reason: str
    removed: tuple[Removal, ...] = ()
    rules: tuple[str, ...] = ()
    checks: int = 0  # validity checks (parses) performed
    original: str = ""

    @property
    def changed(self) -> bool:
        return self.text != self.original


def postprocess(
    text: str,
    offset: int,
    completion: str,
    *,
    language: Optional[Language],
    scope: Scope,
    tree: TreeLike = None,
    truncated: bool = False,
) -> PostResult:
    """Fit one raw completion into `text` at `offset` (a str index).

    `tree`: the document's tree (a `tree_sitter.Tree` for exactly `text`, or a `ParsedDocument`);
    without it the document is parsed here. `truncated`: generation stopped at its token limit, so an
    unfinished last line is dropped before anything else."""
    ctx = context_for(text, offset, language, tree)
    return process(ctx, completion, scope, truncated=truncated)


def choose(
    text: str,
    offset: int,
    candidates: Sequence[str],
    *,
    language: Optional[Language],
    scope: Scope,
    tree: TreeLike = None,
    truncated: bool = False,
) -> PostResult:
    """Post-process several candidates (best first, as the engine ranks them) and return the first
    valid one; when none is valid, the first candidate's (invalid, empty) result."""
    ctx = context_for(text, offset, language, tree)
    first: Optional[PostResult] = None
    seen: set[str] = set()
    checks = 0
    for cand in candidates:
        if cand in seen:
            continue
        seen.add(cand)
        res = process(ctx, cand, scope, truncated=truncated)
        checks += res.checks
        if res.valid:
            return res
        if first is None:
            first = res
    if first is None:
        return PostResult("", False, "no candidates")
    return PostResult("", False, f"no valid candidate among {len(seen)}: {first.reason}", first.removed,
                      first.rules, checks, first.original)


def process(ctx: CursorContext, completion: str, scope: Scope, *, truncated: bool = False) -> PostResult:
    """`postprocess` for a precomputed context (shared by several candidates)."""
    if scope is Scope.NONE:
        return PostResult("", False, "scope none: no suggestion at this position",
                          (Removal("scope-none", completion),) if completion else (), (), 0, completion)
    if completion == "":
        return PostResult("", False, "empty completion", original=completion)
    rules: list[str] = []
    v = _normalize_newlines(ctx, completion)
    if v != completion:
        rules.append("newline-style")
    w = _normalize_indent_style(ctx, v)
    if w != v:
        rules.append("indent-style")
    dropped: tuple[Removal, ...] = ()
    if truncated and "\n" in w and not w.endswith("\n"):
        cut = w.rfind("\n") + 1
        dropped = (Removal("incomplete-last-line", w[cut:]),)
        rules.append("incomplete-last-line")
        w = w[:cut]
    fitter = _Fitter(ctx, scope, ended=not truncated)
    res = None
    if _repeats_block_indent(ctx, w):
        res = fitter.fit(w[len(ctx.line_before):], rules + ["reindent"])
        if not res.valid:
            res = None
    if res is None:
        res = fitter.fit(w, rules)
    if res is None or not res.valid:
        alt = _reindent(ctx, w)
        if alt is not None and alt != w:
            res2 = fitter.fit(alt, rules + ["reindent"])
            if res2 is not None and res2.valid:
                res = res2
    if res is None:
        res = PostResult("", False, "no valid completion", checks=fitter.checks)
    return PostResult(res.text, res.valid, res.reason, dropped + res.removed, res.rules, fitter.checks, completion)


# -- normalisation ----------------------------------------------------------------------------------------


def _normalize_newlines(ctx: CursorContext, s: str) -> str:
    if "\r" not in s and ctx.newline == "\n":
        return s
    s = s.replace("\r\n", "\n")
    return s.replace("\n", "\r\n") if ctx.newline == "\r\n" else s


def _line_starts(s: str, first: bool) -> list[int]:
    starts = [0] if first else []
    i = s.find("\n")
    while i >= 0:
        starts.append(i + 1)
        i = s.find("\n", i + 1)
    return starts


def _normalize_indent_style(ctx: CursorContext, s: str) -> str:
    """Convert leading tabs/spaces to the document's style (lines inside strings untouched)."""
    unit = ctx.indent_unit
    tabs_doc = unit == "\t"
    if tabs_doc and " " not in s:
        return s
    if not tabs_doc and "\t" not in s:
        return s
    scan = ctx.lexer.scan(s, ctx.state_at_cursor, at_line_start=ctx.before_blank)
    in_string_at_start = [ctx.state_at_cursor.string is not None or ctx.state_at_cursor.block_comment]
    for info in scan.lines[:-1]:
        in_string_at_start.append(info.in_string_end)
    first_is_line = ctx.before_blank
    lines = s.split("\n")
    # The completion's own space unit: the smallest indentation of a space-indented line (4 by default).
    widths = [len(leading_ws(x)) for x in lines if x.strip() and leading_ws(x) and "\t" not in leading_ws(x)]
    model_unit = min(widths) if widths and min(widths) in (2, 3, 4, 8) else 4
    out = []
    for k, line in enumerate(lines):
        if (k == 0 and not first_is_line) or (k < len(in_string_at_start) and in_string_at_start[k]):
            out.append(line)
            continue
        ws = leading_ws(line)
        if not ws or not line.strip():
            out.append(line)
            continue
        if tabs_doc and "\t" not in ws:
            n = len(ws)
            ws2 = "\t" * (n // model_unit) + " " * (n % model_unit)
        elif not tabs_doc and "\t" in ws:
            ws2 = ws.replace("\t", unit)
        else:
            ws2 = ws
        out.append(ws2 + line[len(ws):])
    return "\n".join(out)


def _reindent(ctx: CursorContext, s: str) -> Optional[str]:
    """Re-indent a completion whose indentation does not fit the cursor's block (Python only)."""
    if not ctx.python or not ctx.before_blank:
        return None
    lines = s.split("\n")
    k0 = next((k for k, x in enumerate(lines) if x.strip()), None)
    if k0 is None:
        return None
    ws0 = leading_ws(lines[k0])
    if ctx.line_before and k0 == 0 and ws0:
        # Indentation already typed before the cursor, repeated by the model: drop the repetition.
        return s[len(ws0):]
    if not ctx.at_col0 or k0 != 0:
        return None
    expected = _expected_indent(ctx)
    if expected is None:
        return None
    delta = expected - indent_width(ws0)
    if delta == 0:
        return None
    unit = ctx.indent_unit
    uw = indent_width(unit) or 4
    out = []
    for x in lines:
        if not x.strip():
            out.append(x)
            continue
        ws = leading_ws(x)
        width = indent_width(ws) + delta
        if width < 0:
            return None
        levels, rest = divmod(width, uw)
        out.append(unit * levels + " " * rest + x[len(ws):])
    return "\n".join(out)


def _repeats_block_indent(ctx: CursorContext, s: str) -> bool:
    """Right after a block header, on a line already indented, the completion starts with that same
    indentation again (both would parse: a block may be indented by any amount)."""
    return bool(ctx.python and ctx.line_before and ctx.before_blank and ctx.rest_blank
                and ctx.logical_last_code == ":" and s.startswith(ctx.line_before)
                and not s[len(ctx.line_before):len(ctx.line_before) + 1].isspace())


def _expected_indent(ctx: CursorContext) -> Optional[int]:
    if not ctx.rest_blank:
        return indent_width(leading_ws(ctx.rest_line))
    top = ctx.stack0[-1] if ctx.stack0 else 0
    if ctx.logical_last_code == ":":
        return top + (indent_width(ctx.indent_unit) or 4)
    return top


# -- fitting ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cand:
    end: int  # cut position in the completion
    rule: str  # rule name when the cut is not the whole text
    add_newline: bool = False


class _Fitter:
    def __init__(self, ctx: CursorContext, scope: Scope, ended: bool = False):
        self.ctx = ctx
        self.scope = scope
        self.ended = ended  # the model ended the completion itself (not cut by its token limit)
        self.checks = 0
        self._validator = _Validator(ctx)
        # Cuts at line ends keep the newline when whole lines are inserted (cursor at column 0) or at
        # the very end of the document; otherwise the suffix supplies the line break.
        self.keep_newline = ctx.at_col0 or ctx.offset == len(ctx.text)

    def fit(self, v: str, rules: list[str]) -> Optional[PostResult]:
        ctx = self.ctx
        rules = list(rules)
        removed: list[Removal] = []
        notes: list[str] = []

        lead = ctx.line_before if ctx.before_blank else ""
        scan = ctx.lexer.scan(lead + v, ctx.state_at_cursor, at_line_start=ctx.before_blank)

        # Block end.
        cap, cap_rule = _block_end(ctx, v, scan, len(lead))
        newline_alt = False
        if cap < len(v) and not ctx.rest_blank and not ctx.at_col0 and v[:cap].endswith("\n") and \
                not ctx.rest_line[:2].isspace():
            # Mid-line: the last kept line most likely runs into the rest of the line (unless that looks
            # like a line of its own); the variant with the newline is tried next.
            cap -= 2 if v[:cap].endswith("\r\n") else 1
            newline_alt = True
        if cap < len(v):
            removed.append(Removal(cap_rule, v[cap:]))
            rules.append(cap_rule)
            notes.append({"block-end": "stopped where the completion leaves its block",
                          "single-definition": "kept one definition",
                          "unreachable": "dropped unreachable code",
                          "dead-suffix": "stopped before an ending that would make the code after the cursor dead"}.get(cap_rule, cap_rule))
            v = self._trim_cut(v[:cap])
            if not v.strip():
                return PostResult("", False, "nothing left inside the block", tuple(removed), tuple(rules))
            scan = ctx.lexer.scan(lead + v, ctx.state_at_cursor, at_line_start=ctx.before_blank)

        # Overlap with the text after the cursor (within the block).
        i = _suffix_overlap(ctx, v)
        if i is None and self.keep_newline:
            i = _blank_line_overlap(ctx, v)
        if i is not None:
            removed.append(Removal("suffix-overlap", v[i:]))
            rules.append("suffix-overlap")
            v = self._trim_cut(v[:i])
            notes.append("removed text repeating what follows the cursor")
            if not v.strip():
                return PostResult("", False, "completion only repeats the text after the cursor",
                                  tuple(removed), tuple(rules))

            scan = ctx.lexer.scan(lead + v, ctx.state_at_cursor, at_line_start=ctx.before_blank)

        cands = self._candidates(v, scan, len(lead), newline_alt)
        tried: set[str] = set()
        last_why = "no candidate"
        best: Optional[tuple[int, str, _Cand]] = None
        checks = 0
        budget = MAX_CHECKS
        for cand in cands:
            if checks >= budget:
                break
            t = v[:cand.end]
            if cand.end < len(v) or self.scope is Scope.LINE:
                t = self._trim_cut(t)
            if cand.add_newline:
                t = t + ctx.newline
            if t in tried:
                continue
            tried.add(t)
            if not t or (not t.strip() and v.strip()):
                continue
            checks += 1
            self.checks += 1
            tier, why = self._validator.check(t)
            if tier == CLEAN:
                return self._result(v, t, cand, rules, removed, notes)
            if tier is None:
                last_why = why
                continue
            if best is None or tier < best[0]:
                if best is None:
                    budget = min(budget, checks + _EXTRA_CHECKS)
                best = (tier, t, cand)
        if best is not None:
            extra = ["errors already in the document remain"] if best[0] == NO_NEW else [
                "old syntax errors re-recovered elsewhere"]
            return self._result(v, best[1], best[2], rules, removed, notes + extra)
        reason = f"no valid prefix ({last_why})"
        if not ctx.language:
            reason += " (no grammar for this file type: line/bracket heuristics only)"
        return PostResult("", False, reason, tuple(removed), tuple(rules))

    def _result(self, v: str, t: str, cand: "_Cand", rules: list[str], removed: list[Removal],
                notes: list[str]) -> PostResult:
        out_rules = list(rules)
        out_removed = list(removed)
        notes = list(notes)
        if t != v:
            rule = cand.rule or "syntax-truncate"
            out_rules.append(rule)
            if cand.end < len(v):
                out_removed.append(Removal(rule, v[cand.end:]))
            notes.append(_RULE_NOTES.get(rule, rule))
        reason = "; ".join(notes) if notes else "valid as generated"
        if not self.ctx.language:
            reason += " (no grammar for this file type: line/bracket heuristics only)"
        return PostResult(t, True, reason, tuple(out_removed), tuple(out_rules))

    # -- candidates ---------------------------------------------------------------------------------------

    def _candidates(self, v: str, scan: ScanResult, lead: int, newline_alt: bool = False) -> list[_Cand]:
        ctx = self.ctx
        n = len(v)
        ends: list[int] = []
        for info in scan.lines[:-1]:
            if info.in_string_end:
                continue
            e = (info.next_start if self.keep_newline else info.end) - lead
            if 0 < e <= n:
                ends.append(e)
        closes = [i - lead for i, _ in scan.outer_closes if i - lead > 0]
        if scan.first_mismatch is not None and scan.first_mismatch - lead > 0:
            closes.append(scan.first_mismatch - lead)
        if scan.string_close is not None and scan.string_close - lead > 0:
            closes.append(scan.string_close - lead)  # the string open at the cursor ends here
        closes = sorted(set(closes))
        mid_line = not ctx.rest_blank and not ctx.at_col0
        insert_lines = ctx.at_col0 and not ctx.rest_blank
        out: list[_Cand] = []

        def full_at(end: int, rule: str) -> None:
            w = _closing_overlap(ctx, v[:end]) if mid_line else None
            if w is not None:
                out.append(_Cand(w, "closing-overlap"))
            out.append(_Cand(end, rule))
            if (insert_lines or newline_alt) and end == n and not v.endswith("\n") and v.strip():
                out.append(_Cand(end, "", add_newline=True))

        if self.scope is Scope.LINE and not mid_line:
            first_end = next((e for e in ends if v[:e].strip()), n)
            if not v[first_end:].strip() and self.keep_newline:
                full_at(n, "")
            full_at(first_end, "scope-line")
            for c in reversed(closes):
                if c < first_end:
                    out.append(_Cand(c, "closing-bracket"))
            # One line cannot be valid: what the model ended itself (when it did), else the shortest
            # valid extension.
            if self.ended and first_end < n:
                full_at(n, "")
            for e in ends:
                if e > first_end:
                    out.append(_Cand(e, "syntax-truncate"))
            if first_end < n and not self.ended:
                full_at(n, "")
        else:
            # BLOCK, or the middle of a line (the completion must land on the rest of the line):
            # the longest valid prefix.
            full_at(n, "")
            cuts = [(e, "syntax-truncate") for e in ends if e < n] + [(c, "closing-bracket") for c in closes if c < n]
            cuts.sort(key=lambda c: -c[0])
            for e, rule in cuts:
                if mid_line and rule != "closing-bracket":
                    full_at(e, rule)
                else:
                    out.append(_Cand(e, rule))
        return out

    def _trim_cut(self, t: str) -> str:
        """Tidy the end of a cut: no trailing blank lines, and a newline after the last line when whole
        lines are inserted. In the middle of a line the cut is kept exact (the suffix continues it)."""
        ctx = self.ctx
        if not ctx.rest_blank and not ctx.at_col0:
            return t
        body, had_newline = _strip_blank_tail(t)
        if not body.strip():
            return ""
        if had_newline and self.keep_newline:
            return body + ctx.newline
        return body.rstrip(" \t") if had_newline else body


def _strip_blank_tail(t: str) -> tuple[str, bool]:
    """t without the newline after its last content line and the blank lines after it (the content
    line itself is kept intact); whether there was such a newline."""
    lines = t.split("\n")
    popped = 0
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
        popped += 1
    body = "\n".join(lines)
    if popped and body.endswith("\r"):
        body = body[:-1]
    return body, popped > 0


_RULE_NOTES = {
    "scope-line": "kept the first line",
    "closing-bracket": "cut before a bracket closing one opened before the cursor",
    "closing-overlap": "removed closing punctuation already after the cursor",
    "syntax-truncate": "truncated to the longest prefix that parses in place",
}


def _block_end(ctx: CursorContext, v: str, scan: ScanResult, lead: int) -> tuple[int, str]:
    """Where the completion leaves its block (index in v), and the rule; len(v) when it does not."""
    n = len(v)
    lines = scan.lines
    if not lines:
        return n, ""
    if ctx.python:
        return _python_block_end(ctx, v, lines, lead)
    if ctx.language is not None and ctx.syntax.family == "c":
        return _brace_block_end(ctx, v, lead)
    return n, ""


def _python_block_end(ctx: CursorContext, v: str, lines, lead: int) -> tuple[int, str]:
    n = len(v)
    logical = [(k, info) for k, info in enumerate(lines) if info.logical_start]
    first = _first_logical(ctx, lines)
    d = ctx.enclosing_definition(first.indent if first is not None else None)
    floor = d[2] if d is not None else None
    in_function = d is not None and d[1] == "function"
    def_indent = None
    def_header_seen = False
    if not in_function and first is not None and first.head in _DEF_HEADS:
        def_indent = first.indent
        def_header_seen = first.head != "@"
    cap = n
    rule = ""
    for k, info in logical:
        if k == 0 and not ctx.before_blank:
            continue  # the cursor's own line
        if first is not None and info is first:
            continue
        pos = info.start - lead
        if pos <= 0:
            continue
        if floor is not None and info.indent <= floor:
            cap, rule = pos, "block-end"
            break
        if def_indent is not None and info.indent <= def_indent and def_header_seen:
            cap, rule = pos, "single-definition"
            break
        if def_indent is not None and info.indent == def_indent and info.head in ("def", "class", "async"):
            def_header_seen = True
    # Whole lines inserted before existing code: a return/raise/continue/break at the level of the next
    # line of code after the cursor would make that code dead (the model wrote its own ending).
    dead = _dead_suffix_cut(ctx, v, logical, lead, cap, first)
    if dead is not None:
        cap, rule = dead, "dead-suffix"
    # Unreachable code: after return/raise/continue/break, lines at the same level up to the cap,
    # when nothing after them returns to an outer level (then all of it is dead).
    term_level: Optional[int] = None
    term_pos = None
    for k, info in logical:
        pos = info.start - lead
        if pos >= cap:
            break
        if k == 0 and not ctx.before_blank:
            continue
        if term_level is not None:
            if info.indent < term_level:
                term_level = None
                term_pos = None
            elif info.indent == term_level and term_pos is None:
                term_pos = pos
        if term_level is None and info.head in _TERMINATORS:
            term_level = info.indent
    if term_pos is not None and term_pos > 0:
        return term_pos, "unreachable"
    if rule == "block-end" and floor is not None:
        # Comments dedented to the definition's level just before the block end belong to what follows.
        for k, info in reversed(logical_and_comments(lines)):
            pos = info.start - lead
            if pos >= cap:
                continue
            if pos <= 0 or not (info.comment_only or info.blank) or (info.indent > floor and not info.blank):
                break
            if info.comment_only:
                cap = pos
    return cap, rule


def logical_and_comments(lines) -> list[tuple[int, LineInfo]]:
    return [(k, info) for k, info in enumerate(lines) if info.logical_start or info.comment_only or info.blank]


def _suffix_code_indent(ctx: CursorContext) -> Optional[int]:
    """Indentation of the next line of code after the cursor when whole lines are inserted before it
    (the cursor is in the leading whitespace of its line, or on a blank line); else None."""
    if not ctx.before_blank or ctx.next_code < 0 or ctx.state_at_cursor.string is not None:
        return None
    j = ctx.next_code
    ls = ctx.text.rfind("\n", 0, j) + 1
    if ctx.text[ls:j].strip() or ls < ctx.line_start:
        return None
    return indent_width(ctx.text[ls:j])


def _dead_suffix_cut(ctx: CursorContext, v: str, logical, lead: int, cap: int,
                     first: Optional[LineInfo]) -> Optional[int]:
    """Where to cut a completion whose terminator (return/raise/continue/break) at the level of the code
    after the cursor would make that code unreachable; None when it does not."""
    level = _suffix_code_indent(ctx)
    if level is None:
        return None
    nl = ctx.text.find("\n", ctx.next_code)
    next_line = ctx.text[ctx.next_code: len(ctx.text) if nl < 0 else nl].strip()
    cut = None
    for k, info in logical:
        pos = info.start - lead
        if pos >= cap:
            break
        if pos <= 0 or info is first:
            continue
        if cut is not None and info.indent < level:
            cut = None  # the completion opened an outer block: the code after it is reachable again
        if cut is None and info.head in _TERMINATORS and info.indent == level:
            line_text = v[max(info.start - lead, 0): info.end - lead].strip()
            if line_text != next_line:  # a repetition of the code after the cursor: suffix-overlap's case
                cut = pos
    return cut


def _first_logical(ctx: CursorContext, lines) -> Optional[LineInfo]:
    """The first logical line of a completion, when the completion starts one (at a line start)."""
    if not ctx.before_blank:
        return None
    k_content = next((k for k, info in enumerate(lines) if not info.blank), None)
    for k, info in enumerate(lines):
        if info.logical_start:
            return info if k == k_content else None
    return None


def _brace_block_end(ctx: CursorContext, v: str, lead: int) -> tuple[int, str]:
    n = len(v)
    d = ctx.enclosing_definition(None)
    if d is None:
        return n, ""
    body = d[0].child_by_field_name("body")
    if body is None or body.start_byte >= ctx.cursor_b:
        return n, ""
    start = ctx.to_char(body.start_byte)
    pre = ctx.lexer.scan(ctx.text[start:ctx.offset])
    if not pre.end_state.stack:
        return n, ""
    s = ctx.lexer.scan(v, pre.end_state, at_line_start=ctx.before_blank and lead == 0)
    for idx, depth in s.outer_closes:
        if depth == 0:
            # The body of the enclosing definition is closed here: keep the rest of this line.
            nl = v.find("\n", idx)
            return (n if nl < 0 else nl), "block-end"
    return n, ""


def _closing_overlap(ctx: CursorContext, t: str) -> Optional[int]:
    """If `t` ends with closing punctuation that the rest of the line starts with, the cut before it."""
    rest = ctx.rest_line
    best = None
    for k in range(1, min(len(rest), len(t)) + 1):
        piece = rest[:k]
        if not piece.strip() or any(c not in _CLOSING_PUNCT and not c.isspace() for c in piece):
            break
        if t.endswith(piece):
            best = len(t) - k
    if best is None or best <= 0:
        return None
    return best


# -- overlap with the suffix ------------------------------------------------------------------------------


def _suffix_overlap(ctx: CursorContext, v: str) -> Optional[int]:
    """Smallest index from which the completion repeats the text after the cursor (whole lines, or the
    rest of the cursor's line followed by whole lines), with enough substance to be sure."""
    suffix = ctx.text[ctx.offset: ctx.offset + _SUFFIX_LOOKAHEAD]
    if "\n" not in suffix and not suffix.strip():
        return None
    # Only as many non-blank suffix lines as the completion has lines can be compared with it.
    need = v.count("\n") + 2
    s_lines = []
    seen = 0
    for x in suffix.split("\n"):
        x = x.rstrip()
        s_lines.append(x)
        if x.strip():
            seen += 1
            if seen > need:
                break
    rest = s_lines[0]
    full_from = 0 if ctx.at_col0 else 1  # suffix lines that are whole lines
    s_full = [x for x in s_lines[full_from:] if x.strip()]
    v_starts = _line_starts(v, first=ctx.before_blank)
    found: list[int] = []
    # Whole-line repetition (a line after a newline in the completion may repeat the suffix's first
    # line itself when the completion ended the cursor's line).
    s_all = [x for x in s_lines if x.strip()]
    mid_line = not ctx.at_col0 and bool(rest.strip())
    for i in v_starts:
        if i >= len(v):
            continue
        if i > 0 and _lines_repeat(v[i:], s_all):
            found.append(i)
            break
        # In the middle of a line, repeating the lines after the cursor's line only counts when the
        # completion's previous line already ended with the rest of the cursor's line.
        if mid_line and not v[:i].rstrip("\r\n").endswith(rest.strip()):
            continue
        if _lines_repeat(v[i:], s_full):
            found.append(i)
            break
    # The completion rewrote the first lines after the cursor and rejoins the existing code: one of its
    # later whole lines is, indentation included, one of the next few lines of code after the cursor.
    near = set(s_full[:_REJOIN_LINES])
    for i in v_starts:
        if mid_line or i <= 0 or i >= len(v) or not v[:i].strip() or (found and i >= min(found)):
            continue
        nl = v.find("\n", i)
        if nl < 0:
            break  # an unfinished last line cannot be compared
        line = v[i:nl].rstrip()
        if line in near and (_substantial_line(line) or (line == s_full[0] and any(c.isalnum() for c in line))):
            found.append(i)
            break
    # The rest of the line, then whole lines.
    if rest.strip() and not ctx.at_col0:
        s_after = [x for x in s_lines[1:] if x.strip()]
        r = rest.rstrip()
        j = v.find(r)
        while j >= 0:
            k = j + len(r)
            tail = v[k:]
            if (not tail.strip(" \t\r")) or tail.lstrip(" \t\r").startswith("\n"):
                after = tail.lstrip(" \t\r")[1:] if tail.strip(" \t\r") else ""
                if after.strip() and _lines_repeat(after, s_after, need=1):
                    found.append(j)
                    break
            j = v.find(r, j + 1)
    return min(found) if found else None


_REJOIN_LINES = 2  # lines of code after the cursor a completion may rejoin (its first line rewritten)
_TRIVIAL_WORDS = frozenset({"else", "elif", "try", "finally", "except", "pass", "break", "continue", "return",
                            "do", "end", "default", "None", "null", "true", "false", "True", "False"})


def _substantial_line(line: str) -> bool:
    """A line specific enough that seeing it twice means a repetition (not `else:`, `}`, `return`)."""
    words = re.findall(r"[A-Za-z_][A-Za-z_0-9]*|[0-9]+", line)
    return len(line.strip()) >= 4 and any(w not in _TRIVIAL_WORDS for w in words)


def _blank_line_overlap(ctx: CursorContext, v: str) -> Optional[int]:
    """Whole lines inserted, ending with blank lines while the text after the cursor starts with a
    blank line too: the completion's trailing blank lines repeat it."""
    body = v.rstrip(" \t\r\n")
    if not body or v[len(body):].count("\n") < 2:
        return None
    after = ctx.text[ctx.offset: ctx.offset + 200]
    first = after.split("\n", 1)[0]
    if "\n" not in after or first.strip():
        return None
    return v.index("\n", len(body)) + 1


def _lines_repeat(seg: str, s_full: list[str], need: int = 1) -> bool:
    """seg (from a line start) begins with the first lines of s_full (blank lines ignored; an unfinished
    last line may be a prefix) with at least `need` substantial whole lines, and the repetition is
    the whole of seg or is three whole lines or more."""
    raw = seg.split("\n")
    partial_last = not seg.endswith("\n")
    items = []
    for idx, x in enumerate(raw):
        x = x.rstrip()
        if x.strip():
            items.append((x, partial_last and idx == len(raw) - 1))
    if not items or not s_full:
        return False
    matched = 0
    substantial = 0
    whole = 0
    for (x, partial), s in zip(items, s_full):
        if partial:
            if not s.startswith(x):
                break
        else:
            if x != s:
                break
            whole += 1
            if any(c.isalnum() for c in x):
                substantial += 1
        matched += 1
    if matched == 0 or not (substantial >= need or whole >= 2):
        return False
    return matched == len(items) or whole >= 3


# -- validity ---------------------------------------------------------------------------------------------


_ErrKey = tuple[str, int, int]


def _collect_errors(node: tree_sitter.Node, limit: int = 64) -> list[_ErrKey]:
    """ERROR and MISSING nodes under `node` as (kind, start byte, end byte). A MISSING node of a hidden
    rule (tree-sitter-python's `_newline`) is not among the visible children: the innermost node
    holding it stands in for it."""
    out: list[_ErrKey] = []
    if not node.has_error:
        return out
    stack = [node]
    while stack and len(out) < limit:
        n = stack.pop()
        if n.is_missing:
            out.append(("missing:" + n.type, n.start_byte, n.end_byte))
            continue
        if n.is_error:
            out.append(("error", n.start_byte, n.end_byte))
        if n.has_error:
            children = [c for c in n.children if c.has_error or c.is_missing or c.is_error]
            if not children and not n.is_error:
                out.append(("hidden:" + n.type, n.start_byte, n.end_byte))
            stack.extend(reversed(children))
    return out


class _Validator:
    def __init__(self, ctx: CursorContext):
        self.ctx = ctx
        # Errors of the text before the edit, by window (start, end); (-1, -1): the whole document.
        self._old_tree_errors: dict[tuple[int, int, str], list[_ErrKey]] = {}
        # Indentation checker at the cursor's line, and the unedited text's states after each suffix piece.
        self._indent_prefix: dict[tuple[int, int, str], tuple["_IndentChecker", list]] = {}
        self._closing: dict[LexState, int] = {}  # where the suffix closes what a candidate left open
        self._pieces: list[tuple[int, int]] = []
        self._junction_cache: dict[tuple[int, int, str], int] = {}
        self._definition: "Optional[Window] | bool" = False  # definition_region, once computed
        self._compile_old: dict[tuple[int, int, str], Optional[tuple[str, int, int]]] = {}
        self._compile_new: dict[tuple[int, int, str, str], Optional[tuple[str, int, int]]] = {}
        self._broken: dict[tuple[int, int, str], bool] = {}

    def check(self, t: str) -> tuple[Optional[int], str]:
        """(tier, why): tier CLEAN (no error at all where the insertion is judged), NO_NEW (only errors
        that were there before), RELAXED (old errors re-recovered away from the edit) or None
        (invalid; `why` says what is wrong)."""
        ctx = self.ctx
        if ctx.language is None:
            return self._heuristic(t)
        win: Optional[Window] = None
        indent_tier = CLEAN
        if ctx.python and ctx.tree is not None:
            why = self._junction(t)
            if why:
                return None, why
            clause_levels, end_state = self._shape(t)
            win = self._extend_clauses(self._extend(ctx.window_for(clause_levels), end_state), clause_levels)
            indent_tier, why = self._indentation(t, win)
            if indent_tier is None:
                return None, why
        tier, why = self._tree(t, win)
        if tier is None:
            return None, why
        tier = max(tier, indent_tier)
        junction = self._junction_broken(win) if tier != CLEAN and win is not None else 0
        if junction == _JUNCTION_STRUCTURE or (junction == _JUNCTION_LINE and not self._mended(t, win)):
            # The text before the edit is broken at the cursor: only a candidate that mends it fits (one
            # leaving the error in place would be a guess at what the code around it means).
            return None, "the code after the cursor still does not fit"
        if ctx.python and win is not None:
            why_not = self._compiles(t, win)
            if why_not:
                return None, why_not
        return tier, why

    # CPython's parser ---------------------------------------------------------------------------------

    def _compiles(self, t: str, win: Window) -> str:
        """Python: with `t` inserted, the validity window must compile wherever the unedited window did.
        Where the definition holding the cursor reaches beyond the window and did not compile before (the
        text is broken around the cursor), that definition is judged instead (`_compile_region`): the
        insertion must leave no compile error on its own lines nor, inside that definition, after it. An
        old error before the insertion hides what follows (CPython reports the first error only):
        tree-sitter's verdict stands there. Returns why not, or ""."""
        if win.whole_document or win.end - win.start > _COMPILE_WINDOW_CHARS:
            return ""  # too long to compile per candidate: tree-sitter's verdict stands
        region, strict_end = self._compile_region(win)
        if strict_end > win.end and self._new_compile_error(t, region) is None:
            # The definition holds the window and reaches beyond it, and compiles with the insertion:
            # no error is left for the window or the definition to judge (one compile instead of two).
            return ""
        why = self._judge(t, win, -1)
        if not why and (strict_end < 0 or win.end >= strict_end):
            return ""  # compiles, and no part of the definition lies beyond the window
        if why and self._old_compile_error(win) is None:
            return why  # the window compiled before the insertion
        if strict_end < 0 or (not why and self._old_compile_error(region) is None):
            return why  # nothing to judge beyond the window, or a definition that compiled before
        return self._judge(t, region, strict_end)

    def _old_compile_error(self, region: Window) -> Optional[tuple[str, int, int]]:
        key = (region.start, region.end, region.head)
        old = self._compile_old.get(key, False)
        if old is False:
            ctx = self.ctx
            old = self._compile_old[key] = _compile_error(region.head + ctx.text[region.start:region.end])
        return old

    def _new_compile_error(self, t: str, region: Window) -> Optional[tuple[str, int, int]]:
        key = (region.start, region.end, region.head, t)
        hit = self._compile_new.get(key, False)
        if hit is False:
            ctx = self.ctx
            hit = self._compile_new[key] = _compile_error(
                region.head + ctx.text[region.start:ctx.offset] + t + ctx.text[ctx.offset:region.end])
        return hit

    def _judge(self, t: str, region: Window, strict_end: int) -> str:
        ctx = self.ctx
        before = region.head + ctx.text[region.start:ctx.offset]
        after = ctx.text[ctx.offset:region.end]
        new = self._new_compile_error(t, region)
        if new is None or new == _CANNOT_JUDGE:
            return ""
        old = self._old_compile_error(region)
        if old == _CANNOT_JUDGE:
            return ""
        msg, line, col = new
        head_lines = region.head.count("\n")
        about = _ABOUT_LINE_RE.search(msg)
        if line <= head_lines or (about is not None and int(about.group(1)) <= head_lines):
            return ""  # about a stand-in header (left without a body by a dedent): nothing to judge
        src = before + t + after
        if strict_end < 0 and line >= src.count("\n") and msg.startswith(_UNFINISHED_AT_END):
            return ""  # the window ends inside a compound statement whose rest lies after it
        why = f"does not compile ({msg})"
        if old is None:
            return why
        first = before.count("\n") + 1  # the insertion's lines in the compiled text
        added = t.count("\n")
        if first <= line <= first + added:
            return why
        mapped = (msg, line, col) if line < first else (msg, line - added, col)
        if mapped != old:
            if line > first + added and self._foreign_statement(src, line):
                return ""  # an old error CPython only reaches now that the insertion mended the first one
            return why
        if line < first:
            return ""
        if strict_end >= 0 and line - added <= head_lines + ctx.text.count("\n", region.start, strict_end) \
                and self._region_broken(region, before + after):
            return f"leaves a compile error in the definition after the cursor ({msg})"
        return ""

    def _foreign_statement(self, src: str, line: int) -> bool:
        """The logical line holding `line` (1-based) of `src` does not compile even on its own: syntax of
        a later Python than this one (`type X = ...`, PEP 701 f-strings), not a structure the insertion
        broke. A clause (else:, except:, ...) cannot stand alone, so it never counts."""
        ctx = self.ctx
        scan = ctx.lexer.scan(src)
        k = min(line - 1, len(scan.lines) - 1)
        while k > 0 and not scan.lines[k].logical_start:
            k -= 1
        first = scan.lines[k]
        if first.head in _CLAUSE_HEADS or not first.logical_start:
            return False
        end = k
        while end < len(scan.lines) - 1 and (scan.lines[end].depth_end > 0 or scan.lines[end].in_string_end):
            end += 1
        stmt = src[first.start:scan.lines[end].end].lstrip()
        if stmt.rstrip().endswith(":"):
            stmt = stmt.rstrip() + "\n    pass"
        alone = _compile_error(stmt + "\n")
        return alone is not None and alone != _CANNOT_JUDGE

    def _compile_region(self, win: Window) -> tuple[Window, int]:
        """(region, strict_end): the definition holding the cursor, where an error left after the
        insertion is the insertion's to fix, and its end; else (outside a definition, in a long one, or
        a window starting before the definition) the validity window and -1."""
        if self._definition is False:
            self._definition = self.ctx.definition_region(_COMPILE_REGION_CHARS)
        d = self._definition
        if d is None or d.start > win.start:
            return win, -1
        return d, d.end

    def _region_broken(self, region: Window, old_src: str) -> bool:
        """Does our own syntax check (tree-sitter, indentation) see the unedited definition as broken? A
        compile error it does not see is taken for a newer Python's syntax, not a broken document."""
        key = (region.start, region.end, region.head)
        hit = self._broken.get(key)
        if hit is None:
            ctx = self.ctx
            hit = ctx.parser.parse(encode(old_src)).root_node.has_error
            if not hit:
                checker = _IndentChecker(ctx.lexer, (0,))
                checker.feed(old_src)
                hit = bool(checker.finish(region.end >= len(ctx.text)))
            self._broken[key] = hit
        return hit

    def _mended(self, t: str, win: Window) -> bool:
        """With `t` inserted, no syntax error reaches the cursor's line (nor the end of the line before it)."""
        ctx = self.ctx
        if win.whole_document:
            return False
        before = win.head + ctx.text[win.start:ctx.offset]
        new = _collect_errors(ctx.parser.parse(encode(before + t + ctx.text[ctx.offset:win.end])).root_node)
        ins_b = utf8_len(before)
        line_b = ins_b - utf8_len(ctx.line_before)
        end_b = ins_b + utf8_len(t) + utf8_len(ctx.rest_line)
        return not any(a <= end_b and b >= line_b - 1 for _, a, b in new)

    def _junction(self, t: str) -> str:
        """A candidate ending with a newline (and indentation) puts the rest of the cursor's line at a new
        indentation: that line must not leave the definition the insertion is in."""
        ctx = self.ctx
        if "\n" not in t or not ctx.rest_line.strip():
            return ""
        tail = t[t.rfind("\n") + 1:]
        if tail.strip():
            return ""
        lead = ctx.line_before if ctx.before_blank else ""
        scan = ctx.lexer.scan(lead + t, ctx.state_at_cursor, at_line_start=ctx.before_blank)
        if scan.end_state != LexState():
            return ""
        joined = indent_width(tail + leading_ws(ctx.rest_line))
        if ctx.before_blank and joined == indent_width(ctx.line_before + leading_ws(ctx.rest_line)):
            return ""  # the line keeps its indentation
        first = _first_logical(ctx, scan.lines)
        d = ctx.enclosing_definition(first.indent if first is not None else None)
        if d is not None and joined <= d[2]:
            return "the rest of the line would leave the enclosing definition"
        return ""

    def _shape(self, t: str) -> tuple[tuple[int, ...], LexState]:
        """Indentation of the clause lines (else/elif/except/finally) the insertion starts or joins
        (its own new lines, the line it continues, the suffix line it runs into), and the lexer state
        after t."""
        ctx = self.ctx
        lead = ctx.line_before if ctx.before_blank else ""
        scan = ctx.lexer.scan(lead + t, ctx.state_at_cursor, at_line_start=ctx.before_blank)
        levels = []
        last = len(scan.lines) - 1
        for k, info in enumerate(scan.lines):
            if k == last and ctx.rest_line.strip():
                continue  # joins the rest of the line: below
            if info.logical_start and (k > 0 or ctx.before_blank) and info.head in _CLAUSE_HEADS:
                levels.append(info.indent)
        cur = ctx.prefix_scan.lines[-1] if ctx.prefix_scan.lines else None
        if not ctx.before_blank and cur is not None and cur.logical_start and last > 0:
            m = _WORD_RE.match(ctx.line_before.lstrip() + t)  # the word may be split by the cursor
            if m is not None and m.group() in _CLAUSE_HEADS:
                levels.append(cur.indent)
        if ctx.rest_line.strip():
            # The candidate's last line runs into the rest of the cursor's line.
            if last > 0:
                joined = (lead + t)[scan.lines[-1].start:]
                starts_logical = scan.lines[-2].depth_end == 0 and not scan.lines[-2].in_string_end
            else:
                joined = ctx.line_before + t
                starts_logical = cur is None or cur.logical_start or ctx.before_blank
            joined += ctx.rest_line
            m = _WORD_RE.match(joined.lstrip())
            if starts_logical and m is not None and m.group() in _CLAUSE_HEADS:
                levels.append(indent_width(leading_ws(joined)))
        elif not ctx.before_blank and cur is not None and cur.logical_start and last == 0:
            m = _WORD_RE.match(ctx.line_before.lstrip() + t)
            if m is not None and m.group() in _CLAUSE_HEADS:
                levels.append(cur.indent)
        return tuple(levels), scan.end_state

    def _extend(self, win: Window, end_state: LexState) -> Window:
        """Widen the window's end when the insertion leaves brackets or a string open that the text
        after the cursor closes (the window must reach the closing point)."""
        ctx = self.ctx
        depth0 = len(ctx.state_at_cursor.stack)
        if len(end_state.stack) <= depth0 and (end_state.string is None or ctx.state_at_cursor.string):
            return win
        end = self._closing.get(end_state)
        if end is None:
            end = -1
            limit = _after_lines_end(ctx.text, ctx.offset, len(ctx.text), _EXTEND_LINES)
            scan = ctx.lexer.scan(ctx.text[ctx.offset:limit], end_state, at_line_start=False)
            for info in scan.lines:
                if info.depth_end <= depth0 and not info.in_string_end:
                    end = ctx.offset + info.next_start
                    break
            self._closing[end_state] = end
        if end <= win.end:
            return win
        return Window(win.start, end, win.stack0, win.whole_document or end - win.start > WINDOW_MAX_BYTES,
                      win.head)

    def _extend_clauses(self, win: Window, levels: tuple[int, ...]) -> Window:
        """Widen the window's end over clause lines (elif/else/except/finally) after it at a level where the
        insertion adds a clause: the insertion may leave them without a statement to belong to."""
        ctx = self.ctx
        if not levels or win.whole_document or win.end >= len(ctx.text):
            return win
        top = max(levels)
        pos, end = win.end, win.end
        for _ in range(_EXTEND_LINES):
            if pos >= len(ctx.text):
                break
            nl = ctx.text.find("\n", pos)
            line_end = len(ctx.text) if nl < 0 else nl + 1
            line = ctx.text[pos:line_end]
            code = line.strip()
            if code and not code.startswith("#"):
                width = indent_width(leading_ws(line))
                if width <= top:
                    m = _WORD_RE.match(code)
                    if width not in levels or m is None or m.group() not in _CLAUSE_HEADS:
                        break
                    end = line_end
            pos = line_end
        if end <= win.end:
            return win
        return Window(win.start, end, win.stack0, win.whole_document or end - win.start > WINDOW_MAX_BYTES,
                      win.head)

    # tree-sitter ---------------------------------------------------------------------------------------

    def _tree(self, t: str, win: Optional[Window]) -> tuple[Optional[int], str]:
        ctx = self.ctx
        parser = ctx.parser
        before = after = ""
        windowed = win is not None and not win.whole_document
        if windowed:
            before = win.head + ctx.text[win.start:ctx.offset]
            after = ctx.text[ctx.offset:win.end]
            new_root = parser.parse(encode(before + t + after)).root_node
            ins_b = utf8_len(before)
        else:
            _, new_tree = insertion_parse(parser, ctx.text, ctx.tree, ctx.offset, t, ctx.text_bytes)
            new_root = new_tree.root_node
            ins_b = ctx.cursor_b
        if not new_root.has_error:
            return CLEAN, ""  # the unedited text's errors only matter where the candidate leaves some
        key = (win.start, win.end, win.head) if windowed else (-1, -1, "")
        old = self._old_tree_errors.get(key)
        if old is None:
            old = self._old_tree_errors[key] = _collect_errors(
                parser.parse(encode(before + after)).root_node if windowed else ctx.tree.root_node)
        t_len = utf8_len(t)
        fresh = _fresh_errors(old, _collect_errors(new_root), ins_b, t_len)
        if not fresh:
            return NO_NEW, "only errors already in the document"
        if old and _balanced(ctx, t):
            new_src = (before + t + after) if win is not None and not win.whole_document else None
            lo, hi = _line_span(new_src, ins_b, ins_b + t_len) if new_src is not None else (ins_b, ins_b + t_len)
            if all(_old_error_elsewhere(e, old, ins_b, t_len, lo, hi) for e in fresh):
                return RELAXED, "old syntax errors re-recovered elsewhere"
        kind = fresh[0][0]
        return None, ("missing " + kind.split(":", 1)[1]) if kind.startswith("missing:") else "syntax error"

    # indentation (Python) ------------------------------------------------------------------------------

    def _indentation(self, t: str, win: Window) -> tuple[Optional[int], str]:
        """Indentation check: the checker runs over the window up to the cursor's line (once), then over
        the cursor's line (from its start when only indentation precedes the cursor), the candidate and
        the text after it, piece by piece, until its state is again the one the unedited text has at
        the same point (from there on both see the same lines the same way)."""
        ctx = self.ctx
        key = (win.start, win.end, win.head)
        split = ctx.line_start if ctx.before_blank else ctx.offset
        lead = ctx.text[split:ctx.offset]
        base = self._indent_prefix.get(key)
        if base is None:
            checker = _IndentChecker(ctx.lexer, win.stack0)
            checker.feed(ctx.text[win.start:split])
            base = self._indent_prefix[key] = (checker, [])
        checker, old_states = base
        new_checker = checker.clone()
        new_checker.feed(lead + t)
        old_checker = None
        eof = True
        old_state = None
        k = 0
        while True:
            piece = self._suffix_piece(k)
            if piece is None:
                break
            a, b = piece
            if k < len(old_states):
                old_state = old_states[k]
            else:
                if old_checker is None:
                    old_checker = checker.clone()
                    old_checker.feed(lead)
                    for pa, pb in self._pieces[:k]:
                        old_checker.feed(ctx.text[pa:pb])
                old_checker.feed(ctx.text[a:b])
                old_state = (old_checker.state(), old_checker.finish(False), old_checker.finish(True))
                old_states.append(old_state)
            new_checker.feed(ctx.text[a:b])
            if b < len(ctx.text) and new_checker.state() == old_state[0]:
                eof = False
                break
            k += 1
        new = new_checker.finish(eof)
        if not new:
            return CLEAN, ""
        if old_state is None:  # nothing after the cursor
            old_checker = checker.clone()
            old_checker.feed(lead)
            old_errors = old_checker.finish(True)
        else:
            old_errors = old_state[2] if eof else old_state[1]
        old = Counter(old_errors)
        ins, tl = len(lead), len(t)
        # An old error on the line of code the insertion runs into (a body line waiting for its header,
        # say) is the insertion's to fix: leaving it in place is not a suggestion that fits.
        junction_end = self._junction_line_end() - split
        for kind, pos in new:
            if pos < ins:
                mapped = pos
            elif pos >= ins + tl:
                mapped = pos - tl
            else:
                return None, kind
            if ins <= mapped < junction_end:
                return None, kind + " on the line after the cursor"
            if old[(kind, mapped)] > 0:
                old[(kind, mapped)] -= 1
                continue
            return None, kind
        return NO_NEW, "only indentation errors already in the document"

    def _junction_broken(self, win: Window) -> int:
        """How the unedited text is broken at the cursor: 0 not at all; _JUNCTION_LINE a syntax error on the
        cursor's line (the insertion must leave none there: `_mended`); _JUNCTION_STRUCTURE an indentation
        error on the line of code after the cursor, or a header before the cursor still waiting for its block
        (only a candidate leaving no error at all fits)."""
        key = (win.start, win.end, win.head)
        hit = self._junction_cache.get(key)
        if hit is None:
            ctx = self.ctx
            checker = _IndentChecker(ctx.lexer, win.stack0)
            checker.feed(ctx.text[win.start:win.end])
            lo, hi = ctx.offset - win.start, self._junction_line_end() - win.start
            hit = _JUNCTION_STRUCTURE if any(lo <= pos < hi for _, pos in checker.finish(win.end >= len(ctx.text))) \
                else 0
            if not hit and not win.whole_document:
                before = win.head + ctx.text[win.start:ctx.offset]
                old = self._old_tree_errors.get(key)
                if old is None:
                    old = self._old_tree_errors[key] = _collect_errors(
                        ctx.parser.parse(encode(before + ctx.text[ctx.offset:win.end])).root_node)
                ins_b = utf8_len(before)
                line_b = ins_b - utf8_len(ctx.line_before)
                end_b = ins_b + utf8_len(ctx.rest_line)  # the cursor's line (another broken line is not ours)
                head_b = utf8_len(win.head)
                on_line = [(kind, a_, b_) for kind, a_, b_ in old if head_b <= a_ <= end_b and b_ >= line_b - 1]
                if any(kind != "error" and a_ == b_ and line_b - 1 <= a_ <= line_b for kind, a_, b_ in on_line):
                    hit = _JUNCTION_STRUCTURE  # an empty (missing) block right before the cursor's line
                elif on_line:
                    hit = _JUNCTION_LINE
            self._junction_cache[key] = hit
        return hit

    def _junction_line_end(self) -> int:
        """End (str index) of the code right after the cursor: the next line with code, or the rest of the
        cursor's line and the line with code after it."""
        ctx = self.ctx
        j = ctx.next_code if ctx.next_code >= 0 else ctx.offset
        end = ctx.text.find("\n", j)
        if end < 0:
            return len(ctx.text)
        if j < ctx.line_end:
            # Code after the cursor on its own line: the line after it is part of the junction too (an
            # insertion in the middle of a line decides how that line is indented or continued).
            nxt = end + 1
            while nxt < len(ctx.text):
                e = ctx.text.find("\n", nxt)
                e = len(ctx.text) if e < 0 else e
                if ctx.text[nxt:e].strip():
                    return e
                nxt = e + 1
        return end

    def _suffix_piece(self, k: int) -> Optional[tuple[int, int]]:
        """The k-th piece of the text after the cursor, cut at line ends into pieces of growing size
        (3, 12, 48, ... non-blank lines), computed on demand; None past the end."""
        pieces = self._pieces
        ctx = self.ctx
        while len(pieces) <= k:
            pos = pieces[-1][1] if pieces else ctx.offset
            if pos >= len(ctx.text):
                return None
            end = _after_lines_end(ctx.text, pos, len(ctx.text), 3 * 4 ** len(pieces))
            pieces.append((pos, max(end, pos + 1)))
        return pieces[k]

    # no grammar ----------------------------------------------------------------------------------------

    def _heuristic(self, t: str) -> tuple[Optional[int], str]:
        ctx = self.ctx
        lex = ctx.lexer
        line_before = ctx.text[ctx.line_start:ctx.offset]
        old = lex.scan(line_before + ctx.rest_line)
        new = lex.scan(line_before + t + ctx.rest_line)

        def bad(s: ScanResult) -> int:
            return (s.first_mismatch is not None) + len(s.end_state.stack) + int(s.unterminated_string) + \
                int(s.end_state.string is not None or s.end_state.block_comment)

        b_new, b_old = bad(new), bad(old)
        if b_new > b_old:
            return None, "unbalanced brackets or quotes"
        return (CLEAN if b_new == 0 else NO_NEW), ""


# Errors of CPython's symbol table pass (Python/symtable.c), not of its parser.
_SYMTABLE_MSG_RE = re.compile(
    r"name '.*' is (parameter|assigned to|used prior|nonlocal and)|annotated name|import \* only|"
    r"assignment expression|comprehension inner loop|'.*' can ?not be used within|nonlocal declaration|"
    r"no binding for nonlocal|duplicate argument|'(yield|await|yield from|async)\b.*' inside|"
    r"asynchronous comprehension|.* is (global|nonlocal) and|.*cannot be used in a (class|type)")


def _compile_error(src: str) -> Optional[tuple[str, int, int]]:
    """CPython's first syntax error in `src` as (message, line, column), None when it compiles (to an
    AST: the checks of the compiler proper, `return` outside a function and the like, do not apply to a
    piece of a file), `_CANNOT_JUDGE` when the parser gives no position or cannot take the text."""
    with warnings.catch_warnings():
        # The user's code is not ours to warn about (invalid escape sequences and the like).
        warnings.simplefilter("ignore")
        try:
            # Fast path: the symbol table pass parses with the same parser without building the AST's
            # Python objects (~40 % cheaper). It adds checks of its own (`nonlocal` at module level, ...):
            # those errors are asked again of the parser alone; a parser error is the parser's answer.
            symtable.symtable(src, _COMPILE_FILENAME, "exec")
            return None
        except SyntaxError as e:
            if e.lineno is not None and not _SYMTABLE_MSG_RE.match(str(e.msg)):
                return (str(e.msg), e.lineno, e.offset or 0)
        except Exception:  # noqa: BLE001 - whatever it is, the parser alone decides below
            pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(src, _COMPILE_FILENAME, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as e:
        if e.lineno is None:
            return _CANNOT_JUDGE
        return (str(e.msg), e.lineno, e.offset or 0)
    except (ValueError, RecursionError, MemoryError, OverflowError):
        return _CANNOT_JUDGE
    return None


def _fresh_errors(old: list[_ErrKey], new: list[_ErrKey], ins_b: int, t_len: int) -> list[_ErrKey]:
    remaining = Counter(old)
    fresh = []
    end_ins = ins_b + t_len
    for kind, s, e in new:
        ms = s if s <= ins_b else (s - t_len if s >= end_ins else None)
        me = e if e <= ins_b else (e - t_len if e >= end_ins else None)
        if ms is not None and me is not None and remaining[(kind, ms, me)] > 0:
            remaining[(kind, ms, me)] -= 1
            continue
        fresh.append((kind, s, e))
    return fresh


def _line_span(src: str, lo_b: int, hi_b: int) -> tuple[int, int]:
    """Byte range of the whole lines of `src` holding bytes lo_b..hi_b."""
    data = encode(src)
    lo = data.rfind(b"\n", 0, lo_b) + 1
    hi = data.find(b"\n", hi_b)
    return lo, (len(data) if hi < 0 else hi)


def _old_error_elsewhere(err: _ErrKey, old: list[_ErrKey], ins_b: int, t_len: int, lo: int, hi: int) -> bool:
    """A new error that is an old one re-recovered away from the edit: it stays off the lines of the
    insertion and overlaps an error region of the text before the edit."""
    kind, s, e = err
    if s < hi and e > lo:
        return False
    for _, os_, oe in old:
        ns = os_ if os_ <= ins_b else os_ + t_len
        ne = oe if oe < ins_b else oe + t_len
        if s < max(ne, ns + 1) and e > ns:
            return True
    return False


def _balanced(ctx: CursorContext, t: str) -> bool:
    s = ctx.lexer.scan(t, LexState(), at_line_start=ctx.before_blank)
    return s.first_mismatch is None and not s.end_state.stack and s.end_state.string is None \
        and not s.unterminated_string and not s.end_state.block_comment


def _after_lines_end(text: str, offset: int, limit: int, lines: int = 3) -> int:
    """End of the `lines`-th non-blank line after the cursor's line (within `limit`)."""
    pos = text.find("\n", offset, limit)
    if pos < 0:
        return limit
    pos += 1
    seen = 0
    while pos < limit:
        nl = text.find("\n", pos, limit)
        end = limit if nl < 0 else nl + 1
        if text[pos:end].strip():
            seen += 1
            if seen >= lines:
                return end
        pos = end
    return limit


class _IndentChecker:
    """Python indentation rules over logical lines: an indent only after a block header (a logical
    line ending with ':'), a header must be followed by an indented line, a dedent must return to an
    enclosing level. Text is fed in pieces (an unfinished last line waits for the next piece; the
    lexer state carries over); errors are (message, index) with indices counted from the last
    `clone` (the unfinished line carried into a clone has negative indices)."""

    __slots__ = ("lexer", "stack", "expect", "last_code", "lex_state", "errors", "base", "pending")

    def __init__(self, lexer: Lexer, stack0) -> None:
        self.lexer = lexer
        self.stack = list(stack0) if stack0 else [0]
        self.expect = False
        self.last_code = ""
        self.lex_state = LexState()
        self.errors: list[tuple[str, int]] = []
        self.base = 0  # index just after everything fed so far
        self.pending = ""  # the unfinished last line

    def clone(self, keep_errors: bool = False) -> "_IndentChecker":
        c = _IndentChecker.__new__(_IndentChecker)
        c.lexer = self.lexer
        c.stack = list(self.stack)
        c.expect = self.expect
        c.last_code = self.last_code
        c.lex_state = self.lex_state
        c.errors = list(self.errors) if keep_errors else []
        c.base = self.base if keep_errors else 0
        c.pending = self.pending
        return c

    def state(self) -> tuple:
        """Everything that decides how the following lines are checked."""
        return (tuple(self.stack), self.expect, self.last_code, self.lex_state, self.pending)

    def feed(self, text: str) -> None:
        if not text:
            return
        text = self.pending + text
        origin = self.base - len(self.pending)
        cut = text.rfind("\n") + 1
        self.pending = text[cut:]
        self.base = origin + len(text)
        if cut:
            self._process(text[:cut], origin)

    def finish(self, eof: bool) -> list[tuple[str, int]]:
        c = self.clone(keep_errors=True)
        if c.pending:
            c._process(c.pending, c.base - len(c.pending))
        errors = c.errors
        if c.expect and eof:
            errors.append(("expected an indented block", c.base))
        return errors

    def _process(self, text: str, origin: int) -> None:
        scan = self.lexer.scan(text, self.lex_state, at_line_start=True)
        self.lex_state = scan.end_state
        stack = self.stack
        for info in scan.lines:
            if info.logical_start:
                w = info.indent
                pos = origin + info.start
                if self.expect:
                    if w > stack[-1]:
                        stack.append(w)
                    else:
                        self.errors.append(("expected an indented block", pos))
                        while len(stack) > 1 and stack[-1] > w:
                            stack.pop()
                        if stack[-1] != w:
                            stack.append(w)
                elif w > stack[-1]:
                    self.errors.append(("unexpected indent", pos))
                    stack.append(w)
                elif w < stack[-1]:
                    while len(stack) > 1 and stack[-1] > w:
                        stack.pop()
                    if stack[-1] != w:
                        self.errors.append(("unindent does not match any outer level", pos))
                        stack.append(w)
                self.expect = False
            if info.last_code:
                self.last_code = info.last_code
                # A logical line ends where the bracket depth is back to 0 outside strings.
                if info.depth_end == 0 and not info.in_string_end:
                    self.expect = self.last_code == ":"
