"""Exact GGUF → MatMulNBits transcoding, on tiny Qwen2 GGUFs with the real file's block types.

Every written weight must dequantize to exactly `gguf.quants.dequantize`'s values; the transcoded model must
compute what the builder's fp32 model computes (to fp32 rounding at accuracy levels 0/1, to int8-activation
rounding at level 4), keep the node output names the LoRA pass relies on, and refuse a GGUF the fp32 export
was not built from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from intarsia.model.errors import BuildError, CorruptModelError
from intarsia.model.transcode import (
    BlockForm,
    TranscodeReport,
    combine,
    decode_blocks,
    pack_codes,
    pack_zero_points,
    read_gguf_tensors,
    transcode,
    verify,
)
from tiny import build_ort
from tiny_gguf import VARIANTS, q4_k_blocks, q5_k_blocks, q6_k_blocks, quantized_tensor, tensor_types, write_tiny_gguf

# Inner weights at the usual 0.02 std, a large lm_head with 256 stronger "hub" rows: greedy then has clear
# winners (int8 activations at accuracy level 4 move logits by up to ~1% of their range, about the top-2 margin
# of a plain random model).
SCALE, OUT_SCALE, HUBS = 1.0, 16.0, 256
# logits tolerance, relative to the largest logit: fp32 activations (levels 0, 1) / int8 activations (level 4)
TOL_FP32, TOL_INT8 = 1e-5, 1.5e-2
PROMPTS = [
    [750, 23811, 4555, 470, 220, 16, 198],
    [1499, 8591, 1159, 5708, 624, 13],
    [151643, 42, 1000, 7, 318, 9022, 11, 2229, 553],
]


def _ort_session(model_dir: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])


def logits_of(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] of one prefill with an empty cache."""
    cfg = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    feeds = {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, len(ids)), np.int64),
    }
    empty = np.zeros((1, cfg["num_key_value_heads"], 0, cfg["head_size"]), np.float32)
    for i in range(cfg["num_hidden_layers"]):
        feeds[f"past_key_values.{i}.key"] = empty
        feeds[f"past_key_values.{i}.value"] = empty
    return _ort_session(model_dir).run(["logits"], feeds)[0][0]


def greedy(model_dir: Path, prompt: list[int], new: int = 16) -> list[int]:
    import onnxruntime_genai as og

    cfg = og.Config(str(model_dir))
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": 2}}}}))
    model = og.Model(cfg)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new, min_length=len(prompt) + new)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    while not gen.is_done():
        gen.generate_next_token()
    return list(gen.get_sequence(0))[len(prompt):]


class Built:
    def __init__(self, root: Path, variant: str) -> None:
        self.root = root
        self.variant = variant
        self.gguf = write_tiny_gguf(root / f"{variant}.gguf", variant=variant, scale=SCALE, out_scale=OUT_SCALE,
                                    hub_tokens=HUBS, hf_dir=root / "hf")
        self.fp32 = build_ort(root / "hf", root / "fp32")
        self._exact: dict[int, tuple[Path, TranscodeReport]] = {}

    def exact(self, accuracy_level: int = 4) -> tuple[Path, TranscodeReport]:
        if accuracy_level not in self._exact:
            out = self.root / f"exact-{accuracy_level}"
            report = transcode(self.fp32, self.gguf, out, accuracy_level=accuracy_level, progress=False)
            self._exact[accuracy_level] = (out, report)
        return self._exact[accuracy_level]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[str, Built] = {}

    def get(variant: str) -> Built:
        if variant not in cache:
            cache[variant] = Built(tmp_path_factory.mktemp(f"tc-{variant}"), variant)
        return cache[variant]

    return get


# ---------------------------------------------------------------------------------------------------------------
# Block formats, without a model
# ---------------------------------------------------------------------------------------------------------------

