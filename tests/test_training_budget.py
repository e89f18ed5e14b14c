"""The time budget (training/budget.py): reading it, planning steps and samples to fit, and the trainer's plan
and stop at the deadline (a tiny random model, tests/tiny.py).
"""

from __future__ import annotations

import json
import time

import pytest
from intarsia.training import budget as tb
from intarsia.training.budget import BudgetError, parse_time_budget, plan_steps, resolve_time_budget


@pytest.mark.parametrize("text, seconds", [("20", 1200.0), ("20m", 1200.0), ("1.5", 90.0), ("90s", 90.0),
                                           ("1h", 3600.0), ("1h30m", 5400.0), ("1h 30min", 5400.0),
                                           ("2H", 7200.0), (45, 2700.0), (0.5, 30.0)])
def test_time_budget_reads_minutes_and_durations(text, seconds):
    assert parse_time_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["abc", "0", "-5", "20x", "m", "1h-5m", "", "nan", 0, -3])
def test_bad_time_budgets_are_refused_with_what_to_give(bad):
    with pytest.raises(BudgetError, match="time budget"):
        parse_time_budget(bad)


def test_auto_and_none():
    assert parse_time_budget("none") is None and parse_time_budget(None) is None
    assert resolve_time_budget("auto", "cpu") == tb.DEFAULT_CPU_BUDGET_S == 1200
    assert resolve_time_budget("auto", "cuda") is None
    assert resolve_time_budget("30m", "cuda") == 1800
    assert resolve_time_budget("off", "cpu") is None


def test_the_plan_fits_the_budget():
    """50 tokens/s, 1000-token sequences, one per step; 1200 s of which 100 are spent and 350 promised to
    evaluation and the rest: 750 s train 37,500 tokens, 37 steps."""
    bins = [1000] * 100
    p = plan_steps(tokens_per_s=50, bin_tokens=bins, bin_examples=[2] * 100, sequences_per_step=1,
                   budget_s=1200, elapsed_s=100, eval_s=300, other_s=50, eval_samples=200, measured=True)
    assert p.steps == 37 and p.limit == "budget"
    assert p.tokens == 37_000 and p.examples == 74
    assert p.train_s == pytest.approx(740)
    assert p.total_s <= 1200 and p.total_s == pytest.approx(1190)
    text = p.describe()
    assert "37 step(s)" in text and "measured" in text and "20.0 min" in text and "200 held-out" in text
    assert "over the budget" not in text
    assert json.loads(json.dumps(p.to_json()))["total_s"] == pytest.approx(1190)


def test_uneven_sequences_and_several_per_step():
    bins = [1024, 512] * 20  # mean 768 tokens
    p = plan_steps(tokens_per_s=100, bin_tokens=bins, bin_examples=[3, 1] * 20, sequences_per_step=4,
                   budget_s=600, elapsed_s=60, eval_s=120, other_s=20, eval_samples=100, epochs=2.0)
    # 400 s × 100 tokens/s / (4 × 768) = 13.02 → 13 steps = 52 sequences (wrapping into a second pass)
    assert p.steps == 13 and p.tokens == 26 * 1024 + 26 * 512
    assert p.examples == 80  # every sequence is used at least once
    assert p.total_s <= 600


def test_the_plan_without_a_budget_or_with_max_steps():
    bins = [800] * 10
    p = plan_steps(tokens_per_s=50, bin_tokens=bins, bin_examples=[1] * 10, sequences_per_step=3, budget_s=None,
                   elapsed_s=5, eval_s=10, other_s=1, eval_samples=20)
    assert p.steps == 4 and p.limit == "data"  # ceil(10 / 3): one pass
    p = plan_steps(tokens_per_s=50, bin_tokens=bins, bin_examples=[1] * 10, sequences_per_step=3, budget_s=None,
                   elapsed_s=5, eval_s=10, other_s=1, eval_samples=20, epochs=2.0)
    assert p.steps == 8
    p = plan_steps(tokens_per_s=1e6, bin_tokens=bins, bin_examples=[1] * 10, sequences_per_step=1,
                   budget_s=3600, elapsed_s=5, eval_s=10, other_s=1, eval_samples=20, max_steps=3)
    assert p.steps == 3 and p.limit == "max_steps"
    # a budget with room to spare: one pass over the data, not more
    p = plan_steps(tokens_per_s=1e6, bin_tokens=bins, bin_examples=[1] * 10, sequences_per_step=1,
                   budget_s=3600, elapsed_s=5, eval_s=10, other_s=1, eval_samples=20)
    assert p.steps == 10 and p.limit == "data" and p.total_s < 3600


