"""How `intarsia.generateFunction` asks the model for a function body, and how it reads the answer.

The default model is an instruct model: asked through its own chat template it writes whole functions far better
than through the fill-in-the-middle body slot (the same 0.5B model scores 61.6 HumanEval in its chat mode, and
the body slot passed 16 of 40 problems; `benchmarks/generate_function.py` measures both through the server).
So there are strategies, and one reason for this module to change: what the model is asked and what is taken
from its answer.

- "fim": the fill-in-the-middle prompt with the body slot as the middle (`functions.py` builds it as every
  completion's prompt); every language.
- "chat": the model's chat template (`Engine.render_chat`), the base model without any adapter (the shipped
  adapter is a LoRA trained for fill-in-the-middle, not for conversations). The question shows the file's
  imports, the definitions before the function (nearest first, within the budget), the enclosing class as a
  skeleton, the signature and docstring, and the repository context the completion uses; the answer is opened
  with a ```python fence and the function's own signature and docstring, so that the model writes the body at
  once. The body is taken from the fenced block: the
  function matched by name (or, renamed, by its parameters), its docstring dropped, helpers and imports it needs
  that the file lacks moved inside it, re-indented to the target's indentation. Python only.
- "chat+adapter": the same, with the served adapter (shipped or trained) left on.

`strategies_for(mode, model, family)` turns the setting `generateFunctionMode` into the strategies to try, in
order: "auto" is a per-model table of what the benchmark measured (`AUTO_STRATEGIES`). A placeholder body
(`pass`, `...`, `raise NotImplementedError`, only comments) is never an answer (`is_placeholder_body`).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import tree_sitter
from intarsia.grammars.lexer import leading_ws
from intarsia.grammars.registry import Language
from intarsia.model.chat import ChatMessage
from intarsia.model.fim import RepoFile

FIM = "fim"
CHAT = "chat"
CHAT_ADAPTER = "chat+adapter"
STRATEGIES = (FIM, CHAT, CHAT_ADAPTER)
AUTO = "auto"
MODES = (AUTO, *STRATEGIES)

# What "auto" tries, in order, per model (registry name), from benchmarks/generate_function.py through the served
# pipeline (benchmarks/README.md, "generateFunction strategies"): for the 0.5B on a seeded 20 + 20 subset,
# HumanEval+ pass@1 fim 25.0, chat 55.0, chat+adapter 50.0; MBPP+ 30.0 / 35.0 / 30.0; on all 164 HumanEval
# problems, chat 48.8 / HumanEval+ 43.9 (62.2 / 56.1 verified). Chat first, and the body slot when the answer
# holds no usable body.
AUTO_STRATEGIES: dict[str, tuple[str, ...]] = {
    "qwen2.5-coder-0.5b": (CHAT, FIM),
    "qwen2.5-coder-1.5b": (CHAT, FIM),  # not measured: the same model family and chat template as 0.5B
}
AUTO_DEFAULT: tuple[str, ...] = (FIM,)  # a model the benchmark has not measured keeps the body slot

# New tokens of a chat answer: the whole function (signature and docstring again, then the body).
CHAT_MAX_TOKENS = 768
# The answer ends at the code block's end, or where a script's top-level test code starts.
PY_CHAT_STOPS = ("\n```", "\nif __name__", "\nprint(", "\nassert ", "\n# Example", "\n# Test", "\n# test")
# Definitions of the file before the function are shown in full up to this many lines each.
_MAX_SHOWN_LINES = 60

_INSTRUCTION = ("Complete the Python function `{name}`{where} in the code below: write its body so that it does "
                "what its docstring says. Reply with the whole function, its signature unchanged, in one "
                "```python code block.")
_RESPONSE_PREFIX = "Below is the complete function `{name}`:\n```python\n"


# ------------------------------------------------------------------------------------------------ modes


def strategies_for(mode: str, model: Optional[str], family: Optional[str]) -> tuple[str, ...]:
    """The strategies to try, in order, for the setting `mode` with `model` (a registry name, a path, or None)
    on a language of `family` ("python", "c", ...). Languages other than Python have only the body slot."""
    if family != "python":
        return (FIM,)
    if mode in STRATEGIES:
        return (mode,)
    return AUTO_STRATEGIES.get(model or "", AUTO_DEFAULT)


def uses_chat(strategy: str) -> bool:
    return strategy in (CHAT, CHAT_ADAPTER)


# ------------------------------------------------------------------------------------------------ trees


def _text(data: bytes, node: tree_sitter.Node) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "surrogatepass")


def _name(data: bytes, node: tree_sitter.Node) -> str:
    n = node.child_by_field_name("name")
    return _text(data, n) if n is not None else ""


def _definition(node: tree_sitter.Node) -> tree_sitter.Node:
    """The node that holds a definition's decorators too."""
    p = node.parent
    return p if p is not None and p.type == "decorated_definition" else node


