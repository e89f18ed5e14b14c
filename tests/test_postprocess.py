"""Hand-written cases for each post-processing rule."""

from __future__ import annotations

import dataclasses

import pytest

from intarsia.grammars import (
    ParsedDocument,
    PostResult,
    Scope,
    choose,
    completion_scope,
    cursor_context,
    get_language,
    postprocess,
    scope_for_context,
)
from intarsia.grammars.validate import compile_error

PY = get_language("python")


def at(marked: str) -> tuple[str, int]:
    i = marked.index("|")
    return marked[:i] + marked[i + 1:], i


def run(marked: str, completion: str, scope: Scope | None = None, language=PY, **kw) -> PostResult:
    text, off = at(marked)
    if scope is None:
        scope = completion_scope(text, off, language, invoked=True).scope
    return postprocess(text, off, completion, language=language, scope=scope, **kw)


def errors_after(marked: str, inserted: str, language=PY) -> bool:
    text, off = at(marked)
    new = text[:off] + inserted + text[off:]
    return language.new_parser().parse(new.encode("utf-8")).root_node.has_error


# -- results ----------------------------------------------------------------------------------------------


def test_valid_completion_is_kept_as_generated():
    r = run("def f(x):\n    y = x * 2\n|    return y\n", "    y += 1\n")
    assert r.valid and r.text == "    y += 1\n"
    assert r.rules == () and r.removed == () and not r.changed
    assert r.reason == "valid as generated"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.text = ""  # type: ignore[misc]


def test_scope_none_gives_no_suggestion():
    r = run("def f(x):\n    retu|rn x\n", "rn", scope=Scope.NONE)
    assert r.text == "" and not r.valid and "scope none" in r.reason


def test_empty_completion():
    r = run("x = |\n", "")
    assert r.text == "" and not r.valid


# -- unclosed / extra brackets ----------------------------------------------------------------------------


def test_unclosed_bracket_is_truncated_to_complete_statements():
    marked = "def f(x):\n    y = 1\n|    return y\n"
    r = run(marked, "    z = 2\n    w = foo(1,\n")
    assert r.valid and r.text == "    z = 2\n"
    assert "syntax-truncate" in r.rules
    assert not errors_after(marked, r.text)


def test_completion_that_never_closes_gives_nothing():
    r = run("x = |\n", "foo(1, [2,", scope=Scope.LINE)
    assert r.text == "" and not r.valid


def test_closing_bracket_already_after_the_cursor_is_not_repeated():
    r = run("def f(x):\n    y = foo(|)\n    return y\n", "a, b)")
    assert r.text == "a, b" and "closing-overlap" in r.rules


def test_extra_closing_bracket_is_cut():
    marked = "def f(x):\n    y = foo(bar(|)\n    return y\n"
    r = run(marked, "1), 2))")
    # "1)" closes bar(, ", 2" is an argument of foo(, whose ")" is already after the cursor.
    assert r.text == "1), 2" and "closing-bracket" in r.rules
    assert r.removed[-1].text == "))"
    assert not errors_after(marked, r.text)


def test_nested_closer_that_is_needed_is_kept():
    r = run("print(f(g(|))\n", "x)")
    # f(g(x)) + ")" closes print( - all three closers are needed.
    assert r.text == "x)"


def test_quote_already_after_the_cursor():
    r = run("x = 'hel|'\n", "lo'")
    assert r.text == "lo"


# -- overlap with the text after the cursor ----------------------------------------------------------------


def test_duplicated_suffix_line_is_removed():
    marked = "def f(x):\n    y = x\n|    return y\n"
    r = run(marked, "    y += 1\n    return y\n")
    assert r.text == "    y += 1\n"
    assert "suffix-overlap" in r.rules
    assert r.removed[0].rule == "suffix-overlap" and r.removed[0].text == "    return y\n"


