"""The completion pipeline as plain functions: positions and encodings, documents, prompts within a budget,
scope, a whole completion with the test engine, and function bodies."""

from __future__ import annotations

import threading

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intarsia.grammars.registry import get_language
from intarsia.grammars.scope import Scope
from intarsia.model.fim import CODELLAMA, QWEN25_CODER, RepoFile
from intarsia.server.core import completion as C
from intarsia.server.core import documents as D
from intarsia.server.core import functions as F
from intarsia.server.core import prompt as PR
from intarsia.model.test_engine import TestEngine

PY = get_language("python")


# ------------------------------------------------------------------------------------------------ positions

EMOJI = "😀"  # 1 code point, 2 UTF-16 units, 4 UTF-8 bytes
CJK = "漢字"  # 2 code points, 2 UTF-16 units, 6 UTF-8 bytes


def test_offsets_count_utf16_units_for_emoji_and_cjk():
    text = f"a{EMOJI}b\n{CJK}x\n"
    # "b" is after 1 + 2 UTF-16 units, 1 + 4 UTF-8 bytes, 2 code points.
    assert D.offset_at(text, 0, 3, "utf-16") == text.index("b")
    assert D.offset_at(text, 0, 5, "utf-8") == text.index("b")
    assert D.offset_at(text, 0, 2, "utf-32") == text.index("b")
    assert D.offset_at(text, 1, 2, "utf-16") == text.index("x")
    assert D.offset_at(text, 1, 6, "utf-8") == text.index("x")
    # Inside the surrogate pair / inside a UTF-8 sequence: the start of the character.
    assert D.offset_at(text, 0, 2, "utf-16") == text.index(EMOJI)
    assert D.offset_at(text, 0, 3, "utf-8") == text.index(EMOJI)
    assert D.position_at(text, text.index("b"), "utf-16") == (0, 3)
    assert D.position_at(text, text.index("b"), "utf-8") == (0, 5)
    assert D.position_at(text, text.index("x"), "utf-16") == (1, 2)


def test_crlf_and_lone_cr_are_line_breaks():
    text = "ab\r\ncd\ref\ngh"
    assert D.offset_at(text, 1, 0) == text.index("c")
    assert D.offset_at(text, 2, 1) == text.index("f")
    assert D.offset_at(text, 3, 2) == len(text)
    # Past the end of a line: the line's end, before its \r\n.
    assert D.offset_at(text, 0, 99) == 2
    assert D.position_at(text, text.index("e"), "utf-16") == (2, 0)
    assert D.position_at(text, 2, "utf-16") == (0, 2)


def test_lines_past_the_end():
    assert D.offset_at("abc\n", 5, 0) == 4
    with pytest.raises(D.PositionError):
        D.offset_at("abc\n", 5, 0, strict=True)
    assert D.offset_at("abc\n", 1, 0, strict=True) == 4  # the empty last line exists
    with pytest.raises(D.PositionError):
        D.offset_at("abc", -1, 0)


_chars = st.sampled_from(list("ab \t(") + ["\n", "\r\n", "\r", EMOJI, "漢", "é"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_chars, max_size=30).map("".join), st.sampled_from(D.ENCODINGS), st.data())
def test_position_offset_roundtrip(text, encoding, data):
    # Every character boundary that is not inside a \r\n pair maps to a position and back.
    boundaries = [i for i in range(len(text) + 1)
                  if not (0 < i < len(text) and text[i - 1] == "\r" and text[i] == "\n")]
    i = data.draw(st.sampled_from(boundaries))
    line, ch = D.position_at(text, i, encoding)
    assert D.offset_at(text, line, ch, encoding) == i


# ------------------------------------------------------------------------------------------------ documents


def test_incremental_changes_in_utf16_keep_the_tree_in_sync():
    doc = D.Document("file:///w/a.py", f"x = '{EMOJI}'\ny = 1\n", 1, "python", path="a.py")
    # Replace "1" on line 1 and insert after the emoji (UTF-16 column 7 = after x = '😀).
    doc.apply_change((1, 4, 1, 5), "22")
    doc.apply_change((0, 7, 0, 7), "z")
    assert doc.text == f"x = '{EMOJI}z'\ny = 22\n"
    snap = doc.snapshot(len(doc.text))
    assert snap.tree is not None and not snap.tree.root_node.has_error
    assert snap.tree.root_node.end_byte == len(doc.text.encode("utf-8"))
    # A snapshot's tree is a copy: later edits do not touch it.
    doc.apply_change((0, 0, 0, 0), "# c\n")
    assert snap.tree.root_node.end_byte == len(snap.text.encode("utf-8"))


