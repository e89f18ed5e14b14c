"""Model and adapter folders are data, never code (`model.trust`).

The planted attack is real: a tiny shared library whose constructor writes a marker file, named by the decoder's
`custom_ops_library` in the genai_config.json of a working tiny ONNX model, as a repository could ship it. With
the check bypassed, Intarsia's own engine runs the library (the marker appears); through `intarsia complete` and
the server's engine loading it must not, until the user's own configuration file allows that library. The rest
checks the other ways a folder could run code (pointers, other providers, pickles, auto_map), the manifest
digests of built folders, and the user configuration file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from intarsia.model.errors import ConfigError, IntarsiaError, ModelNotFoundError, UntrustedModelError
from intarsia.model.trust import (
    MANIFEST,
    check_hf_folder,
    check_onnx_folder,
    check_peft_folder,
    config_digests,
    config_path,
    user_config,
)

LIB_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>

__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("INTARSIA_TEST_MARKER");
    if (path) {
        FILE *f = fopen(path, "w");
        if (f) { fputs("the planted library ran\n", f); fclose(f); }
    }
}

/* A valid, empty custom-ops library: onnxruntime calls this after dlopen; NULL means success. */
void *RegisterCustomOps(void *options, const void *api) { (void)options; (void)api; return 0; }
"""

GENAI = {
    "model": {
        "type": "qwen2",
        "context_length": 4096,
        "decoder": {
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "filename": "model.onnx",
        },
    },
    "search": {"max_length": 4096},
}


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    """Every test starts from a missing user configuration (the defaults), never the developer's own."""
    path = tmp_path / "user" / "config.toml"
    monkeypatch.setenv("INTARSIA_CONFIG", str(path))
    return path


def _allow(config: Path, *libs: Path | str) -> None:
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[trust]\ncustom_ops_libraries = [" + ", ".join(json.dumps(str(x)) for x in libs) + "]\n")


def _folder(root: Path, cfg: dict | str, name: str = "m") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "genai_config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return d


def _with(path: str, value) -> dict:
    """GENAI with `value` set at the dotted `path` (objects created on the way)."""
    cfg = json.loads(json.dumps(GENAI))
    node = cfg
    *parents, last = path.split("/")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


# ---- the planted library ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ort(tmp_path_factory):
    from tiny import build_ort, make_tiny_qwen2

    root = tmp_path_factory.mktemp("trust")
    return build_ort(make_tiny_qwen2(root / "hf", num_hidden_layers=1), root / "ort")


@pytest.fixture
def planted(tmp_path, tiny_ort, monkeypatch):
    """A working copy of the tiny model whose genai_config.json names libplanted.so, shipped inside the folder."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    d = tmp_path / "planted-model"
    d.mkdir()
    for f in tiny_ort.iterdir():
        try:
            os.link(f, d / f.name)  # onnxruntime refuses external data through a symlink out of the folder
        except OSError:
            shutil.copy2(f, d / f.name)
    (d / "genai_config.json").unlink()
    cfg = json.loads((tiny_ort / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["custom_ops_library"] = "libplanted.so"
    (d / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    src = tmp_path / "planted.c"
    src.write_text(LIB_SOURCE)
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(d / "libplanted.so"), str(src)], check=True)
    marker = tmp_path / "marker"
    monkeypatch.setenv("INTARSIA_TEST_MARKER", str(marker))
    return {"dir": d, "lib": d / "libplanted.so", "marker": marker}


def test_the_planted_folder_runs_its_library_when_the_check_is_bypassed(planted):
    # Intarsia's own engine with model.trust's check replaced by a no-op, in a child process (a library's
    # constructor runs once per process): the library runs. This is what the check stops.
    code = textwrap.dedent(f"""
        import intarsia.model.ort_engine as oe
        oe.check_onnx_folder = lambda path: None
        with oe.OrtEngine({str(planted['dir'])!r}, provider="cpu", threads=1):
            pass
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert planted["marker"].read_text() == "the planted library ran\n"


