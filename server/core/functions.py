"""`intarsia.generateFunction`: the body of the function at the cursor, from its signature and docstring.

`find_function_target` finds the body slot (Python: after the docstring, the body empty or a placeholder; brace
languages: an empty block under a doc comment). Training cuts its docstring → body examples with the same function,
so what it learns is what the command asks.

How the model is asked lives in `function_prompts` (strategies: the fill-in-the-middle body slot, the model's chat
template with or without the served adapter). Here is the orchestration: `prepare_function` finds the target and
the repository context once; `generate_candidate` produces one body with one strategy (and a temperature, so that
several candidates can be sampled and judged later); `generate_function` tries the strategies the setting
`generateFunctionMode` names, in order, and returns the first body that passes the same syntax filter as every
suggestion and is not a placeholder.

Verified generation (Python, setting `generateFunctionVerify`): when the docstring gives examples (`doc_examples`),
that greedy body is run against them in the sandbox (`verification`); if it fails them, further bodies are
sampled with the same strategy at a temperature (`VerifyOptions`: seeded, so the same file gives the same
candidates) while the time budget (`generateFunctionBudgetS`) and the candidate limit allow, and the first that
passes every example is applied, else the greedy one. A body that never reads its parameters passes nothing (a
constant equal to a single example's output is no evidence; `function_prompts.ignores_parameters`). Sampling never starts a candidate that the last one's
duration says would end past the budget. The outcome says which examples the applied body passes. The examples
are the user's own; nothing else (no hidden test) is ever run.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Optional

import tree_sitter
from intarsia.grammars.lexer import leading_ws
from intarsia.grammars.postprocess import postprocess
from intarsia.grammars.registry import Language
from intarsia.grammars.scope import MAX_TOKENS_BLOCK, Scope
from intarsia.model.engine import BASE_ADAPTER, FINISH_CANCELLED, FINISH_LENGTH, Engine, GenerationRequest
from intarsia.model.errors import IntarsiaError
from intarsia.model.fim import FimFormat, RepoFile

from . import doc_examples
from . import function_prompts as fp
from .completion import ContextSource, PipelineOptions, StageTimings
from .documents import Snapshot
from .prompt import build_prompt
from .verification import FAILED, CheckReport, ExampleResult, Verification, VerifyOptions, check_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionTarget:
    """Where the body of a function goes: replace text[start:end] with lead + body + trail."""

    name: str
    start: int
    end: int
    lead: str  # newline + indentation that precede the body
    trail: str  # text after the body (brace languages: newline + the closing brace's indentation)
    fn_start: int = 0  # where the definition starts (its first decorator)
    params: tuple[str, ...] = ()  # the parameters' names
    class_name: Optional[str] = None  # the class the function is a method of


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
    strategy: str = ""  # the strategy whose body this is
    attempts: tuple[str, ...] = ()  # "strategy: outcome" of every strategy tried, in order
    verification: Optional[Verification] = None  # the docstring examples' verdict (Python, examples found)


# What an example a body passes without reading its parameters is reported as (it is not counted as passed).
IGNORES_PARAMETERS = "passed by a body that never reads its parameters"
_PY_LOCAL_IMPORTS = ("import_statement", "import_from_statement")
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
        # Imports the function makes for itself may come before its docstring (`import math` then the
        # docstring): they stay, and the body slot is still after the docstring.
        while len(stmts) > 1 and stmts[0].type in _PY_LOCAL_IMPORTS:
            stmts = stmts[1:]
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
        definition = fn.parent if fn.parent is not None and fn.parent.type == "decorated_definition" else fn
        owner = definition.parent.parent if definition.parent is not None else None
        class_name = None
        if owner is not None and owner.type == "class_definition" and owner.child_by_field_name("name") is not None:
            class_name = _node_text(text, data, owner.child_by_field_name("name"))
        return FunctionTarget(name, start, end, _newline_of(text, start) + indent, "",
                              _char(data, definition.start_byte), fp.parameter_names(data, fn), class_name)
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


@dataclass(frozen=True)
class FunctionRequest:
    """One function to fill, prepared once for every strategy and every candidate."""

    snapshot: Snapshot
    target: FunctionTarget
    doc: str  # the document with the body slot emptied (the target's lead and trail kept)
    at: int  # the body's place in `doc`
    files: tuple[RepoFile, ...]  # repository context, chosen within the budget
    context_ms: float = 0.0


@dataclass(frozen=True)
class Candidate:
    """One body from one strategy; `body` follows the target's lead (ok only)."""

    strategy: str
    ok: bool
    reason: str
    body: str = ""
    raw: str = ""
    timings: StageTimings = StageTimings()
    prompt_tokens: int = 0
    new_tokens: int = 0
    cancelled: bool = False
    engine_called: bool = False


