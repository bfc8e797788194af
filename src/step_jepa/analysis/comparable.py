"""Whether the runs of one table can be compared: the training settings each seed's runs share,
the evaluation protocol they were scored under, and the devices they ran on.

A paired difference means something only between runs that differ in the method alone, so the
report names every other difference it finds: a setting or protocol field that changes the score
(refused, or reported with a warning), or one that only changes the seconds (a warning).
"""

from __future__ import annotations

import json
from typing import Any

from step_jepa.analysis.runs import SHARING, fingerprint
from step_jepa.evaluation.evaluate import protocol_differences
from step_jepa.training.config import StepJEPAConfig
from step_jepa.training.options import field_default, plain

# Eval settings scored besides a grid's own protocol, from the same loaded model: they do not change
# a run's main score, so runs that differ only in them are comparable and a finished cell is not redone
# when they are added.
EXTRA_EVAL_KEYS = frozenset({"also_protocols", "fewshot_file"})


def scored_eval_settings(ev: dict[str, Any] | None) -> dict[str, Any]:
    """A grid's eval settings without the extra protocols: the ones that decide a run's main score."""
    return {k: v for k, v in (ev or {}).items() if k not in EXTRA_EVAL_KEYS}


def _unset(v: Any) -> Any:
    """One spelling for "not set": versions of the config wrote False, None or "" for it."""
    return None if v is None or v is False or v == "" or v == [] else v


def recorded_setting(config: dict[str, Any], key: str) -> Any:
    """A training setting as a run's saved config holds it. One it does not hold is the option's
    default: saved configs leave out TrainingArguments fields at their default, and a run made before
    an option existed does not record it (options are added with the default that keeps the earlier
    behaviour). A key this version does not know has no default to stand in: None."""
    if key in config:
        return config[key]
    return plain(field_default(StepJEPAConfig, key)) if key in StepJEPAConfig.__dataclass_fields__ else None


def _same(values: list[Any]) -> bool:
    return len({json.dumps(_unset(v), sort_keys=True, default=str) for v in values}) == 1


def config_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings in which a run's recorded training config differs from another (`now`), each
    missing one counting as the option's default. output_dir says where a run was written, not how:
    a run archived under results/ keeps its own."""
    keys = (set(recorded) | set(now)) - {"output_dir"}
    return sorted(k for k in keys if not _same([recorded_setting(recorded, k), recorded_setting(now, k)]))


def _shared_keys(runs: list[dict[str, Any]]) -> tuple[list[dict], set[str], set[str]]:
    """(configs, keys every run records, keys only some record), without each run's overrides."""
    overridden = {k for r in runs for k in (r.get("overrides") or {})} | {"output_dir"}
    cfgs = [r.get("train_config") or {} for r in runs]
    every = set.intersection(*(set(c) for c in cfgs)) - overridden if cfgs else set()
    some = {k for c in cfgs for k in c} - overridden - every
    return cfgs, every, some


def differing_settings(runs: list[dict[str, Any]]) -> list[str]:
    """The training settings whose values differ between these runs, leaving out each run's own
    overrides (the JEPA options a grid varies on purpose): what makes them incomparable, by name.
    A setting a run does not record counts as the option's default (`recorded_setting`); one this
    version does not know counts only where every run records it."""
    cfgs, every, some = _shared_keys(runs)
    known = {k for k in some if k in StepJEPAConfig.__dataclass_fields__}
    return [k for k in sorted(every | known) if not _same([recorded_setting(c, k) for c in cfgs])]


