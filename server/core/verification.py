"""Judging a function body by its own docstring's examples, run in the sandbox.

Sampling several bodies only helps if the right one can be told apart without the user: the docstring's examples
(`doc_examples`) are the user's own statement of what the function returns, so a body that passes them is better
evidence than the model's likelihood. `functions.generate_function` asks for a greedy body, judges it here, and
samples more only when it fails (settings `generateFunctionVerify`, `generateFunctionBudgetS`).

The program that judges one body is the document as it would be after the edit, reduced to what defines things
(imports, definitions, assignments, `if`/`try` blocks, never `if __name__ == "__main__"` nor top-level calls),
executed statement by statement in a fresh namespace so that an import this sandbox lacks loses only the names it
binds; then each example, with its own time limit, its result written back as one JSON line behind a nonce. It runs
in `sandbox.run` (no network, resource limits, a temporary folder, never the user's environment). Comparison is by
value (`==`, floats within a small tolerance, lists and tuples element by element); doctest examples compare their
printed output as doctest does (whitespace normalized, the example's own directives), then by value.

An example fails when the body gives another value or raises; it is "unrunnable" when what it needs is missing
from the sandbox (an import of the workspace's own modules, a name such an import should have bound, a file, a
folder outside its own, the network: an OSError). A report
whose failures are all unrunnable, or whose program could not run at all, judges nothing: the caller applies the
greedy body without sampling more.
"""

from __future__ import annotations

import ast
import json
import secrets
import time
from dataclasses import dataclass

from intarsia.grammars.registry import Language

from . import sandbox
from .doc_examples import ASSERT, DOCTEST, VALUE, Example, checks

PASSED = "passed"
FAILED = "failed"
UNRUNNABLE = "unrunnable"

# Defaults of the settings generateFunctionVerify / generateFunctionBudgetS.
DEFAULT_BUDGET_S = 20.0
MAX_BUDGET_S = 600.0
# The file's own statements (its imports above all) get this long each in the sandbox.
CONTEXT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class VerifyOptions:
    """How bodies are judged and how many are sampled (`functions.generate_function`)."""

    enabled: bool = True
    budget_s: float = DEFAULT_BUDGET_S  # seconds for further candidates once the greedy body fails its examples
    max_candidates: int = 6  # bodies judged at most, the greedy one included
    temperature: float = 0.6  # of the further candidates
    top_p: float = 0.95
    seed: int = 0  # the k-th further candidate is sampled with seed + k: the same file gives the same candidates
    example_timeout_s: float = 1.0  # one example
    run_timeout_s: float = 15.0  # one body's whole program (interpreter and imports included)
    memory_bytes: int = 1 << 30


@dataclass(frozen=True)
class ExampleResult:
    example: Example
    status: str  # PASSED | FAILED | UNRUNNABLE
    detail: str = ""  # what the body gave, or the error


@dataclass(frozen=True)
class CheckReport:
    """One body against the examples."""

    results: tuple[ExampleResult, ...]
    error: str = ""  # why nothing could be judged (the program did not run, the function is not reachable)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return sum(r.status == PASSED for r in self.results)

    @property
    def all_passed(self) -> bool:
        return not self.error and self.total > 0 and self.passed == self.total

    @property
    def judged(self) -> bool:
        """Whether the report says anything about the body: it ran, and not every miss is unrunnable."""
        if self.error or not self.results:
            return False
        return self.all_passed or any(r.status == FAILED for r in self.results)


@dataclass(frozen=True)
class Verification:
    """What verified generation did for one command: the examples, the bodies judged, the one applied."""

    examples: int  # examples found in the docstring (checks, set-up statements not counted)
    passed: int  # of them, passed by the applied body
    candidates: int  # bodies judged
    chosen: int  # which one was applied: 0 the greedy body, k the k-th body judged after it
    report: CheckReport  # the applied body's
    seconds: float = 0.0  # spent on judging and on further candidates
    note: str = ""  # why sampling stopped, or why nothing was judged
    sampled: int = 0  # further bodies asked for (invalid ones and repeats of a body included)

    @property
    def verified(self) -> bool:
        return self.report.all_passed

    @property
    def message(self) -> str:
        """One line for the user: how many examples the applied body passes, and which body it is."""
        if not self.report.judged:
            why = self.report.error or next((r.detail for r in self.report.results if r.status == UNRUNNABLE), "")
            return f"docstring examples not checked ({why}): the body is not verified"
        if self.verified:
            which = "the greedy body" if self.chosen == 0 else \
                f"a sampled body, {self.candidates} judged; the greedy one failed them"
            return f"{self.passed}/{self.examples} docstring examples pass ({which})"
        failing = next((r for r in self.report.results if r.status != PASSED), None)
        tail = f"; {failing.example.label}: {failing.detail}" if failing is not None else ""
        bodies = f"{self.candidates} bod{'y' if self.candidates == 1 else 'ies'} judged"
        tried = f" ({bodies}, {self.note})" if self.candidates > 1 or self.note else ""
        return f"greedy body applied{tried}: {self.passed}/{self.examples} docstring examples pass{tail}"

    def to_json(self) -> dict:
        return {"examples": self.examples, "passed": self.passed, "verified": self.verified,
                "candidates": self.candidates, "sampled": self.sampled, "chosen": self.chosen,
                "seconds": round(self.seconds, 2), "note": self.note, "message": self.message,
                "results": [{"example": r.example.label, "line": r.example.line, "status": r.status,
                             "detail": r.detail} for r in self.report.results]}


