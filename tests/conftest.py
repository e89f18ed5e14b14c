"""Shared fixtures. `tests/` is on sys.path so test modules can `import tiny`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings as hypothesis_settings

sys.path.insert(0, str(Path(__file__).parent))

# Property tests check results, not speed: on a shared 2-core machine one example can take longer than
# Hypothesis' 200 ms deadline (a benchmark on the other core made a string test take 272 ms once and 0.05 ms
# when rerun, which Hypothesis reports as a flaky failure). Speed is measured in benchmarks/.
hypothesis_settings.register_profile("intarsia", deadline=None)
hypothesis_settings.load_profile("intarsia")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private INTARSIA_CACHE for tests that write into the cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("INTARSIA_CACHE", str(root))
    return root


@pytest_asyncio.fixture
async def test_engine_session(isolated_cache):
    """`await make(settings)`: a language-server Session on the "test" engine with `settings` (client form; the
    completions' background work off), once its engine is ready; shut down after the test."""
    from intarsia.server.lsp.host import NullUI
    from intarsia.server.lsp.session import Session
    from intarsia.server.lsp.settings import parse_settings

    sessions = []

    async def make(raw: dict):
        settings, warnings = parse_settings({"engine": "test", "debounceMs": 0, "speculate": False, "prewarm": False,
                                             "acceptanceLog": False, **raw})
        assert not warnings
        s = Session(settings=settings, root=None, ui=NullUI())
        sessions.append(s)
        s.start()
        t0 = time.monotonic()
        while s.host.state != "ready":
            assert s.host.state != "failed" and time.monotonic() - t0 < 5
            await asyncio.sleep(0.01)
        return s

    yield make
    for s in sessions:
        await s.shutdown()


def pytest_configure(config):
    # Keep ONNX Runtime and torch from oversubscribing the 2-core machines the tests run on.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
