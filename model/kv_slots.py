"""Several KV caches ("slots") per engine, kept by recency, so that going back to a file or a function is warm.

A completion's prompt is mostly the same from one keystroke to the next, and the engine reuses the KV cache of the
longest common token prefix. With one cache, moving to another file or function throws that cache away, and
coming back computes the whole prompt again: seconds on a CPU. An onnxruntime-genai generator owns one KV cache;
`SlotPool` keeps a few of them and decides, for a prompt, which one to continue:

- the slot (same adapter, long enough) whose cached tokens share the longest prefix with the prompt, when that
  prefix is worth keeping (`min_reuse` tokens, or the whole prompt but its last token);
- else a new slot, while there are fewer than `slots` and their memory stays within `budget_bytes`;
- else the least recently used slot, rewound (or replaced when its adapter or length does not fit).

The pool is plain bookkeeping over objects with `get_sequence(0)` and `rewind_to(n)` (onnxruntime-genai's
`Generator`), so the policy is tested without a model. The engine (model/ort_engine.py) creates, fills and drops
the generators; it tells the pool which tokens of a slot have a KV entry (`all_in_cache`: a token chosen by
`generate_next_token` is in the sequence before its KV entry exists).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .decoding import common_prefix_len

MIN_REUSE = 64  # a shorter shared prefix is not worth keeping a slot busy for (when another slot is free)
# A slot is continued only when that drops at most this many of its tokens (typing: the last request's suffix and
# generation), or fewer than it keeps; otherwise the prompt takes a free slot (or the least recently used one), so
# that a short prompt, a pre-fill or a visit elsewhere never wipes a longer cache that is still worth having.
EXTEND_SLACK = 256


_clock = itertools.count(1)


@dataclass(eq=False)
class Slot:
    gen: Any
    max_length: int
    adapter: Optional[str]
    all_in_cache: bool = True
    last_used: int = field(default_factory=lambda: next(_clock))

    def cached(self) -> list[int]:
        return [int(t) for t in self.gen.get_sequence(0)]

    def reusable(self, prompt: Sequence[int], *, run_last: bool = True) -> int:
        """Prompt tokens whose KV entries this slot holds; with `run_last`, at least one prompt token is left to
        run (its logits start a generation; a prefill needs none)."""
        cached = self.cached()
        in_cache = len(cached) if self.all_in_cache else max(len(cached) - 1, 0)
        limit = len(prompt) - 1 if run_last else len(prompt)
        return max(0, min(common_prefix_len(cached, prompt), limit, in_cache))

    def touch(self) -> None:
        self.last_used = next(_clock)


@dataclass(frozen=True)
class Pick:
    """Continue `slot` after rewinding it to `reuse` tokens; or, with `slot` None, make a new one (after dropping
    `evict`, when set)."""

    slot: Optional[Slot]
    reuse: int
    evict: Optional[Slot] = None


class SlotPool:
    """See the module docstring. Not thread-safe: the engine calls it under its lock."""

    def __init__(self, slots: int = 1, *, bytes_per_token: int = 0, budget_bytes: Optional[int] = None,
                 min_reuse: int = MIN_REUSE):
        self.max_slots = max(int(slots), 1)
        self.bytes_per_token = max(int(bytes_per_token), 0)
        self.budget_bytes = budget_bytes
        self.min_reuse = min_reuse
        self.slots: list[Slot] = []

    # ---- accounting

    def slot_bytes(self, max_length: int) -> int:
        return self.bytes_per_token * max_length

    @property
    def bytes(self) -> int:
        return sum(self.slot_bytes(s.max_length) for s in self.slots)

    def _room_for(self, max_length: int) -> bool:
        if len(self.slots) >= self.max_slots:
            return False
        if self.budget_bytes is None or not self.slots:
            return True  # one slot is always allowed
        return self.bytes + self.slot_bytes(max_length) <= self.budget_bytes

    # ---- choosing

    def best(self, prompt: Sequence[int], adapter: Optional[str], needed: int = 0, *,
             run_last: bool = True) -> tuple[Optional[Slot], int]:
        """The slot holding the most of `prompt` (same adapter, long enough), and how much."""
        best, reuse = None, -1
        for s in self.slots:
            if s.adapter != adapter or s.max_length < needed:
                continue
            r = s.reusable(prompt, run_last=run_last)
            if r > reuse:
                best, reuse = s, r
        return best, max(reuse, 0)

    def pick(self, prompt: Sequence[int], adapter: Optional[str], needed: int, max_length: int, *,
             run_last: bool = True, extend_only: bool = False) -> Pick:
        """Where `prompt` goes. `extend_only` (pre-filling): continue a slot only if that drops at most
        `EXTEND_SLACK` of its tokens; else take a free or the least recently used slot."""
        best, reuse = self.best(prompt, adapter, needed, run_last=run_last)
        if best is not None:
            dropped = len(best.cached()) - reuse
            keeps = reuse >= min(self.min_reuse, len(prompt) - 1) and reuse > 0
            if keeps and (dropped <= EXTEND_SLACK or (not extend_only and dropped <= reuse)):
                return Pick(best, reuse)
        if self._room_for(max_length):
            return Pick(None, 0)
        if not self.slots:
            return Pick(None, 0)
        lru = min(self.slots, key=lambda s: s.last_used)
        if lru.adapter == adapter and lru.max_length >= needed:
            return Pick(lru, lru.reusable(prompt, run_last=run_last))
        return Pick(None, 0, evict=lru)

    # ---- membership

    def add(self, slot: Slot) -> None:
        self.slots.append(slot)

    def remove(self, slot: Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)

    def drop(self, adapter: Optional[str] = None, *, everything: bool = False) -> None:
        """Forget every slot (`everything`) or those running `adapter`."""
        self.slots = [] if everything else [s for s in self.slots if s.adapter != adapter]

    def __len__(self) -> int:
        return len(self.slots)


__all__ = ["Slot", "SlotPool", "Pick", "MIN_REUSE", "EXTEND_SLACK"]