def test_duplicated_suffix_lines_after_blank_lines_and_unfinished_line():
    marked = "def f(x):\n    y = x\n|\n    z = y * 2\n    return z\n"
    r = run(marked, "    y += 1\n\n    z = y * 2\n    retu")
    assert r.text == "    y += 1\n"


def test_rest_of_line_and_next_line_rewritten_mid_line():
    r = run("def f(x):\n    y = foo(|)\n    return y\n", "a, b)\n    return y\n")
    assert r.text == "a, b"


def test_whole_completion_repeating_the_suffix_gives_nothing():
    r = run("def f(x):\n|    return x\n", "    return x\n")
    assert r.text == "" and not r.valid


def test_a_single_identical_line_is_not_mistaken_for_overlap_mid_line():
    # The completion's own "return 'No'" matches a later suffix line by coincidence.
    marked = "def f(lst):\n    suf = ['t|'\n    if lst:\n        return 'No'\n"
    text, off = at(marked)
    r = postprocess(text, off, "xt', 'd']\n    if not lst:\n        return 'No'\n", language=PY, scope=Scope.LINE)
    assert "suffix-overlap" not in r.rules


# -- block end --------------------------------------------------------------------------------------------


def test_top_level_code_after_a_function_body_is_cut():
    marked = "def f(x):\n    y = x * 2\n|"
    r = run(marked, "    return y\n\n\nprint(f(2))\nf(3)\n")
    assert r.text == "    return y\n"
    assert "block-end" in r.rules


def test_new_function_after_the_body_is_cut_mid_file():
    marked = "def f(x):\n    y = x * 2\n|\n\ndef g():\n    pass\n"
    r = run(marked, "    return y\n\n\ndef h():\n    return 3\n")
    assert r.text == "    return y\n"


def test_dedent_to_the_enclosing_function_body_is_allowed():
    marked = "def f(xs):\n    total = 0\n    for x in xs:\n|"
    r = run(marked, "        total += x\n    return total\nprint(1)\n")
    assert r.text == "        total += x\n    return total\n"


def test_leaving_a_nested_function_for_the_outer_body_is_allowed():
    marked = "def f(n):\n    def is_odd(k):\n|\n"
    r = run(marked, "        return k % 2\n    return [k for k in range(n) if is_odd(k)]\n")
    assert r.text == "        return k % 2\n    return [k for k in range(n) if is_odd(k)]\n"


def test_method_completion_stops_at_the_next_method():
    marked = "class C:\n    def a(self):\n|"
    r = run(marked, "        return 1\n\n    def b(self):\n        return 2\n")
    assert r.text == "        return 1\n"


def test_module_level_definition_is_kept_whole_and_alone():
    marked = "import os\n\n|"
    r = run(marked, "def f():\n    return os.sep\n\n\ndef g():\n    return 1\n")
    assert r.text == "def f():\n    return os.sep\n"
    assert "single-definition" in r.rules


def test_unreachable_code_after_return_is_dropped():
    marked = "def f(x):\n    if x:\n|    return 0\n"
    r = run(marked, "        return 1\n        print('never')\n")
    assert r.text == "        return 1\n"
    assert "unreachable" in r.rules


def test_code_after_return_that_returns_to_an_outer_level_is_kept():
    marked = "def f(xs):\n    for x in xs:\n|    return 0\n"
    completion = "        if x:\n            return x\n            break\n    else:\n        return -1\n"
    r = run(marked, completion)
    assert r.text == completion


def test_wrong_indentation_is_cut():
    marked = "def f(x):\n    y = 1\n|    return y\n"
    r = run(marked, "    y += 1\n  print(y)\n")
    assert r.text == "    y += 1\n"
    r = run(marked, "    y += 1\n            print(y)\n")
    assert r.text == "    y += 1\n"


def test_header_without_body_is_not_a_complete_statement():
    marked = "def f(x):\n|    return x\n"
    r = run(marked, "    if x:\n")
    assert r.text == ""
    r = run(marked, "    if x:\n        x += 1\n")
    assert r.text == "    if x:\n        x += 1\n"


