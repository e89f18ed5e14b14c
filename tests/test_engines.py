"""OrtEngine and HfEngine on a tiny random Qwen2 (real tokenizer): parity, KV reuse, cancel, stops, EOS, adapters;
and the `Engine` API every engine declares."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from intarsia.model.engine import (
    BASE_ADAPTER,
    FINISH_CANCELLED,
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    Engine,
    GenerationRequest,
)
from intarsia.model.errors import EngineError, ModelNotFoundError
from intarsia.model.fim import QWEN25_CODER
from intarsia.model.hf_engine import HfEngine
from intarsia.model.decoding import HfTokenizerFile, TextAssembler, common_prefix_len
from intarsia.model.ort_engine import OrtEngine, available_providers, default_threads

from tiny import build_ort, make_tiny_qwen2

# Weights x10: greedy decoding has clear logit margins, so fp32 rounding differences between ONNX Runtime and
# torch (and between chunked and whole-prompt prefill) cannot flip a token.
SCALE = 10.0
NEW = 32


def _source() -> str:
    import json.decoder
    import textwrap

    return Path(json.decoder.__file__).read_text(encoding="utf-8") + Path(textwrap.__file__).read_text(
        encoding="utf-8"
    )


SOURCE = _source()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    hf_dir = make_tiny_qwen2(root / "hf", scale=SCALE)
    ort_dir = build_ort(hf_dir, root / "ort")
    return {"root": root, "hf": hf_dir, "ort": ort_dir}


@pytest.fixture(scope="session")
def ort(tiny):
    with OrtEngine(tiny["ort"], provider="cpu") as eng:
        yield eng


@pytest.fixture(scope="session")
def hf(tiny):
    with HfEngine(tiny["hf"]) as eng:
        yield eng


@pytest.fixture(params=["ort", "hf"])
def engine(request, ort, hf):
    return {"ort": ort, "hf": hf}[request.param]


def _fim(start: int, prefix_chars: int, suffix_chars: int) -> str:
    prefix = SOURCE[start : start + prefix_chars]
    suffix = SOURCE[start + prefix_chars : start + prefix_chars + suffix_chars]
    return QWEN25_CODER.render(prefix, suffix)


@pytest.fixture(scope="session")
def cold(tiny):
    """A second engine that starts every request from an empty cache: the reference for reuse tests."""
    with OrtEngine(tiny["ort"], provider="cpu") as eng:
        yield eng


def _cold(cold: OrtEngine, prompt: str, **kw) -> tuple[int, ...]:
    cold.reset_cache()
    r = cold.generate(GenerationRequest(prompt, max_new_tokens=kw.pop("max_new_tokens", NEW), **kw))
    assert r.timings.reused_tokens == 0
    return r.token_ids


# ---- helpers ---------------------------------------------------------------------------------------------------


def test_text_assembler_holds_incomplete_characters(tiny):
    tok = HfTokenizerFile(tiny["hf"] / "tokenizer.json")
    text = 'x = "héllo 🎉 a𝄞b"\n'
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # some characters really are split over byte tokens
    asm = TextAssembler(tok.decode, ())
    pieces = [asm.add(i) for i in ids] + [asm.finish()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == asm.text


def test_common_prefix_len():
    a = list(range(300))
    assert common_prefix_len(a, a) == 300
    assert common_prefix_len(a, a[:150] + [-1] + a[151:]) == 150
    assert common_prefix_len(a, a[:70]) == 70
    assert common_prefix_len([], a) == 0


def test_available_providers_and_threads(ort):
    provs = available_providers()
    assert provs[0] == "cpu"
    assert ort.provider == "cpu"
    assert ort.threads == default_threads() >= 1


# ---- parity --------------------------------------------------------------------------------------------------


def test_ort_hf_greedy_parity(ort, hf):
    prompts = [
        _fim(0, 60, 30),
        _fim(900, 250, 120),
        _fim(2500, 400, 200),
        SOURCE[4000:4500],
        _fim(6000, 300, 0),
        _fim(8000, 150, 400),
    ]
    seen: set[tuple[int, ...]] = set()
    for p in prompts:
        n = len(ort.encode(p))
        assert 20 <= n <= 200, n
        assert ort.encode(p) == hf.encode(p)
        ort.reset_cache()
        a = ort.generate(GenerationRequest(p, max_new_tokens=NEW))
        b = hf.generate(GenerationRequest(p, max_new_tokens=NEW))
        assert a.token_ids == b.token_ids, p[:60]
        assert a.text == b.text and a.finish_reason == b.finish_reason
        seen.add(a.token_ids)
    # The outputs depend on the prompt (the comparison is not between constant sequences).
    assert len(seen) == len(prompts)


# ---- KV prefix reuse ---------------------------------------------------------------------------------------------


def test_prefix_reuse_matches_cold_while_typing(ort, tiny, cold):
    start, suffix = 1200, SOURCE[1800:2100]
    typed = SOURCE[start:1800]
    prompts = []
    for cut in (420, 421, 425, 433, 440, 452):  # typing forward
        prompts.append(QWEN25_CODER.render(typed[:cut], suffix))
    prompts.append(QWEN25_CODER.render(typed[:446], suffix))  # backspaces
    prompts.append(QWEN25_CODER.render(typed[:446] + "foo(", suffix))  # an edit
    prompts.append(QWEN25_CODER.render(typed[:446] + "foo(", suffix[:-40]))  # the suffix changed at its end
    ort.reset_cache()
    results = [ort.generate(GenerationRequest(p, max_new_tokens=NEW)) for p in prompts]
    assert results[0].timings.reused_tokens == 0 and results[0].extra["rebuilt"]
    for p, r in zip(prompts[1:], results[1:]):
        assert not r.extra["rebuilt"]
        assert r.timings.reused_tokens > 0
        assert r.timings.reused_tokens < r.timings.prompt_tokens
    # Typing one character keeps the prefix part of the prompt: most of it is reused.
    assert results[1].timings.reused_tokens > results[1].timings.prompt_tokens // 2
    for p, r in zip(prompts, results):
        assert r.token_ids == _cold(cold, p), p[-80:]
    with OrtEngine(tiny["ort"], provider="cpu") as fresh:  # a new engine, not just a reset cache
        assert fresh.generate(GenerationRequest(prompts[-1], max_new_tokens=NEW)).token_ids == results[-1].token_ids


def test_same_prompt_twice_reruns_only_the_last_token(ort, tiny, cold):
    p = _fim(100, 500, 100)
    ort.reset_cache()
    a = ort.generate(GenerationRequest(p, max_new_tokens=NEW))
    b = ort.generate(GenerationRequest(p, max_new_tokens=NEW))
    assert b.timings.reused_tokens == b.timings.prompt_tokens - 1
    assert a.token_ids == b.token_ids
    # A prompt that continues with exactly the generated tokens (accepting the completion) reuses prompt +
    # generation, except the last generated token, which has no KV entry yet.
    q = p + b.text + "\n"
    assert ort.encode(q)[: b.timings.prompt_tokens + NEW] == ort.encode(p) + list(b.token_ids)
    c = ort.generate(GenerationRequest(q, max_new_tokens=NEW))
    assert c.timings.reused_tokens == b.timings.prompt_tokens + NEW - 1
    assert c.token_ids == _cold(cold, q)


def test_small_window_grows_and_matches(tiny, ort):
    p = _fim(500, 300, 60)
    n = len(ort.encode(p))
    with OrtEngine(tiny["ort"], provider="cpu", max_length=64, prefill_chunk=7) as small:
        assert n + NEW > 64
        r = small.generate(GenerationRequest(p, max_new_tokens=NEW))
        assert r.extra["rebuilt"]
        ort.reset_cache()
        assert r.token_ids == ort.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids


def test_prompt_longer_than_context_is_an_error(ort):
    text = SOURCE * 3
    assert len(ort.encode(text)) >= ort.context_length
    with pytest.raises(EngineError, match="context"):
        ort.generate(GenerationRequest(text, max_new_tokens=4))


# ---- cancel ---------------------------------------------------------------------------------------------------


def test_cancel_from_on_text_stops_within_one_token(engine):
    p = _fim(100, 300, 50)
    full = engine.generate(GenerationRequest(p, max_new_tokens=NEW))
    assert full.finish_reason == FINISH_LENGTH
    cancel = threading.Event()
    first: list[str] = []

    def on_text(piece: str) -> None:
        if not first:
            first.append(piece)
            cancel.set()

    r = engine.generate(GenerationRequest(p, max_new_tokens=NEW), cancel=cancel, on_text=on_text)
    assert r.finish_reason == FINISH_CANCELLED
    # Tokens needed to produce the first piece in the uncancelled run:
    produced = next(k for k in range(1, NEW + 1) if engine.decode(full.token_ids[:k]).startswith(first[0]))
    assert r.timings.new_tokens <= produced + 1
    assert r.token_ids == full.token_ids[: r.timings.new_tokens]
    assert full.text.startswith(r.text)


def test_cancel_from_another_thread(engine):
    p = _fim(200, 200, 50)
    cancel = threading.Event()
    counted: list[int] = []
    seen = threading.Event()

    def on_text(piece: str) -> None:
        counted.append(1)
        if len(counted) == 3:
            seen.set()
            # Give the other thread time to set the event before the next token.
            assert cancel.wait(5)

    t = threading.Thread(target=lambda: (seen.wait(5), cancel.set()))
    t.start()
    r = engine.generate(GenerationRequest(p, max_new_tokens=200), cancel=cancel, on_text=on_text)
    t.join()
    assert r.finish_reason == FINISH_CANCELLED
    assert r.timings.new_tokens <= len(counted) + 1 < 10


def test_cancel_before_start(engine):
    cancel = threading.Event()
    cancel.set()
    r = engine.generate(GenerationRequest(_fim(0, 100, 10), max_new_tokens=NEW), cancel=cancel)
    assert r.finish_reason == FINISH_CANCELLED and r.timings.new_tokens == 0 and r.text == ""


def test_cancelled_cache_is_still_correct(ort, tiny, cold):
    """A cancelled request leaves a partial cache behind; the next request must still match a cold run."""
    p = _fim(5000, 400, 80)
    cancel = threading.Event()
    ort.reset_cache()
    ort.generate(GenerationRequest(p, max_new_tokens=NEW), cancel=cancel, on_text=lambda s: cancel.set())
    q = p[:-20] + "x"
    assert ort.generate(GenerationRequest(q, max_new_tokens=NEW)).token_ids == _cold(cold, q)


# ---- stop strings, length, streaming ----------------------------------------------------------------------------


def _stop_inside(text: str) -> tuple[str, int]:
    """A 3-character stop string from the middle of `text` and where it first occurs."""
    for i in range(len(text) // 3, len(text) - 3):
        s = text[i : i + 3]
        if s.strip() and text.find(s) == i:
            return s, i
    raise AssertionError("no usable stop string")


def test_stop_string_cuts_text(engine):
    p = _fim(700, 300, 80)
    full = engine.generate(GenerationRequest(p, max_new_tokens=NEW))
    stop, at = _stop_inside(full.text)
    pieces: list[str] = []
    r = engine.generate(
        GenerationRequest(p, max_new_tokens=NEW, stop=(stop, "a stop string that never occurs")),
        on_text=pieces.append,
    )
    assert r.finish_reason == FINISH_STOP
    assert r.text == full.text[:at]
    assert "".join(pieces) == r.text
    assert r.token_ids == full.token_ids[: len(r.token_ids)]
    assert len(r.token_ids) < len(full.token_ids)


def test_stop_string_split_across_tokens(engine):
    p = _fim(1500, 250, 60)
    full = engine.generate(GenerationRequest(p, max_new_tokens=NEW))
    texts = [engine.decode([t]) for t in full.token_ids]
    # Find a boundary between two tokens with at least two plain characters on each side.
    j = next(
        k
        for k in range(len(texts) - 1)
        if len(texts[k]) >= 2
        and len(texts[k + 1]) >= 2
        and "\ufffd" not in texts[k] + texts[k + 1]
        and "".join(texts).find(texts[k][-2:] + texts[k + 1][:2]) == len("".join(texts[:k])) + len(texts[k]) - 2
    )
    stop = texts[j][-2:] + texts[j + 1][:2]
    pieces: list[str] = []
    r = engine.generate(GenerationRequest(p, max_new_tokens=NEW, stop=(stop,)), on_text=pieces.append)
    assert r.finish_reason == FINISH_STOP
    assert r.text == "".join(texts[: j + 1])[:-2]
    assert r.timings.new_tokens == j + 2  # stopped at the token that completed the stop string
    assert "".join(pieces) == r.text


def test_max_new_tokens_gives_length(engine):
    r = engine.generate(GenerationRequest(_fim(300, 200, 40), max_new_tokens=5))
    assert r.finish_reason == FINISH_LENGTH
    assert r.timings.new_tokens == len(r.token_ids) == 5
    assert r.text == engine.decode(r.token_ids)


def test_streaming_pieces_concatenate(engine):
    p = _fim(2200, 300, 100)
    pieces: list[str] = []
    r = engine.generate(GenerationRequest(p, max_new_tokens=NEW, stop=QWEN25_CODER.stop_strings), on_text=pieces.append)
    assert len(pieces) > 1
    assert "".join(pieces) == r.text
    streamed = list(engine.stream(GenerationRequest(p, max_new_tokens=NEW, stop=QWEN25_CODER.stop_strings)))
    assert "".join(streamed) == r.text


def test_timings(ort):
    p = _fim(3500, 600, 100)
    ort.reset_cache()
    r = ort.generate(GenerationRequest(p, max_new_tokens=NEW))
    t = r.timings
    assert t.prompt_tokens == len(ort.encode(p)) and t.reused_tokens == 0 and t.new_tokens == NEW
    assert 0 < t.prefill_s <= t.first_token_s <= t.total_s
    assert t.decode_s > 0 and t.decode_tps > 0 and t.prefill_tps > 0


def test_sampling_is_seeded(tiny, cold):
    p = _fim(400, 200, 40)
    req = GenerationRequest(p, max_new_tokens=16, temperature=1.0, top_p=0.9)
    with OrtEngine(tiny["ort"], provider="cpu", seed=7) as a, OrtEngine(tiny["ort"], provider="cpu", seed=7) as b:
        ra, rb = a.generate(req), b.generate(req)
        assert ra.token_ids == rb.token_ids and len(ra.token_ids) == 16
        # Sampling runs on the same cache: the next greedy request still matches a cold run.
        q = p + "z"
        assert a.generate(GenerationRequest(q, max_new_tokens=NEW)).token_ids == _cold(cold, q)


def test_request_seed_makes_sampling_reproducible(engine):
    p = _fim(500, 200, 40)

    def sample(seed):
        return engine.generate(GenerationRequest(p, max_new_tokens=12, temperature=5.0, top_p=0.99,
                                                 seed=seed)).token_ids

    first = sample(3)
    assert len(first) == 12 and sample(3) == first  # the same seed: the same tokens, whatever ran in between
    assert sample(4) != first  # (deterministic too: seeds 3 and 4 draw differently at this temperature)
    greedy = engine.generate(GenerationRequest(p, max_new_tokens=12)).token_ids
    assert engine.generate(GenerationRequest(p, max_new_tokens=12, seed=3)).token_ids == greedy  # greedy ignores it


# ---- end tokens ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def eos_case(tiny, ort):
    """A copy of the ORT model whose genai_config declares the 6th greedy token of a prompt as its end token."""
    p = _fim(2600, 300, 80)
    ort.reset_cache()
    ids = ort.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids
    k = next(i for i in range(5, NEW) if ids[i] not in ids[:i])
    d = tiny["root"] / "ort-eos"
    if not d.exists():
        d.mkdir()
        for f in tiny["ort"].iterdir():
            if f.name != "genai_config.json":
                (d / f.name).symlink_to(f)
        cfg = json.loads((tiny["ort"] / "genai_config.json").read_text())
        cfg["model"]["eos_token_id"] = [int(ids[k])]
        (d / "genai_config.json").write_text(json.dumps(cfg))
    return {"dir": d, "prompt": p, "ids": ids, "k": k}


def test_eos_from_genai_config(eos_case, tiny, cold):
    p, ids, k = eos_case["prompt"], eos_case["ids"], eos_case["k"]
    with OrtEngine(eos_case["dir"], provider="cpu") as eng:
        r = eng.generate(GenerationRequest(p, max_new_tokens=NEW))
        assert r.finish_reason == FINISH_EOS
        assert r.token_ids == ids[: k + 1]
        assert r.text == eng.decode(ids[:k])
        # After an end token (onnxruntime-genai marks the generator done) the cache is still reusable.
        q = p[:-30] + "("
        r2 = eng.generate(GenerationRequest(q, max_new_tokens=4))
        assert r2.timings.reused_tokens > 0
        assert r2.token_ids == _cold(cold, q, max_new_tokens=4)[: len(r2.token_ids)]


def test_eos_override_on_both_engines(eos_case, tiny):
    p, ids, k = eos_case["prompt"], eos_case["ids"], eos_case["k"]
    with OrtEngine(tiny["ort"], provider="cpu", eos_token_ids=[ids[k]]) as o:
        ro = o.generate(GenerationRequest(p, max_new_tokens=NEW))
    h = HfEngine(tiny["hf"], eos_token_ids=[ids[k]])
    rh = h.generate(GenerationRequest(p, max_new_tokens=NEW))
    assert ro.finish_reason == rh.finish_reason == FINISH_EOS
    assert ro.token_ids == rh.token_ids == ids[: k + 1]
    assert ro.text == rh.text


# ---- adapters ---------------------------------------------------------------------------------------------------

_LORA_A = "lora.layers.0.attn.o_proj.A"
_LORA_B = "lora.layers.0.attn.o_proj.B"


def _lora_model(tiny) -> Path:
    """A copy of the tiny ORT model with LoRA inputs (A: [64, r], B: [r, 64], rank 0 by default) on one MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tiny["root"] / "ort-lora"
    if d.exists():
        return d
    d.mkdir()
    for f in tiny["ort"].iterdir():
        if f.name != "model.onnx":
            # onnxruntime refuses external data reached through a symlink out of the model folder.
            try:
                os.link(f, d / f.name)
            except OSError:
                shutil.copy2(f, d / f.name)
    m = onnx.load(str(tiny["ort"] / "model.onnx"), load_external_data=False)
    g = m.graph
    node = next(n for n in g.node if n.name == "/model/layers.0/attn/o_proj/MatMul")
    x, out = node.input[0], node.output[0]
    node.output[0] = out + "/base"
    g.input.append(helper.make_tensor_value_info(_LORA_A, TensorProto.FLOAT, [64, "lora_rank"]))
    g.input.append(helper.make_tensor_value_info(_LORA_B, TensorProto.FLOAT, ["lora_rank", 64]))
    g.initializer.append(numpy_helper.from_array(np.zeros((64, 0), np.float32), _LORA_A))
    g.initializer.append(numpy_helper.from_array(np.zeros((0, 64), np.float32), _LORA_B))
    at = list(g.node).index(node) + 1
    for i, n in enumerate(
        [
            helper.make_node("MatMul", [x, _LORA_A], [out + "/a"], name="lora/A"),
            helper.make_node("MatMul", [out + "/a", _LORA_B], [out + "/b"], name="lora/B"),
            helper.make_node("Add", [out + "/base", out + "/b"], [out], name="lora/Add"),
        ]
    ):
        g.node.insert(at + i, n)
    onnx.save(m, str(d / "model.onnx"))
    return d


