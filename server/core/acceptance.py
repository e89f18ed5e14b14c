"""The local acceptance log and `intarsia stats`.

One JSONL file per workspace, `<cache>/workspaces/<hash of the root>/acceptance.jsonl` (nothing leaves the
machine). Each line is one event, written with a single `write` on a file opened for appending, then flushed:

    {"event": "shown", "id", "t", "path", "language", "chars", "lines", "scope", "source", "latency_ms"}
    {"event": "accepted", "id", "t", "chars"}
    {"event": "partial", "id", "t", "chars", "of"}              (part of a suggestion accepted)
    {"event": "retained", "id", "t", "after_s", "similarity", "text"}   (the accepted text, still in the code?)

`similarity` is 1 - (edit distance between the accepted text and the closest stretch of the document around
where it was inserted) / (accepted length): 1.0 when it is still there unchanged, 0 when it is gone.
`intarsia stats` summarizes the logs: acceptance rate, partial accepts, how much survives after 30 s and
5 min; with matplotlib installed it also draws a PNG chart. `text` (the accepted text, when it is mostly still
there) lets `intarsia train` learn from accepted suggestions that stayed in the code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from intarsia.model.cache import cache_root

log = logging.getLogger(__name__)

MAX_COMPARE_CHARS = 400  # the accepted text compared for retention (its start)
REGION_SLACK = 400  # characters around the insertion searched for it
RETAINED_TEXT_SIMILARITY = 0.9  # the accepted text is logged with a retention this close (training data)


def workspaces_dir() -> Path:
    return cache_root() / "workspaces"


def workspace_dir(root: Optional[str]) -> Path:
    key = os.path.realpath(root) if root else "<no workspace>"
    return workspaces_dir() / hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def workspace_log_path(root: Optional[str]) -> Path:
    return workspace_dir(root) / "acceptance.jsonl"


class AcceptanceLog:
    """Appends events to a workspace's JSONL file, one write per line; thread-safe."""

    def __init__(self, root: Optional[str], *, enabled: bool = True, path: Optional[Path] = None):
        self.root = root
        self.enabled = enabled
        self.path = path or workspace_log_path(root)
        self._lock = threading.Lock()
        self._prepared = False

    def _prepare(self) -> None:
        """The log holds suggestion text verbatim: its folder is 0700 and its files 0600, also when an older
        version created them with wider permissions."""
        if self._prepared:
            return
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (folder, folder.parent):
            if d.stat().st_mode & 0o077:
                os.chmod(d, 0o700)
        info = folder / "workspace.json"
        if not info.exists():
            tmp = info.with_name(f".workspace.json.{os.getpid()}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, (json.dumps({"root": self.root}) + "\n").encode("utf-8", "surrogatepass"))
            finally:
                os.close(fd)
            os.replace(tmp, info)
        for f in (info, self.path):
            if f.exists() and f.stat().st_mode & 0o077:
                os.chmod(f, 0o600)
        self._prepared = True

    def write(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "t": round(time.time(), 3), **fields}
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "surrogatepass")
        with self._lock:
            try:
                self._prepare()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)  # unbuffered: the line is in the file when write returns
                finally:
                    os.close(fd)
            except OSError as e:
                log.warning("cannot write the acceptance log %s: %s", self.path, e)


# ------------------------------------------------------------------------------------------------ retention


def fuzzy_distance(needle: str, haystack: str) -> int:
    """Edit distance between `needle` and the closest substring of `haystack` (semi-global Levenshtein)."""
    m = len(needle)
    if m == 0:
        return 0
    if needle in haystack:
        return 0
    prev = [0] * (len(haystack) + 1)  # free start anywhere in the haystack
    for i in range(1, m + 1):
        a = needle[i - 1]
        cur = [i] + [0] * len(haystack)
        for j in range(1, len(haystack) + 1):
            cost = 0 if haystack[j - 1] == a else 1
            x = prev[j - 1] + cost
            y = prev[j] + 1
            z = cur[j - 1] + 1
            cur[j] = x if x < y and x < z else (y if y < z else z)
        prev = cur
    return min(prev)


def similarity(accepted: str, text: str, offset: int) -> float:
    """How much of `accepted` is still in `text` around `offset` (1.0: all of it, unchanged)."""
    needle = accepted[:MAX_COMPARE_CHARS]
    if not needle.strip():
        return 1.0
    lo = max(0, offset - REGION_SLACK)
    hi = min(len(text), offset + len(needle) + REGION_SLACK)
    d = fuzzy_distance(needle, text[lo:hi])
    return max(0.0, 1.0 - d / len(needle))


@dataclass
class Shown:
    """A suggestion: first shown as `full` at `origin`; now shown as its rest `text` at `offset` (the user typed
    its first offset - origin characters; the typed-ahead cache keeps the id)."""

    id: str
    uri: str
    origin: int
    full: str
    offset: int
    text: str
    language: str
    created: float
    accepted: int = 0  # characters of `full` accepted so far (typed + accepted): an accept counts once


