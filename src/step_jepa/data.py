"""The data layer: turn raw reasoning datasets into "prepared" Step-JEPA JSONL and read it back.

A prepared record is one JSON object per line::

    {"id": str,
     "messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}],
     "steps": [str, ...], "total_steps": int, "answer": str}

The assistant content is exactly ``"\\n\\n".join(steps)``. The trainer finds step boundaries by
that separator in the *text* (never in token ids), so the one invariant everything here protects
is: a step never contains a blank line, and steps are stripped. Inner blank lines of a step are
collapsed to a single ``"\\n"`` (line structure such as display equations survives; paragraphs do
not, because a paragraph break *is* a step break).

Raw inputs (GSM8K, DeepSeek-style synthetic responses, chat messages, prepared records) are
converted one line at a time by :func:`convert_line`. A line that cannot be used raises
:class:`Skip` with a reason from :data:`SKIP_REASONS`; :func:`prepare` and :func:`load_records`
either count it in a :class:`Report` or, in strict mode, stop with a :class:`DataError` that
names ``file:line``. Files are read as bytes and decoded per line, so one bad byte costs one line,
never the whole file.

Only the standard library is needed; ``datasets`` is imported lazily for ``--dataset``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

DEFAULT_SYSTEM_PROMPT = (
    "Please solve the problem step by step (separate steps with double newlines), but keep it "
    "short and put your final answer (do not include any other text or units) within \\boxed{}."
)

FORMATS = ("auto", "gsm8k", "deepseek", "chat", "prepared")

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

# Per-line details kept in a report; counts stay exact beyond it. A 10M-line file full of
# errors must not turn the report itself into a memory problem.
MAX_SKIPPED_DETAILS = 1000

# Hub datasets whose default config cannot be guessed by `datasets` itself.
_DEFAULT_HUB_CONFIGS = {"gsm8k": "main", "openai/gsm8k": "main"}


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


# --------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------

_BLANK_LINE_RE = re.compile(r"\n\s*\n")
_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d)")
_GSM8K_FINAL_RE = re.compile(r"^[ \t]*####[ \t]*(.*)$", re.MULTILINE)
_RULE_RE = re.compile(r"^\s*([-*_=])\1{2,}\s*$")
_STEP_MARKER_RE = re.compile(
    r"^\s*(?:#{1,6}\s*)?(\*\*|__)?\s*step\s*\d+\s*[:.)\-\u2013\u2014]?\s*", re.IGNORECASE
)
_NUMBERED_RE = re.compile(r"^\s*\d{1,2}[.)]\s+")


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


def clean_answer(answer: str) -> str:
    """Strip and drop thousands separators (``1,000`` -> ``1000``) so answers compare exactly."""
    return _THOUSANDS_RE.sub("", answer.strip())


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces (``\\boxed{\\frac{1}{2}}``)."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, i = 0, start + len("\\boxed")
        for i in range(i, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{") : i].strip()
        # Unbalanced (truncated generation): try an earlier, complete one.
        start = text.rfind("\\boxed{", 0, start)
    return None


def final_answer_step(answer: str) -> str:
    return f"The final answer is \\boxed{{{answer}}}."


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


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


def detect_format(obj: dict) -> str:
    """Guess the format of one raw object from its keys."""
    if "messages" in obj:
        return "prepared" if "steps" in obj else "chat"
    if "deepseek_response" in obj:
        return "deepseek"
    if "question" in obj and "answer" in obj:
        return "gsm8k"
    raise Skip("unknown format", f"no known format has keys {sorted(obj)[:8]}")


def _gsm8k_parts(answer_text: str, keep_annotations: bool) -> tuple[list[str], str]:
    """Split a GSM8K solution into its reasoning lines and the normalised ``####`` answer."""
    text = _normalize_newlines(answer_text)
    finals = list(_GSM8K_FINAL_RE.finditer(text))
    if not finals:
        raise Skip("no final answer", "GSM8K answer has no '#### <answer>' line")
    final = finals[-1]
    answer = clean_answer(final.group(1))
    if not answer:
        raise Skip("empty answer", "nothing after '####'")
    body = text[: final.start()]
    if not keep_annotations:
        body = _ANNOTATION_RE.sub("", body)
    # GSM8K writes one reasoning step per line.
    steps = [clean_step(line) for line in body.split("\n")]
    return [s for s in steps if s], answer