def prepare_function(snapshot: Snapshot, *, engine: Engine, options: PipelineOptions = PipelineOptions(),
                     context: Optional[ContextSource] = None) -> FunctionRequest | str:
    """The target at the cursor and its repository context, or why there is no target."""
    t0 = time.perf_counter()
    target = find_function_target(snapshot.text, snapshot.offset, snapshot.language, snapshot.tree)
    if isinstance(target, str):
        return target
    text = snapshot.text
    prefix = text[:target.start] + target.lead
    doc = prefix + target.trail + text[target.end:]
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
    return FunctionRequest(snapshot, target, doc, at, tuple(files), (time.perf_counter() - t0) * 1000)


def _fim_prompt(req: FunctionRequest, engine: Engine, fim_format: FimFormat,
                options: PipelineOptions) -> tuple[str, int, tuple[str, ...]]:
    budget = options.budget.for_body()
    parts = build_prompt(fim_format, engine.count_tokens, req.doc, req.at, budget=budget,
                         context_files=list(req.files), path=req.snapshot.path, repo_name=options.repo_name)
    return parts.prompt, parts.prompt_tokens, fim_format.stop_strings


def _chat_prompt(req: FunctionRequest, engine: Engine, options: PipelineOptions) -> tuple[str, int, fp.ChatPrompt]:
    snap, target = req.snapshot, req.target
    files = list(req.files)
    count = engine.count_tokens
    # The file's part gets what the prompt budget leaves after the context (at most half of it).
    ctx_tokens = sum(count(f.content) for f in files)
    while files and ctx_tokens > options.budget.prompt // 2:
        ctx_tokens -= count(files.pop().content)
    view = fp.file_view(snap.text, snap.language, target.fn_start, target.start, count=count,
                        budget=max(options.budget.prompt - ctx_tokens - 128, 256), tree=snap.tree)
    question = fp.chat_prompt(target.name, view, class_name=target.class_name, files=files, path=snap.path,
                              header=fp.answer_header(snap.text, target.fn_start, target.start))
    prompt = engine.render_chat(question.messages) + question.response_prefix
    return prompt, count(prompt), question


def generate_candidate(req: FunctionRequest, strategy: str, *, engine: Engine, fim_format: FimFormat,
                       options: PipelineOptions = PipelineOptions(), temperature: float = 0.0, top_p: float = 1.0,
                       seed: Optional[int] = None, cancel: Optional[threading.Event] = None) -> Candidate:
    """One body for `req` with `strategy` (function_prompts.STRATEGIES); greedy unless `temperature` > 0 (`seed`:
    reproducible sampling). Never raises for engine failures: they are a failed candidate whose reason says what
    failed."""
    snap, target = req.snapshot, req.target
    t0 = time.perf_counter()
    chat = fp.uses_chat(strategy)
    question: Optional[fp.ChatPrompt] = None
    try:
        if chat:
            if snap.language is None or snap.language.syntax.family != "python":
                return Candidate(strategy, False, "the chat strategies write Python only")
            prompt, prompt_tokens, question = _chat_prompt(req, engine, options)
            stops: tuple[str, ...] = fp.PY_CHAT_STOPS
            max_new = max(fp.CHAT_MAX_TOKENS, options.max_tokens)
            adapter = BASE_ADAPTER if strategy == fp.CHAT else options.adapter
        elif strategy == fp.FIM:
            prompt, prompt_tokens, stops = _fim_prompt(req, engine, fim_format, options)
            max_new = max(MAX_TOKENS_BLOCK, options.max_tokens)
            adapter = options.adapter
        else:
            return Candidate(strategy, False, f"unknown strategy '{strategy}' (known: {', '.join(fp.STRATEGIES)})")
    except IntarsiaError as e:  # (a model without a chat template)
        return Candidate(strategy, False, str(e))
    t_prompt = time.perf_counter()
    request = GenerationRequest(prompt=prompt, max_new_tokens=max_new, stop=stops, adapter=adapter,
                                temperature=temperature, top_p=top_p, seed=seed)
    try:
        res = engine.generate(request, cancel=cancel)
    except IntarsiaError as e:
        return Candidate(strategy, False, f"engine error: {e}", prompt_tokens=prompt_tokens, engine_called=True)
    t_eng = time.perf_counter()
    if res.finish_reason == FINISH_CANCELLED:
        return Candidate(strategy, False, "cancelled", raw=res.text, cancelled=True, engine_called=True)
    truncated = res.finish_reason == FINISH_LENGTH
    if question is not None:
        extracted = fp.extract_body(question.response_prefix + res.text, name=target.name, language=snap.language,
                                    indent=target.lead.lstrip("\r\n"), params=target.params,
                                    class_name=target.class_name,
                                    file_names=fp.file_bindings(snap.text, snap.language, snap.tree),
                                    newline=target.lead[:len(target.lead) - len(target.lead.lstrip("\r\n"))])
        middle = extracted.body if isinstance(extracted, fp.Extracted) else ""
        why_not = extracted if isinstance(extracted, str) else ""
    else:
        middle, why_not = res.text, ""
    post = postprocess(req.doc, req.at, middle, language=snap.language, scope=Scope.BLOCK, truncated=truncated) \
        if middle or question is None else None
    t_post = time.perf_counter()
    timings = StageTimings(context_ms=req.context_ms, prompt_ms=(t_prompt - t0) * 1000,
                           engine_ms=(t_eng - t_prompt) * 1000, first_token_ms=res.timings.first_token_s * 1000,
                           post_ms=(t_post - t_eng) * 1000, total_ms=req.context_ms + (t_post - t0) * 1000)
    common = dict(raw=res.text, timings=timings, prompt_tokens=res.timings.prompt_tokens or prompt_tokens,
                  new_tokens=res.timings.new_tokens, engine_called=True)
    if post is None:
        return Candidate(strategy, False, why_not or "the model wrote no body", **common)
    body = post.text.rstrip() if post.valid else ""
    if not body:
        return Candidate(strategy, False, f"no syntactically valid body: {post.reason}", **common)
    if fp.is_placeholder_body(body, snap.language):
        return Candidate(strategy, False, "the body is a placeholder", **common)
    return Candidate(strategy, True, post.reason, body, **common)


