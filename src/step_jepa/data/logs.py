"""The package's logger: every module logs under ``step_jepa.<module>`` through :func:`get_logger`.

Like ``transformers.utils.logging``, the first call gives the ``step_jepa`` root logger one
console handler and a level (INFO: what a run is doing is worth seeing by default), and stops it
from propagating, so an application that configures the root logger does not print each line
twice. ``step-jepa train`` then sets the level per process from ``--log_level`` /
``--log_level_replica`` (see ``StepJEPAConfig.process_log_level``). CLI tables and reports are
not log messages: they go to stdout with ``print``.
"""

from __future__ import annotations

import logging
import sys

ROOT = "step_jepa"
PREFIX = "[step-jepa] "


class _Console(logging.Handler):
    """Info to stdout, warnings and errors to stderr, looked up at each message.

    The stream is resolved per record (not held, as `logging.StreamHandler` does), so a
    redirected or captured ``sys.stdout`` (pytest's capsys, ``contextlib.redirect_stdout``)
    receives the messages logged after the redirection.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


class _Prefixed(logging.Formatter):
    """Every line of a message starts with ``[step-jepa] `` (``WARNING: `` etc. after it for
    warnings and above), so multi-line reports stay recognisable in an interleaved log."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        lines = text.split("\n")
        return "\n".join([PREFIX + level + lines[0], *(PREFIX + line for line in lines[1:])])


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _Console) for h in root.handlers):
        handler = _Console()
        handler.setFormatter(_Prefixed())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (pass ``__name__``), under the configured ``step_jepa`` root."""
    _root()
    return logging.getLogger(name)


def set_level(level: int) -> None:
    """Messages below ``level`` are dropped, in every module of the package."""
    _root().setLevel(level)
