"""StepJEPATrainer (a transformers.Trainer) and `run_train`, the body of `step-jepa train`.

The Trainer gives us DDP/FSDP through accelerate, gradient accumulation, schedulers, checkpoint
rotation and resume; this module adds the Step-JEPA loss, per-token LM normalisation across
accumulation and ranks, the collapse monitor, non-finite-loss skipping and saving the inner model.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from .config import TrainConfig, format_config, save_config
from .layout import StepJEPACollator
from .losses import view_diagnostics
from .modeling import add_predictor_tokens, load_tokenizer, resolve_model_path
from .objective import JEPAOptions, StepJEPAModel
from .segment import Segmented, SegmentError, segment


class NonFiniteLossError(RuntimeError):
    """Raised after --max_nonfinite_steps consecutive steps with a NaN/inf loss."""


class ListDataset(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


# --------------------------------------------------------------------------- data


def load_training_records(cfg: TrainConfig) -> tuple[list[dict], dict[str, Any]]:
    """Records from --train_file (strict by default: the first bad line is an error naming file:line),
    or from the built-in generator when no file is given."""
    from .data import load_records
    from .generator import generate_problems

    if cfg.train_file is None:
        recs = generate_problems(cfg.generate_examples, seed=cfg.seed)
        report = {"source": f"generator ({cfg.generate_examples} problems, seed {cfg.seed})", "lines_read": len(recs)}
    else:
        recs, rep = load_records(cfg.train_file, skip_invalid=cfg.skip_invalid)
        report = {"source": cfg.train_file, **rep.to_dict()}
    if cfg.system_prompt is not None:
        for r in recs:
            r["messages"] = [{"role": "system", "content": cfg.system_prompt}] + [
                m for m in r["messages"] if m["role"] != "system"]
    return recs, report


def segment_all(records: list[dict], tokenizer, max_length: int) -> tuple[list[Segmented], dict[str, Any]]:
    """Tokenize every record; unusable ones are counted per reason and reported, never dropped silently."""
    out: list[Segmented] = []
    skipped: Counter = Counter()
    for r in records:
        try:
            out.append(segment(r, tokenizer, max_length))
        except SegmentError as e:
            skipped[e.reason] += 1
    stats = {
        "examples": len(out),
        "skipped": dict(skipped),
        "truncated": sum(ex.truncated for ex in out),
        "without_valid_pair": sum(not ex.valid_pairs() for ex in out),
        "first_pair_invalid": sum(0 not in ex.valid_pairs() for ex in out),
        "mean_tokens": round(sum(len(ex.input_ids) for ex in out) / max(1, len(out)), 1),
    }
    if not out:
        raise ValueError(f"no usable training example (skipped: {dict(skipped)})")
    return out, stats


def pack_groups(examples: list[Segmented], budget: int, extra: int, seed: int) -> list[list[Segmented]]:
    """Groups of examples whose tokens (plus the JEPA extras) fit one batch budget, in a seeded order."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    groups: list[list[Segmented]] = []
    cur: list[Segmented] = []
    used = 0
    for i in order:
        n = len(examples[i].input_ids) + extra
        if cur and used + n > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(examples[i])
        used += n
    if cur:
        groups.append(cur)
    return groups


# --------------------------------------------------------------------------- model


def resolve_attn_implementation(cfg: TrainConfig) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    # FlexAttention has no backward on CPU; a dense boolean mask is exact there.
    return "flex_attention" if torch.cuda.is_available() and cfg.lbd > 0 else "sdpa"


