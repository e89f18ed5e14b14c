"""The build pipeline end to end on a tiny GGUF: GGUF → HF → builder fp32 → exact transcoding → LoRA inputs.

Checks the manifest, the rebuild-only-when-changed rule, greedy parity of the built model with the reference
transformers model on the dequantized GGUF, and the clear errors for corrupt input and wrong FIM formats.
"""

from __future__ import annotations

import json
import time

import pytest

from intarsia.model.build import MANIFEST, BuildOptions, build, find_built, hf_folder_for
from intarsia.model.cache import sha256_file
from intarsia.model.errors import CorruptModelError, FimFormatError
from intarsia.model.registry import resolve_source
from intarsia.model.trust import CONFIG_FILES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-q4_k_m.gguf", seed=3, scale=8.0, hub_tokens=64)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setenv("INTARSIA_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def built(tiny_gguf, cache):
    return build(str(tiny_gguf), BuildOptions(accuracy_level=0), progress=False)


def test_manifest(built, tiny_gguf):
    m = json.loads((built.path / MANIFEST).read_text())
    assert m == built.manifest
    assert m["precision"] == "exact" and m["execution_provider"] == "cpu" and m["accuracy_level"] == 0
    assert m["fim_format"] == "qwen2.5-coder"
    assert m["lora_inputs"] is True
    assert m["source"]["kind"] == "gguf" and len(m["source"]["gguf_sha256"]) == 64
    assert {"onnxruntime", "onnxruntime_genai", "transformers"} <= set(m["versions"])
    scheme = json.dumps(m["scheme"])
    for t in ("Q5_0", "Q8_0", "Q4_K", "Q6_K"):
        assert t in scheme, t
    assert (built.path / "model.onnx").exists() and (built.path / "genai_config.json").exists()
    assert (built.path / "intarsia_lora.json").exists()
    assert m["transcode"]  # per-tensor report
    # The config files it wrote, by sha256: model.trust refuses the folder once one changes.
    assert m["files"]["genai_config.json"] == sha256_file(built.path / "genai_config.json")
    assert set(m["files"]) <= set(CONFIG_FILES)


def test_rebuild_only_when_changed(built, tiny_gguf):
    t0 = time.perf_counter()
    again = build(str(tiny_gguf), BuildOptions(accuracy_level=0), progress=False)
    assert time.perf_counter() - t0 < 5
    assert again.manifest["built_at"] == built.manifest["built_at"]
    assert find_built(resolve_source(str(tiny_gguf)), BuildOptions(accuracy_level=0)).path == built.path
    # A different option is a different build (not found until built).
    assert find_built(resolve_source(str(tiny_gguf)), BuildOptions(accuracy_level=1)) is None


def test_built_model_matches_reference_greedy(built, tiny_gguf):
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.hf_engine import HfEngine
    from intarsia.model.ort_engine import OrtEngine

    src = resolve_source(str(tiny_gguf))
    hf = hf_folder_for(src, tiny_gguf, progress=False)
    prompts = [
        "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>",
        "import os\n\nfor name in os.listdir('.'):\n",
        "class Stack:\n    def __init__(self):\n        self.items = []\n",
    ]
    with OrtEngine(built.path, threads=2) as ort, HfEngine(hf, device="cpu") as ref:
        for p in prompts:
            req = GenerationRequest(prompt=p, max_new_tokens=12, ignore_eos=True)
            a, b = ort.generate(req), ref.generate(req)
            assert a.token_ids == b.token_ids, p


def test_truncated_gguf_is_refused_and_nothing_is_left(tmp_path, tiny_gguf, monkeypatch):
    root = tmp_path / "c"
    monkeypatch.setenv("INTARSIA_CACHE", str(root))
    bad = tmp_path / "truncated.gguf"
    data = tiny_gguf.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelError, match="truncated|damaged"):
        build(str(bad), BuildOptions(), progress=False)
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


def test_wrong_fim_format_is_refused(tiny_gguf, cache):
    with pytest.raises(FimFormatError, match="<fim_prefix>"):
        build(str(tiny_gguf), BuildOptions(accuracy_level=1), progress=False, fim_format="starcoder2")


def test_built_weights_verify_exact_with_lora_branches(built, tiny_gguf):
    from intarsia.model.transcode import verify

    checks = verify(built.path, tiny_gguf)
    assert checks and all(c.exact for c in checks), [c for c in checks if not c.exact][:3]


# ---------------------------------------------------------------------------------------------------------------
# CUDA: `exact` is the same exact weights rounded once to fp16. Built and checked here without a GPU; the fp16
# graph also runs on ONNX Runtime's CPU provider, which checks what it computes.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_cuda(tiny_gguf, cache):
    return build(str(tiny_gguf), BuildOptions(provider="cuda"), progress=False)


