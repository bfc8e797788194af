"""final/README.md is a Hugging Face model card (front matter + what was trained on what, and how);
`eval` adds its scores; --push_to_hub reaches the hub client with the card written; an adapter
loaded onto weights other than those it was trained on warns."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer
from step_jepa.training.config import StepJEPAConfig
from step_jepa.training.model_card import is_step_jepa_model_dir, update_model_card_eval


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from step_jepa.training.trainer import run_train

    root = tmp_path_factory.mktemp("card")
    cfg = StepJEPAConfig(
        model=str(_base(root / "base", seed=3)),
        output_dir=str(root / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        generate_examples=8,
        lbd=0.5,
        predictors=2,
        lora=True,
        stp_lbd=0.1,
        report_to="none",
        save_steps=1000,
        logging_steps=1000,
    )
    return run_train(cfg), root


def _base(d: Path, seed: int) -> Path:
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok), tie=True, seed=seed).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_card_says_base_method_data_and_summary(lora_run):
    summary, root = lora_run
    card = (Path(summary["final_dir"]) / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "peft" and meta["tags"][0] == "step-jepa" and "stp" in meta["tags"]
    assert "base_model" not in meta  # a local directory is no hub id
    assert is_step_jepa_model_dir(summary["final_dir"])
    for text in (
        str((root / "base").resolve()),
        "| λ (JEPA weight) | 0.5 |",
        "| K (predictor tokens) | 2 |",
        "| JEPA loss | cosine |",
        "| pairs | first |",
        "| STP weight (λ_STP) | 0.1 |",
        "training examples: 8",
        "examples with a step pair (`--pairs first`): 8 of 8",
        f"| global_step | {summary['global_step']} |",
        f"| train_loss | {summary['train_loss']} |",
        f"| device_name | {summary['device_name']} |",  # what train_seconds was measured on
        f"| finished_utc | {summary['finished_utc']} |",
        "No evaluation yet",
    ):
        assert text in card, text


def test_card_metadata_for_a_hub_model():
    from step_jepa.training.model_card import card_metadata

    cfg = StepJEPAConfig(
        model="smollm2-135m", output_dir="runs/x", train_file="data/gsm8k_train.jsonl", report_to="none"
    )
    meta = card_metadata(cfg)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["openai/gsm8k"] and meta["library_name"] == "transformers"


def test_eval_scores_go_into_the_card(lora_run, tmp_path):
    summary, _ = lora_run
    final = Path(summary["final_dir"])
    s = {"n": 20, "accuracy": 0.35, "correct": 7, "no_answer": 1, "max_new_tokens": 256}
    assert update_model_card_eval(final, s, data="gsm8k_test")
    assert update_model_card_eval(final, {**s, "accuracy": 0.4, "correct": 8}, data="gsm8k_test")  # replaces
    card = (final / "README.md").read_text()
    assert "| gsm8k_test | 20 | 0.4000 | 1 | 256 |" in card and "0.3500" not in card
    assert "No evaluation yet" not in card and _front_matter(card)["library_name"] == "peft"
    assert not update_model_card_eval(tmp_path, s)  # not a step-jepa final/: left alone


def test_eval_command_updates_the_card(lora_run):
    from conftest import run_cli

    summary, root = lora_run
    rc = run_cli(
        [
            "eval",
            "--model",
            summary["final_dir"],
            "--generate",
            "2",
            "--max_new_tokens",
            "4",
            "--output_dir",
            str(root / "eval"),
            "--no_progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert "| generated2-s" in (Path(summary["final_dir"]) / "README.md").read_text()


def test_push_to_hub_reaches_the_hub_with_the_card_written(tmp_path, monkeypatch, model_dir):
    """Offline, the hub client refuses: that is the network call, and the card is there before it."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    from step_jepa.training.trainer import run_train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = StepJEPAConfig(
        model=str(model_dir),
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        generate_examples=4,
        lbd=0.5,
        report_to="none",
        save_steps=1000,
        logging_steps=1000,
        push_to_hub=True,
        hub_model_id="someone/step-jepa-test",
    )
    with pytest.raises(OfflineModeIsEnabled):
        run_train(cfg)
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and _front_matter((final / "README.md").read_text())
    assert (tmp_path / "run" / "train_summary.json").exists()


def test_adapter_loaded_onto_other_weights_warns(lora_run, tmp_path):
    import torch

    from step_jepa.models.loading import load_for_inference

    summary, _ = lora_run
    final = Path(summary["final_dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        load_for_inference(str(final), dtype=torch.float32)  # the recorded weights: silent
    other = _base(tmp_path / "other", seed=4)
    moved = tmp_path / "final"
    import shutil

    shutil.copytree(final, moved)
    acfg = json.loads((moved / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = str(other)
    (moved / "adapter_config.json").write_text(json.dumps(acfg))
    with pytest.warns(UserWarning, match="different weights"):
        load_for_inference(str(moved), dtype=torch.float32)
