"""Training and evaluation examples from crawled files: tree-sitter spans, random spans, docstring → body.

An `Example` is a document cut in three: the text before the gap, the gap (`middle`) and the text after it. Kinds:

- `function-body`, `block`, `statement`, `arguments`: a node chosen with the language's tree-sitter queries
  (`grammars/queries/<lang>/*.scm`) or its argument-list node type; the gap is the node's exact text;
- `line`: one whole line of code, indentation and line break included (the cursor at the start of an empty
  line; HumanEval's single-line infilling);
- `lines`: 2 to 8 whole consecutive lines (multi-line infilling);
- `line-rest`: the rest of a line of code from a random column on;
- `random`: a random character span;
- `docstring`: signature and docstring given, the rest of the body is the gap, cut exactly as
  `intarsia.generateFunction` cuts it (`core.functions.find_function_target` on the file with the body removed);
- `accepted`: a suggestion the server's acceptance log says was accepted and is still in the file.

`render_example` turns an example into the prompt the server would send for it: the same FIM format, the same prompt
budget (`core.prompt.build_prompt` within the served `PromptBudget`; `budget_for`: a docstring example gets the
long suffix generateFunction's body prompt keeps) and the same repository context
(`ContextProvider` over the other training files). Training text is prompt + middle + the format's end token, so the
model learns to stop.

Files are split into train and held-out by a hash of their path (deterministic; optionally the files touched by
the newest commits are held out too); examples never mix the two.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import tree_sitter
from intarsia.grammars.registry import Language, get_language
from intarsia.model.fim import FimFormat, RepoFile
from intarsia.server.core.context import ContextProvider, RepoIndex
from intarsia.server.core.documents import Snapshot
from intarsia.server.core.functions import find_function_target
from intarsia.server.core.prompt import PromptBudget, build_prompt

from .crawl import SourceFile

KINDS = ("function-body", "block", "statement", "arguments", "line", "lines", "line-rest", "random", "docstring",
         "accepted")
# Share of the spans per file drawn from each kind (docstring and accepted examples come on top).
KIND_WEIGHTS = {"function-body": 0.1, "block": 0.1, "statement": 0.22, "arguments": 0.08, "line": 0.12,
                "lines": 0.08, "line-rest": 0.17, "random": 0.13}
MAX_MIDDLE_CHARS = 1200
ARGUMENT_TYPES = frozenset({"argument_list", "arguments", "parameters", "formal_parameters", "parameter_list"})


@dataclass(frozen=True)
class Example:
    path: str
    kind: str
    prefix: str
    middle: str
    suffix: str
    node_type: Optional[str] = None

    @property
    def text(self) -> str:
        return self.prefix + self.middle + self.suffix

    def key(self) -> str:
        return hashlib.sha256(f"{self.path}\0{len(self.prefix)}\0{self.middle}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- split


def unit_draw(seed: int, rel: str) -> float:
    """A number in [0, 1] drawn deterministically from (seed, key): splits and shares that do not move between
    runs."""
    return int(hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_files(files: Sequence[SourceFile], *, held_out: float = 0.1, seed: int = 0,
                recent: Iterable[str] = ()) -> tuple[list[SourceFile], list[SourceFile]]:
    """(train, held-out): held out when a hash of (seed, path) falls under `held_out`, or the path is in `recent`.
    With two files or more, each side gets at least one."""
    recent = set(recent)
    ranked = sorted(files, key=lambda f: unit_draw(seed, f.rel))
    held = [f for f in ranked if f.rel in recent or unit_draw(seed, f.rel) < held_out]
    if not held and len(ranked) >= 2 and held_out > 0:
        held = [ranked[0]]
    if len(held) == len(ranked) and len(ranked) >= 2:
        held = held[:-1]
    held_set = {f.rel for f in held}
    train = [f for f in files if f.rel not in held_set]
    return train, [f for f in files if f.rel in held_set]


# ---------------------------------------------------------------------------------------------- spans


class ParsedFile:
    """A crawled file parsed once with its language's grammar, for cutting examples and evaluation samples."""

    def __init__(self, f: SourceFile, language: Language):
        self.file = f
        self.text = f.text
        self.data = f.text.encode("utf-8", "surrogatepass")
        self.language = language
        self.tree = language.new_parser().parse(self.data)
        # byte offset -> char offset (the text is mostly ASCII; map through a cumulative table when not)
        self._ascii = len(self.data) == len(self.text)

    def char(self, b: int) -> int:
        return b if self._ascii else len(self.data[:b].decode("utf-8", "surrogatepass"))

    def captures(self, query_name: str, capture: str) -> list[tree_sitter.Node]:
        q = self.language.query(query_name)
        if q is None:
            return []
        return list(tree_sitter.QueryCursor(q).captures(self.tree.root_node).get(capture, []))

    def nodes_of_types(self, types: frozenset) -> list[tree_sitter.Node]:
        out, stack = [], [self.tree.root_node]
        while stack:
            n = stack.pop()
            if n.type in types:
                out.append(n)
            stack.extend(n.children)
        return out

    def span(self, node: tree_sitter.Node) -> tuple[int, int]:
        return self.char(node.start_byte), self.char(node.end_byte)

    def example(self, kind: str, start: int, end: int, node_type: Optional[str] = None) -> Optional[Example]:
        middle = self.text[start:end]
        if not middle.strip() or len(middle) > MAX_MIDDLE_CHARS:
            return None
        return Example(self.file.rel, kind, self.text[:start], middle, self.text[end:], node_type)


