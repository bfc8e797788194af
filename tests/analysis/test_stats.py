"""Paired statistics (step_jepa.analysis.stats): McNemar by hand, bootstrap CI, alignment by seed and id."""

from __future__ import annotations

import math

import pytest

from step_jepa.analysis import stats

# --------------------------------------------------------------------------- paired statistics (fast)


def test_mcnemar_exact_branch_by_hand() -> None:
    # b + c = 10 < 50: p = 2 * P(Binomial(10, 1/2) <= 2) = 2 * (1 + 10 + 45) / 1024
    for b, c in ((2, 8), (8, 2)):
        t = stats.mcnemar(b, c)
        assert t["method"] == "exact binomial"
        assert t["p_value"] == pytest.approx(112 / 1024)
    assert stats.mcnemar(5, 5)["p_value"] == 1.0  # capped, not 2 * P(X <= 5) > 1
    assert stats.mcnemar(0, 0)["p_value"] == 1.0


def test_mcnemar_is_exact_at_any_size() -> None:
    # b + c = 60: 2 * P(X <= 20), X ~ Binomial(60, 1/2) = 0.0134893 (scipy.stats.binomtest(20, 60)
    # gives the same; the chi-square approximation, used above 50 before, gave 0.014171)
    t = stats.mcnemar(20, 40)
    assert t["method"] == "exact binomial"
    assert t["p_value"] == pytest.approx(2 * sum(math.comb(60, k) for k in range(21)) / 2**60)
    assert t["p_value"] == pytest.approx(0.0134893, abs=1e-7)
    # thousands of discordant pairs (5 seeds x 1,319 problems) stay exact and symmetric in b, c
    big = stats.mcnemar(2000, 2150)
    assert big["p_value"] == stats.mcnemar(2150, 2000)["p_value"]
    assert big["p_value"] == pytest.approx(0.0207155, abs=1e-7)  # scipy.stats.binomtest(2000, 4150)


def _runs(matrix, ids=None) -> dict[int, dict[str, bool]]:
    """seed -> {id -> correct} from a [seeds, problems] 0/1 matrix."""
    import numpy as np

    m = np.asarray(matrix, dtype=bool)
    ids = ids or [f"p{i}" for i in range(m.shape[1])]
    return {s: dict(zip(ids, map(bool, row))) for s, row in enumerate(m)}


def test_paired_stats_counts_and_bootstrap_ci() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    n, seeds = 600, 3
    base = rng.random((seeds, n)) < 0.5
    # Candidate: keeps every baseline success, fixes a wrong answer with prob 0.25, breaks a right one
    # with prob 0.05: true Δ = 100 * (0.5 * 0.25 - 0.5 * 0.05) = +10 points.
    u = rng.random((seeds, n))
    cand = np.where(base, u >= 0.05, u < 0.25)
    st = stats.paired_stats(_runs(base), _runs(cand), n_boot=2000, seed=1)
    assert (st["n_seeds"], st["n_problems"]) == (seeds, n)
    assert st["b"] == int((base & ~cand).sum()) and st["c"] == int((~base & cand).sum())
    assert st["delta_points"] == pytest.approx(100 * (cand.mean() - base.mean()))
    lo, hi = st["ci95_points"]
    assert lo < 10.0 < hi and lo > 0  # contains the true difference, excludes no effect
    # Its width matches the normal approximation of the per-problem (seed-averaged) difference.
    d = 100 * (cand.astype(float) - base).mean(0)
    assert (hi - lo) / 2 == pytest.approx(1.96 * d.std(ddof=1) / np.sqrt(n), rel=0.15)
    assert st["mcnemar_p"] < 1e-6
    assert stats.paired_stats(_runs(base), _runs(cand), n_boot=2000, seed=1)["ci95_points"] == [lo, hi]
    assert stats.paired_stats(_runs(base), _runs(cand), n_boot=2000, seed=2)["ci95_points"] != [lo, hi]


def test_paired_stats_aligns_by_id_and_reports_drops() -> None:
    base = {0: {"a": True, "b": False, "c": True}, 1: {"a": True, "b": True, "c": False}, 5: {"a": True}}
    cand = {0: {"c": True, "b": True, "a": False}, 1: {"a": True, "b": True}, 7: {"a": False}}
    st = stats.paired_stats(base, cand, n_boot=200)
    al = st["alignment"]
    assert al["seeds_matched"] == [0, 1] and al["seeds_only_baseline"] == [5] and al["seeds_only_candidate"] == [7]
    assert (st["n_problems"], al["problems_dropped"], al["dropped_ids"]) == (2, 1, ["c"])
    # Aligned by id, not position: seed 0 a: T->F (b), b: F->T (c); seed 1 identical.
    assert (st["b"], st["c"]) == (1, 1) and st["delta_points"] == 0.0
    note = stats.alignment_note(st)
    assert "[5]" in note and "[7]" in note and "1 problem id(s)" in note
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_stats({0: {"a": True}}, {1: {"a": True}})
    with pytest.raises(ValueError, match="no problem id in common"):
        stats.paired_stats({0: {"a": True}}, {0: {"b": True}})
