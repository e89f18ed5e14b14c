"""A tiny Qwen2 GGUF with the real tokenizer and llama.cpp's block types, for the transcoding tests.

`write_tiny_gguf()` writes the shape of `tests/tiny.py`'s model (hidden 64, intermediate 256, 2 layers, 4 heads,
2 kv heads, vocab 151936) with a mix of types per tensor class:

* ``q4_k_m`` mirrors the default model's Q4_K_M file: Q5_0 everywhere, attn_v Q5_0/Q8_0 and ffn_down Q6_K/Q4_K
  alternating by layer, token_embd Q5_0, output Q8_0.
* ``q4_0``: the legacy 4-bit types, Q4_0 and Q4_1 (with its min term), mixed inside the packed qkv matrix.
* ``mixed``: Q8_0 / Q4_1 / Q5_0 inside one qkv (4- and 8-bit parts), Q5_1, Q5_K, Q6_K, and an F16 attn_output.

Q5_0, Q8_0, Q4_0, Q4_1, Q5_1 come from `gguf.quants.quantize`; gguf implements no quantizer for the K-quants, so
Q4_K, Q5_K and Q6_K blocks are assembled here from random codes and scales following ggml's block layouts, and
checked against `gguf.quants.dequantize` as they are written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tiny import DATA, TINY_CONFIG, tokenizer_dir

VARIANTS = ("q4_k_m", "q4_0", "mixed")


def _types(variant: str, layer: int) -> dict[str, str]:
    even = layer % 2 == 0
    if variant == "q4_k_m":
        return {
            "attn_q": "Q5_0", "attn_k": "Q5_0", "attn_v": "Q5_0" if even else "Q8_0", "attn_output": "Q5_0",
            "ffn_gate": "Q5_0", "ffn_up": "Q5_0", "ffn_down": "Q6_K" if even else "Q4_K",
        }
    if variant == "q4_0":
        return {
            "attn_q": "Q4_0", "attn_k": "Q4_0", "attn_v": "Q4_1", "attn_output": "Q4_0",
            "ffn_gate": "Q4_0", "ffn_up": "Q4_1", "ffn_down": "Q4_0" if even else "Q4_1",
        }
    if variant == "mixed":
        return {
            "attn_q": "Q8_0", "attn_k": "Q4_1", "attn_v": "Q5_0", "attn_output": "F16",
            "ffn_gate": "Q5_1", "ffn_up": "Q4_0", "ffn_down": "Q5_K" if even else "Q6_K",
        }
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


_GLOBAL = {
    "q4_k_m": {"token_embd": "Q5_0", "output": "Q8_0"},
    "q4_0": {"token_embd": "Q4_0", "output": "Q4_1"},
    "mixed": {"token_embd": "Q8_0", "output": "Q5_1"},
}


def tensor_types(variant: str = "q4_k_m") -> dict[str, str]:
    """GGUF tensor name → type name, for every weight matrix of the tiny model."""
    out = {f"{k}.weight": v for k, v in _GLOBAL[variant].items()}
    for i in range(TINY_CONFIG["num_hidden_layers"]):
        out.update({f"blk.{i}.{k}.weight": v for k, v in _types(variant, i).items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
# K-quant blocks from codes and scales (ggml's block_q4_K, block_q5_K, block_q6_K)
# ---------------------------------------------------------------------------------------------------------------


def _fp16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8).reshape(-1, 2)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per super-block → ggml's 12 bytes."""
    s = np.zeros((sc.shape[0], 12), np.uint8)
    s[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return s


def _k_quants_nibbles(q: np.ndarray) -> np.ndarray:
    """(nb, 8, 32) codes → 128 bytes: chunk j packs sub-block 2j in the low and 2j+1 in the high nibbles."""
    low = q[:, 0::2, :] & 0x0F
    high = q[:, 1::2, :] & 0x0F
    return (low | (high << 4)).reshape(-1, 128).astype(np.uint8)


def q4_k_blocks(rng: np.random.Generator, n: int, k: int, std: float) -> tuple[np.ndarray, np.ndarray]:
    """Random Q4_K rows: (raw bytes [n, k/256*144], intended fp32 values [n, k])."""
    nb = n * k // 256
    q = rng.integers(0, 16, (nb, 8, 32), dtype=np.uint8)
    sc = rng.integers(1, 64, (nb, 8), dtype=np.uint8)
    mn = rng.integers(0, 64, (nb, 8), dtype=np.uint8)
    d = (np.abs(rng.normal(1.0, 0.2, nb)) * std / 147).astype(np.float16)
    dmin = (np.abs(rng.normal(1.0, 0.2, nb)) * std * 7.5 / 147).astype(np.float16)
    raw = np.concatenate([_fp16_bytes(d), _fp16_bytes(dmin), _pack_k_scales(sc, mn), _k_quants_nibbles(q)], axis=1)
    ds = d.astype(np.float32)[:, None] * sc.astype(np.float32)
    dm = dmin.astype(np.float32)[:, None] * mn.astype(np.float32)
    w = ds[:, :, None] * q.astype(np.float32) - dm[:, :, None]
    return raw.reshape(n, -1), w.reshape(n, k)


def q5_k_blocks(rng: np.random.Generator, n: int, k: int, std: float) -> tuple[np.ndarray, np.ndarray]:
    nb = n * k // 256
    q = rng.integers(0, 32, (nb, 8, 32), dtype=np.uint8)
    sc = rng.integers(1, 64, (nb, 8), dtype=np.uint8)
    mn = rng.integers(0, 64, (nb, 8), dtype=np.uint8)
    d = (np.abs(rng.normal(1.0, 0.2, nb)) * std / 295).astype(np.float16)
    dmin = (np.abs(rng.normal(1.0, 0.2, nb)) * std * 15.5 / 295).astype(np.float16)
    qh = np.zeros((nb, 32), np.uint8)
    for j in range(8):
        qh |= ((q[:, j, :] >> 4) & 1) << j
    raw = np.concatenate(
        [_fp16_bytes(d), _fp16_bytes(dmin), _pack_k_scales(sc, mn), qh, _k_quants_nibbles(q)], axis=1
    )
    ds = d.astype(np.float32)[:, None] * sc.astype(np.float32)
    dm = dmin.astype(np.float32)[:, None] * mn.astype(np.float32)
    w = ds[:, :, None] * q.astype(np.float32) - dm[:, :, None]
    return raw.reshape(n, -1), w.reshape(n, k)


def q6_k_blocks(rng: np.random.Generator, n: int, k: int, std: float) -> tuple[np.ndarray, np.ndarray]:
    nb = n * k // 256
    q = rng.integers(0, 64, (nb, 2, 4, 32), dtype=np.uint8)  # (block, half, row of 32, element)
    sc = rng.integers(-64, 64, (nb, 16)).astype(np.int8)
    d = (np.abs(rng.normal(1.0, 0.2, nb)) * std / 600).astype(np.float16)
    ql = np.concatenate(
        [(q[:, :, 0] & 0x0F) | ((q[:, :, 2] & 0x0F) << 4), (q[:, :, 1] & 0x0F) | ((q[:, :, 3] & 0x0F) << 4)],
        axis=2,
    ).reshape(nb, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6))
    raw = np.concatenate([ql, qh.reshape(nb, 64), sc.view(np.uint8), _fp16_bytes(d)], axis=1)
    ds = (d.astype(np.float32)[:, None] * sc.astype(np.float32)).reshape(nb, 16, 1)
    w = ds * (q.reshape(nb, 16, 16).astype(np.float32) - 32)
    return raw.reshape(n, -1), w.reshape(n, k)


