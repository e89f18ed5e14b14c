"""Repository context: snippets of other files, chosen by BM25 over tree-sitter chunks.

The files of the workspace (`core.files.list_files`: what git tracks or .gitignore allows, without vendored, binary,
huge or minified files, and none whose real path leaves the workspace) are cut into chunks: top-level functions and
classes (classes longer than `MAX_CHUNK_LINES` are split into their methods), the code between them and files
without a grammar in windows of lines. `RepoIndex` keeps a BM25 index of the chunks (terms: identifiers and their
camelCase/snake_case parts); it is built in the background and updated on didSave.

`ContextProvider.select(snapshot, budget, count_tokens)` scores the chunks of the index and of the other open
(or recently edited) documents against the code around the cursor, drops duplicates and chunks of the
current file, and fits the best into the token budget. The result (a list of `RepoFile`, most relevant
last, the position closest to the current file) is rendered by the model's repository-level FIM format. It is
cached per document and region of lines, so that consecutive prompts start alike (KV-cache reuse).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import tree_sitter
from intarsia.grammars.registry import Language, language_for_path
from intarsia.model.fim import RepoFile

from .files import MAX_FILE_BYTES, MAX_FILES, list_files, read_text_file, skip_path

log = logging.getLogger(__name__)

MAX_CHUNK_LINES = 60
WINDOW_LINES = 30
WINDOW_STRIDE = 20
QUERY_LINES_BEFORE = 30
QUERY_LINES_AFTER = 8
REGION_LINES = 24  # per region: the selection is reused while the cursor stays within this many lines
CACHE_SECONDS = 60.0  # per region: and for at most this long
FILE_QUERY_TERMS = 64  # per file: the query is the file's most specific terms
DRIFT_CHARS = 2000  # per file: the selection is made again once the document changed this much since

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z0-9])|[A-Z]?[a-z0-9]+|[A-Z]+")
STOPWORDS = frozenset("""
self cls this the and for in if else elif return def class function fn func var let const new none null nil true
false import from as is not or with while try except finally raise pass break continue public private protected
static void int str string bool float double char long return of to be it an at by on we you are was this that
""".split())


# ------------------------------------------------------------------------------------------------ terms


def terms(text: str) -> list[str]:
    """BM25 terms of code: identifiers lowercased, plus their camelCase / snake_case parts."""
    out: list[str] = []
    for m in _IDENT.finditer(text):
        ident = m.group(0)
        low = ident.lower()
        parts = [p.lower() for piece in ident.split("_") if piece for p in _CAMEL.findall(piece)]
        if len(parts) > 1 and low not in STOPWORDS:
            out.append(low)
        for p in parts:
            if len(p) > 1 and p not in STOPWORDS and not p.isdigit():
                out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ chunks


@dataclass
class Chunk:
    path: str  # workspace-relative, "/" separated
    start_line: int  # 0-based, inclusive
    end_line: int  # exclusive
    text: str
    kind: str  # "function" | "class" | "window"
    tf: Counter = field(default_factory=Counter, repr=False)
    length: int = 0
    digest: str = ""
    _tokens: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.tf:
            self.tf = Counter(terms(self.text))
        self.length = sum(self.tf.values())
        self.digest = hashlib.sha1(" ".join(self.text.split()).encode("utf-8", "surrogatepass")).hexdigest()

    def token_count(self, count: Callable[[str], int]) -> int:
        key = id(count.__self__) if hasattr(count, "__self__") else id(count)
        n = self._tokens.get(key)
        if n is None:
            n = self._tokens[key] = count(self.text)
        return n


def _windows(lines: list[str], start: int, end: int, path: str) -> list[Chunk]:
    out = []
    i = start
    while i < end:
        j = min(i + WINDOW_LINES, end)
        body = "".join(lines[i:j])
        if body.strip():
            out.append(Chunk(path, i, j, body, "window"))
        if j >= end:
            break
        i += WINDOW_STRIDE
    return out


def _definition_nodes(language: Language, tree: tree_sitter.Tree) -> list[tuple[tree_sitter.Node, str]]:
    found: list[tuple[tree_sitter.Node, str]] = []
    for qname, cap in (("functions", "function"), ("classes", "class")):
        q = language.query(qname)
        if q is None:
            continue
        for node in tree_sitter.QueryCursor(q).captures(tree.root_node).get(cap, []):
            found.append((node, cap))
    return found


def chunk_text(path: str, text: str, language: Optional[Language] = None) -> list[Chunk]:
    """Chunks of one file: definitions (tree-sitter) and windows of lines for everything else."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    if language is None:
        return _windows(lines, 0, len(lines), path)
    try:
        tree = language.new_parser().parse(text.encode("utf-8", "surrogatepass"))
    except Exception:
        return _windows(lines, 0, len(lines), path)
    spans: list[tuple[int, int, str]] = []
    nodes = _definition_nodes(language, tree)
    # Outermost definitions, plus the methods of long classes.
    nodes.sort(key=lambda nk: (nk[0].start_byte, -nk[0].end_byte))
    taken_end = -1
    outer: list[tuple[tree_sitter.Node, str]] = []
    for node, kind in nodes:
        if node.start_byte >= taken_end:
            outer.append((node, kind))
            taken_end = node.end_byte
    for node, kind in outer:
        s, e = node.start_point[0], node.end_point[0] + 1
        # Include decorators / doc comments on the lines right above.
        while s > 0 and lines[s - 1].lstrip().startswith(("@", "#", "//", "/*", "*", "///")):
            s -= 1
        if e - s <= MAX_CHUNK_LINES:
            spans.append((s, e, kind))
            continue
        inner = [(n, k) for n, k in nodes if node.start_byte < n.start_byte and n.end_byte <= node.end_byte]
        if kind == "class" and inner:
            first = min(n.start_point[0] for n, _ in inner)
            spans.append((s, min(first, s + MAX_CHUNK_LINES), "class"))
            last_end = -1
            for n, k in sorted(inner, key=lambda nk: nk[0].start_byte):
                if n.start_byte < last_end:
                    continue
                last_end = n.end_byte
                ns, ne = n.start_point[0], n.end_point[0] + 1
                for i in range(ns, ne, MAX_CHUNK_LINES):
                    spans.append((i, min(ne, i + MAX_CHUNK_LINES), k))
        else:
            for i in range(s, e, MAX_CHUNK_LINES):
                spans.append((i, min(e, i + MAX_CHUNK_LINES), kind))
    spans.sort()
    chunks: list[Chunk] = []
    covered = 0
    for s, e, kind in spans:
        if s > covered:
            chunks.extend(_windows(lines, covered, s, path))
        s = max(s, covered) if kind == "window" else s
        body = "".join(lines[s:e])
        if body.strip():
            chunks.append(Chunk(path, s, e, body, kind))
        covered = max(covered, e)
    if covered < len(lines):
        chunks.extend(_windows(lines, covered, len(lines), path))
    return chunks


