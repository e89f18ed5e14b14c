"""Adapters trained on a workspace: versioned folders, the promoted one, rollback.

`intarsia train REPO` writes every trained adapter into a new version folder; the evaluation gate promotes it
(or not); the language server serves the promoted one for that workspace and notices a promotion or a rollback
on its own. Layout under the cache:

    trained/<workspace key>/<base model key>/
        current.json                     {"version": "v0003", "history": ["v0001", "v0003"], "updated": ...}
        versions/v0003/manifest.json     base model, adapter hash, data hash, hyper-parameters, scores, promoted
        versions/v0003/adapter/          the peft folder (adapter_config.json + adapter_model.safetensors)
        versions/v0003/onnx/<build>.onnx_adapter   exported for one built ONNX model (made on first use)
        versions/v0003/report.{json,md,png}
        runs/<run key>/                  checkpoints of a training run (resumable), removed when it finishes

`current.json` is replaced in one rename, so a reader sees the old or the new pointer, never half of one. A version
folder appears in one rename too (`atomic_dir`). Nothing here is written into the workspace itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .cache import atomic_dir, cache_root, clean_stale_parts, sha256_file, write_json_atomic
from .errors import IntarsiaError
from .lora import export_adapter

CURRENT_FILE = "current.json"
MANIFEST_FILE = "manifest.json"
_VERSION = re.compile(r"^v(\d{4,})$")


class StoreError(IntarsiaError):
    """A trained-adapter store problem (no such version, nothing to roll back to)."""


def workspace_key(root: Path | str) -> str:
    real = os.path.realpath(str(root))
    slug = "".join(c if c.isalnum() or c in "-._" else "-" for c in os.path.basename(real) or "root")[:40]
    return f"{slug}-{hashlib.sha256(real.encode()).hexdigest()[:10]}"


def trained_root() -> Path:
    return cache_root() / "trained"


@dataclass(frozen=True)
class Version:
    name: str
    path: Path
    manifest: dict

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def promoted(self) -> bool:
        return bool(self.manifest.get("promoted"))


class AdapterStore:
    """The trained adapters of one workspace for one base model (see the module docstring)."""

    def __init__(self, workspace: Path | str, base_key: str, *, root: Optional[Path] = None):
        self.workspace = os.path.realpath(str(workspace))
        self.base_key = base_key
        self.path = (root or trained_root()) / workspace_key(self.workspace) / base_key

    # ---- reading ---------------------------------------------------------------------------------------------

    @property
    def current_file(self) -> Path:
        return self.path / CURRENT_FILE

    def _pointer(self) -> dict:
        try:
            data = json.loads(self.current_file.read_text())
        except (OSError, ValueError):
            return {"version": None, "history": []}
        if not isinstance(data, dict):
            return {"version": None, "history": []}
        hist = [h for h in data.get("history", []) if isinstance(h, str) and _VERSION.match(h)]
        ver = data.get("version") if isinstance(data.get("version"), str) else None
        return {"version": ver, "history": hist, "updated": data.get("updated")}

    def versions(self) -> list[Version]:
        out = []
        vdir = self.path / "versions"
        if not vdir.is_dir():
            return out
        for p in sorted(vdir.iterdir()):
            if not _VERSION.match(p.name):
                continue
            try:
                manifest = json.loads((p / MANIFEST_FILE).read_text())
            except (OSError, ValueError):
                continue
            out.append(Version(p.name, p, manifest))
        return out

    def version(self, name: str) -> Version:
        for v in self.versions():
            if v.name == name:
                return v
        raise StoreError(f"no trained version '{name}' in {self.path}")

    def current(self) -> Optional[Version]:
        """The promoted version the server should serve, or None (the base model)."""
        name = self._pointer()["version"]
        if not name:
            return None
        try:
            v = self.version(name)
        except StoreError:
            return None
        return v if (v.adapter_dir / "adapter_config.json").exists() else None

    def stamp(self) -> Optional[tuple[int, int]]:
        """Changes whenever the pointer is replaced (cheap: one stat); None when there is no pointer."""
        try:
            st = self.current_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    # ---- writing ---------------------------------------------------------------------------------------------

    def _next_name(self) -> str:
        nums = [int(_VERSION.match(v.name).group(1)) for v in self.versions()]
        vdir = self.path / "versions"
        if vdir.is_dir():  # also count folders without a readable manifest: never reuse a name
            nums += [int(m.group(1)) for p in vdir.iterdir() if (m := _VERSION.match(p.name))]
        return f"v{max(nums, default=0) + 1:04d}"

    def add_version(self, adapter_dir: Path, manifest: dict, reports: Optional[dict[str, Path]] = None) -> Version:
        """Copy a trained peft folder (and report files) into a new version folder; not promoted yet."""
        import shutil

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").exists():
            raise StoreError(f"{adapter_dir} is not a peft adapter folder (no adapter_config.json)")
        (self.path / "versions").mkdir(parents=True, exist_ok=True)
        clean_stale_parts(self.path / "versions")
        name = self._next_name()
        final = self.path / "versions" / name
        weights = adapter_dir / "adapter_model.safetensors"
        record = {**manifest, "version": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "workspace": self.workspace, "base_key": self.base_key, "promoted": False,
                  "adapter_sha256": sha256_file(weights) if weights.exists() else None}
        with atomic_dir(final) as tmp:
            shutil.copytree(adapter_dir, tmp / "adapter")
            for fname, src in (reports or {}).items():
                if Path(src).exists():
                    shutil.copy2(src, tmp / fname)
            (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return Version(name, final, record)

    def _write_manifest(self, v: Version, **changes) -> Version:
        record = {**v.manifest, **changes}
        write_json_atomic(v.path / MANIFEST_FILE, record)
        return Version(v.name, v.path, record)

    def promote(self, name: str) -> Version:
        """Serve `name` from now on (one atomic pointer switch)."""
        v = self.version(name)
        if not (v.adapter_dir / "adapter_config.json").exists():
            raise StoreError(f"version {name} has no adapter")
        ptr = self._pointer()
        hist = [h for h in ptr["history"] if h != name] + [name]
        v = self._write_manifest(v, promoted=True, promoted_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json_atomic(self.current_file, {"version": name, "history": hist, "updated": time.time()})
        return v

    def rollback(self) -> Optional[Version]:
        """Go back to the version promoted before the current one (None: back to the base model)."""
        ptr = self._pointer()
        if not ptr["version"]:
            raise StoreError(f"nothing to roll back: no trained adapter is served for {self.workspace}")
        hist = [h for h in ptr["history"] if h != ptr["version"]]
        known = {v.name for v in self.versions()}
        while hist and hist[-1] not in known:
            hist.pop()
        prev = hist[-1] if hist else None
        write_json_atomic(self.current_file, {"version": prev, "history": hist, "updated": time.time(),
                                              "rolled_back": ptr["version"]})
        return self.version(prev) if prev else None

    def run_dir(self, run_key: str) -> Path:
        return self.path / "runs" / run_key


def onnx_adapter_for(version: Version, model_dir: Path, build_key: str) -> Path:
    """The version's adapter exported for the built ONNX model `model_dir` (exported once, atomically)."""
    out = version.path / "onnx" / f"{build_key[:16] or 'model'}.onnx_adapter"
    if not out.exists():
        export_adapter(version.adapter_dir, Path(model_dir), out, name=version.name)
    return out


__all__ = ["AdapterStore", "StoreError", "Version", "onnx_adapter_for", "trained_root", "workspace_key"]