@settings(max_examples=60, deadline=None)
@given(st.lists(_chars, max_size=20).map("".join),
       st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8), st.integers(0, 6), st.integers(0, 8),
                          st.lists(_chars, max_size=5).map("".join)), max_size=6),
       st.sampled_from(D.ENCODINGS))
def test_changes_match_a_plain_string_splice(text, edits, encoding):
    doc = D.Document("file:///w/a.py", text, 1, "python", path="a.py")
    expected = text
    for sl, sc, el, ec, new in edits:
        a = D.offset_at(expected, sl, sc, encoding)
        b = D.offset_at(expected, el, ec, encoding)
        a, b = min(a, b), max(a, b)
        expected = expected[:a] + new + expected[b:]
        doc.apply_change((sl, sc, el, ec), new, encoding)
        assert doc.text == expected
        # The line index kept through edits is the one a fresh scan finds (\r\n pairs made or split by an
        # edit included).
        assert doc._lines.starts.tolist() == D.LineIndex(expected).starts.tolist()
    snap = doc.snapshot(0)
    if snap.tree is not None:
        assert snap.tree.root_node.end_byte == len(expected.encode("utf-8", "surrogatepass"))


def test_edits_in_a_document_of_ten_million_lines_take_milliseconds():
    # Positions are converted through the line index: no walk over the lines before the edit.
    doc = D.Document("file:///w/huge.txt", "x\n" * 10_000_000, 1, "plaintext")
    t0 = time.perf_counter()
    for i in range(5):
        doc.apply_change((5_000_000 + i, 0, 5_000_000 + i, 1), "yy\nz")
    per_edit = (time.perf_counter() - t0) / 5
    assert doc.position_at(doc.offset_at(5_000_004, 1)) == (5_000_004, 1)
    assert doc.text.count("\n") == 10_000_005
    # The old line walk took ~2 s an edit here; the index takes milliseconds (bound generous for slow CI).
    assert per_edit < 0.5, per_edit


def test_full_change_and_binary_detection():
    doc = D.Document("file:///w/b.bin", "abc", 1, "plaintext")
    assert not doc.binary
    doc.apply_change(None, "a\x00b")
    assert doc.text == "a\x00b" and doc.binary


def test_neighbors_are_other_documents_most_recent_first():
    store = D.DocumentStore()
    a = D.Document("file:///w/a.py", "a", 1, "python", path="a.py")
    b = D.Document("file:///w/b.py", "b", 1, "python", path="b.py")
    store.open(a)
    store.open(b)
    a.apply_change((0, 1, 0, 1), "!")
    assert [n.path for n in store.neighbors("file:///w/c.py")] == ["a.py", "b.py"]
    assert [n.path for n in store.neighbors("file:///w/a.py")] == ["b.py"]


# ------------------------------------------------------------------------------------------------ prompts


def _count(text: str) -> int:
    return TestEngine().count_tokens(text)


def test_prompt_fits_the_budget_and_keeps_the_cursor_lines():
    lines = [f"value_{i} = compute_{i}(argument_{i})\n" for i in range(400)]
    text = "".join(lines)
    offset = text.index("value_300")
    parts = PR.build_prompt(QWEN25_CODER, _count, text, offset, budget=PR.PromptBudget(prompt=600),
                            context_files=[RepoFile("util.py", "def compute_1(x):\n    return x\n")], path="m.py")
    assert parts.prompt_tokens <= 600
    assert "value_299 = compute_299" in parts.prompt  # the line just before the cursor
    assert "value_300 = compute_300" in parts.prompt  # the suffix starts at the cursor
    assert "<|file_sep|>util.py\n" in parts.prompt and "<|file_sep|>m.py\n" in parts.prompt
    assert parts.prefix_start > 0 and parts.suffix_end < len(text)
    assert text[parts.prefix_start - 1] == "\n"  # whole lines


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["alpha = beta(gamma)\n", "x\n", "\n", "    return value_of_thing + 1\n",
                                 "y = [" + "1, " * 40 + "]\n"]), min_size=1, max_size=120).map("".join),
       st.floats(0, 1), st.integers(64, 900))
