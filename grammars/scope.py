"""How much to complete at a cursor: nothing, the current line, or a block.

`completion_scope` is advice for the engine (how many tokens to ask for, when it may stop early) and
the `scope` argument of `postprocess`. NONE is returned only for automatic triggers; an explicit
request (`invoked=True`, LSP trigger kind Invoked, and evaluation harnesses) never gets NONE.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Optional

from .context import CursorContext, TreeLike, cursor_context
from .lexer import indent_width, leading_ws
from .registry import Language

MAX_TOKENS_LINE = 64
MAX_TOKENS_MID_LINE = 96
MAX_TOKENS_COMMENT = 48
MAX_TOKENS_BLOCK = 256

# Text after the cursor that still leaves room for an inline completion: closing brackets, quotes and
# statement punctuation only (`foo(|)`, `x = "|";`, `if (|) {`).
_CLOSERS_ONLY = re.compile(r"""^\s*[)\]}>"'`]*\s*[:;,{]?\s*$""")
_PY_TOP_STOPS = ("\ndef ", "\nclass ", "\nasync def ", "\n@", "\nif __name__")


class Scope(enum.Enum):
    NONE = "none"
    LINE = "line"
    BLOCK = "block"


@dataclass(frozen=True)
class ScopeDecision:
    scope: Scope
    reason: str
    max_new_tokens: int
    # Stop strings the engine may use safely (generation past them is always cut by post-processing).
    stop: tuple[str, ...] = ()
    # The engine may stop once this many newline-terminated lines with content were generated.
    max_lines: Optional[int] = None
    # A generated line indented at or below this width (tab stops of 8) ends the block (Python).
    indent_floor: Optional[int] = None


def completion_scope(
    text: str,
    offset: int,
    language: Optional[Language],
    *,
    tree: TreeLike = None,
    invoked: bool = False,
) -> ScopeDecision:
    """Decide the completion scope at `offset` (a str index) in `text`. A caller that post-processes at
    the same cursor afterwards builds the context itself (`cursor_context`) and uses `scope_for_context`,
    to hand the same context to `postprocess`."""
    ctx = cursor_context(text, offset, language, tree)
    return scope_for_context(ctx, invoked=invoked)


def scope_for_context(ctx: CursorContext, *, invoked: bool = False) -> ScopeDecision:
    """`completion_scope` for a context built by `cursor_context`."""
    if ctx.in_comment:
        return ScopeDecision(Scope.LINE, "inside a comment: finish the comment line", MAX_TOKENS_COMMENT,
                             stop=("\n",), max_lines=1)
    if ctx.in_string:
        if ctx.in_docstring:
            return ScopeDecision(Scope.LINE, "inside a docstring: one line of text", MAX_TOKENS_LINE, max_lines=1)
        return ScopeDecision(Scope.LINE, "inside a string literal", MAX_TOKENS_LINE, max_lines=None)
    if ctx.in_identifier:
        if not invoked:
            return ScopeDecision(Scope.NONE, "cursor inside an identifier", 0)
        return ScopeDecision(Scope.LINE, "inside an identifier (explicit request)", MAX_TOKENS_MID_LINE)
    if not ctx.rest_blank:
        if ctx.at_col0:
            return _block(ctx, "start of a line before existing code: insert whole lines")
        if ctx.before_blank:
            if not invoked:
                return ScopeDecision(Scope.NONE, "cursor in the indentation before existing code", 0)
            return ScopeDecision(Scope.LINE, "indentation before existing code (explicit request)",
                                 MAX_TOKENS_MID_LINE)
        if _CLOSERS_ONLY.match(ctx.rest_line):
            return ScopeDecision(Scope.LINE, "only closing brackets/punctuation after the cursor",
                                 MAX_TOKENS_LINE)
        if not invoked:
            return ScopeDecision(Scope.NONE, "code after the cursor on this line", 0)
        return ScopeDecision(Scope.LINE, "middle of a line (explicit request)", MAX_TOKENS_MID_LINE)
    if ctx.before_blank:
        where = "in a body" if ctx.defs else "at top level"
        return _block(ctx, f"empty line {where}")
    if _ends_block_header(ctx):
        return _block(ctx, "after a block header")
    return ScopeDecision(Scope.LINE, "end of a line", MAX_TOKENS_LINE, max_lines=1)


def _ends_block_header(ctx: CursorContext) -> bool:
    opener = ctx.syntax.block_opener
    state = ctx.state_at_cursor
    if state.string is not None or state.block_comment:
        return False
    if ctx.python:
        return not state.stack and ctx.logical_last_code == ":"
    return ctx.cursor_line_last_code == opener


def _block(ctx: CursorContext, reason: str) -> ScopeDecision:
    stop: tuple[str, ...] = ()
    floor = None
    if ctx.python:
        level = _position_indent(ctx)
        d = ctx.enclosing_definition(level) if level is not None else None
        if d is not None:
            floor = d[2]
            if d[2] == 0 and d[1] == "function":
                stop = _PY_TOP_STOPS
    return ScopeDecision(Scope.BLOCK, reason, MAX_TOKENS_BLOCK, stop=stop, indent_floor=floor)


def _position_indent(ctx: CursorContext) -> Optional[int]:
    """Indentation the inserted code will sit at, when the document already tells (else None)."""
    if not ctx.before_blank:
        return indent_width(leading_ws(ctx.line_before)) + 1  # inside this line's statement
    if not ctx.rest_blank:
        return indent_width(leading_ws(ctx.line_before + ctx.rest_line))
    if ctx.line_before:
        return indent_width(ctx.line_before)
    return None
