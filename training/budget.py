"""The time budget of `intarsia train`: what to train and evaluate in the time given, and when to stop.

A run that takes as long as the data allows is a run nobody starts on a laptop. With a budget (`--time-budget`,
20 minutes by default on a CPU, none on CUDA) the run is planned from measurements:

- before training: a prior throughput (packed tokens per second: the last completed run's measurement in this
  workspace's store, else 25 tokens/s per CPU core for a 0.5B model, scaled by parameter count) decides how many
  examples are worth rendering (`render_token_target`: twice what the whole budget could train) and how large a
  step is (`batch_for_budget`: smaller steps when the budget would give fewer than `min_steps`);
- evaluation is measured first: the served model completes the held-out samples before training, so the time the
  candidate's pass will take is known per sample. Both passes together get at most half of the budget
  (`fit_eval_samples` cuts the sample count down to what fits, never below MIN_EVAL_SAMPLES), and the report-only
  perplexity pass a few percent (`fit_perplexity_examples`): measured on 2 cores, a gate that kept 100 samples at
  5 s each left one training step of a 20-minute budget, and an unchanged adapter is 20 minutes lost;
- in the first optimizer step the trainer measures the throughput, and `plan_steps` turns what is left of the budget
  (minus the candidate's evaluation and the rest) into a number of steps; `Plan.describe` is what is printed, and
  `Plan.warning` says so when training still gets less than a quarter of the budget, with the budget that would
  give it half;
- the trainer stops at the deadline (before a step its last step's duration says would end past it), keeps the
  checkpoint and hands the adapter to evaluation. The same command later resumes from that checkpoint and plans
  again with its own budget (`done_steps`): the steps already taken count, the time is new.

Everything here is arithmetic on measured numbers: no model, no clock of its own (callers pass the times).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from intarsia.model.cache import write_json_atomic
from intarsia.model.errors import IntarsiaError

DEFAULT_CPU_BUDGET_S = 20 * 60.0
# benchmarks/results/train_peft_0.5b_cpu.json: 49.3 packed tokens/s for the 0.5B on 2 cores
PRIOR_CPU_TOKENS_PER_S_PER_CORE = 25.0
PRIOR_CUDA_TOKENS_PER_S = 4000.0
PRIOR_PARAMS = 0.5e9
RENDER_MARGIN = 2.0  # examples rendered: this many times what the whole budget could train at the prior speed
TRAIN_SHARE_GUESS = 0.5  # the share of a budget assumed to go to training when sizing a step before measuring
EVAL_SHARE = 0.5  # the most of a budget the held-out evaluation (both passes) may take
# The fewest held-out samples a budget cuts the evaluation to: below it, the gate's interval is too wide to promote
# anything (one sample is 2.5 exact-match points at 40).
MIN_EVAL_SAMPLES = 40
PERPLEXITY_SHARE = 0.04  # the most of a budget the (report-only) perplexity pass may take
# A plan whose training gets less than this share of the budget is announced as one that will change little.
LOW_TRAIN_SHARE = 0.25
PROBE_SAMPLES = 16  # served-model completions timed before the number of held-out samples is decided
# A run-time LoRA adapter vs the plain model in the ORT engine: ~5 % slower at 500-1500-token prompts
# (benchmarks/results/engines_lora_0.5b_cpu.json), rounded up.
LORA_EVAL_FACTOR = 1.1
EXPORT_S = 10.0  # exporting the candidate for ONNX Runtime
RESERVE_S = 15.0  # reports, storing the version, the checkpoint of the last step
AUTO = "auto"

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(hr|h|min|m|sec|s)")


class BudgetError(IntarsiaError):
    """A time budget that cannot be read, or planner inputs out of range."""


def parse_time_budget(value: Union[str, float, int, None]) -> Union[float, str, None]:
    """Seconds from "20" (minutes), "20m", "90s", "1h", "1h30m" or a number of minutes; None for "none"/"off";
    AUTO for "auto". Raises BudgetError for anything else or a budget of zero or less."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise BudgetError(f"time budget must be a positive number of minutes, not {value}")
        return float(value) * 60.0
    text = str(value).strip().lower()
    if text in ("none", "off", "no", "unlimited"):
        return None
    if text == AUTO:
        return AUTO
    try:
        minutes = float(text)
    except ValueError:
        minutes = None
    if minutes is not None:
        if not math.isfinite(minutes) or minutes <= 0:
            raise BudgetError(f"time budget must be positive, not {value!r}")
        return minutes * 60.0
    compact = text.replace(" ", "")
    parts = list(_PART.finditer(compact))
    if not parts or "".join(m.group(0) for m in parts) != compact:
        raise BudgetError(f"cannot read the time budget {value!r}: give minutes (20), a duration (20m, 90s, 1h, "
                          "1h30m), 'auto' or 'none'")
    seconds = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in parts)
    if seconds <= 0:
        raise BudgetError(f"time budget must be positive, not {value!r}")
    return seconds