def test_prompt_never_exceeds_the_budget(text, where, budget):
    offset = int(len(text) * where)
    parts = PR.build_prompt(QWEN25_CODER, _count, text, offset, budget=PR.PromptBudget(prompt=budget))
    assert _count(parts.prompt) <= budget + 4  # the parts are counted apart; the seams may differ slightly
    assert parts.prefix_start <= offset <= parts.suffix_end
    prefix, suffix = TestEngine().split_prompt(parts.prompt)
    assert prefix == text[parts.prefix_start:offset] and suffix == text[offset:parts.suffix_end]
    if _count(text) + 8 <= budget // 2 and _count(text) <= PR.SUFFIX_MAX_TOKENS:  # a small file goes in whole
        assert (parts.prefix_start, parts.suffix_end) == (0, len(text))


def test_suffix_is_capped_for_latency():
    text = "".join(f"v{i} = {i}\n" for i in range(2000))
    off = text.index("v1000 ")
    parts = PR.build_prompt(QWEN25_CODER, _count, text, off, budget=PR.PromptBudget(prompt=8000))
    assert _count(text[off:parts.suffix_end]) <= PR.SUFFIX_MAX_TOKENS
    assert _count(text[parts.prefix_start:off]) > 4 * PR.SUFFIX_MAX_TOKENS


def test_suffix_cap_is_an_option_and_short_on_cpu():
    text = "".join(f"v{i} = {i}\n" for i in range(2000))
    off = text.index("v1000 ")
    parts = PR.build_prompt(QWEN25_CODER, _count, text, off,
                            budget=PR.PromptBudget(prompt=8000, suffix=PR.SUFFIX_MAX_TOKENS_CPU))
    n = _count(text[off:parts.suffix_end])
    assert PR.SUFFIX_MAX_TOKENS_CPU // 2 < n <= PR.SUFFIX_MAX_TOKENS_CPU
    from intarsia.server.lsp.settings import parse_settings

    s, w = parse_settings({"suffixBudgetTokens": 32})
    assert s.suffix_budget_tokens == 32 and not w
    s, w = parse_settings({"suffixBudgetTokens": -1})
    assert s.suffix_budget_tokens is None and "suffixBudgetTokens" in w[0]


def test_prompt_start_is_stable_while_typing_nearby():
    text = "".join(f"line_{i} = {i}\n" for i in range(500))
    starts = set()
    for k in range(5):
        off = text.index(f"line_{300 + k} ")
        starts.add(PR.build_prompt(QWEN25_CODER, _count, text, off, budget=PR.PromptBudget(prompt=400)).prefix_start)
    assert len(starts) == 1, starts


def test_prompt_with_a_huge_single_line():
    text = "x = [" + "1, " * 20000 + "]"
    parts = PR.build_prompt(QWEN25_CODER, _count, text, len(text) - 1, budget=PR.PromptBudget(prompt=300))
    assert 150 <= parts.prompt_tokens <= 300  # cut by characters, close to the budget
    assert parts.prompt.endswith("<|fim_middle|>")


def test_small_file_goes_in_whole():
    text = "def f():\n    return 1\n"
    parts = PR.build_prompt(QWEN25_CODER, _count, text, 9, budget=PR.PromptBudget(prompt=2000))
    assert parts.prefix_start == 0 and parts.suffix_end == len(text)
    assert parts.prompt == QWEN25_CODER.render(text[:9], text[9:])


# ------------------------------------------------------------------------------------------------ scope


def _snap(text: str, offset: int | None = None, *, invoked: bool = False, path: str = "m.py") -> D.Snapshot:
    doc = D.Document(f"file:///w/{path}", text, 1, "python", path=path)
    return doc.snapshot(len(text) if offset is None else offset, invoked=invoked)


def test_scope_none_inside_an_identifier_unless_invoked():
    text = "value = compute(x)\n"
    assert C.should_complete(_snap(text, 3), C.PipelineOptions()).scope is Scope.NONE
    assert C.should_complete(_snap(text, 3, invoked=True), C.PipelineOptions()).scope is Scope.LINE


def test_multiline_setting():
    text = "def f(x):\n    "
    assert C.should_complete(_snap(text), C.PipelineOptions()).scope is Scope.BLOCK
    d = C.should_complete(_snap(text), C.PipelineOptions(multiline="never"))
    assert d.scope is Scope.LINE and d.max_lines == 1
    text2 = "x = 1\ny = "
    assert C.should_complete(_snap(text2), C.PipelineOptions()).scope is Scope.LINE
    assert C.should_complete(_snap(text2), C.PipelineOptions(multiline="always")).scope is Scope.BLOCK


# ------------------------------------------------------------------------------------------------ completions


