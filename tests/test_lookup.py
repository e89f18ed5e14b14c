"""Prompt-lookup decoding (model/lookup.py): the drafter, the token loop over a runtime, the graph change that
returns logits for the last positions of a call, and the ORT engine with it on and off."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intarsia.model.engine import GenerationRequest
from intarsia.model.errors import BuildError
from intarsia.model.fim import QWEN25_CODER
from intarsia.model.lookup import DRAFT_ROWS, LookupDecoder, PromptLookup, add_draft_logits, logits_rows
from intarsia.model.decoding import common_prefix_len
from intarsia.model.ort_engine import OrtEngine

from tiny import build_ort, make_tiny_qwen2


# ---- the drafter -----------------------------------------------------------------------------------------------


def brute_draft(ctx: list[int], k: int, max_ngram: int = 3, stop=frozenset()) -> list[int]:
    """The definition: the latest earlier occurrence of the last n-gram (longest n first), what followed it;
    k tokens after a max_ngram match, at most n after a shorter one; cut at a stop token."""
    for n in range(max_ngram, 0, -1):
        if len(ctx) <= n:
            continue
        tail = ctx[-n:]
        for j in range(len(ctx) - n - 1, -1, -1):
            if ctx[j:j + n] == tail:
                out = []
                for t in ctx[j + n:j + n + (k if n == max_ngram else min(k, n))]:
                    if t in stop:
                        break
                    out.append(t)
                return out
    return []


def test_draft_examples():
    d = PromptLookup([1, 2, 3, 4, 5, 9, 1, 2, 3])
    assert d.draft(3) == [4, 5, 9]  # 3-gram (1, 2, 3) matched: k tokens
    assert d.draft(1) == [4]
    assert d.draft(0) == []
    d = PromptLookup([7, 8, 1, 2, 5, 6, 3, 4, 1, 2])
    assert d.draft(5) == [5, 6]  # only a 2-gram matches: at most 2 tokens
    d = PromptLookup([7, 8, 9, 1, 2])
    assert d.draft(3) == []  # the tail never matches itself
    d = PromptLookup([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3])
    assert d.draft(2) == [5, 1]  # the latest occurrence wins
    d.append(5)
    assert d.draft(3) == [1, 2, 3]
    assert PromptLookup([1, 2, 3, 0, 9, 1, 2, 3], stop_ids=[0]).draft(3) == []
    assert PromptLookup([1, 2, 3, 4, 0, 9, 1, 2, 3], stop_ids=[0]).draft(3) == [4]
    assert PromptLookup([]).draft(3) == [] and PromptLookup([5]).draft(3) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=60), st.integers(0, 6), st.integers(1, 4))
def test_draft_matches_the_definition(tokens, k, max_ngram):
    d = PromptLookup(max_ngram=max_ngram, stop_ids=[0])
    for i, t in enumerate(tokens):
        d.append(t)
        assert d.draft(k) == brute_draft(tokens[:i + 1], k, max_ngram, frozenset([0]))


# ---- the token loop over a runtime --------------------------------------------------------------------------------


class FakeRuntime:
    """A deterministic 'model' with a cache: the next token is a function of the last two tokens; `run` checks
    that the cache is never asked to hold a token that was not appended."""

    def __init__(self, prompt: list[int], vocab: int = 12, seed: int = 0):
        rng = random.Random(seed)
        self.vocab = vocab
        self.table = {(a, b): rng.randrange(vocab) for a in range(vocab) for b in range(vocab)}
        self.cache = list(prompt)
        self.runs: list[int] = []

    def logits(self, seq: list[int]) -> np.ndarray:
        row = np.zeros(self.vocab, np.float32)
        row[self.table[(seq[-2], seq[-1])]] = 1.0
        return row

    def first(self) -> np.ndarray:
        return self.logits(self.cache)

    def run(self, tokens: list[int]) -> np.ndarray:
        rows = []
        for t in tokens:
            self.cache.append(t)
            rows.append(self.logits(self.cache))
        self.runs.append(len(tokens))
        return np.stack(rows)

    def rewind(self, n: int) -> None:
        assert n <= len(self.cache)
        del self.cache[n:]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        seq = list(prompt)
        for _ in range(n):
            seq.append(self.table[(seq[-2], seq[-1])])
        return seq[len(prompt):]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("draft", [1, 3, 7])
def test_lookup_loop_is_greedy_and_keeps_the_cache_exact(seed, draft):
    rng = random.Random(seed)
    prompt = [rng.randrange(12) for _ in range(40)]
    rt = FakeRuntime(prompt, seed=seed)
    max_new = 50
    loop = LookupDecoder(rt.first, rt.run, rt.rewind, prompt, draft, max_new)
    out = [loop.next_token() for _ in range(max_new)]
    assert out == rt.greedy(prompt, max_new)
    # The cache holds the prompt and every produced token but the last (chosen, not yet run).
    assert rt.cache == prompt + out[:-1]
    assert loop.passes == len(rt.runs) and loop.passes < max_new  # a periodic sequence: drafts are accepted
    assert loop.accepted == max_new - 1 - loop.passes
    assert max(rt.runs) <= draft + 1


def test_lookup_loop_never_drafts_past_max_new():
    prompt = [1, 2, 3, 4] * 10
    rt = FakeRuntime(prompt)
    rt.table = {k: (k[1] % 4) + 1 for k in rt.table}  # continues 1 2 3 4 ...: every draft is right
    loop = LookupDecoder(rt.first, rt.run, rt.rewind, prompt, 7, 10)
    out = [loop.next_token() for _ in range(10)]
    assert out == [1, 2, 3, 4] * 2 + [1, 2]
    assert sum(rt.runs) == 9  # never runs a token beyond the 10th
    assert loop.drafted == loop.accepted


def test_lookup_loop_does_not_draft_end_tokens():
    prompt = [5, 6, 7, 0, 5, 6, 7]
    rt = FakeRuntime(prompt)
    seen = []
    orig = rt.run
    rt.run = lambda toks: seen.append(list(toks)) or orig(toks)
    loop = LookupDecoder(rt.first, rt.run, rt.rewind, prompt, 3, 6, stop_ids=[0])
    for _ in range(6):
        loop.next_token()
    assert all(0 not in toks[1:] for toks in seen)


# ---- the graph ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lookup")
    hf = make_tiny_qwen2(root / "hf", scale=10.0)
    full = build_ort(hf, root / "full")  # logits for every position
    pruned = build_ort(hf, root / "pruned", extra={"prune_lm_head": "true"})
    edited = build_ort(hf, root / "edited", extra={"prune_lm_head": "true"})
    add_draft_logits(edited / "model.onnx")
    return {"hf": hf, "full": full, "pruned": pruned, "edited": edited}


def _proto(path: Path):
    import onnx

    return onnx.load(str(path / "model.onnx"), load_external_data=False)


def test_logits_rows_of_each_graph(graphs):
    assert logits_rows(_proto(graphs["full"])) is None
    assert logits_rows(_proto(graphs["pruned"])) == 1
    assert logits_rows(_proto(graphs["edited"])) == DRAFT_ROWS
    before = (graphs["edited"] / "model.onnx").read_bytes()
    assert add_draft_logits(graphs["edited"] / "model.onnx") == DRAFT_ROWS  # idempotent
    assert (graphs["edited"] / "model.onnx").read_bytes() == before
    assert add_draft_logits(graphs["full"] / "model.onnx") is None


def test_edit_refuses_bad_input(graphs, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BuildError):
        add_draft_logits(bad)
    with pytest.raises(BuildError):
        add_draft_logits(graphs["edited"] / "model.onnx", rows=1)


def _session_rows(model_dir: Path, prompt: list[int], calls: list[int]) -> list[np.ndarray]:
    """onnxruntime-genai: append the prompt in calls of the given sizes; the logits output of each call."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 8)
    gen = og.Generator(model, params)
    out, pos = [], 0
    for n in calls:
        gen.append_tokens(np.asarray(prompt[pos:pos + n], dtype=np.int32))
        out.append(np.asarray(gen.get_output("logits")).reshape(n, -1).copy() if n > 1 else
                   gen.get_logits().reshape(1, -1).copy())
        pos += n
    return out


