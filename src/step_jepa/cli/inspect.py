"""`step-jepa inspect`: show one example exactly as the trainer sees it."""

from __future__ import annotations

import argparse

from step_jepa.analysis.inspect import describe
from step_jepa.data.segment import segment


def _check_args(args: argparse.Namespace) -> None:
    if args.predictors < 1:
        raise ValueError(f"--predictors must be >= 1, got {args.predictors}")
    if args.index < 0:
        raise ValueError(f"--index must be >= 0, got {args.index}")
    if args.max_length is not None and args.max_length < 1:
        raise ValueError(f"--max_length must be >= 1, got {args.max_length}")


def run(args: argparse.Namespace) -> int:
    """Load the tokenizer and data like `train` does, segment one record and describe it."""
    from step_jepa.models.loading import load_tokenizer, predictor_tokens
    from step_jepa.models.sources import resolve_model_path
    from step_jepa.training.config import StepJEPAConfig
    from step_jepa.training.data import load_training_records

    _check_args(args)
    cfg = StepJEPAConfig(model=args.model, train_file=args.train_file, generate_examples=max(args.index + 1, 8))
    tok = load_tokenizer(resolve_model_path(cfg.model))
    names = predictor_tokens(args.predictors)
    missing = [t for t in names if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    pred_ids = tok.convert_tokens_to_ids(names)
    records, _ = load_training_records(cfg)
    if args.index >= len(records):
        raise ValueError(
            f"--index {args.index} is out of range: {cfg.train_file or 'the generator'} "
            f"has {len(records)} example(s) (valid: 0..{len(records) - 1})"
        )
    ex = segment(records[args.index], tok, args.max_length)
    print(describe(ex, tok, pred_ids, pair=args.pair, color=not args.no_color))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``step-jepa inspect`` to an argparse subparsers object."""

    p.add_argument("--train_file", default=None, help="prepared JSONL (default: the built-in generator)")
    p.add_argument("--index", type=int, default=0, help="which record to show (0-based line of --train_file)")
    p.add_argument("--pair", type=int, default=0, help="pair i shows S(i+1)→S(i+2); 0 = S1→S2")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="tokenizer source")
    p.add_argument("--predictors", type=int, default=1, help="K predictor tokens after step i, as train's --predictors")
    p.add_argument("--max_length", type=int, default=1024, help="token limit per example, as train's --max_length")
    p.add_argument("--no_color", action="store_true", help="plain text, no ANSI colours (e.g. for a file)")
