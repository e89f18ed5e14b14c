"""Run-time LoRA in ONNX Runtime: graph inputs, adapter export, parity with transformers + peft."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from intarsia.model import lora
from intarsia.model.cache import sha256_file
from intarsia.model.errors import BuildError, EngineError

from tiny import TINY_CONFIG, build_ort, make_tiny_qwen2

og = pytest.importorskip("onnxruntime_genai")
torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

PROMPTS = [
    "def fibonacci(n):\n    ",
    "import numpy as np\nx = np.",
    "class Stack:\n    def __init__(self):\n        self.items = ",
    "// sort the array\nfor (int i = 0; i < n; i++) {",
    "SELECT name, email FROM users WHERE",
]
NEW_TOKENS = 12

# Adapters made on the tiny model: (name, LoraConfig keyword arguments).
ADAPTERS = {
    # every supported module, plain alpha/r scaling
    "full": dict(r=8, lora_alpha=16, target_modules=list(lora.LORA_TARGETS)),
    # a subset (packed qkv only partly covered, gate_up unused), another rank, per-module rank and alpha
    "part": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2},
        alpha_pattern={"v_proj": 3},
    ),
    # rank-stabilised scaling alpha/sqrt(r)
    "rs": dict(
        r=16, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"]
    ),
}


def _make_peft(hf_dir: Path, out: Path, *, seed: int, **config) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(hf_dir)
    # init_lora_weights=False: B is random too, so the adapter changes the output from the start.
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **config))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2, its fp32 ORT export before and after add_lora_inputs, and peft adapters exported for it."""
    root = tmp_path_factory.mktemp("lora")
    hf = make_tiny_qwen2(root / "hf", scale=8.0)
    base = build_ort(hf, root / "ort-base")
    graph = root / "ort-lora"
    shutil.copytree(base, graph)
    info = lora.add_lora_inputs(graph)
    peft_dirs, exported = {}, {}
    for seed, (name, cfg) in enumerate(ADAPTERS.items()):
        peft_dirs[name] = _make_peft(hf, root / f"peft-{name}", seed=seed + 1, **cfg)
        exported[name] = lora.export_adapter(peft_dirs[name], graph, root / "adapters" / f"{name}.onnx_adapter")
    return dict(root=root, hf=hf, base=base, graph=graph, info=info, peft=peft_dirs, adapters=exported)


@pytest.fixture(scope="module")
def prompts_ids(tiny):
    tok = og.Tokenizer(og.Model(str(tiny["base"])))
    return [[int(t) for t in tok.encode(p)] for p in PROMPTS]


def _hf_model(tiny, adapter: str | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["hf"]).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, tiny["peft"][adapter]).eval()
    return model


def _hf_run(model, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    """Logits of the prompt's last position and the greedy continuation."""
    x = torch.tensor([ids])
    mask = torch.ones_like(x)
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=mask).logits[0, -1].float().numpy()
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    return logits, [int(t) for t in out[0, len(ids) :]]


def _og_run(model, ids: list[int], adapters=None, name: str | None = None) -> tuple[np.ndarray, list[int]]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
    gen = og.Generator(model, params)
    if name is not None:
        gen.set_active_adapter(adapters, name)
    gen.append_tokens(np.array(ids, dtype=np.int32))
    logits = np.array(gen.get_logits()).reshape(-1).copy()
    while not gen.is_done():
        gen.generate_next_token()
    return logits, [int(t) for t in gen.get_sequence(0)[len(ids) :]]


def _assert_logits_close(a: np.ndarray, b: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(a - b).max()) <= 2e-4 * scale, (float(np.abs(a - b).max()), scale)


