"""`step-jepa compare`: train and evaluate a grid of configs × seeds, then tabulate and plot accuracy.

This module runs the grid; the table, plot and their files are :mod:`step_jepa.analysis.report`, the
paired statistics :mod:`step_jepa.analysis.stats`.

A grid file (YAML) has five keys::

    base:        StepJEPAConfig fields shared by every run (model, data, steps, lr, batch size, ...)
    eval:        test_file | generate (+ seed), max_new_tokens, batch_size, limit, lenient, dtype (default fp32),
                 system_prompt, cuda_graphs (default: on for CUDA)
    configs:     name -> overrides of the JEPA options only (lbd, predictors, pairs, jepa_loss, ...)
    seeds:       [0, 1, 2]
    output_dir:  where <name>/seed<s>/ run directories and the table/plot go
    keep_checkpoints: (optional, default true) false deletes checkpoint-*/ of finished runs

Why the overrides are restricted to the JEPA options: the point of the grid is to attribute an
accuracy difference to the JEPA term. Every run of one seed therefore shares the data, the data
order (the Trainer's sampler is seeded by `seed`, and the model-side randomness of the JEPA runs —
predictor-row initialisation, pair sampling — does not touch it; `tests/analysis/test_compare.py` checks
this), the optimiser and the schedule. `check_same_except_jepa` asserts it before anything runs.

Resumability: a run is finished when its `result.json` exists (written last, atomically), and is
skipped. A run whose training finished (`train_summary.json` + `final/`) but whose evaluation did
not is only evaluated. Anything else in a run directory is a half-finished run and is redone from
scratch. A finished result whose recorded train/eval settings differ from the grid's is an error:
mixing results of two different grids in one table is the mistake this guards against.

Parallel cells (`--jobs N`, :func:`run_cells_parallel`): every unfinished cell runs in a process of
its own (`step-jepa compare --only NAME --seeds S --no_report`), N at a time, its output in
`<run>/compare.log`; the same resumability rules apply inside each process. On one GPU (or none)
the N processes share it; with several visible GPUs each cell gets the least busy one through
CUDA_VISIBLE_DEVICES (`--jobs gpus`: one cell per visible GPU). A failed cell is reported with its
log and the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from step_jepa.analysis.report import (
    CELL_LOG,
    GRID_COPY,
    RESULT,
    _write_atomic,
    fingerprint,
    log,
    run_dir,
)
from step_jepa.analysis.select import resolve_selection
from step_jepa.evaluation.evaluate import DEFAULT_EVAL_DTYPE, EVAL_DTYPES
from step_jepa.training.config import StepJEPAConfig, config_dict
from step_jepa.training.options import coerce_numbers, load_yaml

# StepJEPAConfig fields a grid config may override. Everything else must live in `base:`.
# The JEPA options: every `jepa_*` field plus the ones named without the prefix (taken from
# StepJEPAConfig itself, so options added to train are accepted without editing this file).
# `packing_budget` is one of them: it changes only how a JEPA run's extras count against the
# batch budget (an SFT run has none), so a config may set it against the grid's SFT baseline.
JEPA_KEYS = frozenset(
    {f.name for f in dataclasses.fields(StepJEPAConfig) if f.name.startswith("jepa_")}
    | (
        {
            "lbd",
            "gamma",
            "predictors",
            "pairs",
            "vicreg_weight",
            "ema_decay",
            "lbd_schedule",
            "lbd_warmup_steps",
            "stp_lbd",
            "stp_positions",
            "view_boundary",
            "packing_budget",
        }
        & {f.name for f in dataclasses.fields(StepJEPAConfig)}
    )
)


# Set by compare for every run; a grid that sets them would break the layout or the seeding.
RESERVED_KEYS = frozenset({"seed", "output_dir", "overwrite_output_dir", "resume"})


# Scored besides the grid's own protocol, from the same loaded model (so no weights need keeping);
# they do not change the main score, so a finished cell is not redone when they are added.
EXTRA_EVAL_KEYS = frozenset({"also_protocols", "fewshot_file"})
EVAL_KEYS = (
    frozenset(
        {
            "test_file",
            "generate",
            "seed",
            "max_new_tokens",
            "batch_size",
            "max_batch_tokens",
            "limit",
            "lenient",
            "dtype",
            "system_prompt",
            "cuda_graphs",
        }
    )
    | EXTRA_EVAL_KEYS
)


DEFAULT_EVAL_SEED = 1000  # far from usual training seeds, so generated eval problems are not training ones


@dataclass
class Grid:
    """A parsed, validated grid file."""

    base: dict[str, Any]
    eval: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    seeds: list[int]
    output_dir: Path
    source: str = ""
    keep_checkpoints: bool = True  # False: delete checkpoint-*/ once result.json is written (final/ stays)
    selected_from: dict[str, str] = field(default_factory=dict)  # config → the chosen.json it came from

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "eval": self.eval,
            "configs": self.configs,
            "seeds": self.seeds,
            "output_dir": str(self.output_dir),
            "source": self.source,
            "keep_checkpoints": self.keep_checkpoints,
            "selected_from": self.selected_from,
        }


def load_grid(path: str | Path, output_dir: str | None = None) -> Grid:
    """Read and validate a grid YAML; unknown keys anywhere are errors (typos must not pass silently)."""
    raw = load_yaml(path)
    unknown = sorted(set(raw) - {"base", "eval", "configs", "seeds", "output_dir", "keep_checkpoints"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s): {', '.join(unknown)}")
    out = output_dir or raw.get("output_dir")
    if not out:
        raise ValueError(f"{path}: 'output_dir' is required (or pass --output_dir)")
    configs, selected_from = {}, {}
    for k, v in (raw.get("configs") or {}).items():
        spec = dict(v or {})
        if "from_selection" in spec:  # a test grid's config chosen on dev (analysis/select.py)
            selected_from[str(k)] = str(spec["from_selection"])
            spec = resolve_selection(f"{path}: configs.{k}", spec, Path(path).parent)
        configs[str(k)] = coerce_numbers(f"{path}: configs.{k}", spec, StepJEPAConfig)
    grid = Grid(
        base=coerce_numbers(f"{path}: base", dict(raw.get("base") or {}), StepJEPAConfig),
        eval=dict(raw.get("eval") or {}),
        configs=configs,
        seeds=[int(s) for s in (raw.get("seeds") or [0])],
        output_dir=Path(out),
        source=str(path),
        keep_checkpoints=bool(raw.get("keep_checkpoints", True)),
        selected_from=selected_from,
    )
    validate_grid(grid)
    return grid


def validate_grid(grid: Grid) -> None:
    """Check keys and values up front, so that a typo fails before hours of training, not after."""
    names = {f.name for f in dataclasses.fields(StepJEPAConfig)}
    where = grid.source or "grid"
    bad = sorted(set(grid.base) - names)
    if bad:
        raise ValueError(f"{where}: base: unknown StepJEPAConfig field(s): {', '.join(bad)}")
    reserved = sorted(set(grid.base) & RESERVED_KEYS)
    if reserved:
        raise ValueError(f"{where}: base: {', '.join(reserved)} are set by compare per run (use seeds:/output_dir:)")
    if not grid.configs:
        raise ValueError(f"{where}: 'configs' is empty")
    for name, over in grid.configs.items():
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{where}: bad config name {name!r} (it becomes a directory name)")
        wrong = sorted(set(over) - JEPA_KEYS)
        if wrong:
            raise ValueError(
                f"{where}: configs.{name}: only JEPA options may vary between configs "
                f"({', '.join(sorted(JEPA_KEYS))}); move {', '.join(wrong)} to base: or use another grid"
            )
    if len(set(grid.seeds)) != len(grid.seeds):
        raise ValueError(f"{where}: duplicate seeds {grid.seeds}")
    _validate_eval(grid, where)
    for name in grid.configs:  # builds and validates every StepJEPAConfig
        for s in grid.seeds:
            train_config(grid, name, s)
    check_same_except_jepa(grid)


def _validate_eval(grid: Grid, where: str) -> None:
    ev = grid.eval
    bad = sorted(set(ev) - EVAL_KEYS)
    if bad:
        raise ValueError(f"{where}: eval: unknown key(s): {', '.join(bad)} (known: {', '.join(sorted(EVAL_KEYS))})")
    if bool(ev.get("test_file")) == bool(ev.get("generate")):
        raise ValueError(f"{where}: eval: give exactly one of test_file or generate")
    _validate_also_protocols(ev, where)
    if not isinstance(ev.get("cuda_graphs", False), bool):
        raise ValueError(f"{where}: eval.cuda_graphs must be true or false")
    if ev.get("dtype", DEFAULT_EVAL_DTYPE) not in EVAL_DTYPES:
        raise ValueError(f"{where}: eval.dtype must be one of {', '.join(EVAL_DTYPES)}")
    # The same ranges as `step-jepa eval`: found now, not after the grid's first training run.
    small = [
        k
        for k in ("generate", "max_new_tokens", "batch_size", "max_batch_tokens", "limit")
        if ev.get(k) is not None and not (isinstance(ev[k], int) and ev[k] >= 1)
    ]
    if small:
        raise ValueError(f"{where}: eval: {', '.join(small)} must be whole numbers >= 1")
    if ev.get("generate") and not grid.base.get("train_file"):
        eval_seed = int(ev.get("seed", DEFAULT_EVAL_SEED))
        if eval_seed in grid.seeds:
            raise ValueError(
                f"{where}: eval.seed {eval_seed} is also a training seed and training uses the generator "
                f"(no base.train_file): the test problems would be training problems. Pick another eval.seed."
            )


def _validate_also_protocols(ev: dict[str, Any], where: str) -> None:
    """`also_protocols: [lm-eval-gsm8k, ...]` scores each cell under lm-evaluation-harness's gsm8k too:
    it needs raw GSM8K rows in test_file and the few-shot pool in fewshot_file."""
    from step_jepa.evaluation.lm_eval_gsm8k import TASKS

    also = ev.get("also_protocols")
    if also is None:
        if ev.get("fewshot_file"):
            raise ValueError(f"{where}: eval.fewshot_file is only used with eval.also_protocols")
        return
    if not isinstance(also, list) or not also or any(p not in TASKS for p in also):
        raise ValueError(f"{where}: eval.also_protocols must be a list of {', '.join(TASKS)}")
    if not ev.get("test_file") or not ev.get("fewshot_file"):
        raise ValueError(
            f"{where}: eval.also_protocols needs eval.test_file and eval.fewshot_file (raw GSM8K JSONL: "
            "the test split, and the train split lm-eval draws its 5 shots from)"
        )
    if not Path(ev["fewshot_file"]).exists():
        raise ValueError(f"{where}: eval.fewshot_file {ev['fewshot_file']} does not exist")


def train_config(grid: Grid, name: str, seed: int) -> StepJEPAConfig:
    """The StepJEPAConfig of one run: base, then the config's JEPA overrides, then seed and directory."""
    values = {
        **grid.base,
        **grid.configs[name],
        "seed": seed,
        "output_dir": str(run_dir(grid.output_dir, name, seed)),
        "overwrite_output_dir": True,
    }
    return StepJEPAConfig(**values)  # validated while it is built


