"""The Node peer test (tests/node/run.js): `intarsia serve` driven over stdio by the npm LSP client library
(vscode-languageserver-protocol), the one the VS Code extension is built on.

Skipped when node or npm is missing, or when `npm ci` fails for network reasons; any other failure fails.
`npm_ci` is shared with tests/test_editors_vscode.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
SERVER = [sys.executable, "-m", "intarsia.server.cli", "serve"]

# npm's error codes and messages for a registry it cannot reach.
_NETWORK = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
                      r"ERR_SOCKET_TIMEOUT|network request|request to https?://\S+ failed|"
                      r"getaddrinfo|socket hang up|code E50[234]|code EPROXY", re.I)


def node_tools() -> tuple[str, str]:
    """(node, npm), or a skip saying which one is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"{'node' if node is None else 'npm'} is not installed (needed for the editor tests)")
    return node, npm


def npm_ci(folder: Path, timeout: float = 300) -> None:
    """`npm ci` in `folder` (from its package-lock.json); skips the test when the registry cannot be reached."""
    _, npm = node_tools()
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false"}
    # --omit=optional: vsce's optional keytar (publishing only) would otherwise be compiled by an npm 10.
    cmd = [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", "--omit=optional"]
    try:
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm ci` in {folder} took longer than {timeout:.0f} s (registry unreachable or slow?)")
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        if _NETWORK.search(out):
            pytest.skip(f"`npm ci` in {folder} could not reach the npm registry: {out.strip()[-400:]}")
        pytest.fail(f"`npm ci` in {folder} failed (status {proc.returncode}):\n{out[-3000:]}")


def test_package_lock_pins_the_protocol_libraries():
    pkg = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for name in ("vscode-languageserver-protocol", "vscode-jsonrpc"):
        assert name in pkg["dependencies"], name
        assert lock["packages"][f"node_modules/{name}"]["version"] == pkg["dependencies"][name], name


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_node_peer(tmp_path):
    node, _ = node_tools()
    npm_ci(NODE_DIR)
    env = {**os.environ, "INTARSIA_SERVER_CMD": json.dumps(SERVER), "INTARSIA_CACHE": str(tmp_path / "cache"),
           "INTARSIA_NODE_TEST_TIMEOUT_MS": "60000"}
    proc = subprocess.run([node, "run.js"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=90)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the Node peer test failed (status {proc.returncode}):\n{out[-6000:]}"
    assert "PASS: all" in proc.stdout and "not ok" not in proc.stdout, out[-6000:]
    assert proc.stdout.count("\nok ") + proc.stdout.startswith("ok ") >= 20, out
