"""A parsed open document, kept up to date incrementally (``Tree.edit`` + reparse with the old tree).

Offsets in the public API are Python ``str`` indices (code points). Tree-sitter works in UTF-8 bytes
and (row, byte column) points; the helpers here convert between the two.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

import tree_sitter

from .registry import Language

logger = logging.getLogger(__name__)

_ENC = "utf-8"
_ERRORS = "surrogatepass"  # lone surrogates (from UTF-16 clients) must not crash the encoder


def encode(text: str) -> bytes:
    return text.encode(_ENC, _ERRORS)


def utf8_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode(_ENC, _ERRORS))


def byte_offset(text: str, index: int) -> int:
    """UTF-8 byte offset of the str index `index` in `text`."""
    if text.isascii():
        return index
    return utf8_len(text[:index])


def char_offset(data: bytes, offset: int) -> int:
    """str index of the UTF-8 byte offset `offset` in `data` (rounded down to a character boundary)."""
    if offset <= 0:
        return 0
    head = data[:offset]
    if head.isascii():
        return len(head)
    try:
        return len(head.decode(_ENC, _ERRORS))
    except UnicodeDecodeError:  # offset inside a multi-byte sequence
        return len(head.decode(_ENC, "ignore"))


def point_at(text: str, index: int) -> tuple[int, int]:
    """tree-sitter point (row, byte column) of a str index."""
    row = text.count("\n", 0, index)
    line_start = text.rfind("\n", 0, index) + 1
    return row, utf8_len(text[line_start:index])


def _end_point(start: tuple[int, int], inserted: str) -> tuple[int, int]:
    rows = inserted.count("\n")
    if rows == 0:
        return start[0], start[1] + utf8_len(inserted)
    return start[0] + rows, utf8_len(inserted[inserted.rfind("\n") + 1:])


def edit_tree(tree: tree_sitter.Tree, text: str, start: int, end: int, new_text: str) -> None:
    """Apply the edit text[start:end] -> new_text to `tree` (in place), in str indices of `text`."""
    start_b = byte_offset(text, start)
    old_end_b = start_b + utf8_len(text[start:end])
    start_pt = point_at(text, start)
    old_end_pt = _end_point(start_pt, text[start:end])
    new_end_pt = _end_point(start_pt, new_text)
    tree.edit(
        start_byte=start_b,
        old_end_byte=old_end_b,
        new_end_byte=start_b + utf8_len(new_text),
        start_point=start_pt,
        old_end_point=old_end_pt,
        new_end_point=new_end_pt,
    )


class ParsedDocument:
    """The text and tree-sitter tree of one open document.

    `apply_edit` edits the tree and reparses with the old tree, so an edit costs far less than a
    full parse. Thread-safe: edits and reads of (text, tree) pairs are serialised by a lock;
    `snapshot()` returns a consistent pair.
    """

    def __init__(self, text: str, language: Language):
        self._language = language
        self._parser = language.new_parser()
        self._lock = threading.RLock()
        self._text = text
        self._bytes = encode(text)
        self._tree = self._parser.parse(self._bytes)
        self._version = 0

    @property
    def language(self) -> Language:
        return self._language

    @property
    def text(self) -> str:
        return self._text

    @property
    def tree(self) -> tree_sitter.Tree:
        return self._tree

    @property
    def source_bytes(self) -> bytes:
        return self._bytes

    @property
    def version(self) -> int:
        """Incremented by every edit."""
        return self._version

    def snapshot(self) -> tuple[str, tree_sitter.Tree]:
        with self._lock:
            return self._text, self._tree

    def apply_edit(self, start: int, end: int, new_text: str) -> None:
        """Replace text[start:end] (str indices) with `new_text` and reparse incrementally."""
        with self._lock:
            text = self._text
            if not 0 <= start <= end <= len(text):
                raise ValueError(f"edit range {start}:{end} outside the document (length {len(text)})")
            tree = self._tree
            edit_tree(tree, text, start, end, new_text)
            new = text[:start] + new_text + text[end:]
            new_bytes = encode(new)
            self._tree = self._parser.parse(new_bytes, tree)
            self._text = new
            self._bytes = new_bytes
            self._version += 1

    def replace(self, text: str) -> None:
        """Replace the whole text (a full-document sync): parsed from scratch."""
        with self._lock:
            self._text = text
            self._bytes = encode(text)
            self._tree = self._parser.parse(self._bytes)
            self._version += 1

    def offset_at(self, line: int, character: int, *, encoding: str = "utf-16") -> int:
        """str index of an LSP position (`character` counted in `encoding` code units)."""
        text = self._text
        pos = 0
        for _ in range(line):
            nl = text.find("\n", pos)
            if nl < 0:
                return len(text)
            pos = nl + 1
        nl = text.find("\n", pos)
        line_text = text[pos: nl if nl >= 0 else len(text)]
        if encoding == "utf-32" or line_text.isascii():
            return pos + min(character, len(line_text))
        units = 0
        for i, ch in enumerate(line_text):
            if units >= character:
                return pos + i
            if encoding == "utf-16":
                units += 2 if ord(ch) > 0xFFFF else 1
            else:
                units += utf8_len(ch)
        return pos + len(line_text)

    def with_insertion(self, offset: int, inserted: str) -> tuple[bytes, tree_sitter.Tree]:
        """Bytes and tree of the document with `inserted` at `offset`, reusing the current tree
        (copied, edited, reparsed); the document itself is unchanged."""
        text, tree = self.snapshot()
        return insertion_parse(self._parser, text, tree, offset, inserted)


def insertion_parse(
    parser: tree_sitter.Parser,
    text: str,
    tree: Optional[tree_sitter.Tree],
    offset: int,
    inserted: str,
    text_bytes: Optional[bytes] = None,
) -> tuple[bytes, tree_sitter.Tree]:
    """Parse text[:offset] + inserted + text[offset:], incrementally from `tree` when given."""
    if text_bytes is None:
        text_bytes = encode(text)
    b = byte_offset(text, offset)
    new_bytes = text_bytes[:b] + encode(inserted) + text_bytes[b:]
    if tree is None:
        return new_bytes, parser.parse(new_bytes)
    copy = tree.copy()
    edit_tree(copy, text, offset, offset, inserted)
    return new_bytes, parser.parse(new_bytes, copy)