def _adapter_file(
    path: Path, seed: int, names=(_LORA_A, _LORA_B), shapes=((64, 4), (4, 64)), dtype=np.float32
) -> tuple[Path, dict]:
    import onnxruntime

    rng = np.random.default_rng(seed)
    arrays = {n: rng.normal(0, 0.3, shape).astype(dtype) for n, shape in zip(names, shapes)}
    fmt = onnxruntime.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: onnxruntime.OrtValue.ortvalue_from_numpy(v) for k, v in arrays.items()})
    fmt.export_adapter(str(path))
    return path, arrays


def _ort_first_token(model_dir: Path, ids: list[int], feeds_extra: dict) -> int:
    """Greedy first token from plain onnxruntime (no genai) with the given LoRA feeds."""
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    sess = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
    dec = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), np.float32)
    feeds.update(feeds_extra)
    return int(sess.run(["logits"], feeds)[0][0, -1].argmax())


def test_adapter_without_lora_inputs_is_rejected(ort, tiny, tmp_path):
    path, _ = _adapter_file(tmp_path / "a.onnx_adapter", 1)
    with pytest.raises(EngineError, match="no LoRA inputs"):
        ort.load_adapter("a", path)
    with pytest.raises(ModelNotFoundError):
        ort.load_adapter("a", tmp_path / "missing.onnx_adapter")
    with pytest.raises(EngineError, match="not loaded"):
        ort.generate(GenerationRequest("x = 1", max_new_tokens=2, adapter="a"))


