"""The replayed session's editor model (benchmarks/autoclose.py): what VS Code's auto-closing makes of each key,
and that typing a text through it always ends with exactly that text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ac():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import autoclose
        return autoclose
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def type_lines(ac, before: str, lines: list[str], after: str, *, trace: bool = False):
    """Type `lines` (each after Enter and its indentation) at the end of `before`, as the replay does; returns the
    final document, the documents the server saw after each key (with a | at the cursor) and the moves."""
    doc, cur = before + after, len(before)
    editor = ac.AutoClose.at(doc, cur)
    seen, moves = [], 0
    for line in lines:
        indent = line[: len(line) - len(line.lstrip(" "))]
        pieces = ["\n" + indent] + list(line[len(indent):])
        for j, piece in enumerate(pieces):
            e = editor.key(piece, doc[cur + len(editor.tail):], "".join(pieces[j:]))
            moves += e.move_only
            assert e.typed == piece
            doc = doc[:cur] + e.insert + doc[cur + e.replace:]
            cur += e.advance
            seen.append(doc[:cur] + "|" + doc[cur:])
    left = editor.leftover()
    assert doc[cur:cur + len(left)] == left
    return doc[:cur] + doc[cur + len(left):], seen, moves


def test_brackets_close_and_are_typed_over(ac):
    doc, seen, _ = type_lines(ac, "x = 1", ["y = f(a[0])"], "\n")
    assert doc == "x = 1\ny = f(a[0])\n"
    assert "x = 1\ny = f(|)\n" in seen
    assert "x = 1\ny = f(a[|])\n" in seen
    assert "x = 1\ny = f(a[0]|)\n" in seen  # `]` typed over: no second bracket


def test_enter_between_brackets_puts_the_closer_on_its_own_line(ac):
    doc, seen, moves = type_lines(ac, "", ["def chop(", "    text: str,", ") -> list[str]:"], "\n")
    assert doc == "\ndef chop(\n    text: str,\n) -> list[str]:\n"
    assert "\ndef chop(\n    |\n)\n" in seen
    assert "\ndef chop(\n    text: str,|\n)\n" in seen
    assert moves == 1  # down to the `)` line instead of typing a second one


def test_docstring_quotes_are_closed_and_stepped_over(ac):
    doc, seen, moves = type_lines(ac, "def f():", ['    """Split text.', "", "    Args:", '    """'], "\n")
    assert doc == 'def f():\n    """Split text.\n\n    Args:\n    """\n'
    assert 'def f():\n    """|"""\n' in seen
    assert 'def f():\n    """Split text.|"""\n' in seen
    assert 'def f():\n    """Split text.\n\n    Args:|"""\n' in seen
    assert moves == 3


def test_quotes_in_strings_comments_and_after_words_stay_single(ac):
    doc, seen, _ = type_lines(ac, "def f():", ['    """Say "hi" it\'s', '    """', "    x = it's  # don't"], "\n")
    assert doc == 'def f():\n    """Say "hi" it\'s\n    """\n    x = it\'s  # don\'t\n'
    assert not any('"hi""' in s for s in seen)
    assert not any("don''" in s for s in seen)


def test_string_prefixes_close_like_quotes(ac):
    doc, seen, _ = type_lines(ac, "", ["s = f'{x}'"], "\n")
    assert doc == "\ns = f'{x}'\n"
    assert "\ns = f'|'\n" in seen
    assert "\ns = f'{|'\n" in seen  # `{` before a quote is not closed (VS Code's autoCloseBefore)


def test_no_closing_before_a_word(ac):
    e = ac.AutoClose().key("(", "b\n")
    assert (e.insert, e.advance) == ("(", 1)
    e = ac.AutoClose().key("(", "\n")
    assert (e.insert, e.advance) == ("()", 1)


_code = st.lists(st.sampled_from(list("()[]{}\"'#abc xf:=,.\\")), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(st.integers(0, 2), _code), min_size=1, max_size=5))
def test_typing_through_the_editor_gives_the_text(ac, lines):
    target = ["    " * depth + code for depth, code in lines]
    doc, _, _ = type_lines(ac, "def f():\n    pass", target, "\nz = 1\n")
    assert doc == "def f():\n    pass" + "".join("\n" + x for x in target) + "\nz = 1\n"


def test_plain_inserts_every_key(ac):
    e = ac.Plain().key("(", ")")
    assert (e.insert, e.replace, e.advance, e.move_only) == ("(", 0, 1, False)