ALL_TYPES = ["Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_block_form_is_gguf_dequantization(type_name):
    import gguf

    rng = np.random.default_rng(3)
    n, k = 6, 512
    raw = quantized_tensor(rng, type_name, n, k, 0.05)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name]).reshape(n, k)
    form = decode_blocks(raw, type_name, n, k)
    assert form is not None and form.codes.dtype == np.uint8
    assert form.codes.max() < (1 << form.bits)
    assert np.array_equal(form.dequantize(), ref)


def test_k_quant_blocks_follow_ggml_layout():
    import gguf

    rng = np.random.default_rng(5)
    for build, name in ((q4_k_blocks, "Q4_K"), (q5_k_blocks, "Q5_K"), (q6_k_blocks, "Q6_K")):
        raw, intended = build(rng, 4, 512, 0.1)
        assert raw.shape == (4, 512 // 256 * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][1])
        assert np.array_equal(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]), intended)


def test_types_without_block_form_are_left_to_fp32():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 64)).astype(np.float16).view(np.uint8)
    assert decode_blocks(raw, "F16", 4, 64) is None


def test_combine_concatenates_in_a_common_exact_form():
    import gguf

    rng = np.random.default_rng(7)
    k = 256
    parts = ["Q5_0", "Q6_K", "Q4_K", "Q4_0", "Q8_0"]
    raws = [quantized_tensor(rng, t, 3 + i, k, 0.05) for i, t in enumerate(parts)]
    forms = [decode_blocks(r, t, r.shape[0], k) for r, t in zip(raws, parts)]
    ref = np.concatenate([gguf.quants.dequantize(r, gguf.GGMLQuantizationType[t]) for r, t in zip(raws, parts)])
    c = combine(forms)
    assert (c.bits, c.block, c.min_block) == (8, 16, 32)
    assert np.array_equal(c.dequantize(), ref)
    # parts that agree are concatenated as they are, each with its own zero point
    same = combine([forms[0], forms[4]])
    assert (same.bits, same.block, same.mins) == (8, 32, None)
    assert set(np.unique(same.zero_points[:3])) == {16} and set(np.unique(same.zero_points[3:])) == {128}