def _inner(node: tree_sitter.Node) -> tree_sitter.Node:
    """A decorated definition's function or class."""
    if node.type == "decorated_definition":
        d = node.child_by_field_name("definition")
        if d is not None:
            return d
    return node


def _is_docstring(node: tree_sitter.Node) -> bool:
    return (node.type == "expression_statement" and node.named_child_count == 1
            and node.named_children[0].type in ("string", "concatenated_string"))


def parameter_names(data: bytes, fn: tree_sitter.Node) -> tuple[str, ...]:
    params = fn.child_by_field_name("parameters")
    out: list[str] = []
    if params is None:
        return ()
    for p in params.named_children:
        if p.type == "identifier":
            out.append(_text(data, p))
            continue
        ident = p.child_by_field_name("name")
        if ident is None:
            ident = next((c for c in p.named_children if c.type == "identifier"), None)
        if ident is not None:
            out.append(_text(data, ident))
    return tuple(out)


def _bound_names(data: bytes, stmt: tree_sitter.Node) -> set[str]:
    """Names a top-level statement binds (imports, definitions, simple assignments)."""
    stmt = _inner(stmt)
    if stmt.type in ("function_definition", "class_definition"):
        return {_name(data, stmt)}
    if stmt.type == "import_statement":
        out = set()
        for c in stmt.named_children:
            if c.type == "aliased_import":
                a = c.child_by_field_name("alias")
                out.add(_text(data, a) if a is not None else "")
            elif c.type == "dotted_name":
                out.add(_text(data, c).split(".")[0])
        return out
    if stmt.type == "import_from_statement":
        out = set()
        module = stmt.child_by_field_name("module_name")
        for c in stmt.named_children:
            if c is module or (module is not None and c.start_byte == module.start_byte):
                continue
            if c.type == "aliased_import":
                a = c.child_by_field_name("alias")
                out.add(_text(data, a) if a is not None else "")
            elif c.type == "dotted_name":
                out.add(_text(data, c).split(".")[-1])
            elif c.type == "wildcard_import":
                out.add("*")
        return out
    if stmt.type == "expression_statement" and stmt.named_child_count == 1:
        a = stmt.named_children[0]
        if a.type in ("assignment", "augmented_assignment"):
            left = a.child_by_field_name("left")
            if left is not None:
                return set(re.findall(r"[A-Za-z_]\w*", _text(data, left)))
    return set()


def _identifiers(data: bytes, node: tree_sitter.Node) -> set[str]:
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == "identifier":
            out.add(_text(data, n))
        elif n.type not in ("string", "comment"):
            stack.extend(n.children)
    return out


# ------------------------------------------------------------------------------------------------ the question


@dataclass(frozen=True)
class ChatPrompt:
    messages: tuple[ChatMessage, ...]
    response_prefix: str  # the start of the answer, put after the rendered template: the model continues it
    context_files: tuple[str, ...]


def _lines_of(text: str, start: int, end: int) -> str:
    """text[start:end] widened to whole lines."""
    ls = text.rfind("\n", 0, start) + 1
    le = text.find("\n", end)
    return text[ls:le if le >= 0 else len(text)]


def _char_index(data: bytes) -> Callable[[int], int]:
    """Byte offset → str index for one document."""
    cache: dict[int, int] = {}

    def idx(b: int) -> int:
        if b not in cache:
            cache[b] = len(data[:b].decode("utf-8", "surrogatepass"))
        return cache[b]

    return idx


