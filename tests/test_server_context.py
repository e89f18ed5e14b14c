"""Repository context: terms, tree-sitter chunks, BM25, workspace files, and the selection within a budget."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from intarsia.grammars.registry import get_language
from intarsia.server.core import documents as D
from intarsia.server.core.context import BM25, ContextProvider, RepoIndex, chunk_text, query_terms, terms
from intarsia.server.core.files import list_files, read_text_file
from intarsia.model.test_engine import TestEngine

PY = get_language("python")

GEOMETRY = '''"""Shapes."""
import math


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def circle_area(self):
        return math.pi * self.radius ** 2


def polygon_perimeter(points):
    total = 0.0
    for a, b in zip(points, points[1:] + points[:1]):
        total += math.dist(a, b)
    return total


SCALE = 3
'''

NETWORK = '''def open_socket(host, port):
    import socket
    return socket.create_connection((host, port))


def send_packet(sock, payload):
    sock.sendall(payload)
'''


def test_terms_split_identifiers():
    t = terms("def parseHTTPResponse(self, max_len): return my_value")
    assert "parsehttpresponse" in t and {"parse", "http", "response", "max", "len", "value"} <= set(t)
    assert "self" not in t and "def" not in t and "return" not in t


def test_chunks_follow_definitions():
    chunks = chunk_text("geometry.py", GEOMETRY, PY)
    kinds = [(c.kind, c.text.splitlines()[0]) for c in chunks]
    assert ("class", "class Circle:") in kinds
    assert ("function", "def polygon_perimeter(points):") in kinds
    assert any(c.kind == "window" and "SCALE = 3" in c.text for c in chunks)
    # Every line is in some chunk.
    covered = set()
    for c in chunks:
        covered.update(range(c.start_line, c.end_line))
    assert covered >= {i for i, ln in enumerate(GEOMETRY.splitlines()) if ln.strip()}


def test_long_classes_are_split_into_methods():
    methods = "".join(f"    def m{i}(self):\n" + "        x = 1\n" * 5 + "\n" for i in range(20))
    src = "class Big:\n    '''Doc.'''\n\n" + methods
    chunks = chunk_text("big.py", src, PY)
    assert all(c.end_line - c.start_line <= 60 for c in chunks)
    assert sum(1 for c in chunks if c.text.lstrip().startswith("def m")) == 20


def test_files_without_grammar_use_line_windows():
    text = "".join(f"line {i}\n" for i in range(70))
    chunks = chunk_text("notes.txt", text, None)
    assert [c.start_line for c in chunks] == [0, 20, 40] and all(c.kind == "window" for c in chunks)


def test_bm25_ranks_the_relevant_chunk_first_and_updates():
    bm = BM25()
    bm.replace("geometry.py", chunk_text("geometry.py", GEOMETRY, PY))
    bm.replace("network.py", chunk_text("network.py", NETWORK, PY))
    top = bm.search(Counter(terms("perimeter of the polygon points")), 3)
    assert top[0][1].text.startswith("def polygon_perimeter")
    top = bm.search(Counter(terms("send a packet over the socket")), 3)
    assert top[0][1].path == "network.py"
    n = bm.n
    bm.replace("network.py", chunk_text("network.py", "def other():\n    pass\n", PY))
    assert bm.n == n - 1
    assert not any(c.path == "network.py" for _, c in bm.search(Counter(terms("socket packet")), 5))
    bm.remove("geometry.py")
    bm.remove("network.py")
    assert bm.n == 0 and bm.total_len == 0 and not bm.postings


def _workspace(tmp_path, *, git: bool):
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "geometry.py").write_text(GEOMETRY)
    (ws / "src" / "network.py").write_text(NETWORK)
    (ws / "node_modules" / "pkg").mkdir(parents=True)
    (ws / "node_modules" / "pkg" / "index.js").write_text("function polygon_perimeter() {}\n")
    (ws / "build").mkdir()
    (ws / "build" / "gen.py").write_text("def polygon_perimeter():\n    pass\n")
    (ws / "secret.py").write_text("def polygon_perimeter():\n    pass\n")
    (ws / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (ws / "data.py").write_bytes(b"x = 1\n\0\0\0binary")
    (ws / "huge.py").write_text("x = 1\n" * 200_000)
    (ws / "min.js").write_text("var a=" + "1+" * 5000 + "1;")
    (ws / ".gitignore").write_text("secret.py\n/build/\n")
    if git:
        subprocess.run(["git", "init", "-q", str(ws)], check=True)
        (ws / "untracked.py").write_text("def helper():\n    return 1\n")
    return ws


@pytest.mark.parametrize("git", [False, True])
def test_workspace_files_skip_ignored_vendored_binary_huge(tmp_path, git):
    ws = _workspace(tmp_path, git=git)
    files = list_files(ws)
    assert "src/geometry.py" in files and "src/network.py" in files
    assert not any(f.startswith(("node_modules/", "build/")) for f in files)
    assert "secret.py" not in files and "logo.png" not in files
    if git:
        assert "untracked.py" in files  # not ignored: indexed though not committed
    assert read_text_file(ws / "data.py") is None  # binary
    assert read_text_file(ws / "huge.py") is None  # too big
    assert read_text_file(ws / "min.js") is None  # minified
    idx = RepoIndex(ws)
    idx.build()
    st = idx.stats()
    assert st["ready"] and st["files"] == (4 if git else 3)  # geometry, network, .gitignore (+ untracked.py)


def test_index_updates_on_save(tmp_path):
    ws = _workspace(tmp_path, git=False)
    idx = RepoIndex(ws)
    idx.build()
    q = Counter(terms("fetch_weather forecast"))
    assert idx.search(q) == []
    assert idx.update_file(ws / "src" / "network.py", "def fetch_weather(city):\n    return forecast(city)\n")
    hits = idx.search(q)
    assert hits and hits[0][1].path == "src/network.py"
    assert not idx.update_file(tmp_path / "elsewhere.py", "x = 1\n")  # outside the workspace


def _snapshot(text, path="src/app.py", neighbors=()):
    doc = D.Document(f"file:///ws/{path}", text, 1, "python", path=path)
    return doc.snapshot(len(text), neighbors=neighbors)


def test_selection_fits_the_budget_and_skips_the_current_file(tmp_path):
    ws = _workspace(tmp_path, git=False)
    (ws / "src" / "app.py").write_text("def polygon_perimeter_twice(points):\n    pass\n")
    idx = RepoIndex(ws)
    idx.build()
    prov = ContextProvider(idx)
    count = TestEngine().count_tokens
    text = "def report(points):\n    p = polygon_perimeter(points)\n    "
    files = prov.select(_snapshot(text), 400, count)
    assert files and files[-1].path == "src/geometry.py"
    assert "def polygon_perimeter(points):" in files[-1].content
    assert all(f.path != "src/app.py" for f in files)
    assert sum(count(f.content) + 8 for f in files) <= 400
    assert prov.select(_snapshot(text), 0, count) == []
    small = ContextProvider(idx).select(_snapshot(text), 30, count)
    assert sum(count(f.content) + 8 for f in small) <= 30


def test_open_documents_win_over_the_saved_version_and_duplicates_go(tmp_path):
    ws = _workspace(tmp_path, git=False)
    idx = RepoIndex(ws)
    idx.build()
    prov = ContextProvider(idx)
    edited = GEOMETRY.replace("total = 0.0", "total = 0.0  # edited, unsaved")
    neighbors = (D.NeighborDoc("src/geometry.py", 7, edited), D.NeighborDoc("copy.py", 1, GEOMETRY))
    files = prov.select(_snapshot("x = polygon_perimeter(pts)\n", neighbors=neighbors), 1000,
                        TestEngine().count_tokens)
    text = "".join(f.content for f in files)
    assert "edited, unsaved" in text
    assert text.count("def polygon_perimeter") == 1  # the near-identical copy (copy.py) is dropped


def test_selection_is_cached_per_region(tmp_path):
    ws = _workspace(tmp_path, git=False)
    idx = RepoIndex(ws)
    idx.build()
    prov = ContextProvider(idx, per_file=False)
    calls = []
    count = TestEngine().count_tokens
    orig = prov._select
    prov._select = lambda *a: calls.append(1) or orig(*a)  # type: ignore[method-assign]
    base = "def f(points):\n    return polygon_perimeter(points)\n"
    prov.select(_snapshot(base + "x"), 300, count)
    prov.select(_snapshot(base + "xy"), 300, count)  # same lines region: reused
    assert len(calls) == 1
    idx.update_file(ws / "src" / "network.py", "def z():\n    pass\n")  # the index changed: recomputed
    prov.select(_snapshot(base + "xyz"), 300, count)
    assert len(calls) == 2


def test_selection_per_file_holds_until_saved_or_drifted(tmp_path):
    """The server's mode: one selection per document, so every prompt in it starts alike (KV-cache reuse)."""
    ws = _workspace(tmp_path, git=False)
    idx = RepoIndex(ws)
    idx.build()
    prov = ContextProvider(idx)
    calls = []
    count = TestEngine().count_tokens
    orig = prov._select
    prov._select = lambda *a: calls.append(1) or orig(*a)  # type: ignore[method-assign]
    body = "".join(f"def f{i}(points):\n    return polygon_perimeter(points) + {i}\n" for i in range(60))
    first = prov.select(_snapshot(body + "x"), 300, count)
    assert first and any("polygon_perimeter" in f.content for f in first)
    far = D.Document("file:///ws/src/app.py", body + "x", 1, "python", path="src/app.py").snapshot(10)
    assert prov.select(far, 300, count) == first  # another place in the file: the same context
    idx.update_file(ws / "src" / "network.py", "def z():\n    pass\n")  # another file saved: kept
    assert prov.select(_snapshot(body + "xy"), 300, count) == first and len(calls) == 1
    prov.refresh("file:///ws/src/app.py")  # this document saved: chosen again
    prov.select(_snapshot(body + "xyz"), 300, count)
    assert len(calls) == 2
    prov.select(_snapshot(body + "q" * 2500), 300, count)  # drifted
    assert len(calls) == 3


def test_query_terms_use_the_lines_around_the_cursor():
    text = "".join(f"far_{i} = 1\n" for i in range(100)) + "near_term = 2\n"
    q = query_terms(text, len(text))
    assert "near" in q and "far_0" not in q


def test_a_folder_ignored_by_an_enclosing_repository_is_walked(tmp_path):
    # e.g. site-packages inside a git-installed tool, or a virtualenv inside a project that ignores it.
    outer = tmp_path / "outer"
    (outer / "venv" / "pkg").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    (outer / ".gitignore").write_text("venv/\n")
    (outer / "venv" / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (outer / "venv" / "pkg" / "util.py").write_text("X = 1\n")
    assert sorted(list_files(outer / "venv" / "pkg")) == ["mod.py", "util.py"]
    assert list_files(outer) == [".gitignore"]