def test_edited_graph_returns_the_logits_of_the_last_positions(graphs):
    prompt = list(range(1000, 1040))
    calls = [20, 5, 1, 3, DRAFT_ROWS, 3]  # a prefill chunk longer than DRAFT_ROWS, then short calls
    full = _session_rows(graphs["full"], prompt, calls)
    edited = _session_rows(graphs["edited"], prompt, calls)
    for n, f, e in zip(calls, full, edited):
        assert e.shape == f.shape == (n, f.shape[-1])
        if n <= DRAFT_ROWS:
            np.testing.assert_allclose(e, f, rtol=0, atol=1e-4)  # every row of a short call
        else:
            np.testing.assert_allclose(e[-1], f[-1], rtol=0, atol=1e-4)  # the last row of a prefill chunk
            assert not e[:-1].any()


# ---- the engine ---------------------------------------------------------------------------------------------------


def _repetitive_prompt() -> str:
    body = "".join(f"    total_{i} = values[{i}] * weights[{i}] + bias\n" for i in range(12))
    return QWEN25_CODER.render("def combine(values, weights, bias):\n" + body + "    total_12 = values[", "\n")


def test_engine_lookup_on_and_off_give_the_same_tokens(graphs):
    prompt = _repetitive_prompt()
    with OrtEngine(graphs["edited"], provider="cpu", lookup_draft=0) as plain, \
            OrtEngine(graphs["edited"], provider="cpu") as fast, \
            OrtEngine(graphs["pruned"], provider="cpu") as pruned:
        assert plain.lookup_draft == 0 and fast.lookup_draft == 3 and fast.max_draft == DRAFT_ROWS - 1
        assert pruned.lookup_draft == 0  # one row of logits: nothing to verify drafts with
        for req in (GenerationRequest(prompt, max_new_tokens=48),
                    GenerationRequest(prompt, max_new_tokens=48, ignore_eos=True),
                    GenerationRequest(prompt, max_new_tokens=7, stop=("]",))):
            a, b, c = plain.generate(req), fast.generate(req), pruned.generate(req)
            assert a.token_ids == b.token_ids == c.token_ids
            assert a.text == b.text and a.finish_reason == b.finish_reason
            assert "lookup_passes" in b.extra and "lookup_passes" not in a.extra
        # The same request again reuses the cache left by lookup decoding and gives the same tokens.
        ref = plain.generate(GenerationRequest(prompt, max_new_tokens=48))
        again = fast.generate(GenerationRequest(prompt, max_new_tokens=48))
        assert again.token_ids == ref.token_ids
        assert again.timings.reused_tokens == again.timings.prompt_tokens - 1