def _signature(text: str, *, stmt: tree_sitter.Node, node: tree_sitter.Node, at: Callable[[int], int]) -> str:
    """A definition's lines up to the colon that opens its body (decorators included)."""
    colon = next((c for c in node.children if c.type == ":"), None)
    end = at(colon.end_byte) if colon is not None else at(node.end_byte)
    return text[text.rfind("\n", 0, at(stmt.start_byte)) + 1:end]


def _class_skeleton(text: str, data: bytes, cls: tree_sitter.Node, skip: tree_sitter.Node, at: Callable[[int], int],
                    count: Callable[[str], int], budget: int) -> str:
    """A class for the question: its header, docstring and attributes, `__init__` in full when it fits, the other
    methods as signatures."""
    body = cls.child_by_field_name("body")
    parts = [_signature(text, stmt=_definition(cls), node=cls, at=at)]
    if body is None:
        return parts[0]
    for stmt in body.named_children:
        if stmt.start_byte <= skip.start_byte < stmt.end_byte:
            continue
        inner = _inner(stmt)
        full = _lines_of(text, at(stmt.start_byte), at(stmt.end_byte))
        if inner.type == "function_definition":
            if _name(data, inner) == "__init__" and full.count("\n") < _MAX_SHOWN_LINES and count(full) < budget // 4:
                parts.append("\n" + full.rstrip())
            else:
                parts.append("\n" + _signature(text, stmt=stmt, node=inner, at=at) + "\n" + leading_ws(full) + "    ...")
        elif _is_docstring(stmt) or stmt.type == "expression_statement":
            if full.count("\n") < 8:
                parts.append(full.rstrip())
    return "\n".join(parts)


def file_view(text: str, language: Language, fn_start: int, header_end: int, *, count: Callable[[str], int],
              budget: int, tree: Optional[tree_sitter.Tree] = None) -> str:
    """What the question shows of the current file: its imports, the top-level definitions before the function
    (nearest first while they fit `budget` tokens), the enclosing classes as skeletons, then the function's
    signature and docstring (text[fn_start:header_end])."""
    data = text.encode("utf-8", "surrogatepass")
    if tree is None:
        tree = language.new_parser().parse(data)
    at = _char_index(data)
    fb = len(text[:fn_start].encode("utf-8", "surrogatepass"))
    hb = len(text[:max(header_end - 1, fn_start)].encode("utf-8", "surrogatepass"))
    target = tree.root_node.descendant_for_byte_range(hb, hb)
    # The definitions around the function, innermost first.
    fn_node = None
    classes: list[tree_sitter.Node] = []
    n = target
    while n is not None:
        if n.type == "function_definition" and fn_node is None and at(_definition(n).start_byte) <= fn_start:
            fn_node = n
        elif n.type == "class_definition" and fn_node is not None:
            classes.append(n)
        n = n.parent
    top = None
    for stmt in tree.root_node.named_children:
        if stmt.start_byte <= fb < stmt.end_byte or stmt.start_byte == fb:
            top = stmt
            break
    header = _lines_of(text, fn_start, header_end).rstrip()
    used = count(header)
    imports: list[str] = []
    before: list[tree_sitter.Node] = []
    for stmt in tree.root_node.named_children:
        if top is not None and stmt.start_byte >= top.start_byte:
            break
        if stmt.type in ("import_statement", "import_from_statement", "future_import_statement"):
            imports.append(_lines_of(text, at(stmt.start_byte), at(stmt.end_byte)))
        elif _inner(stmt).type in ("function_definition", "class_definition") or (
                stmt.type == "expression_statement" and not _is_docstring(stmt)):
            before.append(stmt)
    imports_text = "\n".join(imports)
    used += count(imports_text) if imports else 0
    skeleton = ""
    if classes:
        pieces = []
        for depth, cls in enumerate(reversed(classes)):
            inner_skip = classes[len(classes) - depth - 2] if depth < len(classes) - 1 else fn_node
            pieces.append(_class_skeleton(text, data, cls, _definition(inner_skip), at, count, budget))
        skeleton = "\n\n".join(pieces)
        used += count(skeleton)
    shown: list[tuple[int, str]] = []
    for stmt in reversed(before):
        piece = _lines_of(text, at(stmt.start_byte), at(stmt.end_byte)).rstrip()
        if piece.count("\n") >= _MAX_SHOWN_LINES:
            inner = _inner(stmt)
            b = inner.child_by_field_name("body")
            if b is None:
                continue
            piece = _lines_of(text, at(stmt.start_byte), at(b.start_byte)).rstrip() + "\n    ..."
        c = count(piece)
        if used + c > budget:
            continue
        used += c
        shown.append((stmt.start_byte, piece))
    shown.sort()
    blocks = [b for b in (imports_text, *(p for _, p in shown), skeleton) if b]
    out = "\n\n\n".join(blocks)
    sep = "\n\n" if classes else "\n\n\n"
    return (out + sep + header) if out else header


