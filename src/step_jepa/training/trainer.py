"""StepJEPATrainer (a transformers.Trainer) and `run_train`, the body of `step-jepa train`.

The Trainer gives us DDP through accelerate, gradient accumulation, schedulers, checkpoint
rotation and resume; this module adds the Step-JEPA loss, per-token LM normalisation across
accumulation and ranks, the collapse monitor, non-finite-loss skipping and saving the inner model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from step_jepa.data.logs import get_logger, set_level
from step_jepa.data.segment import Segmented
from step_jepa.method.losses import view_diagnostics
from step_jepa.method.model import StepJEPAModel, step_jepa_loss
from step_jepa.method.options import JEPAOptions
from step_jepa.models.environment import device_name, utc_timestamp, versions
from step_jepa.models.sources import weights_source

# Run directories/checkpoints and training data live in their own modules; their names are
# imported here too, so `from step_jepa.training.trainer import ...` keeps working.
from step_jepa.training.checkpoints import (
    EMA_FILE,
    HEAD_FILE,
    STAGING_PREFIX,
    _is_main_process,
    check_output_dir,
    load_lm_weights,
    prepare_output_dir,
    publish_checkpoint,
)
from step_jepa.training.config import StepJEPAConfig, format_config, save_config
from step_jepa.training.data import (
    build_collator,
    check_pair_coverage,
    format_data_report,
    load_eval_examples,
    load_training_records,
    make_dataset,
    segment_all,
)
from step_jepa.training.integration import StepJEPACallback

# Model construction lives in modeling; imported here too for `from step_jepa.training.trainer import build_model`.
from step_jepa.training.model import build_model, finalize_adapter, resolve_attn_implementation
from step_jepa.training.model_card import push_final, write_model_card

logger = get_logger(__name__)


# Beside each checkpoint's trainer_state.json: the sum of the training losses of its steps, so the
# train_loss of a resumed run covers the whole run (Hugging Face's covers only the resumed steps).
LOSS_FILE = "step_jepa_loss.json"


class NonFiniteLossError(RuntimeError, ValueError):
    """Raised after --max_nonfinite_steps consecutive steps with a NaN/inf loss or gradient.

    Also a ValueError so that `step-jepa train` reports it as one line with exit code 2 (the CLI
    treats ValueErrors as problems the user fixes: learning rate, data, precision), not a traceback.
    """


class StepJEPATrainer(Trainer):
    """Trainer whose loss is γ·L_LM + λ·L_JEPA.

    L_LM is a per-token mean over every labelled token of the optimizer step (all micro-batches
    and ranks), so gradient accumulation and DDP give the gradient of one large batch.
    L_JEPA is the mean over valid pairs of each micro-batch, averaged over micro-batches.
    """

    def __init__(self, *args, step_config: StepJEPAConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_config = step_config
        self.model_accepts_loss_kwargs = True  # we normalise for accumulation ourselves
        self._acc: dict[str, float] = defaultdict(float)
        self._t0 = time.perf_counter()
        self._nonfinite_run = 0
        self._nonfinite_loss: torch.Tensor | None = None
        self._staging_root: str | None = None
        # (Σ step losses, steps) of the run before the checkpoint this process resumed from.
        self._prior_loss: tuple[float, int] = (0.0, 0)
        self._resumed_at = 0  # global step of the checkpoint this process resumed from

    # ---- token counting across accumulation and ranks
    def get_batch_samples(self, *args, **kwargs):
        batch_samples, _ = super().get_batch_samples(*args, **kwargs)
        n = sum(b["lm_index"].numel() for b in batch_samples)  # collated on the CPU: no device sync
        n = torch.tensor(n, device=self.args.device)
        if self.args.world_size > 1:
            n = self.accelerator.gather(n).sum()
        return batch_samples, n

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        ga = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        loss = step_jepa_loss(
            out,
            self.jepa_options,
            self.state.global_step,
            self.state.max_steps,
            num_items_in_batch,
            ga,
            self.args.world_size,
        )
        if model.training:
            self._record(inputs, out)
        return (loss, out) if return_outputs else loss

    @property
    def jepa_options(self) -> JEPAOptions:
        """The wrapped model's options (the StepJEPAConfig it was built with, in `run_train`)."""
        return self.accelerator.unwrap_model(self.model).options

    def _record(self, inputs: dict, out: dict) -> None:
        """Accumulate logging statistics without syncing: device tensors are read once per log."""
        a = self._acc
        a["lm_sum"] = a["lm_sum"] + out["lm_sum"].detach()
        a["lm_tokens"] += out["n_tokens"]
        a["micro"] += 1
        a["examples"] += inputs["n_examples"]
        a["jepa_examples"] += inputs["n_jepa_examples"]
        a["with_pair"] += inputs["n_with_pair"]
        a["nonpad_tokens"] += inputs["n_nonpad"]
        a["stp_examples"] += inputs.get("n_stp", 0)
        if inputs.get("n_stp"):
            a["stp_sum"] = a["stp_sum"] + out["stp"].detach()
            a["stp_n"] += 1
        if "view1" in out:
            a["jepa_sum"] = a["jepa_sum"] + out["jepa"].detach()
            a["jepa_n"] += 1
            for k, v in view_diagnostics(out["view1"], out["view2"]).items():
                a[f"d_{k}"] = a[f"d_{k}"] + v
                a[f"n_{k}"] += 1

    # ---- non-finite losses: skip the optimizer step, stop after too many in a row
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Kept as a device tensor (no sync here); read once per optimizer step in `_guarded_step`.
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite_loss = bad if self._nonfinite_loss is None else self._nonfinite_loss | bad
        return loss

    def create_optimizer(self, *args, **kwargs):
        """Wrap `optimizer.step` of the raw optimizer: accelerate's AcceleratedOptimizer and the LR
        scheduler both call through it, and the Trainer offers no public hook that can veto a step."""
        opt = super().create_optimizer(*args, **kwargs)
        if not getattr(opt, "_step_jepa_guarded", False):  # create_optimizer may be called again
            inner_step = opt.step
            opt.step = lambda *a, **kw: self._guarded_step(opt, inner_step, *a, **kw)
            opt._step_jepa_guarded = True
        return opt

    def _guarded_step(self, opt: torch.optim.Optimizer, inner_step, *args, **kwargs):
        """Skip the update when any rank saw a non-finite loss or gradient this step.

        Gradients are checked too: the Trainer has already clipped them, and clipping NaN
        gradients (or a finite loss with an overflowing backward) spreads NaN to every parameter.
        Skipping means the inner step never runs, so weights and Adam moments/step counts are
        untouched, and the gradients are dropped so they cannot leak into the next step.
        """
        params = [p for g in opt.param_groups for p in g["params"]]
        bad = ~grads_finite(params)
        if self._nonfinite_loss is not None:
            bad = bad | self._nonfinite_loss.to(bad.device)
        self._nonfinite_loss = None
        if not any_rank(bad):
            self._nonfinite_run = 0
            return inner_step(*args, **kwargs)
        opt.zero_grad(set_to_none=True)
        self._nonfinite_run += 1
        self._acc["skipped_steps"] += 1
        limit = self.step_config.max_nonfinite_steps
        logger.warning(
            f"non-finite loss or gradient at step {self.state.global_step + 1}: optimizer step "
            f"skipped ({self._nonfinite_run}/{limit} in a row)"
        )
        if self._nonfinite_run >= limit:
            raise NonFiniteLossError(
                f"{self._nonfinite_run} consecutive optimizer steps with a non-finite loss or gradient "
                f"(last at step {self.state.global_step + 1}): stopping. Lower --learning_rate, check the data, "
                "or use --bf16 false; resume from the last checkpoint with --resume."
            )
        return None

    # ---- evaluation on --eval_file
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Held-out losses, normalised like training: LM per token over the whole eval set, JEPA per pair.

        The Trainer's evaluation loop averages one loss per batch, which weights a batch of short
        answers like one of long answers; summing lm_sum and n_tokens over all batches (and
        ranks) gives the per-token loss of the set, comparable across batch sizes and with
        lm_loss. Still reached through the Trainer's eval_strategy/eval_steps scheduling.
        """
        loader = self._eval_dataloader(eval_dataset)
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        was_training = model.training
        model.eval()
        # lm_sum, labelled tokens, Σ jepa·pairs, pairs, Σ stp·triplets, triplets: summed, then
        # reduced over ranks once.
        totals = torch.zeros(6, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for inputs in loader:
                n_stp = inputs.get("n_stp", 0)
                out = model(**self._prepare_inputs(inputs))
                pairs = out["view1"].shape[0] if "view1" in out else 0
                stp = out["stp"].detach().double() * n_stp if n_stp else totals.new_zeros(())
                totals += torch.stack(
                    [
                        out["lm_sum"].detach().double(),
                        totals.new_tensor(out["n_tokens"]),
                        out["jepa"].detach().double() * pairs,
                        totals.new_tensor(pairs),
                        stp,
                        totals.new_tensor(n_stp),
                    ]
                )
        model.train(was_training)
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        metrics = self._eval_metrics(totals.tolist(), metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _eval_dataloader(self, eval_dataset):
        """The Trainer's eval loader (sharded across ranks), collated with the eval collator:
        every batch computes the JEPA term (--jepa_ratio only thins training)."""
        train_collator = self.data_collator
        self.data_collator = getattr(self, "eval_collator", None) or train_collator
        try:
            return self.get_eval_dataloader(eval_dataset)  # the loader keeps the collator it was built with
        finally:
            self.data_collator = train_collator

    def _eval_metrics(self, totals: list[float], prefix: str) -> dict[str, float]:
        lm_sum, tokens, jepa_sum, pairs, stp_sum, triplets = totals
        cfg = self.step_config
        lm = lm_sum / max(tokens, 1.0)
        metrics = {f"{prefix}_lm_loss": lm, f"{prefix}_tokens": tokens}
        loss = cfg.gamma * lm
        if cfg.lbd > 0 and pairs:
            metrics[f"{prefix}_jepa_loss"] = jepa_sum / pairs
            metrics[f"{prefix}_pairs"] = pairs
            loss += self.jepa_options.lbd_at(self.state.global_step, self.state.max_steps) * jepa_sum / pairs
        if cfg.stp_lbd > 0 and triplets:
            metrics[f"{prefix}_stp_loss"] = stp_sum / triplets
            loss += cfg.stp_lbd * stp_sum / triplets
        metrics[f"{prefix}_loss"] = loss
        return metrics

    # ---- logging
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._acc["micro"] > 0:
            a = defaultdict(float, {k: float(v) for k, v in self._acc.items()})  # the one sync per log
            dt = time.perf_counter() - self._t0
            logs["lm_loss"] = a["lm_sum"] / max(a["lm_tokens"], 1)
            if a["jepa_n"]:
                logs["jepa_loss"] = a["jepa_sum"] / a["jepa_n"]
            if self.step_config.stp_lbd > 0:  # share of examples that had an STP triplet
                logs["stp_triplet_frac"] = a["stp_examples"] / max(a["examples"], 1)
            if a["stp_n"]:
                logs["stp_loss"] = a["stp_sum"] / a["stp_n"]
            if a["jepa_examples"]:  # share of a JEPA step's examples that contributed a pair
                logs["valid_pair_frac"] = a["with_pair"] / a["jepa_examples"]
            for k in [k[2:] for k in a if k.startswith("d_")]:
                logs[k] = a[f"d_{k}"] / a[f"n_{k}"]
            logs["tokens_per_s"] = a["nonpad_tokens"] / max(dt, 1e-9)
            if self.step_config.lbd > 0:
                logs["lbd"] = self.jepa_options.lbd_at(self.state.global_step, self.state.max_steps)
            logs["skipped_steps"] = a["skipped_steps"]
            if torch.cuda.is_available():
                logs["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            else:  # the process's peak resident set (Linux reports KiB)
                import resource

                logs["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            self._acc = defaultdict(float)
            self._t0 = time.perf_counter()
        super().log(logs, *args, **kwargs)

    # ---- --push_to_hub: run_train pushes final/ with its model card once training is done; the
    # Trainer's own pushes (a repo created before training, every checkpoint uploaded) are off.
    def init_hf_repo(self, *args, **kwargs) -> None:
        self.hub_model_id = None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        pass

    # ---- saving the inner HF model (loadable with from_pretrained / PeftModel.from_pretrained)
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        wrapper = self.accelerator.unwrap_model(self.model)
        kw = {"save_embedding_layers": False} if hasattr(wrapper.lm, "peft_config") else {}  # see apply_lora
        head_state = wrapper.head.state_dict() if wrapper.head is not None else None
        if state_dict is not None:
            # A state dict gathered by the Trainer (FSDP full state dict, DeepSpeed zero-3) is the
            # wrapper's: the LM's keys under "lm.", the predictor head's under "head.".
            kw["state_dict"] = {k[3:]: v for k, v in state_dict.items() if k.startswith("lm.")}
            if head_state is not None:
                head_state = {k[5:]: v for k, v in state_dict.items() if k.startswith("head.")} or head_state
        wrapper.lm.save_pretrained(output_dir, safe_serialization=True, **kw)
        if head_state is not None:  # the predictor head is part of training only, kept beside the model
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in head_state.items()}, os.path.join(output_dir, HEAD_FILE))
        if wrapper._ema and getattr(self, "_staging_root", None) is not None:
            # Checkpoints only: resuming needs the target model, the final model does not.
            from safetensors.torch import (
                save_model,  # stores tied tensors (SmolLM2's embeddings) once
            )

            save_model(wrapper._ema[0], os.path.join(output_dir, EMA_FILE))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        save_config(self.step_config, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        wrapper = self.accelerator.unwrap_model(self.model)
        load_lm_weights(wrapper.lm, resume_from_checkpoint)
        if wrapper.head is not None:
            from safetensors.torch import load_file

            wrapper.head.load_state_dict(load_file(os.path.join(resume_from_checkpoint, HEAD_FILE)))
        if wrapper._ema:
            self._load_ema(wrapper, resume_from_checkpoint)
        state_file = Path(resume_from_checkpoint) / "trainer_state.json"
        if state_file.exists():
            self._resumed_at = int(json.loads(state_file.read_text()).get("global_step", 0))
        loss_file = Path(resume_from_checkpoint) / LOSS_FILE
        if loss_file.exists():  # absent in checkpoints of earlier versions: see run_loss
            saved = json.loads(loss_file.read_text())
            self._prior_loss = (float(saved["loss_sum"]), int(saved["steps"]))

    def run_loss(self, this_process_mean: float) -> tuple[float, int]:
        """(mean training loss, steps it covers): the whole run's, across resumes.

        This process's steps are summed from the Trainer's `_total_loss_scalar` (its own mean,
        `TrainOutput.training_loss`, divides that sum by this process's steps from transformers
        5.2x on, by the whole run's before: neither is the run's mean after a resume). The
        checkpoint we resumed from carries the loss sum of the steps before it (LOSS_FILE); without
        that file (a checkpoint of an earlier version) only this process's steps are known.
        """
        start = self._resumed_at
        steps = self.state.global_step - start
        total = getattr(self, "_total_loss_scalar", None)
        own = float(total) if total is not None else this_process_mean * steps
        prior_sum, prior_steps = self._prior_loss
        if prior_steps != start:
            return own / max(steps, 1), steps
        return (prior_sum + own) / max(self.state.global_step, 1), self.state.global_step

    def _write_loss_sum(self, ckpt_dir: str) -> None:
        """The loss sum of steps 1..global_step into a checkpoint, for `run_loss` after a resume."""
        tr_loss = getattr(self, "_tr_loss", None)  # the Trainer's un-logged loss sum (transformers >= 5.x)
        total_logged = getattr(self, "_total_loss_scalar", None)
        prior_sum, prior_steps = self._prior_loss
        if tr_loss is None or total_logged is None or prior_steps != self._resumed_at:
            return  # the sum would not cover the whole run: write none rather than a wrong one
        total = prior_sum + total_logged + float(tr_loss.item())
        Path(ckpt_dir, LOSS_FILE).write_text(json.dumps({"loss_sum": total, "steps": self.state.global_step}))

    @staticmethod
    def _load_ema(wrapper: StepJEPAModel, ckpt: str) -> None:
        """Restore the EMA target, so a resumed run continues the same average (not a fresh copy)."""
        from safetensors.torch import load_model  # re-ties what save_model stored once

        path = os.path.join(ckpt, EMA_FILE)
        if not os.path.exists(path):  # written by a version that did not save the target
            logger.warning(f"{ckpt} has no {EMA_FILE}; the EMA target restarts from the resumed weights")
            wrapper._ema[0].load_state_dict(wrapper.lm.state_dict())
            return
        ema = wrapper._ema[0]
        load_model(ema, path, device=str(next(ema.parameters()).device))

    # ---- atomic checkpoints: stage into .tmp-checkpoint-N, rename to checkpoint-N when complete
    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_root", None)
        return staging if staging is not None else super()._get_output_dir(trial=trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's own checkpoint writer, pointed at a staging directory, then published.

        Redirecting `_get_output_dir` (rather than copying `_save_checkpoint`) keeps whatever the
        installed transformers writes (weights, optimizer, scheduler, scaler, per-rank RNG,
        trainer_state.json). The Trainer's rotation then only sees the staging dir, so rotation
        of the real checkpoints runs here, after the rename.
        """
        run_dir = super()._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}-{self.state.global_step}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left over by a run killed while saving
        self.accelerator.wait_for_everyone()
        self._staging_root = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG/optimizer shard
        if self.args.should_save:
            self._write_loss_sum(os.path.join(staging, name))
            publish_checkpoint(Path(staging) / name, Path(run_dir) / name)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()  # nobody reads or rotates before the rename


