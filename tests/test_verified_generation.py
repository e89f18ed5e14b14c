"""Verified generation for generateFunction: the sandbox (core.sandbox), docstring examples (core.doc_examples),
judging a body by them (core.verification), choosing among sampled bodies (core.functions), the settings, and the
session's and the LSP command's report. Fast: the sandbox's subprocesses, tree-sitter and scripted engines."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from intarsia.grammars.registry import get_language
from intarsia.model.engine import FINISH_CANCELLED, FINISH_STOP, Engine, GenerationRequest, GenerationResult, Timings
from intarsia.model.fim import QWEN25_CODER
from intarsia.model.test_engine import TEST_CHAT_TEMPLATE
from intarsia.server.core import doc_examples as X
from intarsia.server.core import documents as D
from intarsia.server.core import functions as F
from intarsia.server.core import sandbox as S
from intarsia.server.core import verification as V
from intarsia.server.lsp.settings import Settings, parse_settings

PY = get_language("python")


# ---- the sandbox ------------------------------------------------------------------------------------------------


def test_sandbox_runs_a_program_and_reports_its_output():
    res = S.run("print('hello')")
    assert res.passed and res.status == "passed" and res.stdout == "hello\n"
    bad = S.run("raise ValueError('nope')")
    assert not bad.passed and bad.status == "failed" and bad.detail == "ValueError: nope"


def test_sandbox_time_limit_kills_the_program():
    t0 = time.monotonic()
    res = S.run("while True:\n    pass\n", S.Limits(timeout_s=1.0))
    assert res.status == "timeout" and not res.passed
    assert time.monotonic() - t0 < 6


def test_sandbox_memory_limit():
    res = S.run("block = bytearray(3 << 30)\n", S.Limits(memory_bytes=512 << 20))
    assert not res.passed and "MemoryError" in res.detail
    assert S.run("block = bytearray(64 << 20)\n", S.Limits(memory_bytes=512 << 20)).passed


@pytest.mark.skipif(not S.network_isolated(), reason="this machine gives no new network namespace")
def test_sandbox_has_no_network():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        # The same connection works from here: only the sandbox is cut off.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        res = S.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        assert not res.passed and ("OSError" in res.detail or "Error" in res.detail), res
    finally:
        listener.close()


def test_sandbox_never_touches_the_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INTARSIA_TEST_SECRET", "s3cret")
    program = ("import os, sys\nopen('written.txt', 'w').write('x')\n"
               "print(os.getcwd())\nprint(sorted(os.environ))\nprint(sys.flags.isolated, sys.flags.no_user_site)\n")
    res = S.run(program)
    assert res.passed, res
    cwd, env, flags = res.stdout.splitlines()
    assert Path(cwd) != tmp_path and not Path(cwd).exists()  # a temporary folder, removed afterwards
    assert not (tmp_path / "written.txt").exists() and list(tmp_path.iterdir()) == []
    assert "INTARSIA_TEST_SECRET" not in env and "s3cret" not in res.stdout
    assert flags == "1 1"  # python -I: no user site folder, no PYTHON* variables


@pytest.mark.skipif(not S.writes_confined(), reason="this kernel has no Landlock")
def test_sandbox_writes_nothing_outside_its_folder(tmp_path):
    kept = tmp_path / "kept.txt"
    kept.write_text("mine")
    for program in (f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')", f"import os\nos.remove({str(kept)!r})",
                    f"open({str(kept)!r}, 'w').write('changed')", f"import os\nos.mkdir({str(tmp_path / 'd')!r})"):
        res = S.run(program)
        assert not res.passed and "PermissionError" in res.detail, (program, res)
    assert kept.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_benchmarks_use_the_products_sandbox():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import sandbox as bench_sandbox
    finally:
        sys.path.pop(0)
    assert bench_sandbox.run_program is S.run_program and bench_sandbox.network_isolated is S.network_isolated


# ---- examples in docstrings -------------------------------------------------------------------------------------


def _examples(doc: str, name: str = "f", params: str = "x", method: bool = False) -> list[tuple]:
    src = f"def {name}({params}):\n    '''" + doc.replace("\n", "\n    ") + "\n    '''\n"
    got_name, found = X.function_examples(src, method=method)
    assert got_name == name
    return [(e.kind, e.call, e.expected) for e in found if not e.setup]


def test_doctest_examples_with_multiline_output_and_setup():
    doc = ("Pairs.\n\n>>> data = [2, 1]\n>>> f(data)\n[(0, 1),\n (1, 0)]\n>>> print(f([]))\n[]\n\n"
           ">>> f(None)\nTraceback (most recent call last):\n  ...\nTypeError: no data\n")
    src = "def f(x):\n    '''" + doc.replace("\n", "\n    ") + "\n    '''\n"
    _, found = X.function_examples(src)
    assert [(e.kind, e.call, e.setup) for e in found] == [
        ("doctest", "data = [2, 1]", True), ("doctest", "f(data)", False), ("doctest", "print(f([]))", False),
        ("doctest", "f(None)", False)]
    assert found[1].expected == "[(0, 1),\n (1, 0)]\n" and found[2].expected == "[]\n"
    assert found[3].exception == "TypeError" and found[1].line == 4
    assert len(X.checks(found)) == 3


@pytest.mark.parametrize("line, call, expected", [
    ("f(3) == 9", "f(3)", "9"),
    ("f([1, 2]) ➞ [2, 1]", "f([1, 2])", "[2, 1]"),
    ("f('ab') -> 'ba'", "f('ab')", "'ba'"),
    ("f(2) => true", "f(2)", "True"),
    ("f(2) ==> False", "f(2)", "False"),
    ("f(15)   # returns \"db1111db\"", "f(15)", "'db1111db'"),
    ("f('hi') returns 'lm'", "f('hi')", "'lm'"),
    ("f(4) should return 16.", "f(4)", "16"),
    ("* f(0) = -1", "f(0)", "-1"),
    ("for f(7) == 34", "f(7)", "34"),
    ("f(19) ->19 - 5 - 6 = 8", "f(19)", "19 - 5 - 6"),  # the value, then prose
    ("f('1x') # => 'No' (the name must start with a letter)", "f('1x')", "'No'"),
    ("f(3.5) == 6.00", "f(3.5)", "6.0"),
])
def test_one_line_examples(line, call, expected):
    assert _examples(f"Does things.\n\nExamples:\n    {line}\n") == [("value", call, expected)]


def test_a_call_over_several_lines():
    doc = "Rows.\n\nf([\n  [1, 2],\n  [3, 4]\n], 1) == [(0, 0)]\nf([], 1) == []\n"
    assert _examples(doc, params="rows, x") == [("value", "f([[1, 2], [3, 4]], 1)", "[(0, 0)]"),
                                                ("value", "f([], 1)", "[]")]


def test_input_output_pairs_and_for_the_output_should_be():
    doc = ("Pick.\n\nExample 1:\n    Input: [4,2,3]\n    Output: [2, 1]\n    Explanation: because.\n\n"
           "Example 2:\n    Input: arr = [], k = 0\n    Output: []\n\nInput: [7] Output: [7]\n")
    assert _examples(doc, params="arr, k=0") == [("value", "f([4, 2, 3])", "[2, 1]"),
                                                 ("value", "f(arr=[], k=0)", "[]"),
                                                 ("value", "f([7])", "[7]")]
    doc2 = ('Digits.\n\nFor n = 1000, the sum of digits will be 1 the output should be "1".\n'
            'For n = 7 the output should be 3\n')
    assert _examples(doc2, params="n") == [("value", "f(n=1000)", "'1'"), ("value", "f(n=7)", "3")]


def test_asserts_become_value_checks_or_assertions():
    doc = ("Shared elements.\nassert f((3, 4), (4, 5)) == (4,)\n"
           "assert set(f((3, 4, 5), (5, 4))) == set((4, 5))\n"
           "assert math.isclose(f((1,), (1,)), 1.0, rel_tol=0.001)\n")
    assert _examples(doc, params="a, b") == [
        ("value", "f((3, 4), (4, 5))", "(4,)"),
        ("assert", "set(f((3, 4, 5), (5, 4))) == set((4, 5))", ""),
        ("assert", "math.isclose(f((1,), (1,)), 1.0, rel_tol=0.001)", "")]


@pytest.mark.parametrize("doc", [
    "Happy?\n\nf(a) => False",  # a name, not a literal: it would raise for every body
    "Other.\n\ng(3) == 9",  # another function
    'Max.\n\nf(["ab"]) == ""ab"',  # a value glued to more text
    "Two args.\n\nf(1, 2, 3) == 6",  # more arguments than the signature takes
    "Defined by a recurrence.\n\nf(1) = 3\nf(n) = 1 + n / 2, if n is even.\nf(2) = 1 + (2 / 2) = 2\n",
    "Prose only: f is a function of x, see f(x) for more.",
])
def test_what_is_not_an_example(doc):
    assert _examples(doc, params="x, y=0") == []


def test_methods_are_checked_through_their_doctests_only():
    doc = ">>> Counter().f(2)\n4\n\nf(3) == 6\nassert f(1) == 2\n"
    assert _examples(doc, params="self, x", method=True) == [("doctest", "Counter().f(2)", "4\n")]


def test_skipped_doctests_are_not_examples():
    doc = "Slow.\n>>> f(10 ** 9)  # doctest: +SKIP\n1\n>>> f(2)  # doctest: +NORMALIZE_WHITESPACE\n4\n"
    src = "def f(x):\n    '''" + doc.replace("\n", "\n    ") + "\n    '''\n"
    _, found = X.function_examples(src)
    assert [(e.call, e.options) for e in found] == [("f(2)  # doctest: +NORMALIZE_WHITESPACE",
                                                     ("NORMALIZE_WHITESPACE",))]


def test_doctest_comparison_without_output_is_a_value_check():
    doc = "Count.\n>>> f([]) == 0\n>>> f([1, 2])\n\n"
    assert _examples(doc) == [("value", "f([])", "0"), ("doctest", "f([1, 2])", "")]  # the latter returns None


# ---- judging a body ---------------------------------------------------------------------------------------------


SQUARE = '''import sys


def square(x):
    """The square of x.

    >>> square(3)
    9
    >>> [square(n) for n in range(3)]
    [0,
     1, 4]
    >>> square(0.1)
    0.010000000000000002

    square(-2) == 4
    """
    return BODY


print("top-level code is not run")
sys.exit(3)
if __name__ == "__main__":
    raise SystemExit(4)
'''


def _judge(src: str, name: str = "square", method: bool = False) -> V.CheckReport:
    line_start = src.rfind("\n", 0, src.index(f"def {name}")) + 1
    doc_end = src.index('"""', src.index('"""', line_start) + 3) + 3
    got, examples = X.function_examples(src[line_start:doc_end], method=method)
    assert got == name and examples
    return V.check_body(src, PY, name=name, method=method, examples=examples)


def test_a_correct_body_passes_every_example():
    rep = _judge(SQUARE.replace("BODY", "x * x"))
    assert rep.judged and rep.all_passed and rep.passed == rep.total == 4, rep


def test_a_wrong_body_fails_with_what_it_gave():
    rep = _judge(SQUARE.replace("BODY", "abs(x) * 2"))
    assert rep.judged and not rep.all_passed
    assert [r.status for r in rep.results] == ["failed", "failed", "failed", "passed"]
    assert rep.results[0].detail == "printed '6'" and rep.results[1].detail == "printed '[0, 2, 4]'"
    assert rep.results[2].detail.startswith("printed '0.2")


def test_a_looping_or_exiting_body_fails_in_time():
    t0 = time.monotonic()
    looping = _judge(SQUARE.replace("return BODY", "while True:\n        pass"))
    assert looping.judged and looping.passed == 0 and "no result within" in looping.results[0].detail
    assert time.monotonic() - t0 < 15
    exiting = _judge(SQUARE.replace("return BODY", "import os\n    os._exit(0)"))
    assert exiting.judged and exiting.passed == 0


def test_a_missing_module_makes_the_examples_unrunnable_not_failed():
    src = SQUARE.replace("import sys", "import sys\nfrom no_such_package_here import helper").replace(
        "BODY", "helper(x)")
    rep = _judge(src)
    assert not rep.judged and all(r.status == "unrunnable" for r in rep.results)
    assert "helper" in rep.results[0].detail
    v = V.Verification(rep.total, rep.passed, 1, 0, rep)
    assert "not checked" in v.message and "not verified" in v.message


def test_a_body_that_needs_files_is_not_judged():
    rep = _judge(SQUARE.replace("return BODY", "return len(open('/no/such/file').read()) + x * x"))
    assert not rep.judged and rep.results[0].status == "unrunnable" and "FileNotFoundError" in rep.results[0].detail


def test_a_function_out_of_reach_is_not_judged():
    src = 'def outer():\n    def inner(x):\n        """>>> inner(1)\n        2\n        """\n        return x + 1\n'
    _, examples = X.function_examples('    def inner(x):\n        """>>> inner(1)\n        2\n        """')
    rep = V.check_body(src, PY, name="inner", method=False, examples=examples)
    assert not rep.judged and "not defined at the top" in rep.error


def test_a_method_by_its_doctest():
    src = ('class Counter:\n    def __init__(self):\n        self.n = 1\n\n    def add(self, k):\n'
           '        """Add k.\n\n        >>> Counter().add(2)\n        3\n        """\n        return self.n + k\n')
    rep = _judge(src, "add", method=True)
    assert rep.all_passed and rep.total == 1


def test_context_keeps_definitions_and_drops_scripts():
    src = ("import os\nX = 1\nprint('x')\n\n\ndef f():\n    return X\n\n\nif __name__ == '__main__':\n    f()\n"
           "try:\n    import json\nexcept ImportError:\n    json = None\nmain()\n")
    kept = [s for s, _, _ in V.context_statements(src, PY)]
    assert kept == ["import os", "X = 1", "def f():\n    return X",
                    "try:\n    import json\nexcept ImportError:\n    json = None"]


# ---- choosing among bodies --------------------------------------------------------------------------------------


class Scripted(Engine):
    """Answers chat prompts: `greedy` at temperature 0, `samples[seed - 1]` when sampling (cycled)."""

    name = "scripted"

    def __init__(self, greedy: str, samples: tuple[str, ...] = (), delay_s: float = 0.0):
        self.greedy, self.samples, self.delay_s = greedy, samples, delay_s
        self.requests: list[GenerationRequest] = []

    @property
    def chat_template(self) -> Optional[str]:
        return TEST_CHAT_TEMPLATE

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def generate(self, request, *, cancel=None, on_text=None) -> GenerationResult:
        self.requests.append(request)
        time.sleep(self.delay_s)
        if request.temperature <= 0:
            text = self.greedy
        else:
            text = self.samples[(request.seed - 1) % len(self.samples)]
        return GenerationResult(text, (), FINISH_STOP, Timings(1, 0, 1, 0.0, 0.0, 0.0, self.delay_s))


FN = '''def square(x):
    """The square of x.

    >>> square(3)
    9
    >>> square(-2)
    4
    """
    pass
'''


def _answer(body: str) -> str:
    return f"def square(x):\n    {body}\n```"


def _generate(eng: Engine, src: str = FN, **verify):
    doc = D.Document("file:///w/sq.py", src, 1, "python", path="sq.py")
    return F.generate_function(doc.snapshot(src.index("def square") + 4, invoked=True), engine=eng,
                               fim_format=QWEN25_CODER, mode="chat", verify=V.VerifyOptions(**verify))


def test_a_failing_candidate_is_skipped_for_one_that_passes():
    eng = Scripted(_answer("return x + x"), (_answer("return x * 3"), _answer("return x ** 2")))
    out = _generate(eng)
    assert out.ok and out.new_text == "\n    return x ** 2"
    v = out.verification
    assert v.verified and v.chosen == 2 and v.candidates == 3 and v.passed == v.examples == 2
    assert v.message == "2/2 docstring examples pass (a sampled body, 3 judged; the greedy one failed them)"
    # Greedy first, then samples at the temperature, each with its own seed.
    assert [(r.temperature, r.seed) for r in eng.requests] == [(0.0, None), (0.6, 1), (0.6, 2)]


def test_a_greedy_body_that_passes_is_applied_without_sampling():
    eng = Scripted(_answer("return x * x"), (_answer("return 0"),))
    out = _generate(eng)
    assert out.new_text == "\n    return x * x" and len(eng.requests) == 1
    assert out.verification.verified and out.verification.message == "2/2 docstring examples pass (the greedy body)"


def test_the_greedy_body_is_applied_when_none_passes_and_placeholders_never_are():
    eng = Scripted(_answer("return abs(x) * 2"), (_answer("pass"), _answer("return x * 3"), _answer("return x * 3"),
                                                  _answer("..."), _answer("return x - 1")))
    out = _generate(eng, max_candidates=3)
    assert out.ok and out.new_text == "\n    return abs(x) * 2"
    v = out.verification
    assert not v.verified and v.chosen == 0 and v.passed == 1 and v.candidates == 3
    assert "placeholder" in " ".join(out.attempts) and "the same body again" in " ".join(out.attempts)
    assert v.message.startswith("greedy body applied (3 bodies judged, candidate limit reached): 1/2 docstring "
                                "examples pass; square(3) -> 9: printed '6'")


def test_the_budget_stops_sampling():
    eng = Scripted(_answer("return x + x"), tuple(_answer(f"return x * {k}") for k in range(3, 20)), delay_s=0.4)
    t0 = time.monotonic()
    out = _generate(eng, budget_s=1.0, max_candidates=10)
    assert out.new_text == "\n    return x + x" and out.verification.note == "time budget spent"
    assert 2 <= len(eng.requests) <= 4  # the greedy one, then no sample that would end past the budget
    assert time.monotonic() - t0 < 6
    # No budget: the greedy body is judged, nothing sampled.
    eng2 = Scripted(_answer("return x + x"), (_answer("return x * x"),))
    out2 = _generate(eng2, budget_s=0)
    assert len(eng2.requests) == 1 and out2.verification.candidates == 1 and not out2.verification.verified


def test_verification_off_or_no_examples_keeps_todays_behaviour():
    eng = Scripted(_answer("return x + x"), (_answer("return x * x"),))
    out = _generate(eng, enabled=False)
    assert out.new_text == "\n    return x + x" and out.verification is None and len(eng.requests) == 1
    plain = FN.replace("    >>> square(3)\n    9\n    >>> square(-2)\n    4\n", "")
    out2 = _generate(eng, src=plain)
    assert out2.verification is None and len(eng.requests) == 2


def test_sampling_stops_when_cancelled():
    user_cancel = threading.Event()

    class CancelledWhileSampling(Scripted):
        """The user's next request cancels the command while its first sample is generated."""

        def generate(self, request, *, cancel=None, on_text=None):
            res = super().generate(request, cancel=cancel, on_text=on_text)
            if request.temperature <= 0:
                return res
            user_cancel.set()
            return GenerationResult("", (), FINISH_CANCELLED, res.timings)

    eng = CancelledWhileSampling(_answer("return x + x"), (_answer("return x * x"),))
    doc = D.Document("file:///w/sq.py", FN, 1, "python", path="sq.py")
    out = F.generate_function(doc.snapshot(FN.index("def square") + 4, invoked=True), engine=eng,
                              fim_format=QWEN25_CODER, mode="chat", cancel=user_cancel)
    assert not out.ok and out.reason == "cancelled" and len(eng.requests) == 2


