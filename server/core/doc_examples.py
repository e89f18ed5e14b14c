"""The examples a docstring gives, as checks that a function body can be run against.

Verified generation (`verification.py`) samples several bodies and applies the first that passes the examples the
user wrote into the docstring. Docstrings state examples in many ways; the ones read here:

- doctest: `>>> f(x)` (with `...` continuation lines) followed by the expected output, several lines until a
  blank line or the next `>>>`; statements without output are set-up for the examples after them; an expected
  `Traceback` is an expected exception (the standard library's doctest parser reads them);
- `assert f(x) == y` and other asserts that call the function (MBPP's task statements);
- one call and its value on a line: `f(x) == y`, `f(x) ➞ y`, `f(x) -> y`, `f(x) => y`, `f(x) ==> y`,
  `f(x) = y`, `f(x) returns y`, `f(x) should return y`, `f(x)  # returns y`, after bullets, `Example:`,
  `For example:` or `for`; the call may span lines;
- `Input: x` … `Output: y` pairs (`Input: a = 1, b = [2]` with the parameters' names);
- `For x = 3 the output should be y` (HumanEval's phrasing).

A wrong example would reject a correct body, so reading is strict: a call must name the function, its arguments
and the expected value must be literals (numbers, strings, containers, arithmetic on them; `true`/`false`/
`null` alone read as Python's), the arguments must fit the signature, and what follows the expected value on the
line must be prose (separated by white space), never glued to it. Methods are checked through their doctests only
(a bare call cannot reach them).

Pure: text in, frozen data out. Nothing here evaluates anything; the checks run only in the sandbox.
"""

from __future__ import annotations

import ast
import doctest
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Optional

VALUE = "value"  # `call` evaluates to `expected` (both Python expressions)
ASSERT = "assert"  # `call` is an expression that must be true
DOCTEST = "doctest"  # `call` is doctest source; `expected` its output text (or `exception` its error)
KINDS = (VALUE, ASSERT, DOCTEST)


@dataclass(frozen=True)
class Example:
    kind: str
    call: str  # VALUE: the call expression; ASSERT: the asserted expression; DOCTEST: the source
    expected: str = ""  # VALUE: an expression; DOCTEST: the output text ("" for a set-up statement)
    line: int = 0  # the docstring's line (1-based) where the example starts
    exception: str = ""  # DOCTEST: the exception's name when a traceback is expected
    options: tuple[str, ...] = ()  # DOCTEST: option flags of its directives that are on ("ELLIPSIS", ...)
    setup: bool = False  # DOCTEST: a statement without output, run for the examples after it, not counted

    @property
    def label(self) -> str:
        """One line for messages: the example as the docstring means it."""
        if self.kind == VALUE:
            text = f"{self.call} == {self.expected}"
        elif self.kind == ASSERT:
            text = self.call
        else:
            want = self.exception or self.expected.strip()
            text = f"{self.call} -> {want}" if want else self.call
        text = " ".join(text.split())
        return text if len(text) <= 100 else text[:97] + "..."


@dataclass(frozen=True)
class Signature:
    """What calls a function accepts (enough to refuse an example that could not call it)."""

    positional: tuple[str, ...]  # positional parameters, in order
    required: int  # how many of them have no default
    keyword_only: tuple[str, ...] = ()
    required_keywords: tuple[str, ...] = ()
    varargs: bool = False
    varkw: bool = False

    def accepts(self, call: ast.Call) -> bool:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return False
        n = len(call.args)
        if n > len(self.positional) and not self.varargs:
            return False
        named = [k.arg for k in call.keywords]
        if len(set(named)) != len(named):
            return False
        bound = set(self.positional[:n])
        for k in named:
            if k in bound:
                return False
            if k not in self.positional and k not in self.keyword_only and not self.varkw:
                return False
            bound.add(k)
        return all(p in bound for p in self.positional[:self.required]) and all(
            k in bound for k in self.required_keywords)