def build_model(cfg: TrainConfig):
    """Load the LM and tokenizer, add predictor tokens, and apply LoRA if asked."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path)
    lm = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=resolve_attn_implementation(cfg))
    pred_ids = add_predictor_tokens(lm, tok, cfg.predictors) if cfg.lbd > 0 else []
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
        lcfg = LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
            task_type="CAUSAL_LM",
            # Predictor embeddings are new: they must be trained (and saved) even under LoRA.
            trainable_token_indices={"embed_tokens": pred_ids} if pred_ids else None,
        )
        lm = get_peft_model(lm, lcfg)
    return lm, tok, pred_ids, path


# --------------------------------------------------------------------------- trainer


class StepJEPATrainer(Trainer):
    """Trainer whose loss is γ·L_LM + λ·L_JEPA.

    L_LM is a per-token mean over every labelled token of the optimizer step (all micro-batches
    and ranks), so gradient accumulation and DDP give the gradient of one large batch.
    L_JEPA is the mean over valid pairs of each micro-batch, averaged over micro-batches.
    """

    def __init__(self, *args, step_config: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_config = step_config
        self.model_accepts_loss_kwargs = True  # we normalise for accumulation ourselves
        self._acc: dict[str, float] = defaultdict(float)
        self._t0 = time.perf_counter()
        self._nonfinite_run = 0
        self._skip_step = False

    # ---- token counting across accumulation and ranks
    def get_batch_samples(self, *args, **kwargs):
        batch_samples, _ = super().get_batch_samples(*args, **kwargs)
        n = sum(int((b["lm_targets"] != -100).sum()) for b in batch_samples)
        n = torch.tensor(n, device=self.args.device)
        if self.args.world_size > 1:
            n = self.accelerator.gather(n).sum()
        return batch_samples, n

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        cfg = self.step_config
        n_tokens = num_items_in_batch if num_items_in_batch is not None else out["n_tokens"].clamp(min=1)
        world = self.args.world_size if num_items_in_batch is not None else 1
        ga = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        lm = out["lm_sum"] / n_tokens.clamp(min=1) * world
        loss = cfg.gamma * lm
        if cfg.lbd > 0:
            loss = loss + cfg.lbd * out["jepa"] / (ga if num_items_in_batch is not None else 1)
        if model.training:
            self._record(inputs, out)
        return (loss, out) if return_outputs else loss

    def _record(self, inputs: dict, out: dict) -> None:
        a = self._acc
        a["lm_sum"] += out["lm_sum"].item()
        a["lm_tokens"] += out["n_tokens"].item()
        a["micro"] += 1
        a["examples"] += inputs["n_examples"].item()
        a["with_pair"] += inputs["n_with_pair"].item()
        a["nonpad_tokens"] += (inputs["role"] != 0).sum().item()
        if "view1" in out:
            a["jepa_sum"] += out["jepa"].item()
            a["jepa_n"] += 1
            for k, v in view_diagnostics(out["view1"], out["view2"]).items():
                a[f"d_{k}"] += v
                a[f"n_{k}"] += 1

    # ---- non-finite losses: skip the optimizer step, stop after too many in a row
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            self._skip_step = True
        return loss

    def create_optimizer(self, *args, **kwargs):
        opt = super().create_optimizer(*args, **kwargs)
        inner_step = opt.step

        def guarded_step(*a, **kw):
            skip = torch.tensor(float(self._skip_step), device=self.args.device)
            if self.args.world_size > 1:
                skip = self.accelerator.reduce(skip, reduction="sum")  # every rank skips together
            self._skip_step = False
            if skip.item() > 0:
                self._nonfinite_run += 1
                self._acc["skipped_steps"] += 1
                print(f"[step-jepa] non-finite loss at step {self.state.global_step + 1}: optimizer step skipped "
                      f"({self._nonfinite_run}/{self.step_config.max_nonfinite_steps} in a row)", flush=True)
                if self._nonfinite_run >= self.step_config.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{self._nonfinite_run} consecutive non-finite losses: stopping. Lower --learning_rate, "
                        "check the data, or use --bf16 false.")
                return None
            self._nonfinite_run = 0
            return inner_step(*a, **kw)

        opt.step = guarded_step
        return opt

    # ---- logging
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._acc["micro"] > 0:
            a = self._acc
            dt = time.perf_counter() - self._t0
            logs["lm_loss"] = a["lm_sum"] / max(a["lm_tokens"], 1)
            if a["jepa_n"]:
                logs["jepa_loss"] = a["jepa_sum"] / a["jepa_n"]
            logs["valid_pair_frac"] = a["with_pair"] / max(a["examples"], 1)
            for k in [k[2:] for k in a if k.startswith("d_")]:
                logs[k] = a[f"d_{k}"] / a[f"n_{k}"]
            logs["tokens_per_s"] = a["nonpad_tokens"] / max(dt, 1e-9)
            logs["skipped_steps"] = a["skipped_steps"]
            if torch.cuda.is_available():
                logs["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            self._acc = defaultdict(float)
            self._t0 = time.perf_counter()
        super().log(logs, *args, **kwargs)

    # ---- saving the inner HF model (loadable with from_pretrained / PeftModel.from_pretrained)
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        lm = self.accelerator.unwrap_model(self.model).lm
        lm.save_pretrained(output_dir, safe_serialization=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        save_config(self.step_config, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_lm_weights(self.accelerator.unwrap_model(self.model).lm, resume_from_checkpoint)


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
        raise RuntimeError(f"{ckpt}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {unexpected[:5]})")


class MetricsFileCallback(TrainerCallback):
    """Appends every log record (with its step) to output_dir/metrics.jsonl on the main process."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            rec = {"step": state.global_step, "epoch": state.epoch, **logs}
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


# --------------------------------------------------------------------------- entry point


