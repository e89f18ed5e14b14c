"""Language registry, query files, incremental documents and completion scope."""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tree_sitter

from intarsia.grammars import (
    Language,
    ParsedDocument,
    Scope,
    ScopeDecision,
    available_languages,
    completion_scope,
    get_language,
    language_for_path,
)
from intarsia.grammars.registry import QUERY_NAMES, known_languages, query_path, read_query

GRAMMARS_DIR = Path(__file__).resolve().parents[1] / "grammars"


def at(marked: str) -> tuple[str, int]:
    """Document text and cursor offset from a string with one `|` marking the cursor."""
    i = marked.index("|")
    return marked[:i] + marked[i + 1:], i


# -- registry ---------------------------------------------------------------------------------------------


def test_python_is_always_available():
    assert "python" in available_languages()
    py = get_language("python")
    assert isinstance(py, Language)
    assert py.name == "python"
    assert isinstance(py.ts_language, tree_sitter.Language)


@pytest.mark.parametrize(
    "key",
    ["python", "PYTHON", ".py", "py", ".pyi", "pkg/module.py", "C:\\src\\x.pyw", "file:///home/u/a.py?x=1"],
)
def test_python_lookup_by_id_extension_and_path(key):
    assert get_language(key) is get_language("python")


def test_unknown_lookups_return_none():
    assert get_language("cobol") is None
    assert get_language("") is None
    assert get_language("README") is None
    assert get_language("notes.txt") is None
    assert language_for_path("Makefile") is None


def test_language_for_path_uses_the_extension_only():
    assert language_for_path("src/app/main.py") is get_language("python")
    assert language_for_path(Path("x/y.PY")) is get_language("python")
    # A language id is not a path.
    assert language_for_path("python") is None


def test_language_is_frozen_and_one_instance_per_language():
    py = get_language("python")
    with pytest.raises(dataclasses.FrozenInstanceError):
        py.name = "other"  # type: ignore[misc]
    assert get_language(".py") is py


def test_lsp_ids_and_extensions_of_optional_languages():
    expected = {
        "javascriptreact": "javascript",
        "typescriptreact": "tsx",
        "x.ts": "typescript",
        "main.go": "go",
        "lib.rs": "rust",
        "A.java": "java",
        "a.h": "c",
        "a.hpp": "cpp",
        "cpp": "cpp",
    }
    for key, name in expected.items():
        lang = get_language(key)
        if name in available_languages():
            assert lang is not None and lang.name == name, key
        else:
            assert lang is None, key
    assert set(available_languages()) <= set(known_languages())


# -- query files ------------------------------------------------------------------------------------------


def test_every_known_language_has_all_query_files():
    dirs = {"tsx": "typescript"}
    for name in known_languages():
        for q in QUERY_NAMES:
            path = query_path(dirs.get(name, name), q)
            assert path.is_file(), f"missing queries/{dirs.get(name, name)}/{q}.scm"
            assert read_query(name, q).strip()


@pytest.mark.parametrize("name", known_languages())
def test_queries_compile_for_installed_languages(name):
    lang = get_language(name)
    if lang is None:
        pytest.skip(f"{name} grammar not installed (tree-sitter-language-pack)")
    assert set(lang.queries) == set(QUERY_NAMES)
    for q in lang.queries.values():
        assert isinstance(q, tree_sitter.Query)


SAMPLES = {
    "python": (
        '"""Module doc."""\n\nclass Shape:\n    """A shape."""\n\n    def area(self):\n        """Area."""\n'
        "        if self.w:\n            return self.w * 2\n        return 0\n",
        "area", "Shape",
    ),
    "javascript": (
        "/** Doc. */\nclass Shape {\n  area() {\n    if (this.w) { return this.w * 2; }\n    return 0;\n  }\n}\n"
        "function helper(x) { return x; }\n",
        "area", "Shape",
    ),
    "typescript": (
        "/** Doc. */\nclass Shape {\n  area(): number {\n    if (this.w) { return this.w * 2; }\n    return 0;\n  }\n}\n"
        "interface Sized { size: number }\n",
        "area", "Shape",
    ),
    "tsx": (
        "/** Doc. */\nclass Shape {\n  area(): number {\n    return 0;\n  }\n}\nconst App = () => <div>hi</div>;\n",
        "area", "Shape",
    ),
    "go": (
        "package main\n\n// Shape is a shape.\ntype Shape struct {\n\tw int\n}\n\n// Area computes.\n"
        "func (s Shape) Area() int {\n\tif s.w > 0 {\n\t\treturn s.w * 2\n\t}\n\treturn 0\n}\n",
        "Area", "Shape",
    ),
    "rust": (
        "/// A shape.\nstruct Shape { w: i32 }\n\nimpl Shape {\n    /// Area.\n    fn area(&self) -> i32 {\n"
        "        if self.w > 0 { return self.w * 2; }\n        0\n    }\n}\n",
        "area", "Shape",
    ),
    "java": (
        "/** A shape. */\nclass Shape {\n  int w;\n  /** Area. */\n  int area() {\n    if (w > 0) { return w * 2; }\n"
        "    return 0;\n  }\n}\n",
        "area", "Shape",
    ),
    "c": (
        "/** A shape. */\nstruct Shape { int w; };\n\n/** Area. */\nint area(struct Shape *s) {\n"
        "    if (s->w > 0) { return s->w * 2; }\n    return 0;\n}\n",
        "area", "Shape",
    ),
    "cpp": (
        "/** A shape. */\nclass Shape {\n public:\n  int w;\n  int area() {\n    if (w > 0) { return w * 2; }\n"
        "    return 0;\n  }\n};\n",
        "area", "Shape",
    ),
}


