"""Paired statistics of two sets of runs scored on the same problems: McNemar's test, a bootstrap
confidence interval of the accuracy difference, and the alignment of runs by seed and problem id.

Pure numpy; ``step-jepa compare``'s report (:mod:`step_jepa.analysis.report`) is the caller.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CI_LEVEL = 0.95


def mcnemar(b: int, c: int) -> dict[str, Any]:
    """Two-sided exact McNemar test on the discordant counts b (baseline right, candidate wrong) and c.

    Under H0 a discordant problem is equally likely to go either way, so b ~ Binomial(b + c, 1/2);
    the p-value is twice the smaller tail, capped at 1. Exact at every size: with integer
    arithmetic it costs milliseconds for the b + c of thousands that pooling seeds gives, so the
    chi-square approximation (and the choice of where it starts) is not needed.
    """
    n = b + c
    if n == 0:
        return {"method": "none (no discordant pairs)", "statistic": None, "p_value": 1.0}
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return {"method": "exact binomial", "statistic": None, "p_value": min(1.0, 2 * tail / 2**n)}


def align_runs(
    baseline_runs: dict[int, dict[str, bool]], candidate_runs: dict[int, dict[str, bool]]
) -> tuple[list[int], list[str], dict[str, Any]]:
    """Seeds present in both, problem ids present in both for every one of those seeds.

    One problem set shared by all seeds is what lets the bootstrap resample problems once for every
    seed. Whatever does not match is counted in the returned `alignment` (never dropped silently).
    """
    seeds = sorted(set(baseline_runs) & set(candidate_runs))
    if not seeds:
        raise ValueError(f"no seed in common (baseline {sorted(baseline_runs)}, candidate {sorted(candidate_runs)})")
    everything = set().union(*(set(baseline_runs[s]) | set(candidate_runs[s]) for s in seeds))
    common = set.intersection(*(set(baseline_runs[s]) & set(candidate_runs[s]) for s in seeds))
    ids = sorted(common, key=str)
    dropped = sorted(everything - common, key=str)
    alignment = {
        "seeds_matched": seeds,
        "seeds_only_baseline": sorted(set(baseline_runs) - set(candidate_runs)),
        "seeds_only_candidate": sorted(set(candidate_runs) - set(baseline_runs)),
        "problems_matched": len(ids),
        "problems_dropped": len(dropped),
        "dropped_ids": [str(i) for i in dropped[:10]],
    }
    if not ids:
        raise ValueError(f"no problem id in common across seeds {seeds}")
    return seeds, ids, alignment


def bootstrap_ci(
    per_problem: np.ndarray, n_boot: int, seed: int, level: float = CI_LEVEL, chunk: int = 1000
) -> tuple[float, float]:
    """Percentile CI of the mean of `per_problem` (problem resampling), in the units given.

    Chunked so that 10k resamples of a 1.3k-problem test set do not hold a 10k × 1.3k index matrix.
    """
    rng = np.random.default_rng(seed)
    n = len(per_problem)
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(per_problem[idx].mean(axis=1))
    boot = np.concatenate(means)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_stats(
    baseline_runs: dict[int, dict[str, bool]],
    candidate_runs: dict[int, dict[str, bool]],
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-problem paired comparison of two configs over seeds (candidate − baseline).

    Arguments map seed → {problem id → correct}. Returns the mean paired accuracy difference in
    points (averaged over seeds), a bootstrap 95 % CI that resamples *problems* — one resampled
    problem set applied to every seed, so each resampled problem keeps its baseline/candidate pair
    and its correlation across seeds (the test set, not the seed, is the dominant noise at a few
    seeds) — and McNemar's test pooled over seeds (b, c summed). Pooling treats the seed × problem
    pairs as independent although a problem tends to be hard in every seed, so with several seeds
    the McNemar p-value is somewhat optimistic; the problem-level CI is the one to read first.
    """
    seeds, ids, alignment = align_runs(baseline_runs, candidate_runs)
    base = np.array([[bool(baseline_runs[s][i]) for i in ids] for s in seeds])  # [S, N]
    cand = np.array([[bool(candidate_runs[s][i]) for i in ids] for s in seeds])
    diff = cand.astype(np.float64) - base.astype(np.float64)
    b, c = int((base & ~cand).sum()), int((~base & cand).sum())
    lo, hi = bootstrap_ci(100 * diff.mean(axis=0), n_boot, seed)
    test = mcnemar(b, c)
    return {
        "n_seeds": len(seeds),
        "n_problems": len(ids),
        "delta_points": float(100 * diff.mean()),
        "per_seed_delta_points": {int(s): float(100 * d) for s, d in zip(seeds, diff.mean(axis=1))},
        "ci95_points": [lo, hi],
        "n_boot": n_boot,
        "bootstrap_seed": seed,
        "b": b,
        "c": c,
        "mcnemar": test,
        "mcnemar_p": test["p_value"],
        "alignment": alignment,
    }


def alignment_note(stats: dict[str, Any]) -> str:
    """Human-readable list of what was dropped before pairing ('' when everything matched)."""
    a = stats["alignment"]
    parts = []
    if a["seeds_only_baseline"] or a["seeds_only_candidate"]:
        parts.append(
            f"unpaired seeds dropped (baseline only {a['seeds_only_baseline']}, "
            f"candidate only {a['seeds_only_candidate']})"
        )
    if a["problems_dropped"]:
        parts.append(f"{a['problems_dropped']} problem id(s) not in every run dropped (e.g. {a['dropped_ids'][:3]})")
    if stats.get("runs_without_predictions"):
        parts.append(f"seeds without predictions.jsonl: {stats['runs_without_predictions']}")
    return "; ".join(parts)
