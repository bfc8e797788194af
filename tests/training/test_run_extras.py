"""`step-jepa train` around the method: hub datasets (--dataset_name), logging levels per rank,
no deprecation warnings of our making, and a whole-run train_loss after --resume."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import CHECKPOINTING

from step_jepa.cli import main as cli
from step_jepa.models.environment import device_name, versions
from step_jepa.training.config import StepJEPAConfig, resolve_config


def _train(argv: list[str]) -> StepJEPAConfig:
    return resolve_config(cli.build_parser(["train"]).parse_args(["train", *argv]))


def _saved_dataset(tmp_path: Path, rows: list[dict]) -> Path:
    datasets = pytest.importorskip("datasets")
    d = tmp_path / "hubdata"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(d))
    return d


# ---------------------------------------------------------------------------- --dataset_name


def test_dataset_name_rows_are_read_like_a_file(tmp_path: Path):
    """A saved dataset (what `load_dataset` returns, offline) converts and reports like a file."""
    from step_jepa.data.synthetic import generate_problems
    from step_jepa.training.data import load_training_records

    rows = [
        {"question": "Q?", "answer": "no marker"},
        {"question": "A has 2 apples.\nHow many?", "answer": "He has 2.\nThen 1 more: 3.\n#### 3"},
    ]
    rows += [
        {"question": r["messages"][1]["content"], "answer": "\n".join(r["steps"][:-1]) + f"\n#### {r['answer']}"}
        for r in generate_problems(3, seed=1)
    ]
    d = _saved_dataset(tmp_path, rows)
    cfg = _train(["--dataset_name", str(d), "--skip_invalid", "--output_dir", str(tmp_path / "run")])
    records, report = load_training_records(cfg)
    assert report["source"] == f"{d}[train]" and report["lines_read"] == 5
    assert report["written"] == len(records) == 4 and report["skipped"] == {"no final answer": 1}
    assert records[0]["id"] == f"{d}-train-1" and records[0]["answer"] == "3"
    strict = _train(["--dataset_name", str(d), "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match=r"\[train\]:1: no final answer"):
        load_training_records(strict)


def test_dataset_split_and_exactly_one_source(tmp_path: Path):
    from step_jepa.training.data import load_training_records

    d = _saved_dataset(tmp_path, [{"question": "A has 2.\nHow many?", "answer": "It is 2.\nAdd 1: 3.\n#### 3"}])
    cfg = _train(["--dataset_name", str(d), "--dataset_train_split", "test", "--output_dir", str(tmp_path / "r")])
    with pytest.raises(ValueError, match="could not load dataset"):
        load_training_records(cfg)  # the saved dict has no "test" split
    with pytest.raises(ValueError, match="--train_file or --dataset_name, not both"):
        _train(["--dataset_name", str(d), "--train_file", "x.jsonl"])


# ---------------------------------------------------------------------------- logging


@pytest.fixture
def step_jepa_log(caplog):
    """caplog sees the package's messages (its root logger does not propagate, as HF's does not)."""
    from step_jepa.data.logs import ROOT, set_level

    root = logging.getLogger(ROOT)
    root.addHandler(caplog.handler)
    yield caplog
    root.removeHandler(caplog.handler)
    set_level(logging.INFO)


@pytest.mark.parametrize(
    "flags, shown", [([], True), (["--log_level", "warning"], False), (["--log_level", "debug"], True)]
)
def test_info_messages_follow_log_level(tmp_path: Path, step_jepa_log, flags: list[str], shown: bool):
    """Rank 0 logs at --log_level (info by default); hidden with --log_level warning."""
    from step_jepa.data.logs import set_level
    from step_jepa.training.checkpoints import check_output_dir

    cfg = _train(["--output_dir", str(tmp_path / "run"), "--resume", *flags])
    set_level(cfg.process_log_level())
    check_output_dir(cfg)
    assert ("--resume: no complete checkpoint" in step_jepa_log.text) is shown


def test_replicas_log_at_log_level_replica(tmp_path: Path, monkeypatch):
    cfg = _train(["--output_dir", str(tmp_path / "run"), "--log_level", "debug"])
    assert cfg.process_log_level() == logging.DEBUG
    monkeypatch.setattr(StepJEPAConfig, "should_log", property(lambda self: False))
    assert cfg.process_log_level() == logging.WARNING  # Hugging Face's default log_level_replica
    replica = _train(["--output_dir", str(tmp_path / "run"), "--log_level_replica", "error"])
    assert replica.process_log_level() == logging.ERROR


def test_console_lines_are_prefixed_and_warnings_go_to_stderr(capsys):
    from step_jepa.data.logs import get_logger

    log = get_logger("step_jepa.tests")
    log.info("two\nlines")
    log.warning("careful")
    out, err = capsys.readouterr()
    assert out == "[step-jepa] two\n[step-jepa] lines\n" and err == "[step-jepa] WARNING: careful\n"


# ---------------------------------------------------------------------------- deprecation warnings


def test_configs_emit_no_future_warning(tmp_path: Path, model_dir: Path):
    """Neither our defaults, nor a config saved by an earlier version (`gradient_checkpointing:
    false`), nor a --lora model trigger transformers' deprecation FutureWarnings."""
    from step_jepa.training.model import apply_lora, build_model

    old = tmp_path / "old.yaml"
    old.write_text("gradient_checkpointing: false\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        StepJEPAConfig(output_dir=str(tmp_path / "a"), report_to="none")
        assert getattr(_train(["--config", str(old), "--output_dir", str(tmp_path / "b")]), CHECKPOINTING) is False
        cfg = _train(["--model", str(model_dir), "--lora", "--output_dir", str(tmp_path / "c"), "--report_to", "none"])
        lm, _tok, pred_ids, _path = build_model(cfg)
        if not hasattr(lm, "peft_config"):
            apply_lora(lm, cfg, pred_ids)
    if CHECKPOINTING == "activation_checkpointing":  # after the rename the user's own old name still warns
        with pytest.warns(FutureWarning, match="gradient_checkpointing"):
            _train(["--gradient_checkpointing", "--output_dir", str(tmp_path / "d")])


# ---------------------------------------------------------------------------- train_loss after --resume


@pytest.mark.slow
def test_train_loss_after_resume_covers_the_whole_run(model_dir: Path, tmp_path: Path):
    """train_summary.json's train_loss of a run resumed at step 4 of 8 equals the uninterrupted
    run's (Hugging Face's TrainOutput alone would average steps 5-8 only)."""
    from step_jepa.training.trainer import run_train

    argv = [
        "--model",
        str(model_dir),
        "--max_steps",
        "8",
        "--save_steps",
        "4",
        "--logging_steps",
        "3",
        "--per_device_train_batch_size",
        "2",
        "--generate_examples",
        "12",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "none",
        "--seed",
        "3",
    ]
    ref = tmp_path / "ref"
    want = run_train(_train([*argv, "--output_dir", str(ref)]))
    assert want["train_loss_steps"] == 8
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(ref / "checkpoint-4", run / "checkpoint-4")
    got = run_train(_train([*argv, "--output_dir", str(run), "--resume"]))
    assert got["resumed_from"].endswith("checkpoint-4") and got["train_loss_steps"] == 8
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    written = json.loads((run / "train_summary.json").read_text())
    assert written["train_loss"] == got["train_loss"]
    # what it ran on, for whoever reads the summary (or its archived copy) later
    assert written["device_name"] == device_name("cpu") and written["world_size"] == 1
    assert written["versions"] == versions() and written["finished_utc"].endswith("Z")
    # A checkpoint without the loss sum (an earlier version's): the summary says it covers steps 5-8 only.
    old = tmp_path / "old"
    old.mkdir()
    shutil.copytree(ref / "checkpoint-4", old / "checkpoint-4")
    (old / "checkpoint-4" / "step_jepa_loss.json").unlink()
    part = run_train(_train([*argv, "--output_dir", str(old), "--resume"]))
    assert part["train_loss_steps"] == 4 and part["train_loss"] != pytest.approx(want["train_loss"], rel=1e-3)
    first4 = json.loads((ref / "checkpoint-4" / "step_jepa_loss.json").read_text())
    assert first4["steps"] == 4  # and the mean of steps 5-8 is what remains of the whole run's sum:
    assert part["train_loss"] == pytest.approx((8 * want["train_loss"] - first4["loss_sum"]) / 4, rel=1e-5)