def grads_finite(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """A 0-d bool tensor: True when every gradient is finite (one fused norm, no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total_norm is not None:
        norm = total_norm(grads, error_if_nonfinite=False)
    else:
        norm = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]).sum()
    if hasattr(norm, "full_tensor"):  # FSDP2 DTensor gradients: the norm of the whole tensor
        norm = norm.full_tensor()
    return torch.isfinite(norm)


def any_rank(flag: torch.Tensor) -> bool:
    """True when `flag` is set on any process, so every DDP rank takes the same decision (a
    rank that stepped while another skipped would silently desynchronise the replicas)."""
    flag = flag.to(torch.int32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class MetricsFileCallback(TrainerCallback):
    """Appends every log record (with its step) to output_dir/metrics.jsonl on the main process."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            rec = {"step": state.global_step, "epoch": state.epoch, **logs}
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


def run_train(cfg: StepJEPAConfig, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """The whole `step-jepa train`: data, model, trainer, final save. Returns a summary.

    Order matters for the user: `cfg` was validated when it was built (ours, then Hugging
    Face's checks of e.g. --lr_scheduler_type and --report_to), the output dir is checked, data
    and model are loaded and tokenized, the Trainer is constructed, and only then is anything
    written. So any bad value, --train_file or --model leaves the output dir as it was, and the
    corrected command can be rerun with the same --output_dir.
    """
    from transformers import set_seed

    set_level(cfg.process_log_level())  # --log_level on the main process, --log_level_replica on the others
    resume_ckpt = check_output_dir(cfg)
    args = cfg  # a StepJEPAConfig is a TrainingArguments, resolved in its __post_init__
    set_seed(cfg.seed)
    if _is_main_process():
        logger.info("resolved config:\n" + format_config(cfg))
    records, data_report = load_training_records(cfg)
    lm, tok, pred_ids, model_path = build_model(cfg)
    examples, seg_stats = segment_all(records, tok, cfg.max_length, cfg.view_boundary)
    logger.info(f"model: {model_path}\n{format_data_report(data_report, seg_stats)}")
    check_pair_coverage(cfg, seg_stats)
    eval_examples = load_eval_examples(cfg, tok)  # a bad --eval_file fails here, before anything is written
    trainer = build_trainer(cfg, args, lm, tok, pred_ids, examples, callbacks, eval_examples)
    write_run_start(cfg, resume_ckpt, {"data": data_report, "segmentation": seg_stats})
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_ckpt)
    seconds = time.perf_counter() - t0
    final_dir = Path(cfg.output_dir) / "final"
    trainer.save_model(str(final_dir), _internal_call=True)  # pushed below, with its model card
    if cfg.lora and trainer.is_world_process_zero():
        finalize_adapter(final_dir, trainer.accelerator.unwrap_model(trainer.model).lm, cfg, model_path)
    if cfg.lora and cfg.merge and trainer.is_world_process_zero():
        merged = trainer.accelerator.unwrap_model(trainer.model).lm.merge_and_unload()
        merged.save_pretrained(Path(cfg.output_dir) / "merged")
        tok.save_pretrained(Path(cfg.output_dir) / "merged")
    train_loss, loss_steps = trainer.run_loss(result.training_loss)
    summary = {
        "global_step": trainer.state.global_step,
        "train_seconds": round(seconds, 2),
        "train_loss": train_loss,
        "train_loss_steps": loss_steps,
        "final_dir": str(final_dir),
        "model": model_path,
        "examples": len(examples),
        "segmentation": seg_stats,
        "resumed_from": resume_ckpt,
        "device_name": device_name(trainer.args.device),
        "world_size": trainer.args.world_size,
        "versions": versions(),
        "finished_utc": utc_timestamp(),
    }
    if trainer.args.world_size > 1:
        write_rank_fingerprint(trainer, Path(cfg.output_dir))
    if trainer.is_world_process_zero():
        (Path(cfg.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=1))
        write_model_card(final_dir, cfg, summary, data_report, weights_source(cfg.model, model_path))
        logger.info(f"done: {json.dumps(summary)[:400]}")
        if cfg.push_to_hub:
            logger.info(f"pushed {final_dir} to {push_final(final_dir, cfg)}")
    return summary


def build_trainer(
    cfg: StepJEPAConfig,
    args: TrainingArguments,
    lm,
    tok,
    pred_ids: list[int],
    examples: list[Segmented],
    callbacks: list[TrainerCallback] | None,
    eval_examples: list[Segmented] | None = None,
) -> StepJEPATrainer:
    """Dataset, collator, Step-JEPA wrapper and Trainer; writes nothing (see run_train)."""
    attn = resolve_attn_implementation(cfg)
    dataset = make_dataset(examples, cfg)
    collator = build_collator(cfg, tok, pred_ids, attn)
    model = StepJEPAModel(lm, cfg)  # the config is a JEPAOptions
    if model._ema:
        callbacks = [StepJEPACallback(model), *(callbacks or [])]  # moves the EMA target after each step
    if cfg.debug_batch:
        print_debug_batch(collator([dataset[i] for i in range(min(2, len(dataset)))]))
    trainer = StepJEPATrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        eval_dataset=make_dataset(eval_examples, cfg) if eval_examples else None,
        processing_class=tok,
        step_config=cfg,
        callbacks=[MetricsFileCallback(Path(cfg.output_dir) / "metrics.jsonl"), *(callbacks or [])],
    )
    # Evaluation always computes the JEPA term (--jepa_ratio only thins it out in training). A
    # shallow copy, not dataclasses.replace: building a TrainingArguments resets accelerate's
    # state, which the Trainer just constructed holds.
    eval_cfg = copy.copy(cfg)
    eval_cfg.jepa_ratio = 1.0
    trainer.eval_collator = build_collator(eval_cfg, tok, pred_ids, attn)
    check_fsdp_applied(trainer)
    return trainer


