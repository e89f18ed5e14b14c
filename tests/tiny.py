"""Tiny random models with the real architecture (Qwen2) and the real Qwen2.5-Coder tokenizer.

Shared by the tests: `tokenizer_dir()` gives a folder with the real tokenizer (committed, gzipped, Apache-2.0,
extracted from the default model's GGUF); `make_tiny_qwen2()` saves a random Qwen2 model there;
`build_ort()` exports it with the onnxruntime-genai builder.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "qwen2.5-coder-tokenizer"

# Small, but every dimension a multiple of what the GGUF block formats need (32 for Q8_0/Q5_0, 256 for K-quants
# along the reduction dimension of ffn_down).
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    vocab_size=151936,
    tie_word_embeddings=False,
    bos_token_id=151643,
    eos_token_id=151645,
    pad_token_id=151643,
)


def tokenizer_dir(dest: Path) -> Path:
    """Write the real tokenizer's files into `dest` (created) and return it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "tokenizer.json"
    if not target.exists():
        with gzip.open(DATA / "tokenizer.json.gz", "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    shutil.copy(DATA / "tokenizer_config.json", dest / "tokenizer_config.json")
    return dest


def make_tiny_qwen2(dest: Path, *, seed: int = 0, num_hidden_layers: int = 2, scale: float = 1.0) -> Path:
    """Save a random Qwen2ForCausalLM (fp32) with the real tokenizer into `dest`.

    The default init (std 0.02) makes near-uniform logits; `scale` multiplies every weight so that greedy
    decoding has clear winners (parity tests need margins larger than float rounding).
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dest = Path(dest)
    cfg = Qwen2Config(**{**TINY_CONFIG, "num_hidden_layers": num_hidden_layers})
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    if scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.mul_(scale)
    model.generation_config.eos_token_id = [151643, 151645]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(dest)
    tokenizer_dir(dest)
    return dest


def build_ort(hf_dir: Path, out_dir: Path, *, precision: str = "fp32", extra: dict | None = None) -> Path:
    """Export `hf_dir` with the onnxruntime-genai builder (CPU) into `out_dir`."""
    out_dir = Path(out_dir)
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out_dir),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(out_dir.parent / f".{out_dir.name}-cache"),
    ]
    if extra:
        cmd += ["--extra_options", *[f"{k}={v}" for k, v in extra.items()]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"builder failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out_dir
