"""The CLI's bad-input paths: one clear line on stderr, non-zero exit, nothing written to the cache."""

from __future__ import annotations

import subprocess
import sys

import pytest
from intarsia.model.errors import IntarsiaError
from intarsia.server.cli import main, split_at
from test_training import tiny_built, tiny_hf  # noqa: F401  (fixtures)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "intarsia.server.cli", *args], capture_output=True, text=True,
                          env=env)


def test_unknown_model_is_one_line_and_exit_1(isolated_cache, capsys):
    assert main(["model", "build", "no-such-model"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("intarsia: error: unknown model 'no-such-model'")
    assert "\n" not in err
    assert not isolated_cache.exists() or not any(isolated_cache.rglob("*.onnx"))


def test_fetch_unknown_model(isolated_cache, capsys):
    assert main(["model", "fetch", "nope"]) == 1
    assert "unknown model" in capsys.readouterr().err


def test_missing_model_file(tmp_path, isolated_cache, capsys):
    assert main(["model", "build", str(tmp_path / "missing.gguf")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_corrupt_gguf_build(tmp_path, isolated_cache, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x07" * 200)
    assert main(["model", "build", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "intarsia: error:" in err and ("damaged" in err or "truncated" in err)
    assert not any(isolated_cache.rglob("model.onnx"))
    assert not [p for p in isolated_cache.rglob("*") if p.name.endswith(".part")]


def test_complete_missing_file(tmp_path, capsys):
    assert main(["complete", str(tmp_path / "nope.py"), "--line", "1", "--column", "1"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_complete_binary_file(tmp_path, capsys):
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x00\x01\x02" * 100)
    assert main(["complete", str(f), "--line", "1", "--column", "1"]) == 1
    assert "binary" in capsys.readouterr().err


def test_complete_position_outside_file(tmp_path, capsys):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    assert main(["complete", str(f), "--line", "9", "--column", "1"]) == 1
    assert "line 9 is outside" in capsys.readouterr().err
    assert main(["complete", str(f), "--line", "1", "--column", "99"]) == 1
    assert "column 99 is outside" in capsys.readouterr().err


def test_split_at():
    text = "ab\r\ncd\nef"
    assert split_at(text, 1, 1) == ("", text)
    assert split_at(text, 1, 3) == ("ab", "\r\ncd\nef")
    assert split_at(text, 2, 2) == ("ab\r\nc", "d\nef")
    assert split_at(text, 3, 3) == ("ab\r\ncd\nef", "")
    assert split_at("é😀x\n", 1, 3) == ("é😀", "x\n")
    with pytest.raises(IntarsiaError):
        split_at(text, 0, 1)


def test_remote_engine_needs_endpoint(tmp_path, capsys):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    assert main(["complete", str(f), "--line", "1", "--column", "5", "--engine", "remote"]) == 1
    assert "--endpoint" in capsys.readouterr().err


def test_help_runs_as_module():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "model" in proc.stdout and "complete" in proc.stdout


def test_complete_prints_what_the_served_pipeline_gives(tiny_hf, tiny_built, tmp_path, monkeypatch, capsys):
    """`intarsia complete` runs the server's pipeline (scope, repository context of the workspace, the served
    budget, post-processing): its text is what `run_completion` gives for the same snapshot and engine; `--raw`
    is the bare prompt's output."""
    import json

    from intarsia.model.engine import GenerationRequest
    from intarsia.model.factory import EngineSpec, open_engine
    from intarsia.server.core.completion import PipelineOptions, run_completion
    from intarsia.server.core.context import ContextProvider, RepoIndex
    from intarsia.server.core.documents import Document
    from intarsia.server.core.prompt import PromptBudget

    cache, _ = tiny_built
    monkeypatch.setenv("INTARSIA_CACHE", str(cache))
    ws = tmp_path / "ws"
    (ws / "pkg").mkdir(parents=True)
    (ws / "pkg" / "helpers.py").write_text("def scale_vector(vector, factor):\n"
                                           "    return [v * factor for v in vector]\n")
    src = ws / "pkg" / "main.py"
    src.write_text("from pkg.helpers import scale_vector\n\n\ndef double(values):\n    return \n")
    args = ["complete", str(src), "--line", "5", "--column", "12", "--model", str(tiny_hf), "--workspace", str(ws),
            "--max-tokens", "8", "--no-fim-adapter", "-q"]
    assert main(["-q", *args[:-1], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scope"] == "line" and out["context_files"] == ["pkg/helpers.py"]

    text = src.read_text()
    loaded = open_engine(EngineSpec(model=str(tiny_hf), device="cpu", fim_adapter=False, workspace=str(ws)))
    with loaded.engine as engine:
        index = RepoIndex(ws)
        index.build()
        offset = text.index("return ") + len("return ")
        doc = Document(src.as_uri(), text, 0, path="pkg/main.py", fs_path=str(src))
        want = run_completion(doc.snapshot(offset, invoked=True), engine=engine, fim_format=loaded.fim_format,
                              options=PipelineOptions(max_tokens=8, budget=PromptBudget.served(engine.provider),
                                                      repo_name="ws"), context=ContextProvider(index))
        raw = engine.generate(GenerationRequest(prompt=loaded.fim_format.render(text[:offset], text[offset:]),
                                                max_new_tokens=8, stop=loaded.fim_format.stop_strings))
    assert out["text"] == want.text and out["raw"] == want.raw
    assert main(["-q", *args[:-1], "--raw"]) == 0
    assert capsys.readouterr().out == raw.text + ("" if raw.text.endswith("\n") else "\n")