def test_graph_inputs_recorded(tiny):
    info = tiny["info"]
    layers = TINY_CONFIG["num_hidden_layers"]
    assert info.added == 5 * layers and info.num_layers == layers and info.dtype == "float32"
    qkv = info.target(0, "qkv_proj")
    head = TINY_CONFIG["hidden_size"] // TINY_CONFIG["num_attention_heads"]
    kv = TINY_CONFIG["num_key_value_heads"] * head
    assert qkv.parts == (("q_proj", TINY_CONFIG["hidden_size"]), ("k_proj", kv), ("v_proj", kv))
    assert (qkv.in_features, qkv.out_features) == (TINY_CONFIG["hidden_size"], TINY_CONFIG["hidden_size"] + 2 * kv)
    down = info.target(layers - 1, "down_proj")
    assert (down.in_features, down.out_features) == (TINY_CONFIG["intermediate_size"], TINY_CONFIG["hidden_size"])

    inputs = lora.list_graph_lora_inputs(tiny["graph"])
    assert set(inputs) == set(info.input_names) and len(inputs) == 10 * layers
    a_shape, b_shape = inputs[qkv.input_a], inputs[qkv.input_b]
    assert a_shape[0] == qkv.in_features and b_shape[1] == qkv.out_features
    assert isinstance(a_shape[1], str) and a_shape[1] == b_shape[0]  # the rank is a symbolic dimension

    record = json.loads((tiny["graph"] / lora.LORA_INFO_FILE).read_text())
    assert record["signature"] == info.signature
    assert {t["lora_a"] for t in record["targets"]} == {t.input_a for t in info.targets}
    # The weights were not rewritten.
    assert sha256_file(tiny["graph"] / "model.onnx.data") == sha256_file(tiny["base"] / "model.onnx.data")

    import onnx

    proto = onnx.load(str(tiny["graph"] / "model.onnx"), load_external_data=False)
    defaults = {t.name: list(t.dims) for t in proto.graph.initializer if t.name in inputs}
    assert defaults[qkv.input_a] == [qkv.in_features, 0] and defaults[qkv.input_b] == [0, qkv.out_features]


def test_add_lora_inputs_is_idempotent(tiny):
    graph = tiny["graph"]
    before = sha256_file(graph / "model.onnx")
    again = lora.add_lora_inputs(graph)
    assert again.added == 0
    assert again.signature == tiny["info"].signature and again.targets == tiny["info"].targets
    assert sha256_file(graph / "model.onnx") == before
    assert not [p for p in graph.iterdir() if p.name.endswith(".part")]


def test_no_adapter_matches_graph_before_lora(tiny, prompts_ids):
    plain = og.Model(str(tiny["base"]))
    with_inputs = og.Model(str(tiny["graph"]))
    hf = _hf_model(tiny)
    for ids in prompts_ids:
        base_logits, base_tokens = _og_run(plain, ids)
        logits, tokens = _og_run(with_inputs, ids)
        np.testing.assert_allclose(logits, base_logits, rtol=0, atol=1e-5)
        assert tokens == base_tokens
        hf_logits, hf_tokens = _hf_run(hf, ids)
        _assert_logits_close(logits, hf_logits)
        assert tokens == hf_tokens


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_matches_peft(tiny, prompts_ids, name):
    model = og.Model(str(tiny["graph"]))
    adapters = og.Adapters(model)
    adapters.load(str(tiny["adapters"][name].path), name)
    ref = _hf_model(tiny, name)
    base = _hf_model(tiny)
    changed = 0
    for ids in prompts_ids:
        logits, tokens = _og_run(model, ids, adapters, name)
        ref_logits, ref_tokens = _hf_run(ref, ids)
        _assert_logits_close(logits, ref_logits)
        assert tokens == ref_tokens
        base_logits, base_tokens = _hf_run(base, ids)
        changed += tokens != base_tokens
        assert float(np.abs(ref_logits - base_logits).max()) > 1e-2  # the adapter really does something
    assert changed >= 1


def test_switching_adapters_on_one_model(tiny, prompts_ids):
    model = og.Model(str(tiny["graph"]))
    adapters = og.Adapters(model)
    for name, info in tiny["adapters"].items():
        adapters.load(str(info.path), name)
    expected = {None: _hf_model(tiny)} | {name: _hf_model(tiny, name) for name in ADAPTERS}
    ids = prompts_ids[0]
    want = {k: _hf_run(m, ids)[1] for k, m in expected.items()}
    assert len({tuple(v) for v in want.values()}) == len(want)  # every adapter gives other tokens here
    for name in ["full", None, "part", "rs", None, "full", "part"]:
        assert _og_run(model, ids, adapters, name)[1] == want[name], name
    adapters.unload("rs")
    assert _og_run(model, ids)[1] == want[None]
    with pytest.raises(Exception):
        _og_run(model, ids, adapters, "rs")


