"""The shipped FIM adapter on the real default model: building applies it, the server serves it by default, the
adapted model ends its middles by itself, and `fimAdapter: false` gives exactly the plain model.

Uses the default model built as `intarsia model build` builds it (cached after the first run). The prompts are
written for this test (none comes from an evaluation set).
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

GAPS = [
    ('def is_even(n):\n    """Return True when n is even."""\n',
     "\n\n\ndef main():\n    print(is_even(4))\n"),
    ("import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n",
     "    return [line.rstrip() for line in lines]\n"),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
     "\n    def pop(self):\n        return self.items.pop()\n"),
    ("def total(prices, tax):\n    subtotal = sum(prices)\n",
     "    return round(subtotal + tax_amount, 2)\n"),
]


@pytest.fixture(scope="module")
def built():
    from intarsia.model.build import build

    return build("qwen2.5-coder-0.5b", progress=False)


def test_default_build_serves_the_fim_adapter_and_off_is_the_plain_model(built):
    from intarsia.model.engine import FINISH_EOS, FINISH_STOP, GenerationRequest
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.model.ort_engine import OrtEngine
    from intarsia.model.shipped import adapter_dir_for
    from intarsia.model.factory import FIM_ADAPTER, open_engine
    from intarsia.server.lsp.settings import Settings

    assert built.fim_adapter is not None and built.fim_adapter.is_file()
    assert adapter_dir_for("qwen2.5-coder-0.5b").name in built.fim_adapter.name
    reqs = [GenerationRequest(prompt=QWEN25_CODER.render(p, s), max_new_tokens=48, stop=QWEN25_CODER.stop_strings)
            for p, s in GAPS]

    on = open_engine(Settings(engine="ort", device="cpu").engine_spec(None))
    try:
        assert on.engine.default_adapter == FIM_ADAPTER
        adapted = [on.engine.generate(r) for r in reqs]
    finally:
        on.engine.close()
    stopped = [r.finish_reason in (FINISH_EOS, FINISH_STOP) for r in adapted]
    assert all(stopped), [(r.text, r.finish_reason) for r in adapted]

    off = open_engine(Settings(engine="ort", device="cpu", fim_adapter=False).engine_spec(None))
    try:
        assert off.engine.default_adapter is None
        plain_served = [off.engine.generate(r).text for r in reqs]
    finally:
        off.engine.close()
    with OrtEngine(built.path) as plain_engine:
        plain = [plain_engine.generate(r).text for r in reqs]
    assert plain_served == plain
    assert [r.text for r in adapted] != plain
