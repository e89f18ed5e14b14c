"""The benchmark harness's own rules (benchmarks/fim_quality.py): cutting a single-line generation short with
--line-stop must never change the line that is scored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _harness():
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("fim_quality")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


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
