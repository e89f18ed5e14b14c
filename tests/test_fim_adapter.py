"""The shipped fill-in-the-middle adapter: its files match its manifest, building applies it, turning it off gives
the plain model, a damaged copy is refused with a clear message (and the server serves the plain model), and
repository training continues it.

The shipped adapter itself is checked as committed; serving is exercised with tiny random Qwen2 models
(tests/tiny.py) standing in for the default model, and on the real default model in test_real_fim_adapter.py.
"""

from __future__ import annotations

import json
import logging
import shutil
from importlib import resources
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from intarsia.model import shipped as shipped_mod  # noqa: E402
from intarsia.model.shipped import (CONFIG, WEIGHTS, ShippedAdapterError, adapter_dir_for,  # noqa: E402
                                    file_sha256, load_shipped, read_manifest, write_manifest)

from test_training import _peft_dir, make_repo, tiny_built, tiny_hf  # noqa: E402,F401  (fixtures)

DEFAULT = "qwen2.5-coder-0.5b"


def _shipped_folders() -> list[Path]:
    return sorted(p for p in shipped_mod.SHIPPED_DIR.iterdir() if (p / "manifest.json").is_file())


def test_default_model_ships_an_adapter_whose_files_match_its_manifest():
    from safetensors import safe_open

    from intarsia.model.registry import get_spec

    folders = _shipped_folders()
    assert adapter_dir_for(DEFAULT) in folders
    # installed as package data of intarsia.model
    assert resources.files("intarsia.model").joinpath(f"adapters/{DEFAULT}-fim/{WEIGHTS}").is_file()
    for folder in folders:
        m = read_manifest(folder)
        assert file_sha256(folder / WEIGHTS) == m["adapter_sha256"]
        assert (folder / WEIGHTS).stat().st_size == m["adapter_bytes"] < 40 * 2**20
        spec = get_spec(m["base"]["model"])
        assert m["base"]["gguf_sha256"] == spec.gguf_sha256
        assert load_shipped(folder, expect_gguf_sha256=spec.gguf_sha256).sha256 == m["adapter_sha256"]
        cfg = json.loads((folder / CONFIG).read_text())
        assert cfg["r"] == m["config"]["rank"] and cfg["lora_alpha"] == m["config"]["alpha"]
        assert sorted(cfg["target_modules"]) == sorted(m["config"]["target_modules"])
        # how it was made: command, seed, data (hash, licences, file list, overlap with the evaluation sets)
        assert m["command"].startswith("python benchmarks/train_fim_adapter.py train")
        assert isinstance(m["seed"], int) and len(m["data"]["data_hash"]) == 64
        assert m["data"]["licences"] and len(m["data"]["file_list"]) == m["data"]["files"] > 0
        assert m["data"]["overlap_with_eval_sets"]["tasks_with_entry_point_and_a_solution_line"] == []
        assert m["training"]["steps"] > 0 and m["training"]["last_loss"] < m["training"]["first_loss"]
        prev = m.get("continued_from")  # a continued run keeps the first run's record
        if prev is not None:
            assert prev["command"].startswith("python benchmarks/train_fim_adapter.py train")
            assert prev["adapter_sha256"] != m["adapter_sha256"] and prev["training"]["steps"] > 0
        assert "single-line" in m["scores"]
        with safe_open(str(folder / WEIGHTS), "pt") as f:
            keys = list(f.keys())
        assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)


def test_a_damaged_or_foreign_adapter_is_refused_clearly(tmp_path):
    src = adapter_dir_for(DEFAULT)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    m = read_manifest(copy)
    with pytest.raises(ShippedAdapterError, match="different base model"):
        load_shipped(copy, expect_gguf_sha256="0" * 64)
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ShippedAdapterError, match="does not match its manifest.*fimAdapter: false"):
        load_shipped(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ShippedAdapterError, match="cannot be read"):
        load_shipped(copy)
    assert m["adapter_sha256"] == read_manifest(src)["adapter_sha256"]  # the shipped copy is untouched


@pytest.fixture
def tiny_fim(tiny_hf, tmp_path, monkeypatch):  # noqa: F811
    """A LoRA adapter for the tiny model, shipped as the FIM adapter of whatever model is asked for."""
    folder = _peft_dir(tiny_hf, tmp_path / "tiny-fim", 7)
    write_manifest(folder, {"base": {"model": "tiny"}, "scores": {}})
    monkeypatch.setattr(shipped_mod, "shipped_for", lambda source, root=None: load_shipped(folder))
    return folder


