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
    (lambda g: g["eval"].update(max_new_tokens=0), "max_new_tokens must be whole numbers >= 1"),
    (lambda g: g["eval"].update(limit=-3), "limit must be"),
    (lambda g: g["base"].update(warmup_ratio=2.0), "--warmup_ratio must be in"),
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



@pytest.mark.parametrize("n_configs", [1, 2, 5])
def test_compare_plot_title_is_not_clipped(tmp_path, n_configs) -> None:
    """The figure's width follows the number of bars; the title must fit even the narrowest one."""
    rows = [{"config": f"config_{i}", "n": 2, "mean": 0.4, "std": 0.01, "accuracy": [0.39, 0.41]}
            for i in range(n_configs)]
    fig = cmp.plot_compare(rows, tmp_path / "bars.png")
    fig.canvas.draw()
    box, page = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1


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


# --------------------------------------------------------------------------- paired statistics (fast)


def test_mcnemar_exact_branch_by_hand() -> None:
    # b + c = 10 < 50: p = 2 * P(Binomial(10, 1/2) <= 2) = 2 * (1 + 10 + 45) / 1024
    for b, c in ((2, 8), (8, 2)):
        t = cmp.mcnemar(b, c)
        assert t["method"] == "exact binomial"
        assert t["p_value"] == pytest.approx(112 / 1024)
    assert cmp.mcnemar(5, 5)["p_value"] == 1.0  # capped, not 2 * P(X <= 5) > 1
    assert cmp.mcnemar(0, 0)["p_value"] == 1.0


def test_mcnemar_chi_square_branch_by_hand() -> None:
    # b + c = 60 >= 50: chi2 = (|20 - 40| - 1)^2 / 60 = 361 / 60; P(chi2_1 > 6.0167) = 0.014171
    t = cmp.mcnemar(20, 40)
    assert t["method"].startswith("chi-square")
    assert t["statistic"] == pytest.approx(361 / 60)
    assert t["p_value"] == pytest.approx(0.014171, abs=1e-5)
    # Not circular: for large b + c the approximation agrees with the exact binomial test.
    approx, exact = cmp.mcnemar(200, 250)["p_value"], cmp.mcnemar(200, 250, exact_below=10**9)["p_value"]
    assert exact == pytest.approx(approx, rel=0.05) and 0.01 < exact < 0.05


def _runs(matrix, ids=None) -> dict[int, dict[str, bool]]:
    """seed -> {id -> correct} from a [seeds, problems] 0/1 matrix."""
    import numpy as np

    m = np.asarray(matrix, dtype=bool)
    ids = ids or [f"p{i}" for i in range(m.shape[1])]
    return {s: dict(zip(ids, map(bool, row))) for s, row in enumerate(m)}


def test_paired_stats_counts_and_bootstrap_ci() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    n, seeds = 600, 3
    base = rng.random((seeds, n)) < 0.5
    # Candidate: keeps every baseline success, fixes a wrong answer with prob 0.25, breaks a right one
    # with prob 0.05: true Δ = 100 * (0.5 * 0.25 - 0.5 * 0.05) = +10 points.
    u = rng.random((seeds, n))
    cand = np.where(base, u >= 0.05, u < 0.25)
    st = cmp.paired_stats(_runs(base), _runs(cand), n_boot=2000, seed=1)
    assert (st["n_seeds"], st["n_problems"]) == (seeds, n)
    assert st["b"] == int((base & ~cand).sum()) and st["c"] == int((~base & cand).sum())
    assert st["delta_points"] == pytest.approx(100 * (cand.mean() - base.mean()))
    lo, hi = st["ci95_points"]
    assert lo < 10.0 < hi and lo > 0  # contains the true difference, excludes no effect
    # Its width matches the normal approximation of the per-problem (seed-averaged) difference.
    d = 100 * (cand.astype(float) - base).mean(0)
    assert (hi - lo) / 2 == pytest.approx(1.96 * d.std(ddof=1) / np.sqrt(n), rel=0.15)
    assert st["mcnemar_p"] < 1e-6
    assert cmp.paired_stats(_runs(base), _runs(cand), n_boot=2000, seed=1)["ci95_points"] == [lo, hi]
    assert cmp.paired_stats(_runs(base), _runs(cand), n_boot=2000, seed=2)["ci95_points"] != [lo, hi]


