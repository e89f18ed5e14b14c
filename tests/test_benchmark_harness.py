"""The benchmark harness's own rules: cutting a single-line generation short with --line-stop
(benchmarks/fim_quality.py) never changes the line that is scored; prompt-lookup drafting
(benchmarks/lookup_headroom.py) counts passes as a greedy verifier would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _benchmark(name: str):
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _harness():
    return _benchmark("fim_quality")


@pytest.fixture(scope="module")
def fq():
    return _harness()


def test_line_done_examples(fq):
    assert not fq.line_done("return x")
    assert fq.line_done("return x\n")
    assert not fq.line_done("\n")
    assert not fq.line_done("\n   \n")
    assert fq.line_done("\n    return x\n")
    assert fq.line_done("a\nb")


@given(st.lists(st.sampled_from(["\n", " ", "x", "ab", "\n  y", "z\n", "  "]), max_size=12))
def test_cut_at_line_done_keeps_the_scored_line(pieces):
    # Streaming in pieces and stopping at the first piece after which the line is done.
    fq = _harness()
    full = "".join(pieces)
    seen = ""
    for piece in pieces:
        seen += piece
        if fq.line_done(seen):
            break
    assert fq.first_line(seen) == fq.first_line(full)


def _lookup():
    return _benchmark("lookup_headroom")


def test_lookup_passes_count_a_greedy_verifier():
    lh = _lookup()
    assert lh.passes([7, 8, 9], [1, 2, 3], 3) == (3, 3)  # nothing repeats: one token a pass, no drafts
    # The prompt holds the output after the same 3 tokens: a draft of 3 is verified with each pass.
    n, appended = lh.passes([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3], [4, 5, 6, 7, 8, 9, 0], 3)
    assert (n, appended) == (2, 4 + 4)  # 4 5 6 accepted + 7; then 8 9 accepted, 1 rejected, 0


@given(st.lists(st.integers(0, 4), max_size=12), st.lists(st.integers(0, 4), min_size=1, max_size=24),
       st.integers(1, 6))
def test_lookup_passes_never_exceed_tokens_and_copying_pays(prompt, output, k):
    lh = _lookup()
    n, appended = lh.passes(prompt, output, k)
    assert 1 <= n <= len(output)
    assert appended >= n
    # Output that repeats the prompt verbatim is verified k + 1 tokens a pass once the pattern is found.
    text = [1, 2, 3, 4, 5, 6, 7, 8]
    assert lh.passes(text + text, text, 4)[0] < len(text)


@pytest.mark.parametrize("type_name", ["Q5_0", "Q4_K", "Q6_K", "Q8_0"])
def test_kernel_benchmark_times_the_served_computation(type_name):
    """benchmarks/matmul_kernels.py builds each form from real GGUF blocks: every session must compute
    A @ W^T with W gguf's dequantization (exact forms to fp32/int8-activation rounding; the int8 per-channel
    reference to its own, larger, error)."""
    import gguf
    import numpy as np

    from intarsia.model.transcode import decode_blocks
    from tiny_gguf import quantized_tensor

    mk = _benchmark("matmul_kernels")
    rng = np.random.default_rng(5)
    n, k = 48, 512
    raw = quantized_tensor(rng, type_name, n, k, 0.05)
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name]).reshape(n, k).astype(np.float32)
    form = decode_blocks(raw, type_name, n, k)
    a = rng.standard_normal((16, k), dtype=np.float32)
    want = a @ w.T
    scale = np.abs(want).max()
    for sess, tol in [(mk.exact_session(form, k, n, 1, 1), 1e-5), (mk.exact_session(form, k, n, 4, 1), 2e-2),
                      (mk.dense_session(w, 1), 1e-5)]:
        got = sess.run(None, {"A": a})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= tol * scale
    # The int8 per-channel ceiling is not exact: every output within its quantization steps' worst-case bound, on
    # every CPU (AVX2, VNNI and AMX compute the same integer products), and close overall (the bound is loose).
    got = mk.int8_session(w, 1).run(None, {"A": a})[0]
    assert np.all(np.abs(got - want) <= mk.int8_error_bound(a, w) * 1.001 + 1e-6 * scale)
    assert np.linalg.norm(got - want) <= 0.05 * np.linalg.norm(want)
    assert mk.time_ms(mk.dense_session(w, 1), a, 2, 1) > 0


def test_generate_function_selects_problems_by_task_id(tmp_path):
    gf = _benchmark("generate_function")
    probs = [gf.Problem("humaneval", f"HumanEval/{k}", "f", "", "", "", (), 0.0, 0) for k in range(4)]
    assert gf.select_tasks(probs, None) == probs
    assert [p.task_id for p in gf.select_tasks(probs, "HumanEval/3,HumanEval/1")] == ["HumanEval/1", "HumanEval/3"]
    listed = tmp_path / "tasks.txt"
    listed.write_text("HumanEval/2\n\nHumanEval/0\n")
    assert [p.task_id for p in gf.select_tasks(probs, "@" + str(listed))] == ["HumanEval/0", "HumanEval/2"]
    with pytest.raises(SystemExit, match="HumanEval/9"):
        gf.select_tasks(probs, "HumanEval/1,HumanEval/9")


def test_chat_anchor_asks_the_task_as_written_and_runs_the_answer_after_its_imports():
    ca = _benchmark("chat_anchor")
    src = 'from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    """Sum."""\n    pass\n'
    p = ca.gf.Problem("humaneval", "HumanEval/0", "f", src, "", "", (), 0.0, 3)
    assert ca.task_text(p) == 'from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    """Sum."""'
    assert "pass" not in ca.QUESTION.format(task=ca.task_text(p))
    assert ca.program_of(p, "def f(xs):\n    return sum(xs)") == \
        "from typing import List\ndef f(xs):\n    return sum(xs)"
    assert ca.ANSWER.endswith("```python\n") and "\n```" in ca.STOPS


def test_generate_function_verified_strategies_and_their_summary():
    gf = _benchmark("generate_function")
    assert gf.parse_strategy("chat+verify") == ("chat", True)
    assert gf.parse_strategy("chat+adapter") == ("chat+adapter", False)
    assert gf.parse_strategy("chat+adapter+verify") == ("chat+adapter", True)
    assert gf.strategy_settings("auto+verify") == {"generateFunctionMode": "auto", "generateFunctionVerify": True}
    R = gf.Record
    recs = [R("HumanEval/1", "humaneval", applied=True, parses=True, seconds=2.0, strategy="chat",
              passed={"humaneval": True, "humaneval+": True},
              verification={"verified": True, "sampled": 0, "chosen": 0}),
            R("Mbpp/2", "mbppplus", applied=True, parses=True, seconds=9.0, strategy="chat",
              passed={"mbpp": True, "mbpp+": False}, verification={"verified": True, "sampled": 3, "chosen": 2}),
            R("HumanEval/3", "humaneval", applied=True, parses=True, seconds=4.0, strategy="chat",
              passed={"humaneval": False, "humaneval+": False},
              verification={"verified": False, "sampled": 5, "chosen": 0}),
            R("HumanEval/4", "humaneval", applied=True, parses=True, seconds=1.0, strategy="chat",
              passed={"humaneval": True, "humaneval+": True})]
    out = gf.summarize(recs)
    assert (out["with_examples"], out["examples_pass"], out["sampled_total"], out["sample_applied"]) == (3, 2, 8, 1)
    assert out["sampled_mean"] == 2.67 and out["examples_pass_then_hidden_pass"] == 0.5
    assert out["pass@1 humaneval+"] == round(100 * 2 / 3, 1)
    # Strategies without verification report none of it.
    assert "with_examples" not in gf.summarize([recs[3]])