def test_no_time_left_still_trains_one_step_and_says_so():
    p = plan_steps(tokens_per_s=50, bin_tokens=[1000] * 5, bin_examples=[1] * 5, sequences_per_step=1,
                   budget_s=600, elapsed_s=500, eval_s=300, other_s=30, eval_samples=200)
    assert p.steps == 1 and "over the budget" in p.describe()
    with pytest.raises(BudgetError):
        plan_steps(tokens_per_s=0, bin_tokens=[1], bin_examples=[1], sequences_per_step=1, budget_s=60,
                   elapsed_s=0, eval_s=0, other_s=0, eval_samples=0)


def test_a_plan_that_leaves_training_little_time_says_so_and_what_budget_would_not():
    # the measured first run on 2 cores: 525 s before training, 517 s for the candidate, 108 s for the rest
    p = plan_steps(tokens_per_s=83, bin_tokens=[1000] * 100, bin_examples=[1] * 100, sequences_per_step=1,
                   budget_s=1200, elapsed_s=525, eval_s=517, other_s=108, eval_samples=100, measured=True)
    assert p.steps == 4 and p.train_share < 0.25
    w = p.warning()
    assert "will change little" in w and "--time-budget 40m" in w  # 2 × 19.2 min, rounded up to 5 minutes
    ok = plan_steps(tokens_per_s=83, bin_tokens=[1000] * 100, bin_examples=[1] * 100, sequences_per_step=1,
                    budget_s=1200, elapsed_s=300, eval_s=300, other_s=50, eval_samples=60, measured=True)
    assert ok.train_share > 0.25 and ok.warning() == ""
    assert plan_steps(tokens_per_s=83, bin_tokens=[1000] * 10, bin_examples=[1] * 10, sequences_per_step=1,
                      budget_s=None, elapsed_s=300, eval_s=300, other_s=50, eval_samples=60).warning() == ""


def test_a_resumed_run_plans_the_steps_after_those_taken_with_its_own_budget():
    bins = [1000] * 100
    p = plan_steps(tokens_per_s=50, bin_tokens=bins, bin_examples=[2] * 100, sequences_per_step=1,
                   budget_s=1200, elapsed_s=100, eval_s=300, other_s=50, eval_samples=200, measured=True,
                   done_steps=4)
    # the same 37 steps' worth of time as a fresh run, after the 4 already taken
    assert p.steps == 41 and p.done_steps == 4 and p.limit == "budget"
    assert p.tokens == 37_000 and p.train_s == pytest.approx(740)
    assert "41 step(s), 37 of them now (4 done before)" in p.describe()
    # near the end of the data: the rest of one pass, not more
    p = plan_steps(tokens_per_s=50, bin_tokens=[1000] * 10, bin_examples=[1] * 10, sequences_per_step=1,
                   budget_s=1200, elapsed_s=100, eval_s=300, other_s=50, eval_samples=200, done_steps=8)
    assert p.steps == 10 and p.limit == "data" and p.tokens == 2000


def test_step_size_and_examples_before_measuring():
    # 30,000 tokens expected: 8192-token steps would be 3; 16 steps want one 1024-token sequence each
    assert tb.batch_for_budget(8192, 1024, 30_000, 16) == 1024
    assert tb.batch_for_budget(8192, 512, 100_000, 16) == 6144 - 6144 % 512  # 6250 → whole sequences
    assert tb.batch_for_budget(8192, 1024, 1e6, 16) == 8192
    assert tb.batch_for_budget(8192, 1024, 30_000, 0) == 8192
    assert tb.batch_for_budget(8192, 1024, None, 16) == 8192
    assert tb.render_token_target(None, 50) is None
    assert tb.render_token_target(1200, 50) == 120_000  # twice what the whole budget trains


