"""The figures of ``step-jepa embed`` (PCA / t-SNE of the views, cosine histograms) and of
``step-jepa plot`` (loss curves of runs from their metrics.jsonl). matplotlib without pyplot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from step_jepa.method.collapse import (
    ViewSet,
    centered,
    cosine_pairs,
    negative_partners,
    unit_rows,
)

VIEW_COLORS = ("#1f77b4", "#ff7f0e")


POS_COLOR, NEG_COLOR = "#2ca02c", "#d62728"


def _figure(nrows: int, ncols: int, w: float, h: float):
    """A pyplot-free Agg figure: no global state, safe in tests and long-running processes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-2 principal components by SVD (no scikit-learn); returns coordinates and variance fractions."""
    xc = centered(x.astype(np.float64))
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    var = s**2 / max(float((s**2).sum()), 1e-30)
    coords = u[:, :2] * s[:2]
    if coords.shape[1] < 2:  # one feature: a second, empty axis (so both axes can be labelled)
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords, np.pad(var[:2], (0, max(0, 2 - len(var))))


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """t-SNE coordinates when scikit-learn is installed (optional), else None."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(unit_rows(x))


def _draw_linked(ax, xy: np.ndarray, p: int, title: str) -> None:
    """View 1 points, view 2 points, and one grey segment per pair between them."""
    from matplotlib.collections import LineCollection

    segs = np.stack([xy[:p], xy[p:]], axis=1)
    ax.add_collection(LineCollection(segs, colors="0.6", linewidths=0.6, alpha=0.6, zorder=1))
    ax.scatter(xy[:p, 0], xy[:p, 1], s=12, c=VIEW_COLORS[0], label="view 1 (predictor)", zorder=2)
    ax.scatter(xy[p:, 0], xy[p:, 1], s=12, c=VIEW_COLORS[1], marker="^", label="view 2 (next step)", zorder=2)
    ax.autoscale_view()
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")


def _untrained_note(vs: ViewSet) -> str:
    """Title suffix for what view 1 is: untrained predictors and/or the output of the predictor head."""
    note = "" if vs.predictors_trained else "\n(predictor embeddings UNTRAINED)"
    return note + ("\n(view 1 after the predictor head)" if vs.view1_head else "")


def plot_projection(sets: Sequence[ViewSet], path: str | Path, method: str = "pca"):
    """PCA (or t-SNE) of both views of each model, pairs linked; one panel per model. Returns the Figure,
    or None for t-SNE without scikit-learn."""
    fig, axes = _figure(1, len(sets), 5.0, 4.5)
    for ax, vs in zip(axes[0], sets):
        x = np.concatenate([vs.v1, vs.v2])
        if method == "pca":
            xy, var = pca_2d(x)
            title = f"{vs.label}: PCA of both views ({100 * var.sum():.0f}% var){_untrained_note(vs)}"
            labels = [f"PC {i + 1} ({100 * v:.1f} % var.)" for i, v in enumerate(var)]
        else:
            xy = tsne_2d(x)
            if xy is None:
                return None
            title = f"{vs.label}: t-SNE of both views (unit-normalised){_untrained_note(vs)}"
            labels = ["t-SNE 1", "t-SNE 2"]  # t-SNE axes have no units or variance to report
        _draw_linked(ax, xy, len(vs.v1), title)
        ax.set_xlabel(labels[0], fontsize=8)
        ax.set_ylabel(labels[1], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def plot_cosines(sets: Sequence[ViewSet], metrics: Sequence[dict], path: str | Path, seed: int = 0):
    """Histograms of cos(view1_i, view2_i) vs cos(view1_i, view2_j≠i): rows raw / centred, one column per model."""
    fig, axes = _figure(2, len(sets), 5.0, 3.3)
    for col, (vs, m) in enumerate(zip(sets, metrics)):
        neg = negative_partners(vs.example_index, seed)
        for row, tag in enumerate(("raw", "centered")):
            a, b = (vs.v1, vs.v2) if tag == "raw" else (centered(vs.v1), centered(vs.v2))
            pos, ng = cosine_pairs(a, b, neg)
            ax = axes[row][col]
            bins = np.linspace(
                min(pos.min(), ng.min() if len(ng) else 1.0), max(pos.max(), ng.max() if len(ng) else -1.0), 31
            )
            if bins[0] == bins[-1]:
                bins = np.linspace(bins[0] - 1e-3, bins[0] + 1e-3, 31)
            ax.hist(pos, bins=bins, alpha=0.6, color=POS_COLOR, label="same pair  cos(v1_i, v2_i)")
            if len(ng):
                ax.hist(ng, bins=bins, alpha=0.6, color=NEG_COLOR, label="other example  cos(v1_i, v2_j)")
            mt = m[tag]
            ax.set_title(
                f"{vs.label} [{tag}]: gap {mt['gap']:+.3f}, retrieval {100 * mt['retrieval_acc_all']:.0f}% "
                f"(chance {100 * m['retrieval_chance']:.1f}%){_untrained_note(vs)}",
                fontsize=8,
            )
            ax.set_xlabel("cosine")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


PLOT_METRICS = ("loss", "lm_loss", "jepa_loss")


_TITLES = {"loss": "total loss (γ·LM + λ·JEPA)", "lm_loss": "LM loss", "jepa_loss": "JEPA loss"}


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """Training log records of a run dir (or a metrics.jsonl path); a resumed run's repeats keep the last."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is {run} a training output_dir?)")
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "loss" in rec and "step" in rec:  # the final summary record has train_loss, not loss
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def short_labels(paths: Sequence[str | Path]) -> list[str]:
    """Shortest trailing path parts that tell the runs apart (sft/seed0 vs jepa/seed0)."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def plot_runs(runs: Sequence[str | Path], path: str | Path, metrics: Sequence[str] = PLOT_METRICS):
    """One subplot per quantity, one line per run (labelled by its directory). Returns the Figure."""
    from matplotlib.ticker import MaxNLocator

    logs = [read_metrics(r) for r in runs]
    labels = short_labels(runs)
    fig, axes = _figure(1, len(metrics), 4.5, 3.6)
    for ax, key in zip(axes[0], metrics):
        for i, (lab, recs) in enumerate(zip(labels, logs)):
            pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="." if len(pts) < 30 else None,
                    color=f"C{i % 10}",
                    label=lab,
                )  # one colour per run across all subplots
        ax.set_title(_TITLES.get(key, key), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no "2.5" ticks on short runs
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(
                0.5,
                0.5,
                f"no {key} logged\n(SFT runs have no JEPA loss)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
