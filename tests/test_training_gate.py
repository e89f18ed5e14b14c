"""The promotion gate (training/gate.py): a paired, stratified, seeded bootstrap of candidate - served per sample.

Pure tests on synthetic rows: no model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from intarsia.training.gate import GateError, GateSettings, decide, paired_bootstrap


def rows(exact, similarity=None, kinds=None):
    """Evaluation rows for samples 0..n-1 (the same samples for every model: path, kind and target pair up)."""
    n = len(exact)
    similarity = similarity if similarity is not None else [1.0 if e else 0.3 for e in exact]
    kinds = kinds or ["next-line"] * n
    return [{"path": f"f{i % 7}.py", "kind": kinds[i], "target": f"t{i}", "exact": bool(exact[i]),
             "similarity": float(similarity[i])} for i in range(n)]


def pattern(n, wins, losses, both):
    """(candidate, reference) exact-match lists: `wins` samples only the candidate gets, `losses` only the
    reference, `both` both; the rest neither."""
    c, r = [False] * n, [False] * n
    for i in range(wins):
        c[i] = True
    for i in range(wins, wins + losses):
        r[i] = True
    for i in range(wins + losses, wins + losses + both):
        c[i] = r[i] = True
    return c, r


def test_a_clear_gain_promotes():
    c, r = pattern(200, wins=40, losses=8, both=50)
    d = decide(rows(c), rows(r))
    assert d.promote, d.why
    assert d.overall.wins == 40 and d.overall.losses == 8
    assert d.overall.exact_gain.mean == pytest.approx(16.0)
    assert 0 < d.overall.exact_gain.low < 16 < d.overall.exact_gain.high
    assert "better than the served model" in d.why


def test_noise_does_not_promote():
    """A candidate that wins a few more samples than it loses, as chance does: the interval holds zero."""
    c, r = pattern(200, wins=13, losses=10, both=50)
    d = decide(rows(c), rows(r))
    assert not d.promote
    assert d.overall.exact_gain.mean > 0 and d.overall.exact_gain.low < 0 < d.overall.exact_gain.high
    assert "does not exclude zero" in d.why
    # Random models with the same hit rate: never promoted over many seeds of data.
    rng = np.random.default_rng(7)
    promoted = 0
    for _ in range(40):
        a, b = rng.random(200) < 0.3, rng.random(200) < 0.3
        promoted += decide(rows(a.tolist()), rows(b.tolist())).promote
    assert promoted <= 6  # one-sided 5 % per comparison; 40 comparisons


def test_identical_results_do_not_promote():
    c, _ = pattern(200, wins=0, losses=0, both=60)
    d = decide(rows(c), rows(c))
    assert not d.promote
    assert (d.overall.exact_gain.low, d.overall.exact_gain.high) == (0.0, 0.0)
    assert "identical on every sample" in d.why


def test_edit_similarity_breaks_a_tie_only_when_exact_match_is_identical():
    c, _ = pattern(200, wins=0, losses=0, both=40)
    ref_sim = [1.0 if e else 0.4 for e in c]
    better = [1.0 if e else 0.55 for e in c]
    d = decide(rows(c, better), rows(c, ref_sim))
    assert d.promote and "edit similarity" in d.why and d.overall.similarity_gain.low > 0
    # the same edit-similarity gain, but exact match won on some samples and lost on as many: not a tie
    c2, r2 = pattern(200, wins=10, losses=10, both=40)
    sim_c = [1.0 if e else 0.7 for e in c2]
    sim_r = [1.0 if e else 0.4 for e in r2]
    d2 = decide(rows(c2, sim_c), rows(r2, sim_r))
    assert d2.overall.similarity_gain.low > 0 and not d2.promote


def test_worse_candidate_is_not_promoted():
    c, r = pattern(200, wins=5, losses=30, both=20)
    d = decide(rows(c), rows(r))
    assert not d.promote and d.overall.exact_gain.high < 0


def test_the_bootstrap_is_seeded_and_reproducible():
    c, r = pattern(200, wins=25, losses=12, both=30)
    a = decide(rows(c), rows(r), GateSettings(seed=3))
    b = decide(rows(c), rows(r), GateSettings(seed=3))
    assert a.to_json() == b.to_json()
    other = decide(rows(c), rows(r), GateSettings(seed=4))
    assert other.overall.exact_gain.mean == a.overall.exact_gain.mean
    assert (other.overall.exact_gain.low, other.overall.exact_gain.high) != \
        (a.overall.exact_gain.low, a.overall.exact_gain.high)


def test_interval_matches_the_normal_approximation_on_many_samples():
    """Percentile bootstrap of a mean of paired differences ≈ mean ± 1.645 standard errors at 90 %."""
    n = 2000
    rng = np.random.default_rng(1)
    c, r = (rng.random(n) < 0.45).tolist(), (rng.random(n) < 0.40).tolist()
    d = decide(rows(c), rows(r), GateSettings(resamples=4000))
    diff = np.array(c, float) - np.array(r, float)
    se = diff.std(ddof=1) / math.sqrt(n)
    assert d.overall.exact_gain.low == pytest.approx(100 * (diff.mean() - 1.645 * se), abs=0.4)
    assert d.overall.exact_gain.high == pytest.approx(100 * (diff.mean() + 1.645 * se), abs=0.4)


def test_per_kind_intervals():
    kinds = ["next-line"] * 120 + ["block"] * 80
    c_nl, r_nl = pattern(120, wins=40, losses=2, both=20)
    c_b, r_b = pattern(80, wins=4, losses=4, both=10)
    d = decide(rows(c_nl + c_b, kinds=kinds), rows(r_nl + r_b, kinds=kinds))
    assert set(d.by_kind) == {"next-line", "block"}
    nl, blk = d.by_kind["next-line"], d.by_kind["block"]
    assert nl.samples == 120 and blk.samples == 80
    assert nl.exact_gain.low > 0
    assert blk.exact_gain.mean == 0 and blk.exact_gain.low < 0 < blk.exact_gain.high
    assert d.overall.samples == 200 and d.promote
    # the stratified overall mean is the mean over all samples
    assert d.overall.exact_gain.mean == pytest.approx(100 * (38 + 0) / 200)
    js = d.to_json()
    assert js["by_kind"]["block"]["exact_gain"]["low"] == blk.exact_gain.low


def test_too_few_samples_never_promote():
    c, r = pattern(10, wins=10, losses=0, both=0)
    d = decide(rows(c), rows(r))
    assert not d.promote and "too few" in d.why
    assert decide(rows(c), rows(r), GateSettings(min_samples=5)).promote
    assert not decide([], []).promote


def test_rows_must_pair_up_and_settings_are_checked():
    c, r = pattern(30, wins=3, losses=1, both=3)
    with pytest.raises(GateError, match="not the same samples"):
        paired_bootstrap(rows(c), rows(r)[:-1])
    shuffled = rows(r)
    shuffled[0], shuffled[1] = shuffled[1], shuffled[0]
    with pytest.raises(GateError, match="do not pair up"):
        paired_bootstrap(rows(c), shuffled)
    for bad in (dict(confidence=1.0), dict(confidence=0.2), dict(resamples=10), dict(min_samples=0)):
        with pytest.raises(GateError):
            GateSettings(**bad)