def training_arguments(cfg: TrainConfig, n_examples: int) -> TrainingArguments:
    report = [] if cfg.report_to in ("none", "") else cfg.report_to.split(",")
    bs = 1 if cfg.packing else cfg.per_device_train_batch_size
    return TrainingArguments(
        output_dir=cfg.output_dir, learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=bs,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, logging_first_step=True, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, report_to=report, remove_unused_columns=False,
        dataloader_num_workers=cfg.dataloader_num_workers, disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )


def prepare_output_dir(cfg: TrainConfig) -> str | None:
    """Refuse to mix runs; return the checkpoint to resume from (with --resume)."""
    out = Path(cfg.output_dir)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if out.exists() and any(out.iterdir()) and not (cfg.resume or cfg.overwrite_output_dir):
        raise FileExistsError(
            f"{out} is not empty (another run?). Use --resume to continue it, --overwrite_output_dir to "
            "write into it anyway, or choose another --output_dir.")
    out.mkdir(parents=True, exist_ok=True)
    return ckpt


def latest_checkpoint(out: Path) -> str | None:
    """The newest checkpoint-N dir that holds weights and trainer state."""
    from transformers.trainer_utils import get_last_checkpoint

    if not out.is_dir():
        return None
    return get_last_checkpoint(str(out))


def build_collator(cfg: TrainConfig, tok, pred_ids: list[int], attn: str) -> StepJEPACollator:
    mode = "sft" if cfg.lbd == 0 else cfg.jepa_mode
    return StepJEPACollator(
        pad_id=tok.pad_token_id, pred_ids=pred_ids, mode=mode, pairs=cfg.pairs, packing=cfg.packing,
        max_tokens=cfg.max_tokens_per_batch, pad_multiple=128 if attn == "flex_attention" else 1,
        seed=cfg.seed, jepa_ratio=cfg.jepa_ratio,
    )


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """The whole `step-jepa train`: data, model, trainer, final save. Returns a summary."""
    from transformers import set_seed

    resume_ckpt = prepare_output_dir(cfg)
    set_seed(cfg.seed)
    print("[step-jepa] resolved config:\n" + format_config(cfg), flush=True)
    save_config(cfg, cfg.output_dir)
    lm, tok, pred_ids, model_path = build_model(cfg)
    records, data_report = load_training_records(cfg)
    examples, seg_stats = segment_all(records, tok, cfg.max_length)
    print(f"[step-jepa] model: {model_path}\n[step-jepa] data: {json.dumps(data_report)[:600]}\n"
          f"[step-jepa] segmentation: {json.dumps(seg_stats)}", flush=True)
    (Path(cfg.output_dir) / "data_report.json").write_text(json.dumps({"data": data_report, "segmentation": seg_stats}, indent=1))
    attn = resolve_attn_implementation(cfg)
    if cfg.packing:
        extra = cfg.predictors + 64 if cfg.lbd > 0 else 0
        dataset = ListDataset(pack_groups(examples, cfg.max_tokens_per_batch, extra, cfg.seed))
    else:
        dataset = ListDataset(examples)
    collator = build_collator(cfg, tok, pred_ids, attn)
    model = StepJEPAModel(lm, JEPAOptions(lbd=cfg.lbd, gamma=cfg.gamma, loss=cfg.jepa_loss,
                                          temperature=cfg.jepa_temperature))
    if cfg.debug:
        print_debug_batch(collator([dataset[i] for i in range(min(2, len(dataset)))]))
    trainer = StepJEPATrainer(
        model=model, args=training_arguments(cfg, len(examples)), train_dataset=dataset, data_collator=collator,
        processing_class=tok, step_config=cfg, callbacks=[MetricsFileCallback(Path(cfg.output_dir) / "metrics.jsonl")],
    )
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_ckpt)
    seconds = time.perf_counter() - t0
    final_dir = Path(cfg.output_dir) / "final"
    trainer.save_model(str(final_dir))
    if cfg.lora and cfg.merge and trainer.is_world_process_zero():
        merged = trainer.accelerator.unwrap_model(trainer.model).lm.merge_and_unload()
        merged.save_pretrained(Path(cfg.output_dir) / "merged")
        tok.save_pretrained(Path(cfg.output_dir) / "merged")
    summary = {"global_step": trainer.state.global_step, "train_seconds": round(seconds, 2),
               "train_loss": result.training_loss, "final_dir": str(final_dir), "model": model_path,
               "examples": len(examples), "segmentation": seg_stats}
    if trainer.is_world_process_zero():
        (Path(cfg.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=1))
        print(f"[step-jepa] done: {json.dumps(summary)[:400]}", flush=True)
    return summary


def print_debug_batch(batch: dict[str, Any]) -> None:
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            print(f"[debug] {k}: {tuple(v.shape)} {v.dtype}")