def signature_of(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Signature:
    a = fn.args
    positional = tuple(p.arg for p in (*a.posonlyargs, *a.args))
    required = len(positional) - len(a.defaults)
    kw_required = tuple(p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None)
    return Signature(positional, required, tuple(p.arg for p in a.kwonlyargs), kw_required, a.vararg is not None,
                     a.kwarg is not None)


# ------------------------------------------------------------------------------------------------ literals

_LITERAL_CALLS = frozenset({"float", "int", "str", "set", "frozenset", "tuple", "list", "dict", "complex", "bytes"})
_ASSERT_NAMES = frozenset({
    "abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "isinstance", "len", "list", "max", "min",
    "round", "set", "sorted", "str", "sum", "tuple", "type", "math", "reversed", "zip", "map", "range"})
_WORDS = {"true": "True", "false": "False", "null": "None", "none": "None"}


def _literal(node: ast.AST) -> bool:
    """Whether an expression is made of literals only (what an example's arguments and values may be)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _literal(k) for k in node.keys) and all(_literal(v) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)) and _literal(node.operand)
    if isinstance(node, ast.BinOp):
        return _literal(node.left) and _literal(node.right)
    if isinstance(node, ast.Call):
        return (isinstance(node.func, ast.Name) and node.func.id in _LITERAL_CALLS and not node.keywords
                and all(_literal(a) for a in node.args))
    return False


def _parse_expr(text: str) -> Optional[ast.expr]:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return tree.body


def _value_text(text: str) -> Optional[str]:
    """The expected value at the start of `text`: the longest literal expression that ends at white space or at
    the end (the rest is prose: `19 - 5 - 6 = 8` gives `19 - 5 - 6`, `'No' (the name ...)` gives `'No'`)."""
    text = text.strip()
    if not text:
        return None
    cuts = [len(text)] + [i for i in range(len(text) - 1, 0, -1) if text[i].isspace() and not text[i - 1].isspace()]
    for end in cuts:
        piece = text[:end].rstrip()
        # A period that ends the sentence is not part of the value ("should return 16.").
        for cand in (piece[:-1].rstrip() if piece.endswith(".") and end == len(text) else None, piece):
            if not cand or cand.endswith(","):
                continue
            word = _WORDS.get(cand.lower())
            if word is not None:
                return word
            node = _parse_expr(cand)
            if node is not None and _literal(node):
                return ast.unparse(node)
    return None


def _balanced_call(text: str, start: int) -> Optional[int]:
    """The end (exclusive) of the parenthesised arguments that open at `text[start] == "("`, strings and nested
    brackets respected; None when they do not close."""
    depth = 0
    i = start
    quote = ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
            if c == "\n" and len(quote) == 1:
                return None
        elif c in "'\"":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else c
            i += len(quote)
            continue
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
            if depth < 0:
                return None
        i += 1
    return None


# ------------------------------------------------------------------------------------------------ the reader


@dataclass(frozen=True)
class _Context:
    name: str
    signature: Optional[Signature]
    method: bool


def _call_ok(node: Optional[ast.expr], ctx: _Context) -> bool:
    if not isinstance(node, ast.Call) or not (isinstance(node.func, ast.Name) and node.func.id == ctx.name):
        return False
    if not all(_literal(a) for a in node.args) or not all(_literal(k.value) for k in node.keywords):
        return False
    return ctx.signature is None or ctx.signature.accepts(node)


def _assert_ok(node: ast.expr, ctx: _Context) -> bool:
    """An assertion that calls the function and names nothing but it and harmless builtins."""
    calls = False
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            if n.id == ctx.name:
                continue
            if n.id not in _ASSERT_NAMES:
                return False
        elif isinstance(n, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return False
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == ctx.name:
            if not _call_ok(n, ctx):
                return False
            calls = True
    return calls


def _doctests(doc: str, ctx: _Context) -> tuple[list[Example], set[int]]:
    """doctest examples and the 0-based lines they cover."""
    if ">>>" not in doc:
        return [], set()
    parser = doctest.DocTestParser()
    names = {v: k for k, v in doctest.OPTIONFLAGS_BY_NAME.items()}
    out: list[Example] = []
    covered: set[int] = set()
    try:
        found = parser.get_examples(doc)
    except ValueError:  # inconsistent indentation: read block by block, each dedented
        found = []
        lines = doc.split("\n")
        i = 0
        while i < len(lines):
            if not lines[i].lstrip().startswith(">>>"):
                i += 1
                continue
            j = i + 1
            while j < len(lines) and lines[j].strip() and not lines[j].lstrip().startswith(">>>"):
                j += 1
            try:
                for ex in parser.get_examples(textwrap.dedent("\n".join(lines[i:j]))):
                    ex.lineno += i
                    found.append(ex)
            except ValueError:
                pass
            i = j
    for ex in found:
        source = ex.source.rstrip("\n")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        span = source.count("\n") + 1 + ex.want.count("\n")
        covered.update(range(ex.lineno, ex.lineno + span))
        if ex.options.get(doctest.SKIP):
            continue
        node = tree.body[0].value if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) else None
        if not ex.want and ex.exc_msg is None and node is not None and not ctx.method:
            # `>>> f(x) == y` with no output written: the docstring means the comparison, not its printed True.
            if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)
                    and _call_ok(node.left, ctx) and _literal(node.comparators[0])):
                out.append(Example(VALUE, ast.unparse(node.left), ast.unparse(node.comparators[0]), ex.lineno + 1))
                continue
            # `>>> f(x)` with no output: doctest's meaning, it returns None and prints nothing.
            if _call_ok(node, ctx):
                out.append(Example(DOCTEST, source, "", ex.lineno + 1))
                continue
        exception = ""
        if ex.exc_msg is not None:
            m = re.match(r"(?P<name>[\w.]+)\s*(?::|$)", ex.exc_msg.strip())
            if m is None:
                continue
            exception = m.group("name").split(".")[-1]
        options = tuple(sorted(names[f] for f, on in ex.options.items() if on and f in names))
        setup = not ex.want and ex.exc_msg is None
        out.append(Example(DOCTEST, source, ex.want if ex.exc_msg is None else "", ex.lineno + 1, exception,
                           options, setup))
    return out, covered


_ASSERT_LINE = re.compile(r"^\s*(?:[-*•]\s*)?assert\s+(?P<rest>.*)$")
_INPUT = re.compile(r"^\s*(?:[-*•]\s*)?input\s*:\s*(?P<rest>.*)$", re.I)
_OUTPUT = re.compile(r"\boutput\s*:\s*(?P<rest>.*)$", re.I)
_FOR_OUTPUT = re.compile(
    r"^\s*(?:[-*•]\s*)?for\s+(?P<args>.+?),?\s+the\s+(?:output|result)\s+should\s+be\s+(?P<out>.+)$", re.I)
# What may stand before a call on its line: bullets, numbering, "Example:", "For example:", "e.g.", "for".
_DECORATION = re.compile(
    r"^\s*(?:(?:[-*•>]+|\d+[.)]|e\.g\.,?|i\.e\.,?|(?:for\s+)?examples?\s*\d*\s*[:.-]?|for|assert|#)\s*)*$", re.I)
# Between a call and its value.
_SEPARATOR = re.compile(r"^\s*(?:#\s*)?(?:==>|==|=>|->|➞|→|⇒|=|returns?|should\s+(?:return|be)|gives|outputs?\s*:?|is)"
                        r"(?=[\s\w\"'(\[{\-+.])\s*", re.I)


def _call_value(joined: str, at: int, ctx: _Context) -> Optional[tuple[str, str, int, bool]]:
    """(call, expected, end, whether the separator is a lone "=") for `name(...) SEP value` at `joined[at]`."""
    open_paren = joined.index("(", at)
    end = _balanced_call(joined, open_paren)
    if end is None:
        return None
    node = _parse_expr(joined[at:end].replace("\n", " "))
    if not _call_ok(node, ctx):
        return None
    line_end = joined.find("\n", end)
    rest = joined[end:line_end if line_end >= 0 else len(joined)]
    m = _SEPARATOR.match(rest)
    if m is None:
        return None
    expected = _value_text(rest[m.end():])
    if expected is None:
        return None
    return ast.unparse(node), expected, end, m.group(0).strip() == "="


def _definitions(lines: list[str], ctx: _Context) -> list[int]:
    """Lines that define the function mathematically (`f(n) = f(n - 1) + 1`, `f(n) = 1 + n / 2`): a symbolic
    argument, or the function again on the right. Lone-"=" lines near them are that definition, not examples."""
    out = []
    call_re = re.compile(rf"(?<![\w.]){re.escape(ctx.name)}\s*\(")
    for i, line in enumerate(lines):
        c = call_re.search(line)
        if c is None:
            continue
        end = _balanced_call(line, line.index("(", c.start()))
        if end is None:
            continue
        m = re.match(r"\s*=(?!=)(?P<rhs>.*)$", line[end:])
        if m is None:
            continue
        node = _parse_expr(line[c.start():end])
        if not isinstance(node, ast.Call) or not all(_literal(a) for a in node.args) or call_re.search(m["rhs"]):
            out.append(i)
    return out


def _lines(doc: str, covered: set[int], ctx: _Context) -> list[Example]:
    lines = doc.split("\n")
    out: list[Example] = []
    call_re = re.compile(rf"(?<![\w.]){re.escape(ctx.name)}\s*\(")
    definitions = _definitions(lines, ctx)
    skip_until = -1
    for i, line in enumerate(lines):
        if i in covered or i <= skip_until:
            continue
        window = "\n".join(lines[i:i + 12])
        # assert EXPR (possibly over several lines)
        m = _ASSERT_LINE.match(line)
        if m is not None and not ctx.method:
            expr_text = m.group("rest")
            k = i
            node = _parse_expr(expr_text)
            while node is None and k + 1 < len(lines) and k - i < 10 and expr_text.count("(") + expr_text.count(
                    "[") + expr_text.count("{") > expr_text.count(")") + expr_text.count("]") + expr_text.count("}"):
                k += 1
                expr_text += "\n" + lines[k]
                node = _parse_expr(expr_text)
            if node is not None and _assert_ok(node, ctx):
                skip_until = k
                if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)
                        and _call_ok(node.left, ctx) and _literal(node.comparators[0])):
                    out.append(Example(VALUE, ast.unparse(node.left), ast.unparse(node.comparators[0]), i + 1))
                else:
                    out.append(Example(ASSERT, ast.unparse(node), "", i + 1))
                continue
        if ctx.method:
            continue
        # Input: ... Output: ...
        m = _INPUT.match(line)
        if m is not None:
            got = _input_output(lines, i, m.group("rest"), ctx)
            if got is not None:
                call, expected, last = got
                out.append(Example(VALUE, call, expected, i + 1))
                skip_until = last
                continue
        # For x = 1 the output should be y
        m = _FOR_OUTPUT.match(line)
        if m is not None:
            got2 = _for_output(m.group("args"), m.group("out"), ctx)
            if got2 is not None:
                out.append(Example(VALUE, got2[0], got2[1], i + 1))
                continue
        # name(...) SEP value
        c = call_re.search(line)
        if c is None or not _DECORATION.match(line[:c.start()]):
            continue
        got3 = _call_value(window, c.start(), ctx)
        if got3 is None:
            continue
        call, expected, end, lone_equals = got3
        if lone_equals and any(abs(i - d) <= 3 for d in definitions):
            continue
        out.append(Example(VALUE, call, expected, i + 1))
        skip_until = i + window[:end].count("\n")
    return out


def _input_output(lines: list[str], i: int, given: str, ctx: _Context) -> Optional[tuple[str, str, int]]:
    given = given.strip()
    inline = _OUTPUT.search(given)
    out_text, last = None, i
    if inline is not None:
        out_text = inline.group("rest")
        given = given[:inline.start()].strip().rstrip(",;")
    else:
        for k in range(i + 1, min(i + 4, len(lines))):
            if _INPUT.match(lines[k]):
                return None
            m = _OUTPUT.match(lines[k].strip()) if lines[k].strip().lower().startswith("output") else None
            if m is not None:
                out_text, last = m.group("rest"), k
                if not out_text.strip() and k + 1 < len(lines):
                    out_text, last = lines[k + 1], k + 1
                break
    if out_text is None or not given:
        return None
    expected = _value_text(out_text)
    if expected is None:
        return None
    node = _parse_expr(f"{ctx.name}({given})")
    if not _call_ok(node, ctx):
        return None
    return ast.unparse(node), expected, last


def _for_output(args: str, out: str, ctx: _Context) -> Optional[tuple[str, str]]:
    expected = _value_text(out)
    if expected is None:
        return None
    args = args.strip()
    cuts = [len(args)] + [i for i in range(len(args) - 1, 0, -1) if args[i] in ", " and args[i - 1] not in ", "]
    for end in cuts:
        call = f"{ctx.name}({args[:end].strip().rstrip(',')})"
        node = _parse_expr(call)
        if isinstance(node, ast.Call) and not node.args and node.keywords and _call_ok(node, ctx):
            return ast.unparse(node), expected
    return None


# ------------------------------------------------------------------------------------------------ entry points


def docstring_examples(doc: str, name: str, *, signature: Optional[Signature] = None,
                       method: bool = False) -> tuple[Example, ...]:
    """The examples of the docstring `doc` (its value, indentation as written or cleaned) of the function `name`,
    in docstring order. A method (`method`) has its doctests only."""
    doc = inspect.cleandoc(doc.expandtabs())
    ctx = _Context(name, signature, method)
    tests, covered = _doctests(doc, ctx)
    found = tests + _lines(doc, covered, ctx)
    found.sort(key=lambda e: e.line)
    # The same example written twice (a doctest and an assert of the same call) is checked once.
    seen: set[tuple[str, str, str]] = set()
    out = []
    for e in found:
        key = (e.kind if e.kind != DOCTEST else VALUE, e.call, e.expected.strip())
        if key in seen:
            continue
        seen.add(key)
        out.append(e)
    return tuple(out)


def function_examples(source: str, *, method: bool = False) -> tuple[str, tuple[Example, ...]]:
    """The name and docstring examples of the first function defined in `source` (its definition: decorators,
    signature, docstring; the body may be missing). ("", ()) when it does not parse or has no docstring."""
    source = textwrap.dedent(source.expandtabs())
    tree = None
    for text in (source, source.rstrip() + "\n" + _body_indent(source) + "pass\n"):
        try:
            tree = ast.parse(text)
            break
        except (SyntaxError, ValueError):
            continue
    if tree is None:
        return "", ()
    fn = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if fn is None:
        return "", ()
    doc = ast.get_docstring(fn, clean=False)
    if doc is None:  # (a docstring after the function's own imports, as find_function_target accepts)
        stmts = list(fn.body)
        while len(stmts) > 1 and isinstance(stmts[0], (ast.Import, ast.ImportFrom)):
            stmts = stmts[1:]
        first = stmts[0] if stmts else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            doc = first.value.value
    if not doc:
        return fn.name, ()
    return fn.name, docstring_examples(doc, fn.name, signature=signature_of(fn), method=method)


def _body_indent(source: str) -> str:
    for tok in _tokens(source):
        if tok.type == tokenize.INDENT:
            return tok.string
    return "    "


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []


def checks(examples: tuple[Example, ...]) -> tuple[Example, ...]:
    """The examples that count (doctest set-up statements excluded)."""
    return tuple(e for e in examples if not e.setup)


__all__ = ["VALUE", "ASSERT", "DOCTEST", "KINDS", "Example", "Signature", "signature_of", "docstring_examples",
           "function_examples", "checks"]