# ---- settings, session and the LSP command ---------------------------------------------------------------------


def test_settings_and_their_warnings():
    s = Settings()
    assert s.generate_function_verify is True and s.generate_function_budget_s == V.DEFAULT_BUDGET_S
    assert s.verify_options() == V.VerifyOptions()
    s2, w = parse_settings({"generateFunctionVerify": False, "generateFunctionBudgetS": 7.5})
    assert not w and s2.verify_options().enabled is False and s2.verify_options().budget_s == 7.5
    s3, w3 = parse_settings({"generateFunctionBudgetS": -1, "generateFunctionVerify": "yes"}, s2)
    assert s3 == s2 and len(w3) == 2 and all("keeping" in x for x in w3)
    assert parse_settings(s2.to_json())[0] == s2


@pytest.mark.asyncio
async def test_session_reports_the_verification(test_engine_session):
    answer = "def square(x):\n    return x * x\n```"
    s = await test_engine_session({"generateFunctionMode": "chat",
                                   "test": {"table": {"    4\n    \"\"\"\n```": answer}}})
    uri = "file:///w/sq.py"
    s.did_open(uri, "python", 1, FN)
    res = await s.generate_function(uri, 0, 5)
    assert res.ok and res.new_text == "\n    return x * x", res
    assert res.verification is not None and res.verification.verified and res.verification.examples == 2
    from intarsia.server.lsp import convert

    result = convert.function_result(res)
    assert result["verification"]["passed"] == 2 and result["verification"]["verified"] is True
    assert [r["status"] for r in result["verification"]["results"]] == ["passed", "passed"]
    assert convert.function_message(res) == ("info", "Intarsia: body of square: 2/2 docstring examples pass "
                                                     "(the greedy body)")