@pytest.mark.parametrize("wrong_every", [0, 2, 3])
def test_engine_accepts_and_rejects_drafts_on_onnx_runtime(graphs, monkeypatch, wrong_every):
    """Drafts from an oracle that knows the greedy output (a random model never repeats itself), every
    `wrong_every`-th drafted token corrupted: accepted drafts save passes, rejected ones are rewound out of
    onnxruntime-genai's cache, and the tokens stay the greedy ones."""
    prompt = _repetitive_prompt()
    with OrtEngine(graphs["edited"], provider="cpu", lookup_draft=0) as plain, \
            OrtEngine(graphs["edited"], provider="cpu", lookup_draft=4) as fast:
        ref = plain.generate(GenerationRequest(prompt, max_new_tokens=40, ignore_eos=True))
        ids = fast.encode(prompt)
        truth = list(ref.token_ids)
        counter = {"n": 0}

        def oracle(self, k):
            done = len(self.tokens) - len(ids)
            out = truth[done:done + k]
            for j in range(len(out)):
                counter["n"] += 1
                if wrong_every and counter["n"] % wrong_every == 0:
                    out[j] = (out[j] + 1) % 1000
            return out

        monkeypatch.setattr(PromptLookup, "draft", oracle)
        fast.reset_cache()
        r = fast.generate(GenerationRequest(prompt, max_new_tokens=40, ignore_eos=True))
        assert list(r.token_ids) == truth
        assert r.extra["lookup_accepted"] > 0
        assert r.extra["lookup_passes"] < len(truth) - 1
        if wrong_every:
            assert r.extra["lookup_accepted"] < r.extra["lookup_drafted"]
        # The cache holds exactly the accepted tokens: continuing the accepted text reuses all of it.
        cont = prompt + r.text
        monkeypatch.undo()
        c = fast.generate(GenerationRequest(cont, max_new_tokens=8, ignore_eos=True))
        cont_ids = fast.encode(cont)
        assert c.timings.reused_tokens == min(common_prefix_len(cont_ids, ids + truth[:-1]), len(cont_ids) - 1)
        assert c.timings.reused_tokens > len(ids)
        assert c.token_ids == plain.generate(GenerationRequest(cont, max_new_tokens=8, ignore_eos=True)).token_ids


def test_engine_rejects_a_bad_draft_setting(graphs):
    from intarsia.model.errors import EngineError

    with pytest.raises(EngineError, match="lookup_draft"):
        OrtEngine(graphs["edited"], provider="cpu", lookup_draft=-1)
    with OrtEngine(graphs["edited"], provider="cpu", lookup_draft=50) as eng:
        assert eng.lookup_draft == DRAFT_ROWS - 1


def test_manifest_records_and_old_builds_get_the_edit(graphs, tmp_path):
    import shutil

    from intarsia.model.build import MANIFEST, _with_draft_logits

    folder = tmp_path / "old"
    shutil.copytree(graphs["pruned"], folder)
    (folder / MANIFEST).write_text(json.dumps({"name": "tiny", "build_key": "k"}))
    m = _with_draft_logits(folder, json.loads((folder / MANIFEST).read_text()))
    assert m["logits_rows"] == DRAFT_ROWS
    assert json.loads((folder / MANIFEST).read_text())["logits_rows"] == DRAFT_ROWS
    assert logits_rows(_proto(folder)) == DRAFT_ROWS
    assert _with_draft_logits(folder, m) == m


def test_lookup_setting():
    from intarsia.server.lsp.settings import Settings, parse_settings

    assert Settings().lookup_draft == 3
    s, warnings = parse_settings({"lookupDraft": 0})
    assert s.lookup_draft == 0 and not warnings
    s, warnings = parse_settings({"lookupDraft": 9})
    assert s.lookup_draft == 3 and any("lookupDraft" in w for w in warnings)
