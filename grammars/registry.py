"""Registry of tree-sitter languages, looked up by LSP language id, file name or extension.

Python comes from `tree-sitter-python` (a hard dependency). JavaScript, TypeScript/TSX, Go, Rust, Java,
C and C++ come from the optional `tree-sitter-language-pack` when it is installed and ships the grammar
in the wheel (the 0.x releases do; the 1.x releases download grammars on first use, which we never
trigger: a language that is not already in its cache is simply unavailable).

Each language carries its tree-sitter `Language`, its compiled queries (`queries/<dir>/<name>.scm`,
the same files training reads) and the lexical facts post-processing needs (`Syntax`).
Languages are loaded lazily on first lookup and cached; lookups are thread-safe.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import tree_sitter

logger = logging.getLogger(__name__)

QUERY_NAMES: tuple[str, ...] = ("functions", "classes", "blocks", "docstrings", "statements")


@dataclass(frozen=True)
class Syntax:
    """Lexical facts about a language, used by the lexer and the post-processing heuristics."""

    family: str  # "python" or "c" (brace languages)
    line_comments: tuple[str, ...]
    block_comment: Optional[tuple[str, str]]
    quotes: tuple[str, ...]  # characters that open a string ending at the same character
    multiline_quotes: tuple[str, ...] = ()  # quotes whose strings may span lines (``"""``, backtick)
    char_quote: Optional[str] = None  # quote of character literals ('a'); otherwise a lifetime/other
    indent_sensitive: bool = False
    block_opener: str = "{"  # last significant character of a line that opens a block
    raw_strings: str = ""  # "rust" (r#"..."#) or "cpp" (R"d(...)d")
    raw_quotes: tuple[str, ...] = ()  # quotes whose strings have no backslash escapes (Go backticks)


PYTHON_SYNTAX = Syntax(
    family="python",
    line_comments=("#",),
    block_comment=None,
    quotes=('"', "'"),
    multiline_quotes=('"""', "'''"),
    indent_sensitive=True,
    block_opener=":",
)
JS_SYNTAX = Syntax(family="c", line_comments=("//",), block_comment=("/*", "*/"), quotes=('"', "'", "`"),
                   multiline_quotes=("`",))
GO_SYNTAX = Syntax(family="c", line_comments=("//",), block_comment=("/*", "*/"), quotes=('"', "`"),
                   multiline_quotes=("`",), char_quote="'", raw_quotes=("`",))
RUST_SYNTAX = Syntax(family="c", line_comments=("//",), block_comment=("/*", "*/"), quotes=('"',),
                     char_quote="'", raw_strings="rust")
JAVA_SYNTAX = Syntax(family="c", line_comments=("//",), block_comment=("/*", "*/"), quotes=('"',),
                     multiline_quotes=('"""',), char_quote="'")
C_SYNTAX = Syntax(family="c", line_comments=("//",), block_comment=("/*", "*/"), quotes=('"',), char_quote="'")
CPP_SYNTAX = Syntax(family="c", line_comments=("//",), block_comment=("/*", "*/"), quotes=('"',),
                    char_quote="'", raw_strings="cpp")
# Used when the language is unknown: the most common conventions, for bracket/line heuristics only.
GENERIC_SYNTAX = Syntax(family="generic", line_comments=("//", "#"), block_comment=("/*", "*/"),
                        quotes=('"', "'", "`"))


@dataclass(frozen=True, eq=False)
class Language:
    """A loaded language. Identity-compared: the registry holds one instance per language."""

    name: str
    lsp_ids: tuple[str, ...]
    extensions: tuple[str, ...]
    ts_language: tree_sitter.Language = field(repr=False)
    queries: Mapping[str, tree_sitter.Query] = field(repr=False)
    syntax: Syntax = field(repr=False)
    query_dir: str = ""

    def new_parser(self) -> tree_sitter.Parser:
        """A fresh parser (parsers are not thread-safe; use one per thread)."""
        return tree_sitter.Parser(self.ts_language)

    def query(self, name: str) -> Optional[tree_sitter.Query]:
        return self.queries.get(name)


@dataclass(frozen=True)
class _Spec:
    name: str
    lsp_ids: tuple[str, ...]
    extensions: tuple[str, ...]
    syntax: Syntax
    loader: Callable[[], tree_sitter.Language]
    query_dir: str


def _load_python() -> tree_sitter.Language:
    import tree_sitter_python

    return tree_sitter.Language(tree_sitter_python.language())


def _pack_loader(grammar: str) -> Callable[[], tree_sitter.Language]:
    def load() -> tree_sitter.Language:
        pack = importlib.import_module("tree_sitter_language_pack")
        downloaded = getattr(pack, "downloaded_languages", None)
        if callable(downloaded) and grammar not in downloaded():
            # 1.x releases fetch grammars over the network on first use; never do that implicitly.
            raise LookupError(f"{grammar} is not in the tree-sitter-language-pack cache")
        lang = pack.get_language(grammar)
        if not isinstance(lang, tree_sitter.Language):
            lang = tree_sitter.Language(lang)
        return lang

    return load


