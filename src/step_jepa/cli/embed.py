"""`step-jepa embed`: extract view 1 / view 2 of N examples exactly as training computes them, draw
them and tell *prediction* from *collapse* (:mod:`step_jepa.analysis.embed`)."""

from __future__ import annotations

import argparse

from step_jepa.analysis.embed import DEFAULT_DATA_SEED, run_embed


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.description = (
        "Extract view-1/view-2 embeddings for N examples, save .npz, PCA "
        "(+ t-SNE with scikit-learn) and cosine histograms, and print collapse "
        "diagnostics. See docs/analysis.md."
    )
    e.add_argument("--model", required=True, help="model dir / id (LoRA adapter dirs are merged)")
    e.add_argument("--model2", help="a second model (e.g. the SFT baseline) drawn side by side")
    e.add_argument("--data", help="prepared or raw JSONL; default: generated problems")
    e.add_argument("-n", "--n", type=int, default=256, help="number of examples (default 256)")
    e.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_DATA_SEED,
        help=f"generator seed and negative sampling seed (default {DEFAULT_DATA_SEED})",
    )
    e.add_argument("--out", default="embeddings", help="output directory (default ./embeddings)")
    e.add_argument("--pairs", choices=("first", "all"), default="first", help="step pairs per example")
    e.add_argument("--batch_size", type=int, default=16)
    e.add_argument("--max_length", type=int, default=1024)
    e.add_argument(
        "--predictors",
        type=int,
        default=None,
        help="K predictor tokens (default: as many as the tokenizer has, else 1)",
    )
    e.add_argument(
        "--layer",
        type=int,
        default=None,
        help="decoder layer to read the views from (default: the first model's --jepa_layer, else last)",
    )
    e.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    e.add_argument("--no_tsne", action="store_true", help="skip t-SNE even when scikit-learn is installed")
    e.add_argument(
        "--no_head",
        action="store_true",
        help="do not apply a run's trained predictor head (jepa_head.safetensors) to view 1",
    )


def run(args: argparse.Namespace) -> int:
    from step_jepa.analysis.deps import require_matplotlib

    require_matplotlib("embed")  # before the models load and the views are extracted
    if args.n < 2:
        raise ValueError("-n must be at least 2 (negatives come from other examples)")
    models = [args.model] + ([args.model2] if args.model2 else [])
    run_embed(
        models,
        data=args.data,
        n=args.n,
        out=args.out,
        pairs=args.pairs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        predictors=args.predictors,
        device=args.device,
        tsne=not args.no_tsne,
        layer=args.layer,
        use_head=not args.no_head,
    )
    return 0
