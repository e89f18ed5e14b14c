"""The build pipeline end to end on a tiny GGUF: GGUF → HF → builder fp32 → exact transcoding → LoRA inputs.

Checks the manifest, the rebuild-only-when-changed rule, greedy parity of the built model with the reference
transformers model on the dequantized GGUF, and the clear errors for corrupt input and wrong FIM formats.
"""

from __future__ import annotations

import json
import time

import pytest

from intarsia.model.build import MANIFEST, BuildOptions, build, find_built, hf_folder_for
from intarsia.model.errors import CorruptModelError, FimFormatError
from intarsia.model.registry import resolve_source

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
