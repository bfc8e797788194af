"""Tests for step_jepa.analysis.archive: what a committed copy of a grid keeps, and what it leaves."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import run_cli

from step_jepa.analysis.archive import archive_grid

HOME = "/home/someone"


def _grid_output(root: Path) -> Path:
    """A grid output dir as `compare` leaves it: one finished run (weights, checkpoint, log, two
    evaluations), one unfinished run, the grid's copy."""
    run = root / "sft" / "seed0"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-2").mkdir()
    (run / "compare.log").write_text("training...\n")
    (run / "result.json").write_text(json.dumps({"config": "sft", "model": f"{HOME}/.cache/m"}))
    (run / "step_jepa_config.yaml").write_text(f"model: {HOME}/.cache/m\n")
    (run / "train_summary.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "lm_loss": 1.5}\n')
    for ev in ("eval", "eval-lm-eval-gsm8k"):
        (run / ev).mkdir()
        (run / ev / "summary.json").write_text(json.dumps({"accuracy": 0.5}))
        rows = [
            {"id": "a", "output": "line one\u2028line two", "correct": True},  # a separator inside the string
            {"id": "b", "output": "no", "correct": False},
        ]
        (run / ev / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (root / "jepa" / "seed0").mkdir(parents=True)
    (root / "jepa" / "seed0" / "metrics.jsonl").write_text("{}\n")  # still training
    (root / "compare_grid.json").write_text(json.dumps({"configs": {"sft": {}, "jepa": {}}, "output_dir": f"{HOME}/r"}))
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _gz(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def test_archive_keeps_what_the_report_reads_and_nothing_else(tmp_path) -> None:
    src = _grid_output(tmp_path / "runs")
    done = archive_grid(src, tmp_path / "results", home=HOME)
    dest = tmp_path / "results"
    assert _files(dest) == {
        "compare_grid.json",
        "sft/seed0/result.json",
        "sft/seed0/step_jepa_config.yaml",
        "sft/seed0/train_summary.json",
        "sft/seed0/metrics.jsonl.gz",
        "sft/seed0/eval/summary.json",
        "sft/seed0/eval/correct.jsonl.gz",
        "sft/seed0/eval-lm-eval-gsm8k/summary.json",
        "sft/seed0/eval-lm-eval-gsm8k/correct.jsonl.gz",
    }
    assert done.runs == [dest / "sft" / "seed0"] and done.unfinished == [src / "jepa" / "seed0"]
    correct = [json.loads(x) for x in _gz(dest / "sft/seed0/eval/correct.jsonl.gz").splitlines()]
    assert correct == [{"id": "a", "correct": True}, {"id": "b", "correct": False}]
    assert _gz(dest / "sft/seed0/metrics.jsonl.gz") == '{"step": 1, "lm_loss": 1.5}\n'
    # The home directory is not named anywhere in the copy.
    assert json.loads((dest / "sft/seed0/result.json").read_text())["model"] == "~/.cache/m"
    assert (dest / "sft/seed0/step_jepa_config.yaml").read_text() == "model: ~/.cache/m\n"
    assert json.loads((dest / "compare_grid.json").read_text())["output_dir"] == "~/r"


def test_archiving_the_same_runs_twice_gives_the_same_bytes(tmp_path) -> None:
    src = _grid_output(tmp_path / "runs")
    archive_grid(src, tmp_path / "a", home=HOME)
    archive_grid(src, tmp_path / "b", home=HOME)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for name in _files(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_an_archive_archived_again_is_the_same(tmp_path) -> None:
    first = archive_grid(_grid_output(tmp_path / "runs"), tmp_path / "a", home=HOME)
    archive_grid(tmp_path / "a", tmp_path / "b", home=HOME)
    assert first.runs and _files(tmp_path / "a") == _files(tmp_path / "b")
    for name in _files(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_an_archived_run_is_not_overwritten_and_other_runs_may_join(tmp_path) -> None:
    src = _grid_output(tmp_path / "runs")
    dest = tmp_path / "results"
    archive_grid(src, dest, home=HOME)
    with pytest.raises(FileExistsError, match="sft/seed0 already exist"):
        archive_grid(src, dest, home=HOME)
    # The unfinished config finishes later: its run joins the same directory.
    later = tmp_path / "later"
    (later / "jepa" / "seed0").mkdir(parents=True)
    (later / "jepa" / "seed0" / "result.json").write_text("{}")
    (later / "compare_grid.json").write_text(json.dumps({"configs": {"sft": {}, "jepa": {}, "extra": {}}}))
    archive_grid(later, dest, home=HOME)
    assert (dest / "jepa" / "seed0" / "result.json").exists()
    assert list(json.loads((dest / "compare_grid.json").read_text())["configs"]) == ["sft", "jepa", "extra"]


def test_a_grid_copy_that_drops_configs_is_refused_before_anything_is_written(tmp_path) -> None:
    dest = tmp_path / "results"
    archive_grid(_grid_output(tmp_path / "runs"), dest, home=HOME)
    other = tmp_path / "other"
    (other / "stp" / "seed0").mkdir(parents=True)
    (other / "stp" / "seed0" / "result.json").write_text("{}")
    (other / "compare_grid.json").write_text(json.dumps({"configs": {"stp": {}}}))
    with pytest.raises(ValueError, match=r"lists configs \['jepa', 'sft'\]"):
        archive_grid(other, dest, home=HOME)
    assert not (dest / "stp").exists()


def test_a_broken_prediction_line_is_named_by_file_and_line(tmp_path) -> None:
    src = _grid_output(tmp_path / "runs")
    bad = src / "sft" / "seed0" / "eval" / "predictions.jsonl"
    bad.write_text(bad.read_text() + '{"id": "c"}\n')
    with pytest.raises(ValueError, match=rf"{bad}:3: not a prediction row"):
        archive_grid(src, tmp_path / "results", home=HOME)


def test_cli_archive_needs_a_destination_and_a_finished_run(tmp_path, capsys) -> None:
    src = _grid_output(tmp_path / "runs")
    assert run_cli(["compare", "--archive", str(src)]) == 2
    assert "--archive needs --archive_to" in capsys.readouterr().err
    assert run_cli(["compare", "--report", str(src), "--archive_to", str(tmp_path / "x")]) == 2
    assert "--archive_to is only used with --archive" in capsys.readouterr().err
    assert run_cli(["compare", "--archive", str(tmp_path / "runs" / "jepa"), "--archive_to", str(tmp_path / "x")]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert run_cli(["compare", "--archive", str(src), "--archive_to", str(tmp_path / "ok")]) == 0
    printed = capsys.readouterr().out
    assert "archived 1 run(s)" in printed and "jepa/seed0: not finished" in printed
    assert f"step-jepa compare --report {tmp_path / 'ok'}" in printed