def _node_spans(doc: ParsedFile, kind: str) -> list[tuple[int, int, str]]:
    if kind == "function-body":
        nodes = doc.captures("functions", "function.body")
    elif kind == "block":
        nodes = doc.captures("blocks", "block")
    elif kind == "statement":
        nodes = doc.captures("statements", "statement")
    elif kind == "arguments":
        nodes = doc.nodes_of_types(ARGUMENT_TYPES)
    else:
        return []
    out = []
    # file order: a query's captures do not come in a fixed order, and the seeded draws pick from this list
    for n in sorted(nodes, key=lambda n: (n.start_byte, n.end_byte)):
        if n.has_error or n.end_byte - n.start_byte < 2:
            continue
        s, e = doc.span(n)
        if kind == "arguments":  # the inside of the brackets
            if e - s < 3:
                continue
            s, e = s + 1, e - 1
        out.append((s, e, n.type))
    return out


def _line_rest_spans(doc: ParsedFile) -> list[tuple[int, int, str]]:
    out, pos = [], 0
    for line in doc.text.split("\n"):
        code = line.strip()
        if len(code) >= 8 and not code.startswith(("#", "//", "/*", "*", '"""', "'''")):
            indent = len(line) - len(line.lstrip())
            out.append((pos + indent, pos + len(line), "line"))
        pos += len(line) + 1
    return out


def _whole_lines(doc: ParsedFile) -> list[tuple[int, int]]:
    """(start, end) of every line with code: from its first column through its line break."""
    out, pos = [], 0
    for line in doc.text.split("\n"):
        end = pos + len(line) + 1
        code = line.strip()
        if code and not code.startswith(("#", "//")):
            out.append((pos, min(end, len(doc.text))))
        pos = end
    return out


def docstring_examples(doc: ParsedFile) -> list[Example]:
    """Signature + docstring → body, cut by `find_function_target` itself: the body is removed (as the user has the
    function before running the command), the command's target is found in that text, and the example is what the
    command's prompt holds around it (its lead and trail included), with the real body as the middle."""
    out = []
    for fn in sorted(doc.captures("functions", "function"), key=lambda n: (n.start_byte, n.end_byte)):
        body = fn.child_by_field_name("body")
        if body is None or fn.has_error:
            continue
        if doc.language.syntax.family == "python":
            stmts = body.named_children
            if len(stmts) < 2 or stmts[0].type != "expression_statement" or not stmts[0].named_children \
                    or stmts[0].named_children[0].type != "string":
                continue
            a, b = doc.char(stmts[0].end_byte), doc.char(body.end_byte)
        else:
            s, e = doc.span(body)
            a, b = s + 1, e - 1
        code = doc.text[a:b].strip()
        if not code:
            continue
        stripped = doc.text[:a] + doc.text[b:]
        target = find_function_target(stripped, doc.char(fn.start_byte), doc.language)
        if isinstance(target, str):  # no docstring / doc comment, or not a function the command fills
            continue
        middle = code
        if len(middle) > MAX_MIDDLE_CHARS:
            continue
        out.append(Example(doc.file.rel, "docstring", stripped[:target.start] + target.lead, middle,
                           target.trail + stripped[target.end:], fn.type))
    return out


