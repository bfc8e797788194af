"""`step-jepa compare`: train and evaluate a grid of configs × seeds, then tabulate and plot accuracy.

A grid file (YAML) has five keys::

    base:        TrainConfig fields shared by every run (model, data, steps, lr, batch size, ...)
    eval:        test_file | generate (+ seed), max_new_tokens, batch_size, limit, lenient, dtype, system_prompt
    configs:     name -> overrides of the JEPA options only (lbd, predictors, pairs, jepa_loss, ...)
    seeds:       [0, 1, 2]
    output_dir:  where <name>/seed<s>/ run directories and the table/plot go
    keep_checkpoints: (optional, default true) false deletes checkpoint-*/ of finished runs

Why the overrides are restricted to the JEPA options: the point of the grid is to attribute an
accuracy difference to the JEPA term. Every run of one seed therefore shares the data, the data
order (the Trainer's sampler is seeded by `seed`, and the model-side randomness of the JEPA runs —
predictor-row initialisation, pair sampling — does not touch it; `tests/test_compare.py` checks
this), the optimiser and the schedule. `check_same_except_jepa` asserts it before anything runs.

Resumability: a run is finished when its `result.json` exists (written last, atomically), and is
skipped. A run whose training finished (`train_summary.json` + `final/`) but whose evaluation did
not is only evaluated. Anything else in a run directory is a half-finished run and is redone from
scratch. A finished result whose recorded train/eval settings differ from the grid's is an error:
mixing results of two different grids in one table is the mistake this guards against.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig, load_yaml

# TrainConfig fields a grid config may override. Everything else must live in `base:`.
# The JEPA options: every `jepa_*` field plus the ones named without the prefix (taken from
# TrainConfig itself, so options added to train are accepted without editing this file).
JEPA_KEYS = frozenset(
    {f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith("jepa_")}
    | ({"lbd", "gamma", "predictors", "pairs", "vicreg_weight", "ema_decay", "lbd_schedule", "lbd_warmup_steps",
        "stp_lbd", "stp_positions"}
       & {f.name for f in dataclasses.fields(TrainConfig)}))
# Set by compare for every run; a grid that sets them would break the layout or the seeding.
RESERVED_KEYS = frozenset({"seed", "output_dir", "overwrite_output_dir", "resume"})
EVAL_KEYS = frozenset({"test_file", "generate", "seed", "max_new_tokens", "batch_size", "max_batch_tokens",
                       "limit", "lenient", "dtype", "system_prompt"})
DEFAULT_EVAL_SEED = 1000  # far from usual training seeds, so generated eval problems are not training ones
RESULT = "result.json"
TABLE = "compare_table.md"
RESULTS = "compare_results.json"
PLOT = "compare.png"
GRID_COPY = "compare_grid.json"


def log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


# --------------------------------------------------------------------------- grid


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

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "eval": self.eval, "configs": self.configs, "seeds": self.seeds,
                "output_dir": str(self.output_dir), "source": self.source, "keep_checkpoints": self.keep_checkpoints}


def load_grid(path: str | Path, output_dir: str | None = None) -> Grid:
    """Read and validate a grid YAML; unknown keys anywhere are errors (typos must not pass silently)."""
    raw = load_yaml(path)
    unknown = sorted(set(raw) - {"base", "eval", "configs", "seeds", "output_dir", "keep_checkpoints"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s): {', '.join(unknown)}")
    out = output_dir or raw.get("output_dir")
    if not out:
        raise ValueError(f"{path}: 'output_dir' is required (or pass --output_dir)")
    grid = Grid(base=dict(raw.get("base") or {}), eval=dict(raw.get("eval") or {}),
                configs={str(k): dict(v or {}) for k, v in (raw.get("configs") or {}).items()},
                seeds=[int(s) for s in (raw.get("seeds") or [0])], output_dir=Path(out), source=str(path),
                keep_checkpoints=bool(raw.get("keep_checkpoints", True)))
    validate_grid(grid)
    return grid


def validate_grid(grid: Grid) -> None:
    """Check keys and values up front, so that a typo fails before hours of training, not after."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    where = grid.source or "grid"
    bad = sorted(set(grid.base) - names)
    if bad:
        raise ValueError(f"{where}: base: unknown TrainConfig field(s): {', '.join(bad)}")
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
                f"({', '.join(sorted(JEPA_KEYS))}); move {', '.join(wrong)} to base: or use another grid")
    if len(set(grid.seeds)) != len(grid.seeds):
        raise ValueError(f"{where}: duplicate seeds {grid.seeds}")
    _validate_eval(grid, where)
    for name in grid.configs:  # builds and validates every TrainConfig
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
    if ev.get("dtype", "auto") not in _DTYPES:
        raise ValueError(f"{where}: eval.dtype must be one of {', '.join(_DTYPES)}")
    # The same ranges as `step-jepa eval`: found now, not after the grid's first training run.
    small = [k for k in ("generate", "max_new_tokens", "batch_size", "max_batch_tokens", "limit")
             if ev.get(k) is not None and not (isinstance(ev[k], int) and ev[k] >= 1)]
    if small:
        raise ValueError(f"{where}: eval: {', '.join(small)} must be whole numbers >= 1")
    if ev.get("generate") and not grid.base.get("train_file"):
        eval_seed = int(ev.get("seed", DEFAULT_EVAL_SEED))
        if eval_seed in grid.seeds:
            raise ValueError(
                f"{where}: eval.seed {eval_seed} is also a training seed and training uses the generator "
                f"(no base.train_file): the test problems would be training problems. Pick another eval.seed.")


