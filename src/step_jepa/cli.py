"""`step-jepa` command line: prepare, train, inspect, eval, and the analysis commands."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn, Sequence


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
    Command("prepare", "step_jepa.prepare", "add_cli",
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


# Names users bring from other tools, that neither a prefix nor difflib would lead to.
ALIASES: dict[str, tuple[str, ...]] = {
    "--lr": ("--learning_rate",),
    "--epochs": ("--num_train_epochs",),
    "--batch_size": ("--per_device_train_batch_size",),
    "--grad_accum": ("--gradient_accumulation_steps",),
    "--out": ("--output_dir",),
    "--output": ("--output_dir",),
}


class Parser(argparse.ArgumentParser):
    """ArgumentParser that never guesses a flag and says which flag was probably meant.

    argparse's prefix matching turns `--lr 1e-4` into `--lr_scheduler_type 1e-4` and `--res`
    into `--resume`, silently, so `allow_abbrev` is off. Subparsers are built with the parser's
    own class, so every subcommand inherits this; each one also reports its own unknown flags
    itself, because argparse would hand them to the top-level parser, whose usage line and
    option list say nothing about the subcommand the user typed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.unrecognized(extras)
        return ns, extras

    def unrecognized(self, extras: list[str]) -> NoReturn:
        """Exit 2 with this parser's usage, naming the unknown arguments and the likely flags."""
        msg = f"unrecognized arguments: {' '.join(extras)}"
        hints = {a: suggest(a.split("=", 1)[0], self.option_strings()) for a in extras if a.startswith("--")}
        hints = {a: h for a, h in hints.items() if h}
        if len(hints) == 1:
            msg += f" (did you mean {' or '.join(next(iter(hints.values())))}?)"
        elif hints:
            msg += " (did you mean " + "; ".join(f"{' or '.join(h)} for {a}" for a, h in hints.items()) + "?)"
        self.error(msg)

    def option_strings(self) -> list[str]:
        """Each flag's first long spelling: HfArgumentParser adds `--warmup-steps` beside
        `--warmup_steps`, and a suggestion should name the spelling the docs use."""
        return [next(o for o in a.option_strings if o.startswith("--")) for a in self._actions
                if any(o.startswith("--") for o in a.option_strings)]


def suggest(flag: str, options: Sequence[str], n: int = 3) -> list[str]:
    """Flags `flag` probably meant: known aliases and the flags it abbreviates (what argparse
    would have picked), shortest first; only without those, difflib's close matches (a typo). At most `n`."""
    found = [o for o in ALIASES.get(flag, ()) if o in options]
    # Shortest first: with every TrainingArguments flag, `--res` also prefixes
    # `--restore_callback_states_from_checkpoint`, and the short name is the likely one.
    found += sorted((o for o in options if o.startswith(flag) and o not in found), key=lambda o: (len(o), o))
    return (found or difflib.get_close_matches(flag, options, n=n))[:n]


def _version() -> str:
    """The installed distribution's version; the package's own when running from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("step-jepa")
    except PackageNotFoundError:
        from . import __version__

        return __version__


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a help line that does not already say its default.

    Unlike argparse.ArgumentDefaultsHelpFormatter it leaves out None and False defaults
    ("(default: None)" tells nothing; the help says what happens without the flag) and help
    lines that already explain the default in words.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # `is`, not `in`: 0 == False, and a default of 0 is worth showing.
        if "(default" in text or "default:" in text or any(default is x for x in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"  # help strings are %-formatted next


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
    parser = Parser(prog="step-jepa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"step-jepa {_version()}")
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
    for module, name in (("step_jepa.sources", "ModelNotFound"), ("step_jepa.trainer", "NonFiniteLossError")):
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
