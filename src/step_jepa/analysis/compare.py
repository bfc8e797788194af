"""`step-jepa compare`: train and evaluate the cells (config × seed) of a grid, one after another.

The grid file is :mod:`step_jepa.analysis.grid`; running cells in parallel processes
:mod:`step_jepa.analysis.parallel`; the run directories' layout :mod:`step_jepa.analysis.runs`; the
table and plot :mod:`step_jepa.analysis.report`; the paired statistics :mod:`step_jepa.analysis.stats`.

Resumability: a run is finished when its `result.json` exists (written last, atomically), and is
skipped. A run whose training finished (`train_summary.json` + `final/`) but whose evaluation did
not is only evaluated. Anything else in a run directory is a half-finished run and is redone from
scratch. A finished result whose recorded train/eval settings differ from the grid's is an error:
mixing results of two different grids in one table is the mistake this guards against.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from step_jepa.analysis.comparable import config_differences, scored_eval_settings
from step_jepa.analysis.grid import (
    Grid,
    eval_records,
    eval_settings,
    select_cells,
    shared_settings,
    train_config,
)
from step_jepa.analysis.runs import CELL_LOG, GRID_COPY, RESULT, fingerprint, log, run_dir, write_atomic
from step_jepa.evaluation.evaluate import DEFAULT_EVAL_DTYPE, EVAL_DTYPES
from step_jepa.training.config import StepJEPAConfig, config_dict


def evaluate_run(grid: Grid, final_dir: Path, out_dir: Path, records: list[dict]) -> dict[str, Any]:
    """Load the trained model (full or LoRA adapter dir) and evaluate it with the grid's settings."""
    import torch

    ev = eval_settings(grid)
    dtype_name = EVAL_DTYPES[ev.get("dtype", DEFAULT_EVAL_DTYPE)]  # fp32 unless the grid says (bf16: budget-dependent)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with one_eval_per_device(grid.output_dir):
        return _evaluate_loaded(grid, ev, final_dir, out_dir, records, dtype_name, device)


@contextlib.contextmanager
def one_eval_per_device(output_dir: Path) -> Iterator[None]:
    """Hold the grid's evaluation lock of this process's devices while a cell evaluates.

    The decoder sizes its batch budget from the memory free when it starts. Under `--jobs`, cells
    trained side by side reach evaluation together; on one H100 (2026-12-06) five SmolLM2 fp32
    evaluations started at once filled the card's memory and made no progress in 4 minutes, while
    one at a time each took about 20 s. So the cells of a grid that share devices (the same
    CUDA_VISIBLE_DEVICES) evaluate one after another; training still overlaps. An advisory
    `flock` on a file in the output dir, released by the OS if the process dies.
    """
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_") or "none"
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / f".eval-lock-{devices}", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another cell's evaluation on the same device(s)")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _evaluate_loaded(
    grid: Grid,
    ev: dict[str, Any],
    final_dir: Path,
    out_dir: Path,
    records: list[dict],
    dtype_name: str | None,
    device: str,
) -> dict[str, Any]:
    import torch

    from step_jepa.evaluation.evaluate import evaluate
    from step_jepa.models.loading import load_for_inference
    from step_jepa.training.model_card import update_model_card_eval

    model, tok = load_for_inference(
        str(final_dir), dtype=getattr(torch, dtype_name) if dtype_name else None, device=device
    )
    try:
        summary = evaluate(
            model,
            tok,
            records,
            out_dir=out_dir,
            max_new_tokens=int(ev.get("max_new_tokens", 512)),
            batch_size=ev.get("batch_size"),
            max_batch_tokens=ev.get("max_batch_tokens"),
            system_prompt=ev.get("system_prompt"),
            lenient=bool(ev.get("lenient", False)),
            progress=False,
            model_name=str(final_dir),
            cuda_graphs=ev.get("cuda_graphs"),
        )  # None: on for CUDA
        update_model_card_eval(
            final_dir,
            summary,
            data=Path(ev["test_file"]).stem
            if ev.get("test_file")
            else f"generated{ev.get('generate')}-s{ev.get('seed')}",
        )
        summary["also"] = _also_protocols(model, tok, ev, out_dir.parent)
        return summary
    finally:
        del model
        _free_memory()