def _captures(lang: Language, query: str, source: str) -> dict[str, list[str]]:
    tree = lang.new_parser().parse(source.encode())
    caps = tree_sitter.QueryCursor(lang.queries[query]).captures(tree.root_node)
    return {k: [n.text.decode() for n in v] for k, v in caps.items()}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_queries_find_functions_classes_blocks_docstrings_statements(name):
    lang = get_language(name)
    if lang is None:
        pytest.skip(f"{name} grammar not installed (tree-sitter-language-pack)")
    source, func, cls = SAMPLES[name]
    tree = lang.new_parser().parse(source.encode())
    assert not tree.root_node.has_error
    assert func in _captures(lang, "functions", source).get("function.name", [])
    assert any(cls in t for t in _captures(lang, "classes", source).get("class.name", []))
    assert _captures(lang, "blocks", source).get("block")
    assert _captures(lang, "statements", source).get("statement")
    docs = _captures(lang, "docstrings", source).get("docstring", [])
    assert docs, "a doc comment/docstring should be captured"


def test_python_docstrings_are_only_first_string_statements():
    py = get_language("python")
    source = '"""M."""\nx = "not a doc"\n\ndef f():\n    """F."""\n    y = "no"\n\nclass C:\n    """C."""\n'
    docs = _captures(py, "docstrings", source)["docstring"]
    assert sorted(docs) == sorted(['"""M."""', '"""F."""', '"""C."""'])