_SPECS: tuple[_Spec, ...] = (
    _Spec("python", ("python",), (".py", ".pyi", ".pyw"), PYTHON_SYNTAX, _load_python, "python"),
    _Spec("javascript", ("javascript", "javascriptreact"), (".js", ".mjs", ".cjs", ".jsx"), JS_SYNTAX,
          _pack_loader("javascript"), "javascript"),
    _Spec("typescript", ("typescript",), (".ts", ".mts", ".cts"), JS_SYNTAX, _pack_loader("typescript"),
          "typescript"),
    _Spec("tsx", ("typescriptreact",), (".tsx",), JS_SYNTAX, _pack_loader("tsx"), "typescript"),
    _Spec("go", ("go",), (".go",), GO_SYNTAX, _pack_loader("go"), "go"),
    _Spec("rust", ("rust",), (".rs",), RUST_SYNTAX, _pack_loader("rust"), "rust"),
    _Spec("java", ("java",), (".java",), JAVA_SYNTAX, _pack_loader("java"), "java"),
    _Spec("c", ("c",), (".c", ".h"), C_SYNTAX, _pack_loader("c"), "c"),
    _Spec("cpp", ("cpp", "c++", "cuda-cpp"), (".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++",
                                              ".ipp", ".inl", ".tpp"), CPP_SYNTAX, _pack_loader("cpp"), "cpp"),
)

_BY_NAME: dict[str, _Spec] = {}
_BY_EXT: dict[str, _Spec] = {}
for _s in _SPECS:
    _BY_NAME[_s.name] = _s
    for _i in _s.lsp_ids:
        _BY_NAME.setdefault(_i, _s)
    for _e in _s.extensions:
        _BY_EXT.setdefault(_e, _s)

_lock = threading.Lock()
_loaded: dict[str, Optional[Language]] = {}


def query_path(query_dir: str, name: str):
    """The packaged `.scm` file for a query (an importlib Traversable)."""
    return resources.files(__package__).joinpath("queries", query_dir, f"{name}.scm")


def read_query(language: str, name: str) -> str:
    """Source text of `queries/<dir>/<name>.scm` for a language name (for training tools)."""
    spec = _BY_NAME.get(language)
    if spec is None:
        raise KeyError(f"unknown language {language!r}")
    return query_path(spec.query_dir, name).read_text(encoding="utf-8")


def _build(spec: _Spec) -> Optional[Language]:
    try:
        ts_lang = spec.loader()
    except Exception as exc:  # missing optional package, missing grammar, ABI mismatch
        logger.debug("language %s unavailable: %s", spec.name, exc)
        return None
    queries: dict[str, tree_sitter.Query] = {}
    for qname in QUERY_NAMES:
        path = query_path(spec.query_dir, qname)
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8")
        # A query that does not compile is a packaging bug: fail loudly rather than silently
        # post-process without it.
        queries[qname] = tree_sitter.Query(ts_lang, source)
    return Language(
        name=spec.name,
        lsp_ids=spec.lsp_ids,
        extensions=spec.extensions,
        ts_language=ts_lang,
        queries=MappingProxyType(queries),
        syntax=spec.syntax,
        query_dir=spec.query_dir,
    )


def _get(spec: _Spec) -> Optional[Language]:
    with _lock:
        if spec.name not in _loaded:
            _loaded[spec.name] = _build(spec)
        return _loaded[spec.name]


def _spec_for_key(key: str) -> Optional[_Spec]:
    k = key.strip()
    if not k:
        return None
    low = k.lower()
    spec = _BY_NAME.get(low)
    if spec is not None:
        return spec
    if low.startswith(".") and "/" not in low and "\\" not in low:
        return _BY_EXT.get(low)
    if "/" not in low and "\\" not in low and "." not in low:
        spec = _BY_EXT.get("." + low)  # a bare extension: "py", "rs"
        if spec is not None:
            return spec
    return _spec_for_path(k)


def _spec_for_path(path: str) -> Optional[_Spec]:
    p = str(path)
    if "://" in p:  # a URI: file:///x/y.py?query#frag
        p = p.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0]
    base = p.replace("\\", "/").rsplit("/", 1)[-1]
    _, ext = os.path.splitext(base)
    if not ext:
        return None
    return _BY_EXT.get(ext.lower())


def get_language(key: str) -> Optional[Language]:
    """Language for an LSP language id ("python", "typescriptreact"), a language name, an extension
    (".py" or "py") or a file name/path/URI ("src/app.tsx"). None when unknown or not installed."""
    if not isinstance(key, str):
        key = os.fspath(key)
    spec = _spec_for_key(key)
    return _get(spec) if spec is not None else None


def language_for_path(path: "str | os.PathLike[str]") -> Optional[Language]:
    """Language for a file path or URI, by its extension. None when unknown or not installed."""
    spec = _spec_for_path(os.fspath(path))
    return _get(spec) if spec is not None else None


def available_languages() -> list[str]:
    """Names of the languages whose grammar can be loaded here (python always)."""
    return [s.name for s in _SPECS if _get(s) is not None]


def known_languages() -> list[str]:
    """Names of every language the registry knows, installed or not."""
    return [s.name for s in _SPECS]