# ------------------------------------------------------------------------------------------------ the program

_KEPT = frozenset({"import_statement", "import_from_statement", "future_import_statement", "function_definition",
                   "class_definition", "decorated_definition", "if_statement", "try_statement",
                   "type_alias_statement"})
_ASSIGNMENTS = frozenset({"assignment", "augmented_assignment"})


def _bound_names(tree: ast.Module) -> list[str]:
    """Names a statement binds (what is missing when it fails): its imports, definitions and assignments, also
    inside `if` and `try` blocks, not inside the functions and classes it defines."""
    out: list[str] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            out.extend((a.asname or a.name).split(".")[0] for a in n.names if a.name != "*")
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(n.name)
            continue
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.append(n.id)
        stack.extend(ast.iter_child_nodes(n))
    return out


def context_statements(document: str, language: Language) -> list[tuple[str, int, list[str]]]:
    """The top-level statements of `document` that define things, as (source, 1-based line, names bound), in
    order; statements that do not parse on their own are left out."""
    data = document.encode("utf-8", "surrogatepass")
    root = language.new_parser().parse(data).root_node
    out = []
    for node in root.named_children:
        kind = node.type
        if kind == "expression_statement":
            if node.named_child_count != 1 or node.named_children[0].type not in _ASSIGNMENTS:
                continue
        elif kind not in _KEPT:
            continue
        line_start = data.rfind(b"\n", 0, node.start_byte) + 1
        src = data[line_start:node.end_byte].decode("utf-8", "surrogatepass")
        if kind == "if_statement":
            cond = node.child_by_field_name("condition")
            if cond is not None and b"__name__" in data[cond.start_byte:cond.end_byte]:
                continue
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        out.append((src, node.start_point[0] + 1, _bound_names(tree)))
    return out


# Runs in the sandbox: DATA (a JSON string) is put in front of it.
_HARNESS = r'''
import __future__, contextlib, doctest, io, json, math, os, signal, sys

_D = json.loads(DATA)
_report = os.fdopen(os.dup(1), "w", encoding="utf-8")


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


signal.signal(signal.SIGALRM, _alarm)


def _limited(fn, seconds=None):
    signal.setitimer(signal.ITIMER_REAL, seconds or _D["example_timeout"])
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _short(x):
    try:
        text = repr(x)
    except BaseException:
        text = "<unprintable %s>" % type(x).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isnan(a) or math.isnan(b):
                return math.isnan(a) and math.isnan(b)
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and isinstance(a, list) == isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return False


_flags = 0
_ns = {"__name__": "__intarsia_verify__", "__builtins__": __builtins__}
_missing = set()
_context_errors = []
for _src, _line, _names in _D["context"]:
    try:
        _code = compile(_src, "<line %d>" % _line, "exec", _flags, dont_inherit=True)
        _limited(lambda: exec(_code, _ns), _D["context_timeout"])
        if _src.startswith("from __future__ import"):
            for _f in _src.split("import", 1)[1].replace("(", " ").replace(")", " ").split(","):
                _feature = getattr(__future__, _f.strip().split(" ")[0], None)
                if _feature is not None:
                    _flags |= _feature.compiler_flag
    except BaseException as e:
        _missing.update(_names)
        _context_errors.append("line %d: %s: %s" % (_line, type(e).__name__, str(e)[:200]))


def _classify(e):
    if isinstance(e, _Timeout):
        return "failed", "no result within %g s" % _D["example_timeout"]
    if isinstance(e, (ImportError, OSError)) or (isinstance(e, NameError) and getattr(e, "name", None) in _missing):
        return "unrunnable", "%s: %s" % (type(e).__name__, str(e)[:200])
    return "failed", "%s: %s" % (type(e).__name__, str(e)[:200])


def _evaluate(source, globs):
    """(is an expression, its value, what it printed)."""
    buf = io.StringIO()
    try:
        code = compile(source, "<example>", "eval", _flags, dont_inherit=True)
        expression = True
    except SyntaxError:
        code = compile(source, "<example>", "exec", _flags, dont_inherit=True)
        expression = False
    with contextlib.redirect_stdout(buf):
        value = _limited(lambda: eval(code, globs)) if expression else _limited(lambda: exec(code, globs))
    return expression, value, buf.getvalue()


def _check(ex, globs):
    kind = ex["kind"]
    if kind == "value":
        got = _evaluate(ex["call"], globs)[1]
        want = eval(compile(ex["expected"], "<expected>", "eval", _flags, dont_inherit=True), globs)
        return ("passed", "") if _same(got, want) else ("failed", "got " + _short(got))
    if kind == "assert":
        got = _evaluate(ex["call"], globs)[1]
        return ("passed", "") if got else ("failed", "false")
    if ex["exception"]:
        try:
            _evaluate(ex["call"], globs)
        except _Timeout:
            raise
        except BaseException as e:
            names = [c.__name__ for c in type(e).__mro__]
            if ex["exception"] in names:
                return "passed", ""
            return "failed", "raised %s instead of %s" % (type(e).__name__, ex["exception"])
        return "failed", "no %s raised" % ex["exception"]
    expression, value, printed = _evaluate(ex["call"], globs)
    if expression and value is not None:
        printed += repr(value) + "\n"
    flags = doctest.NORMALIZE_WHITESPACE
    for name in ex["options"]:
        flags |= doctest.OPTIONFLAGS_BY_NAME.get(name, 0)
    if doctest.OutputChecker().check_output(ex["expected"], printed, flags):
        return "passed", ""
    if expression and ex["expected"].strip():
        try:
            want = eval(compile(ex["expected"].strip(), "<expected>", "eval", _flags, dont_inherit=True), globs)
        except BaseException:
            want = printed  # (never equal to the value: the text comparison already failed)
        else:
            if _same(value, want):
                return "passed", ""
    return "failed", "printed " + _short(printed.rstrip("\n"))


_results = []
_error = ""
if not _D["method"] and _D["name"] not in _ns:
    _error = "%s is not defined at the top of the module" % _D["name"]
    if _context_errors:
        _error += " (" + _context_errors[0] + ")"
else:
    _globs = dict(_ns)
    _globs.setdefault("math", math)  # (MBPP's examples compare with math.isclose)
    for _ex in _D["examples"]:
        try:
            if _ex["setup"]:
                try:
                    _evaluate(_ex["call"], _globs)
                except BaseException:
                    pass
                continue
            _results.append(_check(_ex, _globs))
        except BaseException as e:
            _results.append(_classify(e))
_report.write(_D["mark"] + json.dumps({"results": _results, "error": _error}) + "\n")
_report.flush()
os._exit(0)
'''


