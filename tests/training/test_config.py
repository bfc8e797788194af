"""Config: flags from the dataclass, YAML overlay precedence, validation, docs/options.md in sync."""

import argparse
from pathlib import Path

import pytest

from step_jepa.training.config import (
    StepJEPAConfig,
    add_config_arguments,
    options_markdown,
    resolve_config,
)


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return resolve_config(p.parse_args(argv))


def test_defaults_yaml_then_flags(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("lbd: 0.5\npredictors: 3\nbf16: true\n")
    cfg = _parse(["--config", str(y), "--predictors", "2"])
    assert cfg.lbd == 0.5 and cfg.predictors == 2 and cfg.bf16 is True
    assert cfg.learning_rate == StepJEPAConfig().learning_rate


def test_bool_flags_accept_hf_style_values():
    assert _parse(["--bf16"]).bf16 is True
    assert _parse(["--bf16", "false"]).bf16 is False


def test_unknown_yaml_key_is_an_error(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("lbdd: 0.5\n")
    with pytest.raises(ValueError, match="unknown option"):
        _parse(["--config", str(y)])


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--lbd", "-1"], "--lbd"),
        (["--jepa_ratio", "2"], "--jepa_ratio"),
        (["--predictors", "0"], "--predictors"),
        (["--warmup_ratio", "1.5"], "--warmup_ratio"),
        (["--warmup_ratio", "-0.1"], "--warmup_ratio"),
        (["--warmup_ratio", "1"], "--warmup_ratio"),  # HF would read 1.0 as one warm-up step
        (["--learning_rate", "0"], "--learning_rate"),
        (["--learning_rate", "nan"], "--learning_rate"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
        (["--logging_steps", "0"], "--logging_steps"),
        (["--save_steps", "-5"], "--save_steps"),
        (["--num_train_epochs", "0"], "--num_train_epochs"),
        (["--max_tokens_per_batch", "0"], "--max_tokens_per_batch"),
        (["--generate_examples", "0"], "--generate_examples"),
        (["--jepa_temperature", "0"], "--jepa_temperature"),
        (["--ema_decay", "1.5"], "--ema_decay"),
        (["--max_nonfinite_steps", "0"], "--max_nonfinite_steps"),
        (["--adam_beta2", "1"], "--adam_beta1/2"),
        (["--lora_rank", "0"], "--lora_rank"),
    ],
)
def test_validation(argv, msg):
    with pytest.raises(ValueError, match=msg):
        _parse(argv)


def test_validation_reports_every_problem_on_one_line():
    with pytest.raises(ValueError) as e:
        _parse(["--learning_rate", "-1", "--save_steps", "0"])
    assert "\n" not in str(e.value) and "--learning_rate" in str(e.value) and "--save_steps" in str(e.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--num_train_epochs", "0", "--max_steps", "5"],
        ["--warmup_ratio", "0"],
        ["--max_grad_norm", "0"],
        ["--generate_examples", "0", "--train_file", "x.jsonl"],
    ],
)
def test_validation_accepts_edge_values(argv):
    _parse(argv)


def test_docs_options_table_is_current():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "options.md").read_text()
    assert options_markdown() in doc, (
        "regenerate with: python -m step_jepa.training.config > table (see docs/options.md)"
    )


@pytest.mark.parametrize("text, line", [("lbd: 0.5\n  x: 3\n", 2), ('a: 1\nb: "open\n', 3), ("a: 1\n\tb: 2\n", 2)])
def test_malformed_yaml_names_file_and_line(tmp_path: Path, text: str, line: int):
    from step_jepa.training.options import load_yaml

    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ValueError) as e:
        load_yaml(y)
    assert str(e.value).startswith(f"{y}:{line}: invalid YAML: ") and "\n" not in str(e.value)