def consistency_warnings(results: list[dict[str, Any]]) -> list[str]:
    """Runs of one seed whose shared (non-JEPA) settings or eval settings differ: not comparable.
    Seeds with the same finding share one line (a grid read from two dates would repeat it per seed)."""
    per_seed: dict[str, list[int]] = {}
    by_seed: dict[int, dict[str, set]] = {}
    for r in results:
        d = by_seed.setdefault(int(r["seed"]), {"train": set(), "eval": set()})
        d["train"].add(r.get("shared_fingerprint"))
        d["eval"].add(fingerprint(scored_eval_settings(r.get("eval"))))
    for s, d in sorted(by_seed.items()):
        text = _training_difference([r for r in results if int(r["seed"]) == s]) if len(d["train"]) > 1 else None
        if text:
            per_seed.setdefault(text, []).append(s)
        if len(d["eval"]) > 1:
            per_seed.setdefault("runs were evaluated with different settings", []).append(s)
    warnings = [f"{_seeds_label(seeds)}: {text}" for text, seeds in per_seed.items()]
    counts: dict[str, int] = {}
    for r in results:
        counts[r["config"]] = counts.get(r["config"], 0) + 1
    if len(set(counts.values())) > 1:
        warnings.append(f"unequal numbers of seeds per config: {counts}")
    return warnings + device_warnings(results) + sharing_warnings(results)


def _training_difference(runs: list[dict[str, Any]]) -> str | None:
    """What differs between one seed's runs whose stored fingerprints differ, read from the configs
    they record: named settings (not comparable), settings only a newer step-jepa records (comparable,
    from other versions), or nothing (None). The last happens because a fingerprint hashes the settings
    its version counted as shared: a run made before an option joined the JEPA options (view_boundary,
    2026-12-06) hashed it, so its fingerprint differs from a newer run's though every setting agrees."""
    if not all(r.get("train_config") for r in runs):
        return "runs differ in non-JEPA training settings (see result.json); they are not comparable"
    named = differing_settings(runs)
    # Recorded by only some runs without a difference: a newer version added an option (the others
    # ran with its default), or an older one recorded an option this version no longer knows.
    extra = sorted(_shared_keys(runs)[2] - set(named))
    if named:
        return f"runs differ in non-JEPA training settings ({', '.join(named)}); they are not comparable"
    if extra:
        return (
            "runs come from different step-jepa versions; every setting is equal, an option a run "
            f"does not record counting as its default (recorded by only some: {', '.join(extra)})"
        )
    return None


def _seeds_label(seeds: list[int]) -> str:
    """'seed 1', 'seeds 0-2' or 'seeds 0,2' (the seeds compacted as in the protocol warnings)."""
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {_seed_span(sorted(seeds))}"


# How device_warnings names runs whose summaries record no device (made before they named it).
NO_DEVICE = "no device recorded"


def device_warnings(results: list[dict[str, Any]]) -> list[str]:
    """Runs of one table that trained or were scored on different devices (by the name their summaries
    record): their seconds are not comparable, and kernels differ between cards, so a paired
    difference may hold a card's effect too. Runs that record no name (older ones) are named as such
    beside runs that do, since nothing says they ran on the same card."""
    configs_on: dict[str, set[str]] = {}
    for r in results:
        recorded = ((r.get(part) or {}).get("device_name") for part in ("train_summary", "eval_summary"))
        names = {str(n) for n in recorded if n}
        for name in names or {NO_DEVICE}:
            configs_on.setdefault(name, set()).add(r["config"])
    if len(configs_on) < 2:
        return []
    where = "; ".join(f"{name} ({', '.join(sorted(cfgs))})" for name, cfgs in sorted(configs_on.items()))
    which = "different devices or record none" if NO_DEVICE in configs_on else "different devices"
    return [f"runs ran on {which}: {where}; their times are not comparable"]


def sharing_warnings(results: list[dict[str, Any]]) -> list[str]:
    """Runs that shared their device with other cells (`compare --jobs`, recorded under
    :data:`~step_jepa.analysis.runs.SHARING`): their train and eval seconds are wall times of a
    shared card, which depend on what ran beside them, so the table's seconds are no cost measure."""
    shared = [r[SHARING]["cells_at_most"] for r in results if (r.get(SHARING) or {}).get("cells_at_most", 1) > 1]
    if not shared:
        return []
    unknown = sum(SHARING not in r for r in results)
    return [
        f"{len(shared)} of {len(results)} runs shared their device with other cells (up to {max(shared)} at "
        "once, compare --jobs), so train s and eval s are wall times of a shared device, not a cost "
        "comparison (step-jepa bench measures cost)"
        + (f"; {unknown} run(s) record no sharing (run without --jobs, or before it was recorded)" if unknown else "")
    ]


