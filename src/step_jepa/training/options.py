"""One command-line parser for every dataclass of options (`step-jepa train`, `step-jepa bench`).

Flags are made from the fields by `HfArgumentParser`'s own rules, so a `TrainingArguments` field
parses exactly as in any Hugging Face or TRL script (`--fsdp "full_shard auto_wrap"`, `--optim
adafactor`, `--bf16`, `--bf16 false`). On top of those rules: `--config FILE.yaml` overlays the
defaults (precedence: defaults < YAML < flags typed on the command line), an unknown YAML key is
an error naming the file and the key, and a malformed file is reported as `FILE:LINE: ...`.

`HfArgumentParser.parse_args_into_dataclasses` itself is not used: it fills every default into
the namespace, so a YAML value could not be told apart from a default it must override.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool


def dataclass_parser(cls: type) -> HfArgumentParser:
    """`HfArgumentParser(cls)` with our rules applied to its actions, plus --config.

    HfArgumentParser makes one flag per init field of `cls` (field metadata such as `help`,
    `choices`, `nargs` goes to `add_argument`); its default is then suppressed, so that only flags
    typed by the user override the YAML overlay (the help line says the default instead), and a
    `bool | None` flag may be given bare. Use it as a parent (`parents=[dataclass_parser(cls)]`)
    or through `add_dataclass_arguments`.
    """
    hf = HfArgumentParser(cls, add_help=False)
    for action in hf._actions:
        _suppress_default(action, field_default(cls, action.dest))
        _bare_bool(action)
    hf.add_argument("--config", help="YAML file of options (overridden by command-line flags)")
    return hf


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """`dataclass_parser(cls)`'s flags added to `parser` (e.g. a subcommand's), as argparse's
    `parents=[...]` would add them."""
    parser._add_container_actions(dataclass_parser(cls))


def _bare_bool(action: argparse.Action) -> None:
    """`--use_cpu` alone means true for `bool | None` fields too (HF gives those no bare form)."""
    first = action.option_strings[0]
    if action.type is string_to_bool and action.nargs is None and not first.startswith("--no_"):
        action.nargs, action.const = "?", True


def _suppress_default(action: argparse.Action, default: Any) -> None:
    """Leave a flag unset unless typed (YAML < CLI), saying its default in the help instead.

    As `cli.DefaultsFormatter` does, None and False are not shown ("(default: None)" tells
    nothing; the help says what happens without the flag); `is`, since a default of 0 is shown.
    """
    action.default = argparse.SUPPRESS
    text = (action.help or "").replace("%", "%%")  # argparse %-formats help strings
    shown = not (
        action.option_strings[0].startswith("--no_")
        or "(default" in text
        or any(default is x for x in (None, False))
        or default == ""
    )
    if shown:
        value = plain(default)
        value = " ".join(map(str, value)) if isinstance(value, list) else value
        text += f" (default: {str(value).replace('%', '%%')})"
    action.help = text


def resolve_dataclass(args: argparse.Namespace, cls: type) -> Any:
    """Defaults, then the `--config` YAML overlay, then explicit flags, built as `cls`.

    `validate()` is called when the class has one and does not already run it while being built
    (`validates_on_init`), so every problem is reported before anything loads.
    """
    names = {f.name for f in fields(cls) if f.init}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        overlay = load_yaml(args.config)
        refuse_unknown(args.config, overlay, names)
        values.update(coerce_numbers(str(args.config), overlay, cls))
    values.update({k: v for k, v in vars(args).items() if k in names})
    cfg = cls(**values)
    if hasattr(cfg, "validate") and not getattr(cls, "validates_on_init", False):
        cfg.validate()
    return cfg


def coerce_numbers(where: str, values: dict[str, Any], cls: type) -> dict[str, Any]:
    """`values` with YAML strings converted for the float options of `cls`.

    PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string, not a number; written as a learning
    rate it would reach the config as "1e-4" and fail somewhere deep with a TypeError. A string
    that is a number becomes a float; one that is not is an error naming the file and key.
    """
    hints = get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        if not isinstance(value, str) or key not in hints or non_none_type(hints[key]) is not float:
            continue
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"{where}: {key}: expected a number, got {value!r}") from None
    return out


def non_none_type(tp: Any) -> Any:
    """The first non-None type of a union such as `X | None` (`tp` itself when it is no union)."""
    args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
    return args[0] if args else tp


def refuse_unknown(path: str | Path, overlay: dict[str, Any], names: set[str]) -> None:
    """A YAML key that is no option is an error naming the file, the key and the likely option:
    ignoring it would silently run with the default instead."""
    unknown = sorted(map(str, set(overlay) - names))
    if not unknown:
        return
    hints = {k: difflib.get_close_matches(k, sorted(names), n=1) for k in unknown}
    listed = ", ".join(f"{k} (did you mean {h[0]}?)" if h else k for k, h in hints.items())
    raise ValueError(f"{path}: unknown option(s): {listed}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path`; a syntax error is a one-line ValueError "FILE:LINE: problem".

    PyYAML's own message spans several lines and names `<unicode string>` instead of the file.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(yaml_error_message(path, e)) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value")
    return data


def yaml_error_message(path: str | Path, e: yaml.YAMLError) -> str:
    """`FILE:LINE: problem (column C)` from a YAML error; marks are 0-based, editors count from 1."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    detail = f" ({context})" if context else ""
    column = f", column {mark.column + 1}" if mark is not None else ""
    return f"{where}: invalid YAML: {problem}{detail}{column}"


def field_default(cls: type, name: str) -> Any:
    """The default of field `name` of `cls` (a fresh one for `default_factory` fields)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def plain(v: Any) -> Any:
    """A YAML/JSON-safe copy: enums as their values, dataclasses as dicts."""
    if isinstance(v, Enum):
        return v.value
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return plain(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v