def answer_header(text: str, fn_start: int, header_end: int) -> str:
    """The function's decorators, signature and docstring (text[fn_start:header_end], from the start of its line)
    at column 0, ending with a newline: the answer starts with them, so the model writes only the body."""
    start = text.rfind("\n", 0, fn_start) + 1
    return textwrap.dedent(text[start:header_end]).rstrip() + "\n"


def chat_prompt(name: str, view: str, *, class_name: Optional[str], files: Sequence[RepoFile],
                path: Optional[str], header: str = "") -> ChatPrompt:
    """The question for the function `name` shown in `view` (`file_view`), with repository context `files`.
    `header` (`answer_header`): the answer is opened with it, the function's signature and docstring as the file
    has them, so the model goes on with the body instead of writing them again (a long docstring was most of
    the tokens generated: 302 for one HumanEval problem, 14 s here)."""
    where = f" (a method of class `{class_name}`)" if class_name else ""
    parts = [_INSTRUCTION.format(name=name, where=where)]
    if files:
        ctx = ["Other files of the repository, for reference:"]
        for f in files:
            ctx.append(f"`{f.path}`:\n```python\n{f.content.rstrip()}\n```")
        parts.append("\n\n".join(ctx))
    label = f"`{path}`:\n" if path else ""
    parts.append(f"{label}```python\n{view.rstrip()}\n```")
    return ChatPrompt((ChatMessage("user", "\n\n".join(parts)),), _RESPONSE_PREFIX.format(name=name) + header,
                      tuple(f.path for f in files))


# ------------------------------------------------------------------------------------------------ the answer


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^\n]*$")