def target_examples(snapshot: Snapshot, target: FunctionTarget) -> tuple[doc_examples.Example, ...]:
    """The examples of the target's docstring (doc_examples), none for other languages than Python."""
    if snapshot.language is None or snapshot.language.syntax.family != "python":
        return ()
    text = snapshot.text
    line_start = text.rfind("\n", 0, target.fn_start) + 1
    name, found = doc_examples.function_examples(text[line_start:target.start], method=target.class_name is not None)
    return found if name == target.name else ()


@dataclass(frozen=True)
class _Verified:
    candidate: Candidate
    verification: Verification
    attempts: tuple[str, ...]
    cancelled: bool = False


def _verify(req: FunctionRequest, greedy: Candidate, strategy: str, examples: tuple[doc_examples.Example, ...], *,
            engine: Engine, fim_format: FimFormat, options: PipelineOptions, verify: VerifyOptions,
            cancel: Optional[threading.Event]) -> _Verified:
    """The greedy body judged by the examples and, when it fails them, further samples until one passes, the
    budget or the candidate limit is spent; the first that passes, else the greedy one."""
    snap, target = req.snapshot, req.target
    assert snap.language is not None
    t0 = time.perf_counter()
    counted = len(doc_examples.checks(examples))

    def judge(cand: Candidate) -> CheckReport:
        edited = req.doc[:req.at] + cand.body + req.doc[req.at:]
        report = check_body(edited, snap.language, name=target.name, method=target.class_name is not None,
                            examples=examples, options=verify)
        if report.all_passed and fp.ignores_parameters(cand.body, target.params, snap.language):
            # (a constant that equals the examples' outputs: passing them is no evidence)
            return CheckReport(tuple(ExampleResult(r.example, FAILED, IGNORES_PARAMETERS) for r in report.results),
                               "", report.seconds)
        return report

    def outcome(cand: Candidate, report: CheckReport, judged: int, chosen: int, sampled: int, note: str,
                attempts: list[str], cancelled: bool = False) -> _Verified:
        return _Verified(cand, Verification(counted, report.passed, judged, chosen, report,
                                            time.perf_counter() - t0, note, sampled), tuple(attempts), cancelled)

    first = judge(greedy)
    attempts: list[str] = []
    log.info("generateFunction %s: greedy body passes %d/%d docstring examples%s", target.name, first.passed,
             first.total, f" ({first.error})" if first.error else "")
    if first.all_passed:
        return outcome(greedy, first, 1, 0, 0, "", attempts)
    if not first.judged:
        return outcome(greedy, first, 1, 0, 0, "the examples could not be run here", attempts)
    seen = {greedy.body}
    judged, sampled = 1, 0
    deadline = t0 + verify.budget_s
    last_s = greedy.timings.total_ms / 1000
    note = ""
    while judged < verify.max_candidates and sampled < 2 * verify.max_candidates:
        if time.perf_counter() + last_s > deadline:
            note = "time budget spent" if verify.budget_s > 0 else "no time budget for more bodies"
            break
        sampled += 1
        s0 = time.perf_counter()
        cand = generate_candidate(req, strategy, engine=engine, fim_format=fim_format, options=options,
                                  temperature=verify.temperature, top_p=verify.top_p, seed=verify.seed + sampled,
                                  cancel=cancel)
        last_s = time.perf_counter() - s0  # (what the next sample will take, about: the prompt is cached now)
        if cand.cancelled:
            return outcome(greedy, first, judged, 0, sampled, "cancelled", attempts, cancelled=True)
        if not cand.ok:  # (a placeholder or an invalid body is never judged, never applied)
            attempts.append(f"{strategy} sample {sampled}: {cand.reason}")
            continue
        if cand.body in seen:
            attempts.append(f"{strategy} sample {sampled}: the same body again")
            continue
        seen.add(cand.body)
        judged += 1
        report = judge(cand)
        attempts.append(f"{strategy} sample {sampled}: {report.passed}/{report.total} examples pass")
        log.info("generateFunction %s: sample %d (t=%.2f) passes %d/%d examples, %.1f s", target.name, sampled,
                 verify.temperature, report.passed, report.total, time.perf_counter() - s0)
        if report.all_passed:
            return outcome(cand, report, judged, judged - 1, sampled, "", attempts)
    else:
        note = "candidate limit reached"
    return outcome(greedy, first, judged, 0, sampled, note, attempts)