class ProtocolMismatch(ValueError):
    """Runs scored under different evaluation protocols (summary.json ``protocol``) in one report."""


def run_protocol(result: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation protocol a result.json was scored under; None for runs from before it was recorded."""
    return (result.get("eval_summary") or {}).get("protocol")


def _recorded(result: dict[str, Any]) -> str:
    """For a run without a protocol block: what its summary.json does record of the protocol, so that
    a reader can tell an fp32 run of the days before the block from a bf16 one."""
    if run_protocol(result) is not None:
        return ""
    summary = result.get("eval_summary") or {}
    known = [f"{k} {summary[k]}" for k in ("dtype", "max_new_tokens", "cuda_graphs") if summary.get(k) is not None]
    return f" [{', '.join(known)}]" if known else ""


def protocol_check(results: list[dict[str, Any]], allow_mismatch: bool = False) -> list[str]:
    """Refuse to compare runs scored under different protocols; return the warnings to print.

    Runs are grouped by protocol, each run joining the first group (in config, seed order) whose
    first run it does not differ from; every later group is then named against the first. A field that
    changes the score (dtype, max_new_tokens, extraction, prompt, ...; the batch budget only outside
    fp32) raises :class:`ProtocolMismatch` naming it, as does a run without a recorded protocol next
    to one with (an "unknown protocol"). ``allow_mismatch`` turns both into warnings. Differing
    versions (torch, transformers, step-jepa) only warn.
    """
    ordered = sorted(results, key=lambda r: (str(r["config"]), int(r["seed"])))
    groups: list[list[dict[str, Any]]] = []
    version_fields: set[str] = set()
    for r in ordered:
        for g in groups:
            diff, versions = protocol_differences(run_protocol(g[0]), run_protocol(r))
            if not diff:
                version_fields.update(versions)
                g.append(r)
                break
        else:
            groups.append([r])
    warnings = []
    if version_fields:
        warnings.append(
            f"runs were evaluated with different versions ({', '.join(sorted(version_fields))}); "
            "the protocol is otherwise the same"
        )
    if len(groups) < 2:
        return warnings
    first = groups[0]
    problems = [
        f"{_name_runs(g)} vs {_name_runs(first)}: "
        + ", ".join(protocol_differences(run_protocol(first[0]), run_protocol(g[0]))[0])
        for g in groups[1:]
    ]
    unknown = any(run_protocol(g[0]) is None for g in groups)
    msg = (
        "runs were scored under different evaluation protocols, so their accuracies are not comparable: "
        + "; ".join(problems)
        + (
            ". Runs without a recorded protocol were evaluated before step-jepa recorded it (bf16 by "
            "default before 2026-12-06, whose outputs depend on the batch budget; the fields their "
            "summaries do record are named in brackets): re-evaluate them"
            if unknown
            else ""
        )
    )
    if not allow_mismatch:
        raise ProtocolMismatch(msg + ". Pass --allow_protocol_mismatch to report them anyway.")
    return [*warnings, msg + ". Reported anyway (--allow_protocol_mismatch)."]


def _name_runs(runs: list[dict[str, Any]]) -> str:
    """'jepa/seed0-3, sft/seed0,2 [dtype float32]': a group's runs by config, seeds compacted, with
    what a run without a protocol block records (runs of one config that record alike share a name)."""
    seeds: dict[tuple[str, str], list[int]] = {}
    for r in runs:
        seeds.setdefault((str(r["config"]), _recorded(r)), []).append(int(r["seed"]))
    return ", ".join(f"{config}/seed{_seed_span(sorted(s))}{rec}" for (config, rec), s in seeds.items())


def _seed_span(seeds: list[int]) -> str:
    """'0-4' for a run of consecutive seeds, else '0,2,5'."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))