def _convert_gsm8k(obj: dict, keep_annotations: bool) -> tuple[str, list[str], str]:
    question = _require_str(obj, "question")
    steps, answer = _gsm8k_parts(_require_str(obj, "answer"), keep_annotations)
    return question, steps + [final_answer_step(answer)], answer


def _strip_think(response: str) -> str:
    """Drop a ``<think>`` block when there is an answer after it; if the model put everything
    inside (or was cut off inside it), the thinking *is* the solution."""
    if "</think>" in response:
        before, _, after = response.rpartition("</think>")
        if after.strip():
            return after
        return before.split("<think>", 1)[-1]
    if "<think>" in response:
        return response.split("<think>", 1)[1]
    return response


def _strip_marker(paragraph: str) -> str:
    """Remove a leading ``**Step 2: Title**`` / ``Step 3:`` / ``1.`` marker, keeping any title.

    The markers are formatting the model should not have to learn; the title is content.
    """
    m = _STEP_MARKER_RE.match(paragraph)
    if not m:
        return _NUMBERED_RE.sub("", paragraph, count=1).strip()
    rest = paragraph[m.end() :]
    bold = m.group(1)
    if not bold or bold not in rest:
        return rest.strip()
    title, _, tail = rest.partition(bold)
    title = title.strip().rstrip(":").strip()
    if not title:
        return tail.strip()
    if not tail.strip() or tail.startswith("\n"):
        return f"{title}{tail}".strip()
    sep = " " if title[-1] in ".!?" else ": "
    return f"{title}{sep}{tail.strip()}"


def _deepseek_answer(obj: dict, response: str) -> str:
    truth = _scalar_str(obj, "ground_truth")
    if not truth:
        fallback = _scalar_str(obj, "answer") or ""
        # Many synthetic sets copy the GSM8K solution into "answer"; its #### line is the truth.
        if "####" in fallback:
            fallback = _gsm8k_parts(fallback, keep_annotations=False)[1]
        truth = fallback or last_boxed(response) or ""
    if not truth:
        raise Skip("no final answer", "no ground_truth, answer or \\boxed{} in the response")
    return clean_answer(truth)


def _convert_deepseek(obj: dict) -> tuple[str, list[str], str]:
    question = _require_str(obj, "question")
    response = _strip_think(_require_str(obj, "deepseek_response"))
    answer = _deepseek_answer(obj, response)
    if not answer:
        raise Skip("empty answer", "the ground truth is empty")
    paragraphs = (_strip_marker(p) for p in split_steps(response))
    steps = [s for s in (clean_step(p) for p in paragraphs) if s and not _RULE_RE.match(s)]
    boxed = last_boxed(steps[-1]) if steps else None
    # The evaluator's comparison, so prepare never drops a trace that eval would score as correct.
    from .evaluate import answers_match

    if boxed is not None and not answers_match(boxed, answer):
        # A solution that ends in a wrong answer would teach wrong reasoning.
        raise Skip("answer mismatch", f"response says {boxed!r}, ground truth is {answer!r}")
    if boxed is None:
        steps.append(final_answer_step(answer))
    return question, steps, answer


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


def _convert_chat(obj: dict) -> tuple[str | None, str, list[str], str]:
    system, question, assistant = _chat_turns(obj)
    # Chat data need not be math: an assistant turn without \boxed{} is kept with answer "".
    answer = clean_answer(last_boxed(assistant) or "")
    return system, question, split_steps(assistant), answer


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


def _record_id(obj: dict, fallback: str | None, question: str, steps: list[str]) -> str:
    rid = _scalar_str(obj, "id")
    if rid == "":
        raise Skip("empty field", "field 'id' is empty")
    if rid is not None:
        return rid
    if fallback is not None:
        return fallback
    digest = hashlib.sha1("\n\n".join([question, *steps]).encode("utf-8")).hexdigest()[:12]
    return f"ex-{digest}"


