"""LoRA adapters shipped inside the package: the fill-in-the-middle adapter of a registry model.

The default model is an instruct build whose fill-in-the-middle is weak (it rarely ends a middle, indents
wrongly and writes past the gap). `model/adapters/<model>-fim/` holds a LoRA adapter trained by Intarsia's own
pipeline (`benchmarks/train_fim_adapter.py`) in PEFT form (`adapter_model.safetensors`, `adapter_config.json`)
and a `manifest.json`: base model and its GGUF sha256, data description and hash, command line, seed, scores,
and the adapter file's sha256, checked before every use.

It is applied at run time (an ONNX Runtime adapter exported once per built model, never merged into the
weights); `fimAdapter: false` (server) or `--no-fim-adapter` (CLI) serves the plain model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import IntarsiaError
from .lora import export_adapter

SHIPPED_DIR = Path(__file__).resolve().parent / "adapters"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"


class ShippedAdapterError(IntarsiaError):
    pass


@dataclass(frozen=True)
class ShippedAdapter:
    name: str
    path: Path  # the PEFT folder
    sha256: str
    base_model: str
    base_gguf_sha256: Optional[str]
    manifest: dict

    @property
    def key(self) -> str:
        return self.sha256[:12]


def adapter_dir_for(model_name: str, root: Path = SHIPPED_DIR) -> Path:
    return Path(root) / f"{model_name}-fim"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShippedAdapterError(f"{folder} has no {MANIFEST}") from None
    except (OSError, ValueError) as e:
        raise ShippedAdapterError(f"{Path(folder) / MANIFEST} cannot be read: {e}") from None


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Write `manifest` (with the adapter file's sha256 and size filled in) atomically."""
    folder = Path(folder)
    weights = folder / WEIGHTS
    manifest = dict(manifest)
    manifest["adapter_sha256"] = file_sha256(weights)
    manifest["adapter_bytes"] = weights.stat().st_size
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest.", suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / MANIFEST)
    return manifest


def load_shipped(folder: Path, *, expect_gguf_sha256: Optional[str] = None) -> ShippedAdapter:
    """The adapter in `folder`, its weights checked against the manifest (and the base model's GGUF hash
    against `expect_gguf_sha256`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file() or not (folder / CONFIG).is_file():
        raise ShippedAdapterError(f"{folder} lacks {WEIGHTS} or {CONFIG}")
    want = manifest.get("adapter_sha256")
    got = file_sha256(weights)
    if want != got:
        raise ShippedAdapterError(f"{weights} does not match its manifest (sha256 {got[:16]}…, manifest says "
                                  f"{str(want)[:16]}…): the installation is damaged; reinstall intarsia or "
                                  "turn the adapter off (fimAdapter: false / --no-fim-adapter)")
    base = manifest.get("base") or {}
    gguf = base.get("gguf_sha256")
    if expect_gguf_sha256 and gguf and gguf != expect_gguf_sha256:
        raise ShippedAdapterError(f"{folder.name} was trained on a different base model (GGUF {gguf[:16]}…, "
                                  f"this model is {expect_gguf_sha256[:16]}…)")
    return ShippedAdapter(folder.name, folder, got, base.get("model", ""), gguf, manifest)


def shipped_for(source, root: Path = SHIPPED_DIR) -> Optional[ShippedAdapter]:
    """The shipped FIM adapter of a model source (`registry.ModelSource`), or None when it has none."""
    if getattr(source, "kind", None) != "registry":
        return None
    folder = adapter_dir_for(source.name, root)
    if not (folder / MANIFEST).is_file():
        return None
    spec = getattr(source, "spec", None)
    return load_shipped(folder, expect_gguf_sha256=getattr(spec, "gguf_sha256", None))


def onnx_adapter_path(adapter: ShippedAdapter, built_path: Path) -> Path:
    """The adapter exported for the built model in `built_path` (exported on first use, atomically)."""
    out = Path(built_path) / "adapters" / f"shipped-{adapter.name}-{adapter.key}.onnx_adapter"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        export_adapter(adapter.path, built_path, out, name=adapter.name)
    return out


__all__ = ["MANIFEST", "SHIPPED_DIR", "ShippedAdapter", "ShippedAdapterError", "adapter_dir_for", "file_sha256",
           "load_shipped", "onnx_adapter_path", "read_manifest", "shipped_for", "write_manifest"]