def test_adapters_select_per_request(tiny, tmp_path, cold):
    d = _lora_model(tiny)
    a1, arr1 = _adapter_file(tmp_path / "a1.onnx_adapter", 1)
    a2, arr2 = _adapter_file(tmp_path / "a2.onnx_adapter", 2)
    bad, _ = _adapter_file(tmp_path / "bad.onnx_adapter", 3, names=("lora.nope.A", "lora.nope.B"))
    bad_shape, _ = _adapter_file(tmp_path / "shape.onnx_adapter", 4, shapes=((32, 4), (4, 64)))
    bad_type, _ = _adapter_file(tmp_path / "type.onnx_adapter", 5, dtype=np.float16)
    p = _fim(1000, 200, 50)
    base_ids = _cold(cold, p)
    with OrtEngine(d, provider="cpu", adapters={"one": a1}) as eng:
        assert eng.lora_inputs() == {_LORA_A, _LORA_B}
        eng.load_adapter("two", a2)
        with pytest.raises(EngineError, match="does not fit.*not inputs"):
            eng.load_adapter("bad", bad)
        with pytest.raises(EngineError, match=r"shape \[32, 4\].*needs \[64, \?\]"):
            eng.load_adapter("bad", bad_shape)
        with pytest.raises(EngineError, match="float16"):
            eng.load_adapter("bad", bad_type)
        assert set(eng.adapter_names) == {"one", "two"}
        base = eng.generate(GenerationRequest(p, max_new_tokens=NEW))
        assert base.token_ids == base_ids  # rank-0 defaults: the base model
        r1 = eng.generate(GenerationRequest(p, max_new_tokens=NEW, adapter="one"))
        assert r1.extra["rebuilt"] and r1.extra["adapter"] == "one"
        r1b = eng.generate(GenerationRequest(p + "a", max_new_tokens=NEW, adapter="one"))
        assert not r1b.extra["rebuilt"] and r1b.timings.reused_tokens > 0
        r2 = eng.generate(GenerationRequest(p, max_new_tokens=NEW, adapter="two"))
        assert len({base.token_ids, r1.token_ids, r2.token_ids}) == 3
        # The adapter's first token is what plain onnxruntime computes with the same LoRA inputs.
        ids = eng.encode(p)
        assert r1.token_ids[0] == _ort_first_token(d, ids, arr1)
        assert r2.token_ids[0] == _ort_first_token(d, ids, arr2)
        # Back to the base model, and the default adapter applies to requests that name none.
        assert eng.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids == base_ids
        eng.default_adapter = "one"
        assert eng.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids == r1.token_ids
        assert eng.generate(GenerationRequest(p, max_new_tokens=NEW, adapter="")).token_ids == base_ids
        eng.unload_adapter("one")
        assert eng.default_adapter is None
        with pytest.raises(EngineError, match="not loaded"):
            eng.generate(GenerationRequest(p, max_new_tokens=2, adapter="one"))