def test_else_clause_inserted_before_its_body():
    marked = "def f(x):\n    if x:\n        y = 1\n|        y = 2\n    return y\n"
    r = run(marked, "    else:\n")
    assert r.valid and r.text == "    else:\n"


def test_stray_else_is_rejected():
    r = run("def f(x):\n    y = 1\n|    return y\n", "    else:\n        y = 2\n")
    assert r.text == ""


# -- scope line -------------------------------------------------------------------------------------------


def test_line_scope_keeps_the_first_line():
    r = run("def f(x):\n    y = |\n    return y\n", "x + 1\n    z = 2\n")
    assert r.text == "x + 1" and "scope-line" in r.rules


def test_line_scope_extends_when_one_line_cannot_be_valid():
    # Cut by the token limit: the shortest valid extension.
    r = run("def f(x):\n    y = foo(|\n", "1,\n            2)\n    return y\n    z", scope=Scope.LINE,
            truncated=True)
    assert r.text == "1,\n            2)"
    # Ended by the model itself: all of it, when valid.
    r = run("def f(x):\n    y = foo(|\n", "1,\n            2)\n    return y\n", scope=Scope.LINE)
    assert r.text == "1,\n            2)\n    return y"
    r = run("def f(x):\n    y = foo(|\n", "1,\n            2)\n  return y\n", scope=Scope.LINE)
    assert r.text == "1,\n            2)"


def test_mid_line_fill_may_end_mid_line_and_span_lines():
    marked = "def f(xs):\n    for i, x in enu|(xs):\n        print(i)\n"
    r = run(marked, "merate")
    assert r.text == "merate"
    marked = "def f(xs):\n    for i, x in|(xs):\n        print(x)\n"
    r = run(marked, " enumerate(xs):\n        print(i)\n    for j, y in enumerate")
    assert r.text == " enumerate(xs):\n        print(i)\n    for j, y in enumerate"


# -- strings and comments ---------------------------------------------------------------------------------


def test_completion_inside_a_comment_stays_in_the_comment():
    marked = "def f(x):\n    # compute the |\n    return x\n"
    r = run(marked, "answer\n    y = 2\n")
    assert r.text == "answer"
    assert not errors_after(marked, r.text)


def test_completion_inside_a_docstring_does_not_close_it_early():
    marked = 'def f(x):\n    """Return the |\n    """\n    return x\n'
    r = run(marked, 'doubled value."""\n    return 2 * x\n')
    assert r.text == "doubled value."
    assert not errors_after(marked, r.text)


def test_completion_inside_a_string_literal():
    marked = "def f():\n    return 'hello, |'\n"
    r = run(marked, "world'\n")
    assert r.text == "world"


def test_hash_inside_a_string_is_not_a_comment():
    r = run("def f():\n    s = '#|'\n    return s\n", "tag'")
    assert r.text == "tag"


# -- line endings, indentation style, unicode --------------------------------------------------------------


def test_crlf_document_gets_crlf_completion():
    marked = "def f(x):\r\n    y = x\r\n|    return y\r\n"
    r = run(marked, "    y += 1\n    y *= 2\n")
    assert r.text == "    y += 1\r\n    y *= 2\r\n"
    assert "newline-style" in r.rules
    assert not errors_after(marked, r.text)


def test_crlf_document_duplicate_and_block_end():
    marked = "def f(x):\r\n    y = x\r\n|    return y\r\n"
    r = run(marked, "    y += 1\r\n    return y\r\nprint(1)\r\n")
    assert r.text == "    y += 1\r\n"
    r = run("def f(x):\r\n    y = x\r\n|", "    return y\r\nprint(1)\r\n")
    assert r.text == "    return y\r\n"


def test_lf_completion_in_lf_document_unchanged_by_crlf_rule():
    r = run("def f(x):\n|    return x\n", "    x += 1\r\n")
    assert r.text == "    x += 1\n"


