"""What the document says about the cursor: line, tree, window, enclosing definitions, indentation.

`cursor_context` builds a `CursorContext` once per (document, cursor); the caller hands the same object to
`scope.scope_for_context` and, after generation, to `postprocess(..., context=ctx)` / `choose(...,
context=ctx)`, so the tree analysis and the lexing around the cursor are done once per request. It is passed
explicitly rather than remembered here: a per-thread "last context" made the saving depend on every caller
passing the very same str object on the same thread, and any call in between (another document, another
cursor) silently made the next one pay again. Its fields are internal and may change; callers only pass it
on. (The per-thread *parser* cache below stays: tree-sitter parsers are not thread-safe.)

The validity *window* (Python): a standalone parse of the whole document after every candidate edit
costs as much as a full parse inside large blocks (tree-sitter-python's incremental reparse often
cannot reuse the enclosing block), so candidates are judged on a window: from the start of the
statement holding the last code before the cursor to the end of the statement holding the first code
after it (descending into large compound statements). tree-sitter-python accepts an indented first
line and dedents, so any run of whole statements parses standalone; errors are compared between the
window before and after the edit. Indentation, which tree-sitter-python does not check, is checked
by `lexer`-based rules over the same span.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Optional, Union

import tree_sitter

from .document import ParsedDocument, byte_offset, char_offset, encode
from .lexer import LexState, Lexer, ScanResult, indent_width, leading_ws
from .registry import GENERIC_SYNTAX, Language

logger = logging.getLogger(__name__)

TreeLike = Union[None, tree_sitter.Tree, ParsedDocument]

WINDOW_MAX_BYTES = 24_000  # larger windows fall back to a whole-document (incremental) parse
_BODY_DESCENT_LINES = 40  # compound statements after the cursor larger than this are cut to their first body statement
_STYLE_LINES = 100  # lines around the cursor used to detect indentation style
_IDENT_RE = re.compile(r"\w", re.UNICODE)
_DEFINITIONS = frozenset({"function_definition", "class_definition", "decorated_definition"})
_STATEMENT_PARENTS = frozenset({"block", "module", "ERROR"})
_CLAUSE_TAKERS = frozenset({"if_statement", "for_statement", "while_statement", "try_statement"})
_CLAUSES = frozenset({"else_clause", "elif_clause", "except_clause", "finally_clause", "except_group_clause"})
# Stand-in block header for indentation levels outside a window; `with` takes no else/except clause,
# so a stray clause in the window still finds no owner.
_STAND_IN = "with 0:\n"
_SMALL_COMPOUND_BYTES = 3000  # compound statements up to this size before the cursor go in whole
_local = threading.local()


def _thread_parser(language: Language) -> tree_sitter.Parser:
    """One parser per (thread, language): parsers are not thread-safe."""
    cache = getattr(_local, "parsers", None)
    if cache is None:
        cache = _local.parsers = {}
    parser = cache.get(language.name)
    if parser is None:
        parser = cache[language.name] = language.new_parser()
    return parser


def is_comment_type(t: str) -> bool:
    return "comment" in t


def is_string_type(t: str) -> bool:
    return ("string" in t and not t.endswith(("_content", "_start", "_end", "_fragment", "_delimiter"))) \
        or t in ("char_literal", "text_block")


@dataclass(frozen=True)
class Window:
    start: int  # str index of a line start (a statement start)
    end: int  # str index after a line end (a statement end) or len(text)
    stack0: tuple[int, ...]  # Python indentation levels in effect at `start`
    whole_document: bool  # too large: judge the tree on the whole document instead
    head: str = ""  # header line(s) of a large compound statement standing in for it before `start`


def cursor_context(text: str, offset: int, language: Optional[Language], tree: TreeLike = None) -> "CursorContext":
    """What the document says about the cursor at `offset` (a str index in `text`). `tree`: the document's
    tree (a `tree_sitter.Tree` for exactly `text`, or a `ParsedDocument`); without it `text` is parsed."""
    return CursorContext(text, offset, language, tree)


class CursorContext:
    """Everything post-processing needs to know about one cursor position in one document."""

    def __init__(self, text: str, offset: int, language: Optional[Language], tree: TreeLike = None):
        if not 0 <= offset <= len(text):
            raise ValueError(f"offset {offset} outside the document (length {len(text)})")
        self.text = text
        self.offset = offset
        self.language = language
        self.syntax = language.syntax if language is not None else GENERIC_SYNTAX
        self.lexer = Lexer.for_syntax(self.syntax)
        self.python = self.syntax.family == "python"
        self.ascii = text.isascii()

        ls = text.rfind("\n", 0, offset) + 1
        le = text.find("\n", offset)
        if le < 0:
            le = len(text)
        self.line_start = ls
        self.line_end = le  # index of the "\n" (or len); a "\r" before it belongs to the line
        self.line_before = text[ls:offset]
        self.rest_line = text[offset:le].rstrip("\r")
        self.at_col0 = offset == ls
        self.before_blank = self.line_before.strip() == ""
        self.rest_blank = self.rest_line.strip() == ""
        self.newline = _newline_style(text, offset)
        self._indent_unit: Optional[str] = None

        # Tree.
        self.parser: Optional[tree_sitter.Parser] = None
        self.tree: Optional[tree_sitter.Tree] = None
        self.doc: Optional[ParsedDocument] = None
        self._bytes: Optional[bytes] = None
        if language is not None:
            self.parser = _thread_parser(language)
            self.tree = self._resolve_tree(tree)
        self.cursor_b = self.to_byte(offset)

        # Code positions around the cursor (str indices of characters), comments skipped.
        self.in_comment = False
        self.in_string = False
        self.in_docstring = False
        self.last_code = self._last_code_before()
        self.next_code = self._next_code_after()

        self.stmt_before: Optional[tree_sitter.Node] = None
        self.stmt_after: Optional[tree_sitter.Node] = None
        self.defs: list[tuple[tree_sitter.Node, str, int]] = []  # (node, "function"|"class", header indent)
        self.window: Optional[tuple[int, int]] = None
        self._windows: dict[tuple[int, str], Window] = {}
        self._window_end = len(text)
        self._following_owners: list[tree_sitter.Node] = []
        self.stack0: list[int] = [0]
        if self.tree is not None:
            self._analyse_tree()
        # Lexer state at the cursor, from a statement start (or the line start without a tree).
        self.lex_from = self._lex_start()
        pre = self.lexer.scan(text[self.lex_from:offset])
        self.prefix_scan: ScanResult = pre
        self.state_at_cursor: LexState = pre.end_state
        if self.tree is None and self.state_at_cursor.string is not None:
            self.in_string = True
        last = pre.lines[-1] if pre.lines else None
        self.cursor_line_last_code = ""
        if last is not None:
            self.cursor_line_last_code = last.last_code or ""
        # The last significant character of the logical line before the cursor (across lines).
        self.logical_last_code = ""
        for info in reversed(pre.lines):
            if info.last_code:
                self.logical_last_code = info.last_code
                break
            if info.logical_start:
                break

    @property
    def indent_unit(self) -> str:
        """The document's indentation unit near the cursor ("\t" or spaces), computed on first use."""
        if self._indent_unit is None:
            self._indent_unit = _indent_unit(self.text, self.line_start)
        return self._indent_unit

    # -- conversions --------------------------------------------------------------------------------------

    @property
    def text_bytes(self) -> bytes:
        if self._bytes is None:
            self._bytes = encode(self.text)
        return self._bytes

    def to_byte(self, index: int) -> int:
        return index if self.ascii else byte_offset(self.text, index)

    def to_char(self, b: int) -> int:
        return b if self.ascii else char_offset(self.text_bytes, b)

    # -- tree ---------------------------------------------------------------------------------------------

    def _resolve_tree(self, tree: TreeLike) -> tree_sitter.Tree:
        if isinstance(tree, ParsedDocument):
            doc_text, doc_tree = tree.snapshot()
            if tree.language is self.language and (doc_text is self.text or doc_text == self.text):
                self.doc = tree
                self._bytes = tree.source_bytes if doc_text is tree.text else None
                return doc_tree
            logger.debug("ParsedDocument does not match the text; parsing from scratch")
        elif isinstance(tree, tree_sitter.Tree):
            return tree
        return self.parser.parse(self.text_bytes)

    def _leaf_at(self, index: int) -> Optional[tree_sitter.Node]:
        """Smallest node spanning the character at str index `index`."""
        b = self.to_byte(index)
        e = self.to_byte(index + 1)
        return self.tree.root_node.descendant_for_byte_range(b, e)

    def _last_code_before(self) -> int:
        text = self.text
        i = self.offset
        while True:
            j = i - 1
            while j >= 0 and text[j].isspace():
                j -= 1
            if j < 0:
                return -1
            if self.tree is None:
                return j
            node = self._leaf_at(j)
            cnode = _ancestor(node, is_comment_type)
            if cnode is not None:
                if i == self.offset and self.to_byte(self.offset) <= cnode.end_byte and \
                        "\n" not in text[j:self.offset] and not _closed_block_comment(cnode, self.offset, self):
                    self.in_comment = True
                start = self.to_char(cnode.start_byte)
                if start >= i:  # defensive: never loop
                    return j
                i = start
                continue
            if i == self.offset:
                snode = _ancestor(node, is_string_type)
                if snode is not None and snode.end_byte > self.cursor_b and snode.start_byte < self.cursor_b:
                    self.in_string = True
                    dq = self.language.query("docstrings") if self.language else None
                    if dq is not None:
                        self.in_docstring = any(n.start_byte == snode.start_byte
                                                for n in _captures(dq, self.tree.root_node, snode.start_byte,
                                                                   "docstring"))
            return j

    def _next_code_after(self) -> int:
        text = self.text
        i = self.offset
        n = len(text)
        while True:
            j = i
            while j < n and text[j].isspace():
                j += 1
            if j >= n:
                return -1
            if self.tree is None:
                return j
            node = self._leaf_at(j)
            cnode = _ancestor(node, is_comment_type)
            if cnode is not None:
                end = self.to_char(cnode.end_byte)
                if end <= j:
                    return j
                i = end
                continue
            return j

    def _analyse_tree(self) -> None:
        lang = self.language
        root = self.tree.root_node
        sq = lang.query("statements")
        if self.last_code >= 0 and sq is not None:
            self.stmt_before = _smallest(sq, root, self.to_byte(self.last_code), "statement")
        if self.next_code >= 0 and sq is not None:
            self.stmt_after = _smallest(sq, root, self.to_byte(self.next_code), "statement")
        if self.last_code >= 0:
            b = self.to_byte(self.last_code)
            found: list[tuple[tree_sitter.Node, str]] = []
            for qname, cap, kind in (("functions", "function", "function"), ("classes", "class", "class")):
                q = lang.query(qname)
                if q is None:
                    continue
                for node in _captures(q, root, b, cap):
                    if node.start_byte <= b < node.end_byte:
                        found.append((node, kind))
            found.sort(key=lambda nk: (nk[0].start_byte, -nk[0].end_byte))
            seen = set()
            for node, kind in found:
                key = (node.start_byte, node.end_byte)
                if key in seen:
                    continue
                seen.add(key)
                self.defs.append((node, kind, self._line_indent_at_byte(node.start_byte)))
        if self.python:
            self._python_window()

    def _line_indent_at_byte(self, b: int) -> int:
        i = self.to_char(b)
        ls = self.text.rfind("\n", 0, i) + 1
        return indent_width(leading_ws(self.text[ls:i + 1]))

    def _python_window(self) -> None:
        """Window end (fixed) and the default window (for an insertion that does not dedent)."""
        text = self.text
        if self.stmt_after is not None:
            node = self._descend(self.stmt_after)
            b = self.to_char(node.end_byte)
            if node.has_error and node.end_byte - self.cursor_b > _SMALL_COMPOUND_BYTES:
                # Error recovery swallowed a large region: judge on a few lines after the code instead.
                b = self.next_code
                for _ in range(10):
                    nl = text.find("\n", b + 1)
                    if nl < 0:
                        b = len(text)
                        break
                    b = nl
        elif self.next_code >= 0:
            b = self.next_code
        else:
            b = len(text)
        b = max(b, self.offset)
        # Clauses after the cursor of compound statements the cursor is in: an insertion can cut them
        # off from their statement, so the window reaches their first line of body.
        node = self.stmt_before
        while node is not None:
            if node.type in _CLAUSE_TAKERS and node.end_byte > self.cursor_b:
                for child in node.children:
                    if child.type in _CLAUSES and child.start_byte >= self.cursor_b:
                        body = next((g for g in child.children if g.type == "block"), None)
                        end = body.named_children[0].end_byte if body is not None and body.named_child_count \
                            else child.end_byte
                        if end - self.cursor_b <= _SMALL_COMPOUND_BYTES:
                            b = max(b, self.to_char(end))
                            self._following_owners.append(node)
                        break
            node = node.parent
        nl = text.find("\n", b)
        self._window_end = len(text) if nl < 0 else nl + 1
        w = self.window_for()
        self.window = (w.start, w.end) if not w.whole_document else None
        self.stack0 = list(w.stack0)

    def window_for(self, clause_levels: tuple[int, ...] = ()) -> "Window":
        """The validity window. It starts at the statement holding the last code before the cursor; when
        a clause (`else:`, `elif`, `except:`, `finally:`) is involved - the insertion adds one at one of
        `clause_levels`, the code after the cursor is one, or a statement holding the cursor has one
        after it - it must also hold the compound statement the clause belongs to: the whole statement
        when it is small, else its header line(s) followed by stand-in headers for the levels in between
        and the text from the statement before the cursor on."""
        base = self._base_node()
        compound = self._clause_owner(base, clause_levels)
        text = self.text
        # Indentation levels at the window start: the indentation of every enclosing node that begins
        # its line (statements, clauses, blocks; also ERROR nodes in a broken document).
        ws_at: dict[int, str] = {0: ""}
        node = base
        while node is not None:
            ci = self.to_char(node.start_byte)
            ls = text.rfind("\n", 0, ci) + 1
            if text[ls:ci].strip() == "":
                ws_at.setdefault(indent_width(text[ls:ci]), text[ls:ci])
            node = node.parent
        head = ""
        start_node = base
        if compound is not None:
            if self.cursor_b - compound.start_byte <= _SMALL_COMPOUND_BYTES:
                start_node = compound
            else:
                head_text = self._compound_header(compound, base)
                if head_text is None:
                    start_node = compound
                else:
                    # The header, then stand-in headers for the levels between its body and the
                    # statement the window resumes with, so the indentation nests as in the document.
                    lo = self._line_indent_at_byte(compound.start_byte)
                    hi = self._line_indent_at_byte(base.start_byte)
                    head = head_text + "".join(ws_at[w] + _STAND_IN for w in sorted(ws_at) if lo < w < hi)
        if start_node is not None:
            a = self.to_char(start_node.start_byte)
        elif self.last_code >= 0:
            a = self.last_code
        else:
            a = 0
        a = text.rfind("\n", 0, a) + 1
        # Stand-in headers for the levels enclosing the window's first line, so that tree-sitter's
        # indentation stack in the window is the one it has in the document.
        first_line = head if head else text[a:text.find("\n", a) + 1 or len(text)]
        first_indent = indent_width(leading_ws(first_line))
        head = "".join(ws_at[w] + _STAND_IN for w in sorted(ws_at) if w < first_indent) + head
        key = (a, head)
        cached = self._windows.get(key)
        if cached is not None:
            return cached
        b = self._window_end
        stack = sorted(ws_at)
        whole = b - a + len(head) > WINDOW_MAX_BYTES
        if whole:
            logger.debug("validity window of %d chars too large; using the whole document", b - a)
        win = Window(a, b, tuple(stack), whole, head)
        self._windows[key] = win
        return win

    def _base_node(self) -> Optional[tree_sitter.Node]:
        """The statement holding the last code before the cursor; in a broken region where error
        recovery made that a statement starting far above, the smallest node at the last code."""
        base = self.stmt_before
        if base is None or self.last_code < 0:
            return base
        if base.has_error and self.cursor_b - base.start_byte > _SMALL_COMPOUND_BYTES:
            leaf = self._leaf_at(self.last_code)
            node = leaf
            while node is not None and node.parent is not None and \
                    self.cursor_b - node.parent.start_byte <= _SMALL_COMPOUND_BYTES and node.parent.type != "module":
                node = node.parent
            return node
        return base

    def _clause_owner(self, base: Optional[tree_sitter.Node],
                      clause_levels: tuple[int, ...]) -> Optional[tree_sitter.Node]:
        """The outermost compound statement a clause attaches to (see `window_for`)."""
        owners: list[tree_sitter.Node] = []
        if base is not None:
            for level in set(clause_levels):
                cur = base
                while cur is not None and cur.type != "module":
                    if cur.parent is not None and cur.parent.type in _STATEMENT_PARENTS:
                        w = self._line_indent_at_byte(cur.start_byte)
                        if w == level and cur.type in _CLAUSE_TAKERS:
                            owners.append(cur)
                            break
                        if w <= level:
                            # The statement at the clause's level is not a compound one: the clause
                            # attaches to the compound statement just before it (the cursor's line
                            # itself is being turned into the clause).
                            prev = cur.prev_named_sibling
                            while prev is not None and is_comment_type(prev.type):
                                prev = prev.prev_named_sibling
                            if prev is not None and prev.type in _CLAUSE_TAKERS and \
                                    self._line_indent_at_byte(prev.start_byte) == level:
                                owners.append(prev)
                            break
                    cur = cur.parent
        if self.next_code >= 0:
            node = self._leaf_at(self.next_code)
            while node is not None and node.type not in _DEFINITIONS and node.type != "module":
                if node.type in _CLAUSES and node.parent is not None and \
                        node.parent.start_byte < self.cursor_b:
                    owners.append(node.parent)
                    break
                node = node.parent
        owners.extend(self._following_owners)
        if not owners:
            return None
        return min(owners, key=lambda n: n.start_byte)

    def _compound_header(self, compound: tree_sitter.Node, base: Optional[tree_sitter.Node]) -> Optional[str]:
        """Header line(s) of a compound statement, to stand in for it in a window, or None when that
        would misrepresent it (the code before the cursor is in its else/finally clause, the body
        shares the header's line, or the statement before the cursor is outside it)."""
        if base is None or not (compound.start_byte <= base.start_byte < compound.end_byte):
            return None
        node = base
        while node is not None and node.parent is not None and node.parent != compound:
            node = node.parent
        if node is None or node.type in ("else_clause", "finally_clause"):
            return None
        body = None
        for child in compound.children:
            if child.type == "block":
                body = child
                break
        if body is None or body.start_byte > base.start_byte:
            return None
        b0 = self.to_char(body.start_byte)
        nl = self.text.rfind("\n", 0, b0)
        c0 = self.to_char(compound.start_byte)
        ls = self.text.rfind("\n", 0, c0) + 1
        if nl < c0:
            return None
        return self.text[ls:nl + 1]

    def _descend(self, node: tree_sitter.Node) -> tree_sitter.Node:
        """Bound a statement after the cursor: a large compound statement is represented by its
        first body statement (a prefix of it parses the same way)."""
        for _ in range(32):
            if node.end_point.row - node.start_point.row <= _BODY_DESCENT_LINES:
                return node
            body = None
            for child in node.children:
                if child.type == "block" and child.start_byte >= self.cursor_b:
                    body = child
                    break
            if body is None or body.named_child_count == 0:
                return node
            first = body.named_children[0]
            if first.end_byte <= self.cursor_b:
                return node
            node = first
        return node

    def _lex_start(self) -> int:
        """A str index before the cursor where lexing can start in a clean state."""
        if self.stmt_before is not None:
            a = self.to_char(self.stmt_before.start_byte)
            return self.text.rfind("\n", 0, a) + 1
        return self.line_start

    # -- derived facts ------------------------------------------------------------------------------------

    @property
    def in_identifier(self) -> bool:
        t = self.text
        o = self.offset
        return 0 < o < len(t) and bool(_IDENT_RE.match(t[o - 1])) and bool(_IDENT_RE.match(t[o]))

    def definition_region(self, max_chars: int) -> Optional[Window]:
        """The whole definition the cursor is in (`enclosing_definition`), from its header line to the
        next statement at its level or above - skipping what error recovery left behind it (ERROR nodes,
        lines indented deeper than its header), which still belongs to it - with stand-in headers for the
        levels enclosing it, as a standalone piece of Python. None outside a definition or when it is
        longer than `max_chars`."""
        if not self.python or self.tree is None:
            return None
        d = self.enclosing_definition(None)
        if d is None:
            return None
        node, _, def_indent = d
        text = self.text
        a = text.rfind("\n", 0, self.to_char(node.start_byte)) + 1
        outer = node.parent if node.parent is not None and node.parent.type == "decorated_definition" else node
        b = None
        sib = outer.next_sibling
        while sib is not None:
            if sib.type not in ("ERROR", "comment") and sib.start_byte >= self.cursor_b and \
                    self._line_indent_at_byte(sib.start_byte) <= def_indent:
                b = text.rfind("\n", 0, self.to_char(sib.start_byte)) + 1
                break
            sib = sib.next_sibling
        if b is None:
            parent = outer.parent
            b = self.to_char(parent.end_byte) if parent is not None else len(text)
            nl = text.find("\n", b)
            b = len(text) if nl < 0 else nl + 1
        b = max(b, self.offset)
        if b - a > max_chars:
            return None
        ws_at: dict[int, str] = {0: ""}
        parent = node.parent
        while parent is not None:
            ci = self.to_char(parent.start_byte)
            ls = text.rfind("\n", 0, ci) + 1
            if text[ls:ci].strip() == "":
                ws_at.setdefault(indent_width(text[ls:ci]), text[ls:ci])
            parent = parent.parent
        head = "".join(ws_at[w] + _STAND_IN for w in sorted(ws_at) if w < def_indent)
        return Window(a, b, tuple(sorted(ws_at)), False, head)

    def enclosing_definition(self, first_indent: Optional[int]) -> Optional[tuple[tree_sitter.Node, str, int]]:
        """The definition the insertion belongs to: the outermost function containing the code before
        the cursor (or, without one, the innermost class). With `first_indent` (the insertion starts
        a new line at that indentation), only definitions whose header is less indented count."""
        cands = [d for d in self.defs if first_indent is None or d[2] < first_indent]
        for d in cands:
            if d[1] == "function":
                return d
        classes = [d for d in cands if d[1] == "class"]
        return classes[-1] if classes else None


