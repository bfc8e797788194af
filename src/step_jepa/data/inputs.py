"""Reading input files line by line, and the :class:`Report` of what happened to every line.

Files are read as bytes and decoded per line, so one bad byte costs one line, never the whole
file. A directory is read recursively (``*.jsonl``/``*.json``); the files it holds that are not
read are listed in the report. :class:`_Collector` turns the items into records for both
``prepare`` (:mod:`step_jepa.data.prepare`) and ``load_records`` (:mod:`step_jepa.data.load`): it enforces
unique ids and either counts a bad line in the report or, in strict mode, raises a
:class:`~step_jepa.data.records.DataError` naming ``file:line``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from step_jepa.data.records import DataError, Skip

# Per-line details kept in a report; counts stay exact beyond it. A 10M-line file full of
# errors must not turn the report itself into a memory problem.
MAX_SKIPPED_DETAILS = 1000
# The first skipped lines of every reason, with their details, so a reason that is rare (or
# comes late in the input) still shows examples next to one that fills MAX_SKIPPED_DETAILS.
MAX_DETAILS_PER_REASON = 20
# A detail quotes values from the input (the two answers of an "answer mismatch"); cap its length
# in the report file, and further on screen.
MAX_DETAIL_CHARS = 500
_SCREEN_DETAIL_CHARS = 160


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    # (path, line, reason, detail) of the first MAX_SKIPPED_DETAILS skipped lines.
    skipped_lines: list[tuple[str, int, str, str]] = field(default_factory=list)
    # reason -> (path, line, detail) of its first MAX_DETAILS_PER_REASON skipped lines.
    skipped_examples: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)
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

    def add_skip(self, path: str, line: int, reason: str, detail: str = "") -> None:
        """Count a skipped line; keep its ``detail`` (what exactly was wrong) among the first ones."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        detail = _clip(detail, MAX_DETAIL_CHARS)
        if len(self.skipped_lines) < MAX_SKIPPED_DETAILS:
            self.skipped_lines.append((path, line, reason, detail))
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < MAX_DETAILS_PER_REASON:
            examples.append((path, line, detail))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def consistent(self) -> bool:
        return self.lines_read == self.written + self.total_skipped

    def _by_count(self) -> list[tuple[str, int]]:
        return sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))

    def to_dict(self) -> dict:
        return {
            "lines_read": self.lines_read,
            "written": self.written,
            "skipped": dict(self._by_count()),
            "total_skipped": self.total_skipped,
            # Per reason, its first MAX_DETAILS_PER_REASON lines with what was wrong on each.
            "skipped_details": {
                reason: [{"path": p, "line": n, "detail": d} for p, n, d in self.skipped_examples.get(reason, [])]
                for reason, _ in self._by_count()
            },
            "skipped_lines": [{"path": p, "line": n, "reason": r, "detail": d} for p, n, r, d in self.skipped_lines],
            "skipped_lines_truncated": self.total_skipped > len(self.skipped_lines),
            "step_histogram": {str(k): v for k, v in sorted(self.step_histogram.items())},
            "blank_lines": self.blank_lines,
            "files": list(self.files),
            "ignored_files": list(self.ignored_files),
            "output": self.output,
        }

    def format(self, max_lines: int = 10) -> str:
        """Human-readable summary: totals, counts per skip reason, the first ``max_lines`` skipped
        lines with their details, and the first line of every reason not among them."""
        out = [
            f"lines read: {self.lines_read} (from {len(self.files)} source(s); "
            f"{self.blank_lines} blank line(s) ignored)",
            f"written:    {self.written}" + (f" -> {self.output}" if self.output else ""),
            f"skipped:    {self.total_skipped}",
        ]
        for reason, count in self._by_count():
            out.append(f"  {count:>8}  {reason}")

        def line(path: str, n: int, reason: str, detail: str) -> str:
            return f"  {path}:{n}: {reason}" + (f": {_clip(detail, _SCREEN_DETAIL_CHARS)}" if detail else "")

        if self.skipped_lines:
            first = self.skipped_lines[:max_lines]
            out.append("first skipped lines:")
            out += [line(*skip) for skip in first]
            if self.total_skipped > max_lines:
                out.append(f"  ... and {self.total_skipped - max_lines} more (see the report file for details)")
            # Every reason gets one example on screen, even when the first lines are all another one.
            shown_reasons = {r for _, _, r, _ in first}
            rest = [
                (r, self.skipped_examples[r][0])
                for r, _ in self._by_count()
                if r not in shown_reasons and self.skipped_examples.get(r)
            ]
            if rest:
                out.append("first line of each other reason:")
                out += [line(p, n, r, d) for r, (p, n, d) in rest]
        if self.ignored_files:
            shown = ", ".join(self.ignored_files[:max_lines])
            more = (
                f", ... and {len(self.ignored_files) - max_lines} more" if len(self.ignored_files) > max_lines else ""
            )
            out.append(f"ignored {len(self.ignored_files)} file(s) that are not .jsonl/.json input: {shown}{more}")
        if self.step_histogram:
            hist = " ".join(f"{k}:{v}" for k, v in sorted(self.step_histogram.items()))
            out.append(f"steps per example (steps:count): {hist}")
        if self.written == 0:
            out.append("WARNING: no examples were written")
        return "\n".join(out)


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


