"""Shared fixtures. `tests/` is on sys.path so test modules can `import tiny`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private INTARSIA_CACHE for tests that write into the cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("INTARSIA_CACHE", str(root))
    return root


def pytest_configure(config):
    # Keep ONNX Runtime and torch from oversubscribing the 2-core machines the tests run on.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
