"""Config: flags from the dataclass, YAML overlay precedence, validation, docs/options.md in sync."""

import argparse
from pathlib import Path

import pytest

from step_jepa.config import TrainConfig, add_config_arguments, options_markdown, resolve_config


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return resolve_config(p.parse_args(argv))


def test_defaults_yaml_then_flags(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("lbd: 0.5\npredictors: 3\nbf16: true\n")
    cfg = _parse(["--config", str(y), "--predictors", "2"])
    assert cfg.lbd == 0.5 and cfg.predictors == 2 and cfg.bf16 is True
    assert cfg.learning_rate == TrainConfig().learning_rate


def test_bool_flags_accept_hf_style_values():
    assert _parse(["--bf16"]).bf16 is True
    assert _parse(["--bf16", "false"]).bf16 is False


def test_unknown_yaml_key_is_an_error(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("lbdd: 0.5\n")
    with pytest.raises(ValueError, match="unknown option"):
        _parse(["--config", str(y)])


@pytest.mark.parametrize("argv,msg", [(["--lbd", "-1"], "--lbd"), (["--jepa_ratio", "2"], "--jepa_ratio"),
                                      (["--predictors", "0"], "--predictors")])
def test_validation(argv, msg):
    with pytest.raises(ValueError, match=msg):
        _parse(argv)


def test_docs_options_table_is_current():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "options.md").read_text()
    assert options_markdown() in doc, "regenerate with: python -m step_jepa.config > table (see docs/options.md)"