def shared_settings(cfg: StepJEPAConfig) -> dict[str, Any]:
    """The part of a StepJEPAConfig that must be identical across the configs of one seed."""
    return {k: v for k, v in config_dict(cfg).items() if k not in JEPA_KEYS | {"output_dir"}}


def check_same_except_jepa(grid: Grid) -> None:
    """Assert the comparison is fair: per seed, all configs share every non-JEPA training setting."""
    for s in grid.seeds:
        ref_name = next(iter(grid.configs))
        ref = shared_settings(train_config(grid, ref_name, s))
        for name in grid.configs:
            other = shared_settings(train_config(grid, name, s))
            diff = sorted(k for k in ref if ref[k] != other[k])
            if diff:
                raise AssertionError(f"configs {ref_name} and {name} differ outside the JEPA options: {diff}")


def eval_records(grid: Grid) -> list[dict]:
    """The evaluation set: a file (prepared or raw GSM8K) or generated problems, optionally limited."""
    ev = grid.eval
    if ev.get("test_file"):
        from step_jepa.data.load import load_records

        records, _ = load_records(ev["test_file"], purpose="test")
    else:
        from step_jepa.data.synthetic import generate_problems

        records = generate_problems(int(ev["generate"]), seed=int(ev.get("seed", DEFAULT_EVAL_SEED)))
    if ev.get("limit") is not None:
        records = records[: int(ev["limit"])]
    if not records:
        raise ValueError("the evaluation set is empty")
    return list(records)


