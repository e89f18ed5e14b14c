"""Held-out samples (training/evaluate.py): the kinds users complete, cut from a small file (golden cases); the
evaluation through the served pipeline (the deterministic test engine), its result cache, and the report.
"""

from __future__ import annotations

import json

import pytest
from intarsia.model.engine import BASE_ADAPTER
from intarsia.model.fim import QWEN25_CODER
from intarsia.model.test_engine import TestEngine
from intarsia.server.core.prompt import PromptBudget
from intarsia.training.crawl import SourceFile
from intarsia.training.evaluate import (
    EvalError,
    EvalSettings,
    ResultCache,
    SampleCounts,
    eval_samples,
    evaluate,
    file_samples,
    generation_limit,
    take,
    write_report,
)

SHAPES = '''"""Shapes."""


def area(width, height):
    """Area of a rectangle."""
    result = width * height
    return result


def clamp(value, low, high):
    """Clamp value between low and high."""
    if value < low:
        return low
    return min(value, high)
'''


def shapes(rel="geo/shapes.py", text=SHAPES) -> SourceFile:
    return SourceFile(rel, "python", text, "0" * 64)


def suffixes_after_tokens(line: str, tokens: list[str]) -> set[str]:
    """The rest of `line` after each of its tokens (and the space after it), at least 3 characters."""
    out, pos = set(), 0
    for t in tokens:
        pos = line.index(t, pos) + len(t)
        cut = pos + 1 if line[pos:pos + 1] == " " else pos
        if len(line[cut:].strip()) >= 3:
            out.add(line[cut:])
    return out


def test_the_kinds_of_samples_in_a_small_file():
    pools = file_samples(shapes())
    got = {k: [s.target for s in v] for k, v in pools.items()}
    assert got["next-line"] == ["result = width * height", "return result", "return low", "return min(value, high)"]
    assert got["block"] == ["if value < low:\n        return low"]
    assert got["body"] == ["result = width * height\n    return result",
                           "if value < low:\n        return low\n    return min(value, high)"]
    lines = {"result = width * height": ["result", "=", "width", "*", "height"],
             "return result": ["return", "result"], "return low": ["return", "low"],
             "return min(value, high)": ["return", "min", "(", "value", ",", "high", ")"]}
    assert len(got["line-rest"]) == 4
    for s, (line, tokens) in zip(pools["line-rest"], lines.items()):
        assert s.target in suffixes_after_tokens(line, tokens), (line, s.target)
    for kind in ("next-line", "line-rest", "block"):
        for s in pools[kind]:
            assert s.kind == kind and s.path == "geo/shapes.py" and s.language == "python"
            assert s.text[:s.offset] + s.target + s.text[s.offset:] == SHAPES  # the gap is exactly the target
            if kind != "line-rest":  # the cursor after the line's indentation
                assert s.text[:s.offset].endswith("\n    ") or s.text[:s.offset].endswith("\n        ")
    for s in pools["body"]:  # the body slot generateFunction fills: after the docstring, on an indented line
        assert s.text[:s.offset].rstrip().endswith('."""') and s.text[:s.offset].endswith("\n    ")
        assert "return" not in s.text[s.text.index('."""', s.offset - 50):].split("\n\n\n")[0].split('."""')[1]
    # seeded: the same file gives the same samples
    assert file_samples(shapes()) == pools


def test_docstrings_comments_and_top_level_lines_are_not_samples():
    text = ('X_LIMIT = compute_limit(10)\n\n\ndef f(a):\n    """Doc string here."""\n    # a comment line\n'
            '    value = a + X_LIMIT\n    return value\n')
    pools = file_samples(shapes("m.py", text))
    assert [s.target for s in pools["next-line"]] == ["value = a + X_LIMIT", "return value"]
    assert all("X_LIMIT = compute" not in s.target for v in pools.values() for s in v)


def test_sample_counts_and_shares(tmp_path):
    files = [shapes(f"geo/s{i}.py", SHAPES.replace("area", f"area{i}")) for i in range(6)]
    counts = SampleCounts(next_line=10, line_rest=6, block=3, body=4)
    samples = eval_samples(files, counts, seed=1)
    by = {k: sum(s.kind == k for s in samples) for k in ("next-line", "line-rest", "block", "body")}
    assert by == {"next-line": 10, "line-rest": 6, "block": 3, "body": 4}
    assert eval_samples(files, counts, seed=1) == samples
    assert eval_samples(files, counts, seed=2) != samples
    half = take(samples, 12)
    assert len(half) == 12
    kept = {k: sum(s.kind == k for s in half) for k in by}
    assert kept == {"next-line": 5, "line-rest": 3, "block": 2, "body": 2}
    # the first of each kind's draw, in the original order
    assert [s for s in half if s.kind == "next-line"] == [s for s in samples if s.kind == "next-line"][:5]
    assert take(samples, 100) == samples
    assert SampleCounts().total >= 200
    with pytest.raises(EvalError, match="body"):
        SampleCounts(body=-1)


def test_generations_are_short():
    assert generation_limit(10, 128) == 10 + 8 + 2
    assert generation_limit(200, 128) == 128
    assert generation_limit(10, 128, short=False) == 128


def _engine():
    return TestEngine(table={'"""Area of a rectangle."""\n    ': "result = width * height\n    return result\n",
                             "    return ": "min(value, high)\n", "result ": "= width * height\n"})