def test_paired_stats_aligns_by_id_and_reports_drops() -> None:
    base = {0: {"a": True, "b": False, "c": True}, 1: {"a": True, "b": True, "c": False}, 5: {"a": True}}
    cand = {0: {"c": True, "b": True, "a": False}, 1: {"a": True, "b": True}, 7: {"a": False}}
    st = cmp.paired_stats(base, cand, n_boot=200)
    al = st["alignment"]
    assert al["seeds_matched"] == [0, 1] and al["seeds_only_baseline"] == [5] and al["seeds_only_candidate"] == [7]
    assert (st["n_problems"], al["problems_dropped"], al["dropped_ids"]) == (2, 1, ["c"])
    # Aligned by id, not position: seed 0 a: T->F (b), b: F->T (c); seed 1 identical.
    assert (st["b"], st["c"]) == (1, 1) and st["delta_points"] == 0.0
    note = cmp.alignment_note(st)
    assert "[5]" in note and "[7]" in note and "1 problem id(s)" in note
    with pytest.raises(ValueError, match="no seed in common"):
        cmp.paired_stats({0: {"a": True}}, {1: {"a": True}})
    with pytest.raises(ValueError, match="no problem id in common"):
        cmp.paired_stats({0: {"a": True}}, {0: {"b": True}})


def _fake_predictions(out: Path, name: str, seed: int, correct: list[bool], ids: list | None = None) -> None:
    """eval/predictions.jsonl of a run, rows shaped like evaluate._score writes them."""
    path = out / name / f"seed{seed}" / "eval" / cmp.PREDICTIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"gen-1000-{i}" for i in range(len(correct))]
    path.write_text("".join(json.dumps({"id": i, "question": "q", "output": "o", "extracted": "1", "gold": "1",
                                        "correct": ok, "tokens": 3, "error": None}) + "\n"
                            for i, ok in zip(ids, correct)))


def test_report_paired_section_and_missing_predictions(tmp_path) -> None:
    base = [[True, True, False, False, True], [True, False, False, True, True]]
    jepa = [[True, False, True, True, True], [True, True, True, True, False]]
    for s in (0, 1):
        for name, table, lbd in (("sft", base, 0.0), ("jepa", jepa, 0.1), ("nopred", None, 0.2)):
            _fake_result(tmp_path, name, s, 0.5, lbd)
            if table is not None:
                # jepa writes its problems in another order: pairing must go by id.
                ids = [f"gen-1000-{i}" for i in range(5)]
                order = list(range(5))[::-1] if name == "jepa" else list(range(5))
                _fake_predictions(tmp_path, name, s, [table[s][i] for i in order], [ids[i] for i in order])
    rows = cmp.build_report(tmp_path, order=["sft", "jepa", "nopred"])
    assert rows[0]["paired"] is None and rows[2]["paired"] == {"status": "n/a (no predictions)"}
    data = json.loads((tmp_path / cmp.RESULTS).read_text())
    p = data["configs"][1]["paired"]
    assert data["paired_baseline"] == "sft"
    # seed 0: b = {1}, c = {2, 3}; seed 1: b = {4}, c = {1, 2}  ->  b = 2, c = 4, Δ = (20 + 20) / 2
    assert (p["b"], p["c"], p["n_seeds"], p["n_problems"]) == (2, 4, 2, 5)
    assert p["delta_points"] == pytest.approx(20.0) and p["mcnemar"]["method"] == "exact binomial"
    assert p["mcnemar_p"] == pytest.approx(2 * (1 + 6 + 15) / 64)
    table = (tmp_path / cmp.TABLE).read_text()
    assert "## Paired vs sft (per problem)" in table
    assert "| jepa | +20.00 [" in table and "| 2 / 4 | 2 × 5 |" in table
    assert "| nopred | n/a (no predictions) |" in table


