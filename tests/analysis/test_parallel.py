"""Tests for step_jepa.analysis.parallel: `compare --jobs`, cells in processes of their own."""

from __future__ import annotations

import json

import pytest
from conftest import grid_dict, write_grid

from step_jepa.analysis.compare import run_state
from step_jepa.analysis.grid import load_grid
from step_jepa.analysis.parallel import run_cells_parallel
from step_jepa.analysis.runs import CELL_LOG, RESULT, SHARING, TABLE
from step_jepa.cli.main import main as cli_main


@pytest.mark.slow
def test_compare_jobs_runs_cells_at_once_reports_a_failed_cell_and_resumes(model_dir, tmp_path, capsys) -> None:
    """`--jobs 2`: a 2 × 2 grid in child processes, a log per cell, a failed cell reported with its log
    while the others finish (exit 1); the rerun skips the finished cells and runs the failed one."""
    import shutil

    out = tmp_path / "grid"
    cfg = write_grid(tmp_path / "grid.yaml", grid_dict(str(model_dir), out, keep_checkpoints=False))
    trap = out / "sft" / "seed1"  # a finished training of other settings: its process refuses it
    (trap / "final").mkdir(parents=True)
    (trap / "train_summary.json").write_text("{}")
    (trap / "step_jepa_config.yaml").write_text("learning_rate: 1.0\n")
    assert cli_main(["compare", "--config", str(cfg), "--jobs", "2"]) == 1
    printed = capsys.readouterr().out
    assert len(list(out.glob("*/seed*/result.json"))) == 3
    assert all((d / CELL_LOG).stat().st_size > 0 for d in out.glob("*/seed*"))
    assert "sft seed 1: FAILED (exit 2)" in printed and str(trap / CELL_LOG) in printed
    assert "trained with other settings" in printed  # the child's error, quoted from its log
    assert "progress: 3/4 done, 0 running, 0 left, 1 failed" in printed
    assert (out / TABLE).exists()  # the table of the finished cells

    shutil.rmtree(trap / "final")
    for name in ("train_summary.json", "step_jepa_config.yaml"):
        (trap / name).unlink()
    assert cli_main(["compare", "--config", str(cfg), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped, already finished") == 3 and "1 cell(s) to run" in printed
    assert len(list(out.glob("*/seed*/result.json"))) == 4
    assert (trap / CELL_LOG).read_text().count("=== ") == 2  # appended to, not replaced
    assert "| sft |" in (out / TABLE).read_text()


def test_parallel_cells_pin_gpus_and_report_failures(tmp_path) -> None:
    """With two GPUs each cell's process gets the least busy one; a process that exits without a
    result is a failed cell, named with its log, and the others still run."""
    import sys

    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    show = "import os; print('device', os.environ['CUDA_VISIBLE_DEVICES'])"
    outcome = run_cells_parallel(
        grid, 2, lambda name, seed: [sys.executable, "-c", show], gpus=["0", "1"], poll_seconds=0.05
    )
    assert len(outcome.failed) == 4 and not outcome.finished
    logs = [path for _, _, _, path in outcome.failed]
    assert all(p.name == CELL_LOG and p.exists() for p in logs)
    devices = [p.read_text().split("device ")[-1].strip() for p in logs]
    assert set(devices) == {"0", "1"}
    assert run_state(logs[0].parent) == "new"  # a log alone is not a half-finished run


def test_a_cell_out_of_gpu_memory_beside_others_is_retried_alone(tmp_path) -> None:
    """A cell whose process reports CUDA running out of memory while other cells share the device is
    queued again and started only when nothing else runs; out of memory alone, it has failed."""
    import sys

    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    a, b = grid.configs  # in the grid file's order
    # The child leaves a marker while it runs and writes result.json when it succeeds; (a, 0) runs
    # out of memory when another cell runs beside it, (b, 1) always.
    child = """
import sys, time
from pathlib import Path
out, name, seed, a, b = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
me = out / f"running-{name}-{seed}"
me.write_text("")
crowded = False
for _ in range(20):  # a second, looking for company all along (another child may start late)
    crowded = crowded or any(p != me for p in out.glob("running-*"))
    time.sleep(0.05)
me.unlink()
if ((name, seed) == (a, 0) and crowded) or (name, seed) == (b, 1):
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.00 MiB.")
    sys.exit(1)
(out / name / f"seed{seed}" / "result.json").write_text("{}")
"""
    started: list[tuple[str, int]] = []

    def command(name: str, seed: int) -> list[str]:
        started.append((name, seed))
        return [sys.executable, "-c", child, str(grid.output_dir), name, str(seed), a, b]

    outcome = run_cells_parallel(grid, 2, command, gpus=[], poll_seconds=0.02)
    # (a, 0) failed beside (b, 0) and ran again last, alone; (b, 1) had company too, so it got its
    # second try as well, alone, and failed there.
    assert started[:4] == [(a, 0), (b, 0), (a, 1), (b, 1)]
    assert sorted(started[4:]) == sorted([(a, 0), (b, 1)])
    assert sorted(outcome.finished) == sorted([(b, 0), (a, 0), (a, 1)])
    assert [(n, s) for n, s, _, _ in outcome.failed] == [(b, 1)]
    log = (grid.output_dir / a / "seed0" / CELL_LOG).read_text()
    assert log.count("=== ") == 2 and "CUDA out of memory" in log
    # The retry ran alone: its result says so, not the company of its first attempt.
    assert json.loads((grid.output_dir / a / "seed0" / RESULT).read_text())[SHARING] == {"cells_at_most": 1, "jobs": 2}


def test_with_several_gpus_a_retried_cell_waits_for_an_empty_one(tmp_path) -> None:
    """Three cells at a time on two GPUs: two share one. The one of them that runs out of memory
    beside the other is retried on a GPU where nothing runs (its child checks, per device)."""
    import sys

    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    a, _ = grid.configs
    child = """
import os, sys, time
from pathlib import Path
out, name, seed, a = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
gpu = os.environ["CUDA_VISIBLE_DEVICES"]
me = out / f"running-{gpu}-{name}-{seed}"
me.write_text("")
crowded = False
for _ in range(20):
    crowded = crowded or any(p != me for p in out.glob(f"running-{gpu}-*"))
    time.sleep(0.05)
me.unlink()
if (name, seed) == (a, 0) and crowded:
    print("torch.OutOfMemoryError: CUDA out of memory.")
    sys.exit(1)
(out / name / f"seed{seed}" / "result.json").write_text('{"gpu": "%s"}' % gpu)
"""
    outcome = run_cells_parallel(
        grid,
        3,
        lambda name, seed: [sys.executable, "-c", child, str(grid.output_dir), name, str(seed), a],
        gpus=["0", "1"],
        poll_seconds=0.02,
    )
    assert not outcome.failed and len(outcome.finished) == 4
    log = (grid.output_dir / a / "seed0" / CELL_LOG).read_text()
    assert log.count("=== ") == 2 and "CUDA out of memory" in log


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_finished_cell_records_how_many_cells_shared_its_device(tmp_path, jobs: int) -> None:
    """result.json says how many cells ran on the cell's device at most while it ran: with --jobs 2
    on one device every cell of a 2 x 2 grid had company (a cell starts whenever one ends), with
    --jobs 1 none."""
    import sys

    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    child = "import sys, time; time.sleep(0.3); open(sys.argv[1], 'w').write('{}')"
    outcome = run_cells_parallel(
        grid,
        jobs,
        lambda name, seed: [sys.executable, "-c", child, str(grid.output_dir / name / f"seed{seed}" / RESULT)],
        gpus=[],
        poll_seconds=0.02,
    )
    assert len(outcome.finished) == 4
    recorded = [json.loads(p.read_text())[SHARING] for p in grid.output_dir.glob(f"*/seed*/{RESULT}")]
    assert recorded == [{"cells_at_most": jobs, "jobs": jobs}] * 4


def test_parallel_cells_start_seed_by_seed(tmp_path) -> None:
    """One at a time, cells start seed by seed (sft 0, jepa 0, sft 1, ...), so a grid stopped part-way
    leaves whole paired seeds."""
    import sys

    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    started: list[tuple[str, int]] = []

    def command(name: str, seed: int) -> list[str]:
        started.append((name, seed))
        return [sys.executable, "-c", "pass"]

    run_cells_parallel(grid, 1, command, gpus=[], poll_seconds=0.01)
    a, b = grid.configs  # in the grid file's order
    assert started == [(a, 0), (b, 0), (a, 1), (b, 1)]


def test_jobs_argument() -> None:
    from step_jepa.cli.main import build_parser

    def parse(*a):
        return build_parser(["compare", *a]).parse_args(["compare", "--config", "g.yaml", *a])

    assert parse().jobs == 1 and parse("--jobs", "3").jobs == 3 and parse("--jobs", "gpus").jobs == "gpus"
    with pytest.raises(SystemExit):
        parse("--jobs", "0")