def test_evaluation_samples_fit_half_the_budget_but_not_below_the_floor():
    # 200 samples × 2 passes × 1 s = 400 s ≤ 600 s: all of them
    assert tb.fit_eval_samples(200, seconds_per_sample=1.0, passes=2, budget_s=1200, floor=100) == 200
    # × 2.5 s: 1000 s > 600 s; 600 / 5 = 120
    assert tb.fit_eval_samples(200, seconds_per_sample=2.5, passes=2, budget_s=1200, floor=100) == 120
    # × 10 s: 30 fit, the floor keeps 100
    assert tb.fit_eval_samples(200, seconds_per_sample=10, passes=2, budget_s=1200, floor=100) == 100
    assert tb.fit_eval_samples(60, seconds_per_sample=10, passes=2, budget_s=1200, floor=100) == 60
    assert tb.fit_eval_samples(200, seconds_per_sample=10, passes=2, budget_s=None, floor=100) == 200
    # the default floor: measured on 2 cores, 5 s a sample and a 20-minute budget → 60 samples, and training keeps
    # the other half of the budget (a floor of 100 left it one step)
    assert tb.fit_eval_samples(200, seconds_per_sample=5.0, passes=2, budget_s=1200) == 60
    assert tb.fit_eval_samples(200, seconds_per_sample=50.0, passes=2, budget_s=1200) == tb.MIN_EVAL_SAMPLES
    # perplexity (reported, never judged) fits 4 % of the budget: 48 s × 3 × 80 tok/s / (2 × 830) ≈ 6 examples
    assert tb.fit_perplexity_examples(16, 830, tokens_per_s=80, budget_s=1200) == 6
    assert tb.fit_perplexity_examples(16, 830, tokens_per_s=80, budget_s=None) == 16
    assert tb.fit_perplexity_examples(16, 830, tokens_per_s=0.1, budget_s=60) == 0
    assert tb.evaluation_estimate([1000, 3000], factor=1.1, open_s=2, export_s=10) == pytest.approx(16.4)
    assert tb.perplexity_estimate(3000, passes=2, tokens_per_s=50, load_s=5) == pytest.approx(45)
    assert tb.perplexity_estimate(0, passes=2, tokens_per_s=50) == 0


def test_throughput_prior_and_record(tmp_path):
    from tiny import make_tiny_qwen2

    assert tb.prior_tokens_per_s("cpu", cores=2) == pytest.approx(50)
    assert tb.prior_tokens_per_s("cpu", cores=2, params=1.5e9) == pytest.approx(50 / 3)
    assert tb.prior_tokens_per_s("cpu", cores=2, measured=37.5) == 37.5
    assert tb.prior_tokens_per_s("cuda") == tb.PRIOR_CUDA_TOKENS_PER_S
    qwen05 = tmp_path / "q"
    qwen05.mkdir()
    (qwen05 / "config.json").write_text(json.dumps({"hidden_size": 896, "num_hidden_layers": 24,
                                                    "intermediate_size": 4864, "num_attention_heads": 14,
                                                    "num_key_value_heads": 2, "vocab_size": 151936}))
    assert tb.model_params(qwen05) == pytest.approx(0.494e9, rel=0.02)
    assert tb.model_params(tmp_path / "missing") is None
    tiny = make_tiny_qwen2(tmp_path / "tiny")
    assert 0 < tb.model_params(tiny) < 1e8
    f = tmp_path / "store" / "throughput.json"
    key = tb.throughput_key("cpu", 1024, 16)
    assert tb.read_throughput(f, key) is None
    tb.record_throughput(f, key, 48.123)
    tb.record_throughput(f, tb.throughput_key("cuda", 1024, 16), 5000)
    assert tb.read_throughput(f, key) == 48.12
    f.write_text("{broken")
    assert tb.read_throughput(f, key) is None


