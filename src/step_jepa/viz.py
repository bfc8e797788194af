"""`step-jepa embed` and `step-jepa plot`: look at what the JEPA views learned, and at loss curves.

embed: view 1 (final hidden state of the last predictor token, which sees prompt + step i) and
view 2 (final hidden state of the last token of step i+1 encoded alone) are extracted exactly as
training computes them (same collator, same attention mask), for N examples. A falling cosine
JEPA loss alone cannot tell *prediction* (view 1 points at the particular next step) from
*collapse* (every view points the same way). The diagnostics here separate the two:

- cos(view1_i, view2_i) against cos(view1_i, view2_j) for a random other example j: prediction
  needs a gap; collapse makes both high and equal;
- retrieval: is view2_i the nearest view 2 to view1_i? chance is 1/P;
- spread: mean pairwise cosine between examples, and effective rank of each view.

Everything is also computed after centring each view (subtracting its mean over the examples),
because LM hidden states share a large common direction that makes raw cosines high for any pair.

plot: loss curves (total, LM, JEPA) of one or more runs from their metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_DATA_SEED = 1000  # generated problems that a default `train` (seed 0) never saw
VIEW_COLORS = ("#1f77b4", "#ff7f0e")
POS_COLOR, NEG_COLOR = "#2ca02c", "#d62728"


def log(msg: str) -> None:
    print(f"[embed] {msg}", flush=True)


# --------------------------------------------------------------------------- model + views


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
        np.savez(path, v1=self.v1, v2=self.v2, ids=self.ids.astype(str), example_index=self.example_index,
                 pair_index=self.pair_index, label=np.array(self.label), model=np.array(self.model))


def count_predictor_tokens(tokenizer) -> int:
    """How many consecutive <|predictor_k|> tokens (k = 1, 2, ...) the tokenizer already has."""
    from .modeling import predictor_tokens

    vocab = tokenizer.get_vocab()
    k = 0
    while predictor_tokens(k + 1)[-1] in vocab:
        k += 1
    return k


def load_embed_model(name: str, predictors: int | None = None, device: str | None = None):
    """Model + tokenizer + predictor ids. Missing predictor tokens are added (and flagged untrained).

    Without predictors a model has no view 1 at all; adding them with mean-initialised embeddings
    gives the baseline's answer to "what does an average token after step i encode", which is the
    fair comparison for an SFT model — but it is not a trained predictor, and the output says so.
    """
    import torch

    from .modeling import add_predictor_tokens, load_for_inference

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_for_inference(name, device=dev)
    have = count_predictor_tokens(tok)
    k = predictors or have or 1
    trained = have >= k
    if not trained:
        torch.manual_seed(0)  # mean resizing samples the new rows: keep them reproducible
        add_predictor_tokens(model, tok, k)
        model.to(dev)
        log(f"{name}: had {have} predictor token(s), added up to {k}: their embeddings are UNTRAINED "
            "(mean of the vocabulary); view 1 of this model is not a learned prediction")
    from .modeling import predictor_tokens

    pred_ids = tok.convert_tokens_to_ids(predictor_tokens(k))
    model.eval()
    return model, tok, list(pred_ids), trained


def shared_predictor_count(models: Sequence[str]) -> int:
    """K used for every model: the largest K any model was trained with (1 if none), so that a
    baseline compared side by side gets the same number of predictor tokens as the JEPA model."""
    from .modeling import load_tokenizer, resolve_model_path

    return max([count_predictor_tokens(load_tokenizer(resolve_model_path(m))) for m in models] + [1])


def model_label(name: str) -> str:
    """A short name for plots: the run directory rather than its 'final'/'merged'/checkpoint leaf."""
    parts = Path(name).parts
    keep = [p for p in parts if p not in ("final", "merged") and not p.startswith("checkpoint-")]
    return "/".join(keep[-2:]) if keep else name


def load_embed_records(data: str | None, n: int, seed: int) -> list[dict]:
    """The first n records of a prepared (or raw) file, or n generated problems."""
    if data:
        from .data import load_records

        records, _ = load_records(data)
        return list(records)[:n]
    from .generator import generate_problems

    return generate_problems(n, seed=seed)


def segment_records(records: Sequence[dict], tokenizer, max_length: int, pairs: str):
    """Segmented examples that have at least one selected pair, and counts of those that do not."""
    import random

    from .layout import select_pairs
    from .segment import SegmentError, segment

    kept, skipped = [], {"segment_error": 0, "no_valid_pair": 0}
    rng = random.Random(0)
    for i, rec in enumerate(records):
        try:
            ex = segment(rec, tokenizer, max_length)
        except SegmentError:
            skipped["segment_error"] += 1
            continue
        sel = select_pairs(ex, pairs, rng)
        if not sel:
            skipped["no_valid_pair"] += 1
            continue
        kept.append((i, ex, sel))
    return kept, skipped


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def _view_hidden(out):
    """hidden_states returns either [B, T, H] or (final, view hidden states) when the views come
    from another layer / without the final norm: the views are read from the latter."""
    return out[1] if isinstance(out, tuple) else out


# TrainConfig field -> JEPAOptions attribute: where the views are read in the network.
_VIEW_FIELDS = {"jepa_layer": "layer", "jepa_final_norm": "final_norm"}


def view_options(model_name: str, layer: int | None = None):
    """JEPAOptions that read the views where training read them (from the run's saved config),
    so that embed sees what the JEPA loss saw. `layer` overrides the saved layer."""
    import yaml

    from .modeling import resolve_model_path
    from .objective import JEPAOptions

    opts = JEPAOptions()
    saved = Path(resolve_model_path(model_name)) / "step_jepa_config.yaml"
    cfg = (yaml.safe_load(saved.read_text()) or {}) if saved.exists() else {}
    for key, attr in _VIEW_FIELDS.items():
        if key in cfg and hasattr(opts, attr):
            setattr(opts, attr, cfg[key])
    if layer is not None:
        if not hasattr(opts, "layer"):
            raise ValueError("this version of the objective reads views from the last layer only")
        opts.layer = layer
    return opts


def _saved_head_option(model_dir: Path) -> str | None:
    """The run's --jepa_predictor_head from its saved step_jepa_config.yaml (None without one)."""
    import yaml

    saved = model_dir / "step_jepa_config.yaml"
    if not saved.exists():
        return None
    return (yaml.safe_load(saved.read_text()) or {}).get("jepa_predictor_head")


def load_predictor_head(model_name: str, hidden: int, device: Any = "cpu"):
    """The run's trained predictor head (`--jepa_predictor_head mlp`), or None.

    The JEPA loss compared head(view 1) with view 2, so embed must apply the same head to judge
    prediction vs collapse; without it, view 1 is an intermediate the loss never saw. The head is
    saved beside the model (trainer.HEAD_FILE); a saved config that says another head type wins
    over a stray file, and a config that says mlp without the file is reported, not guessed around.
    """
    import torch
    from safetensors.torch import load_file

    from .modeling import resolve_model_path
    from .objective import PredictorHead
    from .trainer import HEAD_FILE

    model_dir = Path(resolve_model_path(model_name))
    option, path = _saved_head_option(model_dir), model_dir / HEAD_FILE
    if not path.exists():
        if option == "mlp":
            log(f"{model_name}: trained with --jepa_predictor_head mlp but {HEAD_FILE} is missing; "
                "view 1 is shown BEFORE the head")
        return None
    if option not in (None, "mlp"):
        log(f"{model_name}: {HEAD_FILE} present but the saved config says head {option!r}; not applied")
        return None
    head = PredictorHead(hidden)
    head.load_state_dict(load_file(str(path)))
    head.to(device=device, dtype=torch.float32).eval()
    log(f"{model_name}: applying the trained predictor head ({HEAD_FILE}): view 1 after the predictor head")
    return head


def extract_views(model, tokenizer, pred_ids: list[int], records: Sequence[dict], *, pairs: str = "first",
                  batch_size: int = 16, max_length: int = 1024, label: str = "", name: str = "",
                  trained: bool = True, options=None, head=None) -> ViewSet:
    """Views of every selected pair, batched, through the training code path (collator + mask).

    With `head` (the run's PredictorHead), view 1 is head(view 1) in float32, as the loss saw it.
    """
    import torch

    from .layout import StepJEPACollator
    from .objective import JEPAOptions, StepJEPAModel

    if pairs not in ("first", "all"):
        raise ValueError("--pairs must be first or all (random would make the plot irreproducible)")
    kept, skipped = segment_records(records, tokenizer, max_length, pairs)
    if not kept:
        raise ValueError(f"no example with a usable step pair among {len(records)} records ({skipped})")
    collator = StepJEPACollator(pad_id=tokenizer.pad_token_id, pred_ids=pred_ids, mode="single_pass", pairs=pairs)
    wrapper = StepJEPAModel(model, options or JEPAOptions())
    device = next(model.parameters()).device
    v1s, v2s, meta = [], [], []
    with torch.no_grad():
        for s in range(0, len(kept), batch_size):
            chunk = kept[s:s + batch_size]
            batch = _to_device(collator([ex for _, ex, _ in chunk]), device)
            a, b = wrapper.views(_view_hidden(wrapper.hidden_states(batch)), batch)
            if head is not None:
                a = head(a.float())
            v1s.append(a.float().cpu().numpy())
            v2s.append(b.float().cpu().numpy())
            # Pair uids are assigned example by example, pair by pair, and views come sorted by uid.
            meta += [(i, ex.id, p) for i, ex, sel in chunk for p in sel]
            if len(meta) != sum(len(x) for x in v1s):
                raise RuntimeError("pair bookkeeping does not match the collator's views")
    return ViewSet(label=label or model_label(name), model=name, v1=np.concatenate(v1s), v2=np.concatenate(v2s),
                   ids=np.array([m[1] for m in meta], dtype=str),
                   example_index=np.array([m[0] for m in meta], dtype=np.int64),
                   pair_index=np.array([m[2] for m in meta], dtype=np.int64), predictors=len(pred_ids),
                   predictors_trained=trained, view1_head=head is not None,
                   stats={"records": len(records), "examples": len(kept), "pairs": int(len(meta)), **skipped})


# --------------------------------------------------------------------------- diagnostics


def _unit(x: np.ndarray) -> np.ndarray:
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
    a, b = _unit(v1), _unit(v2)
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
    a, b = _unit(v1), _unit(v2)
    n = len(a)
    size = chunk or n
    hits = 0
    for s in range(0, n, size):
        sim = a[s:s + size] @ b[s:s + size].T
        hits += int((sim.argmax(1) == np.arange(sim.shape[0])).sum())
    return hits / n if n else float("nan")


def mean_pairwise_cos(v: np.ndarray) -> float:
    """Mean cosine between different examples' vectors: near 1 = everything points the same way."""
    u = _unit(v)
    n = len(u)
    if n < 2:
        return float("nan")
    total = float((u.sum(0) ** 2).sum()) - float((u ** 2).sum())
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
            "pos_cos": _summ(pos), "neg_cos": _summ(ng),
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


# --------------------------------------------------------------------------- figures


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
    var = s ** 2 / max(float((s ** 2).sum()), 1e-30)
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
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(_unit(x))


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
            bins = np.linspace(min(pos.min(), ng.min() if len(ng) else 1.0), max(pos.max(), ng.max() if len(ng) else -1.0), 31)
            if bins[0] == bins[-1]:
                bins = np.linspace(bins[0] - 1e-3, bins[0] + 1e-3, 31)
            ax.hist(pos, bins=bins, alpha=0.6, color=POS_COLOR, label="same pair  cos(v1_i, v2_i)")
            if len(ng):
                ax.hist(ng, bins=bins, alpha=0.6, color=NEG_COLOR, label="other example  cos(v1_i, v2_j)")
            mt = m[tag]
            ax.set_title(f"{vs.label} [{tag}]: gap {mt['gap']:+.3f}, retrieval {100 * mt['retrieval_acc_all']:.0f}% "
                         f"(chance {100 * m['retrieval_chance']:.1f}%){_untrained_note(vs)}", fontsize=8)
            ax.set_xlabel("cosine")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


# --------------------------------------------------------------------------- embed entry point


def run_embed(models: Sequence[str], *, data: str | None, n: int, out: str | Path, pairs: str = "first",
              batch_size: int = 16, max_length: int = 1024, seed: int = DEFAULT_DATA_SEED,
              predictors: int | None = None, device: str | None = None, tsne: bool = True,
              layer: int | None = None, use_head: bool = True) -> dict[str, Any]:
    """Extract views for one or two models, save npz + metrics JSON + figures; returns the report.

    Each model's own predictor head (if it was trained with one) is applied to its view 1 unless
    `use_head` is False.
    """
    import gc

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_embed_records(data, n, seed)
    predictors = predictors or shared_predictor_count(models)
    # Both models are read at the layer the first (JEPA) model was trained on: same place, fair comparison.
    options = view_options(models[0], layer)
    log(f"views from decoder layer {getattr(options, 'layer', -1)}"
        f"{'' if getattr(options, 'final_norm', True) else ' (without the final norm)'}, K={predictors}")
    sets, metrics = [], []
    for k, name in enumerate(models, 1):
        model, tok, pred_ids, trained = load_embed_model(name, predictors, device)
        head = load_predictor_head(name, model.get_input_embeddings().weight.shape[1],
                                   next(model.parameters()).device) if use_head else None
        vs = extract_views(model, tok, pred_ids, records, pairs=pairs, batch_size=batch_size,
                           max_length=max_length, name=name, trained=trained, options=options, head=head)
        del model
        gc.collect()
        vs.save(out / f"embeddings_model{k}.npz")
        sets.append(vs)
        metrics.append(view_metrics(vs, batch_size, seed))
    _disambiguate([vs for vs in sets])
    files = {"pca": str(out / "pca.png"), "cosine_hist": str(out / "cosine_hist.png")}
    plot_projection(sets, files["pca"], "pca")
    if tsne and plot_projection(sets, out / "tsne.png", "tsne") is not None:
        files["tsne"] = str(out / "tsne.png")
    plot_cosines(sets, metrics, files["cosine_hist"], seed)
    report = {"data": data or f"generator ({n} problems, seed {seed})", "pairs": pairs,
              "view_layer": getattr(options, "layer", -1), "view_final_norm": getattr(options, "final_norm", True),
              "files": files, "models": [
        {"label": vs.label, "model": vs.model, "npz": str(out / f"embeddings_model{k}.npz"),
         "predictors": vs.predictors, "predictors_trained": vs.predictors_trained,
         "view1": "after the predictor head" if vs.view1_head else "hidden state (no predictor head)",
         **vs.stats, "metrics": m}
        for k, (vs, m) in enumerate(zip(sets, metrics), 1)]}
    if "tsne" not in files:
        report["tsne"] = "skipped: scikit-learn is not installed" if tsne else "skipped (--no_tsne)"
    (out / "embed_metrics.json").write_text(json.dumps(report, indent=1))
    print(format_metrics(report), flush=True)
    log(f"wrote {out}/embed_metrics.json, embeddings_model*.npz, {', '.join(Path(f).name for f in files.values())}")
    return report


def _disambiguate(sets: Sequence[ViewSet]) -> None:
    """Two models with the same short label (e.g. two 'final' dirs) get their full paths."""
    if len({vs.label for vs in sets}) < len(sets):
        for k, vs in enumerate(sets, 1):
            vs.label = f"model{k}: {vs.label}"


def format_metrics(report: dict[str, Any]) -> str:
    """A short human-readable table of the collapse diagnostics, one block per model."""
    lines = []
    for m in report["models"]:
        mt = m["metrics"]
        note = "" if m["predictors_trained"] else "  [predictor embeddings untrained]"
        if m.get("view1") == "after the predictor head":
            note += "  [view 1 after the predictor head]"
        lines.append(f"{m['label']}: {m['pairs']} pairs from {m['examples']} examples{note}")
        for tag in ("raw", "centered"):
            t = mt[tag]
            lines.append(
                f"  {tag:8s} cos same pair {t['pos_cos']['mean']:+.3f}  other example {t['neg_cos']['mean']:+.3f}  "
                f"gap {t['gap']:+.3f}  retrieval {100 * t['retrieval_acc_all']:.1f}% (chance "
                f"{100 * mt['retrieval_chance']:.1f}%)")
        lines.append(f"  spread   pairwise cos v1 {mt['view1_pairwise_cos']:+.3f} v2 {mt['view2_pairwise_cos']:+.3f}  "
                     f"effective rank v1 {mt['view1_effective_rank']:.1f} v2 {mt['view2_effective_rank']:.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- loss curves


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
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None,
                        color=f"C{i % 10}", label=lab)  # one colour per run across all subplots
        ax.set_title(_TITLES.get(key, key), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no "2.5" ticks on short runs
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {key} logged\n(SFT runs have no JEPA loss)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


# --------------------------------------------------------------------------- CLI


def add_cli(subparsers: Any) -> None:
    """Register `step-jepa embed` and `step-jepa plot`."""
    e = subparsers.add_parser("embed", help="extract JEPA views, plot them and report collapse diagnostics",
                              description="Extract view-1/view-2 embeddings for N examples, save .npz, PCA "
                                          "(+ t-SNE with scikit-learn) and cosine histograms, and print collapse "
                                          "diagnostics. See docs/analysis.md.")
    e.add_argument("--model", required=True, help="model dir / id (LoRA adapter dirs are merged)")
    e.add_argument("--model2", help="a second model (e.g. the SFT baseline) drawn side by side")
    e.add_argument("--data", help="prepared or raw JSONL; default: generated problems")
    e.add_argument("-n", "--n", type=int, default=256, help="number of examples (default 256)")
    e.add_argument("--seed", type=int, default=DEFAULT_DATA_SEED,
                   help=f"generator seed and negative sampling seed (default {DEFAULT_DATA_SEED})")
    e.add_argument("--out", default="embeddings", help="output directory (default ./embeddings)")
    e.add_argument("--pairs", choices=("first", "all"), default="first", help="step pairs per example")
    e.add_argument("--batch_size", type=int, default=16)
    e.add_argument("--max_length", type=int, default=1024)
    e.add_argument("--predictors", type=int, default=None,
                   help="K predictor tokens (default: as many as the tokenizer has, else 1)")
    e.add_argument("--layer", type=int, default=None,
                   help="decoder layer to read the views from (default: the first model's --jepa_layer, else last)")
    e.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    e.add_argument("--no_tsne", action="store_true", help="skip t-SNE even when scikit-learn is installed")
    e.add_argument("--no_head", action="store_true",
                   help="do not apply a run's trained predictor head (jepa_head.safetensors) to view 1")
    e.set_defaults(func=_run_embed_cli)

    p = subparsers.add_parser("plot", help="plot loss curves of one or more runs from metrics.jsonl")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output dirs (or metrics.jsonl files)")
    p.add_argument("--out", default="loss_curves.png", help="PNG path (default ./loss_curves.png)")
    p.add_argument("--metrics", default=",".join(PLOT_METRICS),
                   help=f"comma-separated metrics.jsonl keys, one subplot each (default {','.join(PLOT_METRICS)})")
    p.set_defaults(func=_run_plot_cli)


def _run_embed_cli(args: argparse.Namespace) -> int:
    from .deps import require_matplotlib

    require_matplotlib("embed")  # before the models load and the views are extracted
    if args.n < 2:
        raise ValueError("-n must be at least 2 (negatives come from other examples)")
    models = [args.model] + ([args.model2] if args.model2 else [])
    run_embed(models, data=args.data, n=args.n, out=args.out, pairs=args.pairs, batch_size=args.batch_size,
              max_length=args.max_length, seed=args.seed, predictors=args.predictors, device=args.device,
              tsne=not args.no_tsne, layer=args.layer, use_head=not args.no_head)
    return 0


def _run_plot_cli(args: argparse.Namespace) -> int:
    from .deps import require_matplotlib

    require_matplotlib("plot")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    plot_runs(args.runs, args.out, metrics)
    print(f"[plot] wrote {args.out} ({len(args.runs)} run(s): {', '.join(short_labels(args.runs))})")
    return 0