_K_BUILDERS = {"Q4_K": q4_k_blocks, "Q5_K": q5_k_blocks, "Q6_K": q6_k_blocks}


def quantized_tensor(
    rng: np.random.Generator, type_name: str, n: int, k: int, std: float, row_scale: np.ndarray | None = None
) -> np.ndarray:
    """Random [n, k] weights in `type_name`, as the array GGUFWriter.add_tensor takes (uint8 bytes or F16).

    `row_scale` [n] multiplies the standard deviation per row (not for the K-quants, built from codes)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name in _K_BUILDERS:
        if row_scale is not None:
            raise ValueError("row_scale is not supported for K-quants")
        raw, intended = _K_BUILDERS[type_name](rng, n, k, std)
        got = gguf.quants.dequantize(raw, qtype)
        if not np.array_equal(got, intended):
            raise AssertionError(f"{type_name} blocks do not dequantize to the intended values")
        return raw
    w = rng.normal(0.0, std, (n, k)).astype(np.float32)
    if row_scale is not None:
        w *= row_scale[:, None].astype(np.float32)
    if type_name == "F16":
        return w.astype(np.float16)
    if type_name == "F32":
        return w
    return gguf.quants.quantize(w, qtype)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer metadata from the tests' tokenizer.json
# ---------------------------------------------------------------------------------------------------------------

_PAD = re.compile(r"^\[PAD\d+\]$")


def _tokenizer_fields(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    import gzip

    with gzip.open(DATA / "tokenizer.json.gz", "rt", encoding="utf-8") as f:
        tok = json.load(f)
    tokens = [""] * vocab_size
    types = [1] * vocab_size  # NORMAL
    for t, i in tok["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i] = t
            if _PAD.match(t):
                types[i] = 5  # UNUSED, as llama.cpp pads a vocabulary
    for a in tok["added_tokens"]:
        if a["id"] < vocab_size:
            tokens[a["id"]] = a["content"]
            types[a["id"]] = 3 if a["special"] else 4  # CONTROL / USER_DEFINED
    for i, t in enumerate(tokens):
        if not t:
            tokens[i], types[i] = f"[PAD{i}]", 5
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def write_tiny_gguf(
    path: Path,
    *,
    seed: int = 0,
    variant: str = "q4_k_m",
    scale: float = 1.0,
    out_scale: float = 1.0,
    hub_tokens: int = 0,
    hf_dir: Path | None = None,
) -> Path:
    """Write the tiny Qwen2 GGUF to `path` and return it.

    Weights are random with standard deviation 0.02 * `scale` (the lm_head's times `out_scale`); norms are 1 and
    the q/k/v biases are random, so the builder exports them as separate Add nodes like the real model's.
    `hub_tokens` lm_head rows (spread over the vocabulary) get 4 times the others' scale: greedy decoding then
    picks among them with top-2 margins far wider than a random model's, which parity tests need.

    With `hf_dir`, also save the Hugging Face folder that `convert.gguf_to_hf` would produce from it (the same
    `gguf.quants.dequantize` values, the tests' tokenizer), without parsing the file's 300k tokenizer strings
    back (transformers takes a minute for that; `test_tiny_gguf_round_trips_through_transformers` checks the
    two agree).
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = TINY_CONFIG
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    kv_dim = h // heads * kv
    rng = np.random.default_rng(seed)
    std = 0.02 * scale

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(f"tiny-qwen2-{variant}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(h)
    w.add_feed_forward_length(inter)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types, merges = _tokenizer_fields(v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)

    tt = tensor_types(variant)

    values: dict[str, np.ndarray] = {}

    def add(name: str, n: int, k: int, s: float = std, row_scale: np.ndarray | None = None) -> None:
        t = tt[name]
        data = quantized_tensor(rng, t, n, k, s, row_scale)
        w.add_tensor(name, data, raw_dtype=None if t in ("F16", "F32") else gguf.GGMLQuantizationType[t])
        values[name] = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[t]).reshape(n, k)

    def add_f32(name: str, a: np.ndarray) -> None:
        w.add_tensor(name, a)
        values[name] = a

    add("token_embd.weight", v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"blk.{i}"
        add_f32(f"{p}.attn_norm.weight", np.ones(h, np.float32))
        add(f"{p}.attn_q.weight", h, h)
        add(f"{p}.attn_k.weight", kv_dim, h)
        add(f"{p}.attn_v.weight", kv_dim, h)
        add_f32(f"{p}.attn_q.bias", rng.normal(0, std, h).astype(np.float32))
        add_f32(f"{p}.attn_k.bias", rng.normal(0, std, kv_dim).astype(np.float32))
        add_f32(f"{p}.attn_v.bias", rng.normal(0, std, kv_dim).astype(np.float32))
        add(f"{p}.attn_output.weight", h, h)
        add_f32(f"{p}.ffn_norm.weight", np.ones(h, np.float32))
        add(f"{p}.ffn_gate.weight", inter, h)
        add(f"{p}.ffn_up.weight", inter, h)
        add(f"{p}.ffn_down.weight", h, inter)
    add_f32("output_norm.weight", np.ones(h, np.float32))
    hubs = np.ones(v, np.float32)
    if hub_tokens:
        hubs[np.linspace(0, cfg["bos_token_id"] - 1, hub_tokens).astype(np.int64)] = 4.0
    add("output.weight", v, h, std * out_scale, hubs)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if hf_dir is not None:
        _save_hf(values, Path(hf_dir))
    return path


# GGUF name → Hugging Face Qwen2 name (layer tensors take the layer index)
_HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "attn_q.bias": "model.layers.{}.self_attn.q_proj.bias",
    "attn_k.bias": "model.layers.{}.self_attn.k_proj.bias",
    "attn_v.bias": "model.layers.{}.self_attn.v_proj.bias",
    "attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str:
    m = re.match(r"blk\.(\d+)\.(.+)$", gguf_name)
    return _HF_NAMES[m.group(2)].format(int(m.group(1))) if m else _HF_NAMES[gguf_name]


def _save_hf(values: dict[str, np.ndarray], dest: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**TINY_CONFIG)
    model = Qwen2ForCausalLM(cfg).eval()
    state = {hf_name(k): torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in values.items()}
    model.load_state_dict(state, strict=True)
    model.generation_config.eos_token_id = [151643, 151645]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(dest)
    tokenizer_dir(dest)


__all__ = ["VARIANTS", "hf_name", "quantized_tensor", "tensor_types", "tokenizer_dir", "write_tiny_gguf"]
