"""`intarsia.generateFunction`: the body of the function at the cursor, from its signature and docstring.

`find_function_target` finds the body slot (Python: after the docstring, the body empty or a placeholder; brace
languages: an empty block under a doc comment). Training cuts its docstring → body examples with the same function,
so what it learns is what the command asks. `generate_function` asks the engine for the body with block scope and
returns it only when it passes the same syntax filter as every suggestion.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import Optional

import tree_sitter
from intarsia.grammars.lexer import leading_ws
from intarsia.grammars.postprocess import postprocess
from intarsia.grammars.registry import Language
from intarsia.grammars.scope import MAX_TOKENS_BLOCK, Scope
from intarsia.model.engine import FINISH_CANCELLED, FINISH_LENGTH, Engine, GenerationRequest
from intarsia.model.errors import IntarsiaError
from intarsia.model.fim import FimFormat, RepoFile

from .completion import ContextSource, PipelineOptions, StageTimings
from .documents import Snapshot
from .prompt import SUFFIX_MAX_TOKENS, build_prompt

log = logging.getLogger(__name__)


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
    if context is not None and options.budget.context > 0:
        try:
            files = context.select(body_snap, options.budget.context, engine.count_tokens)
        except Exception:
            log.warning("repository context failed", exc_info=True)
    t_ctx = time.perf_counter()
    # The body's prompt keeps a long suffix on every device: it is computed once, not on every keystroke.
    budget = replace(options.budget, suffix=SUFFIX_MAX_TOKENS)
    parts = build_prompt(fim_format, engine.count_tokens, doc, at, budget=budget, context_files=files,
                         path=snapshot.path, repo_name=options.repo_name)
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


__all__ = ["FunctionTarget", "FunctionOutcome", "find_function_target", "generate_function"]