@dataclass
class Anchor:
    id: str
    uri: str
    offset: int
    text: str
    accepted_at: float


class AcceptanceTracker:
    """Remembers shown suggestions and where accepted text went (anchors follow later edits)."""

    def __init__(self, log_: AcceptanceLog, *, remember: int = 512):
        self.log = log_
        self._shown: "OrderedDict[str, Shown]" = OrderedDict()
        self._anchors: list[Anchor] = []
        self.remember = remember
        self.counts = {"shown": 0, "accepted": 0, "partial": 0}

    def shown(self, sid: str, *, uri: str, path: Optional[str], offset: int, text: str, language: str, scope: str,
              source: str, latency_ms: float) -> None:
        known = self._shown.get(sid)
        if known is not None:
            # The rest of a suggestion shown again (typed-ahead): one "shown" event per suggestion.
            if known.uri == uri and offset - known.origin == len(known.full) - len(text) >= 0:
                known.offset, known.text = offset, text
            return
        self._shown[sid] = Shown(sid, uri, offset, text, offset, text, language, time.monotonic())
        while len(self._shown) > self.remember:
            self._shown.popitem(last=False)
        self.counts["shown"] += 1
        self.log.write("shown", id=sid, path=path, language=language, chars=len(text), lines=text.count("\n") + 1,
                       scope=scope, source=source, latency_ms=round(latency_ms, 1))

    def get(self, sid: str) -> Optional[Shown]:
        return self._shown.get(sid)

    def accepted(self, sid: str, accepted_chars: Optional[int] = None) -> Optional[Anchor]:
        """Record an accept of the suggestion shown now (all of it, or its first `accepted_chars` characters).
        The anchor covers what the user typed of it plus what was accepted, from where it was first shown."""
        s = self._shown.get(sid)
        if s is None:
            return None
        n = len(s.text) if accepted_chars is None else max(0, min(int(accepted_chars), len(s.text)))
        if n == 0:
            return None
        typed = s.offset - s.origin
        total = typed + n
        if total <= s.accepted:
            return None  # the same accept again (a client retrying, a replayed command): counted once
        s.accepted = total
        if total >= len(s.full):
            self.counts["accepted"] += 1
            self.log.write("accepted", id=sid, chars=n, typed=typed)
        else:
            self.counts["partial"] += 1
            self.log.write("partial", id=sid, chars=n, typed=typed, of=len(s.full))
        anchor = Anchor(sid, s.uri, s.origin, s.full[:total], time.monotonic())
        self._anchors.append(anchor)
        return anchor

    def on_change(self, uri: str, start: int, end: int, new_len: int) -> None:
        """Shift the anchors of `uri` after an edit that replaced text[start:end] with `new_len` characters."""
        delta = new_len - (end - start)
        if not delta:
            return
        for a in self._anchors:
            if a.uri == uri and end <= a.offset and start < a.offset:
                a.offset += delta

    def check(self, anchor: Anchor, text: Optional[str], after_s: float) -> Optional[float]:
        """Log whether the accepted text is still there; None when the document is gone."""
        if text is None:
            self.log.write("retained", id=anchor.id, after_s=after_s, similarity=None)
            return None
        sim = similarity(anchor.text, text, anchor.offset)
        extra = {"text": anchor.text} if sim >= RETAINED_TEXT_SIMILARITY else {}
        self.log.write("retained", id=anchor.id, after_s=after_s, similarity=round(sim, 3), **extra)
        return sim

    def done(self, anchor: Anchor) -> None:
        if anchor in self._anchors:
            self._anchors.remove(anchor)


# ------------------------------------------------------------------------------------------------ stats


def read_events(paths: Iterable[Path]) -> list[dict]:
    out = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a torn line (a crash while writing): skip it
                    if isinstance(rec, dict) and "event" in rec:
                        out.append(rec)
        except FileNotFoundError:
            continue  # nothing accepted there yet
        except OSError as e:
            log.warning("cannot read %s: %s", p, e)
    return out