def test_complete_refuses_the_planted_folder(planted, tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f(x):\n    return x\n")
    env = dict(os.environ, INTARSIA_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "intarsia.server.cli", "complete", str(sample), "--line", "2",
                           "--column", "12", "--model", str(planted["dir"])], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("intarsia: error: ")
    for part in ("genai_config.json", "model.decoder.session_options.custom_ops_library", "libplanted.so",
                 "custom_ops_libraries", os.environ["INTARSIA_CONFIG"]):
        assert part in lines[0], part
    assert proc.stdout == ""
    assert not planted["marker"].exists()


def test_server_engine_loading_refuses_the_planted_folder(planted):
    from intarsia.model.build import BuildOptions, find_built
    from intarsia.model.ort_engine import OrtEngine
    from intarsia.model.registry import ModelSource
    from intarsia.model.factory import open_engine
    from intarsia.server.lsp.settings import Settings

    with pytest.raises(UntrustedModelError, match="custom_ops_library names the shared library 'libplanted.so'"):
        open_engine(Settings(engine="ort", model=str(planted["dir"]), device="cpu").engine_spec(None))
    # The choke points behind it refuse too, whoever calls them.
    with pytest.raises(UntrustedModelError):
        OrtEngine(planted["dir"], provider="cpu")
    with pytest.raises(UntrustedModelError):
        find_built(ModelSource(kind="onnx", name="planted", path=planted["dir"]), BuildOptions())
    assert not planted["marker"].exists()


def test_a_library_the_user_config_allows_is_loaded(planted, no_user_config, caplog):
    from intarsia.model.factory import open_engine
    from intarsia.server.lsp.settings import Settings

    _allow(no_user_config, planted["lib"])
    loaded = open_engine(Settings(engine="ort", model=str(planted["dir"]), device="cpu", threads=1).engine_spec(None))
    try:
        assert planted["marker"].exists()  # the allow-list is what let it run
        assert any("libplanted.so, allowed by" in r.getMessage() for r in caplog.records)
    finally:
        loaded.engine.close()


# ---- what in a genai_config.json is refused -------------------------------------------------------------------


REFUSED = [
    ("model/decoder/session_options/custom_ops_library", "/usr/lib/libevil.so", "names the shared library"),
    ("model/decoder/pipeline", [{"embeddings": {"filename": "e.onnx",
                                                "session_options": {"custom_ops_library": "x/libe.so"}}}],
     "pipeline[0].embeddings.session_options.custom_ops_library"),
    ("model/vision/session_options/custom_ops_library", "libv.so", "model.vision.session_options"),
    ("model/decoder/session_options/provider_options", [{"qnn": {"backend_path": "libQnnHtp.so"}}],
     "execution provider 'qnn'"),
    ("model/decoder/session_options/provider_options", [{"VitisAIExecutionProvider": {"config_file": "v.json"}}],
     "execution provider 'vitisai'"),
    ("model/decoder/session_options/provider_options", [{"cuda": {"gpu_external_alloc": "140737488355328"}}],
     "raw memory address"),
    ("model/decoder/session_options/provider_options", [{"cuda": {"trt_extra_plugin_lib_paths": "a.so;b.so"}}],
     "trt_extra_plugin_lib_paths names the shared library 'a.so'"),
    ("model/decoder/session_options/ep.webgpuexecutionprovider.dawnProcTable", "1234", "raw memory address"),
    ("model/decoder/session_options/enable_profiling", "/tmp/profile", "profile file"),
    ("model/decoder/session_options/some_future_option", "./helpers/libnew.so.1", "some_future_option names"),
    ("model/decoder/session_options/extras", ["x", "sub/libz.dylib"], "extras[1] names the shared library"),
    ("model/decoder/session_options/plugin_dir", 3, "should name a library"),
    ("model/decoder/session_options/session.optimized_model_filepath", "../../site-packages/x.pth",
     "names a file for onnxruntime to read or write"),
    ("model/decoder/pipeline", [{"lm": {"filename": "l.onnx", "run_options": {"x.dump_dir": "/tmp/d"}}}],
     "run_options.x.dump_dir names a file"),
]


@pytest.mark.parametrize("path,value,message", REFUSED, ids=[f"{r[0].rsplit('/', 1)[-1]}-{i}"
                                                           for i, r in enumerate(REFUSED)])
def test_keys_that_load_code_are_refused_at_any_depth(tmp_path, path, value, message):
    d = _folder(tmp_path, _with(path, value))
    with pytest.raises(UntrustedModelError, match="genai_config.json: ") as e:
        check_onnx_folder(d)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_duplicate_key_cannot_hide_a_library(tmp_path):
    # Python's json keeps the last of two equal keys; every occurrence is checked.
    text = ('{"model": {"type": "qwen2", "context_length": 8, "decoder": {"session_options": '
            '{"custom_ops_library": "libhidden.so", "custom_ops_library": ""}}}}')
    with pytest.raises(UntrustedModelError, match="libhidden.so"):
        check_onnx_folder(_folder(tmp_path, text))


def test_builder_configs_pass_and_a_foreign_folder_is_warned_about_once(tmp_path, caplog):
    cuda = _with("model/decoder/session_options/provider_options", [{"cuda": {"enable_cuda_graph": "0"}}])
    cuda["model"]["decoder"]["session_options"]["ep.cuda.fpa_intb_gemm"] = "1"
    cuda["model"]["decoder"]["session_options"]["session.moe.offload.allow_file_backing"] = "0"  # a flag, no path
    for i, cfg in enumerate((GENAI, cuda)):
        d = _folder(tmp_path, cfg, f"m{i}")
        caplog.clear()
        for _ in range(2):
            r = check_onnx_folder(d)
            assert r.built_by_intarsia is False and r.libraries == ()
        warned = [rec for rec in caplog.records if "was not built by Intarsia" in rec.getMessage()]
        assert len(warned) == 1 and warned[0].levelname == "WARNING"


def test_the_allow_list_matches_the_path_onnxruntime_genai_would_load(tmp_path, no_user_config, monkeypatch):
    lib = tmp_path / "libs" / "libok.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")
    d = _folder(tmp_path, _with("model/decoder/session_options/custom_ops_library", "libok.so"))
    with pytest.raises(UntrustedModelError):
        check_onnx_folder(d)
    (d / "libok.so").symlink_to(lib)  # the folder's name resolves to the allowed file
    _allow(no_user_config, lib)
    assert check_onnx_folder(d).libraries == (str(lib.resolve()),)
    # onnxruntime-genai does not expand "~": "~/x/libok.so" is a file of the folder, not the user's allowed one.
    home = tmp_path / "home"
    (home / "x").mkdir(parents=True)
    (home / "x" / "libok.so").write_bytes(b"")
    monkeypatch.setenv("HOME", str(home))
    _allow(no_user_config, "~/x/libok.so")
    assert user_config().custom_ops_libraries == frozenset({str(home / "x" / "libok.so")})
    d2 = _folder(tmp_path, _with("model/decoder/session_options/custom_ops_library", "~/x/libok.so"), "m2")
    with pytest.raises(UntrustedModelError, match="m2/~/x/libok.so"):
        check_onnx_folder(d2)


