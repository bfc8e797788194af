"""`step-jepa` command line: prepare, train, inspect, eval, and the analysis commands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Command:
    """A subcommand and where its arguments live.

    Only the chosen subcommand's module is imported (its `register(subparsers)` adds the real
    arguments); the others get a placeholder carrying just `help`. Several modules import torch
    at their top, so importing them all would make `step-jepa prepare` (and `--help`) pay seconds
    for torch and transformers it never uses.
    """

    name: str
    module: str
    register: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("prepare", "step_jepa.data", "add_cli",
            "convert reasoning data (GSM8K, DeepSeek-style, chat) to Step-JEPA JSONL"),
    Command("train", "step_jepa.cli", "_add_train", "fine-tune with Step-JEPA (or plain SFT with --lbd 0)"),
    Command("inspect", "step_jepa.inspection", "add_cli",
            "show one example's tokens, step spans, labels and JEPA mask"),
    Command("eval", "step_jepa.evaluate", "add_cli", "greedy-decode a model on GSM8K-style problems and score it"),
    Command("compare", "step_jepa.compare", "add_cli",
            "train + evaluate a grid of configs × seeds and tabulate accuracy (mean ± std)"),
    Command("embed", "step_jepa.viz", "add_cli", "extract JEPA views, plot them and report collapse diagnostics"),
    Command("plot", "step_jepa.viz", "add_cli", "plot loss curves of one or more runs from metrics.jsonl"),
    Command("bench", "step_jepa.bench", "add_cli", "time forward+backward+AdamW steps of SFT vs Step-JEPA layouts"),
)


def _add_train(subparsers: Any) -> None:
    from .config import add_config_arguments

    p = subparsers.add_parser("train", help=next(c.help for c in COMMANDS if c.name == "train"))
    add_config_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .trainer import run_train

    run_train(resolve_config(args))
    return 0


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv: the first word that is not a global option (none take values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with real arguments for the subcommand named in `argv` only.

    With argv None every subcommand is registered for real (complete, but imports torch); with
    an argv naming no known subcommand (`--help`, a typo) all are placeholders that still list
    their help, and argparse reports the problem.
    """
    parser = argparse.ArgumentParser(prog="step-jepa", description=__doc__)
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of an error (also: STEP_JEPA_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else _chosen_command(argv)
    # A module registers all of its subcommands at once (viz: embed and plot), so register by module.
    modules = {c.module: c.register for c in COMMANDS if argv is None or c.name == chosen}
    for module, register in modules.items():
        getattr(importlib.import_module(module), register)(sub)
    for cmd in COMMANDS:
        if cmd.name not in sub.choices:
            sub.add_parser(cmd.name, help=cmd.help, add_help=False)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input or environment": reported in one message, no traceback.

    ModelNotFound and NonFiniteLossError are looked up only if their modules are loaded — an
    exception of theirs implies they are — so that catching them never imports torch.
    """
    types: list[type[BaseException]] = [FileNotFoundError, FileExistsError, ValueError]
    for module, name in (("step_jepa.modeling", "ModelNotFound"), ("step_jepa.trainer", "NonFiniteLossError")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            types.append(getattr(loaded, name))
    return tuple(types)


def _want_traceback(args: argparse.Namespace) -> bool:
    return bool(args.traceback) or os.environ.get("STEP_JEPA_TRACEBACK", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; user errors print `step-jepa CMD: error: ...` and return 2, Ctrl-C returns 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if _want_traceback(args):
            raise
        print(f"step-jepa {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _want_traceback(args) or not isinstance(e, _user_error_types()):
            raise
        print(f"step-jepa {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
