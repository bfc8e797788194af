"""The prepared-record schema: what every producer writes and every consumer reads.

A prepared record is one JSON object per line::

    {"id": str,
     "messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}],
     "steps": [str, ...], "total_steps": int, "answer": str}

The assistant content is exactly ``"\\n\\n".join(steps)``. The trainer finds step boundaries by
that separator in the *text* (never in token ids), so the one invariant everything here protects
is: a step never contains a blank line, and steps are stripped. Inner blank lines of a step are
collapsed to a single ``"\\n"`` (line structure such as display equations survives; paragraphs do
not, because a paragraph break *is* a step break).

Also here: the errors of the data layer (:class:`DataError`, :class:`Skip` with its fixed
:data:`SKIP_REASONS`) and the validation of chat messages and of already prepared records, which
:mod:`step_jepa.data.formats` uses. Imports nothing from the package but :mod:`step_jepa.data.answers`.
"""

from __future__ import annotations

import re

from step_jepa.data.answers import clean_answer

DEFAULT_SYSTEM_PROMPT = (
    "Please solve the problem step by step (separate steps with double newlines), but keep it "
    "short and put your final answer (do not include any other text or units) within \\boxed{}."
)


# The fixed vocabulary of skip reasons. Reports aggregate by these strings, so they must stay
# stable and few; the per-line detail goes into the exception message instead.
SKIP_REASONS = frozenset(
    {
        "not utf-8",
        "invalid json",
        "not a json object",
        "unknown format",
        "missing field",
        "non-string field",
        "empty field",
        "malformed messages",
        "no user turn",
        "no assistant turn",
        "multi-turn conversation",
        "fewer than min steps",
        "no final answer",
        "empty answer",
        "answer mismatch",
        "inconsistent record",
        "duplicate id",
    }
)


class DataError(ValueError):
    """A data problem the user must fix. Starts with ``"{path}:{line}: "`` when it is about a line,
    so editors and terminals can jump straight to it."""


class Skip(Exception):
    """Raised by :func:`convert_line` for a line that cannot become a record.

    ``reason`` is one of :data:`SKIP_REASONS` (what reports count); ``detail`` says what exactly
    was wrong on this line (what error messages show).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:  # a typo here would silently create a new report bucket
            raise ValueError(f"unknown skip reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


_BLANK_LINE_RE = re.compile(r"\n\s*\n")


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def clean_step(text: str) -> str:
    """Normalise one step: unify newlines, drop trailing spaces, collapse inner blank lines to one
    ``"\\n"`` and strip. The result can never contain ``"\\n\\n"``."""
    lines = [line.rstrip() for line in _normalize_newlines(text).split("\n")]
    return "\n".join(line for line in lines if line.strip()).strip()


def split_steps(text: str) -> list[str]:
    """Split a solution into steps at blank lines; whitespace-only paragraphs are not steps."""
    pieces = _BLANK_LINE_RE.split(_normalize_newlines(text))
    return [s for s in (clean_step(p) for p in pieces) if s]


def merge_short_steps(steps: list[str], min_chars: int) -> list[str]:
    """Merge steps shorter than ``min_chars`` into the next step (the last one into the previous).

    Merging instead of dropping keeps the assistant text complete: the model is still trained on
    every token, the fragment just stops counting as its own step.
    """
    out: list[str] = []
    pending = ""
    for step in steps:
        step = f"{pending}\n{step}" if pending else step
        pending = ""
        if len(step) < min_chars:
            pending = step
        else:
            out.append(step)
    if pending:
        if out:
            out[-1] = f"{out[-1]}\n{pending}"
        else:
            out.append(pending)
    return out


def final_answer_step(answer: str) -> str:
    return f"The final answer is \\boxed{{{answer}}}."


def make_record(
    id: str,
    question: str,
    steps: list[str],
    answer: str,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> dict:
    """Build a prepared record. Steps are cleaned here so that every producer (converters, the
    generator, user code) gets the ``"\\n\\n"`` invariant for free."""
    cleaned = [s for s in (clean_step(s) for s in steps) if s]
    if not cleaned:
        raise ValueError("a record needs at least one non-empty step")
    return {
        "id": id,
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": question.strip()},
            {"role": "assistant", "content": "\n\n".join(cleaned)},
        ],
        "steps": cleaned,
        "total_steps": len(cleaned),
        "answer": answer,
    }


def _require_str(obj: dict, key: str, *, allow_empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        raise Skip("missing field", f"field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise Skip("non-string field", f"field {key!r} is {type(value).__name__}, not a string")
    if not allow_empty and not value.strip():
        raise Skip("empty field", f"field {key!r} is empty")
    return value


def _scalar_str(obj: dict, key: str) -> str | None:
    """A field that may be a string or a number (ground truths and ids often are ints)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Skip("non-string field", f"field {key!r} is {type(value).__name__}")
    return str(value).strip()


def _chat_turns(obj: dict) -> tuple[str | None, str, str]:
    """(system, user, assistant) contents of a single-exchange chat."""
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise Skip("malformed messages", "'messages' must be a non-empty list")
    by_role: dict[str, list[str]] = {}
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise Skip("malformed messages", f"message {i} has no string 'role'")
        if not isinstance(msg.get("content"), str):
            raise Skip("non-string field", f"message {i} ({msg['role']}) content is not a string")
        by_role.setdefault(msg["role"], []).append(msg["content"])
    if not by_role.get("user"):
        raise Skip("no user turn", "messages have no user turn")
    if not by_role.get("assistant"):
        raise Skip("no assistant turn", "messages have no assistant turn")
    if len(by_role["user"]) > 1 or len(by_role["assistant"]) > 1:
        # Keeping only the last exchange would silently drop context the answer depends on.
        raise Skip("multi-turn conversation", "only one user and one assistant turn are supported")
    if not by_role["user"][0].strip():
        raise Skip("empty field", "the user turn is empty")
    system = by_role["system"][0] if by_role.get("system") else None
    return system, by_role["user"][0], by_role["assistant"][0]


def _convert_prepared(obj: dict) -> tuple[str | None, str, list[str], str]:
    system, question, assistant = _chat_turns(obj)
    raw_steps = obj["steps"]
    if not isinstance(raw_steps, list) or not all(isinstance(s, str) for s in raw_steps):
        raise Skip("non-string field", "'steps' must be a list of strings")
    steps = [s for s in (clean_step(s) for s in raw_steps) if s]
    if steps != split_steps(assistant):
        raise Skip("inconsistent record", "assistant content is not the steps joined by blank lines")
    total = obj.get("total_steps", len(raw_steps))
    if total not in (len(raw_steps), len(steps)) or isinstance(total, bool):
        raise Skip("inconsistent record", f"total_steps={total!r} but there are {len(steps)} steps")
    answer = _require_str(obj, "answer", allow_empty=True)
    return system, question, steps, clean_answer(answer)