def generate_function(
    snapshot: Snapshot,
    *,
    engine: Engine,
    fim_format: FimFormat,
    options: PipelineOptions = PipelineOptions(),
    cancel: Optional[threading.Event] = None,
    context: Optional[ContextSource] = None,
    mode: str = fp.AUTO,
    model: Optional[str] = None,
    verify: VerifyOptions = VerifyOptions(),
) -> FunctionOutcome:
    """The body of the function at the cursor: the strategies `mode` names for `model` (function_prompts.
    strategies_for) are tried in order, and the first syntax-checked, non-placeholder body is returned (as the
    replacement of text[start:end]). With `verify` on (Python, the docstring gives examples) that body is judged
    by the examples and more are sampled when it fails them (see the module docstring)."""
    req = prepare_function(snapshot, engine=engine, options=options, context=context)
    if isinstance(req, str):
        return FunctionOutcome(False, req)
    target = req.target
    family = snapshot.language.syntax.family if snapshot.language is not None else None
    attempts: list[str] = []
    called = False
    last: Optional[Candidate] = None
    for strategy in fp.strategies_for(mode, model, family):
        cand = generate_candidate(req, strategy, engine=engine, fim_format=fim_format, options=options,
                                  cancel=cancel)
        called = called or cand.engine_called
        last = cand
        attempts.append(f"{strategy}: {cand.reason}")
        t = cand.timings
        log.info("generateFunction %s in %s with %s: %s; %d prompt tokens, %d new, engine %.0f ms, post %.1f ms",
                 target.name, snapshot.path or snapshot.uri, strategy, cand.reason, cand.prompt_tokens,
                 cand.new_tokens, t.engine_ms, t.post_ms)
        if cand.cancelled:
            return FunctionOutcome(False, "cancelled", name=target.name, raw=cand.raw, engine_called=called,
                                   strategy=strategy, attempts=tuple(attempts))
        if not cand.ok:
            continue
        verification = None
        examples = target_examples(snapshot, target) if verify.enabled and family == "python" else ()
        if doc_examples.checks(examples):
            v = _verify(req, cand, strategy, examples, engine=engine, fim_format=fim_format, options=options,
                        verify=verify, cancel=cancel)
            attempts.extend(v.attempts)
            if v.cancelled:
                return FunctionOutcome(False, "cancelled", name=target.name, raw=cand.raw, engine_called=called,
                                       strategy=strategy, attempts=tuple(attempts))
            cand, verification = v.candidate, v.verification
            log.info("generateFunction %s: %s", target.name, verification.message)
        return FunctionOutcome(True, cand.reason, target.start, target.end, target.lead + cand.body + target.trail,
                               target.name, cand.timings, cand.raw, engine_called=called, strategy=strategy,
                               attempts=tuple(attempts), verification=verification)
    return FunctionOutcome(False, f"no body for {target.name}: " + "; ".join(attempts), name=target.name,
                           timings=last.timings if last else StageTimings(), raw=last.raw if last else "",
                           engine_called=called, attempts=tuple(attempts))


__all__ = ["FunctionTarget", "FunctionOutcome", "FunctionRequest", "Candidate", "find_function_target",
           "prepare_function", "generate_candidate", "target_examples", "generate_function"]
