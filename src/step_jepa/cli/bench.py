"""`step-jepa bench`: time optimizer steps of SFT and Step-JEPA layouts on the same examples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from step_jepa.bench.run import run_bench
from step_jepa.bench.table import format_env, format_table
from step_jepa.bench.timing import BenchConfig
from step_jepa.training.options import add_dataclass_arguments, resolve_dataclass


def add_arguments(p: argparse.ArgumentParser) -> None:
    """BenchConfig's fields through train's parser (`--config FILE.yaml` included), plus the outputs."""
    add_dataclass_arguments(p, BenchConfig)
    p.add_argument("--json", default=None, metavar="OUT", help="write env, config and rows as JSON")
    p.add_argument("--markdown", default=None, metavar="OUT", help="write env and table as markdown")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Defaults < `--config` YAML < flags, as for `step-jepa train`."""
    return resolve_dataclass(args, BenchConfig)


def run(args: argparse.Namespace) -> int:
    result = run_bench(config_from_args(args))
    print()
    print(format_env(result))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text("```\n" + format_env(result) + "\n```\n\n" + format_table(result, True) + "\n")
    return 0