def test_adapter_manifest(tiny):
    full = tiny["adapters"]["full"]
    manifest = lora.read_adapter_manifest(full.path)
    assert full.manifest_path == full.path.with_name("full.json")
    assert manifest["source"]["adapter_model_sha256"] == sha256_file(tiny["peft"]["full"] / "adapter_model.safetensors")
    assert manifest["adapter_sha256"] == sha256_file(full.path)
    assert (manifest["rank"], manifest["alpha"], manifest["use_rslora"]) == (8, 16, False)
    assert manifest["targets"] == list(lora.LORA_TARGETS) and manifest["graph_signature"] == tiny["info"].signature
    qkv = tiny["info"].target(0, "qkv_proj")
    assert manifest["parameters"][qkv.input_a] == [qkv.in_features, 3 * 8]  # q|k|v packed along the rank

    part = tiny["adapters"]["part"]
    assert part.targets == ("q_proj", "v_proj", "down_proj") and part.rank == 4
    # Untouched projections are left out of the file (their rank-0 default applies).
    touched = [t for t in tiny["info"].targets if t.module in ("qkv_proj", "down_proj")]
    assert len(touched) == 2 * TINY_CONFIG["num_hidden_layers"]
    assert set(part.parameters) == {n for t in touched for n in (t.input_a, t.input_b)}
    assert part.parameters[tiny["info"].target(0, "qkv_proj").input_a][1] == 4 + 4
    assert part.parameters[tiny["info"].target(0, "down_proj").input_a][1] == 2
    assert lora.check_adapter(part.path, tiny["graph"]) == part.parameters