def train_config(grid: Grid, name: str, seed: int) -> TrainConfig:
    """The TrainConfig of one run: base, then the config's JEPA overrides, then seed and directory."""
    values = {**grid.base, **grid.configs[name], "seed": seed,
              "output_dir": str(run_dir(grid.output_dir, name, seed)), "overwrite_output_dir": True}
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def shared_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The part of a TrainConfig that must be identical across the configs of one seed."""
    return {k: v for k, v in cfg.to_dict().items() if k not in JEPA_KEYS | {"output_dir"}}


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


def run_dir(output_dir: Path, name: str, seed: int) -> Path:
    return Path(output_dir) / name / f"seed{seed}"


def fingerprint(obj: Any) -> str:
    """Short stable hash of JSON-able settings, to notice a grid edited between resumed invocations."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- one run


_DTYPES = {"auto": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def eval_records(grid: Grid) -> list[dict]:
    """The evaluation set: a file (prepared or raw GSM8K) or generated problems, optionally limited."""
    ev = grid.eval
    if ev.get("test_file"):
        from .data import load_records

        records, _ = load_records(ev["test_file"], purpose="test")
    else:
        from .generator import generate_problems

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

    from .evaluate import evaluate
    from .modeling import load_for_inference

    ev = _eval_settings(grid)
    dtype_name = _DTYPES[ev.get("dtype", "auto")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_for_inference(str(final_dir), dtype=getattr(torch, dtype_name) if dtype_name else None,
                                    device=device)
    try:
        return evaluate(model, tok, records, out_dir=out_dir, max_new_tokens=int(ev.get("max_new_tokens", 512)),
                        batch_size=ev.get("batch_size"), max_batch_tokens=ev.get("max_batch_tokens"),
                        system_prompt=ev.get("system_prompt"), lenient=bool(ev.get("lenient", False)),
                        progress=False, model_name=str(final_dir))
    finally:
        del model
        _free_memory()


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
    """'done' (result.json), 'trained' (final model, no result), 'partial' (anything else) or 'new'."""
    if (rdir / RESULT).exists():
        return "done"
    if (rdir / "train_summary.json").exists() and (rdir / "final").is_dir():
        return "trained"
    if rdir.exists() and any(rdir.iterdir()):
        return "partial"
    return "new"


def _check_recorded(result: dict, cfg: TrainConfig, ev: dict, rdir: Path) -> None:
    """A skipped result must come from the same settings as the grid now asks for."""
    rec_train, rec_eval = result.get("train_config", {}), result.get("eval", {})
    now_train = cfg.to_dict()
    diff = sorted(k for k in set(rec_train) | set(now_train) if rec_train.get(k) != now_train.get(k))
    ediff = sorted(k for k in set(rec_eval) | set(ev) if rec_eval.get(k) != ev.get(k))
    if diff or ediff:
        raise ValueError(
            f"{rdir / RESULT} was produced with other settings (train: {diff or 'same'}, eval: {ediff or 'same'}). "
            f"Delete {rdir} to redo it, or use another output_dir.")


def _check_trained(cfg: TrainConfig, rdir: Path) -> None:
    """A finished training without result is reused only if it was trained with today's settings."""
    saved = rdir / "step_jepa_config.yaml"
    if not saved.exists():
        return
    import yaml

    rec = yaml.safe_load(saved.read_text()) or {}
    now = cfg.to_dict()
    diff = sorted(k for k in set(rec) | set(now) if rec.get(k) != now.get(k))
    if diff:
        raise ValueError(f"{rdir} was trained with other settings ({diff}); delete it to redo the run")


def run_one(grid: Grid, name: str, seed: int, records: list[dict]) -> dict[str, Any]:
    """Train (unless already trained) and evaluate one config × seed; write result.json last."""
    from .trainer import run_train

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
            shutil.rmtree(rdir)
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
        "config": name, "seed": seed, "accuracy": summary["accuracy"], "correct": summary["correct"],
        "n": summary["n"], "no_answer_rate": summary.get("no_answer_rate"),
        "train_seconds": round(train_seconds, 2), "eval_seconds": round(eval_seconds, 2),
        "overrides": grid.configs[name], "shared_fingerprint": fingerprint(shared_settings(cfg)),
        "train_config": cfg.to_dict(), "eval": ev, "train_summary": train_summary,
        "eval_summary": {k: v for k, v in summary.items() if k != "versions"},
    }
    _write_atomic(rdir / RESULT, json.dumps(result, indent=1, default=str))
    if not grid.keep_checkpoints:
        # Checkpoints only serve to resume training, which is over; a grid of full fine-tunes
        # would otherwise keep weights + optimizer state of every run on disk.
        for ckpt in rdir.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
    log(f"{name} seed {seed}: accuracy {result['accuracy']:.4f} ({result['correct']}/{result['n']}), "
        f"train {train_seconds:.1f} s, eval {eval_seconds:.1f} s")
    return result


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so a crash never leaves a truncated result/table behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_grid(grid: Grid, only: list[str] | None = None, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Run the selected config × seed cells in grid order; returns their results (new or skipped)."""
    names = _select(list(grid.configs), only, "config")
    chosen = _select(grid.seeds, seeds, "seed")
    grid.output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(grid.output_dir / GRID_COPY, json.dumps(grid.to_dict(), indent=1, default=str))
    records = eval_records(grid)
    results = []
    for name in names:
        for s in chosen:
            results.append(run_one(grid, name, s, records))
    return results


def _select(available: list, wanted: list | None, what: str) -> list:
    if not wanted:
        return list(available)
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ValueError(f"unknown {what}(s) {missing}; the grid has {available}")
    return [a for a in available if a in wanted]


# --------------------------------------------------------------------------- paired statistics

PREDICTIONS = "predictions.jsonl"  # written by evaluate.evaluate into <run>/eval/
EXACT_BELOW = 50  # McNemar: exact binomial when b + c < this, else chi-square with continuity correction
CI_LEVEL = 0.95


def mcnemar(b: int, c: int, exact_below: int = EXACT_BELOW) -> dict[str, Any]:
    """Two-sided McNemar test on the discordant counts b (baseline right, candidate wrong) and c.

    Under H0 a discordant problem is equally likely to go either way, so b ~ Binomial(b + c, 1/2).
    The exact binomial p-value is used while b + c is small, where the chi-square approximation is
    poor; above that, chi-square (1 df) with Edwards' continuity correction, whose survival function
    is erfc(sqrt(x / 2)) — no scipy needed.
    """
    n = b + c
    if n == 0:
        return {"method": "none (no discordant pairs)", "statistic": None, "p_value": 1.0}
    if n < exact_below:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
        return {"method": "exact binomial", "statistic": None, "p_value": min(1.0, 2 * tail / 2 ** n)}
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return {"method": "chi-square, continuity corrected", "statistic": stat, "p_value": math.erfc(math.sqrt(stat / 2))}


def align_runs(baseline_runs: dict[int, dict[str, bool]], candidate_runs: dict[int, dict[str, bool]]
               ) -> tuple[list[int], list[str], dict[str, Any]]:
    """Seeds present in both, problem ids present in both for every one of those seeds.

    One problem set shared by all seeds is what lets the bootstrap resample problems once for every
    seed. Whatever does not match is counted in the returned `alignment` (never dropped silently).
    """
    seeds = sorted(set(baseline_runs) & set(candidate_runs))
    if not seeds:
        raise ValueError(f"no seed in common (baseline {sorted(baseline_runs)}, candidate {sorted(candidate_runs)})")
    everything = set().union(*(set(baseline_runs[s]) | set(candidate_runs[s]) for s in seeds))
    common = set.intersection(*(set(baseline_runs[s]) & set(candidate_runs[s]) for s in seeds))
    ids = sorted(common, key=str)
    dropped = sorted(everything - common, key=str)
    alignment = {
        "seeds_matched": seeds,
        "seeds_only_baseline": sorted(set(baseline_runs) - set(candidate_runs)),
        "seeds_only_candidate": sorted(set(candidate_runs) - set(baseline_runs)),
        "problems_matched": len(ids), "problems_dropped": len(dropped), "dropped_ids": [str(i) for i in dropped[:10]],
    }
    if not ids:
        raise ValueError(f"no problem id in common across seeds {seeds}")
    return seeds, ids, alignment


def bootstrap_ci(per_problem: np.ndarray, n_boot: int, seed: int, level: float = CI_LEVEL,
                 chunk: int = 1000) -> tuple[float, float]:
    """Percentile CI of the mean of `per_problem` (problem resampling), in the units given.

    Chunked so that 10k resamples of a 1.3k-problem test set do not hold a 10k × 1.3k index matrix.
    """
    rng = np.random.default_rng(seed)
    n = len(per_problem)
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(per_problem[idx].mean(axis=1))
    boot = np.concatenate(means)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_stats(baseline_runs: dict[int, dict[str, bool]], candidate_runs: dict[int, dict[str, bool]],
                 n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Per-problem paired comparison of two configs over seeds (candidate − baseline).

    Arguments map seed → {problem id → correct}. Returns the mean paired accuracy difference in
    points (averaged over seeds), a bootstrap 95 % CI that resamples *problems* — one resampled
    problem set applied to every seed, so each resampled problem keeps its baseline/candidate pair
    and its correlation across seeds (the test set, not the seed, is the dominant noise at a few
    seeds) — and McNemar's test pooled over seeds (b, c summed). Pooling treats the seed × problem
    pairs as independent although a problem tends to be hard in every seed, so with several seeds
    the McNemar p-value is somewhat optimistic; the problem-level CI is the one to read first.
    """
    seeds, ids, alignment = align_runs(baseline_runs, candidate_runs)
    base = np.array([[bool(baseline_runs[s][i]) for i in ids] for s in seeds])  # [S, N]
    cand = np.array([[bool(candidate_runs[s][i]) for i in ids] for s in seeds])
    diff = cand.astype(np.float64) - base.astype(np.float64)
    b, c = int((base & ~cand).sum()), int((~base & cand).sum())
    lo, hi = bootstrap_ci(100 * diff.mean(axis=0), n_boot, seed)
    test = mcnemar(b, c)
    return {
        "n_seeds": len(seeds), "n_problems": len(ids),
        "delta_points": float(100 * diff.mean()),
        "per_seed_delta_points": {int(s): float(100 * d) for s, d in zip(seeds, diff.mean(axis=1))},
        "ci95_points": [lo, hi], "n_boot": n_boot, "bootstrap_seed": seed,
        "b": b, "c": c, "mcnemar": test, "mcnemar_p": test["p_value"],
        "alignment": alignment,
    }


def load_correct(path: str | Path) -> dict[str, bool]:
    """{problem id → correct} of one predictions.jsonl. A missing id falls back to the line number
    (every run of a grid evaluates the same records in the same order); a duplicate id is an error,
    because aligning by id would silently pair the wrong problems."""
    out: dict[str, bool] = {}
    for k, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        key = str(row["id"]) if row.get("id") is not None else f"line{k}"
        if key in out:
            raise ValueError(f"{path}: duplicate problem id {key!r}")
        out[key] = bool(row["correct"])
    return out


def load_run_predictions(output_dir: str | Path, results: list[dict[str, Any]]
                         ) -> tuple[dict[str, dict[int, dict[str, bool]]], dict[str, str]]:
    """config → seed → {id → correct} for every finished run that has <run>/eval/predictions.jsonl,
    and config → error for configs with an unreadable one (reported as n/a, not a failed report)."""
    out: dict[str, dict[int, dict[str, bool]]] = {}
    errors: dict[str, str] = {}
    for r in results:
        path = run_dir(Path(output_dir), r["config"], int(r["seed"])) / "eval" / PREDICTIONS
        if not path.exists():
            continue
        try:
            out.setdefault(r["config"], {})[int(r["seed"])] = load_correct(path)
        except (ValueError, KeyError) as e:  # KeyError: a row without "correct"
            errors[r["config"]] = f"{type(e).__name__}: {e}"
    return out, errors


def paired_vs_baseline(output_dir: str | Path, rows: list[dict[str, Any]], results: list[dict[str, Any]],
                       n_boot: int = 10000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired stats of every config against the first (baseline) row; a config that cannot be
    paired gets {"status": "n/a (...)"} instead of failing the whole report."""
    if not rows:
        return {}
    preds, errors = load_run_predictions(output_dir, results)
    base = rows[0]["config"]
    out: dict[str, dict[str, Any]] = {}
    for row in rows[1:]:
        name = row["config"]
        bad = [f"{n}: {errors[n]}" for n in (base, name) if n in errors]
        if bad:
            out[name] = {"status": f"n/a (bad predictions.jsonl, {'; '.join(bad)})"}
            log(f"paired {name} vs {base}: {out[name]['status']}")
            continue
        if not preds.get(base) or not preds.get(name):
            out[name] = {"status": "n/a (no predictions)"}
            continue
        try:
            stats = paired_stats(preds[base], preds[name], n_boot=n_boot, seed=seed)
        except ValueError as e:
            out[name] = {"status": f"n/a ({e})"}
            continue
        stats["runs_without_predictions"] = sorted(set(row["seeds"]) - set(preds[name]))
        stats["status"] = "ok"
        out[name] = stats
        _log_alignment(name, base, stats)
    return out


def _log_alignment(name: str, base: str, stats: dict[str, Any]) -> None:
    """Say what could not be paired; the table carries the same note."""
    note = alignment_note(stats)
    if note:
        log(f"paired {name} vs {base}: {note}")


def alignment_note(stats: dict[str, Any]) -> str:
    """Human-readable list of what was dropped before pairing ('' when everything matched)."""
    a = stats["alignment"]
    parts = []
    if a["seeds_only_baseline"] or a["seeds_only_candidate"]:
        parts.append(f"unpaired seeds dropped (baseline only {a['seeds_only_baseline']}, "
                     f"candidate only {a['seeds_only_candidate']})")
    if a["problems_dropped"]:
        parts.append(f"{a['problems_dropped']} problem id(s) not in every run dropped (e.g. {a['dropped_ids'][:3]})")
    if stats.get("runs_without_predictions"):
        parts.append(f"seeds without predictions.jsonl: {stats['runs_without_predictions']}")
    return "; ".join(parts)


def format_paired(paired: dict[str, dict[str, Any]], baseline: str) -> str:
    """Markdown section: Δ points [95 % CI], McNemar p and b/c per config against the baseline."""
    if not paired:
        return ""
    lines = [f"\n## Paired vs {baseline} (per problem)\n",
             "| config | Δ points [95% CI] | McNemar p | b / c | seeds × problems | note |",
             "|---|---|---|---|---|---|"]
    for name, st in paired.items():
        if st.get("status") != "ok":
            lines.append(f"| {name} | {st['status']} | — | — | — | |")
            continue
        lo, hi = st["ci95_points"]
        lines.append(f"| {name} | {st['delta_points']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {_fmt_p(st['mcnemar_p'])} "
                     f"({st['mcnemar']['method']}) | {st['b']} / {st['c']} | {st['n_seeds']} × {st['n_problems']} | "
                     f"{alignment_note(st)} |")
    lines.append("")
    lines.append(f"Δ: candidate − {baseline} accuracy in points, averaged over the paired seeds. CI: percentile "
                 "bootstrap over problems (one resampled problem set for all seeds). McNemar pooled over seeds: "
                 f"b = {baseline} right & candidate wrong, c = the reverse; exact binomial when b + c < "
                 f"{EXACT_BELOW}, else chi-square with continuity correction.")
    return "\n".join(lines) + "\n"


def _fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


# --------------------------------------------------------------------------- collapse diagnostics

# metrics.jsonl keys (see trainer/objective) averaged over the last logged steps of each run.
DIAG_KEYS = ("lm_loss", "jepa_loss", "view1_pairwise_cos", "view2_pairwise_cos", "jepa_retrieval_acc", "jepa_pairs")
DIAG_LAST = 3


def run_diagnostics(metrics_path: Path, last: int = DIAG_LAST) -> dict[str, float] | None:
    """Mean of each diagnostic over the last ``last`` logged steps that have it (one step is noisy)."""
    if not metrics_path.exists():
        return None
    rows = []
    for line in metrics_path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # blank, or the half-written last line of a killed run
            continue
    out = {}
    for key in DIAG_KEYS:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))][-last:]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out or None


def collapse_table(output_dir: str | Path, rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """Markdown section: per config, the end-of-training JEPA diagnostics averaged over seeds.

    A JEPA loss near 0 with view pairwise cosine near 1 and retrieval near chance (1 / pairs in the
    batch) is a collapsed embedding; retrieval well above chance means view 1 still identifies its own
    next step among the batch's.
    """
    per_config: dict[str, list[dict[str, float]]] = {}
    for r in results:
        d = run_diagnostics(run_dir(Path(output_dir), r["config"], int(r["seed"])) / "metrics.jsonl")
        if d:
            per_config.setdefault(r["config"], []).append(d)
    if not any("jepa_loss" in d for ds in per_config.values() for d in ds):
        return ""
    lines = [f"\n## Collapse diagnostics (mean of the last {DIAG_LAST} logged steps, then over seeds)\n",
             "| config | lm_loss | jepa_loss | view-1 pairwise cos | view-2 pairwise cos | retrieval | chance |",
             "|---|---|---|---|---|---|---|"]

    def mean(ds: list[dict[str, float]], key: str) -> str:
        vals = [d[key] for d in ds if key in d]
        return f"{sum(vals) / len(vals):.4g}" if vals else "—"

    for row in rows:
        ds = per_config.get(row["config"], [])
        pairs = [d["jepa_pairs"] for d in ds if d.get("jepa_pairs")]
        chance = f"{len(pairs) / sum(pairs):.3g}" if pairs else "—"
        lines.append(f"| {row['config']} | {mean(ds, 'lm_loss')} | {mean(ds, 'jepa_loss')} | "
                     f"{mean(ds, 'view1_pairwise_cos')} | {mean(ds, 'view2_pairwise_cos')} | "
                     f"{mean(ds, 'jepa_retrieval_acc')} | {chance} |")
    lines.append("")
    lines.append("Retrieval: how often view 1 of a pair is closer to its own view 2 than to any other pair's in "
                 "the micro-batch; chance = 1 / pairs per micro-batch. A falling JEPA loss with retrieval at "
                 "chance is collapse.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- report


def collect_results(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished run under output_dir (<name>/seed<s>/result.json)."""
    out = []
    for path in sorted(Path(output_dir).glob(f"*/seed*/{RESULT}")):
        out.append(json.loads(path.read_text()))
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed, shown as such in the table)."""
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def aggregate(results: list[dict[str, Any]], order: list[str] | None = None) -> list[dict[str, Any]]:
    """Per config: accuracy mean ± std over seeds, and the paired (same-seed) difference to the baseline.

    The baseline is the first config of the grid (put SFT first). Seeds share data and data order, so
    the per-seed difference cancels part of the seed noise that the two std's alone would show.
    """
    by_name: dict[str, dict[int, dict]] = {}
    for r in results:
        by_name.setdefault(r["config"], {})[int(r["seed"])] = r
    names = [n for n in (order or []) if n in by_name] + sorted(n for n in by_name if n not in (order or []))
    base = by_name[names[0]] if names else {}
    rows = []
    for name in names:
        runs = by_name[name]
        seeds = sorted(runs)
        accs = [float(runs[s]["accuracy"]) for s in seeds]
        mean, std = _mean_std(accs)
        common = [s for s in seeds if s in base]
        deltas = [float(runs[s]["accuracy"]) - float(base[s]["accuracy"]) for s in common]
        dmean, dstd = _mean_std(deltas) if deltas and name != names[0] else (None, None)
        rows.append({
            "config": name, "n": len(seeds), "seeds": seeds, "accuracy": accs, "mean": mean, "std": std,
            "delta_vs_baseline": dmean, "delta_std": dstd, "baseline": names[0], "paired_seeds": common,
            "overrides": runs[seeds[0]].get("overrides", {}),
            "train_seconds": _mean_std([float(runs[s]["train_seconds"]) for s in seeds])[0],
            "eval_seconds": _mean_std([float(runs[s]["eval_seconds"]) for s in seeds])[0],
            "n_eval": runs[seeds[0]].get("n"),
        })
    return rows


def consistency_warnings(results: list[dict[str, Any]]) -> list[str]:
    """Runs of one seed whose shared (non-JEPA) settings or eval settings differ: not comparable."""
    warnings = []
    by_seed: dict[int, dict[str, set]] = {}
    for r in results:
        d = by_seed.setdefault(int(r["seed"]), {"train": set(), "eval": set()})
        d["train"].add(r.get("shared_fingerprint"))
        d["eval"].add(fingerprint(r.get("eval")))
    for s, d in sorted(by_seed.items()):
        if len(d["train"]) > 1:
            warnings.append(f"seed {s}: runs differ in non-JEPA training settings; they are not comparable")
        if len(d["eval"]) > 1:
            warnings.append(f"seed {s}: runs were evaluated with different settings")
    counts = {}
    for r in results:
        counts[r["config"]] = counts.get(r["config"], 0) + 1
    if len(set(counts.values())) > 1:
        warnings.append(f"unequal numbers of seeds per config: {counts}")
    return warnings


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def format_table(rows: list[dict[str, Any]], warnings: list[str]) -> str:
    """Markdown table: accuracy in percent, mean ± sample std over seeds, paired Δ to the baseline."""
    base = rows[0]["config"] if rows else ""
    lines = [
        f"| config | overrides | accuracy % (mean ± std) | n seeds | per seed | Δ vs {base} (paired) | train s | eval s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "—"
        per = " / ".join(f"s{s}: {_pct(a)}" for s, a in zip(r["seeds"], r["accuracy"]))
        delta = "—" if r["delta_vs_baseline"] is None else \
            f"{100 * r['delta_vs_baseline']:+.2f} ± {100 * r['delta_std']:.2f} (n={len(r['paired_seeds'])})"
        lines.append(f"| {r['config']} | {over} | {_pct(r['mean'])} ± {_pct(r['std'])} | {r['n']} | {per} | "
                     f"{delta} | {r['train_seconds']:.1f} | {r['eval_seconds']:.1f} |")
    n_eval = {r["n_eval"] for r in rows}
    lines.append("")
    lines.append(f"Accuracy on {', '.join(str(n) for n in sorted(x for x in n_eval if x is not None))} eval examples; "
                 "std is the sample std over seeds (0 with one seed). Δ is the mean ± std over seeds of the "
                 "same-seed difference (same data and data order).")
    for w in warnings:
        lines.append(f"\n**Warning:** {w}")
    return "\n".join(lines) + "\n"


def plot_compare(rows: list[dict[str, Any]], path: str | Path):
    """Bar per config (mean accuracy, std error bar) with each seed's accuracy as a dot; returns the Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 4.0))  # no pyplot: no global figure state
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    means = [100 * r["mean"] for r in rows]
    stds = [100 * r["std"] for r in rows]
    ax.bar(xs, means, yerr=stds, capsize=5, color="#4C72B0", alpha=0.8, ecolor="black", label="mean ± std")
    for x, r in zip(xs, rows):
        ax.scatter([x] * len(r["accuracy"]), [100 * a for a in r["accuracy"]], color="black", s=14, zorder=3)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{r['config']}\n(n={r['n']})" for r in rows], rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    # Two short lines: a one-line title was wider than a figure of two or three bars and got cut.
    ax.set_title("accuracy per config\nbars: mean ± std over seeds, dots: seeds", fontsize=10)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def build_report(output_dir: str | Path, order: list[str] | None = None) -> list[dict[str, Any]]:
    """Rebuild compare_table.md, compare_results.json and compare.png from the result.json files,
    plus per-problem paired stats of every config against the first from eval/predictions.jsonl."""
    out = Path(output_dir)
    results = collect_results(out)
    if not results:
        raise FileNotFoundError(f"no */seed*/{RESULT} under {out}")
    if order is None and (out / GRID_COPY).exists():
        order = list(json.loads((out / GRID_COPY).read_text()).get("configs", {}))
    rows = aggregate(results, order)
    warnings = consistency_warnings(results)
    paired = paired_vs_baseline(out, rows, results)
    for row in rows:  # None for the baseline itself
        row["paired"] = paired.get(row["config"])
    table = (format_table(rows, warnings) + format_paired(paired, rows[0]["config"])
             + collapse_table(out, rows, results))
    _write_atomic(out / TABLE, table)
    _write_atomic(out / RESULTS, json.dumps({"configs": rows, "warnings": warnings,
                                             "paired_baseline": rows[0]["config"], "runs": [
        {k: r[k] for k in ("config", "seed", "accuracy", "correct", "n", "train_seconds", "eval_seconds")}
        for r in results]}, indent=1))
    plot_compare(rows, out / PLOT)
    print(table, flush=True)
    log(f"wrote {out / TABLE}, {out / RESULTS}, {out / PLOT}")
    return rows


# --------------------------------------------------------------------------- CLI


def add_cli(subparsers: Any) -> None:
    """Register `step-jepa compare`."""
    p = subparsers.add_parser(
        "compare", help="train + evaluate a grid of configs × seeds and tabulate accuracy (mean ± std)",
        description="Train and evaluate every config × seed of a grid YAML (resumable), then write "
                    "compare_table.md, compare_results.json and compare.png. See docs/analysis.md.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="grid YAML (base, eval, configs, seeds, output_dir)")
    src.add_argument("--report", metavar="DIR", help="only rebuild table and plot from DIR/*/seed*/result.json")
    p.add_argument("--baseline", metavar="NAME",
                   help="with --report: the config the others are paired against (default: the grid's first, "
                        "or without a grid the first name in sorted order)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these configs (e.g. one per GPU job)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="run only these seeds")
    p.add_argument("--output_dir", help="override the grid's output_dir")
    p.add_argument("--dry_run", action="store_true", help="print what would run (and what is skipped) and stop")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from .deps import require_matplotlib

    if not args.dry_run:  # every other path ends in compare.png: fail now, not after training
        require_matplotlib("compare")
    if args.report:
        build_report(args.report, [args.baseline] if args.baseline else None)
        return 0
    grid = load_grid(args.config, args.output_dir)
    if args.dry_run:
        for name in _select(list(grid.configs), args.only, "config"):
            for s in _select(grid.seeds, args.seeds, "seed"):
                rdir = run_dir(grid.output_dir, name, s)
                log(f"{name} seed {s}: {run_state(rdir)} -> {rdir}")
        return 0
    run_grid(grid, args.only, args.seeds)
    build_report(grid.output_dir, list(grid.configs))
    return 0