# ---- errors -------------------------------------------------------------------------------------------------------


def test_missing_model_and_bad_provider(tmp_path, tiny):
    with pytest.raises(ModelNotFoundError):
        OrtEngine(tmp_path / "nothing")
    with pytest.raises(ModelNotFoundError):
        HfEngine(tmp_path / "nothing")
    with pytest.raises(EngineError, match="provider"):
        OrtEngine(tiny["ort"], provider="tpu")
    if "cuda" not in available_providers():
        with pytest.raises(EngineError, match="CUDA"):
            OrtEngine(tiny["ort"], provider="cuda")


def test_closed_engine_raises(tiny):
    eng = OrtEngine(tiny["ort"], provider="cpu")
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.generate(GenerationRequest("x", max_new_tokens=1))


def test_threads_setting_does_not_change_tokens(tiny, ort):
    p = _fim(4200, 300, 60)
    ort.reset_cache()
    expected = ort.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids
    with OrtEngine(tiny["ort"], provider="cpu", threads=1) as one:
        assert one.threads == 1
        assert one.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids == expected


def test_hf_engine_from_model_object(tiny, hf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny["hf"]))
    eng = HfEngine(model, tokenizer=tiny["hf"] / "tokenizer.json")
    p = _fim(600, 200, 30)
    assert eng.generate(GenerationRequest(p, max_new_tokens=8)).token_ids == hf.generate(
        GenerationRequest(p, max_new_tokens=8)
    ).token_ids
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        HfEngine(model, tokenizer=tiny["root"] / "no-such-tokenizer.json")


