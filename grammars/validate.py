"""Does a candidate completion parse in place? The judge post-processing consults for every cut it tries.

`grammars/postprocess.py` decides *what* to try (where a completion leaves its block, what repeats the text
after the cursor, which prefixes are candidates and in what order); this module only judges one candidate
inserted at the cursor. The two change for different reasons - a new trimming rule does not touch what
"parses" means, a stricter parser check does not touch the trimming - so they live apart, and the only
things post-processing takes from here are `Validator` and its tiers.

`Validator(ctx).check(candidate)` answers with a tier, best first:

- `CLEAN`: with the candidate inserted, no ERROR or MISSING node where the insertion is judged;
- `NO_NEW`: no error that was not there before. Errors already in the document are matched by position, so
  a document broken elsewhere still gets suggestions (post-processing still prefers a CLEAN candidate to one
  that leaves old errors in place);
- `RELAXED`: the only new errors are old ones that tree-sitter's error recovery placed elsewhere, off the
  insertion's lines;
- None: invalid, with the reason.

Python is judged on the validity window of the cursor's `CursorContext` (whole statements around the cursor;
grammars/context.py says why a window and not the whole document), widened when the candidate leaves brackets
or a string open that the text after the cursor closes, or adds a clause (`else:`, `except:`, ...) whose
siblings lie after the window. Three judges look at it, because each accepts something another rejects:

1. tree-sitter: the ERROR/MISSING nodes of the window with the candidate, against those of the unedited
   window (`_collect_errors`, `_fresh_errors`).
2. Indentation, which tree-sitter-python does not check (it takes an indented first line and dedents to any
   level): `_IndentChecker` applies CPython's rules to the lexer's logical lines. It runs over the window up to
   the cursor's line once, then over the candidate and the text after it piece by piece, only until its state
   is again the one the unedited text has at the same point - from there both see the same lines the same way -
   so a candidate costs its own lines, not the window's.
3. CPython's own parser, because tree-sitter-python accepts some code CPython rejects (a `try:` left without
   `except`, `a == *b`, a second `else:`): the window with the candidate must compile wherever it compiled
   before; where the text is already broken around the cursor, the whole definition is compiled and an error
   left on the candidate's lines, or after them in that definition, is the candidate's to fix
   (`Validator._compiles`). Compiling costs about 0.15 ms per KB, so only a window of at most
   _COMPILE_WINDOW_CHARS and a definition of at most _COMPILE_REGION_CHARS are compiled; longer ones keep
   tree-sitter's verdict. `compile_error` asks the symbol-table pass first: it runs the same parser without
   building the AST's Python objects (~40 % cheaper), and its own semantic errors are asked again of the
   parser alone, so the answer is always the parser's.

Where the unedited text is broken at the cursor itself (a syntax error on the cursor's line, a header before
the cursor still waiting for its block, the line of code after the cursor mis-indented), only a candidate that
mends it fits: one leaving the error in place would be a guess at what the code around it means. Except
where no insertion can mend it: the rest of the cursor's line is only the closers of brackets (and the string)
opened before it, as an editor's auto-closing leaves them while a header is retyped above its old body
(`def f(x|)`: the colon comes after the `)`). There a one-line candidate that adds no error of its own fits.

Without a grammar, bracket and string balance on the cursor's line stands in.
"""

from __future__ import annotations

import ast
import re
import symtable
import warnings
from collections import Counter
from typing import Optional

import tree_sitter

from .context import WINDOW_MAX_BYTES, CursorContext, Window
from .document import encode, insertion_parse, utf8_len
from .lexer import LexState, Lexer, ScanResult, first_logical, indent_width, leading_ws

__all__ = ["CANNOT_JUDGE", "CLEAN", "NO_NEW", "RELAXED", "Validator", "compile_error"]

