"""`step-jepa compare`: train and evaluate a grid of configs × seeds, then tabulate it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from step_jepa.analysis.comparable import ProtocolMismatch
from step_jepa.analysis.compare import finished_run, run_grid, run_state
from step_jepa.analysis.grid import load_grid, select_cells
from step_jepa.analysis.parallel import run_cells_parallel, visible_gpus
from step_jepa.analysis.report import build_report
from step_jepa.analysis.runs import GRID_COPY, RESULT, grid_order, log, run_dir


def _jobs(value: str) -> int | str:
    if value == "gpus":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'gpus', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'gpus', got {value!r}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train and evaluate every config × seed of a grid YAML (resumable), then write "
        "compare_table.md, compare_results.json and compare.png. See docs/analysis.md."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="grid YAML (base, eval, configs, seeds, output_dir)")
    src.add_argument(
        "--report",
        nargs="+",
        metavar="DIR",
        help="only rebuild table and plot from DIR/*/seed*/result.json, written into DIR; further DIRs "
        "(grid output dirs too, e.g. the baseline's runs archived on another date) join the table, "
        "read in place, and the table says which runs came from where",
    )
    src.add_argument(
        "--select",
        nargs="+",
        metavar="DIR",
        help="choose one config from finished dev grids (their output dirs) by the fixed rule of "
        "step_jepa.analysis.select: highest mean paired Δ vs --baseline over the dirs, ties to the "
        "first listed; --only limits the candidates. Writes --selection_out, which a test grid "
        "reads with configs: {NAME: {from_selection: PATH}}",
    )
    src.add_argument(
        "--archive",
        metavar="DIR",
        help="copy what the report of grid output DIR is computed from (results, configs, gzipped "
        "metrics, per-problem correctness; no weights, checkpoints or model outputs) into "
        "--archive_to, to commit; the home directory becomes ~. See docs/analysis.md",
    )
    p.add_argument("--archive_to", metavar="DEST", help="with --archive: where the copy goes (may hold other runs)")
    p.add_argument(
        "--selection_out",
        metavar="PATH",
        help="with --select: where chosen.json goes (default: DIR/chosen.json of the first DIR)",
    )
    p.add_argument(
        "--baseline",
        metavar="NAME",
        help="with --report / --select: the config the others are paired against (default: the "
        "grid's first, or without a grid the first name in sorted order)",
    )
    p.add_argument(
        "--allow_protocol_mismatch",
        action="store_true",
        help="report runs scored under different evaluation protocols (or without a recorded one) "
        "anyway, with a warning; by default the report refuses and names the differing fields",
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these configs (with --select: the candidates)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="run only these seeds")
    p.add_argument("--output_dir", help="override the grid's output_dir")
    p.add_argument(
        "--finished",
        nargs="+",
        metavar="DIR",
        default=[],
        help="with --config: output directories of earlier runs of this grid (e.g. archived under "
        "results/DATE-CARD/GRID) whose finished cells are not run again: each is checked against the "
        "grid's settings, skipped, and read in place by the report",
    )
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        metavar="N|gpus",
        help="run N cells (config × seed) at once, each in its own process with its output in "
        "<run>/compare.log; on one GPU they share it, with several each cell gets the least busy "
        "one; 'gpus': one cell per visible GPU. A failed cell is reported and the others go on",
    )
    p.add_argument(
        "--no_report",
        action="store_true",
        help="run the cells but do not write the table and plot (what each --jobs process does)",
    )
    p.add_argument("--dry_run", action="store_true", help="print what would run (and what is skipped) and stop")


def cell_command(output_dir: str):
    """The argv of the process that runs one cell of `--jobs`: this command, for that cell alone, on
    the grid as this process resolved it (its copy in the output directory, written before any cell
    starts), not on the grid file, which may be edited while the cells run."""

    def command(name: str, seed: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "step_jepa.cli",
            "compare",
            "--config",
            str(Path(output_dir) / GRID_COPY),
            "--only",
            name,
            "--seeds",
            str(seed),
            "--output_dir",
            output_dir,
            "--no_report",
        ]

    return command


def _select(args: argparse.Namespace) -> int:
    from step_jepa.analysis.select import select, write_selection

    baseline = args.baseline or _first_config(Path(args.select[0]))
    try:
        chosen = select(args.select, baseline, args.only)
    except ProtocolMismatch as e:
        log(f"error: {e}")
        return 2
    out = write_selection(args.selection_out or Path(args.select[0]) / "chosen.json", chosen)
    log(f"wrote {out}: {chosen['winner']} {chosen['overrides']}")
    return 0


def _first_config(testbed: Path) -> str:
    """The baseline by default: the first config of the grid that made the dir."""
    configs = grid_order(testbed)
    if not configs:
        raise SystemExit(f"--select: {testbed} has no {GRID_COPY}; name the baseline with --baseline")
    return str(configs[0])


def _archive(args: argparse.Namespace) -> int:
    from step_jepa.analysis.archive import archive_grid

    if not args.archive_to:
        raise ValueError("--archive needs --archive_to DEST (where the copy goes)")
    done = archive_grid(args.archive, args.archive_to)
    for r in done.unfinished:
        log(f"{r}: not finished (no {RESULT}), left out")
    log(
        f"archived {len(done.runs)} run(s) of {args.archive} into {args.archive_to}; "
        f"rebuild its table with: step-jepa compare --report {args.archive_to}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from step_jepa.analysis.deps import require_matplotlib

    if args.archive_to and not args.archive:
        raise ValueError("--archive_to is only used with --archive")
    if args.finished and not args.config:  # --report takes further directories itself
        raise ValueError("--finished is only used with --config (--report reads further DIRs directly)")
    if args.archive:  # copies files only: no plot, no matplotlib
        return _archive(args)
    if args.select:  # reads result files only: no plot, no matplotlib
        return _select(args)
    if not args.dry_run and not args.no_report:  # every other path ends in compare.png: fail now, not after training
        require_matplotlib("compare")
    allow = getattr(args, "allow_protocol_mismatch", False)
    if args.report:
        try:
            build_report(
                args.report[0],
                [args.baseline] if args.baseline else None,
                allow_protocol_mismatch=allow,
                also_from=args.report[1:],
            )
        except ProtocolMismatch as e:
            log(f"error: {e}")
            return 2
        return 0
    grid = load_grid(args.config, args.output_dir)
    elsewhere = [Path(d) for d in args.finished]
    if args.dry_run:
        for name in select_cells(list(grid.configs), args.only, "config"):
            for s in select_cells(grid.seeds, args.seeds, "seed"):
                rdir = finished_run(grid, name, s, elsewhere) or run_dir(grid.output_dir, name, s)
                log(f"{name} seed {s}: {run_state(rdir)} -> {rdir}")
        return 0
    jobs = args.jobs
    if jobs == "gpus":
        jobs = len(visible_gpus())
        if jobs == 0:
            raise ValueError("--jobs gpus: no GPU is visible (CUDA_VISIBLE_DEVICES / torch.cuda)")
    if jobs == 1:
        run_grid(grid, args.only, args.seeds, elsewhere)
        failed = []
    else:
        command = cell_command(str(grid.output_dir))
        failed = run_cells_parallel(grid, jobs, command, args.only, args.seeds, elsewhere=elsewhere).failed
    if not args.no_report and any(any(d.glob(f"*/seed*/{RESULT}")) for d in (grid.output_dir, *elsewhere)):
        try:
            build_report(grid.output_dir, list(grid.configs), allow_protocol_mismatch=allow, also_from=args.finished)
        except ProtocolMismatch as e:
            log(f"error: {e}")
            return 2
    return 1 if failed else 0