@pytest.mark.parametrize("bits,block,with_mins", [(8, 32, False), (8, 16, False), (4, 32, False), (4, 32, True)])
def test_matmulnbits_packing_matches_onnxruntime(bits, block, with_mins):
    """Our B / zero-point packing, run by ORT's own kernel (accuracy level 0) against numpy."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from intarsia.model.transcode import _nbits_nodes

    rng = np.random.default_rng(11)
    n, k = 24, 96 if block == 32 else 80  # 3 and 5 blocks: odd counts exercise the zero-point padding
    nb = k // block
    form = BlockForm(
        rng.integers(0, 1 << bits, (n, k)).astype(np.uint8),
        rng.normal(size=(n, nb)).astype(np.float32),
        rng.integers(0, 1 << bits, (n, nb)).astype(np.uint8),
        bits,
        block,
        rng.normal(size=(n, k // 32)).astype(np.float32) if with_mins else None,
        32 if with_mins else 0,
    )
    inits = [
        numpy_helper.from_array(pack_codes(form.codes, bits, block), "B"),
        numpy_helper.from_array(form.scales, "S"),
        numpy_helper.from_array(pack_zero_points(form.zero_points, bits), "Z"),
    ]
    if with_mins:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(form.mins.T), "T"))
    consts: dict = {}

    def const(name, value):
        consts[name] = numpy_helper.from_array(value, name)
        return name

    node = helper.make_node("MatMul", ["A", "W"], ["Y"], name="/x/MatMul")
    nodes = _nbits_nodes(node, "/x", inits, form, k, n, 0, {}, const)
    assert nodes[-1].output[0] == "Y"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, None, n])], inits + list(consts.values()),
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(1, 5, k)).astype(np.float32)
    y = sess.run(None, {"A": x})[0]
    ref = x.astype(np.float64) @ form.dequantize().T.astype(np.float64)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_read_gguf_tensors_matches_gguf_reader(tmp_path):
    import gguf

    rng = np.random.default_rng(2)
    path = tmp_path / "small.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_token_list(["a", "bb", "ccc"])
    w.add_token_types([1, 3, 4])
    w.add_token_scores([0.5, 1.5, -2.0])
    w.add_string("general.name", "small")
    tensors = {"a.weight": ("Q6_K", 4, 256), "b.weight": ("Q5_0", 3, 64), "c.weight": ("F16", 2, 32)}
    for name, (t, n, k) in tensors.items():
        data = quantized_tensor(rng, t, n, k, 0.1)
        w.add_tensor(name, data, raw_dtype=None if t == "F16" else gguf.GGMLQuantizationType[t])
    w.add_tensor("norm.weight", np.ones(7, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    mine = read_gguf_tensors(path)
    theirs = gguf.GGUFReader(str(path)).tensors
    assert set(mine) == {t.name for t in theirs}
    for t in theirs:
        m = mine[t.name]
        assert m.type_name == t.tensor_type.name
        assert m.shape == tuple(int(x) for x in t.shape)
        assert np.array_equal(m.data.reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))


def test_truncated_gguf_is_corrupt(tmp_path, built):
    b = built("q4_k_m")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b.gguf.read_bytes()[: b.gguf.stat().st_size // 2])
    with pytest.raises(CorruptModelError):
        read_gguf_tensors(cut)
    with pytest.raises(CorruptModelError):
        transcode(b.fp32, cut, tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_weight_is_exact(built, variant):
    b = built(variant)
    out, report = b.exact()
    checks = verify(out, b.gguf)
    assert checks and all(c.op != "missing" for c in checks), [c for c in checks if c.op == "missing"]
    assert {n for c in checks for n in c.gguf_names} == set(tensor_types(variant))
    bad = [c for c in checks if not c.exact]
    assert not bad, bad
    assert report.max_abs_error == 0.0
    covered = {t for c in checks for t in c.gguf_types}
    assert covered == set(tensor_types(variant).values())
    ops = {c.op for c in checks}
    assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops
    # an F16 matrix has no block form: it stays the builder's (exact) fp32 MatMul
    assert ("MatMul" in ops) == (variant == "mixed")


def test_schemes_per_class(built):
    _, report = built("q4_k_m").exact()
    assert report.by_class() == {
        "embed_tokens": "Q5_0 → GatherBlockQuantized 8-bit/32, zp 16",
        "attn_qkv": "Q5_0 → MatMulNBits 8-bit/32, zp 16 (×1); Q5_0+Q8_0 → MatMulNBits 8-bit/32, zp 16|128 (×1)",
        "attn_o": "Q5_0 → MatMulNBits 8-bit/32, zp 16",
        "mlp_gate": "Q5_0 → MatMulNBits 8-bit/32, zp 16",
        "mlp_up": "Q5_0 → MatMulNBits 8-bit/32, zp 16",
        "mlp_down": "Q6_K → MatMulNBits 8-bit/16, zp 32 (×1); "
        "Q4_K → MatMulNBits 4-bit/32, zp 0, min correction (×1)",
        "lm_head": "Q8_0 → MatMulNBits 8-bit/32, zp 128",
    }
    q40 = built("q4_0").exact()[1].by_class()
    assert q40["attn_qkv"] == "Q4_0+Q4_1 → MatMulNBits 4-bit/32, zp 8|0, min correction"
    assert q40["embed_tokens"] == "Q4_0 → GatherBlockQuantized 4-bit/32, zp 8"
    mixed = built("mixed").exact()[1].by_class()
    assert mixed["attn_qkv"] == "Q8_0+Q4_1+Q5_0 → MatMulNBits 8-bit/32, zp 128|0|16, min correction"
    assert mixed["attn_o"] == "F16 → MatMul fp32 (kept)"


def test_report_json_and_sizes(built):
    out, report = built("q4_k_m").exact()
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["by_class"] == report.by_class()
    assert len(doc["tensors"]) == len(report.entries) == 12
    assert report.total_bytes == (out / "model.onnx").stat().st_size + (out / "model.onnx.data").stat().st_size
    assert report.data_bytes == (out / "model.onnx.data").stat().st_size
    e = {x.tensor_class: x for x in report.entries}
    assert e["lm_head"].gguf_names == ("output.weight",) and e["lm_head"].gguf_types == ("Q8_0",)
    assert (e["lm_head"].bits, e["lm_head"].block_size, e["lm_head"].zero_point) == (8, 32, "128")
    # the exact graph is well under the fp32 one (both carry the 151936-row embedding and lm_head)
    fp32_bytes = sum(p.stat().st_size for p in built("q4_k_m").fp32.glob("model.onnx*"))
    assert report.total_bytes < 0.35 * fp32_bytes


def test_graph_contract(built):
    """Output names and inputs of replaced nodes are kept; other files are copied; fp32_dir is untouched."""
    import onnx

    b = built("q4_k_m")
    before = {p.name: p.stat().st_mtime_ns for p in b.fp32.iterdir()}
    out, report = b.exact()
    src = onnx.load(str(b.fp32 / "model.onnx"), load_external_data=False)
    dst = onnx.load(str(out / "model.onnx"), load_external_data=False)
    producers = {o: n for n in dst.graph.node for o in n.output}
    replaced = [n for n in src.graph.node if n.name in {e.node for e in report.entries}]
    assert len(replaced) == 12
    for n in replaced:
        p = producers[n.output[0]]
        assert p.op_type in ("MatMulNBits", "Add", "GatherBlockQuantized"), (n.name, p.op_type)
        if p.op_type == "Add":
            assert p.name.endswith("/MinCorrection/Add")
            nbits = producers[p.input[0]]
            assert nbits.op_type == "MatMulNBits"
            p = nbits
        data_in = p.input[1] if p.op_type == "GatherBlockQuantized" else p.input[0]
        assert data_in == (n.input[1] if n.op_type == "Gather" else n.input[0])
        if p.op_type == "MatMulNBits":
            assert {a.name: a.i for a in p.attribute}["accuracy_level"] == 4
    assert [i.name for i in dst.graph.input] == [i.name for i in src.graph.input]
    assert [o.name for o in dst.graph.output] == [o.name for o in src.graph.output]
    assert not any(n.op_type == "MatMul" and n.input[1].endswith(".MatMul.weight") for n in dst.graph.node)
    assert any(o.domain == "com.microsoft" for o in dst.opset_import)
    for name in ("genai_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (b.fp32 / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert {p.name: p.stat().st_mtime_ns for p in b.fp32.iterdir()} == before
    with pytest.raises(BuildError):
        transcode(b.fp32, b.gguf, b.fp32, progress=False)


@pytest.mark.parametrize("level", [0, 1, 4])
def test_accuracy_level_written_and_logits_match(built, level):
    b = built("q4_k_m")
    out, _ = b.exact(level)
    import onnx

    levels = {a.i for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node
              if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {level}
    ids = PROMPTS[0] + PROMPTS[2]
    ref = logits_of(b.fp32, ids)
    got = logits_of(out, ids)
    scale = np.abs(ref).max()
    # 0/1: fp32 activations, only summation order differs; 4: int8 activations per block (like llama.cpp's q8)
    tol = TOL_FP32 if level in (0, 1) else TOL_INT8
    assert np.abs(got - ref).max() <= tol * scale


def test_bad_accuracy_level(built, tmp_path):
    b = built("q4_k_m")
    with pytest.raises(BuildError):
        transcode(b.fp32, b.gguf, tmp_path / "x", accuracy_level=7, progress=False)


@pytest.mark.parametrize("level", [0, 1])
def test_greedy_equals_fp32(built, level):
    b = built("q4_k_m")
    out, _ = b.exact(level)
    for prompt in PROMPTS:
        assert greedy(out, prompt) == greedy(b.fp32, prompt)


def test_greedy_int8_activations_agree_where_fp32_is_decided(built):
    """At accuracy level 4 the transcoded model picks fp32's token wherever fp32's top-2 margin exceeds twice
    the logit tolerance of level 4 (closer ties may legitimately go either way), teacher-forced on fp32's
    greedy continuation; most steps must be that clear for the test to mean something."""
    b = built("q4_k_m")
    out, _ = b.exact(4)
    decided = total = 0
    for prompt in PROMPTS:
        seq = prompt + greedy(b.fp32, prompt)
        ref = logits_of(b.fp32, seq)[len(prompt) - 1 : -1]
        got = logits_of(out, seq)[len(prompt) - 1 : -1]
        top2 = np.sort(ref, axis=-1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        sure = margin > 2 * TOL_INT8 * np.abs(ref).max()
        assert (ref.argmax(-1) == np.array(seq[len(prompt):])).all()
        assert (got.argmax(-1)[sure] == ref.argmax(-1)[sure]).all()
        decided += int(sure.sum())
        total += len(sure)
    assert decided >= total // 2, (decided, total)


def test_gguf_from_another_model_is_refused(built, tmp_path):
    b = built("q4_k_m")
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1, variant="q4_k_m", scale=SCALE, out_scale=OUT_SCALE,
                            hub_tokens=HUBS)
    with pytest.raises(BuildError, match="does not match GGUF"):
        transcode(b.fp32, other, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert not (tmp_path / "out" / "model.onnx.data").exists()


def test_permuted_rows_are_refused(built, tmp_path):
    """A GGUF whose q rows are permuted (as llama.cpp does for llama-style rope) does not pass the check."""
    import gguf

    b = built("q4_k_m")
    tensors = read_gguf_tensors(b.gguf)
    path = tmp_path / "perm.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    for name, t in tensors.items():
        data = np.array(t.data)
        if name == "blk.0.attn_q.weight":
            data = np.concatenate([data[16:32], data[:16], data[32:]])
        if t.type_name in ("F32",):
            w.add_tensor(name, data.view(np.float32).reshape(t.shape[::-1]))
        else:
            w.add_tensor(name, data, raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(BuildError, match="attn_qkv|qkv_proj"):
        transcode(b.fp32, path, tmp_path / "out", progress=False)


@pytest.mark.slow
def test_tiny_gguf_round_trips_through_transformers(built):
    """transformers' own GGUF loading gives the weights `write_tiny_gguf(hf_dir=...)` saved (≈1 min: it decodes
    the 300k tokenizer strings twice), and a tokenizer that encodes like the real one."""
    import torch
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    b = built("q4_k_m")
    model = AutoModelForCausalLM.from_pretrained(str(b.gguf.parent), gguf_file=b.gguf.name, dtype=torch.float32)
    saved = load_file(str(b.root / "hf" / "model.safetensors"))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(saved) <= set(state)
    for k, v in saved.items():
        assert np.array_equal(state[k], v), k
    tok = AutoTokenizer.from_pretrained(str(b.gguf.parent), gguf_file=b.gguf.name)
    real = Tokenizer.from_file(str(b.root / "hf" / "tokenizer.json"))
    text = "def add(a, b):\n    return a + b<|endoftext|>"
    assert tok(text)["input_ids"] == real.encode(text).ids


def _repack_graph(src: Path, dest: Path) -> Path:
    """The builder's fp32 graph with layer 0's qkv_proj split into q_proj/k_proj/v_proj (+ Concat) and layer 1's
    gate_proj/up_proj merged into one gate_up_proj (+ Split): the other layouts transcode must map."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src / "model.onnx"))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = list(g.node)
    out = []
    for nd in nodes:
        if nd.name == "/model/layers.0/attn/qkv_proj/MatMul":
            w = numpy_helper.to_array(inits[nd.input[1]])
            pieces = {"q_proj": w[:, :64], "k_proj": w[:, 64:96], "v_proj": w[:, 96:]}
            outs = []
            for name, piece in pieces.items():
                wn = f"model.layers.0.attn.{name}.MatMul.weight"
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(piece), wn))
                o = f"/model/layers.0/attn/{name}/MatMul/output_0"
                out.append(helper.make_node("MatMul", [nd.input[0], wn], [o],
                                            name=f"/model/layers.0/attn/{name}/MatMul"))
                outs.append(o)
            out.append(helper.make_node("Concat", outs, [nd.output[0]], name="/model/layers.0/attn/qkv/Concat",
                                        axis=-1))
        elif nd.name == "/model/layers.1/mlp/gate_proj/MatMul":
            up = next(x for x in nodes if x.name == "/model/layers.1/mlp/up_proj/MatMul")
            w = np.concatenate([numpy_helper.to_array(inits[nd.input[1]]), numpy_helper.to_array(inits[up.input[1]])],
                               axis=1)
            wn = "model.layers.1.mlp.gate_up_proj.MatMul.weight"
            g.initializer.append(numpy_helper.from_array(w, wn))
            o = "/model/layers.1/mlp/gate_up_proj/MatMul/output_0"
            split = numpy_helper.from_array(np.array([256, 256], np.int64), "gate_up_split")
            g.initializer.append(split)
            out.append(helper.make_node("MatMul", [nd.input[0], wn], [o],
                                        name="/model/layers.1/mlp/gate_up_proj/MatMul"))
            out.append(helper.make_node("Split", [o, "gate_up_split"], [nd.output[0], up.output[0]],
                                        name="/model/layers.1/mlp/gate_up/Split", axis=-1))
        elif nd.name == "/model/layers.1/mlp/up_proj/MatMul":
            continue
        else:
            out.append(nd)
    del g.node[:]
    g.node.extend(out)
    used = {i for nd in out for i in nd.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data")
    for p in src.iterdir():
        if p.name not in ("model.onnx", "model.onnx.data"):
            shutil.copy(p, dest / p.name)
    return dest


def test_unpacked_qkv_and_packed_gate_up(built, tmp_path):
    b = built("q4_k_m")
    fp32 = _repack_graph(b.fp32, tmp_path / "fp32")
    report = transcode(fp32, b.gguf, tmp_path / "exact", accuracy_level=0, progress=False)
    classes = [e.tensor_class for e in report.entries]
    assert classes.count("attn_q") == classes.count("attn_k") == classes.count("attn_v") == 1
    assert classes.count("mlp_gate_up") == 1 and classes.count("attn_qkv") == 1
    assert next(e for e in report.entries if e.tensor_class == "attn_v").gguf_names == ("blk.0.attn_v.weight",)
    assert next(e for e in report.entries if e.tensor_class == "mlp_gate_up").gguf_names == (
        "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight")
    checks = verify(tmp_path / "exact", b.gguf)
    assert all(c.exact for c in checks), [c for c in checks if not c.exact]
    ids = PROMPTS[1]
    ref = logits_of(b.fp32, ids)
    assert np.abs(logits_of(tmp_path / "exact", ids) - ref).max() <= TOL_FP32 * np.abs(ref).max()


def test_lora_branches_attach_to_the_transcoded_graph(built, tmp_path):
    """The contract with `lora.add_lora_inputs`: it finds every projection of the transcoded graph by its kept
    output name (behind a min correction too), and with no adapter the graph computes what it did before."""
    from intarsia.model.lora import add_lora_inputs

    b = built("q4_k_m")
    out, _ = b.exact(0)
    copy = tmp_path / "lora"
    shutil.copytree(out, copy)
    info = add_lora_inputs(copy)
    found = {(t.layer, t.module) for t in info.targets}
    assert found == {(i, m) for i in range(2) for m in ("qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert {(t.layer, t.module): (t.in_features, t.out_features) for t in info.targets}[(1, "down_proj")] == (256, 64)
    ids = PROMPTS[0]
    assert np.array_equal(logits_of(copy, ids), logits_of(out, ids))