def test_report_paired_with_missing_seed_and_bad_ids(tmp_path) -> None:
    for s in (0, 1):
        _fake_result(tmp_path, "sft", s, 0.5, 0.0)
        _fake_result(tmp_path, "jepa", s, 0.5, 0.1)
        _fake_predictions(tmp_path, "sft", s, [True, False])
    _fake_predictions(tmp_path, "jepa", 0, [False, True])  # seed 1 of jepa has no predictions.jsonl
    rows = cmp.build_report(tmp_path, order=["sft", "jepa"])
    p = rows[1]["paired"]
    assert p["status"] == "ok" and p["n_seeds"] == 1 and p["runs_without_predictions"] == [1]
    assert "seeds without predictions.jsonl: [1]" in (tmp_path / cmp.TABLE).read_text()
    _fake_predictions(tmp_path, "jepa", 1, [True, True], ids=["x", "x"])
    with pytest.raises(ValueError, match="duplicate problem id"):
        cmp.load_correct(tmp_path / "jepa" / "seed1" / "eval" / cmp.PREDICTIONS)
    rows = cmp.build_report(tmp_path, order=["sft", "jepa"])  # reported as n/a, the report still builds
    assert rows[1]["paired"]["status"].startswith("n/a (bad predictions.jsonl, jepa: ValueError")


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


@pytest.mark.parametrize("name", ["gsm8k_dev_sweep.yaml", "gsm8k_test.yaml", "gsm8k_h100.yaml"])
def test_gpu_experiment_grids_are_valid(name) -> None:
    """The grids scripts/gpu_queue.py runs: SFT first (the paired baseline), JEPA options only vary."""
    grid = cmp.load_grid(Path(__file__).resolve().parents[1] / "examples" / name)
    assert list(grid.configs)[0] == "sft" and grid.configs["sft"] == {"lbd": 0}


def _write_metrics(out: Path, name: str, seed: int, rows: list[dict]) -> None:
    (out / name / f"seed{seed}" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_collapse_diagnostics_by_hand(tmp_path) -> None:
    for s in (0, 1):
        _fake_result(tmp_path, "sft", s, 0.4, 0.0)
        _fake_result(tmp_path, "jepa", s, 0.4, 0.1)
        _write_metrics(tmp_path, "sft", s, [{"step": 1, "lm_loss": 2.0}, {"step": 2, "lm_loss": 1.0}])
    # Seed 0: the last 3 logged steps with the key are averaged (step 1 is left out); the final
    # summary line without diagnostics is ignored. Seed 1 has retrieval at chance.
    _write_metrics(tmp_path, "jepa", 0, [
        {"step": 1, "lm_loss": 9.0, "jepa_loss": 9.0, "jepa_retrieval_acc": 0.0, "jepa_pairs": 4},
        *({"step": k, "lm_loss": 1.0, "jepa_loss": 0.1 * k, "view1_pairwise_cos": 0.9, "view2_pairwise_cos": 0.8,
           "jepa_retrieval_acc": 0.5, "jepa_pairs": 4} for k in (2, 3, 4)),
        {"step": 4, "train_loss": 1.0}])
    with (tmp_path / "jepa" / "seed0" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lm_loss": 10')  # a killed run's half-written line is skipped
    _write_metrics(tmp_path, "jepa", 1, [
        {"step": 4, "lm_loss": 3.0, "jepa_loss": 0.0, "view1_pairwise_cos": 1.0, "view2_pairwise_cos": 1.0,
         "jepa_retrieval_acc": 0.25, "jepa_pairs": 4}])
    cmp.build_report(tmp_path, order=["sft", "jepa"])
    table = (tmp_path / cmp.TABLE).read_text()
    assert "## Collapse diagnostics" in table
    assert "| sft | 1.5 | — | — | — | — | — |" in table  # each seed: (2.0 + 1.0) / 2
    # jepa: lm (1.0 + 3.0) / 2, jepa ((0.2+0.3+0.4)/3 + 0) / 2, cos (0.9+1)/2, (0.8+1)/2, retrieval (0.5+0.25)/2
    assert "| jepa | 2 | 0.15 | 0.95 | 0.9 | 0.375 | 0.25 |" in table


def test_report_without_jepa_runs_has_no_collapse_section(tmp_path) -> None:
    _fake_result(tmp_path, "sft", 0, 0.4, 0.0)
    _write_metrics(tmp_path, "sft", 0, [{"step": 1, "lm_loss": 2.0}])
    cmp.build_report(tmp_path)
    assert "Collapse" not in (tmp_path / cmp.TABLE).read_text()


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