def test_grammars_imports_nothing_else_from_intarsia():
    code = (
        "import sys, intarsia.grammars, intarsia.grammars.postprocess, intarsia.grammars.scope,"
        " intarsia.grammars.validate;"
        "print(sorted(m for m in sys.modules if m.startswith('intarsia.') and not m.startswith('intarsia.grammars')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    for path in GRAMMARS_DIR.rglob("*.py"):
        src = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+intarsia\b", src, re.M), path
        assert not re.search(r"^\s*from\s+(model|server|training)\b", src, re.M), path


def test_modules_share_only_public_names():
    # Each module's private names are its own: what another module needs is public (grammars/validate.py
    # gives post-processing `Validator` and its tiers, nothing else).
    for path in GRAMMARS_DIR.rglob("*.py"):
        src = path.read_text()
        for m in re.finditer(r"^from\s+\.\w*\s+import\s+(\([^)]*\)|[^\n]*)", src, re.M):
            names = [n.strip().split(" as ")[0] for n in m.group(1).strip("()").split(",") if n.strip()]
            assert not [n for n in names if n.startswith("_")], (path, m.group(0))


def test_library_code_does_not_print():
    for path in GRAMMARS_DIR.rglob("*.py"):
        assert not re.search(r"^\s*print\(", path.read_text(), re.M), path


# -- documents --------------------------------------------------------------------------------------------


def _sexp(tree: tree_sitter.Tree) -> str:
    return str(tree.root_node)


def test_apply_edit_matches_a_fresh_parse_with_unicode():
    py = get_language("python")
    text = "def f(x):\n    s = 'héllo wörld ✓'\n    return s + '𝄞'\n\n\nclass C:\n    pass\n"
    doc = ParsedDocument(text, py)
    rng = random.Random(7)
    pieces = ["x", "é", "𝄞", "\n    y = 1\n", "(", ")", "'", "", "ü + ö"]
    for _ in range(60):
        start = rng.randint(0, len(doc.text))
        end = min(len(doc.text), start + rng.randint(0, 4))
        doc.apply_edit(start, end, rng.choice(pieces))
        fresh = py.new_parser().parse(doc.text.encode("utf-8"))
        assert _sexp(doc.tree) == _sexp(fresh)
        assert doc.source_bytes == doc.text.encode("utf-8")
    assert doc.version == 60


def test_apply_edit_rejects_bad_ranges():
    doc = ParsedDocument("x = 1\n", get_language("python"))
    with pytest.raises(ValueError):
        doc.apply_edit(3, 2, "")
    with pytest.raises(ValueError):
        doc.apply_edit(0, 99, "")


def test_with_insertion_leaves_the_document_unchanged():
    py = get_language("python")
    doc = ParsedDocument("def f():\n    return 1\n", py)
    before = _sexp(doc.tree)
    data, tree = doc.with_insertion(9, "    x = (\n")
    assert data == b"def f():\n    x = (\n    return 1\n"
    assert tree.root_node.has_error
    assert _sexp(doc.tree) == before and not doc.tree.root_node.has_error


def test_offset_at_counts_utf16_code_units():
    doc = ParsedDocument("a = '𝄞x'\nb = 2\n", get_language("python"))
    # '𝄞' is two UTF-16 code units.
    assert doc.offset_at(0, 7) == 6
    assert doc.text[doc.offset_at(0, 7)] == "x"
    assert doc.offset_at(1, 2) == len("a = '𝄞x'\n") + 2
    assert doc.offset_at(0, 7, encoding="utf-32") == 7
    assert doc.offset_at(9, 0) == len(doc.text)


def test_replace_reparses_everything():
    py = get_language("python")
    doc = ParsedDocument("x = (", py)
    assert doc.tree.root_node.has_error
    doc.replace("x = 1\n")
    assert not doc.tree.root_node.has_error and doc.text == "x = 1\n"


# -- completion scope -------------------------------------------------------------------------------------


PY_SCOPES = [
    ("def f(x):\n    retu|rn x\n", Scope.NONE, "identifier"),
    ("def f(x):|\n    pass\n", Scope.BLOCK, "block header"),
    ("def f(x):\n    if x:|\n        pass\n", Scope.BLOCK, "block header"),
    ("def f(x):\n    y = 1\n    |\n", Scope.BLOCK, "empty line"),
    ("def f(x):\n    y = 1\n|\n", Scope.BLOCK, "empty line"),
    ("def f(x):\n    y = 1\n|    return y\n", Scope.BLOCK, "insert whole lines"),
    ("def f(x):\n    y = |\n", Scope.LINE, "end of a line"),
    ("def f(x):\n    y = foo(|)\n", Scope.LINE, "closing"),
    ("def f(x):\n    y = foo(|, x)\n", Scope.NONE, "code after the cursor"),
    ("def f(x):\n    |return x\n", Scope.NONE, "indentation"),
    ("def f(x):\n    # explain th|\n    return x\n", Scope.LINE, "comment"),
    ("def f(x):\n    s = 'abc|'\n", Scope.LINE, "string"),
    ('def f(x):\n    """Compute th|\n    """\n', Scope.LINE, "docstring"),
    ("x = [1, 2,|\n", Scope.LINE, "end of a line"),
]


@pytest.mark.parametrize("marked,scope,why", PY_SCOPES)
def test_python_scopes(marked, scope, why):
    text, off = at(marked)
    d = completion_scope(text, off, get_language("python"))
    assert isinstance(d, ScopeDecision)
    assert d.scope is scope, d
    assert why in d.reason
    if scope is Scope.NONE:
        assert d.max_new_tokens == 0
    else:
        assert d.max_new_tokens > 0


def test_explicit_requests_never_get_none():
    py = get_language("python")
    for marked, scope, _ in PY_SCOPES:
        text, off = at(marked)
        d = completion_scope(text, off, py, invoked=True)
        assert d.scope is not Scope.NONE
        if scope is not Scope.NONE:
            assert d.scope is scope


def test_block_scope_stop_hints_inside_a_top_level_function():
    text, off = at("import os\n\ndef f(x):\n    y = 1\n    |\n")
    d = completion_scope(text, off, get_language("python"))
    assert d.scope is Scope.BLOCK
    assert "\ndef " in d.stop and d.indent_floor == 0
    text, off = at("class C:\n    def m(self):\n        |\n")
    d = completion_scope(text, off, get_language("python"))
    assert d.indent_floor == 4 and d.stop == ()


def test_comment_scope_stops_at_the_newline():
    text, off = at("x = 1  # the answ|\n")
    d = completion_scope(text, off, get_language("python"))
    assert d.scope is Scope.LINE and d.stop == ("\n",) and d.max_lines == 1


def test_scope_accepts_a_parsed_document_and_is_frozen():
    py = get_language("python")
    text, off = at("def f(x):\n    |\n")
    doc = ParsedDocument(text, py)
    d = completion_scope(doc.text, off, py, tree=doc)
    assert d.scope is Scope.BLOCK
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.scope = Scope.LINE  # type: ignore[misc]


def test_scope_without_a_grammar_uses_line_rules():
    text, off = at("fn main() {|\n}\n")
    assert completion_scope(text, off, None).scope is Scope.BLOCK
    text, off = at("let x = |\n")
    assert completion_scope(text, off, None).scope is Scope.LINE
    text, off = at("let x = fo|o;\n")
    assert completion_scope(text, off, None).scope is Scope.NONE


def test_brace_language_scopes():
    js = get_language("javascript")
    if js is None:
        pytest.skip("javascript grammar not installed")
    text, off = at("function f(x) {|\n}\n")
    assert completion_scope(text, off, js).scope is Scope.BLOCK
    text, off = at("function f(x) {\n  const y = g(|);\n}\n")
    assert completion_scope(text, off, js).scope is Scope.LINE
    text, off = at("function f(x) {\n  // say hel|\n}\n")
    assert "comment" in completion_scope(text, off, js).reason


def test_scope_offset_out_of_range():
    with pytest.raises(ValueError):
        completion_scope("x", 5, get_language("python"))
