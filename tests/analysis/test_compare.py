"""Tests for step_jepa.analysis.compare: a resumable end-to-end grid, the same data order for every
config of a seed, one evaluation per device at a time, extra protocols from the loaded model, cells
finished in another directory (`--finished`)."""

from __future__ import annotations

import json

import pytest
from conftest import grid_dict, raw_gsm8k, write_grid

from step_jepa.analysis import compare as cmp
from step_jepa.analysis.grid import load_grid, train_config
from step_jepa.analysis.runs import PLOT, RESULTS, TABLE
from step_jepa.cli.main import main as cli_main
from step_jepa.training.data import build_collator


@pytest.mark.slow
def test_compare_grid_end_to_end_and_resume(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "grid"
    cfg = write_grid(tmp_path / "grid.yaml", grid_dict(str(model_dir), out, keep_checkpoints=False))
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

    # The archived copy (no weights, no model outputs) gives the same table.
    kept = tmp_path / "kept"
    assert cli_main(["compare", "--archive", str(out), "--archive_to", str(kept)]) == 0
    assert not list(kept.rglob("*.safetensors")) and not list(kept.rglob("predictions.jsonl"))
    assert cli_main(["compare", "--report", str(kept)]) == 0
    assert (kept / TABLE).read_text() == (out / TABLE).read_text()
    capsys.readouterr()

    # Editing the grid's shared settings makes the finished results stale: refuse to mix them.
    changed = grid_dict(str(model_dir), out, keep_checkpoints=False)
    changed["base"]["learning_rate"] = 1e-3
    assert cli_main(["compare", "--config", str(write_grid(tmp_path / "g2.yaml", changed))]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_gives_same_data_order_with_and_without_jepa(model_dir, tmp_path, monkeypatch) -> None:
    """What compare promises: configs of one seed see the same examples in the same order."""
    import step_jepa.training.trainer as trainer

    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict(str(model_dir), tmp_path / "o")))
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
        cfg = train_config(grid, name, 3)
        cfg.max_steps = 5
        trainer.run_train(cfg)
        orders[name] = seen
    assert len(orders["sft"]) >= 5
    assert orders["sft"] == orders["jepa_random"]


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
def test_also_protocols_score_each_cell_from_the_loaded_model(model_dir, tmp_path, capsys) -> None:
    """A cell is scored under lm-eval's gsm8k too, before its weights could go; the report gets a
    section for it; adding the key to a finished grid does not redo its cells."""
    test, shots = raw_gsm8k(tmp_path / "test.jsonl", 4), raw_gsm8k(tmp_path / "train.jsonl", 8, seed=50)
    out = tmp_path / "grid"
    g = grid_dict(str(model_dir), out, keep_checkpoints=False)
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


def _finished(grid, out, name: str, seed: int, **changed) -> None:
    """A finished cell of `grid` under another output directory, as `compare --archive` leaves it
    (its recorded output_dir is its own); `changed` edits its recorded training settings."""
    from step_jepa.analysis.grid import eval_settings
    from step_jepa.analysis.runs import RESULT, run_dir
    from step_jepa.training.config import config_dict

    rdir = run_dir(out, name, seed)
    rdir.mkdir(parents=True)
    cfg = {**config_dict(train_config(grid, name, seed)), "output_dir": str(rdir), **changed}
    result = {"config": name, "seed": seed, "accuracy": 0.5, "correct": 8, "n": 16, "overrides": grid.configs[name]}
    result.update(train_seconds=1.0, eval_seconds=1.0, train_config=cfg, eval=eval_settings(grid))
    (rdir / RESULT).write_text(json.dumps(result))