def summarize(events: Iterable[dict]) -> dict:
    shown: dict[str, dict] = {}
    accepted: set[str] = set()
    partial: set[str] = set()
    retained: dict[float, list[float]] = {}
    for e in events:
        kind = e.get("event")
        sid = e.get("id")
        if kind == "shown":
            shown.setdefault(sid, e)
        elif kind == "accepted":
            accepted.add(sid)
        elif kind == "partial":
            partial.add(sid)
        elif kind == "retained" and isinstance(e.get("similarity"), (int, float)):
            retained.setdefault(float(e.get("after_s") or 0), []).append(float(e["similarity"]))
    n = len(shown)
    by_lang: dict[str, dict] = {}
    for sid, e in shown.items():
        d = by_lang.setdefault(e.get("language") or "?", {"shown": 0, "accepted": 0})
        d["shown"] += 1
        if sid in accepted:
            d["accepted"] += 1
    partial_only = partial - accepted
    return {
        "shown": n,
        "accepted": len(accepted),
        "partial": len(partial_only),
        "acceptance_rate": len(accepted) / n if n else 0.0,
        "partial_rate": len(partial_only) / n if n else 0.0,
        "retention": {str(int(k) if k.is_integer() else k): {"checked": len(v), "mean_similarity": sum(v) / len(v),
                                                            "kept": sum(1 for x in v if x >= 0.5) / len(v)}
                      for k, v in sorted(retained.items())},
        "languages": by_lang,
    }


def _label(after: str) -> str:
    s = float(after)
    return f"{s / 60:g} min" if s >= 60 else f"{s:g} s"


def format_summary(title: str, s: dict) -> str:
    lines = [title]
    if not s["shown"]:
        lines.append("  no suggestions shown yet")
        return "\n".join(lines)
    lines.append(f"  shown       {s['shown']}")
    lines.append(f"  accepted    {s['accepted']} ({s['acceptance_rate']:.1%})")
    lines.append(f"  partially   {s['partial']} ({s['partial_rate']:.1%})")
    for after, r in s["retention"].items():
        lines.append(f"  still there after {_label(after)}: {r['mean_similarity']:.1%} of accepted text on average, "
                     f"{r['kept']:.0%} of accepts mostly kept ({r['checked']} checked)")
    for lang, d in sorted(s["languages"].items(), key=lambda kv: -kv[1]["shown"]):
        rate = d["accepted"] / d["shown"] if d["shown"] else 0.0
        lines.append(f"  {lang:11s} {d['accepted']}/{d['shown']} accepted ({rate:.1%})")
    return "\n".join(lines)


def draw_chart(summaries: dict[str, dict], png: Path) -> bool:
    """A bar chart of the rates per workspace; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(summaries)
    metrics = [("accepted", lambda s: s["acceptance_rate"]), ("partial", lambda s: s["partial_rate"])]
    afters = sorted({a for s in summaries.values() for a in s["retention"]}, key=float)
    for a in afters:
        metrics.append((f"kept {_label(a)}", lambda s, a=a: s["retention"].get(a, {}).get("mean_similarity", 0.0)))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(metrics) * max(len(names), 1)), 3.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = [fn(summaries[name]) for _, fn in metrics]
        ax.bar([k + i * width for k in range(len(metrics))], vals, width, label=name)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(metrics))])
    ax.set_xticklabels([m for m, _ in metrics])
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate")
    ax.set_title("Intarsia suggestions")
    if len(names) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def workspace_logs(workspace: Optional[str] = None) -> dict[str, Path]:
    """name (the workspace root) → log file, for one workspace or all of them."""
    if workspace is not None:
        p = workspace_log_path(workspace)
        return {os.path.realpath(workspace): p} if p.exists() else {}
    out = {}
    base = workspaces_dir()
    if not base.is_dir():
        return out
    for d in sorted(base.iterdir()):
        p = d / "acceptance.jsonl"
        if not p.is_file():
            continue
        name = d.name
        try:
            name = json.loads((d / "workspace.json").read_text(encoding="utf-8")).get("root") or name
        except (OSError, ValueError):
            pass
        out[name] = p
    return out


def run_stats(workspace: Optional[str], png: Optional[Path], *, chart: bool = True, as_json: bool = False) -> str:
    """The text `intarsia stats` prints."""
    logs = workspace_logs(workspace)
    if not logs:
        where = f"for {workspace}" if workspace else f"under {workspaces_dir()}"
        return f"no acceptance log {where} yet (it is written by `intarsia serve`)"
    summaries = {name: summarize(read_events([p])) for name, p in logs.items()}
    if len(summaries) > 1:
        summaries["all workspaces"] = summarize(read_events(logs.values()))
    if as_json:
        return json.dumps(summaries, indent=2)
    text = "\n\n".join(format_summary(name, s) for name, s in summaries.items())
    if chart:
        target = png or (workspaces_dir() / "acceptance.png")
        if draw_chart({k: v for k, v in summaries.items() if k != "all workspaces" or len(summaries) == 1}, target):
            text += f"\n\nchart: {target}"
        else:
            text += "\n\nno chart: matplotlib is not installed (pip install matplotlib to get one)"
    return text


__all__ = ["AcceptanceLog", "AcceptanceTracker", "Anchor", "Shown", "fuzzy_distance", "similarity", "summarize",
           "format_summary", "draw_chart", "run_stats", "workspace_log_path", "workspace_logs", "read_events"]
