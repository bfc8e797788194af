"""Checks for optional imports, run before a command does any work.

`compare` trains for minutes and `embed` extracts views for a minute before they draw anything;
an ImportError at that point throws the work away. Commands that plot call `require_matplotlib`
first, so a broken install fails in the first second with a message saying how to fix it.
"""

from __future__ import annotations

import importlib


class MissingDependency(ImportError, ValueError):
    """A package a command needs is not installed.

    Also a ValueError so that the CLI reports it as one line (exit code 2), like other problems
    the user fixes, instead of a traceback.
    """


def require_matplotlib(command: str) -> None:
    """Raise MissingDependency unless matplotlib (with its Agg backend) can be imported."""
    try:
        importlib.import_module("matplotlib")
        importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as e:
        raise MissingDependency(
            f"`step-jepa {command}` draws figures and needs matplotlib, which is not importable ({e}). "
            "Install it with: pip install matplotlib  (or reinstall step-jepa: pip install -e .)"
        ) from e
