"""End to end through the real command line: train on CPU, then check checkpoint, metrics, weights.

One test launches `python -m step_jepa.cli.main` for real; the others call the same entry point in
this process (`main_in_process`), which spares each a fresh interpreter importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_main
from safetensors.torch import load_file


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "step_jepa.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"step-jepa {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture
def tiny_model_dir(model_dir: Path) -> Path:
    return model_dir  # the session's saved tiny model (read only)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_cli_end_to_end(tmp_path: Path, tiny_model_dir: Path):
    data = tmp_path / "train.jsonl"
    run_cli("prepare", "--generate", "48", "--seed", "1", "--output", str(data))
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--model",
        str(tiny_model_dir),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "12",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "3e-3",
        "--logging_steps",
        "2",
        "--save_steps",
        "6",
        "--predictors",
        "2",
        "--lbd",
        "0.5",
    )
    assert '"lbd": 0.5' in proc.stdout  # resolved config is printed ...
    assert (out / "step_jepa_config.yaml").exists()  # ... and saved
    for ckpt in ("checkpoint-6", "checkpoint-12"):
        for f in ("model.safetensors", "optimizer.pt", "trainer_state.json", "tokenizer.json"):
            assert (out / ckpt / f).exists(), f"{ckpt}/{f} missing"
    rows = [r for r in _metrics(out) if "lm_loss" in r]
    assert rows and all("jepa_loss" in r and "jepa_cos" in r for r in rows)
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"]
    assert rows[-1]["jepa_loss"] < rows[0]["jepa_loss"]
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "final" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k][: before[k].shape[0]])]
    assert len(changed) >= len(before) // 2, "training must change the weights"
    tok_vocab = json.loads((out / "final" / "tokenizer.json").read_text())["added_tokens"]
    assert {"<|predictor_1|>", "<|predictor_2|>"} <= {t["content"] for t in tok_vocab}
    assert after["model.embed_tokens.weight"].shape[0] == before["model.embed_tokens.weight"].shape[0] + 2


@pytest.mark.slow
def test_sft_runs_without_jepa_tokens(tmp_path: Path, tiny_model_dir: Path):
    out = tmp_path / "sft"
    run_main(
        "train",
        "--model",
        str(tiny_model_dir),
        "--output_dir",
        str(out),
        "--lbd",
        "0",
        "--max_steps",
        "3",
        "--generate_examples",
        "12",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
    )
    rows = [r for r in _metrics(out) if "lm_loss" in r]
    assert rows and not any("jepa_loss" in r for r in rows)
    final = load_file(out / "final" / "model.safetensors")
    assert (
        final["model.embed_tokens.weight"].shape[0]
        == load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"].shape[0]
    )


@pytest.mark.slow
def test_lora_two_pass_packing_and_yaml_overlay(tmp_path: Path, tiny_model_dir: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "lbd: 1.0\njepa_loss: infonce\npairs: all\nmax_steps: 3\nlogging_steps: 1\nreport_to: none\n"
        "per_device_train_batch_size: 2\n"
    )
    out = tmp_path / "lora"
    run_main(
        "train",
        "--config",
        str(cfg),
        "--model",
        str(tiny_model_dir),
        "--output_dir",
        str(out),
        "--lora",
        "--merge",
        "--jepa_mode",
        "two_pass",
        "--generate_examples",
        "16",
        "--max_steps",
        "4",
    )
    saved = (out / "step_jepa_config.yaml").read_text()
    assert "max_steps: 4" in saved and "jepa_loss: infonce" in saved  # flag beats YAML, YAML beats default
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert (out / "merged" / "model.safetensors").exists()
    out2 = tmp_path / "packed"
    run_main(
        "train",
        "--model",
        str(tiny_model_dir),
        "--output_dir",
        str(out2),
        "--packing",
        "--max_tokens_per_batch",
        "1024",
        "--max_steps",
        "3",
        "--generate_examples",
        "16",
        "--pairs",
        "all",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
    )
    rows = [r for r in _metrics(out2) if "jepa_pairs" in r]
    assert rows and rows[0]["jepa_pairs"] > 3  # several examples, every pair, in one packed batch


def test_inspect_shows_views(tmp_path: Path, tiny_model_dir: Path):
    proc = run_main("inspect", "--model", str(tiny_model_dir), "--index", "1", "--predictors", "2", "--no_color")
    assert "valid pairs" in proc.stdout and "pass-2 attention" in proc.stdout
    assert "view 1 = last predictor token" in proc.stdout


def test_bad_option_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path):
    proc = run_main(
        "train", "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "x"), "--predictors", "0", check=False
    )
    assert proc.returncode == 2 and "--predictors must be >= 1" in proc.stderr


@pytest.mark.slow
def test_anti_collapse_options_train_and_save(tmp_path: Path, tiny_model_dir: Path):
    out = tmp_path / "opts"
    run_main(
        "train",
        "--model",
        str(tiny_model_dir),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--generate_examples",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--jepa_target",
        "ema",
        "--jepa_predictor_head",
        "mlp",
        "--jepa_loss",
        "vicreg",
        "--jepa_layer",
        "0",
        "--lbd_warmup_steps",
        "2",
        "--lbd",
        "0.5",
    )
    assert (out / "final" / "jepa_head.safetensors").exists()
    rows = [r for r in _metrics(out) if "lbd" in r]
    assert rows[0]["lbd"] < 0.5 and rows[-1]["lbd"] == 0.5  # λ warms up
    assert all(r["jepa_retrieval_acc"] >= 0 for r in rows if "jepa_retrieval_acc" in r)
