"""The client side shared by the benchmarks that drive `intarsia serve` over stdio (server_latency.py,
replay_session.py, generate_function.py): the server's environment, waiting for its model, reading answers, the
server's memory, percentiles.

Running the server from another checkout, so that two versions are measured in one run: the server benchmarks start `python -m intarsia.server.cli serve`, which imports the editable install (this work
tree). Given `--server-tree DIR` (e.g. the previous commit: `git worktree add /tmp/base HEAD~1`), they start it
with a `sitecustomize` that maps `intarsia.server|model|training|grammars` to DIR's folders ahead of the
installed package; the rest of the environment (Python, libraries, the model cache) is the same.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from lsprotocol import types as t

SITECUSTOMIZE = '''
import importlib.abc, importlib.machinery, importlib.util, os, sys
_ROOT = os.environ.get("INTARSIA_TREE")
_MAP = {"intarsia.server": "server", "intarsia.model": "model", "intarsia.training": "training",
        "intarsia.grammars": "grammars"}
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "intarsia":
            spec = importlib.machinery.ModuleSpec("intarsia", None, is_package=True)
            spec.submodule_search_locations = []
            return spec
        if name in _MAP:
            folder = os.path.join(_ROOT, _MAP[name])
            return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                          submodule_search_locations=[folder])
        return None
if _ROOT:
    sys.meta_path.insert(0, _Finder())
'''


def server_env(tree: str | None) -> dict[str, str]:
    """The environment for the server process: this one, or one that imports the server from `tree`."""
    env = dict(os.environ)
    if tree:
        root = Path(tree).resolve()
        if not (root / "server" / "__init__.py").is_file():
            raise SystemExit(f"--server-tree {tree}: not a checkout of this repository (no server/__init__.py)")
        site = Path(tempfile.mkdtemp(prefix="intarsia-site-"))
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["INTARSIA_TREE"] = str(root)
        env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# What the benchmarks' client says it can do: UTF-16 positions, document sync, inline completion (as VS Code).
INLINE_CAPABILITIES = t.ClientCapabilities(
    general=t.GeneralClientCapabilities(position_encodings=[t.PositionEncodingKind.Utf16]),
    text_document=t.TextDocumentClientCapabilities(
        synchronization=t.TextDocumentSyncClientCapabilities(),
        inline_completion=t.InlineCompletionClientCapabilities()))


async def start_server(client, ws: Path, log: Path, settings: dict, *, tree: Optional[str] = None,
                       capabilities: t.ClientCapabilities = INLINE_CAPABILITIES, verbose: bool = False) -> int:
    """Start `intarsia serve` (from `tree` when given) on workspace `ws`, logging to `log`, initialize it with
    `settings` as the `intarsia` section; returns the server's pid. `verbose`: debug logging."""
    await client.start_io(sys.executable, "-m", "intarsia.server.cli", *(["-v"] if verbose else []), "serve",
                          "--log-file", str(log), env=server_env(tree))
    await client.initialize_async(t.InitializeParams(
        capabilities=capabilities, root_uri=ws.as_uri(),
        workspace_folders=[t.WorkspaceFolder(uri=ws.as_uri(), name="ws")],
        initialization_options={"intarsia": settings}))
    client.initialized(t.InitializedParams())
    return client._server.pid  # type: ignore[attr-defined]


async def wait_ready(client, log: Path, timeout_s: float = 900) -> tuple[float, dict]:
    """Poll `intarsia.status` until the model is loaded: (seconds it took, the status). Exits with the server
    log's tail when loading failed or took longer than `timeout_s`."""
    t0 = time.perf_counter()
    while True:
        st = await client.workspace_execute_command_async(t.ExecuteCommandParams(command="intarsia.status"))
        if st["state"] == "ready":
            return time.perf_counter() - t0, st
        if st["state"] == "failed" or time.perf_counter() - t0 > timeout_s:
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise SystemExit(f"the engine did not load: {st}\n{tail}")
        await asyncio.sleep(0.1)


def item_text(res) -> str:
    """The first inline suggestion's text of a response ('' for none)."""
    items = res.items if isinstance(res, t.InlineCompletionList) else (res or [])
    if not items:
        return ""
    it = items[0]
    return it.insert_text if isinstance(it.insert_text, str) else it.insert_text.value


def rss_mb(pid: int) -> dict:
    """The process's peak and current RSS in MB (/proc; empty where there is none)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, val = line.split(":", 1)
                out["peak_rss_mb" if key == "VmHWM" else "rss_mb"] = round(int(val.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def pct(xs: list[float], q: float, scale: float = 1000.0, digits: int = 1) -> Optional[float]:
    """The q-quantile of `xs` (nearest rank) times `scale` (seconds to ms by default), rounded to `digits`; None
    when empty."""
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return round(scale * xs[k], digits)