# ---------------------------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from tiny import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "hf")


def _examples(tiny_hf, n=24):
    from intarsia.training.trainer import tokenize
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_hf))
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    return [tokenize(tok, f"<|fim_prefix|>def f{i}(x):\n    return <|fim_suffix|>\n<|fim_middle|>", f"x * {i % 3}", eos)
            for i in range(n)]


def test_the_schedule_is_transformers_cosine_with_a_warmup_that_never_starts_at_zero():
    pytest.importorskip("torch")
    import torch
    from intarsia.training.trainer import cosine_with_warmup
    from transformers import get_cosine_schedule_with_warmup

    for total, ratio in ((12, 0.0), (40, 0.05), (7, 0.3), (4, 0.05)):
        warm = max(1, int(total * ratio))
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ref = get_cosine_schedule_with_warmup(opt, warm, total)
        for s in range(total):
            got = cosine_with_warmup(s, total, ratio)
            if s >= warm:
                assert got == pytest.approx(ref.lr_lambdas[0](s), abs=1e-12)
            else:  # every warm-up step learns, rising linearly to the peak
                assert got == pytest.approx((s + 1) / (warm + 1)) and got > 0
    assert cosine_with_warmup(0, 4, 0.05) == 0.5  # (a 4-step budget plan: its first step at half the peak)


def test_the_trainer_plans_after_its_first_step_and_a_resumed_run_plans_again(tiny_hf, tmp_path):
    from intarsia.training.trainer import TrainConfig, first_epoch, train_lora

    exs = _examples(tiny_hf)
    cfg = TrainConfig(context_length=128, batch_tokens=256, epochs=5.0, learning_rate=5e-3, save_every=2)
    seen = []

    def plan(cal):
        seen.append(cal)
        return 4

    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_hf, exs, tmp_path / "run", cfg, device="cpu", progress=False, plan=plan, stop_after=3)
    (cal,) = seen
    assert cal.tokens_per_s > 0 and cal.sequences_per_step == 2
    assert (cal.bin_tokens, cal.bin_examples) == first_epoch(exs, cfg)
    assert sum(cal.bin_examples) == len(exs)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-3" / "state.json").read_text())
    assert state["total_steps"] == 4 and state["planned"] is True
    assert cal.done_steps == 0
    # The same command later: its own budget, the three steps already taken counted in the total.
    res = train_lora(tiny_hf, exs, tmp_path / "run", cfg, device="cpu", progress=False,
                     plan=lambda c: (seen.append(c), c.done_steps + 3)[1])
    assert seen[-1].done_steps == 3 and seen[-1].tokens_per_s > 0
    assert res.resumed_from == 3 and res.steps == 6 and res.planned_steps == 6 and res.stopped is None


def test_training_stops_at_the_deadline_keeps_its_checkpoint_and_saves_the_adapter(tiny_hf, tmp_path):
    from intarsia.training.trainer import TrainConfig, train_lora

    exs = _examples(tiny_hf, 48)
    cfg = TrainConfig(context_length=128, batch_tokens=128, max_steps=500, save_every=1000)
    t0 = time.monotonic()
    res = train_lora(tiny_hf, exs, tmp_path / "run", cfg, device="cpu", progress=False,
                     deadline=time.monotonic() + 1.5)
    took = time.monotonic() - t0
    assert res.stopped == "time budget" and 1 <= res.steps < 500 and res.planned_steps == 500
    assert res.measured_tokens_per_s and res.measured_tokens_per_s > 0
    assert (res.adapter_dir / "adapter_model.safetensors").exists()
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{res.steps}" / "state.json").read_text())
    assert state["step"] == res.steps
    assert took < 60  # the model load and one step past the deadline at most, not 500 steps
    # a deadline already passed still trains one step (the adapter exists for evaluation)
    res = train_lora(tiny_hf, exs, tmp_path / "run2", cfg, device="cpu", progress=False,
                     deadline=time.monotonic() - 1)
    assert res.steps == 1 and res.stopped == "time budget"