def test_evaluation_through_the_served_pipeline_and_its_cache(tmp_path):
    samples = [s for v in file_samples(shapes()).values() for s in v]
    settings = EvalSettings(budget=PromptBudget(prompt=512, context=0))
    cache = ResultCache(tmp_path / "eval-cache.json")
    eng = _engine()
    res = evaluate(eng, QWEN25_CODER, samples, adapter=BASE_ADAPTER, root=tmp_path, settings=settings, cache=cache,
                   cache_id="base@test")
    rows = res["rows"]
    assert [(r["kind"], r["target"]) for r in rows] == [(s.kind, s.target) for s in samples]  # paired order
    exact = {(r["kind"], r["target"]) for r in rows if r["exact"]}
    assert ("next-line", "result = width * height") in exact
    assert ("body", "result = width * height\n    return result") in exact
    assert ("block", "if value < low:\n        return low") not in exact
    assert not any(r["cached"] for r in rows)
    s = res["summary"]
    assert s["all"]["samples"] == len(samples) and set(s) == {"all", "next-line", "line-rest", "block", "body"}
    calls = eng.calls
    # the same samples again: no engine call, the same rows, read back from the file
    again = evaluate(eng, QWEN25_CODER, samples, adapter=BASE_ADAPTER, root=tmp_path, settings=settings,
                     cache=ResultCache(tmp_path / "eval-cache.json"), cache_id="base@test")
    assert eng.calls == calls and all(r["cached"] for r in again["rows"])
    assert [(r["exact"], r["got"]) for r in again["rows"]] == [(r["exact"], r["got"]) for r in rows]
    # another adapter (or build) is another entry
    other = evaluate(eng, QWEN25_CODER, samples, adapter=BASE_ADAPTER, root=tmp_path, settings=settings,
                     cache=ResultCache(tmp_path / "eval-cache.json"), cache_id="adapter:abc@test")
    assert eng.calls > calls and not any(r["cached"] for r in other["rows"])
    # a changed document is another prompt
    moved = [type(x)(x.path, x.language, x.kind, "# moved\n" + x.text, x.offset + 8, x.target) for x in samples]
    calls = eng.calls
    evaluate(eng, QWEN25_CODER, moved, adapter=BASE_ADAPTER, root=tmp_path, settings=settings,
             cache=ResultCache(tmp_path / "eval-cache.json"), cache_id="base@test")
    assert eng.calls > calls


def test_the_report_shows_the_gate_interval_per_kind(tmp_path):
    from intarsia.training.gate import decide

    samples = [s for v in file_samples(shapes()).values() for s in v] * 3
    settings = EvalSettings(budget=PromptBudget(prompt=512, context=0))
    eng = _engine()
    good = evaluate(eng, QWEN25_CODER, samples, adapter=BASE_ADAPTER, root=tmp_path, settings=settings)
    bad = evaluate(TestEngine(table={}), QWEN25_CODER, samples, adapter=BASE_ADAPTER, root=tmp_path,
                   settings=settings)
    decision = decide(good["rows"], bad["rows"])
    report = {"repo": "r", "scores": {"shipped": bad["summary"], "adapted": good["summary"]},
              "gate": decision.to_json(), "rows": {"adapted": good["rows"]},
              "decision": {"promoted": decision.promote, "why": decision.why}}
    files = write_report(report, tmp_path / "report")
    md = files["report.md"].read_text()
    assert "90 % bootstrap interval" in md
    for kind in ("all", "next-line", "line-rest", "block", "body"):
        assert f"| {kind} | " in md
    nl = decision.by_kind["next-line"].exact_gain
    assert f"{nl.mean:+.1f} [{nl.low:+.1f}, {nl.high:+.1f}]" in md
    assert json.loads(files["report.json"].read_text())["gate"]["by_kind"]["body"]["samples"] == 6
    pytest.importorskip("matplotlib")
    assert files["report.png"].stat().st_size > 1000


def test_a_body_is_trained_and_judged_on_the_prompt_generate_function_sends(tmp_path):
    """One definition of the body's budget: the evaluation's body sample and training's docstring example of a
    function are prompted exactly as `intarsia.generateFunction` prompts it (its long suffix included)."""
    from intarsia.grammars.registry import get_language
    from intarsia.server.core.completion import PipelineOptions
    from intarsia.server.core.documents import Snapshot
    from intarsia.server.core.functions import _fim_prompt, prepare_function
    from intarsia.training.examples import ParsedFile, budget_for, docstring_examples, render_example

    py = get_language("python")
    long_file = SHAPES + "".join(f"\n\ndef helper_{i}(x):\n    return x + {i}\n" for i in range(60))
    budget = PromptBudget.served("cpu")
    assert budget_for("body", budget).suffix > budget.suffix == 48
    body = file_samples(shapes(text=long_file))["body"][0]
    eng = TestEngine(table={})
    evaluate(eng, QWEN25_CODER, [body], adapter=BASE_ADAPTER, root=tmp_path, settings=EvalSettings(budget=budget))
    # the user has the signature and the docstring, and runs the command on the function's name
    typed = long_file.replace("\n    result = width * height\n    return result", "")
    snap = Snapshot(uri="u", version=0, text=typed, offset=typed.index("def area") + 4, language_id="python",
                    language=py, path=body.path, invoked=True)
    options = PipelineOptions(budget=budget)
    command = _fim_prompt(prepare_function(snap, engine=eng, options=options), eng, QWEN25_CODER, options)[0]
    assert eng.last_prompt == command
    assert command.count("helper_") > 5  # the long suffix: more than 48 tokens of what follows
    ex = sorted(docstring_examples(ParsedFile(shapes(text=long_file), py)), key=lambda e: len(e.prefix))[0]
    assert render_example(ex, QWEN25_CODER, eng.count_tokens, budget_for(ex.kind, budget), None, tmp_path) == command