def check_fsdp_applied(trainer: Trainer) -> None:
    """Fail when --fsdp was asked for but accelerate did not turn it on.

    accelerate switches to FSDP only for GPU-like backends: with CPU processes (gloo) it keeps
    the FSDP plugin unused and trains plain data parallel, every rank holding the whole model,
    without a word. A run that believes it is sharded but is not must not start.
    """
    from accelerate.utils import DistributedType

    dist_type = trainer.accelerator.distributed_type
    if trainer.args.fsdp_plugin_args is not None and dist_type != DistributedType.FSDP:
        raise ValueError(
            f"--fsdp was given, but accelerate set up {dist_type.value} on device {trainer.args.device.type}, "
            "not FSDP: it applies FSDP only on GPUs (CUDA and similar), never to CPU processes. "
            "Step-JEPA's FSDP is not supported or tested; drop --fsdp/--fsdp_config (on CPUs or "
            "GPUs, several processes train data parallel, which is the tested path)."
        )


def write_run_start(cfg: StepJEPAConfig, resume_ckpt: str | None, report: dict[str, Any]) -> None:
    """The run's first files: output dir, metrics.jsonl reset or trimmed, config and data report."""
    prepare_output_dir(cfg, resume_ckpt)
    if _is_main_process():
        save_config(cfg, cfg.output_dir)
        (Path(cfg.output_dir) / "data_report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters in a fixed order: equal fingerprints mean identical replicas."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def write_rank_fingerprint(trainer: Trainer, out: Path) -> None:
    """Each rank writes the fingerprint of its replica, so a DDP run can be checked for drift."""
    d = out / "rank_fingerprints"
    d.mkdir(parents=True, exist_ok=True)
    lm = trainer.accelerator.unwrap_model(trainer.model).lm
    (d / f"rank{trainer.args.process_index}.txt").write_text(weights_fingerprint(lm))


def print_debug_batch(batch: dict[str, Any]) -> None:
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            logger.info(f"debug batch: {k}: {tuple(v.shape)} {v.dtype}")