def test_completion_end_to_end_with_the_test_engine():
    eng = TestEngine(table={"return ": "a + b\n"})
    src = "def add(a, b):\n    return \n"
    out = C.run_completion(_snap(src, len(src) - 1), engine=eng, fim_format=QWEN25_CODER)
    assert out.text == "a + b" and out.scope == "line"
    assert out.engine_called and not out.cancelled
    t = out.timings
    assert t.total_ms >= t.engine_ms >= 0 and t.post_ms > 0
    assert eng.calls == 1 and "<|fim_prefix|>" in eng.last_prompt


def test_completion_not_at_a_valid_position_calls_no_engine():
    eng = TestEngine(table={"val": "ue"})
    out = C.run_completion(_snap("value = 1\n", 3), engine=eng, fim_format=QWEN25_CODER)
    assert out.text == "" and out.scope == "none" and eng.calls == 0


def test_invalid_completion_is_dropped():
    eng = TestEngine(table={"x = ": "(((("})
    out = C.run_completion(_snap("x = "), engine=eng, fim_format=QWEN25_CODER)
    assert out.text == "" and out.engine_called


def test_line_scope_stops_the_engine_early():
    lines = "".join(f"y{i} = {i}\n" for i in range(40))
    eng = TestEngine(table={"x = ": "1\n" + lines})
    out = C.run_completion(_snap("x = "), engine=eng, fim_format=QWEN25_CODER,
                           options=C.PipelineOptions(max_tokens=2048))
    assert out.text == "1"
    assert out.finish_reason == "early-stop"
    assert out.new_tokens < 10  # far fewer than the ~160 tokens of the table's answer


def test_block_scope_stops_at_a_dedent():
    body = "total = 0\n    return total\nprint(f())\n" + "x = 1\n" * 40
    eng = TestEngine(table={"def f():\n    ": body})
    out = C.run_completion(_snap("def f():\n    "), engine=eng, fim_format=QWEN25_CODER,
                           options=C.PipelineOptions(max_tokens=2048))
    assert out.text.startswith("total = 0\n    return total")
    assert "print" not in out.text
    assert out.finish_reason == "early-stop" and out.new_tokens < 30


def test_cancel_before_and_during_generation():
    ev = threading.Event()
    ev.set()
    eng = TestEngine(table={"x = ": "1"})
    out = C.run_completion(_snap("x = "), engine=eng, fim_format=QWEN25_CODER, cancel=ev)
    assert out.cancelled and out.text == "" and eng.calls == 0

    slow = TestEngine(table={"x = ": "1 + " * 50}, token_delay_s=0.01)
    ev2 = threading.Event()
    threading.Timer(0.05, ev2.set).start()
    out2 = C.run_completion(_snap("x = "), engine=slow, fim_format=QWEN25_CODER, cancel=ev2)
    assert out2.cancelled and out2.text == "" and out2.finish_reason == "cancelled"
    assert out2.new_tokens < 100


def test_engine_errors_become_empty_outcomes_but_bugs_raise():
    class Broken(TestEngine):
        def generate(self, request, *, cancel=None, on_text=None):
            from intarsia.model.errors import EngineError

            raise EngineError("out of memory")

    out = C.run_completion(_snap("x = "), engine=Broken(), fim_format=QWEN25_CODER)
    assert out.text == "" and "out of memory" in out.reason
    with pytest.raises(RuntimeError, match="boom"):
        C.run_completion(_snap("x = "), engine=TestEngine(table={"x = ": "!raise boom"}), fim_format=QWEN25_CODER)


def test_repository_context_reaches_the_prompt():
    class Ctx:
        def select(self, snapshot, budget, count):
            assert budget == 77
            return [RepoFile("lib/util.py", "def helper():\n    return 42\n")]

    eng = TestEngine(table={"x = ": "helper()"})
    out = C.run_completion(_snap("x = "), engine=eng, fim_format=QWEN25_CODER, context=Ctx(),
                           options=C.PipelineOptions(budget=PR.PromptBudget(context=77), repo_name="proj"))
    assert out.context_files == ("lib/util.py",)
    assert eng.last_prompt.startswith("<|repo_name|>proj\n<|file_sep|>lib/util.py\ndef helper()")


# ------------------------------------------------------------------------------------------------ functions

PY_FN = '''import math


def area(radius):
    """Area of a circle of this radius."""
    pass


def other():
    return 1
'''


