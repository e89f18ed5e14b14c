"""Intarsia grammars: tree-sitter languages, queries, completion scope and syntax-aware post-processing.

Imports nothing from the rest of Intarsia.
"""

from .document import ParsedDocument
from .postprocess import PostResult, Removal, choose, postprocess
from .registry import Language, available_languages, get_language, language_for_path
from .scope import Scope, ScopeDecision, completion_scope

__all__ = [
    "Language",
    "ParsedDocument",
    "PostResult",
    "Removal",
    "Scope",
    "ScopeDecision",
    "available_languages",
    "choose",
    "completion_scope",
    "get_language",
    "language_for_path",
    "postprocess",
]