ONE_EXAMPLE = '''def square(x):
    """The square of x.

    >>> square(3)
    9
    """
    pass
'''


def test_a_body_that_never_reads_its_parameters_passes_no_example():
    # A constant equal to the single example's output "passes" it: that is no evidence, so sampling goes on.
    eng = Scripted(_answer("return 9"), (_answer("return 3 * 3"), _answer("return x * x")))
    out = _generate(eng, src=ONE_EXAMPLE)
    assert out.new_text == "\n    return x * x"
    v = out.verification
    assert v.verified and v.chosen == 2 and v.candidates == 3  # `return 3 * 3` is judged, and fails too
    # When nothing else passes, the greedy body is applied and the message says why it is not verified.
    eng2 = Scripted(_answer("return 9"), (_answer("return x + 1"),))
    out2 = _generate(eng2, src=ONE_EXAMPLE, max_candidates=2)
    assert out2.new_text == "\n    return 9" and not out2.verification.verified
    assert F.IGNORES_PARAMETERS in out2.verification.message


def test_reading_parameters():
    from intarsia.server.core.function_prompts import ignores_parameters

    py = get_language("python")
    assert ignores_parameters("return 325", ("n",), py)
    assert ignores_parameters("total = 0\n    for i in range(3):\n        total += i\n    return total", ("a", "b"), py)
    assert not ignores_parameters("return n * (7 * n - 5) // 2", ("n",), py)
    assert not ignores_parameters("return sum(args)", ("args",), py)  # (*args)
    assert not ignores_parameters("return self.x", ("self",), py)  # no parameter but self
    assert not ignores_parameters("return 1", (), py)
    assert not ignores_parameters("return locals()", ("a",), py)
    assert not ignores_parameters("return 1", ("a",), get_language("javascript"))


IMPORT_FIRST = '''def max_fill(grid, capacity):
    import math
    """Buckets needed.

    >>> max_fill([[1, 1]], 1)
    2
    """
    pass
'''


def test_a_docstring_after_the_functions_own_imports():
    py = get_language("python")
    t = F.find_function_target(IMPORT_FIRST, 4, py)
    assert not isinstance(t, str) and t.name == "max_fill" and t.params == ("grid", "capacity")
    assert IMPORT_FIRST[:t.start].endswith('2\n    """') and IMPORT_FIRST[t.end:] == "\n"
    name, examples = X.function_examples(IMPORT_FIRST[:t.start])
    assert name == "max_fill" and [e.call for e in examples] == ["max_fill([[1, 1]], 1)"]
    # Code before the docstring is still a body that is already written.
    assert F.find_function_target(IMPORT_FIRST.replace("import math", "x = 1"), 4, py) == \
        "function max_fill has no docstring: write the signature and the docstring first"