def test_exact_on_cuda_is_the_gguf_rounded_once_to_fp16(built_cuda, tiny_gguf):
    import gguf
    import numpy as np

    from intarsia.model.transcode import FP16_RELATIVE_BOUND, FP16_SUBNORMAL_BOUND, read_gguf_tensors, verify

    m = built_cuda.manifest
    assert (m["precision"], m["execution_provider"], built_cuda.path.name) == ("exact", "cuda", "exact-cuda")
    assert m["logits_rows"] == 1 and m["lora_inputs"] is True
    checks = verify(built_cuda.path, tiny_gguf)
    assert checks and all(c.exact for c in checks), [c for c in checks if not c.exact][:3]
    assert {c.dtype for c in checks} == {"float16"}
    covered = {n for c in checks for n in c.gguf_names}
    tensors = read_gguf_tensors(tiny_gguf)
    assert covered == {n for n, t in tensors.items() if len(t.shape) == 2 and n.endswith(".weight")}
    # the rounding is real (Q5_0's d * q needs more than fp16's 11 bits) and within round-to-nearest's bound
    assert m["transcode"]["max_abs_error"] == 0.0 and m["transcode"]["max_rounding_error"] > 0.0
    for c in checks:
        ref = np.concatenate([gguf.quants.dequantize(tensors[n].data, tensors[n].qtype).reshape(-1) for n in c.gguf_names])
        assert c.rounding_error <= max(FP16_RELATIVE_BOUND * float(np.abs(ref).max()), FP16_SUBNORMAL_BOUND)
    scheme = m["scheme"]
    assert set(scheme) == {"embed_tokens", "attn_qkv", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "lm_head"}
    assert scheme["embed_tokens"] == "Q5_0 → Gather fp16, rounded once"
    assert "Q6_K → MatMul fp16, rounded once" in scheme["mlp_down"] and "Q4_K" in scheme["mlp_down"]
    assert json.loads((built_cuda.path / "intarsia_lora.json").read_text())["dtype"] == "float16"
    assert find_built(resolve_source(str(tiny_gguf)), BuildOptions(provider="cuda")).path == built_cuda.path


def test_a_weight_changed_by_one_fp16_step_fails_the_check(built_cuda, tiny_gguf, tmp_path):
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from intarsia.model.transcode import verify

    copy = tmp_path / "copy"
    shutil.copytree(built_cuda.path, copy)
    model = onnx.load(str(copy / "model.onnx"))
    name = "model.layers.1.mlp.down_proj.MatMul.weight"
    (t,) = [t for t in model.graph.initializer if t.name == name]
    w = numpy_helper.to_array(t, base_dir=str(copy)).copy()
    w.view(np.uint16)[3, 5] += 1  # the next fp16 value
    t.CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(model, str(copy / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    bad = [c for c in verify(copy, tiny_gguf) if not c.exact]
    assert [c.gguf_names for c in bad] == [("blk.1.ffn_down.weight",)]
    assert 0 < bad[0].max_abs_error < 1e-2


def test_exact_cuda_graph_computes_the_exact_model(built, built_cuda):
    """Run on the CPU provider: the fp16 graph's greedy tokens equal the CPU exact model's (fp32 activations,
    accuracy level 0), and its logits agree to fp16 precision."""
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.ort_engine import OrtEngine

    prompts = [
        "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>",
        "import os\n\nfor name in os.listdir('.'):\n",
        "class Stack:\n    def __init__(self):\n        self.items = []\n",
    ]
    with OrtEngine(built.path, threads=2) as exact, OrtEngine(built_cuda.path, provider="cpu", threads=2) as half:
        for p in prompts:
            req = GenerationRequest(prompt=p, max_new_tokens=12, ignore_eos=True)
            assert half.generate(req).token_ids == exact.generate(req).token_ids, p


def test_cuda_builds_are_served_best_first():
    from intarsia.model.factory import cuda_builds

    assert [(o.precision, o.provider) for o in cuda_builds()] == [("exact", "cuda"), ("fp16", "cuda"),
                                                                   ("int4", "cuda")]


def test_model_info_shows_the_cuda_scheme(built_cuda, tiny_gguf, capsys):
    from intarsia.server.cli import main

    assert main(["model", "info", str(tiny_gguf), "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert str(built_cuda.path) in out and "execution_provider cuda" in out
    assert "accuracy_level" not in out  # a CPU setting
    assert "rounded once to fp16" in out
    assert "Q6_K → MatMul fp16, rounded once" in out