# ------------------------------------------------------------------------------------------------ BM25


class BM25:
    """Okapi BM25 over chunks, with an inverted index; files can be replaced one at a time."""

    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1 = k1
        self.b = b
        self.by_path: dict[str, list[Chunk]] = {}
        self.postings: dict[str, dict[int, tuple[Chunk, int]]] = {}
        self.n = 0
        self.total_len = 0

    def replace(self, path: str, chunks: Sequence[Chunk]) -> None:
        self.remove(path)
        if not chunks:
            return
        self.by_path[path] = list(chunks)
        for c in chunks:
            self.n += 1
            self.total_len += c.length
            for t, f in c.tf.items():
                self.postings.setdefault(t, {})[id(c)] = (c, f)

    def remove(self, path: str) -> None:
        old = self.by_path.pop(path, None)
        if not old:
            return
        for c in old:
            self.n -= 1
            self.total_len -= c.length
            for t in c.tf:
                p = self.postings.get(t)
                if p is not None:
                    p.pop(id(c), None)
                    if not p:
                        del self.postings[t]

    def idf(self, term: str) -> float:
        df = len(self.postings.get(term, ()))
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def score_chunk(self, chunk: Chunk, query: Counter) -> float:
        avg = self.total_len / self.n if self.n else max(chunk.length, 1)
        s = 0.0
        for t, qf in query.items():
            f = chunk.tf.get(t)
            if not f:
                continue
            denom = f + self.k1 * (1 - self.b + self.b * chunk.length / max(avg, 1e-9))
            s += self.idf(t) * f * (self.k1 + 1) / denom
        return s

    def search(self, query: Counter, limit: int = 32, exclude: Callable[[Chunk], bool] = lambda c: False
               ) -> list[tuple[float, Chunk]]:
        if not self.n:
            return []
        avg = self.total_len / self.n
        scores: dict[int, list] = {}
        for t in query:
            p = self.postings.get(t)
            if not p:
                continue
            idf = self.idf(t)
            for cid, (c, f) in p.items():
                denom = f + self.k1 * (1 - self.b + self.b * c.length / max(avg, 1e-9))
                entry = scores.get(cid)
                if entry is None:
                    entry = scores[cid] = [0.0, c]
                entry[0] += idf * f * (self.k1 + 1) / denom
        ranked = sorted((v for v in scores.values() if not exclude(v[1])), key=lambda v: -v[0])
        return [(s, c) for s, c in ranked[:limit]]