def test_tabs_document_spaces_completion():
    marked = "def f(x):\n\tif x:\n\t\ty = 1\n|\treturn y\n"
    r = run(marked, "        y += 1\n    z = 3\n")
    assert r.text == "\t\ty += 1\n\tz = 3\n"
    assert "indent-style" in r.rules
    assert not errors_after(marked, r.text)


def test_spaces_document_tabs_completion():
    marked = "def f(x):\n    if x:\n        y = 1\n|    return y\n"
    r = run(marked, "\t\ty += 1\n")
    assert r.text == "        y += 1\n"


def test_duplicated_indentation_after_the_cursor_is_fixed():
    marked = "def f(x):\n    y = 1\n    |\n    return y\n"
    r = run(marked, "    y += 1\n")
    assert r.text == "y += 1\n" or r.text == "y += 1"
    assert "reindent" in r.rules


def test_repeated_indentation_right_after_a_header_is_dropped():
    marked = "def f(x):\n    if x:\n        |\n    return x\n"
    r = run(marked, "        x += 1")
    assert r.text == "x += 1" and "reindent" in r.rules
    # A deeper first line that is not a repetition of the typed indentation is left alone.
    r = run(marked, "  x += 1")
    assert r.text == "  x += 1" and "reindent" not in r.rules


def test_unicode_offsets():
    marked = "def grüß(x):\n    s = 'ünïcødé 𝄞'\n    t = f(|)\n    return s\n"
    r = run(marked, "s, 'ß')")
    assert r.text == "s, 'ß'"
    assert not errors_after(marked, r.text)
    marked = "def f():\n    s = '𝄞𝄞'\n|    return s\n"
    r = run(marked, "    s += 'é'\n    return s\n")
    assert r.text == "    s += 'é'\n"


# -- documents already broken, no grammar, other languages ------------------------------------------------


def test_document_broken_elsewhere_still_gets_suggestions():
    marked = "def g(:\n    pass\n\n\ndef f(x):\n    y = x\n|    return y\n"
    text, _ = at(marked)
    assert PY.new_parser().parse(text.encode()).root_node.has_error
    r = run(marked, "    y += 1\n    return y\n")
    assert r.valid and r.text == "    y += 1\n"


def test_document_broken_at_the_cursor_gets_fixed():
    r = run("def f(x):\n    y = foo(|\n    return y\n", "x, 1)\n", scope=Scope.LINE)
    assert r.valid and r.text == "x, 1)"


def test_parsed_document_gives_the_same_result_as_a_fresh_parse():
    text, off = at("import os\n\ndef f(x):\n    y = os.path.join(x)\n|    return y\n")
    doc = ParsedDocument("", PY)
    doc.apply_edit(0, 0, text)
    a = postprocess(text, off, "    y += '/'\n    return y\n", language=PY, scope=Scope.BLOCK)
    b = postprocess(doc.text, off, "    y += '/'\n    return y\n", language=PY, scope=Scope.BLOCK, tree=doc)
    c = postprocess(text, off, "    y += '/'\n    return y\n", language=PY, scope=Scope.BLOCK, tree=doc.tree)
    assert a.text == b.text == c.text == "    y += '/'\n"


def test_stale_parsed_document_is_ignored():
    text, off = at("def f(x):\n|    return x\n")
    doc = ParsedDocument("something else entirely\n", PY)
    r = postprocess(text, off, "    x += 1\n", language=PY, scope=Scope.BLOCK, tree=doc)
    assert r.text == "    x += 1\n"


