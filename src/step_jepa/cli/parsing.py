"""Argument parsing shared by every command: no guessed flags, suggestions for unknown ones, and
help lines that state their defaults."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from typing import Any, NoReturn

# Names users bring from other tools, that neither a prefix nor difflib would lead to.
ALIASES: dict[str, tuple[str, ...]] = {
    "--lr": ("--learning_rate",),
    "--epochs": ("--num_train_epochs",),
    "--batch_size": ("--per_device_train_batch_size",),
    "--attn": ("--attn_implementation",),
    "--compile": ("--torch_compile",),
    "--compile_scope": ("--torch_compile_scope",),
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

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
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
        return [
            next(o for o in a.option_strings if o.startswith("--"))
            for a in self._actions
            if any(o.startswith("--") for o in a.option_strings)
        ]


def suggest(flag: str, options: Sequence[str], n: int = 3) -> list[str]:
    """Flags `flag` probably meant: known aliases and the flags it abbreviates (what argparse
    would have picked), shortest first; only without those, difflib's close matches (a typo). At most `n`."""
    found = [o for o in ALIASES.get(flag, ()) if o in options]
    # Shortest first: with every TrainingArguments flag, `--res` also prefixes
    # `--restore_callback_states_from_checkpoint`, and the short name is the likely one.
    found += sorted((o for o in options if o.startswith(flag) and o not in found), key=lambda o: (len(o), o))
    return (found or difflib.get_close_matches(flag, options, n=n))[:n]


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
        if (
            "(default" in text
            or "default:" in text
            or any(default is x for x in (None, False, argparse.SUPPRESS))
            or not action.option_strings
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"  # help strings are %-formatted next
