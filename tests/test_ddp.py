"""Two CPU processes with the gloo backend (torchrun) end with identical weights."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from step_jepa.tiny import build_tiny_model, build_tiny_tokenizer


def _free_port() -> str:
    """A port nobody listens on now, so parallel test runs do not collide on a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


LAUNCHERS = {
    "torchrun": lambda: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         "--master_port", _free_port()],
    # --multi_gpu is accelerate's name for multi-process DDP; without GPUs the trainer picks gloo.
    "accelerate": lambda: [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--main_process_port", _free_port()],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_process_gloo_ddp(tmp_path: Path, launcher: str):
    model_dir = tmp_path / "tiny"
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [*LAUNCHERS[launcher](), "-m", "step_jepa.cli", "train", "--model", str(model_dir), "--output_dir", str(out),
           "--max_steps", "4", "--per_device_train_batch_size", "2", "--generate_examples", "16",
           "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--pairs", "all"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prints = [(out / "rank_fingerprints" / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert prints[0] == prints[1], "DDP replicas diverged"
    init = (model_dir / "model.safetensors").read_bytes()
    assert (out / "final" / "model.safetensors").read_bytes() != init
    shutil.rmtree(out / "rank_fingerprints")
