"""What an editor with auto-closing does to the document while a developer types (for the replayed session).

VS Code closes brackets and quotes as they are typed (`editor.autoClosingBrackets` and `autoClosingQuotes`,
"languageDefined", on by default), types over a closer it inserted itself, splits `(|)` over three lines on
Enter, and with Pylance (the Python extension's default) closes a docstring's `\"\"\"`. So while a line is typed,
the text after the cursor is usually balanced: `foo(|)`, `"|"`, `\"\"\"|\"\"\"`. A replay that types character by
character without this shows the server documents no editor user has (an unclosed string running to the end of
the file, a bracket that never closes), and the suggestions judged against them are not the ones users see.

`AutoClose` keeps what the editor inserted after the cursor (`tail`) and turns each key of the text to type into
an `Edit`: text inserted at the cursor, characters of the tail typed over, and how far the cursor moves. Typing
the target text through it, then deleting what is left of the tail (`leftover`), gives exactly the target text.

The rules follow VS Code's defaults for Python:
- `(`, `[`, `{` close when the character after the cursor is whitespace, the end of the line, or one of
  `;:.,=}])>` (`autoCloseBefore`); in strings too (the language's pairs have no `notIn` for brackets);
- `"` and `'` close in code only (not in a string or comment), not after a word character unless that word is
  a string prefix (`f`, `r`, `b`, `rb`, ...), with the same rule for the character after;
- a closer (or quote) typed where the editor's own closer is next is typed over;
- Enter right after an opener whose closer is next puts the closer on its own line at the opener line's
  indentation, the cursor on the indented line between;
- the third `"` of `\"\"\"` in code gives `\"\"\"|\"\"\"` (Pylance's docstring closing);
- Enter plus indentation that matches the start of the tail (the closer line below) is a cursor move (the user
  goes down to the closer instead of typing a second one), and so are a docstring's closing quotes that the
  editor wrote (the user steps past them): no edit, no request.
"""

from __future__ import annotations

from dataclasses import dataclass

from intarsia.grammars.lexer import LexState, Lexer
from intarsia.grammars.registry import get_language

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSE_BEFORE = set(";:.,=}])> \t\n")
TRIPLE = "\"\"\""
STRING_PREFIXES = {"r", "u", "b", "f", "br", "rb", "fr", "rf"}


@dataclass(frozen=True)
class Edit:
    insert: str  # text inserted at the cursor
    replace: int  # characters right after the cursor that `insert` replaces (typed over)
    advance: int  # how far the cursor moves
    typed: str  # what the developer typed (for the prediction statistics)
    move_only: bool = False  # no change to the document: the cursor moved


class AutoClose:
    """One hunk being typed: `state` is the lexer state where typing starts (code, or inside a string)."""

    def __init__(self, state: LexState = LexState()):
        self._lexer = Lexer.for_syntax(get_language("python").syntax)
        self._state0 = state
        self.typed = ""  # the document's text from where typing started to the cursor
        self.tail = ""  # what the editor inserted after the cursor and the developer has not typed over
        self._step = 0  # closing quotes of a docstring still to step over

    @classmethod
    def at(cls, text: str, offset: int) -> "AutoClose":
        lexer = Lexer.for_syntax(get_language("python").syntax)
        return cls(lexer.scan(text[:offset]).end_state)

    def _in_string_or_comment(self, typed: str) -> bool:
        st = self._lexer.scan(typed, self._state0).end_state
        return st.string is not None or st.line_comment

    def key(self, piece: str, after: str, ahead: str = "") -> Edit:
        """The edit for typing `piece` (one key, or Enter with its indentation); `after` is the document's text
        after the tail (what follows the cursor when the tail is empty), `ahead` the rest of the line the
        developer is about to type, `piece` first (a docstring's closing quotes are not typed but stepped over)."""
        nxt = (self.tail or after)[:1]
        if self._step > 0 or (piece == "\"" and self.tail.startswith(TRIPLE) and ahead.startswith(TRIPLE)):
            self._step = (self._step or 3) - 1  # End: past the docstring's closing quotes the editor wrote
            return self._move(piece)
        if self.tail.startswith(piece) and piece.startswith("\n"):
            return self._move(piece)  # down to the closer's line instead of a second closer
        if self.tail.startswith(piece) and piece in ")]}\"'" and not self.tail.startswith(TRIPLE):
            self.tail = self.tail[1:]  # typed over the editor's own closer
            self.typed += piece
            return Edit(piece, 1, 1, piece)
        if piece in OPENERS:
            if not nxt or nxt in CLOSE_BEFORE:
                return self._insert(piece, OPENERS[piece])
            return self._insert(piece, "")
        if piece in ("\"", "'"):
            return self._quote(piece, nxt)
        if piece.startswith("\n") and self.typed[-1:] in OPENERS and self.tail.startswith(OPENERS[self.typed[-1]]):
            line = self.typed[self.typed.rfind("\n") + 1:]
            base = line[:len(line) - len(line.lstrip(" \t"))]
            return self._insert(piece, "\n" + base)
        return self._insert(piece, "")

    def _move(self, piece: str) -> Edit:
        self.tail = self.tail[len(piece):]
        self.typed += piece
        return Edit("", 0, len(piece), piece, move_only=True)

    def _quote(self, q: str, nxt: str) -> Edit:
        typed = self.typed
        if q == "\"" and typed.endswith("\"\"") and not self._in_string_or_comment(typed[:-2]) \
                and not self._in_string_or_comment(typed):
            return self._insert(q, TRIPLE)  # the docstring opener: \"\"\"|\"\"\"
        if self._in_string_or_comment(typed):
            return self._insert(q, "")
        word = len(typed) - len(typed.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"))
        if word and typed[-word:].lower() not in STRING_PREFIXES:
            return self._insert(q, "")
        if nxt and nxt not in CLOSE_BEFORE:
            return self._insert(q, "")
        return self._insert(q, q)

    def _insert(self, piece: str, close: str) -> Edit:
        self.typed += piece
        self.tail = close + self.tail
        return Edit(piece + close, 0, len(piece), piece)

    def leftover(self) -> str:
        """What the editor inserted that the target text does not have (deleted when the hunk is done)."""
        out, self.tail = self.tail, ""
        return out


class Plain:
    """No auto-closing: every key is inserted as typed."""

    tail = ""

    def key(self, piece: str, after: str, ahead: str = "") -> Edit:
        return Edit(piece, 0, len(piece), piece)

    def leftover(self) -> str:
        return ""
