"""`step-jepa embed` and `step-jepa plot`: look at what the JEPA views learned, and at loss curves.

embed: extract view 1 / view 2 of N examples exactly as training computes them and tell
*prediction* from *collapse* (:mod:`step_jepa.embed`; the diagnostics are :mod:`step_jepa.collapse`).

plot: loss curves (total, LM, JEPA) of one or more runs from their metrics.jsonl
(:mod:`step_jepa.plots`, which also draws embed's figures).

This module registers both subcommands and re-exports the names that lived here before.
"""

from __future__ import annotations

import argparse
from typing import Any

# Re-exports: these names live in step_jepa.collapse, step_jepa.embed and step_jepa.plots now.
from .collapse import (  # noqa: F401
    ViewSet,
    centered,
    cosine_pairs,
    effective_rank,
    mean_pairwise_cos,
    negative_partners,
    retrieval_accuracy,
    view_metrics,
)
from .embed import (  # noqa: F401
    DEFAULT_DATA_SEED,
    count_predictor_tokens,
    extract_views,
    format_metrics,
    load_embed_model,
    load_embed_records,
    load_predictor_head,
    log,
    model_label,
    run_embed,
    segment_records,
    shared_predictor_count,
    view_options,
)
from .plots import (  # noqa: F401
    PLOT_METRICS,
    VIEW_COLORS,
    pca_2d,
    plot_cosines,
    plot_projection,
    plot_runs,
    read_metrics,
    short_labels,
    tsne_2d,
)

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
