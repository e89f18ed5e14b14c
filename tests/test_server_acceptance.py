"""The acceptance log (JSONL, one write per line), retention checks, and `intarsia stats`."""

from __future__ import annotations

import builtins
import json
import threading

import pytest

from intarsia.server.core.acceptance import (
    AcceptanceLog,
    AcceptanceTracker,
    fuzzy_distance,
    run_stats,
    similarity,
    summarize,
    workspace_log_path,
)
from intarsia.server.cli import main


def test_fuzzy_distance():
    assert fuzzy_distance("abc", "xxabcxx") == 0
    assert fuzzy_distance("hello world", "xx hallo wrld yy") == 2
    assert fuzzy_distance("abc", "") == 3
    assert fuzzy_distance("", "abc") == 0


def test_similarity_finds_the_text_near_its_anchor():
    doc = "x = 1\n" + "return total * 2\n" + "y = 2\n"
    assert similarity("return total * 2", doc, 6) == 1.0
    assert similarity("return total * 2", doc.replace("* 2", "* 3"), 6) == pytest.approx(1 - 1 / 16)
    assert similarity("return total * 2", "x = 1\n", 6) < 0.3


def _tracker(tmp_path):
    log = AcceptanceLog(str(tmp_path / "ws"), path=tmp_path / "acc.jsonl")
    return AcceptanceTracker(log), tmp_path / "acc.jsonl"


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shown_accept_partial_and_retention_events(tmp_path):
    tr, path = _tracker(tmp_path)
    tr.shown("s1", uri="u", path="a.py", offset=4, text="compute(1)", language="python", scope="line",
             source="model", latency_ms=12.3)
    tr.shown("s1", uri="u", path="a.py", offset=8, text="ute(1)", language="python", scope="cached",
             source="cache", latency_ms=0.1)  # the rest shown again: still one suggestion
    tr.shown("s2", uri="u", path="a.py", offset=0, text="abcdef", language="python", scope="line",
             source="model", latency_ms=5)
    anchor = tr.accepted("s1")
    assert tr.accepted("s2", 3) is not None
    assert tr.accepted("nope") is None
    # An edit before the anchor shifts it; one after does not.
    tr.on_change("u", 0, 0, 3)
    tr.on_change("u", 50, 50, 10)
    assert anchor.offset == 7
    assert tr.check(anchor, "abc" + "x = compute(1)\n", 30) == 1.0
    assert tr.check(anchor, None, 300) is None
    ev = _events(path)
    assert [e["event"] for e in ev] == ["shown", "shown", "accepted", "partial", "retained", "retained"]
    assert ev[0]["chars"] == 10 and ev[0]["latency_ms"] == 12.3
    assert ev[3] == {**ev[3], "chars": 3, "of": 6}
    assert ev[4]["similarity"] == 1.0 and ev[5]["similarity"] is None
    assert tr.counts == {"shown": 2, "accepted": 1, "partial": 1}


def test_lines_stay_whole_under_concurrent_writers(tmp_path):
    log = AcceptanceLog(None, path=tmp_path / "acc.jsonl")
    big = "x" * 3000

    def writer(k):
        for i in range(50):
            log.write("shown", id=f"{k}-{i}", pad=big)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ev = _events(tmp_path / "acc.jsonl")
    assert len(ev) == 200 and all(e["pad"] == big for e in ev)


def test_disabled_log_writes_nothing(tmp_path):
    log = AcceptanceLog(None, path=tmp_path / "acc.jsonl", enabled=False)
    log.write("shown", id="a")
    assert not (tmp_path / "acc.jsonl").exists()


def test_summary_rates():
    ev = [{"event": "shown", "id": str(i), "language": "python" if i < 8 else "go"} for i in range(10)]
    ev += [{"event": "accepted", "id": "0"}, {"event": "accepted", "id": "1"}, {"event": "partial", "id": "2"},
           {"event": "partial", "id": "1"},
           {"event": "retained", "id": "0", "after_s": 30, "similarity": 1.0},
           {"event": "retained", "id": "1", "after_s": 30, "similarity": 0.2},
           {"event": "retained", "id": "0", "after_s": 300, "similarity": None}]
    s = summarize(ev)
    assert s["shown"] == 10 and s["accepted"] == 2 and s["partial"] == 1
    assert s["acceptance_rate"] == 0.2 and s["partial_rate"] == 0.1
    assert s["retention"]["30"] == {"checked": 2, "mean_similarity": 0.6, "kept": 0.5}
    assert "300" not in s["retention"]
    assert s["languages"]["go"] == {"shown": 2, "accepted": 0}


def test_stats_command_without_matplotlib(isolated_cache, tmp_path, monkeypatch, capsys):
    ws = tmp_path / "proj"
    ws.mkdir()
    log = AcceptanceLog(str(ws))
    assert log.path == workspace_log_path(str(ws)) and str(isolated_cache) in str(log.path)
    for i in range(4):
        log.write("shown", id=str(i), language="python", chars=5)
    log.write("accepted", id="0", chars=5)
    with open(log.path, "a") as f:
        f.write('{"event": "shown", "id": "torn"')  # a torn last line is skipped
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["stats"]) == 0
    out = capsys.readouterr().out
    assert str(ws) in out and "accepted    1 (25.0%)" in out
    assert "matplotlib is not installed" in out
    assert json.loads(run_stats(str(ws), None, as_json=True))[str(ws)]["shown"] == 4


def test_stats_chart_with_matplotlib(isolated_cache, tmp_path):
    pytest.importorskip("matplotlib")
    log = AcceptanceLog(str(tmp_path))
    log.write("shown", id="a", language="python")
    log.write("accepted", id="a")
    png = tmp_path / "chart.png"
    assert f"chart: {png}" in run_stats(None, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_stats_with_no_log(isolated_cache, capsys):
    assert main(["stats"]) == 0
    assert "no acceptance log" in capsys.readouterr().out


def test_an_accept_counts_once_per_shown_suggestion(tmp_path):
    tr, path = _tracker(tmp_path)
    tr.shown("s1", uri="u", path="a.py", offset=0, text="abcdef", language="python", scope="line",
             source="model", latency_ms=1)
    assert tr.accepted("s1", 2) is not None  # a partial accept, then more of it, then all of it
    assert tr.accepted("s1", 2) is None
    assert tr.accepted("s1", 4) is not None
    assert tr.accepted("s1") is not None
    for _ in range(3):
        assert tr.accepted("s1") is None  # the same accept replayed
    assert tr.counts["accepted"] == 1 and tr.counts["partial"] == 2
    assert [e["event"] for e in _events(path)] == ["shown", "partial", "partial", "accepted"]


def test_the_log_is_readable_by_its_owner_only(tmp_path, isolated_cache):
    import os
    import stat

    path = workspace_log_path(str(tmp_path / "ws"))
    path.parent.mkdir(parents=True)
    os.chmod(path.parent, 0o755)
    path.write_text("")
    os.chmod(path, 0o644)  # left wide open by an older version
    log = AcceptanceLog(str(tmp_path / "ws"))
    log.write("shown", id="x", chars=3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((path.parent / "workspace.json").stat().st_mode) == 0o600
    fresh = workspace_log_path(str(tmp_path / "other"))
    AcceptanceLog(str(tmp_path / "other")).write("shown", id="y", chars=1)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600 and stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
