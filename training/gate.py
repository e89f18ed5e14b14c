"""The promotion gate: is the candidate adapter better than the served model on the same held-out samples?

Two averages over a few hundred samples differ by chance alone; a gate that promotes whichever is higher swaps
adapters back and forth on noise. This gate compares the two models sample by sample (both completed the same
held-out samples, so each sample gives a paired difference: +1, 0 or -1 in exact match, a number in [-1, 1] in edit
similarity) and asks how sure the gain is, with a seeded bootstrap of those paired differences:

- `resamples` times, the samples are drawn again with replacement, within each kind of sample (next line, rest of
  line, block, body: stratified, so every resample has the evaluation's mix of kinds), and the mean gain is taken;
- the 90 % interval is the 5th to the 95th percentile of those means (percentile bootstrap); a kind's own interval
  comes from the same draws restricted to that kind;
- numpy only; the same rows and seed give the same intervals.

Decision (`decide`):
- fewer than `min_samples` paired samples: not promoted (nothing can be told);
- the lower bound of the exact-match gain's interval is above zero: promoted;
- exact match is identical on every sample (the candidate gets exactly the same samples right, so its interval is
  [0, 0] and can say nothing) and the lower bound of the edit-similarity gain's interval is above zero: promoted,
  edit similarity breaking the tie. A candidate that wins some samples and loses others is not a tie: its exact
  match decides, and an interval that holds zero means it cannot be told from the served model;
- otherwise: not promoted.
Gains are in percentage points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
from intarsia.model.errors import IntarsiaError


class GateError(IntarsiaError):
    """The rows of the two models do not pair up, or a gate setting is out of range."""


@dataclass(frozen=True)
class GateSettings:
    confidence: float = 0.90  # two-sided: the decision uses the lower bound, the 5th percentile at 0.90
    resamples: int = 2000
    seed: int = 0
    min_samples: int = 20

    def __post_init__(self):
        if not 0.5 <= self.confidence < 1:
            raise GateError(f"gate confidence must be in [0.5, 1), not {self.confidence}")
        if self.resamples < 100:
            raise GateError(f"the bootstrap needs at least 100 resamples, not {self.resamples}")
        if self.min_samples < 1:
            raise GateError(f"min_samples must be at least 1, not {self.min_samples}")


@dataclass(frozen=True)
class Interval:
    """A mean paired gain in percentage points and its bootstrap interval."""

    mean: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


@dataclass(frozen=True)
class Comparison:
    """Candidate vs reference on one set of paired samples (all of them, or one kind)."""

    samples: int
    exact_candidate: float  # %
    exact_reference: float
    similarity_candidate: float  # % (mean edit similarity × 100)
    similarity_reference: float
    wins: int  # samples only the candidate gets exactly right
    losses: int  # samples only the reference gets exactly right
    exact_gain: Interval
    similarity_gain: Interval


@dataclass(frozen=True)
class Decision:
    promote: bool
    why: str
    confidence: float
    overall: Optional[Comparison]
    by_kind: dict[str, Comparison]

    def to_json(self) -> dict:
        return {"promote": self.promote, "why": self.why, "confidence": self.confidence,
                "overall": asdict(self.overall) if self.overall else None,
                "by_kind": {k: asdict(v) for k, v in self.by_kind.items()}}


def _pairs(candidate: Sequence[dict], reference: Sequence[dict]) -> tuple[np.ndarray, ...]:
    if len(candidate) != len(reference):
        raise GateError(f"{len(candidate)} candidate rows vs {len(reference)} reference rows: not the same samples")
    for c, r in zip(candidate, reference):
        if (c.get("path"), c.get("kind"), c.get("target")) != (r.get("path"), r.get("kind"), r.get("target")):
            raise GateError(f"rows do not pair up: {c.get('path')} {c.get('kind')} vs {r.get('path')} "
                            f"{r.get('kind')}")
    ce = np.array([float(bool(c["exact"])) for c in candidate])
    re_ = np.array([float(bool(r["exact"])) for r in reference])
    cs = np.array([float(c["similarity"]) for c in candidate])
    rs = np.array([float(r["similarity"]) for r in reference])
    kinds = np.array([str(c.get("kind", "")) for c in candidate])
    return ce, re_, cs, rs, kinds


def _interval(means: np.ndarray, observed: float, confidence: float) -> Interval:
    a = (1 - confidence) / 2
    low, high = np.quantile(means, [a, 1 - a]) if means.size else (observed, observed)
    r = lambda x: round(100 * float(x), 2)  # noqa: E731
    return Interval(r(observed), r(low), r(high))


def paired_bootstrap(candidate: Sequence[dict], reference: Sequence[dict],
                     settings: GateSettings = GateSettings()) -> tuple[Optional[Comparison], dict[str, Comparison]]:
    """(all samples, {kind: its samples}) comparisons of two models' rows for the same samples, in the same order
    (rows of `evaluate.evaluate`: path, kind, target, exact, similarity)."""
    ce, re_, cs, rs, kinds = _pairs(candidate, reference)
    n = len(ce)
    if n == 0:
        return None, {}
    d_exact, d_sim = ce - re_, cs - rs
    rng = np.random.default_rng(settings.seed)
    order = sorted(set(kinds.tolist()))
    sum_exact = np.zeros(settings.resamples)
    sum_sim = np.zeros(settings.resamples)
    by_kind: dict[str, Comparison] = {}
    for kind in order:  # stratified: each kind is resampled within itself, its size kept
        at = np.flatnonzero(kinds == kind)
        draw = at[rng.integers(0, at.size, size=(settings.resamples, at.size))]
        k_exact = d_exact[draw].sum(axis=1)
        k_sim = d_sim[draw].sum(axis=1)
        sum_exact += k_exact
        sum_sim += k_sim
        by_kind[kind] = _comparison(ce[at], re_[at], cs[at], rs[at], k_exact / at.size, k_sim / at.size,
                                    settings.confidence)
    overall = _comparison(ce, re_, cs, rs, sum_exact / n, sum_sim / n, settings.confidence)
    return overall, by_kind


def _comparison(ce, re_, cs, rs, boot_exact, boot_sim, confidence: float) -> Comparison:
    pct = lambda x: round(100 * float(np.mean(x)), 2)  # noqa: E731
    return Comparison(samples=int(ce.size), exact_candidate=pct(ce), exact_reference=pct(re_),
                      similarity_candidate=pct(cs), similarity_reference=pct(rs),
                      wins=int(np.sum((ce == 1) & (re_ == 0))), losses=int(np.sum((ce == 0) & (re_ == 1))),
                      exact_gain=_interval(boot_exact, float(np.mean(ce - re_)), confidence),
                      similarity_gain=_interval(boot_sim, float(np.mean(cs - rs)), confidence))


def decide(candidate: Sequence[dict], reference: Sequence[dict], settings: GateSettings = GateSettings()) -> Decision:
    """Promote the candidate or keep the served model (see the module docstring)."""
    overall, by_kind = paired_bootstrap(candidate, reference, settings)
    pct = f"{100 * settings.confidence:g} %"
    if overall is None or overall.samples < settings.min_samples:
        n = overall.samples if overall else 0
        return Decision(False, f"{n} held-out sample(s): fewer than {settings.min_samples}, too few to tell",
                        settings.confidence, overall, by_kind)
    em, es = overall.exact_gain, overall.similarity_gain
    seen = f"on {overall.samples} samples ({pct} interval)"
    if em.low > 0:
        return Decision(True, f"exact match {em.text()} points {seen}: better than the served model",
                        settings.confidence, overall, by_kind)
    if overall.wins == 0 and overall.losses == 0 and es.low > 0:
        return Decision(True, f"exact match identical on every sample; edit similarity {es.text()} points {seen}",
                        settings.confidence, overall, by_kind)
    if overall.wins == 0 and overall.losses == 0:
        why = f"exact match identical on every sample and edit similarity {es.text()} points {seen}"
    else:
        why = (f"exact match {em.text()} points {seen}, {overall.wins} won and {overall.losses} lost: "
               "the gain's interval does not exclude zero")
    return Decision(False, why + ": not shown to be better than the served model", settings.confidence, overall,
                    by_kind)


__all__ = ["Comparison", "Decision", "GateError", "GateSettings", "Interval", "decide", "paired_bootstrap"]