def code_blocks(answer: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown answer as (info word, code); an unclosed last block runs to the end
    (the answer was cut). No fence at all: the whole answer, as one block with no info word."""
    lines = answer.split("\n")
    blocks: list[tuple[str, str]] = []
    i = 0
    found = False
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        found = True
        fence, info = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines):
            close = lines[j].strip()
            if close.startswith(fence[0] * len(fence)) and close.strip(fence[0]) == "":
                break
            j += 1
        blocks.append((info, "\n".join(lines[i + 1:j])))
        i = j + 1
    if not found:
        return [("", answer)]
    return blocks


@dataclass(frozen=True)
class Extracted:
    body: str  # statements at `indent`, the first line without it (it follows the target's lead)
    function: str  # the name the answer gave the function
    helpers: tuple[str, ...]  # top-level definitions and imports of the answer moved into the body


def _python_blocks(answer: str) -> list[str]:
    blocks = code_blocks(answer)
    py = [c for info, c in blocks if info in ("python", "py", "python3", "")]
    return py or [c for _, c in blocks]


def _find_function(data: bytes, root: tree_sitter.Node, name: str, params: Optional[tuple[str, ...]],
                   class_name: Optional[str]) -> Optional[tree_sitter.Node]:
    """The function of the answer that is the target: by name (in a class of the target's class name first,
    then the shallowest), else the one function with the target's parameters (renamed)."""
    found: list[tuple[int, int, tree_sitter.Node]] = []
    stack = [(root, 0, None)]
    while stack:
        node, depth, cls = stack.pop()
        for c in node.named_children:
            inner = _inner(c)
            if inner.type == "function_definition":
                found.append((depth, 0 if cls == class_name else 1, inner))
                body = inner.child_by_field_name("body")
                if body is not None:
                    stack.append((body, depth + 1, None))
            elif inner.type == "class_definition":
                body = inner.child_by_field_name("body")
                if body is not None:
                    stack.append((body, depth + 1, _name(data, inner)))
    named = [f for f in found if _name(data, f[2]) == name]
    if named:
        # One with code first: a model given the signature and docstring sometimes writes the function again.
        named.sort(key=lambda f: (not _has_code(f[2]), f[1], f[0], f[2].start_byte))
        return named[0][2]
    if params is None:
        return None
    same = [f[2] for f in found if f[0] <= 1 and parameter_names(data, f[2]) == params]
    return same[0] if len(same) == 1 else None


def _has_code(fn: tree_sitter.Node) -> bool:
    """The function's body has a statement besides its docstring."""
    body = fn.child_by_field_name("body")
    stmts = list(body.named_children) if body is not None else []
    return any(not (i == 0 and _is_docstring(st)) and st.type != "comment" for i, st in enumerate(stmts))


def _string_continuations(root: tree_sitter.Node) -> set[int]:
    """Rows that start inside a multi-line string: their text is the string's, not indentation to change."""
    rows: set[int] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == "string":
            rows.update(range(n.start_point[0] + 1, n.end_point[0] + 1))
            continue
        if n.end_point[0] > n.start_point[0]:
            stack.extend(n.children)
    return rows


def _reindent(code: str, first_row: int, last_row: int, keep: set[int], indent: str) -> str:
    """Rows first_row..last_row of `code`, their common indentation replaced by `indent` (rows in `keep` are
    string contents, left alone); the first row without it."""
    lines = code.split("\n")[first_row:last_row + 1]
    base = None
    for k, line in enumerate(lines):
        if line.strip() and first_row + k not in keep:
            ws = leading_ws(line)
            base = ws if base is None or len(ws) < len(base) else base
    base = base or ""
    out = []
    for k, line in enumerate(lines):
        row = first_row + k
        if row in keep:
            out.append(line)
        elif not line.strip():
            out.append("")
        else:
            rest = line[len(base):] if line.startswith(base) else line.lstrip(" \t")
            out.append(indent + rest)
    text = "\n".join(out).rstrip()
    return text[len(indent):] if text.startswith(indent) else text.lstrip(" \t")


def extract_body(answer: str, *, name: str, language: Language, indent: str,
                 params: Optional[tuple[str, ...]] = None, class_name: Optional[str] = None,
                 file_names: frozenset[str] = frozenset(), newline: str = "\n") -> Extracted | str:
    """The body of the function `name` in a chat answer, re-indented to `indent` (its first line without it), or
    why there is none. The answer's docstring is dropped (the file has one). Top-level helpers and imports of
    the answer that the body uses and the file does not bind (`file_names`) are put first in the body."""
    blocks = _python_blocks(answer)
    if not blocks:
        return "the answer has no code block"
    parser = language.new_parser()
    for code in sorted(blocks, key=lambda c: 0 if re.search(rf"\bdef\s+{re.escape(name)}\s*\(", c) else 1):
        data = code.encode("utf-8", "surrogatepass")
        tree = parser.parse(data)
        fn = _find_function(data, tree.root_node, name, params, class_name)
        if fn is None:
            continue
        body = fn.child_by_field_name("body")
        if body is None:
            continue
        stmts = list(body.named_children)
        if stmts and _is_docstring(stmts[0]):
            stmts = stmts[1:]
        if not stmts:
            return f"the answer's {name} has only a docstring"
        keep = _string_continuations(tree.root_node)
        # Helpers: top-level statements of the answer (outside the function) that the body needs.
        top_fn = fn
        while top_fn.parent is not None and top_fn.parent.type != "module":
            top_fn = top_fn.parent
        wanted = _identifiers(data, body) - file_names
        helpers: list[tree_sitter.Node] = []
        candidates = [s for s in tree.root_node.named_children if s is not top_fn and not (
            s.start_byte <= fn.start_byte < s.end_byte)]
        changed = True
        while changed:
            changed = False
            for s in candidates:
                if s in helpers:
                    continue
                bound = _bound_names(data, s)
                if bound and bound & wanted and not bound <= file_names:
                    helpers.append(s)
                    wanted |= _identifiers(data, s) - file_names
                    changed = True
        helpers.sort(key=lambda s: s.start_byte)
        pieces = []
        for s in helpers:
            pieces.append(_reindent(code, s.start_point[0], s.end_point[0], keep, indent))
        first = stmts[0]
        pieces.append(_reindent(code, first.start_point[0], body.end_point[0], keep, indent))
        text = ("\n" + indent).join(pieces)
        if newline != "\n":
            text = text.replace("\n", newline)
        return Extracted(text, _name(data, fn), tuple(_text(data, s).split("\n")[0] for s in helpers))
    return f"the answer defines no function {name}"


def file_bindings(text: str, language: Language, tree: Optional[tree_sitter.Tree] = None) -> frozenset[str]:
    """Names the file binds at top level (imports, definitions, assignments) plus Python's builtins."""
    import builtins

    data = text.encode("utf-8", "surrogatepass")
    if tree is None:
        tree = language.new_parser().parse(data)
    names: set[str] = set(dir(builtins))
    for stmt in tree.root_node.named_children:
        names |= _bound_names(data, stmt)
    return frozenset(names)


# ------------------------------------------------------------------------------------------------ placeholders


_PY_PLACEHOLDER_STMT = re.compile(r"^(pass|\.\.\.|raise\s+NotImplementedError\b.*)$", re.S)


def _dedented_body(body: str) -> bytes:
    """A body as generated (its first line comes without its indentation) at column 0, as bytes to parse."""
    lines = body.split("\n")
    rest = [ln for ln in lines[1:] if ln.strip()]
    base = min((len(leading_ws(ln)) for ln in rest), default=0)
    text = "\n".join([lines[0].strip(), *[ln[base:] if len(leading_ws(ln)) >= base else ln.lstrip()
                                          for ln in lines[1:]]])
    return text.encode("utf-8", "surrogatepass")


# Calls through which a body can read its parameters without naming them.
_READS_FRAME = frozenset({"locals", "vars", "eval", "exec", "inspect", "sys"})


def ignores_parameters(body: str, params: Sequence[str], language: Optional[Language]) -> bool:
    """Whether a Python body never reads any of its parameters (`self` and `cls` aside) although it has some.

    Such a body answers every call alike: when it passes the docstring's examples (`return 325` for a single
    example whose output is 325), the examples say nothing about it, so verified generation does not count it as
    verified. False for other languages, for functions without parameters and for bodies that do not parse."""
    if language is None or language.syntax.family != "python":
        return False
    wanted = {p for p in params if p not in ("self", "cls")}
    if not wanted:
        return False
    data = _dedented_body(body)
    tree = language.new_parser().parse(data)
    if tree.root_node.has_error:
        return False
    names: set[str] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "identifier":
            names.add(_text(data, node))
        stack.extend(node.children)
    return not (names & wanted) and not (names & _READS_FRAME)


def is_placeholder_body(body: str, language: Optional[Language]) -> bool:
    """Whether a body does nothing yet: empty, or only `pass`, `...`, `raise NotImplementedError`, comments and
    strings (brace languages: only comments)."""
    if language is None or language.syntax.family != "python":
        stripped = re.sub(r"//[^\n]*|/\*.*?\*/", "", body, flags=re.S)
        return not stripped.strip(" \t\r\n;{}")
    data = _dedented_body(body)
    tree = language.new_parser().parse(data)
    for stmt in tree.root_node.named_children:
        if stmt.type == "comment" or _is_docstring(stmt):
            continue
        if not _PY_PLACEHOLDER_STMT.match(_text(data, stmt).strip()):
            return False
    return True


__all__ = ["FIM", "CHAT", "CHAT_ADAPTER", "STRATEGIES", "AUTO", "MODES", "AUTO_STRATEGIES", "AUTO_DEFAULT",
           "CHAT_MAX_TOKENS", "PY_CHAT_STOPS", "ChatPrompt", "Extracted", "strategies_for", "uses_chat",
           "file_view", "answer_header", "chat_prompt", "code_blocks", "extract_body", "file_bindings",
           "ignores_parameters", "is_placeholder_body",
           "parameter_names"]