class _SetAfter(threading.Event):
    """An event that reports itself set from its n-th check on (to cancel at an exact point)."""

    def __init__(self, n: int):
        super().__init__()
        self.checks = 0
        self.n = n

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n or super().is_set()


def test_cancel_during_prefill_keeps_the_computed_chunks(tiny, cold):
    p = _fim(2000, 600, 100)
    with OrtEngine(tiny["ort"], provider="cpu", prefill_chunk=16) as eng:
        n = len(eng.encode(p))
        assert n > 64
        # Checks: one before the prefill, then one before each chunk: cancel before the 4th chunk.
        r = eng.generate(GenerationRequest(p, max_new_tokens=NEW), cancel=_SetAfter(5))
        assert r.finish_reason == FINISH_CANCELLED and r.timings.new_tokens == 0
        r2 = eng.generate(GenerationRequest(p, max_new_tokens=NEW))
        assert r2.timings.reused_tokens == 3 * 16
        assert r2.token_ids == _cold(cold, p)


def test_callback_errors_propagate_unchanged(engine, tiny, cold):
    p = _fim(2400, 300, 60)

    def boom(piece: str) -> None:
        raise KeyError("client went away")

    with pytest.raises(KeyError):
        engine.generate(GenerationRequest(p, max_new_tokens=NEW), on_text=boom)
    q = p + "y"
    assert engine.generate(GenerationRequest(q, max_new_tokens=NEW)).token_ids == _cold(cold, q)


