"""Whether a table's runs can be compared (step_jepa.analysis.comparable): the training settings
each seed's runs share, the evaluation protocol, the devices. Results as literal dicts, no files
(the report's refusal on files is in test_report.py)."""

from __future__ import annotations

import json

import pytest

from step_jepa.analysis.comparable import (
    ProtocolMismatch,
    config_differences,
    consistency_warnings,
    device_warnings,
    protocol_check,
    sharing_warnings,
)
from step_jepa.analysis.runs import SHARING


def test_consistency_warning_names_the_differing_setting():
    """A grid that varies a non-JEPA setting (here the learning rate) is flagged by name; the
    configs' own JEPA overrides are not named."""

    def run(config, overrides, lr):
        cfg = {"learning_rate": lr, "seed": 1, "output_dir": f"/x/{config}", **overrides}
        return {
            "config": config,
            "seed": 1,
            "overrides": overrides,
            "train_config": cfg,
            "shared_fingerprint": str(lr),
            "eval": {},
        }

    warns = consistency_warnings([run("sft", {"lbd": 0}, 8e-5), run("jepa", {"lbd": 0.5, "predictors": 4}, 2e-5)])
    assert warns == ["seed 1: runs differ in non-JEPA training settings (learning_rate); they are not comparable"]
    assert consistency_warnings([run("sft", {"lbd": 0}, 8e-5), run("jepa", {"lbd": 0.5}, 8e-5)]) == []
    # A run from a newer version records an extra option; "unset" spelled False or "" is the same.
    old, new = run("sft", {"lbd": 0}, 8e-5), run("jepa", {"lbd": 0.5}, 8e-5)
    old["train_config"]["debug"], new["train_config"]["debug"] = False, ""
    new["train_config"]["torch_compile_scope"], new["shared_fingerprint"] = "layers", "other"
    assert consistency_warnings([old, new]) == [
        "seed 1: runs come from different step-jepa versions; every setting is equal, an option a run "
        "does not record counting as its default (recorded by only some: torch_compile_scope)"
    ]
    # ... at its default ('layers'); another value is a difference the older run could not have made.
    new["train_config"]["torch_compile_scope"] = "decoder"
    assert consistency_warnings([old, new]) == [
        "seed 1: runs differ in non-JEPA training settings (torch_compile_scope); they are not comparable"
    ]
    new["train_config"]["torch_compile_scope"] = "layers"
    new["train_config"]["learning_rate"] = 2e-5
    assert "differ in non-JEPA training settings (learning_rate)" in consistency_warnings([old, new])[0]


def test_config_differences_read_a_missing_option_as_its_default() -> None:
    """What decides whether a finished run can stand for a cell: unset is one value however spelled,
    an option the run does not record is its default, where a run was written is no setting."""
    old = {"learning_rate": 8e-5, "debug": False, "output_dir": "results/x/sft/seed0"}
    now = {"learning_rate": 8e-5, "debug": "", "output_dir": "runs/sft/seed0", "view_boundary": "content"}
    assert config_differences(old, now) == []
    now["view_boundary"] = "separator"
    now["learning_rate"] = 2e-5
    assert config_differences(old, now) == ["learning_rate", "view_boundary"]


def test_fingerprints_of_other_versions_with_equal_settings_are_comparable() -> None:
    """A run made before view_boundary counted as a JEPA option hashed it into its fingerprint; when the
    configs both runs record agree outside their overrides, the differing hashes are no finding. Eval
    settings that only add other protocols (scored besides the main one) are no finding either; a
    run without a recorded config cannot be checked and stays flagged."""
    shared = {"learning_rate": 8e-5, "seed": 0, "view_boundary": "content", "lbd": 0}
    old = {
        "config": "sft",
        "seed": 0,
        "overrides": {"lbd": 0},
        "train_config": shared,
        "shared_fingerprint": "hashed-with-view_boundary",
        "eval": {"dtype": "fp32"},
    }
    new = {
        "config": "selected",
        "seed": 0,
        "overrides": {"lbd": 0.5, "view_boundary": "separator"},
        "train_config": {**shared, "lbd": 0.5, "view_boundary": "separator"},
        "shared_fingerprint": "hashed-without",
        "eval": {"dtype": "fp32", "also_protocols": ["lm-eval-gsm8k"], "fewshot_file": "train.jsonl"},
    }
    assert consistency_warnings([old, new]) == []
    new["eval"]["dtype"] = "bf16"
    assert consistency_warnings([old, new]) == ["seed 0: runs were evaluated with different settings"]
    del old["train_config"]
    assert consistency_warnings([old, new])[0] == (
        "seed 0: runs differ in non-JEPA training settings (see result.json); they are not comparable"
    )