def test_function_target_python():
    t = F.find_function_target(PY_FN, PY_FN.index("def area") + 4, PY)
    assert isinstance(t, F.FunctionTarget) and t.name == "area"
    assert PY_FN[t.start:t.end] == "\n    pass"
    assert t.lead == "\n    "
    # The cursor inside the docstring also works.
    assert isinstance(F.find_function_target(PY_FN, PY_FN.index("Area"), PY), F.FunctionTarget)


@pytest.mark.parametrize("src, msg", [
    ("def f(x):\n    return x\n", "no docstring"),
    ('def f(x):\n    """Doc."""\n    return x\n', "already has a body"),
    ("x = 1\n", "not on or in a function"),
])
def test_function_target_refusals(src, msg):
    r = F.find_function_target(src, 2, PY)
    assert isinstance(r, str) and msg in r


def test_generate_function_body_is_syntax_checked():
    snap = _snap(PY_FN, PY_FN.index("def area") + 5, invoked=True)
    good = TestEngine(table={'radius."""\n    ': "return math.pi * radius ** 2\n\n\ndef junk():\n    pass\n"})
    out = F.generate_function(snap, engine=good, fim_format=QWEN25_CODER)
    assert out.ok, out.reason
    new = PY_FN[:out.start] + out.new_text + PY_FN[out.end:]
    assert '"""Area of a circle of this radius."""\n    return math.pi * radius ** 2\n\n\ndef other' in new
    assert "junk" not in new
    bad = TestEngine(table={'radius."""\n    ': "return (((\n"})
    out2 = F.generate_function(snap, engine=bad, fim_format=QWEN25_CODER)
    assert not out2.ok and "no syntactically valid body" in out2.reason


def test_generate_function_keeps_crlf():
    src = PY_FN.replace("\n", "\r\n")
    snap = _snap(src, src.index("def area") + 5, invoked=True)
    eng = TestEngine(table={'radius."""\r\n    ': "return radius * radius\r\n"})
    out = F.generate_function(snap, engine=eng, fim_format=QWEN25_CODER)
    assert out.ok, out.reason
    assert out.new_text == "\r\n    return radius * radius"


def test_generate_function_brace_language():
    js = get_language("javascript")
    if js is None:
        pytest.skip("tree-sitter-language-pack has no javascript grammar here")
    src = "/** Add two numbers. */\nfunction add(a, b) {\n}\n\nfunction noDoc() {\n}\n"
    doc = D.Document("file:///w/a.js", src, 1, "javascript", path="a.js")
    t = F.find_function_target(src, src.index("add"), js)
    assert isinstance(t, F.FunctionTarget) and t.lead == "\n    " and t.trail == "\n"
    assert "no doc comment" in F.find_function_target(src, src.index("noDoc"), js)
    eng = TestEngine(table={"function add(a, b) {\n    ": "return a + b;\n}\n"})
    out = F.generate_function(doc.snapshot(src.index("add")), engine=eng, fim_format=QWEN25_CODER)
    assert out.ok, out.reason
    assert src[:out.start] + out.new_text + src[out.end:] == \
        "/** Add two numbers. */\nfunction add(a, b) {\n    return a + b;\n}\n\nfunction noDoc() {\n}\n"


# ------------------------------------------------------------------------------------------------ test engine


def test_test_engine_splits_prompts_of_every_format():
    # CodeLlama has no repository tokens: other files are comments at the start of the prefix.
    for fmt, pre in ((QWEN25_CODER, "pre\nfix"), (CODELLAMA, "# o.py\nother\npre\nfix")):
        eng = TestEngine(fim_format=fmt)
        prompt = fmt.render("pre\nfix", "suf\nfix", context_files=[RepoFile("o.py", "other")], path="m.py")
        assert eng.split_prompt(prompt) == (pre, "suf\nfix")


def test_test_engine_table_rule_stops_and_limits():
    eng = TestEngine(table={"a": "short", "xa": "longest key wins"})
    assert eng.answer("...xa", "") == "longest key wins"
    assert eng.answer("...ba", "") == "short"
    # The echo rule: the rest of an earlier line starting like the current one.
    assert eng.answer("result = compute(1, 2)\nres", "") == "ult = compute(1, 2)"
    from intarsia.model.engine import GenerationRequest

    r = eng.generate(GenerationRequest(QWEN25_CODER.render("xa", ""), max_new_tokens=2))
    assert r.text == "longest " and r.finish_reason == "length"
    r = eng.generate(GenerationRequest(QWEN25_CODER.render("xa", ""), stop=("key",)))
    assert r.text == "longest " and r.finish_reason == "stop"
    assert eng.count_tokens("<|fim_prefix|>ab cd") == 4
