"""The compare report (step_jepa.analysis.report) and what it checks and reads (analysis.comparable,
analysis.runs): mean ± std, paired Δ, McNemar section, plot, collapse diagnostics, protocol and device checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from step_jepa.analysis import report as rep
from step_jepa.analysis.comparable import ProtocolMismatch, device_warnings
from step_jepa.analysis.runs import CORRECT, PLOT, PREDICTIONS, RESULT, RESULTS, TABLE, collect_results, load_correct
from step_jepa.cli.main import main as cli_main

# --------------------------------------------------------------------------- report (fast)


def _fake_result(out: Path, name: str, seed: int, acc: float, lbd: float) -> None:
    rdir = out / name / f"seed{seed}"
    rdir.mkdir(parents=True)
    (rdir / RESULT).write_text(
        json.dumps(
            {
                "config": name,
                "seed": seed,
                "accuracy": acc,
                "correct": int(acc * 100),
                "n": 100,
                "train_seconds": 10.0 + seed,
                "eval_seconds": 2.0,
                "overrides": {"lbd": lbd},
                "shared_fingerprint": f"fp{seed}",
                "eval": {"generate": 100},
            }
        )
    )


def test_report_mean_std_and_paired_delta(tmp_path, capsys) -> None:
    accs = {"sft": [0.40, 0.50, 0.45], "jepa": [0.45, 0.52, 0.50]}
    for name, xs in accs.items():
        for s, a in enumerate(xs):
            _fake_result(tmp_path, name, s, a, 0.0 if name == "sft" else 0.1)
    rows = rep.build_report(tmp_path, order=["sft", "jepa"])
    assert [r["config"] for r in rows] == ["sft", "jepa"]
    assert rows[0]["mean"] == pytest.approx(0.45)
    assert rows[0]["std"] == pytest.approx(0.05)  # sample std (ddof=1)
    assert rows[1]["delta_vs_baseline"] == pytest.approx((0.05 + 0.02 + 0.05) / 3)
    assert rows[0]["delta_vs_baseline"] is None
    table = (tmp_path / TABLE).read_text()
    assert "| sft | lbd=0.0 | 45.00 ± 5.00 | 3 |" in table
    assert "+4.00 ±" in table and "(n=3)" in table
    assert "45.00 ± 5.00" in capsys.readouterr().out
    data = json.loads((tmp_path / RESULTS).read_text())
    assert len(data["runs"]) == 6 and data["warnings"] == []
    assert (tmp_path / PLOT).stat().st_size > 1000


def test_report_shows_each_configs_optimizer_steps(tmp_path) -> None:
    """The steps column: one number when every seed took the same, a range when not, a dash when
    the runs record none (the step-count confound of packed JEPA runs is read off the table)."""
    steps = {"sft": [820, 820], "jepa": [924, 926], "stp": [None, None]}
    for name, per_seed in steps.items():
        for seed, n in enumerate(per_seed):
            _fake_result(tmp_path, name, seed, 0.4, 0.0 if name == "sft" else 0.1)
            if n is not None:
                path = tmp_path / name / f"seed{seed}" / RESULT
                path.write_text(json.dumps({**json.loads(path.read_text()), "train_summary": {"global_step": n}}))
    rep.build_report(tmp_path, order=["sft", "jepa", "stp"])
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in (tmp_path / TABLE).read_text().splitlines()[2:5]}
    assert [rows[c][6] for c in ("sft", "jepa", "stp")] == ["820", "924–926", "—"]


def test_report_bar_chart_series(tmp_path) -> None:
    rows = [
        {"config": c, "n": 2, "mean": m, "std": 0.01, "accuracy": [m - 0.01, m + 0.01]}
        for c, m in (("a", 0.3), ("b", 0.4), ("c", 0.5))
    ]
    fig = rep.plot_compare(rows, tmp_path / "bars.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 3  # one bar per config
    assert len(ax.collections) == 3 + 1  # one seed-dot scatter per config + the error bar lines
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("n_configs", [1, 2, 5])
def test_compare_plot_title_is_not_clipped(tmp_path, n_configs) -> None:
    """The figure's width follows the number of bars; the title must fit even the narrowest one."""
    rows = [
        {"config": f"config_{i}", "n": 2, "mean": 0.4, "std": 0.01, "accuracy": [0.39, 0.41]} for i in range(n_configs)
    ]
    fig = rep.plot_compare(rows, tmp_path / "bars.png")
    fig.canvas.draw()
    box, page = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1