def test_hf_engine_with_peft_adapter(tiny, hf, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny["hf"]))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(str(tmp_path / "team-lora"))
    eng = HfEngine(tiny["hf"], adapter_dir=tmp_path / "team-lora")
    assert eng.adapter_name == "team-lora"
    p = _fim(1100, 250, 60)
    plain = hf.generate(GenerationRequest(p, max_new_tokens=NEW))
    with_adapter = eng.generate(GenerationRequest(p, max_new_tokens=NEW))
    assert with_adapter.extra["adapter"] == "team-lora"
    assert with_adapter.token_ids != plain.token_ids
    assert eng.generate(GenerationRequest(p, max_new_tokens=NEW, adapter="team-lora")).token_ids == with_adapter.token_ids
    assert eng.generate(GenerationRequest(p, max_new_tokens=NEW, adapter="")).token_ids == plain.token_ids
    with pytest.raises(EngineError, match="not loaded"):
        eng.generate(GenerationRequest(p, max_new_tokens=2, adapter="other"))
    with pytest.raises(ModelNotFoundError):
        HfEngine(tiny["hf"], adapter_dir=tmp_path / "missing")
    # The Engine adapter API over the one PEFT adapter: listed, the default, never loaded or unloaded at run time.
    assert eng.adapter_names == ("team-lora",) and eng.default_adapter == "team-lora"
    assert not eng.can_load_adapters
    with pytest.raises(EngineError, match="at construction"):
        eng.load_adapter("second", tmp_path / "team-lora")
    with pytest.raises(EngineError, match="at construction"):
        eng.unload_adapter("team-lora")
    with pytest.raises(EngineError, match="not loaded"):
        eng.default_adapter = "other"
    eng.default_adapter = None  # requests that name no adapter now run the base model
    assert eng.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids == plain.token_ids
    named = eng.generate(GenerationRequest(p, max_new_tokens=NEW, adapter="team-lora"))
    assert named.token_ids == with_adapter.token_ids
    eng.default_adapter = "team-lora"
    assert eng.generate(GenerationRequest(p, max_new_tokens=NEW)).token_ids == with_adapter.token_ids