def _eval_settings(grid: Grid) -> dict[str, Any]:
    """Evaluation settings as recorded in result.json (the system prompt defaults to training's)."""
    ev = dict(grid.eval)
    ev.setdefault("system_prompt", grid.base.get("system_prompt"))
    if ev.get("generate"):
        ev.setdefault("seed", DEFAULT_EVAL_SEED)
    return ev


def evaluate_run(grid: Grid, final_dir: Path, out_dir: Path, records: list[dict]) -> dict[str, Any]:
    """Load the trained model (full or LoRA adapter dir) and evaluate it with the grid's settings."""
    import torch

    ev = _eval_settings(grid)
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
    rec_train, rec_eval = result.get("train_config", {}), result.get("eval", {})
    now_train = config_dict(cfg)
    diff = sorted(k for k in set(rec_train) | set(now_train) if rec_train.get(k) != now_train.get(k))
    ediff = sorted(k for k in (set(rec_eval) | set(ev)) - EXTRA_EVAL_KEYS if rec_eval.get(k) != ev.get(k))
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

    rec = yaml.safe_load(saved.read_text()) or {}
    now = config_dict(cfg)
    diff = sorted(k for k in set(rec) | set(now) if rec.get(k) != now.get(k))
    if diff:
        raise ValueError(f"{rdir} was trained with other settings ({diff}); delete it to redo the run")


