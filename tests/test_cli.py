"""The CLI's bad-input paths: one clear line on stderr, non-zero exit, nothing written to the cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

from intarsia.server.cli import main, split_at
from intarsia.model.errors import IntarsiaError


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