def resolve_time_budget(value: Union[str, float, int, None], device: str) -> Optional[float]:
    """The budget in seconds on `device` ("auto": DEFAULT_CPU_BUDGET_S on a CPU, none on CUDA), or None."""
    got = parse_time_budget(value)
    if got == AUTO:
        return None if device == "cuda" else DEFAULT_CPU_BUDGET_S
    return got  # type: ignore[return-value]


def format_minutes(seconds: Optional[float]) -> str:
    if seconds is None:
        return "none"
    return f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------------------------------------- throughput


def model_params(hf_dir: Path) -> Optional[float]:
    """Approximate parameter count from a Hugging Face config.json (decoder-only: attention, MLP, embeddings)."""
    try:
        cfg = json.loads((Path(hf_dir) / "config.json").read_text())
        h, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        inter = int(cfg.get("intermediate_size", 4 * h))
        heads = int(cfg.get("num_attention_heads", 1))
        kv = int(cfg.get("num_key_value_heads", heads))
        vocab = int(cfg.get("vocab_size", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    head_dim = h // max(heads, 1)
    attention = 2 * h * h + 2 * h * kv * head_dim
    return float(layers * (attention + 3 * h * inter) + vocab * h)


def prior_tokens_per_s(device: str, *, params: Optional[float] = None, cores: Optional[int] = None,
                       measured: Optional[float] = None) -> float:
    """Packed training tokens per second expected before measuring: `measured` (a completed run's) when known,
    else PRIOR_CPU_TOKENS_PER_S_PER_CORE per core (PRIOR_CUDA_TOKENS_PER_S on CUDA) for a 0.5B model, scaled by
    the parameter count."""
    if measured is not None and measured > 0:
        return float(measured)
    if device == "cuda":
        base = PRIOR_CUDA_TOKENS_PER_S
    else:
        base = PRIOR_CPU_TOKENS_PER_S_PER_CORE * max(1, cores if cores is not None else (os.cpu_count() or 1))
    scale = PRIOR_PARAMS / params if params else 1.0
    return base * min(max(scale, 0.05), 50.0)


def throughput_key(device: str, context_length: int, rank: int) -> str:
    return f"{device}:ctx{context_length}:r{rank}"


def read_throughput(path: Path, key: str) -> Optional[float]:
    """The packed tokens/s a completed run measured for `key` (throughput_key), or None."""
    try:
        data = json.loads(Path(path).read_text())
        got = float(data[key]["tokens_per_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return got if got > 0 and math.isfinite(got) else None


def record_throughput(path: Path, key: str, tokens_per_s: float) -> None:
    """Remember a completed run's measured throughput (written whole, then renamed)."""
    if not tokens_per_s or tokens_per_s <= 0 or not math.isfinite(tokens_per_s):
        return
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = {"tokens_per_s": round(float(tokens_per_s), 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


# ------------------------------------------------------------------------------------------------- before training


def render_token_target(budget_s: Optional[float], tokens_per_s: float) -> Optional[int]:
    """How many tokens of examples to render: RENDER_MARGIN times what the whole budget trains at `tokens_per_s`
    (None without a budget: all of them). It depends on the budget and the prior only, so the same command on the
    same data renders the same examples (and an interrupted run resumes)."""
    if budget_s is None:
        return None
    return max(1, int(budget_s * tokens_per_s * RENDER_MARGIN))


def batch_for_budget(batch_tokens: int, context_length: int, expected_tokens: Optional[float],
                     min_steps: int) -> int:
    """`batch_tokens`, or fewer (whole sequences of `context_length`, at least one) when `expected_tokens` would
    make fewer than `min_steps` optimizer steps of it. `min_steps` 0 or no expectation: unchanged."""
    if min_steps <= 0 or expected_tokens is None or expected_tokens <= 0:
        return batch_tokens
    if expected_tokens / batch_tokens >= min_steps:
        return batch_tokens
    per_step = expected_tokens / min_steps
    return min(batch_tokens, max(context_length, int(per_step // context_length) * context_length))


def fit_eval_samples(requested: int, *, seconds_per_sample: float, passes: float, budget_s: Optional[float],
                     floor: int = MIN_EVAL_SAMPLES, share: float = EVAL_SHARE) -> int:
    """How many of `requested` held-out samples to evaluate: all of them without a budget or when `passes` model
    passes over them (each `seconds_per_sample`) take at most `share` of the budget; else as many as fit, so that
    training keeps the rest of the budget, but never fewer than `floor` (below it the gate could not promote
    anything: training would be time lost)."""
    if budget_s is None or requested <= floor or seconds_per_sample <= 0 or passes <= 0:
        return requested
    fit = int(share * budget_s / (seconds_per_sample * passes))
    return max(min(requested, floor), min(requested, fit))


def fit_perplexity_examples(requested: int, tokens_each: float, *, tokens_per_s: float, budget_s: Optional[float],
                            passes: int = 2, share: float = PERPLEXITY_SHARE) -> int:
    """How many of `requested` held-out examples (about `tokens_each` tokens each) the perplexity pass scores: all
    without a budget, else as many as `passes` forward passes fit in `share` of it (perplexity is reported, never
    judged, so it gives way to training)."""
    if budget_s is None or requested <= 0 or tokens_each <= 0:
        return requested
    fit = int(share * budget_s * 3 * tokens_per_s / (passes * tokens_each))
    return max(0, min(requested, fit))


def evaluation_estimate(reference_ms: Sequence[float], *, factor: float = 1.0, open_s: float = 0.0,
                        export_s: float = 0.0) -> float:
    """Seconds the candidate's evaluation pass will take: the served model's measured time on the same samples
    (same prompts, same order, same KV reuse) times `factor` (LORA_EVAL_FACTOR when the served model is the
    plain model: a run-time adapter costs a little more), plus opening the engine and exporting the adapter."""
    return sum(reference_ms) / 1000 * factor + open_s + export_s


def perplexity_estimate(tokens: int, *, passes: int, tokens_per_s: float, load_s: float = 5.0) -> float:
    """Seconds the perplexity pass takes: `passes` forward passes over `tokens`, a forward pass being about a third
    of a training step's work per token."""
    if tokens <= 0 or passes <= 0:
        return 0.0
    return load_s + passes * tokens / (3 * tokens_per_s)


# ------------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """What a run will do and how long each part should take (seconds)."""

    budget_s: Optional[float]
    tokens_per_s: float
    measured: bool  # tokens_per_s measured in this run's first step(s), not a prior
    steps: int
    sequences_per_step: int
    tokens: int  # packed tokens the steps go through
    examples: int  # distinct examples they hold
    train_s: float
    eval_samples: int
    eval_s: float  # evaluation still to come (the candidate's pass) and perplexity
    other_s: float  # export, reports, reserve
    elapsed_s: float  # spent before training (build, crawl, rendering, the served model's evaluation)
    limit: str  # what set the steps: "budget", "data" or "max_steps"
    done_steps: int = 0  # steps an earlier run of the same command took (a resumed run): `steps` counts them

    @property
    def train_share(self) -> Optional[float]:
        """The share of the budget that training gets (None without a budget)."""
        return self.train_s / self.budget_s if self.budget_s else None

    def warning(self) -> str:
        """What to tell the user when this budget leaves training too little time to change the adapter much,
        with the budget that would give training as much time as everything else; "" when it does not."""
        share = self.train_share
        if share is None or share >= LOW_TRAIN_SHARE:
            return ""
        rest = self.elapsed_s + self.eval_s + self.other_s
        enough = math.ceil(2 * rest / 60 / 5) * 5
        return (f"this time budget leaves ~{format_minutes(self.train_s)} of {format_minutes(self.budget_s)} for "
                f"training ({self.steps - self.done_steps} step(s)): evaluation and the rest take "
                f"{format_minutes(rest)}; the adapter will change little. --time-budget {enough}m would give "
                f"training as much time as the rest")

    @property
    def total_s(self) -> float:
        return self.elapsed_s + self.train_s + self.eval_s + self.other_s

    def to_json(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()} | \
            {"total_s": round(self.total_s, 1)}

    def describe(self) -> str:
        speed = (f"{self.tokens_per_s:.0f} packed tokens/s "
                 f"{'measured in the first step' if self.measured else 'expected'}")
        why = {"budget": "as many as the budget allows", "data": "one pass over the examples",
               "max_steps": "--max-steps"}.get(self.limit, self.limit)
        over = ""
        if self.budget_s is not None and self.total_s > self.budget_s * 1.02:
            rest = self.elapsed_s + self.eval_s + self.other_s
            over = f" (over the budget: the work before and after training alone takes {format_minutes(rest)})"
        steps = f"{self.steps} step(s)" if not self.done_steps else \
            f"{self.steps} step(s), {self.steps - self.done_steps} of them now ({self.done_steps} done before)"
        return (f"plan ({speed}; time budget {format_minutes(self.budget_s)}): {steps} of "
                f"{self.sequences_per_step} sequence(s) ({why}), {self.tokens} tokens from {self.examples} "
                f"examples; training ~{format_minutes(self.train_s)}, evaluation ~{format_minutes(self.eval_s)} "
                f"({self.eval_samples} held-out samples), other ~{format_minutes(self.other_s)}; done in "
                f"~{format_minutes(self.total_s)} ({format_minutes(self.elapsed_s)} so far){over}")


def plan_steps(*, tokens_per_s: float, bin_tokens: Sequence[int], bin_examples: Sequence[int],
               sequences_per_step: int, budget_s: Optional[float], elapsed_s: float, eval_s: float,
               other_s: float, eval_samples: int, max_steps: int = 0, epochs: float = 1.0,
               measured: bool = False, done_steps: int = 0) -> Plan:
    """Steps that fit the budget (`bin_tokens`/`bin_examples`: the packed sequences in training order; steps go
    through them in order, `sequences_per_step` at a time). Without a budget: `max_steps`, else `epochs` passes.
    With one: at most what `budget_s - elapsed_s - eval_s - other_s` trains at `tokens_per_s`, at least one.
    `done_steps`: steps an earlier run took (a resumed run); the budget is this run's, for the steps after them,
    and the plan counts them in its total."""
    if tokens_per_s <= 0 or not math.isfinite(tokens_per_s):
        raise BudgetError(f"throughput must be positive, not {tokens_per_s}")
    if not bin_tokens or sequences_per_step < 1:
        raise BudgetError("nothing to plan: no packed sequences")
    n = len(bin_tokens)
    data_steps = max_steps or max(1, math.ceil(math.ceil(n / sequences_per_step) * epochs))
    limit = "max_steps" if max_steps else "data"
    done_steps = max(0, done_steps)
    steps = max(data_steps, done_steps + 1)
    if budget_s is not None:
        left = budget_s - elapsed_s - eval_s - other_s
        step_tokens = sequences_per_step * (sum(bin_tokens) / n)
        fit = max(1, int(left * tokens_per_s / step_tokens)) if left > 0 else 1
        if done_steps + fit < steps:
            steps, limit = done_steps + fit, "budget"
    used = [k % n for k in range(done_steps * sequences_per_step, steps * sequences_per_step)]
    tokens = sum(bin_tokens[i] for i in used)
    examples = sum(bin_examples[i] for i in set(used))
    return Plan(budget_s=budget_s, tokens_per_s=tokens_per_s, measured=measured, steps=steps,
                sequences_per_step=sequences_per_step, tokens=tokens, examples=examples,
                train_s=tokens / tokens_per_s, eval_samples=eval_samples, eval_s=eval_s, other_s=other_s,
                elapsed_s=elapsed_s, limit=limit, done_steps=done_steps)


__all__ = ["AUTO", "BudgetError", "DEFAULT_CPU_BUDGET_S", "MIN_EVAL_SAMPLES", "Plan", "batch_for_budget",
           "evaluation_estimate", "fit_eval_samples", "fit_perplexity_examples", "format_minutes", "model_params", "parse_time_budget", "perplexity_estimate",
           "plan_steps", "prior_tokens_per_s", "read_throughput", "record_throughput", "render_token_target",
           "resolve_time_budget", "throughput_key"]