def test_context_built_for_the_scope_is_passed_to_postprocess():
    # The server flow: one cursor analysis, handed from the scope decision to post-processing explicitly.
    text, off = at("import os\n\ndef f(x):\n    y = os.path.join(x)\n|    return y\n")
    doc = ParsedDocument(text, PY)
    raw = "    y += '/'\n    return y\n"
    ctx = cursor_context(text, off, PY, doc)
    decision = scope_for_context(ctx, invoked=True)
    assert decision == completion_scope(text, off, PY, tree=doc, invoked=True)
    a = postprocess(text, off, raw, language=PY, scope=decision.scope, context=ctx)
    b = postprocess(text, off, raw, language=PY, scope=decision.scope, tree=doc)
    assert a == b and a.text == "    y += '/'\n"
    # An equal copy of the text is the same document; the tree argument is not needed with a context.
    assert postprocess((text + " ")[:-1], off, raw, language=PY, scope=decision.scope, context=ctx) == a
    c = choose(text, off, ["[[", raw], language=PY, scope=decision.scope, context=ctx)
    assert c.text == a.text


def test_context_for_another_cursor_is_refused():
    text, off = at("def f(x):\n|    return x\n")
    ctx = cursor_context(text, off, PY)
    with pytest.raises(ValueError, match="context"):
        postprocess(text, off + 1, "    x += 1\n", language=PY, scope=Scope.BLOCK, context=ctx)
    with pytest.raises(ValueError, match="context"):
        postprocess(text + "\n", off, "    x += 1\n", language=PY, scope=Scope.BLOCK, context=ctx)
    with pytest.raises(ValueError, match="context"):
        choose(text, off, ["    x += 1\n"], language=None, scope=Scope.BLOCK, context=ctx)


def test_no_grammar_falls_back_to_bracket_rules():
    r = run("let x = foo(|);\n", "a, b));", language=None)
    assert r.text == "a, b" and "heuristics" in r.reason
    r = run("let x = |\n", "foo(1, [2\n", language=None, scope=Scope.LINE)
    assert r.text == "" and not r.valid and "heuristics" in r.reason


def test_truncated_generation_drops_the_unfinished_line():
    marked = "def f(x):\n    y = x\n|    return y\n"
    r = run(marked, "    y += 1\n    self.retur", truncated=True)
    assert r.text == "    y += 1\n"
    assert r.removed[0].rule == "incomplete-last-line"
    r = run(marked, "    y += 1\n    self.retur")
    assert r.text == "    y += 1\n    self.retur\n"  # syntactically complete: kept without the flag


def test_javascript_block_end_and_brackets():
    js = get_language("javascript")
    if js is None:
        pytest.skip("javascript grammar not installed")
    r = run("function f(x) {\n  |\n}\n\nfunction g() {}\n", "return x + 1;\n}\n\nfunction h() {}\n", language=js)
    assert r.text == "return x + 1;"
    r = run("function f(x) {\n  const y = foo(|);\n}\n", "a, b);", language=js)
    assert r.text == "a, b"
    r = run("function f(x) {\n  |\n}\n", "if (x) {\n    return 1;\n", language=js)
    assert r.text == ""


def test_go_and_rust_completions():
    go = get_language("go")
    if go is None:
        pytest.skip("go grammar not installed")
    r = run("package main\n\nfunc f(x int) int {\n\t|\n}\n", "return x + 1\n}\n\nfunc main() {}\n", language=go)
    assert r.text == "return x + 1"
    rust = get_language("rust")
    r = run("fn f(x: &str) -> usize {\n    |\n}\n", "x.len()\n}\nfn main() {}\n", language=rust)
    assert r.text == "x.len()"


# -- choose -----------------------------------------------------------------------------------------------


def test_choose_returns_the_first_valid_candidate():
    text, off = at("def f(x):\n    y = foo(|)\n    return y\n")
    r = choose(text, off, ["1, (2", "x, 2", "x, 3"], language=PY, scope=Scope.LINE)
    assert r.valid and r.text == "x, 2"


def test_choose_with_nothing_valid():
    text, off = at("def f(x):\n    y = foo(|)\n    return y\n")
    r = choose(text, off, ["1, (2", "[[", "1, (2"], language=PY, scope=Scope.LINE)
    assert r.text == "" and not r.valid and "no valid candidate" in r.reason
    assert choose(text, off, [], language=PY, scope=Scope.LINE).text == ""