def check_program(document: str, language: Language, *, name: str, method: bool,
                  examples: tuple[Example, ...], options: VerifyOptions = VerifyOptions(),
                  mark: str = "") -> str:
    """The sandbox program that runs `examples` against the function `name` defined in `document`."""
    data = {"context": context_statements(document, language), "name": name, "method": method, "mark": mark,
            "example_timeout": options.example_timeout_s, "context_timeout": CONTEXT_TIMEOUT_S,
            "examples": [{"kind": e.kind, "call": e.call, "expected": e.expected, "exception": e.exception,
                          "options": list(e.options), "setup": e.setup} for e in examples]}
    return f"DATA = {json.dumps(json.dumps(data))}\n{_HARNESS}"


def check_body(document: str, language: Language, *, name: str, method: bool, examples: tuple[Example, ...],
               options: VerifyOptions = VerifyOptions()) -> CheckReport:
    """Run `examples` against the function `name` of `document` (the file with the candidate body in place)."""
    t0 = time.perf_counter()
    counted = checks(examples)
    mark = "@@intarsia-verify-" + secrets.token_hex(8) + "@@"
    program = check_program(document, language, name=name, method=method, examples=examples, options=options,
                            mark=mark)
    timeout = min(options.run_timeout_s, CONTEXT_TIMEOUT_S + options.example_timeout_s * (len(examples) + 2))
    res = sandbox.run(program, sandbox.Limits(timeout_s=timeout, memory_bytes=options.memory_bytes))
    seconds = time.perf_counter() - t0
    line = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith(mark)), None)
    if line is None:
        why = "no result within the time limit" if res.status == "timeout" else (res.detail or "no result")
        # The body ended the program (exit, crash, a loop past every limit): it fails every example.
        return CheckReport(tuple(ExampleResult(e, FAILED, why) for e in counted), "", seconds)
    try:
        got = json.loads(line[len(mark):])
    except ValueError:
        return CheckReport((), "the examples' report was unreadable", seconds)
    if got.get("error"):
        return CheckReport((), got["error"], seconds)
    results = got.get("results", [])
    if len(results) != len(counted):
        return CheckReport((), "the examples' report did not match them", seconds)
    return CheckReport(tuple(ExampleResult(e, str(s), str(d)) for e, (s, d) in zip(counted, results)), "", seconds)


def examples_kinds(examples: tuple[Example, ...]) -> dict[str, int]:
    """How many checks of each kind (benchmarks, logs)."""
    out = {VALUE: 0, ASSERT: 0, DOCTEST: 0}
    for e in checks(examples):
        out[e.kind] += 1
    return out


__all__ = ["PASSED", "FAILED", "UNRUNNABLE", "DEFAULT_BUDGET_S", "MAX_BUDGET_S", "VerifyOptions", "ExampleResult",
           "CheckReport", "Verification", "context_statements", "check_program", "check_body", "examples_kinds"]