def _also_protocols(model: Any, tok: Any, ev: dict[str, Any], rdir: Path) -> dict[str, dict[str, Any]]:
    """The cell's scores under `eval.also_protocols` (lm-eval's gsm8k), into <run>/eval-<protocol>/."""
    from step_jepa.evaluation.lm_eval_gsm8k import evaluate_lm_eval, load_docs

    out: dict[str, dict[str, Any]] = {}
    if not ev.get("also_protocols"):
        return out
    docs, shots = load_docs(ev["test_file"]), load_docs(ev["fewshot_file"])
    if ev.get("limit") is not None:
        docs = docs[: int(ev["limit"])]
    for name in ev["also_protocols"]:
        summary = evaluate_lm_eval(
            model,
            tok,
            docs,
            shots,
            out_dir=rdir / f"eval-{name}",
            task=name,
            progress=False,
            model_name=str(rdir / "final"),
            cuda_graphs=ev.get("cuda_graphs"),
            fewshot_file=ev["fewshot_file"],
        )
        out[name] = {k: summary[k] for k in ("accuracy", "accuracy_strict", "correct", "correct_strict", "n")}
        log(f"{name}: flexible-extract {summary['accuracy']:.4f}, strict-match {summary['accuracy_strict']:.4f}")
    return out


def _free_memory() -> None:
    """Release the previous run's model before the next one is loaded (one process runs many)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def run_state(rdir: Path) -> str:
    """'done' (result.json), 'trained' (final model, no result), 'partial' (anything else) or 'new'.

    The cell's own log (`compare.log`, written by `--jobs`) is not part of the run."""
    if (rdir / RESULT).exists():
        return "done"
    if (rdir / "train_summary.json").exists() and (rdir / "final").is_dir():
        return "trained"
    if rdir.exists() and any(p.name != CELL_LOG for p in rdir.iterdir()):
        return "partial"
    return "new"


def _clear_run(rdir: Path) -> None:
    """Delete a half-finished run, keeping the cell's log (its process is writing to it)."""
    for p in rdir.iterdir():
        if p.name == CELL_LOG:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _check_recorded(result: dict, cfg: StepJEPAConfig, ev: dict, rdir: Path) -> None:
    """A skipped result must come from the same settings as the grid now asks for."""
    diff = config_differences(result.get("train_config", {}), config_dict(cfg))
    rec_eval, now_eval = scored_eval_settings(result.get("eval")), scored_eval_settings(ev)
    ediff = sorted(k for k in set(rec_eval) | set(now_eval) if rec_eval.get(k) != now_eval.get(k))
    if diff or ediff:
        raise ValueError(
            f"{rdir / RESULT} was produced with other settings (train: {diff or 'same'}, eval: {ediff or 'same'}). "
            f"Delete {rdir} to redo it, or use another output_dir."
        )


def _check_trained(cfg: StepJEPAConfig, rdir: Path) -> None:
    """A finished training without result is reused only if it was trained with today's settings."""
    saved = rdir / "step_jepa_config.yaml"
    if not saved.exists():
        return
    import yaml

    diff = config_differences(yaml.safe_load(saved.read_text()) or {}, config_dict(cfg))
    if diff:
        raise ValueError(f"{rdir} was trained with other settings ({diff}); delete it to redo the run")


