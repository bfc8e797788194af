"""`step-jepa compare --jobs N`: the unfinished cells of a grid, each in a process of its own.

Every cell runs as `step-jepa compare --only NAME --seeds S --no_report`, N at a time, its output in
`<run>/compare.log`; the resumability rules of :mod:`step_jepa.analysis.compare` apply inside each
process. On one GPU (or none) the N processes share it; with several visible GPUs each cell gets
the least busy one through CUDA_VISIBLE_DEVICES (`--jobs gpus`: one cell per visible GPU). A failed
cell is reported with its log and the others go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

from step_jepa.analysis.compare import finished_run, run_state
from step_jepa.analysis.grid import Grid, select_cells
from step_jepa.analysis.runs import CELL_LOG, GRID_COPY, RESULT, SHARING, log, run_dir, write_atomic


def visible_gpus() -> list[str]:
    """The GPUs a child process may be given: CUDA_VISIBLE_DEVICES' entries if set, else every
    device torch sees (none without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _last_line(path: Path) -> str:
    try:
        lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


# What a child prints when CUDA ran out of memory (torch.OutOfMemoryError's message).
OUT_OF_MEMORY = "CUDA out of memory"


def _ran_out_of_memory(log_path: Path, offset: int) -> bool:
    """Whether the part of a cell's log written since `offset` reports a CUDA out-of-memory error."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return OUT_OF_MEMORY in f.read()
    except OSError:
        return False


class _Running(NamedTuple):
    """A cell's process while it runs: its log file, its device, where this attempt's output begins
    in the log (a retry appends to the same log)."""

    proc: subprocess.Popen
    log: IO[str]
    device: str | None
    log_start: int


@dataclass
class ParallelOutcome:
    """What `run_cells_parallel` did: cells skipped as finished, run to the end, and failed (with logs)."""

    skipped: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int, int, Path]] = field(default_factory=list)  # name, seed, exit code, log


def record_sharing(rdir: Path, cells_at_most: int, jobs: int) -> None:
    """Add to a finished cell's result.json how many cells shared its device at most while it ran: its
    train and eval seconds are wall times, comparable between runs only at the same sharing."""
    path = rdir / RESULT
    result = json.loads(path.read_text())
    result[SHARING] = {"cells_at_most": cells_at_most, "jobs": jobs}
    write_atomic(path, json.dumps(result, indent=1))


def run_cells_parallel(
    grid: Grid,
    jobs: int,
    cell_command: Callable[[str, int], list[str]],
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    gpus: list[str] | None = None,
    poll_seconds: float = 0.5,
    elsewhere: Sequence[Path] = (),
) -> ParallelOutcome:
    """Run the selected unfinished cells as child processes, `jobs` at a time.

    `cell_command(name, seed)` is the argv of a process that runs that one cell (the CLI passes
    `step-jepa compare --only NAME --seeds S --no_report`). Finished cells, in the grid's output
    directory or in one of `elsewhere` (`compare --finished`), are skipped here, after their recorded
    settings are checked; everything else (evaluate only, redo a half-finished run)
    the child decides as a sequential run would. With two or more `gpus` (default: the visible ones)
    each child is pinned to the least busy one through CUDA_VISIBLE_DEVICES; with one or none the
    children share what they see. Every cell's output is appended to `<run>/compare.log`.

    A cell that runs out of GPU memory while other cells share its device is not failed but retried
    once, alone on a device: memory is what `--jobs` cannot see (three Gemma 3 270M trainings, or five
    SmolLM2-135M ones beside two more, exceed an 80 GB card), and a rerun would otherwise be needed.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1 (got {jobs})")
    names = select_cells(list(grid.configs), only, "config")
    chosen = select_cells(grid.seeds, seeds, "seed")
    devices = visible_gpus() if gpus is None else list(gpus)
    if len(devices) < 2:
        devices = []
    grid.output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(grid.output_dir / GRID_COPY, json.dumps(grid.to_dict(), indent=1, default=str))
    outcome = ParallelOutcome()
    todo: list[tuple[str, int]] = []
    # Seed by seed (sft 0, jepa 0, sft 1, ...): a grid stopped part-way leaves whole paired seeds,
    # which the paired statistics can use, rather than all seeds of one config and none of another.
    for s in chosen:
        for name in names:
            done = finished_run(grid, name, s, elsewhere)  # raises on a result of other settings
            if done is not None:
                log(f"{name} seed {s}: skipped, already finished ({done / RESULT})")
                outcome.skipped.append((name, s))
            else:
                todo.append((name, s))
    total = len(todo) + len(outcome.skipped)
    where = f"one per GPU of {', '.join(devices)} (least busy first)" if devices else "sharing the visible device"
    log(f"{len(todo)} cell(s) to run, {jobs} at a time, {where}; {len(outcome.skipped)} already finished")
    start = time.monotonic()
    running: dict[tuple[str, int], _Running] = {}
    company: dict[tuple[str, int], int] = {}  # the most cells on a running cell's device at once
    alone: set[tuple[str, int]] = set()  # cells to retry with no other cell on their device

    def progress() -> None:
        done = len(outcome.skipped) + len(outcome.finished)
        log(
            f"progress: {done}/{total} done, {len(running)} running, {len(todo)} left, "
            f"{len(outcome.failed)} failed, elapsed {_elapsed(time.monotonic() - start)}"
        )

    def free_device(cell: tuple[str, int]) -> bool:
        """A retried cell starts only where no other cell runs. It stays alone there: retries join the
        end of the queue, so every cell after it is a retry that waits for an empty device too."""
        if cell not in alone:
            return True
        taken = busy()
        return any(d not in taken for d in devices) if devices else not running

    def busy() -> list[str | None]:
        return [r.device for r in running.values()]

    def count_company() -> None:
        taken = busy()
        for c, r in running.items():
            company[c] = max(company.get(c, 1), taken.count(r.device))

    def launch(name: str, s: int) -> None:
        rdir = run_dir(grid.output_dir, name, s)
        rdir.mkdir(parents=True, exist_ok=True)
        device = min(devices, key=busy().count) if devices else None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        cmd = cell_command(name, s)
        out = open(rdir / CELL_LOG, "a", encoding="utf-8")
        out.write(
            f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}"
            f"{f' (CUDA_VISIBLE_DEVICES={device})' if device is not None else ''}\n"
        )
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        running[(name, s)] = _Running(proc, out, device, out.tell())
        count_company()
        log(f"{name} seed {s}: started{f' on GPU {device}' if device is not None else ''}, log {rdir / CELL_LOG}")

    try:
        while todo or running:
            while todo and len(running) < jobs and free_device(todo[0]):
                launch(*todo.pop(0))
            time.sleep(poll_seconds)
            for (name, s), cell in list(running.items()):
                rc = cell.proc.poll()
                if rc is None:
                    continue
                cell.log.close()
                del running[(name, s)]
                cells_at_most = company.pop((name, s), 1)  # of this attempt: a retry counts afresh
                path = run_dir(grid.output_dir, name, s) / CELL_LOG
                if rc == 0 and run_state(run_dir(grid.output_dir, name, s)) == "done":
                    record_sharing(run_dir(grid.output_dir, name, s), cells_at_most, jobs)
                    outcome.finished.append((name, s))
                    log(f"{name} seed {s}: finished")
                elif cells_at_most > 1 and (name, s) not in alone and _ran_out_of_memory(path, cell.log_start):
                    alone.add((name, s))
                    todo.append((name, s))
                    log(f"{name} seed {s}: out of GPU memory beside other cells; retried alone, after the queue")
                else:
                    rc = rc or 1  # exit 0 without a result is a failure too
                    outcome.failed.append((name, s, rc, path))
                    log(f"{name} seed {s}: FAILED (exit {rc}): {_last_line(path)}; log {path}")
                progress()
    except BaseException:  # Ctrl-C or an error here: do not leave children training on their own
        for cell in running.values():
            cell.proc.terminate()
        for cell in running.values():
            try:
                cell.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                cell.proc.kill()
            cell.log.close()
        raise
    if outcome.failed:
        log(
            f"{len(outcome.failed)} cell(s) failed: "
            + "; ".join(f"{n} seed {s} (exit {rc}, log {p})" for n, s, rc, p in outcome.failed)
        )
    return outcome