def _ancestor(node: Optional[tree_sitter.Node], pred) -> Optional[tree_sitter.Node]:
    depth = 0
    while node is not None and depth < 6:
        if pred(node.type):
            return node
        node = node.parent
        depth += 1
    return None


def _closed_block_comment(cnode: tree_sitter.Node, offset: int, ctx: CursorContext) -> bool:
    """The cursor is right after a comment that has a closing delimiter (`/* .. */|`)."""
    if cnode.end_byte != ctx.to_byte(offset):
        return False
    bc = ctx.syntax.block_comment
    if bc is None:
        return False
    start = ctx.to_char(cnode.start_byte)
    body = ctx.text[start:offset]
    return body.startswith(bc[0]) and body.endswith(bc[1]) and len(body) >= len(bc[0]) + len(bc[1])


def _captures(query: tree_sitter.Query, root: tree_sitter.Node, b: int, name: str) -> list[tree_sitter.Node]:
    qc = tree_sitter.QueryCursor(query)
    qc.set_byte_range(b, b + 1)
    return qc.captures(root).get(name, [])


def _smallest(query: tree_sitter.Query, root: tree_sitter.Node, b: int, name: str) -> Optional[tree_sitter.Node]:
    best = None
    for node in _captures(query, root, b, name):
        if node.start_byte <= b < node.end_byte:
            if best is None or (node.end_byte - node.start_byte) < (best.end_byte - best.start_byte):
                best = node
    return best