def file_examples(f: SourceFile, *, seed: int = 0, per_lines: int = 12, max_per_file: int = 64,
                  docstrings: bool = True, weights: Optional[dict[str, float]] = None,
                  docstring_share: float = 0.25) -> list[Example]:
    """Examples from one file: a mix of span kinds (`weights`, default KIND_WEIGHTS) plus docstring → body
    examples (up to `docstring_share` of the span count)."""
    language = get_language(f.language)
    if language is None:
        return []
    doc = ParsedFile(f, language)
    rng = random.Random(f"{seed}:{f.rel}")
    n = max(2, min(max_per_file, f.text.count("\n") // per_lines))
    pools = {k: _node_spans(doc, k) for k in ("function-body", "block", "statement", "arguments")}
    pools["line-rest"] = _line_rest_spans(doc)
    lines = _whole_lines(doc)
    table = weights if weights is not None else KIND_WEIGHTS
    unknown = set(table) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown example kind(s) {sorted(unknown)}")
    kinds = [k for k, w in table.items() if w > 0 and k not in ("docstring", "accepted")]
    if not kinds:
        kinds, table = ["line"], {"line": 1.0}
    kind_weights = [table[k] for k in kinds]
    out: list[Example] = []
    seen: set[tuple[int, int]] = set()
    tries = 0
    while len(out) < n and tries < n * 6:
        tries += 1
        kind = rng.choices(kinds, kind_weights)[0]
        if kind == "random":
            if len(doc.text) < 20:
                continue
            s = rng.randrange(0, len(doc.text) - 1)
            e = min(len(doc.text), s + rng.randint(1, 400))
            span = (s, e, None)
        elif kind in ("line", "lines"):
            if not lines:
                continue
            i = rng.randrange(len(lines))
            j = i if kind == "line" else min(len(lines) - 1, i + rng.randint(1, 7))
            if kind == "lines" and j == i:
                continue
            span = (lines[i][0], lines[j][1], kind)
        elif kind == "line-rest":
            if not pools[kind]:
                continue
            ls, le, _ = rng.choice(pools[kind])
            s = rng.randint(ls, max(ls, le - 1))
            span = (s, le, "line")
        else:
            if not pools[kind]:
                continue
            span = rng.choice(pools[kind])
        if (span[0], span[1]) in seen:
            continue
        seen.add((span[0], span[1]))
        ex = doc.example(kind, span[0], span[1], span[2])
        if ex is not None:
            out.append(ex)
    if docstrings:
        dex = docstring_examples(doc)
        rng.shuffle(dex)
        out += dex[: max(1 if docstring_share > 0 else 0, round(n * docstring_share))]
    return out


_TOP_LEVEL = re.compile(r"\n(?=[^\s#])")


def at_end_of_file(ex: Example) -> Example:
    """The same gap in a file that ends with the top-level definition (or statement) holding it: the suffix is
    cut before the next line that starts in column 0. The cursor at the end of a file is common in an editor
    (and in function-level benchmarks); the model must learn to end the middle there too, with nothing after
    it to stop at."""
    m = _TOP_LEVEL.search(ex.suffix)
    cut = ex.suffix[: m.start() + 1] if m else ex.suffix
    return replace(ex, suffix=cut if cut.strip() else "")


def accepted_examples(files: Sequence[SourceFile], events: Iterable[dict], *, min_similarity: float = 0.9,
                      min_chars: int = 8) -> list[Example]:
    """Suggestions accepted in the editor and still in the code (acceptance log: `shown` gives the path,
    `retained` the accepted text and how much of it is still there)."""
    by_path = {f.rel: f for f in files}
    paths: dict[str, str] = {}
    texts: dict[str, str] = {}
    for ev in events:
        if ev.get("event") == "shown" and ev.get("path"):
            paths[ev.get("id")] = ev["path"]
        elif ev.get("event") == "retained" and isinstance(ev.get("text"), str) \
                and (ev.get("similarity") or 0) >= min_similarity:
            texts[ev.get("id")] = ev["text"]
    out, seen = [], set()
    for sid, text in texts.items():
        f = by_path.get(paths.get(sid, ""))
        if f is None or len(text.strip()) < min_chars or (f.rel, text) in seen:
            continue
        at = f.text.find(text)
        if at < 0:
            continue
        seen.add((f.rel, text))
        out.append(Example(f.rel, "accepted", f.text[:at], text, f.text[at + len(text):]))
    return out


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderOptions:
    """How prompts are rendered. `budget` None: the server's budget on the device training runs on
    (`PromptBudget.served`), so that training sees what serving sends; set it only to study another budget."""

    budget: Optional[PromptBudget] = None
    repo_name: Optional[str] = None
    # Shares of examples rendered without the repository header at all (`bare`: what a client sends for an
    # untitled buffer, and what FIM benchmarks send) and with the file path but no other files (`path`);
    # the rest get path and repository context.
    bare_share: float = 0.0
    path_only_share: float = 0.0

    def __post_init__(self):
        if not (0 <= self.bare_share <= 1 and 0 <= self.path_only_share <= 1
                and self.bare_share + self.path_only_share <= 1):
            raise ValueError("bare_share and path_only_share must be in [0, 1] and add up to at most 1")


RENDER_MODES = ("bare", "path", "context")
BODY_KINDS = frozenset({"docstring", "body"})  # training's docstring → body examples, evaluation's body samples


def budget_for(kind: str, budget: PromptBudget) -> PromptBudget:
    """The budget a gap of this kind is served with: `budget` (the served inline budget), except that a body after
    its docstring is what `intarsia.generateFunction` asks for, and its prompt keeps the long suffix on every
    device (`server.core.functions`: the body's prompt is computed once, not on every keystroke)."""
    return budget.for_body() if kind in BODY_KINDS else budget


def render_mode(options: RenderOptions, ex: Example, seed: int = 0) -> str:
    """Which prompt form an example gets (deterministic in the example and the seed)."""
    if options.bare_share <= 0 and options.path_only_share <= 0:
        return "context"
    u = unit_draw(seed, "render:" + ex.key())
    if u < options.bare_share:
        return "bare"
    if u < options.bare_share + options.path_only_share:
        return "path"
    return "context"


def make_context(root: Path, files: Sequence[SourceFile]) -> ContextProvider:
    """A `ContextProvider` over `files` only (their masked text): training examples never see held-out files."""
    index = RepoIndex(root)
    for f in files:
        index.update_file(root / f.rel, f.text)
    index.ready = True
    return ContextProvider(index)


def render_example(ex: Example, fmt: FimFormat, count: Callable[[str], int], budget: PromptBudget,
                   context: Optional[ContextProvider] = None, root: Optional[Path] = None, uid: str = "",
                   mode: str = "context", repo_name: Optional[str] = None) -> str:
    """The prompt the server would build for this gap within `budget` (see the module docstring). `mode`:
    "context" (path and repository context), "path" (path only) or "bare" (prefix and suffix only)."""
    if mode not in RENDER_MODES:
        raise ValueError(f"unknown render mode {mode!r}")
    text = ex.prefix + ex.suffix
    offset = len(ex.prefix)
    files: list[RepoFile] = []
    if mode == "bare":
        return build_prompt(fmt, count, text, offset, budget=budget).prompt
    if context is not None and budget.context > 0 and mode == "context":
        snap = Snapshot(uri=f"intarsia-train:{uid or ex.key()}", version=0, text=text, offset=offset,
                        language_id="", language=None, path=ex.path,
                        fs_path=str(root / ex.path) if root is not None else None)
        files = context.select(snap, budget.context, count)
    return build_prompt(fmt, count, text, offset, budget=budget, context_files=files, path=ex.path,
                        repo_name=repo_name).prompt


__all__ = ["BODY_KINDS", "Example", "KINDS", "KIND_WEIGHTS", "RENDER_MODES", "RenderOptions", "accepted_examples",
           "at_end_of_file", "budget_for", "docstring_examples", "file_examples", "make_context", "render_example",
           "render_mode", "split_files"]