def test_ignore_eos_runs_to_the_limit(eos_case, tiny):
    p, ids, k = eos_case["prompt"], eos_case["ids"], eos_case["k"]
    req = GenerationRequest(p, max_new_tokens=NEW, ignore_eos=True)
    with OrtEngine(eos_case["dir"], provider="cpu") as o:
        ro = o.generate(req)
    rh = HfEngine(tiny["hf"], eos_token_ids=[ids[k]]).generate(req)
    for r in (ro, rh):
        assert r.finish_reason == FINISH_LENGTH
        assert r.token_ids == ids  # the same tokens as a model without that end token


# ---- the Engine API -------------------------------------------------------------------------------------------

# What each engine says about where it runs (None: its own word, but not an execution provider of this machine).
_PROVIDERS = {"OrtEngine": "cpu", "HfEngine": "cpu", "RemoteEngine": "remote", "TestEngine": None}


def _test_engine_class():
    try:
        from intarsia.model.test_engine import TestEngine
    except ImportError:
        from intarsia.model.test_engine import TestEngine
    return TestEngine


def _engine_classes() -> dict[str, type]:
    """Every concrete Engine subclass defined in intarsia.model (all of its modules imported), and TestEngine."""
    import importlib
    import inspect
    import pkgutil

    import intarsia.model

    for info in pkgutil.iter_modules(intarsia.model.__path__):
        importlib.import_module(f"intarsia.model.{info.name}")
    found = {"TestEngine": _test_engine_class()}
    stack = [Engine]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("intarsia.model.") and not inspect.isabstract(sub):
                found[sub.__name__] = sub
    return found


