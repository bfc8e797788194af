"""Collapse diagnostics of JEPA views: does view 1 *predict* its own next step (view 2), or do all
views point the same way? (See :mod:`step_jepa.analysis.embed`, which extracts the views.)

- cos(view1_i, view2_i) against cos(view1_i, view2_j) for a random other example j: prediction
  needs a gap; collapse makes both high and equal;
- retrieval: is view2_i the nearest view 2 to view1_i? chance is 1/P;
- spread: mean pairwise cosine between examples, and effective rank of each view.

Everything is also computed after centring each view (subtracting its mean over the examples),
because LM hidden states share a large common direction that makes raw cosines high for any pair.
Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ViewSet:
    """The two views of every selected pair of one model, with where each pair comes from."""

    label: str
    model: str
    v1: np.ndarray  # [P, H] float32
    v2: np.ndarray  # [P, H] float32
    ids: np.ndarray  # [P] record id of the pair's example
    example_index: np.ndarray  # [P] index of the example in the input order
    pair_index: np.ndarray  # [P] i of the step pair (i, i+1)
    predictors: int = 1
    predictors_trained: bool = True
    view1_head: bool = False  # True: v1 is the predictor head's output (what the JEPA loss compared)
    stats: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """npz with plain arrays only (ids as unicode), loadable without pickle."""
        np.savez(
            path,
            v1=self.v1,
            v2=self.v2,
            ids=self.ids.astype(str),
            example_index=self.example_index,
            pair_index=self.pair_index,
            label=np.array(self.label),
            model=np.array(self.model),
        )


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def negative_partners(example_index: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each pair i, a random pair j from another example (-1 when there is none)."""
    rng = np.random.default_rng(seed)
    out = np.full(len(example_index), -1, dtype=np.int64)
    for i, e in enumerate(example_index):
        cand = np.flatnonzero(example_index != e)
        if len(cand):
            out[i] = rng.choice(cand)
    return out


def cosine_pairs(v1: np.ndarray, v2: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos(view1_i, view2_i) and cos(view1_i, view2_neg(i)) (the latter only where neg exists)."""
    a, b = unit_rows(v1), unit_rows(v2)
    pos = (a * b).sum(1)
    ok = neg >= 0
    return pos, (a[ok] * b[neg[ok]]).sum(1)


def centered(v: np.ndarray) -> np.ndarray:
    """Subtract the mean over examples: keeps what varies between examples, drops the shared direction."""
    return v - v.mean(0, keepdims=True)


def retrieval_accuracy(v1: np.ndarray, v2: np.ndarray, chunk: int | None = None) -> float:
    """Fraction of pairs whose view 1 has its own view 2 as the nearest (cosine) among the candidates.

    With `chunk`, candidates are the pairs of the same chunk of that size (what training logs as
    jepa_retrieval_acc for one micro-batch); otherwise all pairs.
    """
    a, b = unit_rows(v1), unit_rows(v2)
    n = len(a)
    size = chunk or n
    hits = 0
    for s in range(0, n, size):
        sim = a[s : s + size] @ b[s : s + size].T
        hits += int((sim.argmax(1) == np.arange(sim.shape[0])).sum())
    return hits / n if n else float("nan")


def mean_pairwise_cos(v: np.ndarray) -> float:
    """Mean cosine between different examples' vectors: near 1 = everything points the same way."""
    u = unit_rows(v)
    n = len(u)
    if n < 2:
        return float("nan")
    total = float((u.sum(0) ** 2).sum()) - float((u**2).sum())
    return total / (n * (n - 1))


def effective_rank(v: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred views (1 = a line, H = isotropic)."""
    s = np.linalg.svd(centered(v.astype(np.float64)), compute_uv=False)
    p = s / s.sum() if s.sum() > 0 else s
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0


def _summ(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(x.mean()), "std": float(x.std())} if len(x) else {"mean": float("nan"), "std": float("nan")}


def view_metrics(vs: ViewSet, batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Prediction vs collapse diagnostics of one model's views (raw and centred)."""
    neg = negative_partners(vs.example_index, seed)
    out: dict[str, Any] = {"pairs": int(len(vs.v1)), "retrieval_chance": 1.0 / max(len(vs.v1), 1)}
    for tag, (a, b) in {"raw": (vs.v1, vs.v2), "centered": (centered(vs.v1), centered(vs.v2))}.items():
        pos, ng = cosine_pairs(a, b, neg)
        out[tag] = {
            "pos_cos": _summ(pos),
            "neg_cos": _summ(ng),
            "gap": float(pos.mean() - ng.mean()) if len(ng) else float("nan"),
            "retrieval_acc_all": retrieval_accuracy(a, b),
            "retrieval_acc_batch": retrieval_accuracy(a, b, batch_size),
        }
    # Pairwise cosine is a collapse measure only on raw views (centred views average to zero by construction).
    out["view1_pairwise_cos"] = mean_pairwise_cos(vs.v1)
    out["view2_pairwise_cos"] = mean_pairwise_cos(vs.v2)
    out["view1_effective_rank"] = effective_rank(vs.v1)
    out["view2_effective_rank"] = effective_rank(vs.v2)
    out["view1_std"] = float(vs.v1.std(0).mean())
    out["view2_std"] = float(vs.v2.std(0).mean())
    return out