def test_a_genai_config_linked_from_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(GENAI))
    d = tmp_path / "m"
    d.mkdir()
    (d / "genai_config.json").symlink_to(outside)
    with pytest.raises(UntrustedModelError, match="outside the model folder"):
        check_onnx_folder(d)


def test_built_folders_are_verified_against_their_manifest(tmp_path, caplog):
    d = _folder(tmp_path, GENAI)
    (d / "tokenizer_config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    (d / MANIFEST).write_text(json.dumps({"name": "m", "files": config_digests(d)}))
    assert set(json.loads((d / MANIFEST).read_text())["files"]) == {"genai_config.json", "tokenizer_config.json"}
    caplog.clear()
    assert check_onnx_folder(d).built_by_intarsia is True
    assert not [r for r in caplog.records if "not built by Intarsia" in r.getMessage()]
    # A harmless edit after the build is still refused: nothing but a build writes these files.
    (d / "genai_config.json").write_text(json.dumps(_with("search/max_length", 2048)))
    with pytest.raises(UntrustedModelError, match="genai_config.json was changed after Intarsia built"):
        check_onnx_folder(d)
    (d / "genai_config.json").write_text(json.dumps(GENAI))
    (d / "tokenizer_config.json").unlink()
    with pytest.raises(UntrustedModelError, match="tokenizer_config.json was removed"):
        check_onnx_folder(d)
    # A manifest from before digests were recorded: accepted after the library check, without the foreign warning.
    (d / MANIFEST).write_text(json.dumps({"name": "m"}))
    caplog.clear()
    assert check_onnx_folder(d).built_by_intarsia is False
    assert not [r for r in caplog.records if "not built by Intarsia" in r.getMessage()]
    # Without the manifest the same folder is a foreign one: accepted after the library check, with a warning.
    (d / MANIFEST).unlink()
    assert check_onnx_folder(d).built_by_intarsia is False
    assert [r for r in caplog.records if "not built by Intarsia" in r.getMessage()]
    # A manifest's digests do not excuse a library (a folder can forge them).
    bad = _folder(tmp_path, _with("model/decoder/session_options/custom_ops_library", "libx.so"), "forged")
    (bad / MANIFEST).write_text(json.dumps({"files": config_digests(bad)}))
    with pytest.raises(UntrustedModelError, match="libx.so"):
        check_onnx_folder(bad)
    (bad / "genai_config.json").write_text(json.dumps(GENAI))
    (bad / MANIFEST).write_text(json.dumps({"files": {**config_digests(bad), "../genai_config.json": "0" * 64}}))
    with pytest.raises(UntrustedModelError, match="not a file of the folder"):
        check_onnx_folder(bad)


def test_an_unreadable_genai_config_is_refused(tmp_path):
    from intarsia.model.errors import CorruptModelError

    with pytest.raises(CorruptModelError, match="cannot read"):
        check_onnx_folder(_folder(tmp_path, '{"model": {"decoder": '))
    with pytest.raises(ModelNotFoundError):
        check_onnx_folder(tmp_path)


# ---- the user configuration file ------------------------------------------------------------------------------


def test_config_path_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("INTARSIA_CONFIG", str(tmp_path / "explicit.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "explicit.toml"
    monkeypatch.delenv("INTARSIA_CONFIG")
    assert config_path() == tmp_path / "xdg" / "intarsia" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_path() == tmp_path / "home" / ".config" / "intarsia" / "config.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config_path() == tmp_path / "home" / ".config" / "intarsia" / "config.toml"


@pytest.mark.parametrize("text,message", [
    ("[trust\n", "is not valid TOML"),
    ("trust = 3\n", "'trust' must be a table"),
    ("[trust]\ncustom_op_libraries = []\n", "unknown key trust.custom_op_libraries"),
    ("[trust]\ncustom_ops_libraries = \"/x.so\"\n", "must be a list of absolute paths"),
    ("[trust]\ncustom_ops_libraries = [\"libx.so\"]\n", "'libx.so' is not an absolute path"),
    (b"\xff\xfe", "is not UTF-8"),
])
def test_a_malformed_user_config_is_a_clear_error(tmp_path, no_user_config, text, message):
    no_user_config.parent.mkdir(parents=True)
    if isinstance(text, bytes):
        no_user_config.write_bytes(text)
    else:
        no_user_config.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        user_config()
    assert str(no_user_config) in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, IntarsiaError)
    # Every model check reads it: the error surfaces where a model is loaded.
    with pytest.raises(ConfigError):
        check_onnx_folder(_folder(tmp_path, GENAI))


def test_a_missing_user_config_is_the_defaults_and_other_tables_are_ignored(no_user_config):
    assert user_config().custom_ops_libraries == frozenset()
    no_user_config.parent.mkdir(parents=True)
    no_user_config.write_text("[ui]\ncolour = true\n[trust]\ncustom_ops_libraries = [\"/opt/x/../lib/libok.so\"]\n")
    assert user_config().custom_ops_libraries == frozenset({"/opt/lib/libok.so"})


# ---- Hugging Face and peft folders ------------------------------------------------------------------------------


def _hf(root: Path, name: str, config: dict, files: dict[str, bytes]) -> Path:
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    for n, data in files.items():
        (d / n).write_bytes(data)
    return d


def test_a_hugging_face_folder_with_auto_map_is_refused(tmp_path, monkeypatch):
    from intarsia.model import build as build_mod
    from intarsia.model.hf_engine import HfEngine
    from intarsia.model.registry import resolve_source

    d = _hf(tmp_path, "remote", {"model_type": "qwen2", "auto_map": {"AutoModelForCausalLM": "modeling_x.Model"}},
            {"model.safetensors": b"", "modeling_x.py": b"import os; os.system('touch pwned')\n"})
    for call in (lambda: resolve_source(str(d)), lambda: HfEngine(d), lambda: check_hf_folder(d)):
        with pytest.raises(UntrustedModelError, match="config.json has auto_map"):
            call()

    def no_builder(*a, **k):
        raise AssertionError("the builder must not run on a refused folder")

    monkeypatch.setattr(build_mod.subprocess, "run", no_builder)
    with pytest.raises(UntrustedModelError, match="auto_map"):
        build_mod.run_builder(d, tmp_path / "out", "fp32", "cpu", {})
    tok = _hf(tmp_path, "remote-tok", {"model_type": "qwen2"}, {"model.safetensors": b""})
    (tok / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tok.T", None]}}))
    with pytest.raises(UntrustedModelError, match="tokenizer_config.json has auto_map"):
        check_hf_folder(tok)


def test_a_hugging_face_folder_with_only_pickle_weights_is_refused(tmp_path):
    from intarsia.model.registry import resolve_source

    d = _hf(tmp_path, "pickled", {"model_type": "qwen2"}, {"pytorch_model.bin": b"\x80\x04."})
    with pytest.raises(UntrustedModelError, match=r"only as pickle files \(pytorch_model.bin\)"):
        resolve_source(str(d))
    (d / "model.safetensors").write_bytes(b"")  # safetensors beside it: loaded with use_safetensors=True
    assert resolve_source(str(d)).kind == "hf"


def test_a_peft_folder_with_only_adapter_model_bin_is_refused(tmp_path):
    from intarsia.model.lora import _read_peft
    from intarsia.model.factory import adapter_file as _adapter_file
    from intarsia.training.trainer import TrainConfig, check_init_adapter

    d = tmp_path / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                      "target_modules": ["q_proj"]}))
    (d / "adapter_model.bin").write_bytes(b"\x80\x04.")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for call in (lambda: check_peft_folder(d), lambda: _adapter_file(d, model_dir),
                 lambda: _read_peft(d),
                 lambda: check_init_adapter(d, TrainConfig())):
        with pytest.raises(UntrustedModelError, match="only as adapter_model.bin, a pickle"):
            call()
    assert not (model_dir / "adapters").exists()
    (d / "adapter_model.bin").unlink()
    with pytest.raises(ModelNotFoundError, match="no adapter_model.safetensors"):
        check_peft_folder(d)
    (d / "adapter_model.safetensors").write_bytes(b"")
    assert check_peft_folder(d) == d / "adapter_model.safetensors"
