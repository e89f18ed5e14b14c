"""A replayed editing session: real changes of a real package, typed into `intarsia serve` as a developer would.

History: two releases of a package from PyPI (default `rich` 13.6.0 → 13.7.0; wheels, never imported). Their
files are diffed; --changes hunks that add code are picked (seeded, spread over the files) and replayed in file
order on a workspace holding the older release:

- jump: the file is opened if it is not (didOpen), the cursor goes to the hunk (`intarsia/didMoveCursor`, as our
  editor clients send it), and the developer reads for a while (--read-pause seconds, uniform);
- replaced lines are deleted in one edit; then, from the end of the line above, each added line is Enter plus
  its indentation at once (an editor's auto-indent) and its characters one by one (--key-ms between keys,
  uniform, and --line-pause-ms more at line ends);
- the editor closes brackets and quotes as VS Code does by default (autoclose.py: `(` gives `(|)`, a closer it
  wrote is typed over, Enter splits `(|)`, a docstring's quotes are closed); `--auto-close none` inserts every
  key as typed (runs before this option existed; an editor without auto-closing);
- after every change the client sends what VS Code sends: didChange, then textDocument/inlineCompletion
  (automatic trigger); a request still unanswered when the next key is typed is cancelled ($/cancelRequest);
  a cursor notification follows each keystroke that is not followed by another within 120 ms (the extension's
  debounce).

Reported over all keystrokes that ask for a suggestion: time to show (request → a response with a suggestion)
p50 / p95 / p99 over all requests answered before the next key, and for the first suggestion after a jump (the
first keystroke there → the first suggestion shown, whichever request brought it; jumps where none came are
counted); the share of keystrokes at which a
suggestion is visible; characters predicted (typed characters that the suggestion on screen already showed); the
server's RSS; and, where the server reports it, CPU time spent on pre-warming and the part thrown away.

`--server-tree DIR` runs the server from another checkout (e.g. the previous commit, `git worktree add`), imported
ahead of the editable install, so that two versions are measured one after the other in one run:

    python benchmarks/replay_session.py --server-tree /tmp/base --label before > before.json
    python benchmarks/replay_session.py --label after > after.json

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types as t
from pygls.lsp.client import LanguageClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autoclose import AutoClose, Edit, Plain  # noqa: E402
from lsp_bench import item_text, pct, rss_mb, start_server, wait_ready  # noqa: E402

CODE = re.compile(r"\S.{7,}")  # a line worth typing: 8+ characters of code
DEBOUNCE_S = 0.12  # the editors' cursor-notification debounce

@dataclass
class Change:
    path: str  # package-relative
    line: int  # 0-based line of the (current) file where the hunk starts
    removed: int  # lines replaced
    added: list[str]


@dataclass
class Stats:
    first: list[float] = field(default_factory=list)  # per jump: first keystroke there -> first suggestion shown
    rest: list[float] = field(default_factory=list)  # per request after the first of a jump: request -> suggestion
    first_requests_shown: list[float] = field(default_factory=list)  # the first request itself, when it showed
    jumps_without_suggestion: int = 0
    keystrokes: int = 0
    visible: int = 0
    typed_chars: int = 0
    predicted: int = 0
    requests: int = 0
    answered: int = 0
    cancelled: int = 0
    first_requests: int = 0
    jumps: list[dict] = field(default_factory=list)  # per jump: where, when, and how its first suggestion came


def releases(package: str, old: str, new: str, cache: Path, module: str) -> tuple[dict, dict]:
    out = []
    for version in (old, new):
        wheels = list(cache.glob(f"{package}-{version}-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                            "--dest", str(cache), "-q", f"{package}=={version}"], check=True)
            wheels = list(cache.glob(f"{package}-{version}-*.whl"))
        z = zipfile.ZipFile(wheels[0])
        out.append({n: z.read(n).decode("utf-8", "replace") for n in z.namelist()
                    if n.startswith(module + "/") and n.endswith(".py")})
    return out[0], out[1]


def pick_changes(old: dict, new: dict, n: int, seed: int, max_chars: int) -> list[Change]:
    """Hunks that add code, spread over the files (seeded); line numbers as in the file once the earlier picked
    hunks of that file are applied."""
    cands = []
    for path in sorted(set(old) & set(new)):
        a, b = old[path].split("\n"), new[path].split("\n")
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            added = b[j1:j2]
            if op in ("insert", "replace") and sum(bool(CODE.search(x)) for x in added) >= 1:
                typed, keep = 0, []
                for x in added:
                    if typed + len(x) > max_chars and keep:
                        break
                    keep.append(x)
                    typed += len(x)
                cands.append((path, i1, i2 - i1, keep))
    rng = random.Random(seed)
    by_file: dict[str, list] = {}
    for c in cands:
        by_file.setdefault(c[0], []).append(c)
    files = sorted(by_file)
    rng.shuffle(files)
    chosen = []
    while len(chosen) < n and any(by_file[f] for f in files):  # round robin over files: many jumps
        for f in files:
            if by_file[f] and len(chosen) < n:
                chosen.append(by_file[f].pop(rng.randrange(len(by_file[f]))))
    chosen.sort(key=lambda c: (c[0], c[1]))
    out, shift = [], {}
    for path, line, removed, added in chosen:
        d = shift.get(path, 0)
        out.append(Change(path, line + d, removed, added))
        shift[path] = d + len(added) - removed
    return out


class Session:
    """The client side: documents as the editor has them, one outstanding inline request at a time."""

    def __init__(self, client: LanguageClient, ws: Path, rng: random.Random, args, stats: Stats):
        self.client, self.ws, self.rng, self.args, self.stats = client, ws, rng, args, stats
        self.docs: dict[str, list] = {}  # path -> [text, version]
        self.pending = None  # (future, msg_id, sent_at, first)
        self.visible: str | None = None
        self.next_id = 10_000
        self.jump_t0: float | None = None  # the first keystroke after the current jump
        self.jump_open = False  # no suggestion shown since the jump yet
        self.jump_keys = 0  # keystrokes since the jump

    def uri(self, path: str) -> str:
        return (self.ws / path).as_uri()

    def open(self, path: str) -> None:
        if path in self.docs:
            return
        text = (self.ws / path).read_text()
        self.docs[path] = [text, 1]
        self.client.text_document_did_open(t.DidOpenTextDocumentParams(text_document=t.TextDocumentItem(
            uri=self.uri(path), language_id="python", version=1, text=text)))

    def position(self, path: str, offset: int) -> tuple[int, int]:
        text = self.docs[path][0]
        line = text.count("\n", 0, offset)
        return line, offset - (text.rfind("\n", 0, offset) + 1)  # ASCII sources: UTF-16 = characters

    def change(self, path: str, start: int, end: int, new: str) -> None:
        doc = self.docs[path]
        sl, sc = self.position(path, start)
        el, ec = self.position(path, end)
        doc[0] = doc[0][:start] + new + doc[0][end:]
        doc[1] += 1
        self.client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=self.uri(path), version=doc[1]),
            content_changes=[t.TextDocumentContentChangePartial(
                range=t.Range(start=t.Position(line=sl, character=sc), end=t.Position(line=el, character=ec)),
                text=new)]))

    def cursor(self, path: str, offset: int) -> None:
        line, ch = self.position(path, offset)
        self.client.protocol.notify("intarsia/didMoveCursor", {
            "textDocument": {"uri": self.uri(path), "version": self.docs[path][1]},
            "position": {"line": line, "character": ch}})

    async def settle(self, deadline: float, *, cancel: bool = True) -> None:
        """Wait for the outstanding request until `deadline` (the next key); cancel it if it is still running."""
        if self.pending is None:
            return
        fut, msg_id, sent, first = self.pending
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            if not cancel:
                return
            self.client.protocol.notify("$/cancelRequest", t.CancelParams(id=msg_id))
            self.stats.cancelled += 1
            self.pending = None
            return
        except Exception:
            self.pending = None
            return
        self.pending = None
        self.stats.answered += 1
        text = item_text(res)
        if text:
            (self.stats.first_requests_shown if first else self.stats.rest).append(fut.done_at - sent)
            if self.jump_open:
                self.stats.first.append(fut.done_at - self.jump_t0)
                self.jump_open = False
                self.stats.jumps[-1].update(first_ms=round((fut.done_at - self.jump_t0) * 1000, 1),
                                            keys_before=self.jump_keys - 1)
            self.visible = text

    def request(self, path: str, offset: int, first: bool) -> None:
        line, ch = self.position(path, offset)
        self.next_id += 1
        params = t.InlineCompletionParams(
            text_document=t.TextDocumentIdentifier(uri=self.uri(path)), position=t.Position(line=line, character=ch),
            context=t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Automatic))
        fut = self.client.protocol.send_request(t.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=self.next_id)
        afut = asyncio.wrap_future(fut)

        def stamp(_f, af=afut):
            af.done_at = time.monotonic()

        afut.add_done_callback(stamp)
        self.pending = (afut, self.next_id, time.monotonic(), first)
        self.stats.requests += 1
        self.stats.first_requests += first

    async def key(self, path: str, offset: int, edit: Edit, *, first: bool, pause: float) -> int:
        """Type one key at `offset` (`edit`: what the editor makes of it), ask for a suggestion, wait `pause` (the
        time to the next key). A key that only moves the cursor changes nothing and asks for nothing."""
        text = edit.typed
        if edit.move_only:
            self.visible = None  # the editor hides a suggestion when the cursor leaves its place
            offset += edit.advance
            if pause > DEBOUNCE_S and self.args.cursor_notifications:
                self.cursor(path, offset)
            await asyncio.sleep(pause)
            return offset
        chars = len(text.strip(" ")) or len(text)  # (Enter and its automatic indentation count as one)
        if self.visible is not None:
            if self.visible.startswith(text):
                self.stats.predicted += chars
                self.visible = self.visible[len(text):] or None
            else:
                self.visible = None
        self.stats.typed_chars += chars
        if first:
            self.jump_t0, self.jump_open, self.jump_keys = time.monotonic(), True, 0
        self.jump_keys += 1
        self.change(path, offset, offset + edit.replace, edit.insert)
        offset += edit.advance
        self.stats.keystrokes += 1
        self.request(path, offset, first)
        end = time.monotonic() + pause
        if pause > DEBOUNCE_S and self.args.cursor_notifications:  # the editor's debounced cursor notice
            await self.settle(time.monotonic() + DEBOUNCE_S, cancel=False)
            self.cursor(path, offset)
        await self.settle(end)
        if self.visible is not None:
            self.stats.visible += 1
        await asyncio.sleep(max(end - time.monotonic(), 0.0))
        return offset


def _never(ms):
    return None if ms is None or ms == float("inf") else ms


async def replay(args, changes: list[Change], ws: Path) -> dict:
    rng = random.Random(args.seed)
    log = ws.parent / (ws.name + ".log")
    client = LanguageClient("intarsia-replay-bench", "1")
    settings = {"acceptanceLog": False, **json.loads(args.settings)}
    pid = await start_server(client, ws, log, settings, tree=args.server_tree, verbose=args.server_verbose)

    async def status():
        return await client.workspace_execute_command_async(t.ExecuteCommandParams(command="intarsia.status"))

    load_s, _ = await wait_ready(client, log)
    stats = Stats()
    s = Session(client, ws, rng, args, stats)
    t0 = time.perf_counter()
    for k, ch in enumerate(changes):
        s.open(ch.path)
        text = s.docs[ch.path][0]
        lines = text.split("\n")
        start = sum(len(x) + 1 for x in lines[:ch.line])
        if ch.removed:  # the replaced lines go first (one edit: select and delete)
            end = sum(len(x) + 1 for x in lines[:ch.line + ch.removed])
            s.change(ch.path, start, end, "")
        # The developer goes to the end of the line above the change and presses Enter there (the editor indents
        # the new line), then types; at the top of a file, the line is typed and Enter comes after it.
        top = ch.line == 0
        offset = 0 if top else start - 1
        s.visible = None
        if args.cursor_notifications:
            s.cursor(ch.path, offset)
        pause = rng.uniform(*args.read_pause)
        stats.jumps.append({"path": ch.path, "line": ch.line, "at": round(time.time(), 3),
                            "read_pause_s": round(pause, 2), "first_ms": None, "keys_before": None})
        await asyncio.sleep(pause)
        first = True
        editor = AutoClose.at(s.docs[ch.path][0], offset) if args.auto_close == "vscode" else Plain()
        for line in ch.added:
            indent = line[: len(line) - len(line.lstrip(" "))]
            body = list(line[len(indent):])
            pieces = ([indent] if indent else []) + body + ["\n"] if top else ["\n" + indent] + body
            for j, piece in enumerate(pieces):
                pause = rng.uniform(*args.key_ms) / 1000
                if j == len(pieces) - 1:
                    pause += rng.uniform(*args.line_pause_ms) / 1000
                doc = s.docs[ch.path][0]
                edit = editor.key(piece, doc[offset + len(editor.tail):], "".join(pieces[j:]))
                offset = await s.key(ch.path, offset, edit, first=first, pause=pause)
                first = False
        left = editor.leftover()  # closers the real text puts elsewhere: the developer deletes them
        if left:
            s.change(ch.path, offset, offset + len(left), "")
        await s.settle(time.monotonic() + 10)
        if s.jump_open:
            stats.jumps_without_suggestion += 1
            s.jump_open = False
        print(f"\r{args.label}: {k + 1}/{len(changes)} changes, {stats.keystrokes} keys", end="", file=sys.stderr,
              flush=True)
    print(file=sys.stderr)
    wall = time.perf_counter() - t0
    st = await status()
    mem = rss_mb(pid)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    alln = stats.first_requests_shown + stats.rest
    never = stats.first + [float("inf")] * stats.jumps_without_suggestion
    return {
        "label": args.label, "server_tree": args.server_tree, "settings": settings, "engine_load_s": round(load_s, 1),
        "changes": len(changes), "keystrokes": stats.keystrokes, "wall_s": round(wall, 1),
        "time_to_show_ms": {"all": {"n": len(alln), "p50": pct(alln, .5), "p95": pct(alln, .95),
                                    "p99": pct(alln, .99)},
                            "first_after_jump": {"n": len(stats.first), "of_jumps": stats.first_requests,
                                                 "jumps_without_suggestion": stats.jumps_without_suggestion,
                                                 "p50": pct(stats.first, .5), "p95": pct(stats.first, .95),
                                                 "p99": pct(stats.first, .99),
                                                 # a jump where no suggestion came counts as never (null: the
                                                 # quantile falls on one)
                                                 "p50_never_counted": _never(pct(never, .5)),
                                                 "p95_never_counted": _never(pct(never, .95))},
                            "rest": {"n": len(stats.rest), "p50": pct(stats.rest, .5), "p95": pct(stats.rest, .95),
                                     "p99": pct(stats.rest, .99)}},
        "jumps": stats.jumps,
        "visible_share": round(stats.visible / max(stats.keystrokes, 1), 3),
        "chars_predicted": {"typed": stats.typed_chars, "predicted": stats.predicted,
                            "share": round(stats.predicted / max(stats.typed_chars, 1), 3)},
        "requests": {"sent": stats.requests, "answered": stats.answered, "cancelled": stats.cancelled},
        "server": {**mem, "prewarm": st.get("prewarm"), "kv": st.get("kv"),
                   "counters": st.get("counters")},
        "log": str(log),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", default="rich")
    ap.add_argument("--module", default=None, help="the import name (default: the package name)")
    ap.add_argument("--old", default="13.6.0")
    ap.add_argument("--new", default="13.7.0")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--max-chars", type=int, default=160, help="typed characters per change at most")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--key-ms", type=float, nargs=2, default=(150, 300))
    ap.add_argument("--line-pause-ms", type=float, nargs=2, default=(300, 600))
    ap.add_argument("--read-pause", type=float, nargs=2, default=(1.0, 2.5), help="seconds after a jump")
    ap.add_argument("--no-cursor-notifications", dest="cursor_notifications", action="store_false")
    ap.add_argument("--auto-close", choices=("vscode", "none"), default="vscode",
                    help="what the editor does with brackets and quotes as they are typed (autoclose.py): VS Code's "
                         "defaults with Pylance, or nothing (every key inserted as typed)")
    ap.add_argument("--settings", default="{}", help="extra server settings (JSON)")
    ap.add_argument("--server-tree", default=None, help="run the server from this checkout")
    ap.add_argument("--server-verbose", action="store_true", help="debug logging in the server's log")
    ap.add_argument("--label", default="server")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "intarsia-replay-wheels")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    module = args.module or args.package
    old, new = releases(args.package, args.old, args.new, args.cache, module)
    changes = pick_changes(old, new, args.changes, args.seed, args.max_chars)
    ws = Path(tempfile.mkdtemp(prefix="intarsia-replay-"))
    for path, text in old.items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text)
    try:
        out = asyncio.run(replay(args, changes, ws))
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    out.update({"package": f"{args.package} {args.old} -> {args.new}", "seed": args.seed,
                "typed_per_change": statistics.mean(sum(len(x) for x in c.added) for c in changes),
                "files": len({c.path for c in changes}), "key_ms": args.key_ms, "read_pause_s": args.read_pause,
                "auto_close": args.auto_close})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
