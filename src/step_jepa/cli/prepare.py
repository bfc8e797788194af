"""`step-jepa prepare`: convert raw reasoning data into prepared Step-JEPA JSONL."""

from __future__ import annotations

import argparse
import sys

from step_jepa.data.formats import FORMATS
from step_jepa.data.prepare import prepare, split_dev
from step_jepa.data.records import DEFAULT_SYSTEM_PROMPT, DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``step-jepa prepare`` to an argparse subparsers object."""
    p.description = (
        "Convert raw data into prepared Step-JEPA JSONL. Bad lines are skipped and counted "
        "per reason; the printed report shows the first ones with file:line and what was wrong, "
        "<output>.report.json the first lines of every reason (skipped_details); --strict stops at the "
        "first one with a file:line error instead."
    )
    src = p.add_argument_group("sources (at least one)")
    src.add_argument("--input", metavar="PATH", help="a .jsonl/.json file or a directory of them")
    src.add_argument(
        "--dataset",
        metavar="NAME",
        help="Hugging Face Hub dataset, e.g. openai/gsm8k (NAME:CONFIG for a config); needs `pip install datasets`",
    )
    src.add_argument("--split", default="train", help="split of --dataset (default: train)")
    src.add_argument("--generate", type=int, metavar="N", help="add N generated arithmetic word problems")
    src.add_argument("--seed", type=int, default=0, help="seed for --generate (default: 0)")
    src.add_argument(
        "--task",
        default="mixed",
        choices=("mixed", "chain"),
        help="--generate's problems: mixed word-problem templates, or chain: a start value and "
        "--chain_steps operations on --chain_digits-digit numbers, a task of tunable difficulty "
        "(default: mixed)",
    )
    src.add_argument("--chain_steps", type=int, default=4, help="operations per chain problem (default: 4)")
    src.add_argument("--chain_digits", type=int, default=3, help="digits of a chain's numbers, 1-6 (default: 3)")
    p.add_argument(
        "--output", default="data/prepared.jsonl", metavar="PATH", help="output JSONL (default: data/prepared.jsonl)"
    )
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: auto-detect per line)")
    p.add_argument("--keep_annotations", action="store_true", help="keep GSM8K calculator annotations like <<48/2=24>>")
    p.add_argument(
        "--min_step_chars", type=int, default=1, help="merge steps shorter than this into the next one (default: 1)"
    )
    p.add_argument("--min_steps", type=int, default=2, help="skip examples with fewer steps (default: 2)")
    p.add_argument("--system_prompt", default=DEFAULT_SYSTEM_PROMPT, help="system prompt for records that have none")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    p.add_argument(
        "--dev_fraction",
        type=float,
        default=0.0,
        help="hold out this fraction (seeded by --seed) as <output stem>.dev.jsonl for model selection",
    )


def run(args: argparse.Namespace) -> int:
    """Errors are raised as DataError: `step-jepa` prints them as one line and exits 2."""
    if args.input is None and args.dataset is None and not args.generate:
        raise DataError("prepare needs --input, --dataset or --generate N")
    if args.min_steps < 1 or args.min_step_chars < 1 or (args.generate or 0) < 0:
        raise DataError("--min_steps and --min_step_chars must be >= 1, --generate >= 0")
    report = prepare(
        args.input,
        args.output,
        fmt=args.format,
        dataset=args.dataset,
        split=args.split,
        keep_annotations=args.keep_annotations,
        min_step_chars=args.min_step_chars,
        min_steps=args.min_steps,
        system_prompt=args.system_prompt,
        generate=args.generate,
        seed=args.seed,
        skip_invalid=not args.strict,
        generate_task=(
            {"task": "chain", "chain_steps": args.chain_steps, "chain_digits": args.chain_digits}
            if args.task == "chain"
            else None
        ),
    )
    if report.written == 0:
        print(f"step-jepa prepare: error: no examples were written to {args.output}", file=sys.stderr)
        return 1
    if args.dev_fraction > 0:
        n_train, n_dev, dev = split_dev(args.output, args.dev_fraction, args.seed)
        print(f"held out {n_dev} examples in {dev}; {n_train} remain in {args.output}")
    return 0
