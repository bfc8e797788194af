"""``step-jepa embed``: extract the JEPA views of N examples exactly as training computes them (same
collator, same attention mask), save them, draw them (:mod:`step_jepa.analysis.plots`) and report the
collapse diagnostics (:mod:`step_jepa.method.collapse`).

View 1 is the final hidden state of the last predictor token, which sees prompt + step i; view 2
the final hidden state of the last token of step i+1 encoded alone. A falling cosine JEPA loss
alone cannot tell *prediction* (view 1 points at the particular next step) from *collapse* (every
view points the same way); the diagnostics separate the two.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from step_jepa.analysis.plots import plot_cosines, plot_projection
from step_jepa.method.collapse import ViewSet, view_metrics

DEFAULT_DATA_SEED = 1000  # generated problems that a default `train` (seed 0) never saw


def log(msg: str) -> None:
    print(f"[embed] {msg}", flush=True)


def count_predictor_tokens(tokenizer) -> int:
    """How many consecutive <|predictor_k|> tokens (k = 1, 2, ...) the tokenizer already has."""
    from step_jepa.models.loading import predictor_tokens

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

    from step_jepa.models.loading import add_predictor_tokens, load_for_inference

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_for_inference(name, device=dev)
    have = count_predictor_tokens(tok)
    k = predictors or have or 1
    trained = have >= k
    if not trained:
        torch.manual_seed(0)  # mean resizing samples the new rows: keep them reproducible
        add_predictor_tokens(model, tok, k)
        model.to(dev)
        log(
            f"{name}: had {have} predictor token(s), added up to {k}: their embeddings are UNTRAINED "
            "(mean of the vocabulary); view 1 of this model is not a learned prediction"
        )
    from step_jepa.models.loading import predictor_tokens

    pred_ids = tok.convert_tokens_to_ids(predictor_tokens(k))
    model.eval()
    return model, tok, list(pred_ids), trained


def shared_predictor_count(models: Sequence[str]) -> int:
    """K used for every model: the largest K any model was trained with (1 if none), so that a
    baseline compared side by side gets the same number of predictor tokens as the JEPA model."""
    from step_jepa.models.loading import load_tokenizer
    from step_jepa.models.sources import resolve_model_path

    return max([count_predictor_tokens(load_tokenizer(resolve_model_path(m))) for m in models] + [1])


def model_label(name: str) -> str:
    """A short name for plots: the run directory rather than its 'final'/'merged'/checkpoint leaf."""
    parts = Path(name).parts
    keep = [p for p in parts if p not in ("final", "merged") and not p.startswith("checkpoint-")]
    return "/".join(keep[-2:]) if keep else name


def load_embed_records(data: str | None, n: int, seed: int) -> list[dict]:
    """The first n records of a prepared (or raw) file, or n generated problems."""
    if data:
        from step_jepa.data.load import load_records

        records, _ = load_records(data)
        return list(records)[:n]
    from step_jepa.data.synthetic import generate_problems

    return generate_problems(n, seed=seed)


def segment_records(records: Sequence[dict], tokenizer, max_length: int, pairs: str):
    """Segmented examples that have at least one selected pair, and counts of those that do not."""
    import random

    from step_jepa.data.segment import SegmentError, segment
    from step_jepa.method.layout import select_pairs

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


# The JEPAOptions fields (saved under the same names) that say where the views are read.
_VIEW_FIELDS = ("jepa_layer", "jepa_final_norm")


def view_options(model_name: str, layer: int | None = None):
    """JEPAOptions that read the views where training read them (from the run's saved config),
    so that embed sees what the JEPA loss saw. `layer` overrides the saved layer."""
    import yaml

    from step_jepa.method.options import JEPAOptions
    from step_jepa.models.sources import resolve_model_path

    opts = JEPAOptions()
    saved = Path(resolve_model_path(model_name)) / "step_jepa_config.yaml"
    cfg = (yaml.safe_load(saved.read_text()) or {}) if saved.exists() else {}
    for key in _VIEW_FIELDS:
        if key in cfg:
            setattr(opts, key, cfg[key])
    if layer is not None:
        opts.jepa_layer = layer
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

    from step_jepa.method.model import PredictorHead
    from step_jepa.models.sources import resolve_model_path
    from step_jepa.training.checkpoints import HEAD_FILE

    model_dir = Path(resolve_model_path(model_name))
    option, path = _saved_head_option(model_dir), model_dir / HEAD_FILE
    if not path.exists():
        if option == "mlp":
            log(
                f"{model_name}: trained with --jepa_predictor_head mlp but {HEAD_FILE} is missing; "
                "view 1 is shown BEFORE the head"
            )
        return None
    if option not in (None, "mlp"):
        log(f"{model_name}: {HEAD_FILE} present but the saved config says head {option!r}; not applied")
        return None
    head = PredictorHead(hidden)
    head.load_state_dict(load_file(str(path)))
    head.to(device=device, dtype=torch.float32).eval()
    log(f"{model_name}: applying the trained predictor head ({HEAD_FILE}): view 1 after the predictor head")
    return head


def extract_views(
    model,
    tokenizer,
    pred_ids: list[int],
    records: Sequence[dict],
    *,
    pairs: str = "first",
    batch_size: int = 16,
    max_length: int = 1024,
    label: str = "",
    name: str = "",
    trained: bool = True,
    options=None,
    head=None,
) -> ViewSet:
    """Views of every selected pair, batched, through the training code path (collator + mask).

    With `head` (the run's PredictorHead), view 1 is head(view 1) in float32, as the loss saw it.
    """
    import torch

    from step_jepa.method.layout import StepJEPACollator
    from step_jepa.method.model import StepJEPAModel
    from step_jepa.method.options import JEPAOptions

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
            chunk = kept[s : s + batch_size]
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
    return ViewSet(
        label=label or model_label(name),
        model=name,
        v1=np.concatenate(v1s),
        v2=np.concatenate(v2s),
        ids=np.array([m[1] for m in meta], dtype=str),
        example_index=np.array([m[0] for m in meta], dtype=np.int64),
        pair_index=np.array([m[2] for m in meta], dtype=np.int64),
        predictors=len(pred_ids),
        predictors_trained=trained,
        view1_head=head is not None,
        stats={"records": len(records), "examples": len(kept), "pairs": int(len(meta)), **skipped},
    )


def run_embed(
    models: Sequence[str],
    *,
    data: str | None,
    n: int,
    out: str | Path,
    pairs: str = "first",
    batch_size: int = 16,
    max_length: int = 1024,
    seed: int = DEFAULT_DATA_SEED,
    predictors: int | None = None,
    device: str | None = None,
    tsne: bool = True,
    layer: int | None = None,
    use_head: bool = True,
) -> dict[str, Any]:
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
    log(
        f"views from decoder layer {getattr(options, 'layer', -1)}"
        f"{'' if options.jepa_final_norm else ' (without the final norm)'}, K={predictors}"
    )
    sets, metrics = [], []
    for k, name in enumerate(models, 1):
        model, tok, pred_ids, trained = load_embed_model(name, predictors, device)
        head = (
            load_predictor_head(name, model.get_input_embeddings().weight.shape[1], next(model.parameters()).device)
            if use_head
            else None
        )
        vs = extract_views(
            model,
            tok,
            pred_ids,
            records,
            pairs=pairs,
            batch_size=batch_size,
            max_length=max_length,
            name=name,
            trained=trained,
            options=options,
            head=head,
        )
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
    report = {
        "data": data or f"generator ({n} problems, seed {seed})",
        "pairs": pairs,
        "view_layer": options.jepa_layer,
        "view_final_norm": options.jepa_final_norm,
        "files": files,
        "models": [
            {
                "label": vs.label,
                "model": vs.model,
                "npz": str(out / f"embeddings_model{k}.npz"),
                "predictors": vs.predictors,
                "predictors_trained": vs.predictors_trained,
                "view1": "after the predictor head" if vs.view1_head else "hidden state (no predictor head)",
                **vs.stats,
                "metrics": m,
            }
            for k, (vs, m) in enumerate(zip(sets, metrics), 1)
        ],
    }
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
                f"{100 * mt['retrieval_chance']:.1f}%)"
            )
        lines.append(
            f"  spread   pairwise cos v1 {mt['view1_pairwise_cos']:+.3f} v2 {mt['view2_pairwise_cos']:+.3f}  "
            f"effective rank v1 {mt['view1_effective_rank']:.1f} v2 {mt['view2_effective_rank']:.1f}"
        )
    return "\n".join(lines)