_JSON_WS = re.compile(r"[ \t\r\n]*")


def _skip_ws(text: str, idx: int) -> int:
    m = _JSON_WS.match(text, idx)  # always matches (possibly empty); the check is for the type checker
    return m.end() if m else idx


def _array_items(label: str, text: str) -> Iterator[_Item]:
    decoder = json.JSONDecoder()
    idx = _skip_ws(text, text.index("[") + 1)
    while text[idx] != "]":
        obj, end = decoder.raw_decode(text, idx)
        yield label, text.count("\n", 0, idx) + 1, obj
        idx = _skip_ws(text, end)
        if text[idx] == ",":
            idx = _skip_ws(text, idx + 1)


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


def _file_items(root: Path, files: list[Path], report: Report, exclude: Path | None) -> Iterator[tuple[_Item, str]]:
    """Items of every input file, each with the default id ``{stem}-{line}`` that ties a record
    back to where it came from."""
    for path in files:
        if exclude is not None and path.resolve() == exclude:
            continue  # never read the file we are about to overwrite
        stem = path.stem if path == root else path.relative_to(root).with_suffix("").as_posix()
        for item in _read_file(path, str(path), report):
            yield item, f"{stem}-{item[1]}"


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
            self.report.add_skip(label, line, skip.reason, skip.detail)
            return None
        self.seen.add(record["id"])
        self.report.add_written(record)
        return record


# Hub datasets whose default config cannot be guessed by `datasets` itself.
_DEFAULT_HUB_CONFIGS = {"gsm8k": "main", "openai/gsm8k": "main"}


def _load_hub_rows(name: str, config: str | None, split: str):
    """The rows of a hub dataset, or of a directory written by `Dataset(Dict).save_to_disk`.

    Any failure (no `datasets`, network, auth, unknown name or split) is one DataError that says
    what to do, raised before the caller writes anything.
    """
    try:
        import datasets  # optional dependency: only users of --dataset need it
    except ImportError:
        raise DataError(
            "--dataset needs the 'datasets' package, which is not installed: "
            "pip install 'step-jepa[datasets]' (or pip install datasets), "
            "or download the data and pass it as a file"
        ) from None
    try:
        if Path(name).is_dir():
            rows = datasets.load_from_disk(name)
            return rows[split] if isinstance(rows, datasets.DatasetDict) else rows
        return datasets.load_dataset(name, config or _DEFAULT_HUB_CONFIGS.get(name), split=split)
    except Exception as e:  # noqa: BLE001 - network, auth, unknown name: all end the same way for the user
        raise DataError(
            f"could not load dataset {name!r} (split {split!r}) from the Hugging Face Hub: "
            f"{type(e).__name__}: {e}. Check the name and your network, "
            "or download the data and pass it as a file"
        ) from None


def hub_items(name: str, config: str | None, split: str, report: Report) -> Iterator[tuple[_Item, str]]:
    """(item, default id) per row of a hub dataset (or a `save_to_disk` directory), read like the
    lines of a file: ``prepare``, ``load_dataset_records`` (train, eval) all convert them the same
    way and count them in the same :class:`Report`. ``config`` None: gsm8k's "main", else the
    dataset's default."""
    rows = _load_hub_rows(name, config, split)
    label = f"{name}[{split}]"
    report.files.append(label)
    for i, row in enumerate(rows):
        yield (label, i + 1, dict(row)), f"{name}-{split}-{i}"