def test_report_warns_on_mixed_settings(tmp_path) -> None:
    _fake_result(tmp_path, "a", 0, 0.5, 0.0)
    _fake_result(tmp_path, "b", 0, 0.5, 0.1)
    r = json.loads((tmp_path / "b" / "seed0" / RESULT).read_text())
    r["shared_fingerprint"] = "other"
    (tmp_path / "b" / "seed0" / RESULT).write_text(json.dumps(r))
    rep.build_report(tmp_path)
    assert "not comparable" in (tmp_path / TABLE).read_text()


def test_report_without_results_is_an_error(tmp_path) -> None:
    assert cli_main(["compare", "--report", str(tmp_path)]) == 2


def _fake_predictions(out: Path, name: str, seed: int, correct: list[bool], ids: list | None = None) -> None:
    """eval/predictions.jsonl of a run, rows shaped like evaluate._score writes them."""
    path = out / name / f"seed{seed}" / "eval" / PREDICTIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"gen-1000-{i}" for i in range(len(correct))]
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": i,
                    "question": "q",
                    "output": "o",
                    "extracted": "1",
                    "gold": "1",
                    "correct": ok,
                    "tokens": 3,
                    "error": None,
                }
            )
            + "\n"
            for i, ok in zip(ids, correct)
        )
    )


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
    rows = rep.build_report(tmp_path, order=["sft", "jepa", "nopred"])
    assert rows[0]["paired"] is None and rows[2]["paired"] == {"status": "n/a (no predictions)"}
    data = json.loads((tmp_path / RESULTS).read_text())
    p = data["configs"][1]["paired"]
    assert data["paired_baseline"] == "sft"
    # seed 0: b = {1}, c = {2, 3}; seed 1: b = {4}, c = {1, 2}  ->  b = 2, c = 4, Δ = (20 + 20) / 2
    assert (p["b"], p["c"], p["n_seeds"], p["n_problems"]) == (2, 4, 2, 5)
    assert p["delta_points"] == pytest.approx(20.0) and p["mcnemar"]["method"] == "exact binomial"
    assert p["mcnemar_p"] == pytest.approx(2 * (1 + 6 + 15) / 64)
    table = (tmp_path / TABLE).read_text()
    assert "## Paired vs sft (per problem)" in table
    assert "| jepa | +20.00 [" in table and "| 2 / 4 | 2 × 5 | s0 +20.00 / s1 +20.00 (ahead on 2 of 2) |" in table
    assert "| nopred | n/a (no predictions) |" in table


def test_paired_table_lists_each_seeds_difference_and_counts_a_tie_as_not_ahead() -> None:
    stats = {
        "status": "ok",
        "delta_points": 0.5,
        "ci95_points": [-0.5, 1.5],
        "mcnemar_p": 0.5,
        "mcnemar": {"method": "exact binomial"},
        "b": 3,
        "c": 5,
        "n_seeds": 3,
        "n_problems": 100,
        "per_seed_delta_points": {"2": 0.0, "0": 2.5, "1": -1.0},  # as read back from JSON
        "alignment": {"seeds_only_baseline": [], "seeds_only_candidate": [], "problems_dropped": 0},
    }
    table = rep.format_paired({"jepa": stats}, "sft")
    assert "| 3 / 5 | 3 × 100 | s0 +2.50 / s1 -1.00 / s2 +0.00 (ahead on 1 of 3) |  |" in table


def test_report_paired_with_missing_seed_and_bad_ids(tmp_path) -> None:
    for s in (0, 1):
        _fake_result(tmp_path, "sft", s, 0.5, 0.0)
        _fake_result(tmp_path, "jepa", s, 0.5, 0.1)
        _fake_predictions(tmp_path, "sft", s, [True, False])
    _fake_predictions(tmp_path, "jepa", 0, [False, True])  # seed 1 of jepa has no predictions.jsonl
    rows = rep.build_report(tmp_path, order=["sft", "jepa"])
    p = rows[1]["paired"]
    assert p["status"] == "ok" and p["n_seeds"] == 1 and p["runs_without_predictions"] == [1]
    assert "seeds without predictions.jsonl: [1]" in (tmp_path / TABLE).read_text()
    _fake_predictions(tmp_path, "jepa", 1, [True, True], ids=["x", "x"])
    with pytest.raises(ValueError, match="duplicate problem id"):
        load_correct(tmp_path / "jepa" / "seed1" / "eval" / PREDICTIONS)
    rows = rep.build_report(tmp_path, order=["sft", "jepa"])  # reported as n/a, the report still builds
    assert rows[1]["paired"]["status"].startswith("n/a (bad predictions.jsonl, jepa: ValueError")


