"""Intarsia grammars: tree-sitter languages, queries, completion scope and syntax-aware post-processing.

Imports nothing from the rest of Intarsia.

Per request: `ctx = cursor_context(text, offset, language, tree)`, `scope_for_context(ctx, invoked=...)`,
then `postprocess(text, offset, raw, language=..., scope=..., context=ctx)` (grammars/context.py says why the
context is passed and not cached).
"""

from .context import CursorContext, cursor_context
from .document import ParsedDocument
from .postprocess import PostResult, Removal, choose, postprocess
from .registry import Language, available_languages, get_language, language_for_path
from .scope import Scope, ScopeDecision, completion_scope, scope_for_context

__all__ = [
    "CursorContext",
    "Language",
    "ParsedDocument",
    "PostResult",
    "Removal",
    "Scope",
    "ScopeDecision",
    "available_languages",
    "choose",
    "completion_scope",
    "cursor_context",
    "get_language",
    "language_for_path",
    "postprocess",
    "scope_for_context",
]