def convert_line(
    obj: dict,
    fmt: str = "auto",
    *,
    keep_annotations: bool = False,
    min_step_chars: int = 1,
    min_steps: int = 2,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    id: str | None = None,
) -> dict:
    """Convert one raw object (any supported format, or a prepared record) to a prepared record.

    ``id`` is used only when the object has no ``"id"`` of its own (then a content hash is the
    last resort). ``system_prompt`` fills in for records without a system message; chat and
    prepared records keep their own. Raises :class:`Skip` when the line cannot be used.
    """
    if not isinstance(obj, dict):
        raise Skip("not a json object", f"got a JSON {type(obj).__name__}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    kind = detect_format(obj) if fmt == "auto" else fmt
    system: str | None = None
    if kind == "gsm8k":
        question, steps, answer = _convert_gsm8k(obj, keep_annotations)
    elif kind == "deepseek":
        question, steps, answer = _convert_deepseek(obj)
    else:
        if "messages" not in obj:
            raise Skip("missing field", "field 'messages' is missing")
        if kind == "prepared" and "steps" not in obj:
            raise Skip("missing field", "field 'steps' is missing")
        convert = _convert_prepared if kind == "prepared" else _convert_chat
        system, question, steps, answer = convert(obj)
    steps = merge_short_steps(steps, min_step_chars)
    if len(steps) < max(1, min_steps):
        raise Skip("fewer than min steps", f"{len(steps)} step(s), need at least {min_steps}")
    rid = _record_id(obj, id, question, steps)
    return make_record(rid, question, steps, answer, system if system is not None else system_prompt)


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What happened to every input line.

    ``lines_read`` counts input records: non-blank lines of JSONL files, elements of JSON
    arrays, rows of a hub dataset and generated problems. Blank lines are not records; they are
    counted separately in ``blank_lines`` and excluded from ``lines_read``, which keeps the
    invariant ``lines_read == written + sum(skipped.values())`` exact.
    """

    lines_read: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_lines: list[tuple[str, int, str]] = field(default_factory=list)
    step_histogram: dict[int, int] = field(default_factory=dict)
    blank_lines: int = 0
    files: list[str] = field(default_factory=list)
    # Files of an input directory that were not read (other extensions, our own reports).
    ignored_files: list[str] = field(default_factory=list)
    output: str | None = None

    def add_written(self, record: dict) -> None:
        self.written += 1
        n = record["total_steps"]
        self.step_histogram[n] = self.step_histogram.get(n, 0) + 1

    def add_skip(self, path: str, line: int, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skipped_lines) < MAX_SKIPPED_DETAILS:
            self.skipped_lines.append((path, line, reason))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def consistent(self) -> bool:
        return self.lines_read == self.written + self.total_skipped

    def to_dict(self) -> dict:
        return {
            "lines_read": self.lines_read,
            "written": self.written,
            "skipped": dict(sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))),
            "total_skipped": self.total_skipped,
            "skipped_lines": [{"path": p, "line": n, "reason": r} for p, n, r in self.skipped_lines],
            "skipped_lines_truncated": self.total_skipped > len(self.skipped_lines),
            "step_histogram": {str(k): v for k, v in sorted(self.step_histogram.items())},
            "blank_lines": self.blank_lines,
            "files": list(self.files),
            "ignored_files": list(self.ignored_files),
            "output": self.output,
        }

    def format(self, max_lines: int = 10) -> str:
        """Human-readable summary: totals, counts per skip reason, the first skipped lines."""
        out = [
            f"lines read: {self.lines_read} (from {len(self.files)} source(s); "
            f"{self.blank_lines} blank line(s) ignored)",
            f"written:    {self.written}" + (f" -> {self.output}" if self.output else ""),
            f"skipped:    {self.total_skipped}",
        ]
        for reason, count in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {count:>8}  {reason}")
        if self.skipped_lines:
            out.append("first skipped lines:")
            out += [f"  {p}:{n}: {r}" for p, n, r in self.skipped_lines[:max_lines]]
            if self.total_skipped > max_lines:
                out.append(f"  ... and {self.total_skipped - max_lines} more")
        if self.ignored_files:
            shown = ", ".join(self.ignored_files[:max_lines])
            more = f", ... and {len(self.ignored_files) - max_lines} more" if len(self.ignored_files) > max_lines else ""
            out.append(f"ignored {len(self.ignored_files)} file(s) that are not .jsonl/.json input: {shown}{more}")
        if self.step_histogram:
            hist = " ".join(f"{k}:{v}" for k, v in sorted(self.step_histogram.items()))
            out.append(f"steps per example (steps:count): {hist}")
        if self.written == 0:
            out.append("WARNING: no examples were written")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------


def iter_input_files(path: str | Path) -> list[Path]:
    """The input files for ``path``: the file itself, or every ``*.jsonl``/``*.json`` under a
    directory (recursively, sorted so runs are reproducible). See ``split_input_files`` for the
    files that are left out and why."""
    return split_input_files(path)[0]


def split_input_files(path: str | Path) -> tuple[list[Path], list[Path]]:
    """``(read, ignored)``: the input files for ``path`` and the visible files of a directory that
    are not read, so the report can name them instead of dropping them silently.

    Ignored are files with other extensions (``notes.txt``) and our own ``*.report.json`` files
    (so preparing into a directory and reading it back does not eat its reports). Hidden files
    and folders (``.git``, ``.cache``) are neither read nor listed: they are not data and could
    hold thousands of files."""
    p = Path(path)
    if p.is_file():
        return [p], []
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    read: list[Path] = []
    ignored: list[Path] = []
    for f in sorted(p.rglob("*")):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
            continue
        is_input = f.suffix in (".jsonl", ".json") and not f.name.endswith(".report.json")
        (read if is_input else ignored).append(f)
    if not read:
        names = [f.relative_to(p).as_posix() for f in ignored[:5]] + (["..."] if len(ignored) > 5 else [])
        found = f" (found only: {', '.join(names)})" if names else ""
        raise DataError(f"{p}: no *.jsonl or *.json files in this directory{found}")
    return read, ignored


# An input item: (source label, 1-based line, parsed object or the Skip it produced).
_Item = tuple[str, int, "dict | Skip"]


def _parse_line(raw: bytes, is_last: bool) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Skip("not utf-8", f"invalid UTF-8 byte at column {e.start + 1}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = "; the file looks truncated (last line has no newline)" if is_last else ""
        raise Skip("invalid json", f"{e.msg} at column {e.colno}{hint}") from None


def _read_jsonl(label: str, data: bytes, report: Report) -> Iterator[_Item]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the file does not start another line
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]  # a UTF-8 BOM from Windows editors is not content
    for n, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            report.blank_lines += 1
            continue
        try:
            yield label, n, _parse_line(raw, is_last=n == len(lines) and not data.endswith(b"\n"))
        except Skip as skip:
            yield label, n, skip


def _read_json_document(label: str, data: bytes) -> Iterator[_Item] | None:
    """Items of a ``.json`` file holding one object or an array, or None if it is really JSONL.

    Array elements are numbered by the line they start on, so errors still point at the file.
    """
    try:
        text = data.decode("utf-8-sig")
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # let the JSONL reader locate the bad line
    if isinstance(doc, dict):
        return iter([(label, 1, doc)])
    if not isinstance(doc, list):
        return None
    return _array_items(label, text)


def _array_items(label: str, text: str) -> Iterator[_Item]:
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")
    idx = ws.match(text, text.index("[") + 1).end()
    while text[idx] != "]":
        obj, end = decoder.raw_decode(text, idx)
        yield label, text.count("\n", 0, idx) + 1, obj
        idx = ws.match(text, end).end()
        if text[idx] == ",":
            idx = ws.match(text, idx + 1).end()


def _read_file(path: Path, label: str, report: Report) -> Iterator[_Item]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    report.files.append(str(path))
    if path.suffix == ".json" and data.lstrip()[:1] in (b"[", b"{", b"\xef"):
        items = _read_json_document(label, data)
        if items is not None:
            yield from items
            return
    yield from _read_jsonl(label, data, report)


def _file_items(
    root: Path, files: list[Path], report: Report, exclude: Path | None
) -> Iterator[tuple[_Item, str]]:
    """Items of every input file, each with the default id ``{stem}-{line}`` that ties a record
    back to where it came from."""
    for path in files:
        if exclude is not None and path.resolve() == exclude:
            continue  # never read the file we are about to overwrite
        stem = path.stem if path == root else path.relative_to(root).with_suffix("").as_posix()
        for item in _read_file(path, str(path), report):
            yield item, f"{stem}-{item[1]}"


def _hub_items(dataset: str, split: str, report: Report) -> Iterator[tuple[_Item, str]]:
    """Rows of a Hugging Face Hub dataset. ``NAME:CONFIG`` selects a config."""
    try:
        import datasets  # optional dependency: only online users need it
    except ImportError:
        raise DataError(
            "--dataset needs the 'datasets' package, which is not installed: "
            "pip install 'step-jepa[datasets]' (or pip install datasets), "
            "or download the data and pass it with --input"
        ) from None
    name, _, config = dataset.partition(":")
    config = config or _DEFAULT_HUB_CONFIGS.get(name)
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, auth, unknown name: all end the same way for the user
        raise DataError(
            f"could not load dataset {dataset!r} (split {split!r}) from the Hugging Face Hub: "
            f"{type(e).__name__}: {e}. Check the name and your network, "
            "or download the data and pass it with --input"
        ) from None
    label = f"{name}[{split}]"
    report.files.append(label)
    for i, row in enumerate(rows):
        yield (label, i + 1, dict(row)), f"{name}-{split}-{i}"


def _generated_items(n: int, seed: int, system_prompt: str, report: Report,
                     task: dict[str, Any] | None = None) -> Iterator[tuple[_Item, str]]:
    from .generator import generate_problems

    task = task or {}
    knobs = "".join(f", {k}={v}" for k, v in task.items())
    report.files.append(f"generator(n={n}, seed={seed}{knobs})")
    for i, record in enumerate(generate_problems(n, seed=seed, system_prompt=system_prompt, **task)):
        yield ("generator", i + 1, record), record["id"]


_Converter = Callable[[dict, str], dict]


class _Collector:
    """Turns items into records, enforcing unique ids and either counting or raising on skips."""

    def __init__(self, report: Report, strict: bool) -> None:
        self.report = report
        self.strict = strict
        self.seen: set[str] = set()

    def feed(self, item: _Item, default_id: str, convert: _Converter) -> dict | None:
        label, line, obj = item
        self.report.lines_read += 1
        try:
            if isinstance(obj, Skip):
                raise obj
            record = convert(obj, default_id)
            if record["id"] in self.seen:
                raise Skip("duplicate id", f"id {record['id']!r} was already used")
        except Skip as skip:
            if self.strict:
                raise DataError(f"{label}:{line}: {skip}") from None
            self.report.add_skip(label, line, skip.reason)
            return None
        self.seen.add(record["id"])
        self.report.add_written(record)
        return record


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def prepare(
    inputs: str | Path | None,
    output: str | Path,
    *,
    fmt: str = "auto",
    dataset: str | None = None,
    split: str = "train",
    keep_annotations: bool = False,
    min_step_chars: int = 1,
    min_steps: int = 2,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    generate: int | None = None,
    seed: int = 0,
    skip_invalid: bool = True,
    generate_task: dict[str, Any] | None = None,
) -> Report:
    """Convert input files, a hub dataset and/or generated problems into one prepared JSONL.

    The output is written atomically (temp file + rename), so a strict-mode failure or a crash
    never leaves a half-written training file behind. The report is printed and saved as
    ``<output>.report.json``.
    """
    if inputs is None and dataset is None and not generate:
        raise DataError("nothing to prepare: give an input path, a dataset or a number to generate")
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(output)
    report = Report(output=str(out))

    def convert(obj: dict, default_id: str) -> dict:
        return convert_line(
            obj, fmt, keep_annotations=keep_annotations, min_step_chars=min_step_chars,
            min_steps=min_steps, system_prompt=system_prompt, id=default_id,
        )

    def convert_generated(obj: dict, default_id: str) -> dict:
        # Generated records are already prepared: a forced --format must not reject them.
        return convert_line(obj, "prepared", min_step_chars=min_step_chars, min_steps=min_steps)

    sources: list[tuple[Iterable[tuple[_Item, str]], _Converter]] = []
    if inputs is not None:
        files, ignored = split_input_files(inputs)  # fail on a wrong path before touching the output
        report.ignored_files = [str(f) for f in ignored]
        sources.append((_file_items(Path(inputs), files, report, exclude=out.resolve()), convert))
    if dataset is not None:
        sources.append((_hub_items(dataset, split, report), convert))
    if generate:
        sources.append((_generated_items(generate, seed, system_prompt, report, generate_task), convert_generated))
    _write_records(out, report, sources, strict=not skip_invalid)
    print(report.format())
    Path(f"{out}.report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return report


def _write_records(
    out: Path,
    report: Report,
    sources: list[tuple[Iterable[tuple[_Item, str]], _Converter]],
    strict: bool,
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # A plain open() (not mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            # One collector across sources, so ids must be unique over the whole output.
            collector = _Collector(report, strict)
            for items, convert in sources:
                for item, default_id in items:
                    record = collector.feed(item, default_id, convert)
                    if record is not None:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_records(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    system_prompt: str | None = None,
    min_steps: int = 1,
    purpose: str = "training",
) -> tuple[list[dict], Report]:
    """Read a training file (or directory): prepared records or any raw format, converted on the
    fly.

    By default the first bad line raises ``DataError("{path}:{line}: {reason}: ...")``: a
    training run should not silently learn from a different dataset than the user thinks. With
    ``skip_invalid`` bad lines are counted per reason in the returned report instead.

    ``min_steps`` defaults to 1 (unlike ``prepare``'s 2): a one-step example still trains the LM
    loss, it just contributes no JEPA step pair. ``system_prompt``, when given, replaces every
    record's system message (the training config is the authority at train time); None keeps
    each record's own, with the default for raw records that have none.

    Raises ``DataError`` as well when no usable record is left, since training on nothing is
    never what the user meant. ``purpose`` names the records in that message ("training",
    "test", ...): eval and bench read files through here too, and "no usable training records"
    about a test file sends the user looking in the wrong place.
    """
    report = Report()

    def convert(obj: dict, default_id: str) -> dict:
        record = convert_line(obj, "auto", min_steps=min_steps, id=default_id)
        if system_prompt is not None:
            record["messages"][0]["content"] = system_prompt
        return record

    collector = _Collector(report, strict=not skip_invalid)
    files, ignored = split_input_files(path)
    report.ignored_files = [str(f) for f in ignored]
    items = _file_items(Path(path), files, report, exclude=None)
    records = [r for item, rid in items if (r := collector.feed(item, rid, convert)) is not None]
    if not records:
        raise DataError(f"{path}: no usable {purpose} records\n{report.format()}")
    return records, report


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_cli(subparsers: Any) -> None:
    """Add ``step-jepa prepare`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "prepare",
        help="convert reasoning data (GSM8K, DeepSeek-style, chat) to Step-JEPA JSONL",
        description=(
            "Convert raw data into prepared Step-JEPA JSONL. Bad lines are skipped and counted "
            "per reason (see the printed report and <output>.report.json); --strict stops at the "
            "first one with a file:line error instead."
        ),
    )
    src = p.add_argument_group("sources (at least one)")
    src.add_argument("--input", metavar="PATH", help="a .jsonl/.json file or a directory of them")
    src.add_argument("--dataset", metavar="NAME", help="Hugging Face Hub dataset, e.g. openai/gsm8k (NAME:CONFIG for a config); needs `pip install datasets`")
    src.add_argument("--split", default="train", help="split of --dataset (default: train)")
    src.add_argument("--generate", type=int, metavar="N", help="add N generated arithmetic word problems")
    src.add_argument("--seed", type=int, default=0, help="seed for --generate (default: 0)")
    src.add_argument("--task", default="mixed", choices=("mixed", "chain"),
                     help="--generate's problems: mixed word-problem templates, or chain: a start value and "
                          "--chain_steps operations on --chain_digits-digit numbers, a task of tunable difficulty "
                          "(default: mixed)")
    src.add_argument("--chain_steps", type=int, default=4, help="operations per chain problem (default: 4)")
    src.add_argument("--chain_digits", type=int, default=3, help="digits of a chain's numbers, 1-6 (default: 3)")
    p.add_argument("--output", default="data/prepared.jsonl", metavar="PATH", help="output JSONL (default: data/prepared.jsonl)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: auto-detect per line)")
    p.add_argument("--keep_annotations", action="store_true", help="keep GSM8K calculator annotations like <<48/2=24>>")
    p.add_argument("--min_step_chars", type=int, default=1, help="merge steps shorter than this into the next one (default: 1)")
    p.add_argument("--min_steps", type=int, default=2, help="skip examples with fewer steps (default: 2)")
    p.add_argument("--system_prompt", default=DEFAULT_SYSTEM_PROMPT, help="system prompt for records that have none")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    p.add_argument("--dev_fraction", type=float, default=0.0,
                   help="hold out this fraction (seeded by --seed) as <output stem>.dev.jsonl for model selection")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    """Errors are raised as DataError: `step-jepa` prints them as one line and exits 2."""
    if args.input is None and args.dataset is None and not args.generate:
        raise DataError("prepare needs --input, --dataset or --generate N")
    if args.min_steps < 1 or args.min_step_chars < 1 or (args.generate or 0) < 0:
        raise DataError("--min_steps and --min_step_chars must be >= 1, --generate >= 0")
    report = prepare(
        args.input, args.output, fmt=args.format, dataset=args.dataset, split=args.split,
        keep_annotations=args.keep_annotations, min_step_chars=args.min_step_chars,
        min_steps=args.min_steps, system_prompt=args.system_prompt, generate=args.generate,
        seed=args.seed, skip_invalid=not args.strict,
        generate_task=({"task": "chain", "chain_steps": args.chain_steps, "chain_digits": args.chain_digits}
                       if args.task == "chain" else None),
    )
    if report.written == 0:
        print(f"step-jepa prepare: error: no examples were written to {args.output}", file=sys.stderr)
        return 1
    if args.dev_fraction > 0:
        n_train, n_dev, dev = split_dev(args.output, args.dev_fraction, args.seed)
        print(f"held out {n_dev} examples in {dev}; {n_train} remain in {args.output}")
    return 0


def split_dev(path: str | Path, fraction: float, seed: int) -> tuple[int, int, Path]:
    """Move a seeded random `fraction` of a prepared file's lines to `<stem>.dev.jsonl`.

    A fixed held-out split of the *training* data is where hyper-parameters get chosen, so the
    test set is touched only for the final comparison.
    """
    import random

    if not 0 < fraction < 1:
        raise DataError(f"--dev_fraction must be in (0, 1), got {fraction}")
    src = Path(path)
    # split on "\n" only: str.splitlines would also split on U+2028 inside JSON strings
    lines = [line + "\n" for line in src.read_text(encoding="utf-8").split("\n") if line.strip()]
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    dev_idx = set(order[: max(1, round(fraction * len(lines)))])
    dev = src.with_name(src.stem + ".dev.jsonl")
    for path, text in ((dev, "".join(lines[i] for i in sorted(dev_idx))),
                       (src, "".join(line for i, line in enumerate(lines) if i not in dev_idx))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # atomic: a crash leaves the old file, never half of one
    report = Path(f"{src}.report.json")
    if report.exists():  # the saved report must describe the files as they now are
        data = json.loads(report.read_text(encoding="utf-8"))
        data["dev_split"] = {"fraction": fraction, "seed": seed, "train": len(lines) - len(dev_idx),
                             "dev": len(dev_idx), "dev_file": str(dev)}
        report.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(lines) - len(dev_idx), len(dev_idx), dev
