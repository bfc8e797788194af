"""Selection on dev grids (analysis/select.py) and its hand-over to a test grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from step_jepa.analysis.comparable import ProtocolMismatch
from step_jepa.analysis.grid import load_grid
from step_jepa.analysis.runs import GRID_COPY, RESULT
from step_jepa.analysis.select import select
from step_jepa.cli.main import main as cli_main

OVERRIDES = {
    "sft": {"lbd": 0},
    "frozen": {"lbd": 0.5, "jepa_target": "frozen"},
    "sep": {"lbd": 0.5, "view_boundary": "separator"},
}


def _testbed(out: Path, accs: dict[str, list[float]], order: list[str] | None = None, dtype: str = "float32") -> Path:
    """A finished dev grid's output dir: result.json per config × seed, and the grid copy's order."""
    for name, per_seed in accs.items():
        for seed, acc in enumerate(per_seed):
            rdir = out / name / f"seed{seed}"
            rdir.mkdir(parents=True)
            result = {
                "config": name,
                "seed": seed,
                "accuracy": acc,
                "overrides": OVERRIDES[name],
                "eval_summary": {"protocol": {"name": "step-jepa", "dtype": dtype, "max_new_tokens": 256}},
            }
            (rdir / RESULT).write_text(json.dumps(result))
    (out / GRID_COPY).write_text(json.dumps({"configs": {n: OVERRIDES[n] for n in order or accs}}))
    return out


def test_select_averages_paired_deltas_over_testbeds(tmp_path) -> None:
    # chain: frozen +2.0 / sep +1.0 points; gsm8k: frozen −1.0 / sep +1.5 → means 0.5 / 1.25
    chain = _testbed(tmp_path / "chain", {"sft": [0.30, 0.40], "frozen": [0.32, 0.42], "sep": [0.31, 0.41]})
    gsm = _testbed(tmp_path / "gsm", {"sft": [0.10, 0.12], "frozen": [0.09, 0.11], "sep": [0.115, 0.135]})
    chosen = select([chain, gsm], "sft")
    assert chosen["winner"] == "sep" and chosen["overrides"] == OVERRIDES["sep"]
    assert chosen["scores"]["frozen"] == pytest.approx(0.5)
    assert chosen["scores"]["sep"] == pytest.approx(1.25)
    assert chosen["testbeds"][str(chain)]["frozen"]["per_seed_delta_points"] == {
        0: pytest.approx(2.0),
        1: pytest.approx(2.0),
    }
    assert select([chain], "sft")["winner"] == "frozen"  # one testbed alone
    assert select([chain, gsm], "sft", ["frozen"])["winner"] == "frozen"  # candidates limited


def test_select_ties_go_to_the_config_listed_first_and_losers_still_win(tmp_path) -> None:
    accs = {"sft": [0.5, 0.5], "frozen": [0.4, 0.4], "sep": [0.4, 0.4]}  # both lose by 10 points
    a = _testbed(tmp_path / "a", accs, order=["sft", "sep", "frozen"])
    assert select([a], "sft")["winner"] == "sep"
    b = _testbed(tmp_path / "b", accs, order=["sft", "frozen", "sep"])
    chosen = select([b], "sft")
    assert chosen["winner"] == "frozen" and chosen["scores"]["frozen"] == pytest.approx(-10.0)


def test_select_refuses_partial_grids_other_overrides_and_mixed_protocols(tmp_path) -> None:
    partial = _testbed(tmp_path / "p", {"sft": [0.3, 0.4], "frozen": [0.3, 0.4], "sep": [0.3]})
    with pytest.raises(ValueError, match=r"'sep' has not finished seed\(s\) \[1\]"):
        select([partial], "sft")
    with pytest.raises(ValueError, match="baseline 'nope'"):
        select([partial], "nope", ["frozen"])
    one = _testbed(tmp_path / "one", {"sft": [0.3], "frozen": [0.4], "sep": [0.3]})
    two = _testbed(tmp_path / "two", {"sft": [0.3], "frozen": [0.4], "sep": [0.3]})
    path = two / "frozen" / "seed0" / RESULT
    path.write_text(json.dumps({**json.loads(path.read_text()), "overrides": {"lbd": 1.0}}))
    with pytest.raises(ValueError, match="other overrides"):
        select([one, two], "sft")
    mixed = _testbed(tmp_path / "m", {"sft": [0.3], "frozen": [0.4], "sep": [0.3]})
    path = mixed / "sep" / "seed0" / RESULT
    result = json.loads(path.read_text())
    result["eval_summary"]["protocol"]["dtype"] = "bfloat16"
    path.write_text(json.dumps(result))
    with pytest.raises(ProtocolMismatch, match="dtype"):
        select([mixed], "sft")


def test_cli_select_then_a_test_grid_runs_the_winner(tmp_path, capsys) -> None:
    dev = _testbed(tmp_path / "dev", {"sft": [0.3, 0.4], "frozen": [0.35, 0.45], "sep": [0.3, 0.4]})
    chosen_path = tmp_path / "sel" / "chosen.json"
    assert cli_main(["compare", "--select", str(dev), "--selection_out", str(chosen_path)]) == 0  # baseline: sft, first
    assert json.loads(chosen_path.read_text())["winner"] == "frozen"
    grid = {
        "base": {"model": "m", "generate_examples": 8, "max_steps": 1, "report_to": "none"},
        "eval": {"generate": 8},
        "configs": {"sft": {"lbd": 0}, "selected": {"from_selection": "sel/chosen.json"}},  # relative to the grid file
        "seeds": [0],
        "output_dir": str(tmp_path / "test"),
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    loaded = load_grid(tmp_path / "test.yaml")
    assert loaded.configs["selected"] == OVERRIDES["frozen"]
    assert loaded.selected_from == {"selected": "sel/chosen.json"}
    grid["configs"]["selected"] = {"from_selection": "sel/chosen.json", "lbd": 2.0}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    with pytest.raises(ValueError, match="from_selection takes no other keys"):
        load_grid(tmp_path / "test.yaml")
    grid["configs"]["selected"] = {"from_selection": "sel/none.json"}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    with pytest.raises(ValueError, match="does not exist yet: run the dev grids"):
        load_grid(tmp_path / "test.yaml")