def run_one(grid: Grid, name: str, seed: int, records: list[dict]) -> dict[str, Any]:
    """Train (unless already trained) and evaluate one config × seed; write result.json last."""
    from step_jepa.training.trainer import run_train

    cfg = train_config(grid, name, seed)
    rdir = run_dir(grid.output_dir, name, seed)
    ev = _eval_settings(grid)
    state = run_state(rdir)
    if state == "done":
        result = json.loads((rdir / RESULT).read_text())
        _check_recorded(result, cfg, ev, rdir)
        log(f"{name} seed {seed}: skipped, already finished ({rdir / RESULT})")
        return result
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
        "eval_summary": {k: v for k, v in summary.items() if k not in ("versions", "also")},
        "also_protocols": summary.get("also", {}),
    }
    _write_atomic(rdir / RESULT, json.dumps(result, indent=1, default=str))
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


def run_grid(grid: Grid, only: list[str] | None = None, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Run the selected config × seed cells in grid order; returns their results (new or skipped)."""
    names = select_cells(list(grid.configs), only, "config")
    chosen = select_cells(grid.seeds, seeds, "seed")
    grid.output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(grid.output_dir / GRID_COPY, json.dumps(grid.to_dict(), indent=1, default=str))
    records = eval_records(grid)
    results = []
    for name in names:
        for s in chosen:
            results.append(run_one(grid, name, s, records))
    return results


def finished_result(grid: Grid, name: str, seed: int) -> dict[str, Any] | None:
    """The cell's result when it is finished (checked against the grid's settings), else None."""
    rdir = run_dir(grid.output_dir, name, seed)
    if run_state(rdir) != "done":
        return None
    result = json.loads((rdir / RESULT).read_text())
    _check_recorded(result, train_config(grid, name, seed), _eval_settings(grid), rdir)
    return result


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


@dataclass
class ParallelOutcome:
    """What `run_cells_parallel` did: cells skipped as finished, run to the end, and failed (with logs)."""

    skipped: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int, int, Path]] = field(default_factory=list)  # name, seed, exit code, log


def run_cells_parallel(
    grid: Grid,
    jobs: int,
    cell_command: Callable[[str, int], list[str]],
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    gpus: list[str] | None = None,
    poll_seconds: float = 0.5,
) -> ParallelOutcome:
    """Run the selected unfinished cells as child processes, `jobs` at a time.

    `cell_command(name, seed)` is the argv of a process that runs that one cell (the CLI passes
    `step-jepa compare --only NAME --seeds S --no_report`). Finished cells are skipped here, after
    their recorded settings are checked; everything else (evaluate only, redo a half-finished run)
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
    _write_atomic(grid.output_dir / GRID_COPY, json.dumps(grid.to_dict(), indent=1, default=str))
    outcome = ParallelOutcome()
    todo: list[tuple[str, int]] = []
    # Seed by seed (sft 0, jepa 0, sft 1, ...): a grid stopped part-way leaves whole paired seeds,
    # which the paired statistics can use, rather than all seeds of one config and none of another.
    for s in chosen:
        for name in names:
            if finished_result(grid, name, s) is not None:  # raises on a result of other settings
                log(f"{name} seed {s}: skipped, already finished ({run_dir(grid.output_dir, name, s) / RESULT})")
                outcome.skipped.append((name, s))
            else:
                todo.append((name, s))
    total = len(todo) + len(outcome.skipped)
    where = f"one per GPU of {', '.join(devices)} (least busy first)" if devices else "sharing the visible device"
    log(f"{len(todo)} cell(s) to run, {jobs} at a time, {where}; {len(outcome.skipped)} already finished")
    start = time.monotonic()
    # cell -> (process, its log, its device, where this attempt's output begins in the log)
    running: dict[tuple[str, int], tuple[subprocess.Popen, Any, str | None, int]] = {}
    shared: set[tuple[str, int]] = set()  # running cells that had company on their device
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
        busy = [d for _, _, d, _ in running.values()]
        return any(busy.count(d) == 0 for d in devices) if devices else not running

    def mark_shared() -> None:
        busy = [d for _, _, d, _ in running.values()]
        shared.update(c for c, (_, _, d, _) in running.items() if busy.count(d) > 1)

    def launch(name: str, s: int) -> None:
        rdir = run_dir(grid.output_dir, name, s)
        rdir.mkdir(parents=True, exist_ok=True)
        busy = [d for _, _, d, _ in running.values()]
        device = min(devices, key=busy.count) if devices else None
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
        running[(name, s)] = (proc, out, device, out.tell())
        mark_shared()
        log(f"{name} seed {s}: started{f' on GPU {device}' if device is not None else ''}, log {rdir / CELL_LOG}")

    try:
        while todo or running:
            while todo and len(running) < jobs and free_device(todo[0]):
                launch(*todo.pop(0))
            time.sleep(poll_seconds)
            for (name, s), (proc, out, _, log_start) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                out.close()
                del running[(name, s)]
                path = run_dir(grid.output_dir, name, s) / CELL_LOG
                if rc == 0 and run_state(run_dir(grid.output_dir, name, s)) == "done":
                    outcome.finished.append((name, s))
                    log(f"{name} seed {s}: finished")
                elif (name, s) in shared and (name, s) not in alone and _ran_out_of_memory(path, log_start):
                    alone.add((name, s))
                    todo.append((name, s))
                    log(f"{name} seed {s}: out of GPU memory beside other cells; retried alone, after the queue")
                else:
                    rc = rc or 1  # exit 0 without a result is a failure too
                    outcome.failed.append((name, s, rc, path))
                    log(f"{name} seed {s}: FAILED (exit {rc}): {_last_line(path)}; log {path}")
                progress()
    except BaseException:  # Ctrl-C or an error here: do not leave children training on their own
        for proc, _out, _, _ in running.values():
            proc.terminate()
        for proc, out, _, _ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            out.close()
        raise
    if outcome.failed:
        log(
            f"{len(outcome.failed)} cell(s) failed: "
            + "; ".join(f"{n} seed {s} (exit {rc}, log {p})" for n, s, rc, p in outcome.failed)
        )
    return outcome


def select_cells(available: list, wanted: list | None, what: str) -> list:
    if not wanted:
        return list(available)
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ValueError(f"unknown {what}(s) {missing}; the grid has {available}")
    return [a for a in available if a in wanted]