def test_load_correct_keeps_a_line_whose_output_holds_a_line_separator(tmp_path) -> None:
    """predictions.jsonl is written with ensure_ascii=False: U+2028 inside a model output is a
    character of the row, not the end of a line."""
    rows = [
        {"id": "a", "output": "one\u2028two\x1cthree", "correct": True},
        {"id": "b", "output": "", "correct": False},
    ]
    path = tmp_path / PREDICTIONS
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert load_correct(path) == {"a": True, "b": False}


def test_report_reads_gzipped_predictions_and_metrics(tmp_path) -> None:
    """Committed result dirs keep predictions.jsonl and metrics.jsonl gzipped: the report reads
    them as they are, with the same numbers as from the plain files."""
    import gzip

    tables = []
    for zipped in (False, True):
        out = tmp_path / ("gz" if zipped else "plain")
        for name, correct, lbd in (("sft", [True, False, False], 0.0), ("jepa", [True, True, False], 0.1)):
            _fake_result(out, name, 0, 0.5, lbd)
            _fake_predictions(out, name, 0, correct)
            _write_metrics(out, name, 0, [{"step": 1, "lm_loss": 1.5, "jepa_loss": 0.2 + lbd}])
            if zipped:
                for f in (out / name / "seed0" / "eval" / PREDICTIONS, out / name / "seed0" / "metrics.jsonl"):
                    with gzip.open(f.with_name(f.name + ".gz"), "wt") as g:
                        g.write(f.read_text())
                    f.unlink()
        rows = rep.build_report(out, order=["sft", "jepa"])
        assert rows[1]["paired"]["status"] == "ok" and (rows[1]["paired"]["b"], rows[1]["paired"]["c"]) == (0, 1)
        tables.append((out / TABLE).read_text())
    assert "## Collapse diagnostics" in tables[1] and tables[0] == tables[1]


def test_report_reads_correct_jsonl_when_predictions_are_gone(tmp_path) -> None:
    """Committed result dirs keep only eval/correct.jsonl.gz (id + correct per problem), not the
    model outputs: the paired statistics from it equal those from the full predictions.jsonl, and
    a predictions.jsonl, where present, is read first."""
    import gzip

    tables = []
    for kind in ("predictions", "correct", "both"):
        out = tmp_path / kind
        for name, correct, lbd in (("sft", [True, False, False, True], 0.0), ("jepa", [True, True, False, False], 0.1)):
            _fake_result(out, name, 0, 0.5, lbd)
            _fake_predictions(out, name, 0, correct)
            pred = out / name / "seed0" / "eval" / PREDICTIONS
            if kind != "predictions":
                rows = [json.loads(line) for line in pred.read_text().splitlines()]
                with gzip.open(pred.with_name(CORRECT + ".gz"), "wt") as g:
                    # "both": a correct file that disagrees, to show predictions.jsonl wins
                    g.write(
                        "".join(
                            json.dumps({"id": r["id"], "correct": r["correct"] != (kind == "both")}) + "\n"
                            for r in rows
                        )
                    )
            if kind == "correct":
                pred.unlink()
        rows = rep.build_report(out, order=["sft", "jepa"])
        p = rows[1]["paired"]
        assert p["status"] == "ok" and (p["b"], p["c"], p["n_problems"]) == (1, 1, 4)
        tables.append((out / TABLE).read_text())
    assert tables[0] == tables[1] == tables[2]


