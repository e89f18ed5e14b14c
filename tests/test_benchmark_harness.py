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
