"""`step-jepa` command line: prepare, train, inspect, eval, and the analysis commands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommands live in their modules (each exposes add_cli(subparsers)); imported lazily so that
# `step-jepa prepare` does not pay for importing transformers.
_COMMANDS = ["data", "inspection", "evaluate", "compare", "viz", "bench"]


def _add_train(subparsers) -> None:
    from .config import add_config_arguments

    p = subparsers.add_parser("train", help="fine-tune with Step-JEPA (or plain SFT with --lbd 0)")
    add_config_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .trainer import run_train

    run_train(resolve_config(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="step-jepa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    for name in _COMMANDS:
        try:
            mod = importlib.import_module(f"step_jepa.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"step_jepa.{name}":
                raise
            continue
        mod.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # User errors get one clear line, not a traceback.
        print(f"step-jepa {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