def _write_metrics(out: Path, name: str, seed: int, rows: list[dict]) -> None:
    (out / name / f"seed{seed}" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_collapse_diagnostics_by_hand(tmp_path) -> None:
    for s in (0, 1):
        _fake_result(tmp_path, "sft", s, 0.4, 0.0)
        _fake_result(tmp_path, "jepa", s, 0.4, 0.1)
        _write_metrics(tmp_path, "sft", s, [{"step": 1, "lm_loss": 2.0}, {"step": 2, "lm_loss": 1.0}])
    # Seed 0: the last 3 logged steps with the key are averaged (step 1 is left out); the final
    # summary line without diagnostics is ignored. Seed 1 has retrieval at chance.
    _write_metrics(
        tmp_path,
        "jepa",
        0,
        [
            {"step": 1, "lm_loss": 9.0, "jepa_loss": 9.0, "jepa_retrieval_acc": 0.0, "jepa_pairs": 4},
            *(
                {
                    "step": k,
                    "lm_loss": 1.0,
                    "jepa_loss": 0.1 * k,
                    "view1_pairwise_cos": 0.9,
                    "view2_pairwise_cos": 0.8,
                    "view1_std": 0.1 * k,
                    "jepa_retrieval_acc": 0.5,
                    "jepa_pairs": 4,
                }
                for k in (2, 3, 4)
            ),
            {"step": 4, "train_loss": 1.0},
        ],
    )
    with (tmp_path / "jepa" / "seed0" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lm_loss": 10')  # a killed run's half-written line is skipped
    _write_metrics(
        tmp_path,
        "jepa",
        1,
        [
            {
                "step": 4,
                "lm_loss": 3.0,
                "jepa_loss": 0.0,
                "view1_pairwise_cos": 1.0,
                "view2_pairwise_cos": 1.0,
                "view1_std": 0.0,
                "view2_std": 0.5,
                "jepa_retrieval_acc": 0.25,
                "jepa_pairs": 4,
            }
        ],
    )
    rep.build_report(tmp_path, order=["sft", "jepa"])
    table = (tmp_path / TABLE).read_text()
    assert "## Collapse diagnostics" in table
    assert "| sft | 1.5 | — | — | — | — | — | — | — |" in table  # each seed: (2.0 + 1.0) / 2
    # jepa: lm (1.0 + 3.0) / 2, jepa ((0.2+0.3+0.4)/3 + 0) / 2, cos (0.9+1)/2, (0.8+1)/2,
    # spread ((0.2+0.3+0.4)/3 + 0) / 2 and 0.5 (logged by seed 1 only), retrieval (0.5+0.25)/2
    assert "| jepa | 2 | 0.15 | 0.95 | 0.9 | 0.15 | 0.5 | 0.375 | 0.25 |" in table


def test_report_shows_the_stp_loss_of_stp_runs(tmp_path) -> None:
    _fake_result(tmp_path, "sft", 0, 0.4, 0.0)
    _fake_result(tmp_path, "stp", 0, 0.4, 0.0)
    _write_metrics(tmp_path, "sft", 0, [{"step": 1, "lm_loss": 2.0}])
    _write_metrics(
        tmp_path,
        "stp",
        0,
        [{"step": 1, "lm_loss": 2.0, "stp_loss": 1.5}, {"step": 2, "lm_loss": 1.0, "stp_loss": 1.25}],
    )
    rep.build_report(tmp_path, order=["sft", "stp"])
    table = (tmp_path / TABLE).read_text()
    assert "| chance | stp_loss |" in table
    assert "| sft | 2 | — | — | — | — | — | — | — | — |" in table
    assert "| stp | 1.5 | — | — | — | — | — | — | — | 1.375 |" in table


def test_report_without_jepa_runs_has_no_collapse_section(tmp_path) -> None:
    _fake_result(tmp_path, "sft", 0, 0.4, 0.0)
    _write_metrics(tmp_path, "sft", 0, [{"step": 1, "lm_loss": 2.0}])
    rep.build_report(tmp_path)
    assert "Collapse" not in (tmp_path / TABLE).read_text()


# ---------------------------------------------------------------------------- evaluation protocols


def _proto(**over) -> dict:
    p = {
        "name": "step-jepa",
        "dtype": "float32",
        "max_new_tokens": 512,
        "max_batch_tokens": 1000,
        "batch_size": None,
        "cuda_graphs": {"asked": "auto", "used": True},
        "extraction": "step-jepa-strict",
        "prompt": {"system_prompt": "record", "chat_template": "tokenizer:abc", "fewshot": 0},
        "versions": {"torch": "2.11", "transformers": "5.17", "step_jepa": "0.1"},
    }
    p.update(over)
    return p


def _stamp(out: Path, name: str, seed: int, protocol: dict | None) -> None:
    path = out / name / f"seed{seed}" / RESULT
    result = json.loads(path.read_text())
    result["eval_summary"] = {"accuracy": result["accuracy"]} | ({"protocol": protocol} if protocol else {})
    path.write_text(json.dumps(result))


def test_report_refuses_mismatched_protocols_and_names_the_field(tmp_path, capsys) -> None:
    _fake_result(tmp_path, "sft", 0, 0.4, 0.0)
    _fake_result(tmp_path, "jepa", 0, 0.5, 0.1)
    _stamp(tmp_path, "sft", 0, _proto())
    _stamp(tmp_path, "jepa", 0, _proto(dtype="bfloat16", max_new_tokens=256))
    with pytest.raises(ProtocolMismatch, match=r"dtype, max_new_tokens"):
        rep.build_report(tmp_path, order=["sft", "jepa"])
    assert not (tmp_path / TABLE).exists()
    assert cli_main(["compare", "--report", str(tmp_path)]) == 2
    assert "--allow_protocol_mismatch" in capsys.readouterr().out
    rep.build_report(tmp_path, order=["sft", "jepa"], allow_protocol_mismatch=True)
    assert "different evaluation protocols" in (tmp_path / TABLE).read_text()


def test_report_protocol_batch_fields_count_outside_fp32_only_and_versions_warn(tmp_path) -> None:
    _fake_result(tmp_path, "sft", 0, 0.4, 0.0)
    _fake_result(tmp_path, "jepa", 0, 0.5, 0.1)
    # fp32: batch budget and graphs do not change a token, versions only warn.
    _stamp(tmp_path, "sft", 0, _proto())
    _stamp(
        tmp_path,
        "jepa",
        0,
        _proto(
            max_batch_tokens=5,
            cuda_graphs={"asked": False, "used": False},
            versions={"torch": "2.12", "transformers": "5.17", "step_jepa": "0.1"},
        ),
    )
    rep.build_report(tmp_path, order=["sft", "jepa"])
    table = (tmp_path / TABLE).read_text()
    assert "versions.torch" in table
    # bf16: the budget changes outputs, so it must match.
    _stamp(tmp_path, "sft", 0, _proto(dtype="bfloat16"))
    _stamp(tmp_path, "jepa", 0, _proto(dtype="bfloat16", max_batch_tokens=5))
    with pytest.raises(ProtocolMismatch, match="max_batch_tokens"):
        rep.build_report(tmp_path, order=["sft", "jepa"])


def test_report_unknown_protocol_needs_the_flag(tmp_path) -> None:
    for name in ("sft", "jepa"):
        _fake_result(tmp_path, name, 0, 0.4, 0.0 if name == "sft" else 0.1)
    rep.build_report(tmp_path, order=["sft", "jepa"])  # two old runs: nothing is known to differ
    _stamp(tmp_path, "jepa", 0, _proto())
    with pytest.raises(ProtocolMismatch, match="unknown"):
        rep.build_report(tmp_path, order=["sft", "jepa"])
    rep.build_report(tmp_path, order=["sft", "jepa"], allow_protocol_mismatch=True)


def test_report_names_what_a_run_without_protocol_records(tmp_path) -> None:
    """An unstamped run whose summary records fp32 is named so, not taken for a bf16 one."""
    for name in ("sft", "jepa"):
        _fake_result(tmp_path, name, 0, 0.4, 0.0 if name == "sft" else 0.1)
    path = tmp_path / "sft" / "seed0" / RESULT
    result = json.loads(path.read_text())
    result["eval_summary"] = {**(result.get("eval_summary") or {}), "dtype": "float32", "max_new_tokens": 512}
    path.write_text(json.dumps(result))
    _stamp(tmp_path, "jepa", 0, _proto())
    with pytest.raises(ProtocolMismatch, match=r"sft/seed0 \[dtype float32, max_new_tokens 512\] vs"):
        rep.build_report(tmp_path, order=["sft", "jepa"])


def test_report_warns_when_runs_ran_on_different_devices(tmp_path) -> None:
    """The device a summary names: runs of one table on two cards get a warning naming both and the
    configs on each; runs that record none (written before devices were recorded) are named as such
    beside them, and a table whose runs all name one card, or none, gets no warning."""
    for name, seed, card in [("sft", 0, "NVIDIA H100 80GB HBM3"), ("jepa", 0, "NVIDIA H200"), ("stp", 0, None)]:
        _fake_result(tmp_path, name, seed, 0.5, 0.0)
        path = tmp_path / name / f"seed{seed}" / RESULT
        r = json.loads(path.read_text())
        if card:
            r["train_summary"] = {"device_name": card}
            r["eval_summary"] = {"device_name": card}
        path.write_text(json.dumps(r))
    assert device_warnings(collect_results(tmp_path)) == [
        "runs ran on different devices or record none: NVIDIA H100 80GB HBM3 (sft); NVIDIA H200 (jepa); "
        "no device recorded (stp); their times are not comparable"
    ]
    rep.build_report(tmp_path)
    assert "runs ran on different devices" in (tmp_path / TABLE).read_text()
    (tmp_path / "stp" / "seed0" / RESULT).unlink()
    (tmp_path / "jepa" / "seed0" / RESULT).unlink()
    assert device_warnings(collect_results(tmp_path)) == []


def test_report_pairs_runs_of_another_directory_in_place(tmp_path, monkeypatch) -> None:
    """`compare --report NEW OLD`: the baseline's runs archived in OLD join NEW's table, read where they
    are (predictions and metrics too); the table names where they came from; one cell in both dirs
    is refused."""
    monkeypatch.chdir(tmp_path)
    new, old = Path("2026-12-07-h100/grid"), Path("2026-12-06-h100/grid")
    for s, (base, cand) in enumerate(
        [([True, False, False], [True, True, False]), ([False, True, False], [True, True, True])]
    ):
        _fake_result(old, "sft", s, sum(base) / 3, 0.0)
        _fake_predictions(old, "sft", s, base)
        _fake_result(new, "jepa", s, sum(cand) / 3, 0.5)
        _fake_predictions(new, "jepa", s, cand)
    _write_metrics(old, "sft", 0, [{"step": 1, "lm_loss": 2.0}])
    _write_metrics(new, "jepa", 0, [{"step": 1, "lm_loss": 1.0, "jepa_loss": 0.5}])
    assert cli_main(["compare", "--report", str(new), str(old), "--baseline", "sft"]) == 0
    data = json.loads((new / RESULTS).read_text())
    p = data["configs"][1]["paired"]
    assert data["paired_baseline"] == "sft" and (p["b"], p["c"], p["n_seeds"]) == (0, 3, 2)
    assert {r["run_dir"] for r in data["runs"]} == {
        "jepa/seed0",
        "jepa/seed1",
        "../../2026-12-06-h100/grid/sft/seed0",
        "../../2026-12-06-h100/grid/sft/seed1",
    }
    table = (new / TABLE).read_text()
    assert "Runs of sft read from `../../2026-12-06-h100/grid`." in table
    assert "| sft | 2 |" in table and "| jepa | 1 | 0.5 |" in table  # each run's own metrics.jsonl
    assert not (old / TABLE).exists()  # the other directory is only read
    _fake_result(old, "jepa", 1, 0.5, 0.5)
    with pytest.raises(ValueError, match="jepa seed 1 is in both"):
        rep.build_report(new, order=["sft", "jepa"], also_from=[old])


def test_protocol_mismatch_names_each_group_of_runs_once(tmp_path) -> None:
    """Runs from two dates in one table: the old, unstamped ones and the new ones are named as two
    groups with their seeds compacted, not run by run against an arbitrary first run."""
    for name in ("sft", "jepa", "selected"):
        for seed in range(4):
            _fake_result(tmp_path, name, seed, 0.4, 0.0 if name == "sft" else 0.1)
    for seed in range(4):
        _stamp(tmp_path, "selected", seed, _proto())
    _stamp(tmp_path, "jepa", 3, _proto())
    with pytest.raises(ProtocolMismatch) as e:
        rep.build_report(tmp_path, order=["sft", "jepa", "selected"])
    assert "jepa/seed3, selected/seed0-3 vs jepa/seed0-2, sft/seed0-3: protocol (unknown" in str(e.value)
    assert str(e.value).count(" vs ") == 1
