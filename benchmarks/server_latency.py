"""Language-server latency over stdio, as an editor sees it: `intarsia serve` with the real default model.

A pygls client opens a real source file (CPython's `textwrap.py` from this interpreter, or --file) in a temporary
workspace and, at --samples statement lines inside function bodies, plays a user typing the line:
- cold: the line is cut in the middle and the document opened there; the first inline completion
  (automatic trigger) - a prompt sharing no prefix with the previous one;
- then --keystrokes characters of the real line are typed one at a time (incremental didChange), each followed
  by an inline completion request: when the suggestion shown starts with the typed character the server answers
  from its typed-ahead cache (`typed_ahead`), otherwise the model runs again with KV prefix reuse (`keystroke`).
Request→response wall time per request, p50/p95 per kind, and the server's peak and final RSS (/proc).
Debounce is set to 0 so the figures are the server's own time (an editor adds its debounce on top).

    python benchmarks/server_latency.py [--samples 12] [--keystrokes 4] [--model NAME] [--file PATH]
                                        [--settings JSON] [--server-tree DIR] [--label NAME]

`--server-tree DIR` runs the server from another checkout (see lsp_bench.py): the previous code and this one,
one after the other on the same machine.

Prints one JSON object on stdout; the server log goes to a temporary file (its tail on failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from lsprotocol import types as t
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lsp_bench import item_text, pct, rss_mb, start_server, wait_ready  # noqa: E402

STATEMENT = re.compile(r"^(\s{4,})(\w[\w.]*\s*(=|\+=|-=)\s*\S.{8,}|return\s+\S.{8,}|\w[\w.]*\(.{8,})$")


def pick_lines(text: str, n: int) -> list[int]:
    """Indices of `n` statement lines spread over the file (inside bodies, long enough to cut in the middle)."""
    lines = text.split("\n")
    cands = [i for i, ln in enumerate(lines) if STATEMENT.match(ln) and '"' not in ln and "'" not in ln]
    if len(cands) < n:
        raise SystemExit(f"only {len(cands)} suitable lines in the file")
    step = len(cands) / n
    return [cands[int(k * step)] for k in range(n)]


async def run(args: argparse.Namespace) -> dict:
    source = Path(args.file) if args.file else Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    text = source.read_text()
    targets = pick_lines(text, args.samples)
    ws = Path(tempfile.mkdtemp(prefix="intarsia-latency-"))
    log = ws.parent / (ws.name + ".log")
    settings = {"engine": "ort", "debounceMs": 0, "acceptanceLog": False, **json.loads(args.settings)}
    if args.model:
        settings["model"] = args.model
    client = LanguageClient("intarsia-latency-bench", "1")
    pid = await start_server(client, ws, log, settings, tree=args.server_tree)

    async def execute(name: str, *a):
        return await client.workspace_execute_command_async(t.ExecuteCommandParams(command=name, arguments=list(a)))

    load_s, _ = await wait_ready(client, log)

    async def request(uri: str, line: int, col: int) -> tuple[float, str]:
        s = time.perf_counter()
        res = await client.text_document_inline_completion_async(t.InlineCompletionParams(
            text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(line, col),
            context=t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Automatic)))
        return time.perf_counter() - s, item_text(res)

    times: dict[str, list[float]] = {"cold": [], "keystroke": [], "typed_ahead": []}
    shown = 0
    lines = text.split("\n")
    for k, i in enumerate(targets):
        full = lines[i]
        indent = len(full) - len(full.lstrip())
        col = indent + (len(full) - indent) // 2
        doc_lines = list(lines)
        doc_lines[i] = full[:col]
        uri = (ws / f"sample{k}_{source.name}").as_uri()
        client.text_document_did_open(t.DidOpenTextDocumentParams(text_document=t.TextDocumentItem(
            uri=uri, language_id="python", version=1, text="\n".join(doc_lines))))
        dt, sug = await request(uri, i, col)
        times["cold"].append(dt)
        shown += bool(sug)
        version = 1
        for ch in full[col: col + args.keystrokes]:
            version += 1
            client.text_document_did_change(t.DidChangeTextDocumentParams(
                text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[t.TextDocumentContentChangePartial(
                    range=t.Range(t.Position(i, col), t.Position(i, col)), text=ch)]))
            hit = bool(sug) and sug.startswith(ch)
            col += 1
            dt, sug = await request(uri, i, col)
            times["typed_ahead" if hit else "keystroke"].append(dt)
            shown += bool(sug)
        client.text_document_did_close(t.DidCloseTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=uri)))
    mem = rss_mb(pid)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    total = sum(len(v) for v in times.values())
    return {
        "label": args.label, "server_tree": args.server_tree, "file": str(source), "samples": args.samples,
        "keystrokes_per_sample": args.keystrokes,
        "model": args.model or "default", "settings": settings, "engine_load_s": round(load_s, 1),
        "requests": total, "with_a_suggestion": shown,
        **{kind: {"n": len(v), "p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95),
                  "mean_ms": round(1000 * statistics.mean(v), 1) if v else None} for kind, v in times.items()},
        "server": mem, "log": str(log),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--keystrokes", type=int, default=4)
    ap.add_argument("--model", default=None)
    ap.add_argument("--file", default=None)
    ap.add_argument("--settings", default="{}", help="extra server settings (JSON)")
    ap.add_argument("--server-tree", default=None, help="run the server from this checkout")
    ap.add_argument("--label", default="server")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