def _newline_style(text: str, offset: int) -> str:
    """The document's line ending, judged near the cursor ("\\r\\n" when most lines use it)."""
    lo = max(0, offset - 4000)
    sample = text[lo: offset + 4000]
    n = sample.count("\n")
    if n == 0:
        n = text.count("\n")
        sample = text
    crlf = sample.count("\r\n")
    return "\r\n" if n and crlf * 2 > n else "\n"


_INDENT_RE = re.compile(r"\n([ \t]+)(?=\S)")


def _indent_unit(text: str, line_start: int) -> str:
    """Indentation unit near the cursor: "\\t" when tabs dominate, else the most common step."""
    lo = line_start
    for _ in range(_STYLE_LINES // 2):
        p = text.rfind("\n", 0, lo - 1) if lo > 0 else -1
        if p < 0:
            lo = 0
            break
        lo = p + 1
    hi = line_start
    for _ in range(_STYLE_LINES // 2):
        p = text.find("\n", hi + 1)
        if p < 0:
            hi = len(text)
            break
        hi = p
    # "\n" + indentation before a non-blank character (lo is a line start: the newline before it counts).
    indents = _INDENT_RE.findall(text, lo - 1, hi) if lo > 0 else _INDENT_RE.findall("\n" + text[:hi])
    if not indents:
        return "    "
    tabs = sum(1 for s in indents if s[0] == "\t")
    spaces = len(indents) - tabs
    if tabs > spaces:
        return "\t"
    widths = [len(s) for s in indents if s[0] == " " and "\t" not in s]
    unit = min(widths) if widths else 4
    return " " * (unit if unit in (2, 3, 4, 8) else 4)