class _Bare(Engine):
    """An engine that implements only what Engine requires: it shows the declared defaults."""

    def generate(self, request, *, cancel=None, on_text=None):
        raise NotImplementedError

    def encode(self, text):
        return [len(text)]


def _check_declared_api(eng: Engine) -> None:
    """What Engine declares, as every engine must honour it."""
    assert isinstance(eng.provider, str) and eng.provider
    assert isinstance(eng.can_load_adapters, bool)
    names = eng.adapter_names
    assert isinstance(names, tuple) and all(isinstance(n, str) and n for n in names)
    default = eng.default_adapter
    assert default is None or default in names
    assert eng.reset_cache() is None
    with pytest.raises(EngineError, match="not loaded"):
        eng.unload_adapter("no-such-adapter")
    eng.default_adapter = None  # the base model: accepted everywhere
    assert eng.default_adapter is None
    eng.default_adapter = BASE_ADAPTER
    assert eng.default_adapter in (None, BASE_ADAPTER)
    eng.default_adapter = default
    if not eng.can_load_adapters:
        with pytest.raises(EngineError):
            eng.load_adapter("a", "/nonexistent/a.onnx_adapter")
        with pytest.raises(EngineError, match="not loaded"):
            eng.default_adapter = "no-such-adapter"
        assert eng.default_adapter == default


def test_engine_declares_the_api_with_defaults():
    for attr in ("provider", "can_load_adapters", "adapter_names", "load_adapter", "unload_adapter",
                 "default_adapter", "reset_cache"):
        assert hasattr(Engine, attr), attr
    eng = _Bare()
    assert eng.provider == "unknown" and eng.can_load_adapters is False
    assert eng.adapter_names == () and eng.default_adapter is None
    with pytest.raises(EngineError, match="cannot load adapters at run time"):
        eng.load_adapter("x", "x.onnx_adapter")
    _check_declared_api(eng)
    eng.provider = "cpu"  # a plain attribute (the server's tests set it on the test engine)
    assert eng.provider == "cpu"


def test_every_engine_exposes_the_declared_api(ort, hf):
    from intarsia.model.remote_engine import RemoteEngine

    classes = _engine_classes()
    assert set(classes) == set(_PROVIDERS), "a new Engine subclass: add it to _PROVIDERS and build it below"
    engines = {
        "OrtEngine": ort,
        "HfEngine": hf,
        "RemoteEngine": RemoteEngine("http://127.0.0.1:9", timeout=1),  # never contacted
        "TestEngine": classes["TestEngine"](),
    }
    for name, eng in engines.items():
        assert type(eng) is classes[name]
        if _PROVIDERS[name] is None:
            assert eng.provider not in ("cpu", "cuda"), name
        else:
            assert eng.provider == _PROVIDERS[name], name
        _check_declared_api(eng)
    assert ort.can_load_adapters and not hf.can_load_adapters
    assert ort.default_adapter is None and hf.default_adapter is None  # built without adapters
    assert engines["RemoteEngine"].adapter_names == engines["TestEngine"].adapter_names == ()


def test_local_engines_share_checks_and_error_wrapping(engine, monkeypatch):
    """One generate for both in-process engines: the same request checks, runtime errors become EngineError."""
    label = {"ort": "ONNX Runtime", "hf": "transformers"}[engine.name]
    with pytest.raises(EngineError, match="^the prompt is empty$"):
        engine.generate(GenerationRequest("", max_new_tokens=4))
    p = _fim(300, 200, 40)
    first = engine.generate(GenerationRequest(p, max_new_tokens=4))

    def broken(text: str) -> list[int]:
        raise RuntimeError("tokenizer broke\nsecond line")

    monkeypatch.setattr(engine, "encode", broken)
    with pytest.raises(EngineError, match=f"^{label} generation failed: tokenizer broke$"):
        engine.generate(GenerationRequest(p, max_new_tokens=4))
    monkeypatch.undo()
    again = engine.generate(GenerationRequest(p, max_new_tokens=4))
    assert again.token_ids == first.token_ids
    assert again.timings.reused_tokens == 0  # after a runtime failure the ONNX engine starts cold


def test_closed_engines_say_which(tiny):
    for eng, label in ((OrtEngine(tiny["ort"], provider="cpu"), "ONNX"), (HfEngine(tiny["hf"]), "transformers")):
        eng.close()
        eng.close()  # closing twice is harmless
        with pytest.raises(EngineError, match=f"^the {label} engine is closed$"):
            eng.generate(GenerationRequest("x", max_new_tokens=1))