# Validity tiers, best first: no error at all where the insertion is judged; no error that was not there
# before; only old errors re-recovered away from the edit.
CLEAN, NO_NEW, RELAXED = 0, 1, 2
_JUNCTION_LINE, _JUNCTION_STRUCTURE = 1, 2  # how the text before an edit is broken at the cursor
_EXTEND_LINES = 60  # how far after the cursor a bracket left open by a candidate may be closed
_CLAUSE_HEADS = ("elif", "else", "except", "finally")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMPILE_WINDOW_CHARS = 3000  # longest validity window compiled per candidate
_COMPILE_REGION_CHARS = 2000  # longest definition compiled where the text is broken around the cursor
_COMPILE_FILENAME = "<intarsia-check>"
CANNOT_JUDGE = ("", 0, 0)  # `compile_error`: the parser gives no position or cannot take the text
_UNFINISHED_AT_END = ("expected 'except' or 'finally' block", "expected an indented block")
_ABOUT_LINE_RE = re.compile(r"\bon line (\d+)")  # "expected an indented block after 'if' statement on line 3"


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


class Validator:
    """Judges the candidates of one cursor (`check`). What the unedited text gives - its errors, indentation
    states, compile results - is kept across candidates, so a completion's many cuts pay for it once."""

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
        if (junction == _JUNCTION_STRUCTURE or (junction == _JUNCTION_LINE and not self._mended(t, win))) \
                and not self._within_closers(t):
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
            old = self._compile_old[key] = compile_error(region.head + ctx.text[region.start:region.end])
        return old

    def _new_compile_error(self, t: str, region: Window) -> Optional[tuple[str, int, int]]:
        key = (region.start, region.end, region.head, t)
        hit = self._compile_new.get(key, False)
        if hit is False:
            ctx = self.ctx
            hit = self._compile_new[key] = compile_error(
                region.head + ctx.text[region.start:ctx.offset] + t + ctx.text[ctx.offset:region.end])
        return hit

    def _judge(self, t: str, region: Window, strict_end: int) -> str:
        ctx = self.ctx
        before = region.head + ctx.text[region.start:ctx.offset]
        after = ctx.text[ctx.offset:region.end]
        new = self._new_compile_error(t, region)
        if new is None or new == CANNOT_JUDGE:
            return ""
        old = self._old_compile_error(region)
        if old == CANNOT_JUDGE:
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
        if (msg, line) == old[:2] and self._within_closers(t):
            return ""  # the error after the closers the insertion cannot pass, as it was (`_within_closers`)
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
        alone = compile_error(stmt + "\n")
        return alone is not None and alone != CANNOT_JUDGE

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

    def _within_closers(self, t: str) -> bool:
        """The rest of the cursor's line is only closers of brackets (and of the string) opened before the cursor,
        and `t` is one line: what an editor's auto-closing leaves while a header is retyped above its old body
        (`def f(x|)`). An insertion cannot reach past those closers, so it cannot mend a junction broken after
        them (the header's colon comes after the `)`): that is left to the user, and a candidate that leaves only
        the errors already there fits."""
        ctx = self.ctx
        if "\n" in t:
            return False
        rest = ctx.rest_line.strip()
        if not rest:
            return False
        state = ctx.state_at_cursor
        quotes = set(state.string) if state.string else set()
        brackets = [c for c in rest if c not in quotes]
        return all(c in ")]}" for c in brackets) and len(brackets) <= len(state.stack)

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
        first = first_logical(scan.lines, ctx.before_blank)
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
            if ins <= mapped < junction_end and not self._within_closers(t):
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


def compile_error(src: str) -> Optional[tuple[str, int, int]]:
    """CPython's first syntax error in `src` as (message, line, column), None when it compiles (to an
    AST: the checks of the compiler proper, `return` outside a function and the like, do not apply to a
    piece of a file), `CANNOT_JUDGE` when the parser gives no position or cannot take the text."""
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
            return CANNOT_JUDGE
        return (str(e.msg), e.lineno, e.offset or 0)
    except (ValueError, RecursionError, MemoryError, OverflowError):
        return CANNOT_JUDGE
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
