"""Choose one config from dev grids by a rule fixed before the runs, and hand it to a test grid.

Selection then test only protects against picking the luckiest config if the rule is decided
before the dev numbers exist and applied mechanically afterwards. The rule lives here, so a grid
file written beforehand plus `step-jepa compare --select` reproduce the choice exactly:

* Each testbed is the output dir of one finished dev grid (e.g. the chain task's dev problems and
  GSM8K's dev split). On a testbed a candidate's score is its paired difference to the baseline,
  in accuracy points, averaged over the seeds both ran (same seed = same data and data order).
* A candidate's score is the mean of its testbed scores; the highest wins, whatever its sign (a
  candidate that loses to the baseline everywhere is still tested: a null result is a result).
* Ties (equal to 1e-9 points) go to the config listed first in the first testbed's grid.
* Every candidate must have finished the baseline's seeds on every testbed under one evaluation
  protocol: a rule applied to a partial grid would be another rule.

The result (`chosen.json`) names the winner and its overrides; a test grid takes them with
``configs: {NAME: {from_selection: PATH}}`` (see :func:`resolve_selection`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from step_jepa.analysis.comparable import protocol_check
from step_jepa.analysis.runs import collect_results, grid_order, log

RULE = (
    "highest mean over testbeds of the paired accuracy difference to the baseline (points, mean over "
    "the baseline's seeds); ties to the config listed first in the first testbed's grid"
)
TIE_POINTS = 1e-9


def _config_order(testbed: Path, results: list[dict[str, Any]]) -> list[str]:
    """The grid's config order (its compare_grid.json), then any other config by name."""
    names = sorted({str(r["config"]) for r in results})
    listed = grid_order(testbed)
    return [n for n in listed if n in names] + [n for n in names if n not in listed]


def testbed_scores(
    testbed: Path, results: list[dict[str, Any]], baseline: str, candidates: list[str]
) -> dict[str, dict[str, Any]]:
    """Per candidate on one testbed (its finished runs): the paired difference to the baseline
    (points) and its parts."""
    if not results:
        raise ValueError(f"{testbed}: no finished runs (*/seed*/result.json)")
    protocol_check(results)  # raises on runs scored under different protocols
    acc: dict[str, dict[int, float]] = {}
    for r in results:
        acc.setdefault(str(r["config"]), {})[int(r["seed"])] = float(r["accuracy"])
    if baseline not in acc:
        raise ValueError(f"{testbed}: the baseline {baseline!r} has no finished run (configs: {sorted(acc)})")
    seeds = sorted(acc[baseline])
    out = {}
    for name in candidates:
        missing = sorted(set(seeds) - set(acc.get(name, {})))
        if missing:
            raise ValueError(
                f"{testbed}: {name!r} has not finished seed(s) {missing} that {baseline!r} ran; "
                "finish the grid (or remove the seeds from both) before selecting"
            )
        per_seed = {s: 100 * (acc[name][s] - acc[baseline][s]) for s in seeds}
        out[name] = {
            "delta_points": sum(per_seed.values()) / len(per_seed),
            "per_seed_delta_points": per_seed,
            "accuracy": {s: acc[name][s] for s in seeds},
            "baseline_accuracy": {s: acc[baseline][s] for s in seeds},
        }
    return out


def _overrides(results: dict[Path, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    """The candidate's overrides, which must be the same on every testbed (else it is not one config)."""
    seen = []
    for t, runs in results.items():
        for r in runs:
            if r["config"] == name:
                seen.append((t, r.get("overrides", {})))
                break
    first = seen[0][1]
    for t, o in seen[1:]:
        if o != first:
            raise ValueError(f"{name!r} has other overrides on {t} ({o}) than on {seen[0][0]} ({first})")
    return dict(first)


def select(testbeds: list[str | Path], baseline: str, candidates: list[str] | None = None) -> dict[str, Any]:
    """Apply the rule (module docstring) to finished dev grids; returns what chosen.json holds."""
    dirs = [Path(t) for t in testbeds]
    if not dirs:
        raise ValueError("give at least one testbed (a dev grid's output dir)")
    results = {t: collect_results(t) for t in dirs}  # read once: scores and overrides come from them
    order = [n for n in _config_order(dirs[0], results[dirs[0]]) if n != baseline]
    names = order if candidates is None else [n for n in order if n in candidates]
    unknown = sorted(set(candidates or []) - set(order))
    if unknown:
        raise ValueError(f"{dirs[0]}: unknown candidate(s) {unknown} (configs: {order})")
    if not names:
        raise ValueError(f"{dirs[0]}: no candidate besides the baseline {baseline!r}")
    per_testbed = {str(t): testbed_scores(t, results[t], baseline, names) for t in dirs}
    score = {n: sum(per_testbed[str(t)][n]["delta_points"] for t in dirs) / len(dirs) for n in names}
    best = max(score.values())
    winner = next(n for n in names if score[n] >= best - TIE_POINTS)  # first listed among the tied
    log(f"selected {winner!r}: mean paired Δ {score[winner]:+.2f} points over {len(dirs)} testbed(s)")
    return {
        "winner": winner,
        "overrides": _overrides(results, winner),
        "baseline": baseline,
        "rule": RULE,
        "scores": score,
        "candidates": names,
        "testbeds": per_testbed,
    }


def write_selection(path: str | Path, chosen: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(chosen, indent=1, default=str) + "\n")
    return out


def resolve_selection(where: str, spec: dict[str, Any], grid_dir: Path) -> dict[str, Any]:
    """A test grid's ``{from_selection: PATH}`` config → the winner's overrides.

    PATH is relative to the grid file's directory unless absolute or found from the working
    directory. Nothing else may sit beside ``from_selection``: the test must run what dev chose.
    """
    extra = sorted(set(spec) - {"from_selection"})
    if extra:
        raise ValueError(f"{where}: from_selection takes no other keys (found {', '.join(extra)})")
    raw = Path(str(spec["from_selection"]))
    path = raw if raw.is_absolute() or raw.exists() else grid_dir / raw
    if not path.exists():
        raise ValueError(
            f"{where}: from_selection {raw} does not exist yet: run the dev grids, then "
            f"step-jepa compare --select DEV_DIR [DEV_DIR ...] --baseline NAME --selection_out {raw}"
        )
    chosen = json.loads(path.read_text())
    if not isinstance(chosen.get("overrides"), dict) or "winner" not in chosen:
        raise ValueError(f"{where}: {path} is not a selection (no winner / overrides)")
    return dict(chosen["overrides"])
