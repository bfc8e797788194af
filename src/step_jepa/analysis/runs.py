"""A grid's runs on disk: the output directory's file names, where each run lives, and reading its
files back (results, per-problem correctness, gzipped or not).

:mod:`step_jepa.analysis.compare` writes this layout, :mod:`step_jepa.analysis.report` reads it into a
table and :mod:`step_jepa.analysis.archive` copies it into ``results/``; one module names the files so
that the three cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The files of a grid's output directory: each run's result, the report's three outputs and the
# copy of the grid file that made it.
RESULT = "result.json"
TABLE = "compare_table.md"
RESULTS = "compare_results.json"
PLOT = "compare.png"
GRID_COPY = "compare_grid.json"
# The key collect_results adds to each result it reads: the run directory it came from (a Path).
READ_FROM = "_read_from"
PREDICTIONS = "predictions.jsonl"  # written by evaluate.evaluate into <run>/eval/
# Per-problem correctness alone ({"id", "correct"} per line), read when a run has no predictions.jsonl:
# committed result directories keep this (gzipped) instead of the full model outputs.
CORRECT = "correct.jsonl"
CELL_LOG = "compare.log"  # <run>/compare.log: stdout and stderr of the run's process under `compare --jobs`
# The key `compare --jobs` adds to a finished cell's result.json: {"cells_at_most": how many cells ran
# on its device at once while it ran (itself included), "jobs": the --jobs it ran under}. Its seconds
# are wall times of a shared device when cells_at_most > 1. Absent: run without --jobs (nothing known
# of what else ran), or before it was kept.
SHARING = "device_sharing"


def grid_order(output_dir: str | Path) -> list[str]:
    """The configs of the grid that made `output_dir`, in the grid file's order ([] without its copy)."""
    copy = Path(output_dir) / GRID_COPY
    return [str(n) for n in json.loads(copy.read_text()).get("configs", {})] if copy.exists() else []


def log(msg: str) -> None:
    """The grid commands' messages (compare, its cells, --report, --select, --archive), one prefix."""
    print(f"[compare] {msg}", flush=True)


def run_dir(output_dir: Path, name: str, seed: int) -> Path:
    """Where the run of config `name` and `seed` lives: ``<output_dir>/<name>/seed<seed>``."""
    return Path(output_dir) / name / f"seed{seed}"


def fingerprint(obj: Any) -> str:
    """Short stable hash of JSON-able settings, to notice a grid edited between resumed invocations."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so a crash never leaves a truncated result/table behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_text_or_gz(path: Path) -> str | None:
    """The text of ``path``, or of ``path.gz`` when only the gzipped copy exists (committed result
    dirs keep predictions and metrics gzipped); None when neither does."""
    import gzip

    if path.exists():
        return path.read_text(encoding="utf-8")
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        with gzip.open(gz, "rt", encoding="utf-8") as f:
            return f.read()
    return None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of each non-blank line of JSON-lines text. Split on "\\n" only:
    predictions.jsonl is written with ensure_ascii=False, so a model output may hold U+2028 and the
    other characters at which str.splitlines() also breaks lines."""
    return ((k, line) for k, line in enumerate(text.split("\n"), 1) if line.strip())


def load_correct(path: str | Path) -> dict[str, bool]:
    """{problem id → correct} of one predictions.jsonl or correct.jsonl (either may be gzipped). A
    missing id falls back to the line number (every run of a grid evaluates the same records in the same order); a duplicate id is an error,
    because aligning by id would silently pair the wrong problems."""
    out: dict[str, bool] = {}
    text = read_text_or_gz(Path(path))
    if text is None:
        raise FileNotFoundError(path)
    for k, line in jsonl_lines(text):
        row = json.loads(line)
        key = str(row["id"]) if row.get("id") is not None else f"line{k - 1}"
        if key in out:
            raise ValueError(f"{path}: duplicate problem id {key!r}")
        out[key] = bool(row["correct"])
    return out


def load_run_predictions(
    results: list[dict[str, Any]],
) -> tuple[dict[str, dict[int, dict[str, bool]]], dict[str, str]]:
    """config → seed → {id → correct} for every finished run that has <run>/eval/predictions.jsonl
    (else <run>/eval/correct.jsonl; either may be gzipped), and config → error for configs with an
    unreadable one (reported as n/a, not a failed report)."""
    out: dict[str, dict[int, dict[str, bool]]] = {}
    errors: dict[str, str] = {}
    for r in results:
        eval_dir = r[READ_FROM] / "eval"
        try:
            try:
                correct = load_correct(eval_dir / PREDICTIONS)
            except FileNotFoundError:
                correct = load_correct(eval_dir / CORRECT)
        except FileNotFoundError:  # no per-problem file at all: an older run
            continue
        except (ValueError, KeyError) as e:  # KeyError: a row without "correct"
            errors[r["config"]] = f"{type(e).__name__}: {e}"
            continue
        out.setdefault(r["config"], {})[int(r["seed"])] = correct
    return out, errors


def collect_results(*dirs: str | Path) -> list[dict[str, Any]]:
    """Every finished run under the grid output dirs (<name>/seed<s>/result.json), each with the run
    directory it was read from under :data:`READ_FROM`. One cell (config, seed) in two dirs is an
    error: a table pairs one training of each cell, and which one would be an accident of order."""
    out: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], Path] = {}
    for d in dirs:
        for path in sorted(Path(d).glob(f"*/seed*/{RESULT}")):
            result = json.loads(path.read_text())
            cell = (str(result["config"]), int(result["seed"]))
            if cell in seen:
                raise ValueError(
                    f"{cell[0]} seed {cell[1]} is in both {seen[cell]} and {path.parent}; "
                    "a table pairs one training of each cell: leave one of the directories out"
                )
            seen[cell] = result[READ_FROM] = path.parent
            out.append(result)
    return out
