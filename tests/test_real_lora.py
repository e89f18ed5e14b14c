"""LoRA applied at run time on the real default model: ORT(base + adapter) == transformers + peft, greedy.

The base is the same dequantized GGUF on both sides: the fp32 ONNX build (builder fp32 graph + LoRA inputs)
and the fp32 Hugging Face folder. A random rank-8 adapter on all seven projections is large enough to change
the output; the tokens must still agree, and with no adapter the graph must give the base model's tokens.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PROMPTS = [
    "<|fim_prefix|>def mean(xs):\n    return <|fim_suffix|>\n<|fim_middle|>",
    "import json\n\n\ndef load(path):\n    with open(path) as f:\n",
]
NEW = 10


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model

    from intarsia.model.build import BuildOptions, build, hf_folder_for, resolve_gguf
    from intarsia.model.registry import resolve_source

    src = resolve_source("qwen2.5-coder-0.5b")
    gguf = resolve_gguf(src, progress=False)
    hf_dir = hf_folder_for(src, gguf, progress=False)
    built = build(src, BuildOptions(precision="fp32"), progress=False)

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(0)
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.03)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(adapter_dir)
    del peft_model, base
    return hf_dir, built.path, adapter_dir, tmp_path_factory.mktemp("onnx_adapter") / "rand.onnx_adapter"


def test_runtime_adapter_matches_peft_on_real_model(sides):
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.hf_engine import HfEngine
    from intarsia.model.lora import export_adapter
    from intarsia.model.ort_engine import OrtEngine

    hf_dir, onnx_dir, adapter_dir, adapter_file = sides
    export_adapter(adapter_dir, onnx_dir, adapter_file)
    ort = OrtEngine(onnx_dir, adapters={"rand": adapter_file})
    ref_adapted = HfEngine(hf_dir, adapter_dir=adapter_dir)
    try:
        for p in PROMPTS:
            a = ort.generate(GenerationRequest(prompt=p, max_new_tokens=NEW, ignore_eos=True, adapter="rand"))
            # HfEngine's adapter is the peft folder it was given (adapter=None selects it).
            b = ref_adapted.generate(GenerationRequest(prompt=p, max_new_tokens=NEW, ignore_eos=True))
            base_hf = ref_adapted.generate(GenerationRequest(prompt=p, max_new_tokens=NEW, ignore_eos=True, adapter=""))
            base_ort = ort.generate(GenerationRequest(prompt=p, max_new_tokens=NEW, ignore_eos=True, adapter=""))
            assert a.token_ids == b.token_ids, p
            assert base_ort.token_ids == base_hf.token_ids, p
            assert a.token_ids != base_hf.token_ids, "the adapter should change the output"
    finally:
        ort.close()
        ref_adapted.close()