def test_building_applies_the_fim_adapter_and_turning_it_off_gives_the_plain_model(
        tiny_hf, tiny_built, tiny_fim, monkeypatch, caplog):  # noqa: F811
    from intarsia.model.build import BuildOptions, build
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.ort_engine import OrtEngine
    from intarsia.model.registry import resolve_source
    from intarsia.model.factory import FIM_ADAPTER, open_engine
    from intarsia.server.lsp.settings import Settings

    cache, _ = tiny_built
    monkeypatch.setenv("INTARSIA_CACHE", str(cache))
    src = resolve_source(str(tiny_hf))
    built = build(src, BuildOptions(precision="fp32"), progress=False)
    assert built.fim_adapter is not None and built.fim_adapter.is_file()
    assert build(src, BuildOptions(precision="fp32"), progress=False, fim_adapter=False).fim_adapter is None

    req = GenerationRequest(prompt="<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>",
                            max_new_tokens=8)
    with OrtEngine(built.path) as plain_engine:
        plain = plain_engine.generate(req).text
    with OrtEngine(built.path, adapters={"x": built.fim_adapter}, default_adapter="x") as fim_engine:
        adapted = fim_engine.generate(req).text
    assert adapted != plain

    on = open_engine(Settings(engine="ort", model=str(tiny_hf), device="cpu").engine_spec(None))
    try:
        assert on.engine.default_adapter == FIM_ADAPTER and on.base_adapter == FIM_ADAPTER
        assert on.description.endswith("+ FIM adapter") and on.engine.generate(req).text == adapted
    finally:
        on.engine.close()
    off = open_engine(Settings(engine="ort", model=str(tiny_hf), device="cpu", fim_adapter=False).engine_spec(None))
    try:
        assert off.engine.default_adapter is None and off.engine.generate(req).text == plain
    finally:
        off.engine.close()

    # A damaged adapter: the server still serves (the plain model) and says why.
    data = bytearray((tiny_fim / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (tiny_fim / WEIGHTS).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        broken = open_engine(Settings(engine="ort", model=str(tiny_hf), device="cpu").engine_spec(None))
    try:
        assert broken.engine.default_adapter is None and broken.engine.generate(req).text == plain
        assert "without its fill-in-the-middle adapter" in caplog.text and "does not match" in caplog.text
    finally:
        broken.engine.close()


def test_rolling_back_a_trained_adapter_returns_to_the_fim_adapter(tiny_hf, tiny_built, tiny_fim, tmp_path,
                                                                   monkeypatch):  # noqa: F811
    from intarsia.model.registry import resolve_source
    from intarsia.model.trained import AdapterStore
    from intarsia.model.factory import FIM_ADAPTER, open_engine
    from intarsia.server.lsp.settings import Settings

    cache, _ = tiny_built
    monkeypatch.setenv("INTARSIA_CACHE", str(cache))
    repo = make_repo(tmp_path / "repo")
    store = AdapterStore(repo, resolve_source(str(tiny_hf)).cache_name)
    v = store.add_version(_peft_dir(tiny_hf, tmp_path / "trained", 3), {"scores": {}})
    store.promote(v.name)
    loaded = open_engine(Settings(engine="ort", model=str(tiny_hf), device="cpu").engine_spec(str(repo)))
    try:
        assert loaded.engine.default_adapter == f"trained-{v.name}"  # the trained adapter replaces it
        store.rollback()
        assert loaded.swap_trained() is None and loaded.engine.default_adapter == FIM_ADAPTER
    finally:
        loaded.engine.close()


def test_repository_training_continues_the_fim_adapter(tiny_hf, tiny_fim, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from intarsia.training.trainer import TrainConfig, TrainError, train_lora
    from test_training import _toy_examples

    cfg = TrainConfig(rank=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"), learning_rate=1e-12,
                      max_steps=1, batch_tokens=256, context_length=128, warmup_ratio=0.0)
    res = train_lora(tiny_hf, _toy_examples(tiny_hf, 4), tmp_path / "run", cfg, device="cpu", progress=False,
                     init_adapter=tiny_fim)
    start = load_file(str(tiny_fim / WEIGHTS))
    after = load_file(str(res.adapter_dir / WEIGHTS))
    assert start.keys() == after.keys()
    for k in start:  # one step at lr 1e-12 leaves the starting weights where they were
        torch.testing.assert_close(after[k], start[k], atol=1e-8, rtol=0)
    with pytest.raises(TrainError, match="rank 4.*this run has rank 8"):
        train_lora(tiny_hf, _toy_examples(tiny_hf, 4), tmp_path / "run2",
                   TrainConfig(rank=8, alpha=8, target_modules=("q_proj", "v_proj"), max_steps=1, batch_tokens=256,
                               context_length=128),
                   device="cpu", progress=False, init_adapter=tiny_fim)