# ------------------------------------------------------------------------------------------------ the index


class RepoIndex:
    """The BM25 index of a workspace folder; thread-safe (built and updated from a background thread)."""

    def __init__(self, root: Path | str, *, max_file_bytes: int = MAX_FILE_BYTES, max_files: int = MAX_FILES):
        self.root = Path(root).resolve()
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._bm25 = BM25()
        self._lock = threading.RLock()
        self.generation = 0
        self.ready = False
        self.files = 0
        self.build_seconds: Optional[float] = None

    def rel(self, path: Path | str) -> Optional[str]:
        """`path` relative to the root once symlinks are resolved; None when its real path is outside."""
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return None

    def _chunks_for(self, rel: str, text: Optional[str] = None) -> list[Chunk]:
        if text is None:
            text = read_text_file(self.root / rel, self.max_file_bytes, root=self.root)
        if text is None:
            return []
        return chunk_text(rel, text, language_for_path(rel))

    def build(self, cancel: Optional[threading.Event] = None) -> None:
        t0 = time.perf_counter()
        rels = list_files(self.root, max_files=self.max_files)
        n = 0
        for rel in rels:
            if cancel is not None and cancel.is_set():
                return
            chunks = self._chunks_for(rel)
            if chunks:
                with self._lock:
                    self._bm25.replace(rel, chunks)
                    self.generation += 1
                n += 1
        with self._lock:
            self.files = n
            self.ready = True
            self.generation += 1
        self.build_seconds = time.perf_counter() - t0
        log.info("indexed %d files (%d chunks) of %s in %.1f s", n, self._bm25.n, self.root, self.build_seconds)

    def update_file(self, path: Path | str, text: Optional[str] = None) -> bool:
        """Re-index one file (after a save); False when it is outside the workspace or skipped."""
        rel = self.rel(path)
        if rel is None or skip_path(rel):
            return False
        if text is not None and (len(text) > self.max_file_bytes or "\0" in text[:8192]):
            text = None
            chunks: list[Chunk] = []
        else:
            chunks = self._chunks_for(rel, text)
        with self._lock:
            had = rel in self._bm25.by_path
            if chunks:
                self._bm25.replace(rel, chunks)
                if not had:
                    self.files += 1
            else:
                self._bm25.remove(rel)
                if had:
                    self.files -= 1
            self.generation += 1
        return True

    def search(self, query: Counter, limit: int = 32, exclude: Callable[[Chunk], bool] = lambda c: False
               ) -> list[tuple[float, Chunk]]:
        with self._lock:
            return self._bm25.search(query, limit, exclude)

    def score(self, chunk: Chunk, query: Counter) -> float:
        with self._lock:
            return self._bm25.score_chunk(chunk, query)

    def idf(self, term: str) -> float:
        with self._lock:
            return self._bm25.idf(term)

    def stats(self) -> dict:
        with self._lock:
            return {"root": str(self.root), "ready": self.ready, "files": self.files, "chunks": self._bm25.n,
                    "build_seconds": None if self.build_seconds is None else round(self.build_seconds, 2)}


