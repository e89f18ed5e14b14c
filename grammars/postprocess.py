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
7. Validity, per candidate: the first valid one wins, except that a candidate leaving no syntax error
   at all is preferred to one leaving errors already in the document in place (a few more checks are
   spent looking for one). What "valid" means - tree-sitter errors compared with the unedited text's,
   Python indentation, CPython's parser, bracket balance without a grammar - is grammars/validate.py's
   business (see its docstring).
8. ``reindent`` - indentation fitted to the cursor's block: the indentation already typed before the
   cursor repeated by the model is dropped (tried first right after a block header, where both
   parse), a block shifted as a whole is moved to the expected level (tried when nothing else is
   valid).

Nothing valid means no suggestion (`text == ""`, `valid is False`), never a broken one.

The cursor analysis (`CursorContext`) is an argument, not a cache: build it once with
`context.cursor_context`, decide the scope with `scope.scope_for_context`, and pass the same context to
`postprocess(..., context=ctx)` after generation. Without `context=` one is built here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from .context import CursorContext, TreeLike, cursor_context
from .lexer import LineInfo, ScanResult, first_logical, indent_width, leading_ws
from .registry import Language
from .scope import Scope
from .validate import CLEAN, NO_NEW, Validator

logger = logging.getLogger(__name__)

MAX_CHECKS = 12  # validity checks per completion variant
_EXTRA_CHECKS = 4  # checks spent looking for a CLEAN candidate after a NO_NEW/RELAXED one
_SUFFIX_LOOKAHEAD = 4000  # characters of the suffix compared for overlap
_CLOSING_PUNCT = set(")]}>\"'`;:,")
_TERMINATORS = ("return", "raise", "continue", "break")
_DEF_HEADS = ("def", "class", "async", "@")


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
    context: Optional[CursorContext] = None,
) -> PostResult:
    """Fit one raw completion into `text` at `offset` (a str index).

    `tree`: the document's tree (a `tree_sitter.Tree` for exactly `text`, or a `ParsedDocument`);
    without it the document is parsed here. `truncated`: generation stopped at its token limit, so an
    unfinished last line is dropped before anything else. `context`: the `cursor_context` of this very
    text, offset and language, already built for the scope decision (`tree` is then not used); without
    it one is built here."""
    ctx = _context(text, offset, language, tree, context)
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
    context: Optional[CursorContext] = None,
) -> PostResult:
    """Post-process several candidates (best first, as the engine ranks them) and return the first
    valid one; when none is valid, the first candidate's (invalid, empty) result. `tree` and `context`
    as for `postprocess`."""
    ctx = _context(text, offset, language, tree, context)
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


def _context(text: str, offset: int, language: Optional[Language], tree: TreeLike,
             context: Optional[CursorContext]) -> CursorContext:
    """The caller's context, when it was built for these inputs; else a new one."""
    if context is None:
        return cursor_context(text, offset, language, tree)
    if context.offset != offset or context.language is not language or \
            (context.text is not text and context.text != text):
        raise ValueError("context was built for another text, offset or language")
    return context


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
        self._validator = Validator(ctx)
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
    first = first_logical(lines, ctx.before_blank)
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
