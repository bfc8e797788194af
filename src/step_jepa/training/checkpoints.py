"""Run directories and checkpoints: one run per --output_dir, resume only from a checkpoint that
is complete, and checkpoints published atomically (staged, flushed, renamed).

Separate from the Trainer subclass (trainer.py) because none of it needs a model: `step-jepa
train` checks the output dir and the checkpoint to resume from before loading anything, and the
reliability tests exercise these rules on directories alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from step_jepa.data.logs import get_logger
from step_jepa.training.config import StepJEPAConfig

logger = get_logger(__name__)

# A checkpoint is written under this name and renamed to checkpoint-N only once complete, so a
# kill mid-save never leaves a directory that looks like a checkpoint. The leading dot keeps it
# out of get_last_checkpoint / rotate_checkpoints, which only match "checkpoint-<N>".
STAGING_PREFIX = f".tmp-{PREFIX_CHECKPOINT_DIR}"

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _fsync_tree(root: Path) -> None:
    """Flush a checkpoint's files (and the directory entries) to disk before it is published, so a
    power loss cannot leave a renamed checkpoint whose contents never reached the disk."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Rename a fully written checkpoint into place. An existing checkpoint of the same step
    (e.g. a damaged one skipped on resume) is moved aside first: rename cannot replace a
    non-empty directory, and deleting it first would leave a moment with neither."""
    _fsync_tree(staged)
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def load_lm_weights(lm, ckpt: str) -> None:
    """Restore weights saved by `_save` (full model or LoRA adapter), failing loudly on mismatch."""
    from safetensors.torch import load_file

    ckpt_path = Path(ckpt)
    if (ckpt_path / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(lm, load_file(ckpt_path / "adapter_model.safetensors"))
        if getattr(res, "unexpected_keys", None):
            raise RuntimeError(f"{ckpt}: unexpected adapter keys {res.unexpected_keys[:5]}")
        return
    files = sorted(ckpt_path.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt}: no model.safetensors or adapter_model.safetensors")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = lm.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k} if lm.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"{ckpt}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


HEAD_FILE = "jepa_head.safetensors"

EMA_FILE = "jepa_ema_target.safetensors"  # in checkpoints of --jepa_target ema runs


def _is_main_process() -> bool:
    """Rank 0 under torchrun (known before the Trainer initialises torch.distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_output_dir(cfg: StepJEPAConfig) -> str | None:
    """Refuse to mix runs; return the checkpoint to resume from (with --resume or
    --resume_from_checkpoint). Writes nothing, so a run that then fails on its data leaves the
    directory as it was."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output_dir {out} exists and is not a directory")
    if cfg.resume_from_checkpoint:
        return named_checkpoint(cfg)
    if not cfg.resume:
        _refuse_non_empty(cfg)
        return None
    ckpt = latest_checkpoint(out)
    if _is_main_process():
        logger.info(
            f"--resume: continuing from {ckpt}"
            if ckpt
            else f"--resume: no complete checkpoint in {out}; starting a fresh run"
        )
    return ckpt


def named_checkpoint(cfg: StepJEPAConfig) -> str:
    """--resume_from_checkpoint: exactly that checkpoint. Unlike --resume there is no fallback to
    an older one or to a fresh start: the user named this checkpoint, so a missing or damaged one
    is an error. One outside --output_dir starts a new run from it, which must not mix with
    another run's files."""
    ckpt = Path(cfg.resume_from_checkpoint)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {ckpt}: no such checkpoint directory")
    problems = checkpoint_problems(ckpt)
    if problems:
        raise ValueError(f"--resume_from_checkpoint {ckpt} is damaged or not a checkpoint: {'; '.join(problems)}")
    if ckpt.resolve().parent != Path(cfg.output_dir).resolve():
        _refuse_non_empty(cfg)
    if _is_main_process():
        logger.info(f"--resume_from_checkpoint: continuing from {ckpt}")
    return str(ckpt)


def _refuse_non_empty(cfg: StepJEPAConfig) -> None:
    out = Path(cfg.output_dir)
    # Under torchrun only rank 0 judges the directory: the others would see rank 0's first files.
    if _is_main_process() and out.exists() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        raise FileExistsError(
            f"{out} is not empty (another run?). Use --resume to continue it, --overwrite_output_dir to "
            "write into it anyway, or choose another --output_dir."
        )


def prepare_output_dir(cfg: StepJEPAConfig, ckpt: str | None) -> None:
    """Create the output dir and make metrics.jsonl describe this run: a fresh run starts it
    anew; a resumed run drops the lines logged after the checkpoint (those steps are redone and
    logged again, and would otherwise appear twice)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not _is_main_process():
        return
    for stale in out.glob(f"{STAGING_PREFIX}-*"):  # a save interrupted by a kill
        shutil.rmtree(stale, ignore_errors=True)
    metrics = out / "metrics.jsonl"
    if ckpt is None:
        metrics.unlink(missing_ok=True)
    elif metrics.exists():
        step = json.loads((Path(ckpt) / TRAINER_STATE_NAME).read_text())["global_step"]
        keep = [line for line in metrics.read_text().splitlines(keepends=True) if _logged_step(line) <= step]
        metrics.write_text("".join(keep))


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a line cut by the kill: drop it


def checkpoint_problems(ckpt: Path) -> list[str]:
    """Why `ckpt` cannot be resumed from (empty list: it looks complete).

    Cheap structural checks that catch a kill or a full disk mid-save: required files exist,
    trainer_state.json parses, safetensors headers parse and cover the file, and torch pickles
    (zip archives) still have their central directory, which is written last.
    """
    problems: list[str] = []
    try:
        json.loads((ckpt / TRAINER_STATE_NAME).read_text())["global_step"]
    except FileNotFoundError:
        problems.append(f"{TRAINER_STATE_NAME} missing")
    except (ValueError, KeyError, TypeError):
        problems.append(f"{TRAINER_STATE_NAME} unreadable")
    problems += _weights_problems(ckpt)
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME):
        if not (ckpt / name).exists():
            problems.append(f"{name} missing")
        elif not zipfile.is_zipfile(ckpt / name):
            problems.append(f"{name} truncated or corrupt")
    rng = sorted(ckpt.glob("rng_state*.pth"))
    if not rng:
        problems.append("rng_state.pth missing")
    problems += [f"{f.name} truncated or corrupt" for f in rng if not zipfile.is_zipfile(f)]
    return problems


def _weights_problems(ckpt: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    files = sorted(ckpt.glob("adapter_model.safetensors")) or sorted(ckpt.glob("model*.safetensors"))
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            return [f"{index.name} unreadable"]
        missing = sorted(s for s in shards if not (ckpt / s).exists())
        if missing:
            return [f"weight shard(s) missing: {', '.join(missing)}"]
    if not files:
        return ["no model.safetensors or adapter_model.safetensors"]
    problems = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:  # checks the header covers the file
                st.keys()
        except (SafetensorError, OSError) as e:
            problems.append(f"{f.name} truncated or corrupt ({str(e).splitlines()[0][:80]})")
    return problems


def latest_checkpoint(out: Path) -> str | None:
    """The newest checkpoint-N in `out` that passes `checkpoint_problems`; damaged ones are
    reported and skipped in favour of the previous one."""
    out = Path(out)
    if not out.is_dir():
        return None
    for ckpt in reversed(sort_checkpoints(str(out), use_mtime=False)):
        if not _CHECKPOINT_RE.match(Path(ckpt).name):
            continue  # checkpoint-* globbing also matches names like checkpoint-3-backup
        problems = checkpoint_problems(Path(ckpt))
        if not problems:
            return ckpt
        logger.warning(f"{ckpt} is damaged ({'; '.join(problems)}); skipping it")
    return None