def test_seeds_with_the_same_finding_share_one_warning() -> None:
    def run(config: str, seed: int, cfg: dict) -> dict:
        return {
            "config": config,
            "seed": seed,
            "overrides": {},
            "train_config": cfg,
            "shared_fingerprint": json.dumps(cfg),
            "eval": {},
        }

    runs = [r for s in (0, 1, 2) for r in (run("sft", s, {"lr": 1}), run("jepa", s, {"lr": 1, "new": 0}))]
    assert consistency_warnings(runs) == [
        "seeds 0-2: runs come from different step-jepa versions; every setting is equal, an option a run "
        "does not record counting as its default (recorded by only some: new)"
    ]


def _result(config: str, seed: int, protocol: dict | None = None, **summary) -> dict:
    return {"config": config, "seed": seed, "eval_summary": {**summary, **({"protocol": protocol} if protocol else {})}}


FP32 = {"name": "step-jepa", "dtype": "float32", "max_new_tokens": 512, "max_batch_tokens": 1000}


def test_protocol_groups_are_named_once_with_their_seeds() -> None:
    """Three configs, two protocols: the group of the first run in (config, seed) order is the
    reference, each other group is named once with its seeds compacted, and an unstamped run with
    what its summary records."""
    runs = [_result("sft", s, dtype="float32") for s in range(5)]
    runs += [_result("jepa", s, FP32) for s in (0, 1, 2)] + [_result("stp", s, FP32) for s in (0, 2)]
    with pytest.raises(ProtocolMismatch) as e:
        protocol_check(runs)
    assert "sft/seed0-4 [dtype float32] vs jepa/seed0-2, stp/seed0,2: protocol (unknown" in str(e.value)
    warnings = protocol_check(runs, allow_mismatch=True)
    assert len(warnings) == 1 and warnings[0].endswith("Reported anyway (--allow_protocol_mismatch).")


def test_protocols_that_differ_only_in_versions_or_fp32_batching_are_one_group() -> None:
    other = {**FP32, "max_batch_tokens": 5, "versions": {"torch": "2.12"}}
    runs = [_result("sft", 0, FP32), _result("jepa", 0, other)]
    assert protocol_check(runs) == [
        "runs were evaluated with different versions (versions.torch); the protocol is otherwise the same"
    ]
    bf16 = [_result("sft", 0, {**FP32, "dtype": "bfloat16"}), _result("jepa", 0, {**other, "dtype": "bfloat16"})]
    with pytest.raises(ProtocolMismatch, match=r"sft/seed0 vs jepa/seed0: max_batch_tokens"):
        protocol_check(bf16)


def test_device_warning_names_each_card_and_its_configs() -> None:
    runs = [
        {"config": "sft", "train_summary": {"device_name": "NVIDIA H100 80GB HBM3"}},
        {"config": "jepa", "eval_summary": {"device_name": "NVIDIA H200"}},
        {"config": "stp"},
    ]
    assert device_warnings(runs) == [
        "runs ran on different devices or record none: NVIDIA H100 80GB HBM3 (sft); NVIDIA H200 (jepa); "
        "no device recorded (stp); their times are not comparable"
    ]
    assert device_warnings(runs[:1] + runs[2:]) == [
        "runs ran on different devices or record none: NVIDIA H100 80GB HBM3 (sft); no device recorded (stp); "
        "their times are not comparable"
    ]
    assert device_warnings(runs[:1] + [{"config": "jepa", "train_summary": runs[0]["train_summary"]}]) == []
    assert device_warnings([{"config": "sft"}, {"config": "jepa"}]) == []


def test_sharing_warning_counts_the_runs_that_shared_their_device() -> None:
    """Wall seconds of cells that ran beside others are flagged; runs alone, or that record nothing,
    are not flagged, and the ones that record nothing are counted."""
    runs = [
        {"config": "sft", SHARING: {"cells_at_most": 3, "jobs": 3}},
        {"config": "jepa", SHARING: {"cells_at_most": 2, "jobs": 3}},
        {"config": "stp", SHARING: {"cells_at_most": 1, "jobs": 3}},
        {"config": "old"},
    ]
    assert sharing_warnings(runs) == [
        "2 of 4 runs shared their device with other cells (up to 3 at once, compare --jobs), so train s "
        "and eval s are wall times of a shared device, not a cost comparison (step-jepa bench measures "
        "cost); 1 run(s) record no sharing (run without --jobs, or before it was recorded)"
    ]
    assert sharing_warnings(runs[2:]) == []
