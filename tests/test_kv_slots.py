"""Several KV caches per engine: the slot policy on fake generators, and the ORT engine on a tiny model (going back
to an earlier prompt is warm, prefilling ahead of a request, cancelling a prefill, the memory bound), with every
result equal to a cold engine's."""

from __future__ import annotations

import threading

import pytest

from intarsia.model.engine import GenerationRequest
from intarsia.model.fim import QWEN25_CODER
from intarsia.model.kv_slots import Slot, SlotPool
from intarsia.model.ort_engine import OrtEngine
from test_engines import NEW, SOURCE, _cold, cold, tiny  # noqa: F401  (fixtures)


class FakeGen:
    def __init__(self, tokens=()):
        self.tokens = list(tokens)

    def get_sequence(self, i):
        return list(self.tokens)

    def rewind_to(self, n):
        del self.tokens[n:]


def _slot(tokens, adapter=None, length=1000):
    return Slot(FakeGen(tokens), length, adapter)


def test_pool_continues_the_slot_sharing_the_longest_prefix():
    pool = SlotPool(3, min_reuse=4)
    a, b = _slot(range(100)), _slot([1000 + i for i in range(100)])
    pool.add(a)
    pool.add(b)
    pick = pool.pick(list(range(90)) + [7, 7], None, 200, 1000)
    assert pick.slot is a and pick.reuse == 90
    pick = pool.pick([1000 + i for i in range(50)], None, 200, 1000)
    assert pick.slot is b and pick.reuse == 49  # the last prompt token is always run
    # Nothing shared: a new slot while there is room, then the least recently used one.
    assert pool.pick([5000, 5001, 5002, 5003, 5004], None, 200, 1000).slot is None
    pool.add(_slot([5000]))
    b.touch()
    pick = pool.pick([9000] * 10, None, 200, 1000)
    assert pick.slot is a and pick.reuse == 0  # a is the least recently used
    # Another adapter or a slot too short never continues: the LRU slot is replaced.
    pick = pool.pick(list(range(50)), "other", 200, 1000)
    assert pick.slot is None and pick.evict is a


def test_pool_memory_bound_and_partial_kv():
    pool = SlotPool(8, bytes_per_token=10, budget_bytes=10 * 2500)
    pool.add(_slot(range(10), length=2048))
    assert pool.pick([99] * 10, None, 100, 2048).evict is not None or len(pool) == 1  # a second 2048 slot: no
    assert pool.pick([99] * 10, None, 100, 2048).slot is not None
    s = _slot(range(10))
    s.all_in_cache = False  # its last token has no KV entry yet
    assert s.reusable(list(range(10)) + [3]) == 9
    pool.drop(everything=True)
    assert len(pool) == 0


def _prompt(start: int, n: int = 600) -> str:
    return QWEN25_CODER.render(SOURCE[start:start + n], SOURCE[start + n:start + n + 120])


def test_going_back_to_an_earlier_prompt_is_warm(tiny, cold):  # noqa: F811
    a, b = _prompt(2000), _prompt(9000)
    with OrtEngine(tiny["ort"], provider="cpu", kv_slots=2) as two, \
            OrtEngine(tiny["ort"], provider="cpu", kv_slots=1) as one:
        for eng in (two, one):
            eng.generate(GenerationRequest(a, max_new_tokens=NEW))
            eng.generate(GenerationRequest(b, max_new_tokens=NEW))
        back2 = two.generate(GenerationRequest(a, max_new_tokens=NEW))
        back1 = one.generate(GenerationRequest(a, max_new_tokens=NEW))
        assert back2.timings.reused_tokens == back2.timings.prompt_tokens - 1 and two.kv_slots == 2
        assert back1.timings.reused_tokens < back1.timings.prompt_tokens // 4 and one.kv_slots == 1
        assert back2.token_ids == back1.token_ids == _cold(cold, a)
        assert two.kv_cache_bytes == 2 * two.max_length * two.kv_bytes_per_token > 0


def test_prefill_ahead_of_the_request(tiny, cold):  # noqa: F811
    p = _prompt(4000, 900)
    with OrtEngine(tiny["ort"], provider="cpu", kv_slots=2) as eng:
        n = len(eng.encode(p))
        assert eng.cached_tokens(p) == 0
        assert eng.prefill(p, chunk=50) == n
        assert eng.cached_tokens(p) == n - 1
        assert eng.prefill(p) == 0  # nothing left to compute
        r = eng.generate(GenerationRequest(p, max_new_tokens=NEW))
        assert r.timings.reused_tokens == n - 1 and not r.extra["rebuilt"]
        assert r.token_ids == _cold(cold, p)


def test_a_cancelled_prefill_leaves_a_usable_cache(tiny, cold):  # noqa: F811
    p = _prompt(6000, 900)
    with OrtEngine(tiny["ort"], provider="cpu") as eng:
        stop = threading.Event()
        done = []

        class Counting:
            def is_set(self):
                done.append(1)
                if len(done) > 3:
                    stop.set()
                return stop.is_set()

        computed = eng.prefill(p, chunk=40, cancel=Counting())
        assert 0 < computed < len(eng.encode(p))
        r = eng.generate(GenerationRequest(p, max_new_tokens=NEW))
        assert r.timings.reused_tokens == computed
        assert r.token_ids == _cold(cold, p)


def test_kv_memory_bound_keeps_one_slot(tiny):  # noqa: F811
    with OrtEngine(tiny["ort"], provider="cpu", kv_slots=4, kv_cache_mb=0) as eng:
        for start in (1000, 5000, 9000):
            eng.generate(GenerationRequest(_prompt(start), max_new_tokens=4))
        assert eng.kv_slots == 1


@pytest.mark.parametrize("slots", [1, 3])
def test_many_places_in_turn_match_a_cold_engine(tiny, cold, slots):  # noqa: F811
    prompts = [_prompt(s, 500) for s in (1500, 3000, 1500, 4500, 3000, 1500)]
    with OrtEngine(tiny["ort"], provider="cpu", kv_slots=slots) as eng:
        for p in prompts:
            assert eng.generate(GenerationRequest(p, max_new_tokens=12)).token_ids == \
                _cold(cold, p, max_new_tokens=12)
        assert eng.kv_slots <= slots