def test_packing_is_block_diagonal_with_folded_scaling(tiny):
    import onnxruntime as ort
    from safetensors.torch import load_file

    part = tiny["adapters"]["part"]
    params = {k: v.numpy() for k, v in ort.AdapterFormat.read_adapter(str(part.path)).get_parameters().items()}
    src = load_file(str(tiny["peft"]["part"] / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.{}.lora_{}.weight"
    t = tiny["info"].target(1, "qkv_proj")
    a, b = params[t.input_a], params[t.input_b]
    q, kv = t.parts[0][1], t.parts[1][1]
    np.testing.assert_array_equal(a[:, :4], src[key.format("q_proj", "A")].numpy().T)
    np.testing.assert_array_equal(a[:, 4:], src[key.format("v_proj", "A")].numpy().T)
    np.testing.assert_allclose(b[:4, :q], src[key.format("q_proj", "B")].numpy().T * (8 / 4), rtol=1e-6)
    np.testing.assert_allclose(b[4:, q + kv :], src[key.format("v_proj", "B")].numpy().T * (3 / 4), rtol=1e-6)
    assert not b[:4, q:].any() and not b[4:, :q + kv].any()  # k_proj absent: its columns stay zero


def _other_shape_peft(root: Path) -> Path:
    """A peft adapter for a Qwen2 of another width."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        **{**TINY_CONFIG, "hidden_size": 32, "intermediate_size": 64, "vocab_size": 512},
    )
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = 0, 1, 2
    torch.manual_seed(0)
    model = get_peft_model(Qwen2ForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    model.save_pretrained(root / "peft-other")
    return root / "peft-other"


def test_adapter_for_other_shapes_is_refused(tiny, tmp_path):
    with pytest.raises(BuildError, match="does not fit this model"):
        lora.export_adapter(_other_shape_peft(tmp_path), tiny["graph"], tmp_path / "other.onnx_adapter")
    assert not (tmp_path / "other.onnx_adapter").exists()

    deeper = make_tiny_qwen2(tmp_path / "hf3", num_hidden_layers=3)
    _make_peft(deeper, tmp_path / "peft3", seed=0, r=2, target_modules=["o_proj"])
    with pytest.raises(BuildError, match="layer 2, the model has 2"):
        lora.export_adapter(tmp_path / "peft3", tiny["graph"], tmp_path / "deep.onnx_adapter")

    with pytest.raises(BuildError, match="no LoRA inputs"):
        lora.export_adapter(tiny["peft"]["full"], tiny["base"], tmp_path / "x.onnx_adapter")


def test_check_adapter_refuses_foreign_files(tiny, tmp_path):
    import onnxruntime as ort

    qkv = tiny["info"].target(0, "qkv_proj")

    def write(params: dict) -> Path:
        fmt = ort.AdapterFormat()
        fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
        path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.onnx_adapter"
        fmt.export_adapter(str(path))
        return path

    wrong_k = write({qkv.input_a: np.ones((qkv.in_features + 32, 4), np.float32),
                     qkv.input_b: np.ones((4, qkv.out_features), np.float32)})
    with pytest.raises(EngineError, match="does not fit this model"):
        lora.check_adapter(wrong_k, tiny["graph"])
    unknown = write({"model.layers.9.attn.qkv_proj.lora_A.weight": np.ones((qkv.in_features, 4), np.float32)})
    with pytest.raises(EngineError, match="unknown tensor"):
        lora.check_adapter(unknown, tiny["graph"])
    ranks = write({qkv.input_a: np.ones((qkv.in_features, 4), np.float32),
                   qkv.input_b: np.ones((3, qkv.out_features), np.float32)})
    with pytest.raises(EngineError, match="different ranks"):
        lora.check_adapter(ranks, tiny["graph"])
    half = write({qkv.input_a: np.ones((qkv.in_features, 4), np.float16),
                  qkv.input_b: np.ones((4, qkv.out_features), np.float16)})
    with pytest.raises(EngineError, match="float32"):
        lora.check_adapter(half, tiny["graph"])
    with pytest.raises(EngineError, match="no LoRA inputs"):
        lora.check_adapter(tiny["adapters"]["full"].path, tiny["base"])

    # Without the check, ONNX Runtime only fails once the first token is computed.
    model = og.Model(str(tiny["graph"]))
    adapters = og.Adapters(model)
    adapters.load(str(wrong_k), "wrong")
    with pytest.raises(Exception, match="dimensions"):
        _og_run(model, [1, 2, 3], adapters, "wrong")


def test_unsupported_peft_features_are_refused(tiny, tmp_path):
    dora = _make_peft(tiny["hf"], tmp_path / "dora", seed=0, r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(BuildError, match="DoRA"):
        lora.export_adapter(dora, tiny["graph"], tmp_path / "dora.onnx_adapter")
    saved = _make_peft(
        tiny["hf"], tmp_path / "mts", seed=0, r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]
    )
    with pytest.raises(BuildError, match="modules_to_save"):
        lora.export_adapter(saved, tiny["graph"], tmp_path / "mts.onnx_adapter")
    with pytest.raises(BuildError, match="must end with .onnx_adapter"):
        lora.export_adapter(tiny["peft"]["full"], tiny["graph"], tmp_path / "full.onnx")
    with pytest.raises(BuildError, match="not a peft adapter"):
        lora.export_adapter(tmp_path, tiny["graph"], tmp_path / "x.onnx_adapter")


def test_int4_graph_with_matmulnbits(tiny):
    """Projections computed by MatMulNBits (as after transcode) get the same inputs; adapters carry over."""
    q4 = build_ort(tiny["hf"], tiny["root"] / "ort-int4", precision="int4")
    before = og.Model(str(q4))
    ids = [int(t) for t in og.Tokenizer(before).encode(PROMPTS[1])]
    base_logits, base_tokens = _og_run(before, ids)
    del before
    info = lora.add_lora_inputs(q4)
    assert info.added == 10 and info.signature == tiny["info"].signature  # same names, shapes and packing
    model = og.Model(str(q4))
    logits, tokens = _og_run(model, ids)
    np.testing.assert_allclose(logits, base_logits, rtol=0, atol=1e-5)
    assert tokens == base_tokens
    adapters = og.Adapters(model)
    adapters.load(str(tiny["adapters"]["full"].path), "full")  # exported against the fp32 graph
    lora_logits, _ = _og_run(model, ids, adapters, "full")
    # The branch adds the same low-rank update as on the fp32 graph: compare the adapter's effect on both.
    fp32 = og.Model(str(tiny["graph"]))
    fp32_adapters = og.Adapters(fp32)
    fp32_adapters.load(str(tiny["adapters"]["full"].path), "full")
    fp32_effect = _og_run(fp32, ids, fp32_adapters, "full")[0] - _og_run(fp32, ids)[0]
    q4_effect = lora_logits - logits
    assert float(np.abs(q4_effect).max()) > 1e-2
    assert np.corrcoef(fp32_effect, q4_effect)[0, 1] > 0.5


def _split_o_proj(model_dir: Path, layer: int = 0) -> None:
    """Rewrite one o_proj like transcode does for K-quants: main product + a min-correction MatMul, then Add.

    The correction table is zero, so the graph computes what it computed before.
    """
    import onnx
    from onnx import helper, numpy_helper

    path = model_dir / "model.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    g = proto.graph
    prefix = f"/model/layers.{layer}/attn/o_proj"
    idx = next(i for i, n in enumerate(g.node) if n.name == f"{prefix}/MatMul")
    old = g.node[idx]
    x, w, y = old.input[0], old.input[1], old.output[0]
    k = TINY_CONFIG["hidden_size"]
    g.initializer.extend([
        numpy_helper.from_array(np.array([0, 0, k // 32, 32], np.int64), "test.block_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), "test.last_axis"),
        numpy_helper.from_array(np.zeros((k // 32, k), np.float32), f"test.{prefix}.min_correction"),
    ])
    nodes = [
        helper.make_node("Reshape", [x, "test.block_shape"], [f"{prefix}/BlockSum/Reshape/output_0"],
                         name=f"{prefix}/BlockSum/Reshape"),
        helper.make_node("ReduceSum", [f"{prefix}/BlockSum/Reshape/output_0", "test.last_axis"],
                         [f"{prefix}/BlockSum/ReduceSum/output_0"], name=f"{prefix}/BlockSum/ReduceSum", keepdims=0),
        helper.make_node("MatMul", [f"{prefix}/BlockSum/ReduceSum/output_0", f"test.{prefix}.min_correction"],
                         [f"{prefix}/MinCorrection/MatMul/output_0"], name=f"{prefix}/MinCorrection/MatMul"),
        helper.make_node("MatMul", [x, w], [f"{prefix}/Main/output_0"], name=f"{prefix}/Main"),
        helper.make_node("Add", [f"{prefix}/MinCorrection/MatMul/output_0", f"{prefix}/Main/output_0"], [y],
                         name=f"{prefix}/MinCorrection/Add"),
    ]
    rest = [onnx.NodeProto.FromString(n.SerializeToString()) for n in g.node]
    del g.node[:]
    g.node.extend(rest[:idx] + nodes + rest[idx + 1 :])
    path.write_bytes(proto.SerializeToString())


def test_projection_behind_a_subgraph(tiny, prompts_ids):
    """A projection whose output comes from a small subgraph gets its branch on the subgraph's own input."""
    split = tiny["root"] / "ort-split"
    shutil.copytree(tiny["base"], split)
    _split_o_proj(split)
    info = lora.add_lora_inputs(split)
    assert info.signature == tiny["info"].signature
    o = info.target(0, "o_proj")
    assert (o.in_features, o.out_features) == (TINY_CONFIG["hidden_size"], TINY_CONFIG["hidden_size"])

    model, ref = og.Model(str(split)), og.Model(str(tiny["graph"]))
    adapters, ref_adapters = og.Adapters(model), og.Adapters(ref)
    adapters.load(str(tiny["adapters"]["full"].path), "full")
    ref_adapters.load(str(tiny["adapters"]["full"].path), "full")
    for ids in prompts_ids[:2]:
        for name in (None, "full"):
            logits, tokens = _og_run(model, ids, adapters, name)
            ref_logits, ref_tokens = _og_run(ref, ids, ref_adapters, name)
            np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4)
            assert tokens == ref_tokens
