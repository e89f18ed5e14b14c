"""GGUF → Hugging Face folder (safetensors + config + tokenizer), via transformers' GGUF loading.

The weights are dequantized to fp32 exactly as transformers (and `gguf`) dequantize them; this folder is
the reference model for parity tests and evaluation, and the input of the onnxruntime-genai builder, whose
fp32 graph `transcode` then refills with the GGUF's own blocks.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from .cache import atomic_dir
from .errors import CorruptModelError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def check_gguf_header(path: Path, *, deep: bool = True) -> None:
    """Fail with a clear message unless `path` starts like a GGUF file (and, if `deep`, its tensors fit in it).

    The deep check parses all metadata (a large vocabulary takes seconds), so it runs only before a build.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CorruptModelError(f"cannot read {path}: {e.strerror}") from None
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise CorruptModelError(f"{path} is not a GGUF file (bad magic bytes)")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise CorruptModelError(f"{path}: unsupported GGUF version {version}")
    if not deep:
        return
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # gguf raises assorted errors on truncated files
        raise CorruptModelError(f"{path} is a damaged or truncated GGUF file ({type(e).__name__}: {e})") from None
    if end > size:
        raise CorruptModelError(f"{path} is truncated: tensors need {end} bytes, the file has {size}")


def gguf_metadata(path: Path) -> dict:
    """Architecture and shape fields of a GGUF file, as plain Python values."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.split(".")[-1] in ("tokens", "merges", "token_type", "scores"):
            continue
        if key == "tokenizer.chat_template":
            continue
        try:
            out[key] = field.contents()
        except Exception:
            continue
    return out


def gguf_to_hf(gguf_path: Path, out_dir: Path, *, progress: bool = True, check: bool = True) -> Path:
    """Write a Hugging Face folder (fp32 safetensors, config, tokenizer) for `gguf_path` into `out_dir`.

    The folder is built next to `out_dir` and renamed into place only when complete.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if check:
        check_gguf_header(gguf_path)
    with atomic_dir(Path(out_dir)) as tmp:
        log.info("loading %s with transformers (dequantizing to fp32)", gguf_path.name)
        # Config, tokenizer and weights all come from the GGUF (never pickles); no Python from the folder beside it.
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
        )
        # transformers refuses to save while its GGUF quantizer is attached; the weights are plain fp32 now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.torch_dtype = "float32"
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        gen = tmp / "generation_config.json"
        cfg = json.loads(gen.read_text()) if gen.exists() else {}
        # Qwen2.5 instruct builds end a chat turn with <|im_end|> and a document with <|endoftext|>.
        eos = {tok.eos_token_id}
        if tok.pad_token_id is not None:
            eos.add(tok.pad_token_id)
        ids = [i for i in (tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")) if i is not None]
        eos.update(i for i in ids if isinstance(i, int) and i >= 0 and i != tok.unk_token_id)
        cfg["eos_token_id"] = sorted(e for e in eos if e is not None)
        gen.write_text(json.dumps(cfg, indent=2))
        del model
    return Path(out_dir)
