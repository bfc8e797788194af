"""Tests for step_jepa.compare: grid validation, aggregation/report, and a resumable end-to-end grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from step_jepa import compare as cmp
from step_jepa.cli import main as cli_main

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny Llama + byte-level BPE chat tokenizer saved like a hub model."""
    from step_jepa.tiny import build_tiny_model, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_model")
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def grid_dict(model: str, out: Path, **extra) -> dict:
    grid = {
        "base": {"model": model, "generate_examples": 16, "max_steps": 2, "per_device_train_batch_size": 4,
                 "report_to": "none", "logging_steps": 1, "save_steps": 1000},
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


@pytest.mark.parametrize("change, message", [
    (lambda g: g["configs"]["sft"].update(learning_rate=1e-3), "only JEPA options"),
    (lambda g: g["base"].update(seed=3), "set by compare"),
    (lambda g: g["base"].update(no_such_flag=1), "unknown TrainConfig"),
    (lambda g: g["eval"].update(test_file="x.jsonl"), "exactly one of"),
    (lambda g: g["eval"].update(seed=1), "training problems"),
    (lambda g: g.update(extra_key=1), "unknown top-level"),
    (lambda g: g["eval"].update(max_new_token=8), "unknown key"),
    (lambda g: g.update(seeds=[0, 0]), "duplicate seeds"),
    (lambda g: g["configs"].update({"a/b": {}}), "bad config name"),
])
def test_grid_validation_errors(tmp_path, change, message) -> None:
    grid = grid_dict("m", tmp_path / "out")
    change(grid)
    with pytest.raises(ValueError, match=message):
        cmp.load_grid(write_grid(tmp_path / "g.yaml", grid))


# --------------------------------------------------------------------------- report (fast)


def _fake_result(out: Path, name: str, seed: int, acc: float, lbd: float) -> None:
    rdir = out / name / f"seed{seed}"
    rdir.mkdir(parents=True)
    (rdir / cmp.RESULT).write_text(json.dumps({
        "config": name, "seed": seed, "accuracy": acc, "correct": int(acc * 100), "n": 100,
        "train_seconds": 10.0 + seed, "eval_seconds": 2.0, "overrides": {"lbd": lbd},
        "shared_fingerprint": f"fp{seed}", "eval": {"generate": 100}}))


def test_report_mean_std_and_paired_delta(tmp_path, capsys) -> None:
    accs = {"sft": [0.40, 0.50, 0.45], "jepa": [0.45, 0.52, 0.50]}
    for name, xs in accs.items():
        for s, a in enumerate(xs):
            _fake_result(tmp_path, name, s, a, 0.0 if name == "sft" else 0.1)
    rows = cmp.build_report(tmp_path, order=["sft", "jepa"])
    assert [r["config"] for r in rows] == ["sft", "jepa"]
    assert rows[0]["mean"] == pytest.approx(0.45)
    assert rows[0]["std"] == pytest.approx(0.05)  # sample std (ddof=1)
    assert rows[1]["delta_vs_baseline"] == pytest.approx((0.05 + 0.02 + 0.05) / 3)
    assert rows[0]["delta_vs_baseline"] is None
    table = (tmp_path / cmp.TABLE).read_text()
    assert "| sft | lbd=0.0 | 45.00 ± 5.00 | 3 |" in table
    assert "+4.00 ±" in table and "(n=3)" in table
    assert "45.00 ± 5.00" in capsys.readouterr().out
    data = json.loads((tmp_path / cmp.RESULTS).read_text())
    assert len(data["runs"]) == 6 and data["warnings"] == []
    assert (tmp_path / cmp.PLOT).stat().st_size > 1000


def test_report_bar_chart_series(tmp_path) -> None:
    rows = [{"config": c, "n": 2, "mean": m, "std": 0.01, "accuracy": [m - 0.01, m + 0.01]}
            for c, m in (("a", 0.3), ("b", 0.4), ("c", 0.5))]
    fig = cmp.plot_compare(rows, tmp_path / "bars.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 3  # one bar per config
    assert len(ax.collections) == 3 + 1  # one seed-dot scatter per config + the error bar lines
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_warns_on_mixed_settings(tmp_path) -> None:
    _fake_result(tmp_path, "a", 0, 0.5, 0.0)
    _fake_result(tmp_path, "b", 0, 0.5, 0.1)
    r = json.loads((tmp_path / "b" / "seed0" / cmp.RESULT).read_text())
    r["shared_fingerprint"] = "other"
    (tmp_path / "b" / "seed0" / cmp.RESULT).write_text(json.dumps(r))
    cmp.build_report(tmp_path)
    assert "not comparable" in (tmp_path / cmp.TABLE).read_text()


def test_report_without_results_is_an_error(tmp_path) -> None:
    assert cli_main(["compare", "--report", str(tmp_path)]) == 2


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
    table = (out / cmp.TABLE).read_text()
    assert "| sft |" in table and "| jepa_l0.1_k1 |" in table and "(n=2)" in table
    assert "| sft |" in printed
    assert (out / cmp.PLOT).stat().st_size > 1000
    assert len(json.loads((out / cmp.RESULTS).read_text())["configs"]) == 2

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
    (out / cmp.TABLE).unlink()
    assert cli_main(["compare", "--report", str(out)]) == 0
    assert (out / cmp.TABLE).exists()

    # Editing the grid's shared settings makes the finished results stale: refuse to mix them.
    changed = grid_dict(str(tiny_model_dir), out, keep_checkpoints=False)
    changed["base"]["learning_rate"] = 1e-3
    assert cli_main(["compare", "--config", str(write_grid(tmp_path / "g2.yaml", changed))]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_gives_same_data_order_with_and_without_jepa(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """What compare promises: configs of one seed see the same examples in the same order."""
    import step_jepa.trainer as trainer

    grid = cmp.load_grid(write_grid(tmp_path / "g.yaml", grid_dict(str(tiny_model_dir), tmp_path / "o")))
    grid.configs["jepa_random"] = {"lbd": 0.5, "pairs": "random", "predictors": 2}
    original = trainer.build_collator
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
    grid = cmp.load_grid(Path(__file__).resolve().parents[1] / "examples" / name)
    assert list(grid.configs)[0] == "sft" and len(grid.seeds) >= 2
