"""Kill and resume (issue 5, item 4): a `step-jepa train` process killed with SIGKILL after a
checkpoint and restarted with --resume ends where an uninterrupted run ends, with the same data
order and the same per-step losses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ARGS = [
    "--max_steps",
    "16",
    "--logging_steps",
    "1",
    "--save_steps",
    "4",
    "--per_device_train_batch_size",
    "2",
    "--generate_examples",
    "12",
    "--learning_rate",
    "1e-3",
    "--report_to",
    "none",
    "--pairs",
    "first",
    "--seed",
    "3",
]


def cli(model: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "step_jepa.cli.main",
        "train",
        "--model",
        str(model),
        "--output_dir",
        str(out_dir),
        *ARGS,
        *extra,
    ]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def losses(out_dir: Path) -> dict[int, float]:
    """Last logged loss per step: the killed run's lines may be followed by redone steps."""
    per_step: dict[int, float] = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            per_step[rec["step"]] = rec["loss"]
    return per_step


def kill_after_first_checkpoint(cmd: list[str], out_dir: Path, timeout: float = 120) -> None:
    """Start training, SIGKILL it as soon as checkpoint-4 is published (renamed into place)."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not (out_dir / "checkpoint-4").is_dir():
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out_dir / "final").exists()  # it really was interrupted


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

    model = tmp_path / "tiny"
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok)).save_pretrained(model)
    tok.save_pretrained(model)

    ref = tmp_path / "ref"
    subprocess.run(cli(model, ref), env=env(), check=True, capture_output=True)

    run = tmp_path / "run"
    kill_after_first_checkpoint(cli(model, run), run)
    done = subprocess.run(cli(model, run, "--resume"), env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--resume: continuing from" in done.stdout

    summary = json.loads((run / "train_summary.json").read_text())
    ref_summary = json.loads((ref / "train_summary.json").read_text())
    assert summary["resumed_from"] is not None and int(summary["resumed_from"].rsplit("-", 1)[1]) >= 4
    assert summary["global_step"] == ref_summary["global_step"] == 16
    # 12 examples / batch 2 = 6 steps per epoch: the resumed part crosses epoch boundaries, so
    # equal losses mean equal weights, optimizer, scheduler and data order (seen batches skipped).
    got, want = losses(run), losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, 17))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"step {step}"
    assert not list(run.glob(".tmp-checkpoint-*"))


@pytest.mark.slow
def test_resume_restores_the_ema_target(tmp_path):
    """With --jepa_target ema the target model is part of the training state: resuming from
    checkpoint-4 gives the losses of the uninterrupted run, which depend on the EMA weights."""
    from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

    model = tmp_path / "tiny"
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok)).save_pretrained(model)
    tok.save_pretrained(model)
    extra = ["--max_steps", "8", "--jepa_target", "ema", "--ema_decay", "0.5", "--lbd", "1.0"]

    ref = tmp_path / "ref"
    subprocess.run(cli(model, ref, *extra), env=env(), check=True, capture_output=True)
    assert (ref / "checkpoint-4" / "jepa_ema_target.safetensors").exists()
    assert not (ref / "final" / "jepa_ema_target.safetensors").exists()

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(ref / "checkpoint-4", run / "checkpoint-4")
    (run / "metrics.jsonl").write_text(
        "".join(
            line + "\n"
            for line in (ref / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("step", 0) <= 4
        )
    )
    done = subprocess.run(cli(model, run, *extra, "--resume"), env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got, want = losses(run), losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in range(5, 9):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"step {step}"
