"""Two CPU processes with the gloo backend (torchrun) end with identical weights."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer


def _free_port() -> str:
    """A port nobody listens on now, so parallel test runs do not collide on a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


LAUNCHERS = {
    "torchrun": lambda: [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        _free_port(),
    ],
    # --multi_gpu is accelerate's name for multi-process DDP; without GPUs the trainer picks gloo.
    "accelerate": lambda: [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        _free_port(),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_process_gloo_ddp(tmp_path: Path, launcher: str):
    model_dir = tmp_path / "tiny"
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
    }
    cmd = [
        *LAUNCHERS[launcher](),
        "-m",
        "step_jepa.cli.main",
        "train",
        "--model",
        str(model_dir),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--generate_examples",
        "16",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--pairs",
        "all",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prints = [(out / "rank_fingerprints" / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert prints[0] == prints[1], "DDP replicas diverged"
    init = (model_dir / "model.safetensors").read_bytes()
    assert (out / "final" / "model.safetensors").read_bytes() != init
    shutil.rmtree(out / "rank_fingerprints")


def _infonce_rank(rank: int, port: str, out_dir: str) -> None:
    """One rank of the in-batch InfoNCE check: rank 1 has no valid pair in its micro-batch."""
    import datetime

    import torch.distributed as dist

    from step_jepa.data.records import make_record
    from step_jepa.data.segment import segment
    from step_jepa.data.synthetic import generate_problems
    from step_jepa.method.layout import StepJEPACollator
    from step_jepa.method.model import StepJEPAModel
    from step_jepa.method.options import JEPAOptions
    from step_jepa.models.loading import add_predictor_tokens

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    tok = build_tiny_tokenizer("chatml")
    lm = build_tiny_model(len(tok), seed=0)
    pred = add_predictor_tokens(lm, tok, 1)
    recs = (
        generate_problems(3, seed=0)
        if rank == 0
        else [make_record("one", "q?", ["The final answer is \\boxed{7}."], "7")] * 2
    )
    batch = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred)([segment(r, tok) for r in recs])
    out = StepJEPAModel(lm, JEPAOptions(jepa_loss="infonce"))(**batch)
    (out["lm_sum"] / out["n_tokens"] + out["jepa"]).backward()
    dist.barrier()
    Path(out_dir, f"rank{rank}.txt").write_text(f"{out['jepa'].item():.6f} {len(out['view1'])}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_infonce_gathers_across_ranks_even_without_local_pairs(tmp_path: Path):
    """Negatives come from every rank; a rank with no pair still joins the collective (no hang),
    and both ranks compute the same global loss over the 3 gathered pairs."""
    import torch.multiprocessing as mp

    mp.spawn(_infonce_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert r0 == r1 and r0[1] == "3"