def run_one(grid: Grid, name: str, seed: int, records: list[dict], elsewhere: Sequence[Path] = ()) -> dict[str, Any]:
    """Train (unless already trained) and evaluate one config × seed; write result.json last. A cell
    finished here or in one of `elsewhere` (see :func:`finished_run`) is skipped."""
    from step_jepa.training.trainer import run_train

    done = finished_run(grid, name, seed, elsewhere)
    if done is not None:
        log(f"{name} seed {seed}: skipped, already finished ({done / RESULT})")
        return json.loads((done / RESULT).read_text())
    cfg = train_config(grid, name, seed)
    rdir = run_dir(grid.output_dir, name, seed)
    ev = eval_settings(grid)
    state = run_state(rdir)
    if state == "trained":
        _check_trained(cfg, rdir)
        log(f"{name} seed {seed}: training already finished, evaluating only")
        train_summary = json.loads((rdir / "train_summary.json").read_text())
        train_seconds = float(train_summary.get("wall_seconds", train_summary.get("train_seconds", 0.0)))
    else:
        if state == "partial":
            log(f"{name} seed {seed}: {rdir} holds a half-finished run; redoing it from scratch")
            _clear_run(rdir)
        log(f"{name} seed {seed}: training -> {rdir}")
        t0 = time.perf_counter()
        train_summary = run_train(cfg)
        train_seconds = time.perf_counter() - t0
        train_summary["wall_seconds"] = round(train_seconds, 2)
        (rdir / "train_summary.json").write_text(json.dumps(train_summary, indent=1))
        _free_memory()
    log(f"{name} seed {seed}: evaluating {len(records)} examples")
    t0 = time.perf_counter()
    summary = evaluate_run(grid, rdir / "final", rdir / "eval", records)
    eval_seconds = time.perf_counter() - t0
    result = {
        "config": name,
        "seed": seed,
        "accuracy": summary["accuracy"],
        "correct": summary["correct"],
        "n": summary["n"],
        "no_answer_rate": summary.get("no_answer_rate"),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "overrides": grid.configs[name],
        "shared_fingerprint": fingerprint(shared_settings(cfg)),
        "train_config": config_dict(cfg),
        "eval": ev,
        "train_summary": train_summary,
        "eval_summary": {k: v for k, v in summary.items() if k != "also"},
        "also_protocols": summary.get("also", {}),
    }
    write_atomic(rdir / RESULT, json.dumps(result, indent=1, default=str))
    if not grid.keep_checkpoints:
        # Checkpoints only serve to resume training, which is over; a grid of full fine-tunes
        # would otherwise keep weights + optimizer state of every run on disk.
        for ckpt in rdir.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
    log(
        f"{name} seed {seed}: accuracy {result['accuracy']:.4f} ({result['correct']}/{result['n']}), "
        f"train {train_seconds:.1f} s, eval {eval_seconds:.1f} s"
    )
    return result


def run_grid(
    grid: Grid, only: list[str] | None = None, seeds: list[int] | None = None, elsewhere: Sequence[Path] = ()
) -> list[dict[str, Any]]:
    """Run the selected config × seed cells in grid order; returns their results (new or skipped,
    here or in `elsewhere`)."""
    names = select_cells(list(grid.configs), only, "config")
    chosen = select_cells(grid.seeds, seeds, "seed")
    grid.output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(grid.output_dir / GRID_COPY, json.dumps(grid.to_dict(), indent=1, default=str))
    records = eval_records(grid)
    results = []
    for name in names:
        for s in chosen:
            results.append(run_one(grid, name, s, records, elsewhere))
    return results


def finished_run(grid: Grid, name: str, seed: int, elsewhere: Sequence[Path] = ()) -> Path | None:
    """The run directory of the cell's finished run: in the grid's output directory, else in the first
    of `elsewhere` that has one (output directories of earlier runs of the grid, e.g. archived under
    results/: `compare --finished`), so that a grid continued on another date or card does not retrain
    them. A finished result of other settings than the grid's now raises; None: not finished."""
    for out in (grid.output_dir, *elsewhere):
        rdir = run_dir(Path(out), name, seed)
        if run_state(rdir) == "done":
            result = json.loads((rdir / RESULT).read_text())
            _check_recorded(result, train_config(grid, name, seed), eval_settings(grid), rdir)
            return rdir
    return None
