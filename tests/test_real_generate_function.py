"""generateFunction's chat strategy on the real default model: a simple HumanEval-like problem gets a body that
parses and is not a placeholder, and verified generation applies one that passes the docstring's examples.
Deselect with `-m "not real_model"` (the model is built once and cached)."""

from __future__ import annotations

import ast

import pytest

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

SRC = '''from typing import List


def sum_of_squares(numbers: List[int]) -> int:
    """Return the sum of the squares of the numbers.

    >>> sum_of_squares([1, 2, 3])
    14
    >>> sum_of_squares([])
    0
    """
    pass
'''


@pytest.fixture(scope="module")
def engine():
    from intarsia.model.build import BuildOptions, build, with_fim_adapter
    from intarsia.model.ort_engine import OrtEngine
    from intarsia.model.registry import resolve_source

    src = resolve_source("qwen2.5-coder-0.5b")
    built = build(src, BuildOptions(), progress=False)
    fim = with_fim_adapter(src, built).fim_adapter
    # As served: the shipped FIM adapter is the default; the chat strategy must run the base model anyway.
    with OrtEngine(built.path, adapters={"fim": fim} if fim else {}, default_adapter="fim" if fim else None) as e:
        yield e


def test_chat_mode_writes_a_real_body(engine):
    from intarsia.grammars.registry import get_language
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.server.core import documents as D
    from intarsia.server.core.function_prompts import is_placeholder_body
    from intarsia.server.core.functions import generate_function

    assert engine.chat_template and "<|im_start|>" in engine.chat_template
    doc = D.Document("file:///w/squares.py", SRC, 1, "python", path="squares.py")
    out = generate_function(doc.snapshot(SRC.index("def sum_of") + 4, invoked=True), engine=engine,
                            fim_format=QWEN25_CODER, mode="chat")
    assert out.ok, (out.reason, out.raw)
    assert out.strategy == "chat"
    edited = SRC[:out.start] + out.new_text + SRC[out.end:]
    tree = ast.parse(edited)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    assert not is_placeholder_body(out.new_text.strip(), get_language("python"))
    assert any(isinstance(n, ast.Return) for n in ast.walk(fn)), edited


def test_verified_generation_checks_the_docstring_examples(engine):
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.server.core import documents as D
    from intarsia.server.core.functions import generate_function
    from intarsia.server.core.sandbox import run
    from intarsia.server.core.verification import VerifyOptions

    doc = D.Document("file:///w/squares.py", SRC, 1, "python", path="squares.py")
    out = generate_function(doc.snapshot(SRC.index("def sum_of") + 4, invoked=True), engine=engine,
                            fim_format=QWEN25_CODER, mode="chat", verify=VerifyOptions(budget_s=60))
    assert out.ok, (out.reason, out.raw)
    v = out.verification
    assert v is not None and v.examples == 2 and v.report.judged, v
    # A simple function: the applied body passes both examples (greedy, or a sample when greedy missed).
    assert v.verified and v.passed == 2, (v.message, out.new_text)
    edited = SRC[:out.start] + out.new_text + SRC[out.end:]
    res = run(edited + "\nassert sum_of_squares([1, 2, 3]) == 14 and sum_of_squares([]) == 0\n")
    assert res.passed, (res.detail, edited)
