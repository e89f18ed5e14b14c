"""The typed-ahead cache: when the user types the first characters of the suggestion on screen, the rest of it
is returned at once, without a model call.

An entry remembers the document text and cursor a suggestion was made for. A later request matches when its
document is exactly that text with the first k characters of the suggestion typed at the cursor (the text
before and after the typed part unchanged) and the cursor right after them; the answer is the suggestion
minus those k characters. A speculative suggestion (prepared after an accept for the document the accept
produces) is an entry with k = 0.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class CacheEntry:
    uri: str
    text: str
    offset: int
    completion: str
    suggestion_id: str
    source: str  # "model" | "speculation"
    created: float


@dataclass(frozen=True)
class CacheHit:
    remaining: str
    typed: int  # characters of the suggestion already typed
    entry: CacheEntry


class TypedAheadCache:
    """A few entries per document, the most recent first; thread-safe. Entries hold whole document texts
    (shared with the documents while unchanged), hence the small bounds."""

    def __init__(self, per_document: int = 4, documents: int = 16, ttl_s: float = 600.0):
        self.per_document = per_document
        self.documents = documents
        self.ttl_s = ttl_s
        self._entries: "OrderedDict[str, list[CacheEntry]]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, uri: str, text: str, offset: int, completion: str, suggestion_id: str,
            source: str = "model") -> None:
        if not completion:
            return
        entry = CacheEntry(uri, text, offset, completion, suggestion_id, source, time.monotonic())
        with self._lock:
            lst = self._entries.pop(uri, [])
            lst = [e for e in lst if not (e.offset == offset and e.text == text)]
            lst.insert(0, entry)
            del lst[self.per_document:]
            self._entries[uri] = lst
            while len(self._entries) > self.documents:
                self._entries.popitem(last=False)

    def lookup(self, uri: str, text: str, offset: int) -> Optional[CacheHit]:
        now = time.monotonic()
        with self._lock:
            entries = list(self._entries.get(uri, ()))
        for e in entries:
            if now - e.created > self.ttl_s:
                continue
            typed = offset - e.offset
            if typed < 0 or typed >= len(e.completion):
                continue
            if len(text) != len(e.text) + typed:
                continue
            if text[e.offset:offset] != e.completion[:typed]:
                continue
            if text[offset:] != e.text[e.offset:] or text[:e.offset] != e.text[:e.offset]:
                continue
            with self._lock:
                self.hits += 1
            return CacheHit(e.completion[typed:], typed, e)
        with self._lock:
            self.misses += 1
        return None

    def forget(self, uri: str) -> None:
        with self._lock:
            self._entries.pop(uri, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._entries.values())


__all__ = ["TypedAheadCache", "CacheEntry", "CacheHit"]