# ------------------------------------------------------------------------------------------------ selection


def query_terms(text: str, offset: int) -> Counter:
    """Terms of the lines around the cursor (more before than after)."""
    ls = offset
    for _ in range(QUERY_LINES_BEFORE):
        j = text.rfind("\n", 0, max(ls - 1, 0))
        if j < 0:
            ls = 0
            break
        ls = j + 1
    le = offset
    for _ in range(QUERY_LINES_AFTER):
        j = text.find("\n", le + 1)
        if j < 0:
            le = len(text)
            break
        le = j
    return Counter(terms(text[ls:le]))


def file_query(text: str, index: Optional[RepoIndex] = None, limit: int = FILE_QUERY_TERMS) -> Counter:
    """A document's most specific terms (term frequency x inverse document frequency in the index), for a
    selection that holds wherever the cursor is in it."""
    tf = Counter(terms(text))
    if not tf:
        return tf
    weight = (lambda t: tf[t] * index.idf(t)) if index is not None and index.ready else (lambda t: tf[t])
    return Counter({t: tf[t] for t in sorted(tf, key=lambda t: -weight(t))[:limit]})


class ContextProvider:
    """Chooses repository context for a snapshot (see the module docstring).

    `per_file` (the server's default): one selection per document, from the document's most specific terms, kept
    while the cursor moves and the user types, and made again when the document is saved (`refresh`), when the
    workspace index finishes building, when the set of other open documents changes, or when the document has
    drifted (`DRIFT_CHARS` changed since). The context is the beginning of every prompt in that document, so
    keeping it is what lets the engine reuse its KV cache across places. Otherwise (`per_file=False`) the
    selection follows the lines around the cursor, per region of `REGION_LINES` lines."""

    def __init__(self, index: Optional[RepoIndex] = None, *, recent_boost: float = 0.3, per_file: bool = True):
        self.index = index
        self.recent_boost = recent_boost
        self.per_file = per_file
        self._neighbor_chunks: dict[str, tuple[int, list[Chunk]]] = {}
        self._cache: dict[str, tuple[tuple, float, int, list[RepoFile]]] = {}
        self._lock = threading.Lock()

    def _chunks_of_neighbor(self, path: str, version: int, text: str) -> list[Chunk]:
        with self._lock:
            got = self._neighbor_chunks.get(path)
        if got is not None and got[0] == version:
            return got[1]
        if len(text) > MAX_FILE_BYTES or "\0" in text[:8192]:
            chunks: list[Chunk] = []
        else:
            chunks = chunk_text(path, text, language_for_path(path))
        with self._lock:
            self._neighbor_chunks[path] = (version, chunks)
            if len(self._neighbor_chunks) > 64:
                self._neighbor_chunks.pop(next(iter(self._neighbor_chunks)))
        return chunks

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def refresh(self, uri: str) -> None:
        """Choose the document's context again at its next completion (it was saved)."""
        with self._lock:
            self._cache.pop(uri, None)

    def select(self, snapshot, budget_tokens: int, count_tokens: Callable[[str], int]) -> list[RepoFile]:
        if budget_tokens <= 0:
            return []
        now = time.monotonic()
        if self.per_file:
            ready = self.index.ready if self.index is not None else True
            key: tuple = ("file", budget_tokens, ready, tuple(sorted(n.path for n in snapshot.neighbors)))
        else:
            line = snapshot.text.count("\n", 0, snapshot.offset)
            gen = self.index.generation if self.index is not None else 0
            nkey = tuple((n.path, n.version) for n in snapshot.neighbors)
            key = ("region", line // REGION_LINES, gen, nkey, budget_tokens)
        with self._lock:
            hit = self._cache.get(snapshot.uri)
        if hit is not None and hit[0] == key:
            fresh = abs(len(snapshot.text) - hit[2]) < DRIFT_CHARS if self.per_file else \
                now - hit[1] < CACHE_SECONDS
            if fresh:
                return hit[3]
        query = file_query(snapshot.text, self.index) if self.per_file else \
            query_terms(snapshot.text, snapshot.offset)
        files = self._select(snapshot, query, budget_tokens, count_tokens)
        with self._lock:
            self._cache[snapshot.uri] = (key, now, len(snapshot.text), files)
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
        return files

    def _select(self, snapshot, query: Counter, budget_tokens: int, count_tokens: Callable[[str], int]
                ) -> list[RepoFile]:
        if not query:
            return []
        current = snapshot.path
        neighbor_paths = {n.path for n in snapshot.neighbors}
        candidates: list[tuple[float, Chunk]] = []
        # Open / recently edited documents: their current text wins over the indexed (saved) version.
        for rank, n in enumerate(snapshot.neighbors):
            if n.path == current:
                continue
            boost = 1 + self.recent_boost * (len(snapshot.neighbors) - rank) / max(len(snapshot.neighbors), 1)
            for c in self._chunks_of_neighbor(n.path, n.version, n.text):
                s = self.index.score(c, query) if self.index is not None else _plain_score(c, query)
                if s > 0:
                    candidates.append((s * boost, c))
        if self.index is not None:
            candidates.extend(self.index.search(query, 48, lambda c: c.path == current or c.path in neighbor_paths))
        candidates.sort(key=lambda sc: -sc[0])
        chosen: list[tuple[float, Chunk]] = []
        seen_digest: set[str] = set()
        used = 0
        for s, c in candidates:
            if c.digest in seen_digest or any(_near_duplicate(c, o) for _, o in chosen):
                continue
            if any(o.path == c.path and o.start_line < c.end_line and c.start_line < o.end_line for _, o in chosen):
                continue
            n = c.token_count(count_tokens) + 8  # + the file separator and path
            if used + n > budget_tokens:
                continue
            chosen.append((s, c))
            seen_digest.add(c.digest)
            used += n
            if used >= budget_tokens * 0.95:
                break
        if not chosen:
            return []
        # One RepoFile per file, chunks in file order; files by best score, the best one last.
        by_file: dict[str, list[tuple[float, Chunk]]] = {}
        for s, c in chosen:
            by_file.setdefault(c.path, []).append((s, c))
        order = sorted(by_file, key=lambda p: max(s for s, _ in by_file[p]))
        out = []
        for p in order:
            parts = sorted((c for _, c in by_file[p]), key=lambda c: c.start_line)
            out.append(RepoFile(p, "".join(c.text if c.text.endswith("\n") else c.text + "\n" for c in parts)))
        return out


def _near_duplicate(a: Chunk, b: Chunk, threshold: float = 0.8) -> bool:
    """The same code with small edits (a copy, an unsaved change): term sets mostly shared."""
    ka, kb = a.tf.keys(), b.tf.keys()
    if len(ka) < 5 or len(kb) < 5:
        return False
    inter = len(ka & kb)
    return inter / (len(ka) + len(kb) - inter) >= threshold


def _plain_score(chunk: Chunk, query: Counter) -> float:
    return float(sum(min(chunk.tf.get(t, 0), 3) for t in query))


__all__ = ["terms", "Chunk", "chunk_text", "BM25", "RepoIndex", "ContextProvider", "query_terms"]
