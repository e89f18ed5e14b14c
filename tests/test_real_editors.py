"""Every editor path once against the real default model (ORT engine, qwen2.5-coder-0.5b): pytest-lsp over stdio
under the recorded VS Code and Neovim capabilities, the Node peer (tests/node/real.js), and headless Neovim with
the plugin (editors/nvim/test/real.lua).

The model is built (and cached) by the fixture, as in tests/test_real_model.py; the servers use the same cache.
Deselect with `-m "not real_model"`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from test_editors_node import NODE_DIR, SERVER, node_tools, npm_ci
from test_editors_nvim import NVIM_DIR, find_nvim, run_headless
from test_server_lsp import command, inline, open_doc, running_server, wait_ready

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

FIB = "def fibonacci(n):\n    if n < 2:\n        return n\n    return \n"
AREA = 'def rectangle_area(width, height):\n    """Return the area of a width x height rectangle."""\n    pass\n'


@pytest.fixture(scope="module")
def model_cache() -> Path:
    from intarsia.model.build import BuildOptions, build
    from intarsia.model.cache import cache_root
    from intarsia.model.registry import resolve_source

    build(resolve_source("qwen2.5-coder-0.5b"), BuildOptions(), progress=False)
    return cache_root()


def _apply(text: str, edit: dict) -> str:
    lines = text.splitlines(keepends=True)

    def off(p):
        return sum(len(x) for x in lines[:p["line"]]) + p["character"]

    r = edit["range"]
    return text[:off(r["start"])] + edit["newText"] + text[off(r["end"]):]


@pytest.mark.asyncio
@pytest.mark.timeout(900)
@pytest.mark.parametrize("client_name", ["vscode", "neovim"])
async def test_lsp_over_stdio_with_the_real_model(client_name, model_cache, tmp_path):
    async with running_server(client_name, tmp_path, {"intarsia": {"engine": "ort", "debounceMs": 0}},
                              cache=model_cache) as client:
        st = await wait_ready(client, timeout=600)
        assert st["settings"]["engine"] == "ort" and st["settings"]["model"] is None, st  # None: the default model
        uri = (tmp_path / "fib.py").as_uri()
        open_doc(client, uri, FIB)
        res = await inline(client, uri, 3, 11, invoked=True)
        assert res is not None and res.items, res
        item = res.items[0]
        text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
        assert "fibonacci(n - 1)" in text.replace("n-1", "n - 1") and "fibonacci(n" in text, text
        assert item.range is None or (item.range.start.line, item.range.start.character) == (3, 11), item
        ast.parse(FIB[: FIB.index("return \n") + 7] + text + FIB[FIB.index("return \n") + 7:])

        auri = (tmp_path / "area.py").as_uri()
        open_doc(client, auri, AREA)
        out = await command(client, "intarsia.generateFunction", {"uri": auri, "position": {"line": 0, "character": 6}})
        assert out["applied"] is True, out
        assert len(client.applied_edits) == 1  # type: ignore[attr-defined]
        new = _apply(AREA, out["edit"])
        ast.parse(new)
        assert "pass" not in new and "width" in new.split('"""')[-1] and "height" in new.split('"""')[-1], new


@pytest.mark.timeout(900)
def test_node_peer_with_the_real_model(model_cache):
    node, _ = node_tools()
    npm_ci(NODE_DIR)
    env = {**os.environ, "INTARSIA_SERVER_CMD": json.dumps(SERVER), "INTARSIA_CACHE": str(model_cache),
           "INTARSIA_NODE_TEST_TIMEOUT_MS": "780000"}
    proc = subprocess.run([node, "real.js"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=840)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the Node real-model test failed (status {proc.returncode}):\n{out[-6000:]}"
    assert "PASS: all" in proc.stdout and "not ok" not in proc.stdout, out[-6000:]


@pytest.mark.timeout(900)
def test_neovim_plugin_with_the_real_model(model_cache, tmp_path):
    nvim = find_nvim()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "main.py").write_text(FIB.replace("    return \n", "    \n"))
    result = tmp_path / "result.json"
    config = {
        "cmd": SERVER,
        "settings": {"engine": "ort", "debounceMs": 0},
        "result_file": str(result),
        "run": str(NVIM_DIR / "test" / "real.lua"),
        "workspace": str(ws),
        "native": False,
        "timeout_ms": 780000,
    }
    report, rc, explain = run_headless(nvim, config, ws, tmp_path, cache=model_cache, timeout=840)
    assert report is not None and report["done"], explain()
    assert all(c["ok"] for c in report["checks"]) and rc == 0, explain()
    final = (ws / "main.py").read_text()
    ast.parse(final)
    assert "fibonacci(n" in final.split("return", 2)[-1] and "def rectangle_area" in final, final