def test_cells_finished_in_another_directory_are_not_run_again(tmp_path, capsys) -> None:
    """`--finished DIR`: cells finished there (an earlier run of the grid, archived) are skipped by
    the sequential and the parallel runner and read in place by the report; unfinished ones run;
    one finished with other settings is refused."""
    import sys

    from step_jepa.analysis.parallel import run_cells_parallel

    cfg = write_grid(tmp_path / "g.yaml", grid_dict("no-such-model", tmp_path / "out"))
    grid = load_grid(cfg)
    kept = tmp_path / "kept"
    for name in grid.configs:
        _finished(grid, kept, name, 0)
    started: list[tuple[str, int]] = []

    def command(name: str, seed: int) -> list[str]:
        started.append((name, seed))
        return [sys.executable, "-c", "pass"]

    outcome = run_cells_parallel(grid, 2, command, gpus=[], poll_seconds=0.01, elsewhere=[kept])
    assert started == [(name, 1) for name in grid.configs]
    assert sorted(outcome.skipped) == sorted((name, 0) for name in grid.configs)
    capsys.readouterr()

    # Every cell finished there: nothing trains (the model does not exist), the table is written.
    for name in grid.configs:
        _finished(grid, kept, name, 1)
    assert cli_main(["compare", "--config", str(cfg), "--finished", str(kept), "--dry_run"]) == 0
    assert f"sft seed 1: done -> {kept / 'sft' / 'seed1'}" in capsys.readouterr().out
    assert cli_main(["compare", "--config", str(cfg), "--finished", str(kept)]) == 0
    assert capsys.readouterr().out.count(f"skipped, already finished ({kept}") == 4
    assert "| sft |" in (grid.output_dir / TABLE).read_text()

    other = tmp_path / "other"
    _finished(grid, other, "sft", 0, learning_rate=1.0)
    with pytest.raises(ValueError, match=r"other settings \(train: \['learning_rate'\]"):
        cmp.run_grid(grid, ["sft"], [0], elsewhere=[other])


def test_a_setting_a_finished_run_does_not_record_counts_as_its_default(tmp_path) -> None:
    """A run made before an option existed lacks it in its recorded config: it ran with the option's
    default (view_boundary 'content'), so it is reused; a missing setting the grid gives another
    value than the default (sft's lbd 0; the default is 0.1) is a difference."""
    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("no-such-model", tmp_path / "out")))
    kept = tmp_path / "kept"
    _finished(grid, kept, "sft", 0)
    path = kept / "sft" / "seed0" / "result.json"
    result = json.loads(path.read_text())
    del result["train_config"]["view_boundary"]
    path.write_text(json.dumps(result))
    assert cmp.finished_run(grid, "sft", 0, [kept]) == kept / "sft" / "seed0"
    del result["train_config"]["lbd"]
    path.write_text(json.dumps(result))
    with pytest.raises(ValueError, match=r"other settings \(train: \['lbd'\]"):
        cmp.finished_run(grid, "sft", 0, [kept])


def test_finished_is_refused_outside_a_grid_run(tmp_path, capsys) -> None:
    assert cli_main(["compare", "--report", str(tmp_path), "--finished", str(tmp_path)]) == 2
    assert "--finished is only used with --config" in capsys.readouterr().err


def test_a_finished_training_is_reused_under_the_same_rules(tmp_path) -> None:
    """A trained run without result (evaluation pending) is judged like a finished one: a setting its
    saved config leaves out is the option's default; a setting of another value is refused."""
    import yaml

    from step_jepa.training.config import config_dict

    grid = load_grid(write_grid(tmp_path / "g.yaml", grid_dict("no-such-model", tmp_path / "out")))
    cfg = train_config(grid, "sft", 0)
    rdir = tmp_path / "trained"
    rdir.mkdir()
    saved = config_dict(cfg)
    del saved["view_boundary"]
    (rdir / "step_jepa_config.yaml").write_text(yaml.safe_dump(saved))
    cmp._check_trained(cfg, rdir)
    saved["learning_rate"] = 1.0
    (rdir / "step_jepa_config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ValueError, match=r"other settings \(\['learning_rate'\]\)"):
        cmp._check_trained(cfg, rdir)
