"""A `step-jepa compare` grid file: what it may say, and the training and evaluation settings of
each of its cells.

A grid file (YAML) has five keys::

    base:        StepJEPAConfig fields shared by every run (model, data, steps, lr, batch size, ...)
    eval:        test_file | generate (+ seed), max_new_tokens, batch_size, limit, lenient, dtype (default fp32),
                 system_prompt, cuda_graphs (default: on for CUDA), also_protocols + fewshot_file
    configs:     name -> overrides of the JEPA options only (lbd, predictors, pairs, jepa_loss, ...),
                 or {from_selection: chosen.json}: the winner of `step-jepa compare --select`
    seeds:       [0, 1, 2]
    output_dir:  where <name>/seed<s>/ run directories and the table/plot go
    keep_checkpoints: (optional, default true) false deletes checkpoint-*/ of finished runs

Why the overrides are restricted to the JEPA options: the point of the grid is to attribute an
accuracy difference to the JEPA term. Every run of one seed therefore shares the data, the data
order (the Trainer's sampler is seeded by `seed`, and the model-side randomness of the JEPA runs —
predictor-row initialisation, pair sampling — does not touch it; `tests/analysis/test_compare.py` checks
this), the optimiser and the schedule. `check_same_except_jepa` asserts it before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from step_jepa.analysis.comparable import EXTRA_EVAL_KEYS
from step_jepa.analysis.runs import GRID_COPY, run_dir
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
    """Read and validate a grid YAML; unknown keys anywhere are errors (typos must not pass silently).

    The copy a run writes into its output directory (`compare_grid.json`, the grid as resolved) loads
    too, keeping the file it came from: `compare --jobs` starts every cell from it, so that an edit
    of the grid file while cells still start cannot give the later ones other settings."""
    raw = load_yaml(path)
    known = {"base", "eval", "configs", "seeds", "output_dir", "keep_checkpoints"}
    if Path(path).name == GRID_COPY:
        known |= {"source", "selected_from"}
    unknown = sorted(set(raw) - known)
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
        source=str(raw.get("source", path)),
        keep_checkpoints=bool(raw.get("keep_checkpoints", True)),
        selected_from={**selected_from, **(raw.get("selected_from") or {})},
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


def eval_settings(grid: Grid) -> dict[str, Any]:
    """Evaluation settings as recorded in result.json (the system prompt defaults to training's)."""
    ev = dict(grid.eval)
    ev.setdefault("system_prompt", grid.base.get("system_prompt"))
    if ev.get("generate"):
        ev.setdefault("seed", DEFAULT_EVAL_SEED)
    return ev


def select_cells(available: list, wanted: list | None, what: str) -> list:
    if not wanted:
        return list(available)
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ValueError(f"unknown {what}(s) {missing}; the grid has {available}")
    return [a for a in available if a in wanted]
