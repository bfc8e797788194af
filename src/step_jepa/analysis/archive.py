"""`step-jepa compare --archive DIR --archive_to DEST`: the part of a grid's output that its report
is computed from, small enough to commit beside the docs that quote it.

A grid's output directory holds weights, checkpoints and every model output; a report needs none of
them. Per finished run (`<config>/seed<s>/` with `result.json`) the archive keeps

- `result.json`, `step_jepa_config.yaml`, `train_summary.json`, `data_report.json` as they are;
- `metrics.jsonl` gzipped (the report's collapse diagnostics);
- of `eval/` and every `eval-<protocol>/`: `summary.json`, and `predictions.jsonl` reduced to
  `correct.jsonl.gz`, one `{"id", "correct"}` per problem (the report's paired statistics);

and the grid's `compare_grid.json`. Weights, checkpoints, model outputs and the cells' logs stay
behind; unfinished runs are left out and counted. The home directory in any kept text becomes `~`,
so an archive names no machine's user. `compare --report DEST` then rebuilds the same table
(:func:`step_jepa.analysis.runs.load_run_predictions` reads `correct.jsonl.gz` where `predictions.jsonl`
is absent).
Gzip members carry no timestamp, so archiving the same runs twice gives the same bytes.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from step_jepa.analysis.runs import CORRECT, GRID_COPY, PREDICTIONS, RESULT, jsonl_lines, read_text_or_gz

KEPT_AS_IS = ("result.json", "step_jepa_config.yaml", "train_summary.json", "data_report.json")
METRICS = "metrics.jsonl"
EVAL_SUMMARY = "summary.json"


@dataclass
class Archived:
    """What `archive_grid` wrote: the runs copied, and the run dirs left out as unfinished."""

    runs: list[Path] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)


def archive_grid(src: str | Path, dest: str | Path, home: str | None = None) -> Archived:
    """Copy the report's inputs of every finished run under `src` into `dest` (see the module doc).

    A run already present in `dest` is an error (a re-archive must not mix two trainings of one
    cell); `dest` may hold other runs, e.g. the earlier configs of the same grid.
    """
    src, dest = Path(src), Path(dest)
    home = str(Path.home()) if home is None else home
    if not src.is_dir():
        raise FileNotFoundError(f"--archive: {src} is not a directory")
    run_dirs = sorted(p for p in src.glob("*/seed*") if p.is_dir())
    finished = [r for r in run_dirs if (r / RESULT).exists()]
    if not finished:
        raise ValueError(f"--archive: no finished run (<config>/seed<s>/{RESULT}) under {src}")
    clashes = [dest / r.relative_to(src) for r in finished if (dest / r.relative_to(src)).exists()]
    if clashes:
        raise FileExistsError(
            f"--archive: {', '.join(map(str, clashes))} already exist(s); remove them to archive again"
        )
    grid_copy = _checked_grid_copy(src / GRID_COPY, dest / GRID_COPY)  # refused before anything is written
    out = Archived(unfinished=[r for r in run_dirs if r not in finished])
    for run in finished:
        _archive_run(run, dest / run.relative_to(src), home)
        out.runs.append(dest / run.relative_to(src))
    if grid_copy is not None:
        _write_text(dest / GRID_COPY, _redact(grid_copy, home))
    return out


def _checked_grid_copy(grid_copy: Path, to: Path) -> str | None:
    """The grid file's copy (the report's config order), if the grid has one. One already in `dest`
    is replaced only by a grid that lists all its configs: adding a config's runs must not drop the
    others' order."""
    if not grid_copy.exists():
        return None
    text = grid_copy.read_text(encoding="utf-8")
    if to.exists():
        had = set(json.loads(to.read_text(encoding="utf-8")).get("configs", {}))
        missing = sorted(had - set(json.loads(text).get("configs", {})))
        if missing:
            raise ValueError(
                f"--archive: {to} lists configs {missing} that {grid_copy} does not; "
                "archive into another directory or merge the grid files by hand"
            )
    return text


def _archive_run(run: Path, to: Path, home: str) -> None:
    to.mkdir(parents=True)
    for name in KEPT_AS_IS:
        _copy_redacted(run / name, to / name, home)
    metrics = read_text_or_gz(run / METRICS)  # gzipped already in an archive archived again
    if metrics is not None:
        _write_gz(to / f"{METRICS}.gz", _redact(metrics, home))
    for ev in sorted(p for p in run.iterdir() if p.is_dir() and (p.name == "eval" or p.name.startswith("eval-"))):
        _archive_eval(ev, to / ev.name, home)


def _archive_eval(ev: Path, to: Path, home: str) -> None:
    to.mkdir(parents=True)
    _copy_redacted(ev / EVAL_SUMMARY, to / EVAL_SUMMARY, home)
    if (ev / PREDICTIONS).exists():
        _write_gz(to / f"{CORRECT}.gz", correct_lines(ev / PREDICTIONS))
    elif (kept := read_text_or_gz(ev / CORRECT)) is not None:  # an archive archived again
        _write_gz(to / f"{CORRECT}.gz", kept)


def correct_lines(predictions: Path) -> str:
    """`{"id", "correct"}` per line of a predictions.jsonl, in its order."""
    rows = []
    for k, line in jsonl_lines(predictions.read_text(encoding="utf-8")):
        try:
            row = json.loads(line)
            rows.append(json.dumps({"id": row.get("id"), "correct": bool(row["correct"])}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{predictions}:{k}: not a prediction row with 'correct' ({e})") from None
    return "".join(r + "\n" for r in rows)


def _redact(text: str, home: str) -> str:
    return text.replace(home.rstrip("/") + "/", "~/") if home not in ("", "/") else text


def _copy_redacted(src: Path, dest: Path, home: str) -> None:
    if src.exists():
        _write_text(dest, _redact(src.read_text(encoding="utf-8"), home))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_gz(path: Path, text: str) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(text.encode("utf-8"))
