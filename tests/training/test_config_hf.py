"""Issue #17: StepJEPAConfig is a TrainingArguments, so every Trainer option is a flag and a YAML
key, reaches the Trainer as given, and bench is parsed by the same parser."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import CHECKPOINTING
from transformers import TrainingArguments

import step_jepa.training.trainer as trainer_mod
from step_jepa.cli import main as cli
from step_jepa.training.config import StepJEPAConfig, resolve_config, save_config


def _train(argv: list[str]) -> StepJEPAConfig:
    """`step-jepa train ARGV`'s config, parsed by the real command-line parser."""
    return resolve_config(cli.build_parser(["train"]).parse_args(["train", *argv]))


class _Stop(Exception):
    pass


class _CaptureTrainer:
    """Stands in for StepJEPATrainer: keeps the arguments it is given, then stops the run."""

    args: TrainingArguments | None = None

    def __init__(self, **kwargs):
        type(self).args = kwargs["args"]
        raise _Stop


def test_trainer_options_reach_the_trainer(model_dir: Path, tmp_path: Path, monkeypatch):
    """--optim, --fsdp, --eval_strategy (and our own options) on the args object the Trainer gets,
    without starting (distributed) training."""
    from step_jepa.data.synthetic import generate_problems

    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r) + "\n" for r in generate_problems(4, seed=5)))
    monkeypatch.setattr(trainer_mod, "StepJEPATrainer", _CaptureTrainer)
    cfg = _train(
        [
            "--model",
            str(model_dir),
            "--output_dir",
            str(tmp_path / "run"),
            "--generate_examples",
            "8",
            "--optim",
            "adafactor",
            "--fsdp",
            "full_shard auto_wrap",
            "--eval_file",
            str(heldout),
            "--eval_strategy",
            "epoch",
            f"--{CHECKPOINTING}",
            "--lr_scheduler_type",
            "linear",
            "--packing",
            "--report_to",
            "none",
            "--max_steps",
            "2",
        ]
    )
    with pytest.raises(_Stop):
        trainer_mod.run_train(cfg)
    args = _CaptureTrainer.args
    assert isinstance(args, TrainingArguments)
    assert args.optim == "adafactor" and args.eval_strategy == "epoch" and getattr(args, CHECKPOINTING) is True
    assert args.fsdp is True and args.fsdp_config["reshard_after_forward"] is True  # full_shard, as HF reads it
    assert args.lr_scheduler_type == "linear" and args.max_steps == 2 and args.report_to == []
    assert args.per_device_train_batch_size == 1  # resolved from --packing: a batch is one packed group
    assert not (tmp_path / "run").exists()  # nothing written before the Trainer was built


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="checks the missing-package path")
def test_deepspeed_flag_reaches_training_arguments(tmp_path: Path):
    """--deepspeed is handed to TrainingArguments, whose DeepSpeed set-up asks for the package."""
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": "auto"}')
    ns = cli.build_parser(["train"]).parse_args(["train", "--deepspeed", str(ds)])
    assert ns.deepspeed == str(ds)
    with pytest.raises(Exception, match="deepspeed"):
        resolve_config(ns)


def test_yaml_overlay_of_training_arguments_fields(tmp_path: Path):
    """TrainingArguments-only keys in YAML (nested ones too); a flag still wins over the file;
    the saved config keeps them and reloads to the same run."""
    y = tmp_path / "c.yaml"
    y.write_text(
        f"optim: adafactor\nweight_decay: 0.1\n{CHECKPOINTING}: true\nsave_strategy: epoch\n"
        "fsdp: true\nfsdp_config: {reshard_after_forward: false}\nreport_to: [tensorboard, wandb]\n"
    )
    cfg = _train(["--config", str(y), "--weight_decay", "0.2", "--output_dir", str(tmp_path / "run")])
    assert cfg.optim == "adafactor" and cfg.weight_decay == 0.2 and getattr(cfg, CHECKPOINTING) is True
    assert cfg.save_strategy == "epoch" and cfg.fsdp is True and cfg.fsdp_config["reshard_after_forward"] is False
    assert cfg.report_to == ["tensorboard", "wandb"]
    saved = save_config(cfg, tmp_path / "run")
    again = _train(["--config", str(saved)])
    assert again.saved_dict() == cfg.saved_dict()
    assert again.saved_dict()["fsdp_config"] == {"reshard_after_forward": False}  # as given, not as HF filled it
    assert again.optim == "adafactor" and again.save_strategy == "epoch"