# -- HumanEval-style cases ---------------------------------------------------------------------------------


HE_PREFIX = (
    "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    '    """ Check if two numbers are closer than threshold. """\n'
    "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
    "            if idx != idx2:\n"
)
HE_MIDDLE = "                distance = abs(elem - elem2)\n"
HE_SUFFIX = "                if distance < threshold:\n                    return True\n\n    return False\n"


def test_single_line_infill_keeps_the_canonical_line():
    text, off = HE_PREFIX + HE_SUFFIX, len(HE_PREFIX)
    scope = completion_scope(text, off, PY).scope
    assert scope is Scope.BLOCK
    for completion in (HE_MIDDLE, HE_MIDDLE + "                if distance < threshold:\n",
                       HE_MIDDLE + "print('x')\n", HE_MIDDLE + "\n  print('x')\n"):
        r = postprocess(text, off, completion, language=PY, scope=scope)
        assert r.text == HE_MIDDLE, completion


def test_multi_line_infill_at_the_end_of_the_function():
    prefix = HE_PREFIX + HE_MIDDLE + "                if distance < threshold:\n"
    middle = "                    return True\n\n    return False\n"
    text, off = prefix, len(prefix)
    scope = completion_scope(text, off, PY).scope
    r = postprocess(text, off, middle + "\n\nif __name__ == '__main__':\n    print(1)\n", language=PY, scope=scope)
    assert r.text == middle


# -- inserting lines before existing code (the infilling benchmarks' shape) ----------------------------------


def test_completion_rejoining_the_code_after_a_rewritten_first_line_is_cut():
    # The model replaced "break" with its own line, then rewrote the existing lines after it.
    marked = ("def f(d):\n    for key in d:\n        if not isinstance(key, str):\n|"
              "            break\n        if key.isupper():\n            return 1\n    return 0\n")
    r = run(marked, "            return 0\n        if key.isupper():\n            return 1\n    return 0\n")
    assert r.valid and r.text == "            return 0\n"
    assert "suffix-overlap" in r.rules


def test_rejoining_needs_a_specific_line():
    # "else:" is no evidence of a repetition: the two-line completion stays.
    marked = "def f(x):\n    if x:\n|        y = 1\n    else:\n        y = 2\n    return y\n"
    r = run(marked, "        x += 1\n    else:\n        x = 0\n")
    assert "suffix-overlap" not in r.rules


def test_ending_that_would_make_the_code_after_the_cursor_dead_is_cut():
    marked = "def f(x, y):\n    if y % 2 == 0:\n|    if x == y:\n        return -1\n    return y - 1\n"
    r = run(marked, "        return y\n    return x - 1\n")
    assert r.valid and r.text == "        return y\n"
    assert "dead-suffix" in r.rules


def test_a_return_repeating_the_next_line_is_overlap_not_dead_code():
    r = run("def f(x):\n    y = x\n|    return y\n", "    y += 1\n    return y\n")
    assert r.text == "    y += 1\n" and "suffix-overlap" in r.rules and "dead-suffix" not in r.rules


def test_a_return_in_a_nested_block_keeps_the_code_after_it_alive():
    marked = "def f(xs):\n    t = 0\n|    return t\n"
    r = run(marked, "    for x in xs:\n        if x < 0:\n            return -1\n        t += x\n")
    assert r.text == "    for x in xs:\n        if x < 0:\n            return -1\n        t += x\n"
    assert "dead-suffix" not in r.rules


def test_body_line_waiting_for_its_header_must_be_mended():
    # The line after the cursor is indented as a body: a suggestion that leaves it "unexpected" does not fit.
    marked = "def f(s):\n    n = len(s)\n|        return False\n    return n > 1\n"
    r = run(marked, "    return True\n")
    assert r.text == "" and not r.valid
    r = run(marked, "    if n < 2:\n")
    assert r.valid and r.text == "    if n < 2:\n"


def test_header_typed_inside_auto_closed_brackets_above_its_old_body():
    # A signature retyped above the body it keeps, with the editor's auto-closed ")" after the cursor: the colon
    # can only come after that ")", so the header stays broken whatever is inserted; the arguments still fit.
    marked = "x = 1\ndef divide_line(te|)\n    cells = cell_len\n    return cells\n"
    r = run(marked, "xt: str, width: int) -> list[int]:\n", scope=Scope.LINE)
    assert r.valid and r.text == "xt: str, width: int"
    r = run("def f(x):\n    if foo(x, |)\n        return 1\n", "y):\n", scope=Scope.LINE)
    assert r.valid and r.text == "y"
    # Still judged: a candidate adding an error of its own or lines, a text without closers after the cursor.
    assert not run("def f(x):\n    if foo(x, |)\n        return 1\n", "y, (", scope=Scope.LINE).valid
    assert run("def f(x):\n    if foo(x, |)\n        return 1\n", "y)\n    z = (", scope=Scope.BLOCK).text == "y"
    assert not run("def f(s):\n    n = len(s)\n|        return False\n", "    return True\n").valid
    assert not run("def f(x):\n    if foo(x, y|\n        return 1\n", "", scope=Scope.LINE).valid


def test_clause_after_the_window_is_checked_with_an_inserted_else():
    # An inserted else: would leave the existing "elif" after it without its if statement.
    marked = ("def f(v):\n    num = float(v)\n|        if num > 0:\n            r = 1\n        else:\n"
              "            r = 2\n    elif v:\n        r = 3\n    else:\n        r = 0\n    return r\n")
    r = run(marked, "    if num > 0:\n        return 1\n    else:\n")
    text, off = at(marked)
    if r.text:
        import ast
        ast.parse(text[:off] + r.text + text[off:])


def test_comment_dedented_to_the_definition_before_the_block_end_is_dropped():
    marked = "def f(x):\n    if x:\n|    return x\n"
    r = run(marked, "        x += 1\n\n# Test cases\nprint(f(1))\n")
    assert r.text == "        x += 1\n"


# -- CPython's parser has the last word on Python ----------------------------------------------------------


def compiles(marked: str, inserted: str) -> bool:
    import ast

    text, off = at(marked)
    try:
        ast.parse(text[:off] + inserted + text[off:])
    except SyntaxError:
        return False
    return True


def test_starred_operand_that_tree_sitter_accepts_is_refused():
    # tree-sitter-python takes `a**b == *a` as an expression with a list splat; CPython does not.
    marked = "def right(a, b, c):\n    return a*|*a + c*c or c*c == a*a + b*b\n"
    assert not errors_after(marked, "*b == ") and not compiles(marked, "*b == ")
    r = run(marked, "*b == ")
    assert r.text == "" and not r.valid and "does not compile" in r.reason
    r = run(marked, "a == b*b + c*c or b*b == a")
    assert r.valid and r.text == "a == b*b + c*c or b*b == a"


def test_try_left_without_except_is_refused():
    # The body of a try: is cut; the suggestion must bring back the except: that the text after it lacks.
    marked = ("def valid(d):\n    try:\n        m = int(d)\n        if m < 1:\n|        return False\n\n"
              "    return True\n")
    body = "            return False\n        if m > 12:\n            return False\n"
    assert not errors_after(marked, body) and not compiles(marked, body)
    r = run(marked, body)
    assert r.text == "" and not r.valid
    fixed = "            return False\n    except ValueError:\n"
    r = run(marked, fixed)
    assert r.valid and compiles(marked, r.text)


def test_error_left_after_the_cursor_in_the_same_definition_is_the_suggestions_to_fix():
    # A random-span hole: the if-statement the next lines belong to was cut out with it.
    marked = ("def any_int(x, y, z):\n    if isinstance(x, int) and isinstance(y, i|) or (x+z==y):\n"
              "            return True\n        return False\n    return False\n")
    r = run(marked, "nt")
    assert r.text == "" and not r.valid
    mended = "nt) and isinstance(z, int):\n        if (x+y==z"
    r = run(marked, mended)
    assert r.valid and r.text == mended and compiles(marked, mended)


def test_compile_errors_elsewhere_still_get_suggestions():
    # Another definition is broken (and CPython stops at its error first): suggestions still come.
    marked = "def g(:\n    pass\n\n\ndef f(x):\n    y = |\n    return y\n"
    r = run(marked, "x + 1")
    assert r.valid and r.text == "x + 1"
    # Broken below, in another definition.
    marked = "def f(x):\n    y = |\n    return y\n\n\ndef g(:\n    pass\n"
    r = run(marked, "x + 1")
    assert r.valid and r.text == "x + 1"


def test_syntax_tree_sitter_accepts_but_this_python_does_not_is_not_held_against_a_suggestion():
    # A construct this interpreter's parser rejects while tree-sitter takes it (here: a soft keyword
    # statement of a later Python, `type X = ...`, where it is not supported) is not the suggestion's doing.
    import sys

    marked = "def f(x):\n    y = |\n    type Alias = list[int]\n    return y\n"
    r = run(marked, "x + 1")
    if sys.version_info < (3, 12):
        assert not compiles(marked, "x + 1")
    assert r.valid and r.text == "x + 1"


def test_compile_check_raises_no_warnings(capfd):
    import warnings

    marked = 'def f(s):\n    p = "\\d+"\n    return |\n'
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = run(marked, "p + s")
    assert r.valid and r.text == "p + s"
    assert [str(w.message) for w in seen] == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_clause_left_without_its_statement_beyond_the_window_is_refused():
    # The gap held `try:`; its `except:` lies beyond the validity window, in the same definition.
    marked = ("def f(arr):\n    out = []\n    for v in arr:\n|            out.append(v)\n        except:\n"
              "            pass\n    return out\n")
    r = run(marked, "        if v > 0:\n")
    assert r.text == "" and not r.valid
    r = run(marked, "        try:\n")
    assert r.valid and r.text == "        try:\n" and compiles(marked, r.text)


def test_compile_verdict_is_the_parsers_own():
    # The fast path (the symbol table pass) must answer exactly what the parser alone answers: its own
    # semantic errors are not syntax errors of a piece of a file.
    import ast
    import warnings

    def parser_only(src):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(src, "<suggestion>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        except SyntaxError as e:
            return (str(e.msg), e.lineno, e.offset or 0)
        return None

    sources = [
        "x = 1\n",
        "nonlocal x\n",  # symtable: not allowed at module level; the parser takes it
        "def f(a, a):\n    pass\n",
        "def f():\n    x = 1\n    global x\n",
        "[(y := 1) for y in z]\n",
        "def f():\n    yield\n    return 1\n",
        "if x:\npass\n",
        "def f(:\n    pass\n",
        "a == *b\n",
        "try:\n    x = 1\ny = 2\n",
        "f(**)\n",
        'p = "\\d+"\n',
    ]
    for src in sources:
        assert compile_error(src) == parser_only(src), src
    assert compile_error("nonlocal x\n") is None
    assert compile_error("if x:\npass\n")[0].startswith("expected an indented block")


def test_indentation_unit_on_the_first_line():
    import importlib

    cx = importlib.import_module("intarsia.grammars.context")
    assert cx._indent_unit("def f():\n\tx = 1\n\ty = 2\n", 0) == "\t"
    assert cx._indent_unit("a = [\n  1,\n  2]\nif a:\n  b = 1\n", 0) == "  "
    assert cx._indent_unit("a = 1\nif a:\n        b = 1\n", 6) == " " * 8