def test_unknown_yaml_key_names_file_key_and_likely_option(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("optimm: adafactor\nlbd: 0.1\n")
    with pytest.raises(ValueError) as e:
        _train(["--config", str(y)])
    assert str(e.value) == f"{y}: unknown option(s): optimm (did you mean optim?)"


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path: Path):
    """PyYAML reads `1e-4` as a string (YAML 1.1 wants `1.0e-4`); a float option still gets a float,
    and a word where a number belongs is an error naming the file and the key."""
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 1e-4\nlbd: 5e-1\nmax_steps: 3\n")
    cfg = _train(["--config", str(y), "--report_to", "none"])
    assert cfg.learning_rate == 1e-4 and cfg.lbd == 0.5 and cfg.max_steps == 3
    y.write_text("learning_rate: fast\n")
    with pytest.raises(ValueError) as e:
        _train(["--config", str(y)])
    assert str(e.value) == f"{y}: learning_rate: expected a number, got 'fast'"


def test_unknown_flag_names_it_and_the_likely_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--optimm", "adafactor"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("step-jepa train: error: unrecognized arguments: --optimm") and "--optim" in last


def test_bool_flags_and_the_old_debug_flag():
    """Bare booleans, `--flag true|false` (HF's `bool | None` fields too) and `--debug` still
    meaning --debug_batch, while other --debug values are Hugging Face's."""
    cfg = _train(["--use_cpu", "--gradient_checkpointing", "false", "--debug"])
    assert cfg.use_cpu is True and cfg.gradient_checkpointing is False and cfg.debug_batch is True
    assert _train(["--debug", "false"]).debug_batch is False
    hf = _train(["--debug", "underflow_overflow"])
    assert not hf.debug_batch and [d.value for d in hf.debug] == ["underflow_overflow"]
    assert _train(["--logging_first_step", "false"]).logging_first_step is False


def test_saved_config_holds_what_was_given(tmp_path: Path):
    """Not this machine's resolution (CPU, eval steps, report list): a rerun elsewhere resolves again."""
    cfg = _train(["--report_to", "none", "--optim", "sgd"])
    saved = cfg.saved_dict()
    assert saved["report_to"] == "none" and saved["use_cpu"] is None and saved["eval_strategy"] is None
    assert saved["optim"] == "sgd" and "logging_dir" not in saved  # HF fields only when set
    assert StepJEPAConfig is StepJEPAConfig


def test_bench_uses_the_same_parser(tmp_path: Path):
    from step_jepa.cli.bench import config_from_args

    y = tmp_path / "b.yaml"
    y.write_text("per_device_train_batch_size: 2\nvariants: [sft]\nsteps: 3\nlearning_rate: 1e-4\n")
    parser = cli.build_parser(["bench"])
    cfg = config_from_args(
        parser.parse_args(
            [
                "bench",
                "--config",
                str(y),
                "--variants",
                "sft,sp_first",
                "--torch_compile",
                "--data",
                "gsm8k",
                "x.jsonl",
                "--jepa_target",
                "ema",
            ]
        )
    )
    assert cfg.per_device_train_batch_size == 2 and cfg.steps == 3 and cfg.variants == ["sft", "sp_first"]
    assert cfg.torch_compile is True and cfg.jepa_target == "ema" and cfg.learning_rate == 1e-4
    assert cfg.data == ["gsm8k", "x.jsonl"] and cfg.warmup == 5  # default untouched
    y.write_text("per_device_train_batch_sise: 2\n")
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\): per_device_train_batch_sise \(did you mean "
        r"per_device_train_batch_size\?\)",
    ):
        config_from_args(parser.parse_args(["bench", "--config", str(y)]))


def test_our_torch_compile_is_not_hugging_faces():
    """--torch_compile compiles the decoder (build_model); the Trainer must not compile the whole
    wrapper on top. Hugging Face's compile is still there through its backend/mode options."""
    ours = StepJEPAConfig(torch_compile=True, report_to="none")
    assert ours.torch_compile is True and ours.torch_compile_backend is None
    hf = _train(["--torch_compile_mode", "reduce-overhead", "--report_to", "none"])
    assert hf.torch_compile_backend == "inductor" and hf.torch_compile is False
