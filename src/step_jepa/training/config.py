"""Run configuration: `StepJEPAConfig`, a `transformers.TrainingArguments` with the Step-JEPA fields.

Like TRL's `SFTConfig`, it extends `TrainingArguments`, so every Trainer option (`--fsdp`,
`--deepspeed`, `--optim`, ...) is a `step-jepa train` flag and YAML key and reaches the Trainer
unchanged; the subclass re-declares only the fields whose default or help differs from Hugging
Face's. Flags are built by `HfArgumentParser`'s field rules. Precedence: defaults <
`--config file.yaml` < flags on the command line.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from transformers import TrainingArguments

from step_jepa.method.options import JEPAOptions, option
from step_jepa.models.sources import DEFAULT_MODEL

# The parser and YAML helpers are shared with `step-jepa bench` (options); imported here too,
# so `from step_jepa.training.config import load_yaml, yaml_error_message` keeps working.
from step_jepa.training.options import (
    add_dataclass_arguments,
    field_default,
    non_none_type,
    plain,
    resolve_dataclass,
)

_f = option


_TRUE, _FALSE = ("1", "true", "yes", "y", "on"), ("0", "false", "no", "n", "off")


@dataclass
class StepJEPAConfig(JEPAOptions, TrainingArguments):
    """The options of `step-jepa train`: the method's (`JEPAOptions`, declared there), the run's,
    then TrainingArguments' (some with our defaults).

    `__post_init__` fills in what depends on our fields (batch size 1 under packing, warm-up
    from --warmup_ratio, eval strategy from --eval_file, ...), validates our ranges first (one
    clear line), then runs TrainingArguments' own checks and device setup, so an instance can be
    handed to any `Trainer`.
    """

    # data and model
    model: str = _f(DEFAULT_MODEL, "model name or local directory (offline: default SmolLM2 GGUF, or gemma3-270m)")
    train_file: str | None = _f(None, "prepared JSONL (or raw GSM8K/chat JSONL); default: built-in generator")
    dataset_name: str | None = _f(
        None,
        "training data from the Hugging Face Hub (TRL's name), e.g. openai/gsm8k, or a "
        "directory written by datasets' save_to_disk; converted like --train_file",
    )
    dataset_config: str | None = _f(None, "config of --dataset_name (default: main for gsm8k, else the dataset's own)")
    dataset_train_split: str = _f("train", "split of --dataset_name to train on")
    generate_examples: int = _f(
        256, "problems from the built-in generator when neither --train_file nor --dataset_name is given"
    )
    eval_file: str | None = _f(
        None,
        "held-out JSONL (same formats as --train_file): eval_loss, eval_lm_loss and "
        "eval_jepa_loss are logged every --eval_steps",
    )
    output_dir: str = _f("runs/step-jepa", "where checkpoints, metrics.jsonl and the final model go")
    max_length: int = _f(1024, "token limit per example; the answer is cut from the end, cut pairs are invalid")
    skip_invalid: bool = _f(False, "skip (and count) bad training lines instead of stopping at the first")
    system_prompt: str | None = _f(None, "override the system prompt of every record")
    packing: bool = _f(False, "padding-free packing of several examples per row, batches by token budget")
    max_tokens_per_batch: int = _f(8192, "token budget of one packed batch (with --packing)")
    packing_budget: str = _f(
        "all",
        "what the budget counts (with --packing): all (every token of the row, "
        "JEPA extras too) | examples (the examples' own tokens: a JEPA run gets "
        "the very batches and step count of the SFT run of its seed, rows grow "
        "by the extras)",
        choices=("all", "examples"),
    )
    attn_implementation: str = _f(
        "auto",
        "auto | sdpa | eager | flex_attention (auto: flex on CUDA when λ > 0, else sdpa)",
        choices=("auto", "sdpa", "eager", "flex_attention"),
    )
    # LoRA
    lora: bool = _f(False, "train a LoRA adapter instead of all weights")
    lora_rank: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    # 0 by default: with dropout PEFT keeps a dropped copy of the input of every adapted Linear for
    # backward, which on SmolLM2-135M cost more memory than full fine-tuning's optimizer state.
    lora_dropout: float = _f(
        0.0,
        "LoRA dropout (> 0 stores a dropped input copy per adapted layer: "
        "+0.9 MB/token on SmolLM2-135M, docs/performance.md)",
    )
    lora_targets: str = _f("all-linear", "comma-separated module names, or all-linear")
    merge: bool = _f(False, "with --lora, also save merged full weights under output_dir/merged")
    # optimisation (TrainingArguments names)
    learning_rate: float = _f(5e-5, "peak learning rate")
    num_train_epochs: float = _f(3.0, "epochs (ignored when --max_steps > 0)")
    max_steps: int = _f(-1, "total optimizer steps (overrides epochs when > 0)")
    per_device_train_batch_size: int = _f(8, "examples per device per micro-batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    warmup_ratio: float = _f(0.03, "fraction of steps of linear warm-up (ignored when --warmup_steps > 0)")
    lr_scheduler_type: str = _f("cosine", "HF scheduler name")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW β1")
    adam_beta2: float = _f(0.95, "AdamW β2")
    max_grad_norm: float = _f(1.0, "gradient clipping")
    bf16: bool = _f(False, "bf16 autocast (fp32 master weights)")
    torch_compile: bool = _f(
        False,
        "torch.compile the decoder (dynamic shapes; per layer, see "
        "--torch_compile_scope). A packed GSM8K epoch of SmolLM2 Step-JEPA on an H200: "
        "46 s compiled against 62 s eager, compile included (docs/performance.md). "
        "Hugging Face's whole-model compile: --torch_compile_backend/--torch_compile_mode",
    )
    torch_compile_scope: str = _f(
        "layers",
        "what --torch_compile compiles: each decoder layer (one graph shared by "
        "all layers, compiles ~30x less code) or the whole decoder stack",
        choices=("layers", "decoder"),
    )
    seed: int = _f(0, "seed for data order, pair sampling and initialisation")
    logging_steps: int = _f(10, "log every N optimizer steps (TensorBoard + metrics.jsonl)")
    eval_strategy: str | None = _f(
        None,
        "when to evaluate on --eval_file: no | steps | epoch (default: steps when --eval_file is given, else no)",
        choices=("no", "steps", "epoch"),
    )
    eval_steps: int | None = _f(None, "evaluate every N optimizer steps (default: --logging_steps)")
    save_steps: int = _f(500, "checkpoint every N steps")
    save_total_limit: int | None = _f(2, "keep at most N checkpoints")
    # `str` for the flag (one comma-separated value, as before); a YAML list is accepted too.
    report_to: str = _f("tensorboard", "tensorboard | none | wandb ... (comma-separated)")
    dataloader_num_workers: int = _f(0, "data loader worker processes")
    # TrainingArguments fields that our Trainer needs set otherwise than Hugging Face's default
    logging_first_step: bool = _f(True, "log the first optimizer step too")
    remove_unused_columns: bool = _f(
        False, "keep batch keys the model forward does not name (the step spans are needed; leave false)"
    )
    disable_tqdm: bool = _f(False, "hide the progress bar")
    per_device_eval_batch_size: int | None = _f(
        None, "examples per device per eval batch (default: the training batch size; 1 group with --packing)"
    )
    use_cpu: bool | None = _f(
        None,
        "train on the CPU (default: true when no CUDA device is visible; makes "
        "accelerate use gloo DDP under torchrun on CPU)",
    )
    ddp_find_unused_parameters: bool | None = _f(
        None,
        "DDP find_unused_parameters (default: true only for a "
        "predictor head with --jepa_ratio < 1, idle on some steps)",
    )
    # reliability
    resume: bool = _f(False, "resume from the latest complete checkpoint in output_dir")
    resume_from_checkpoint: str | None = _f(
        None,
        "resume from exactly this checkpoint dir (HF name; wins over --resume); an error if it is missing or damaged",
    )
    overwrite_output_dir: bool = _f(False, "allow writing into a non-empty output dir of another run")
    max_nonfinite_steps: int = _f(5, "stop after this many consecutive non-finite losses (each step is skipped)")
    debug_batch: bool = _f(False, "print the first batch's layout and shapes (also: --debug, --debug true)")
    # Hugging Face's `debug` (underflow_overflow | tpu_metrics_debug; a YAML list is accepted too).
    # `--debug` was our boolean: alone or with a boolean value it still means --debug_batch.
    debug: str = _f(
        "",
        "--debug or --debug true: --debug_batch; other values are Hugging Face's debug "
        "options (underflow_overflow, tpu_metrics_debug)",
        nargs="?",
        const="true",
    )

    validates_on_init = True  # __post_init__ runs validate(): resolve_dataclass need not

    def __post_init__(self) -> None:
        """Resolve our dependent defaults, check our ranges, then let TrainingArguments finish.

        The values as given (before any resolution) are kept in `_given`, so the saved config
        holds what the user asked for, not what this machine resolved it to (CPU, eval steps).
        """
        self._map_debug()
        self._map_gradient_checkpointing()
        # A deep copy: TrainingArguments fills dicts such as fsdp_config in place.
        self._given = copy.deepcopy({f.name: getattr(self, f.name) for f in fields(self) if f.init})
        self.validate()
        self._resolve()
        self._hf_post_init()

    def _hf_post_init(self) -> None:
        """TrainingArguments' own checks and device set-up, with our --torch_compile hidden.

        Ours compiles the decoder (dynamic shapes, in build_model); seen by Hugging Face it would
        also compile the whole wrapper through accelerate. Hugging Face's compile stays reachable:
        --torch_compile_backend / --torch_compile_mode turn it on, as in any HF script.
        """
        ours, self.torch_compile = self.torch_compile, False
        try:
            TrainingArguments.__post_init__(self)
        finally:
            self.torch_compile = ours

    def _map_debug(self) -> None:
        """`--debug` used to be our boolean flag; HF's `debug` is a list of options: keep both."""
        if isinstance(self.debug, bool) or (isinstance(self.debug, str) and self.debug.lower() in _TRUE + _FALSE):
            flag = self.debug if isinstance(self.debug, bool) else self.debug.lower() in _TRUE
            self.debug_batch = self.debug_batch or flag
            self.debug = ""

    def _map_gradient_checkpointing(self) -> None:
        """Drop a `gradient_checkpointing: false` that means "off", the default.

        Configs saved by earlier versions (step_jepa_config.yaml, compare's grids) hold it, and
        Hugging Face reads any value of this deprecated alias of --activation_checkpointing as the
        user asking for the old name: reloading such a config warned on every run. `true` (or
        `false` beside --activation_checkpointing) is left to Hugging Face, whose FutureWarning
        then tells the user who typed the old name to rename it.
        """
        if not hasattr(self, "activation_checkpointing"):  # transformers before the rename: nothing to map
            return
        if self.gradient_checkpointing is False and self.activation_checkpointing is None:
            self.gradient_checkpointing = None

    def process_log_level(self) -> int:
        """The `logging` level of this process's step_jepa messages, as Hugging Face chooses one:
        --log_level on the main process (info when passive, our default), --log_level_replica on
        the others (warning when passive), so N ranks do not print every line N times."""
        from transformers.training_args import trainer_log_levels  # {"debug": 10, ..., "passive": -1}

        main = self.should_log
        level = trainer_log_levels[self.log_level if main else self.log_level_replica]
        if level == -1:  # passive
            return logging.INFO if main else logging.WARNING
        return level

    def _resolve(self) -> None:
        """Trainer-facing values that follow from ours.

        Copy a built config with `copy.copy`, not `dataclasses.replace`: building another
        TrainingArguments resets accelerate's state, which a constructed Trainer holds.
        """
        import torch

        if self.packing:
            self.per_device_train_batch_size = 1  # a batch is one packed group
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio  # HF reads warm-up < 1 as a ratio
        self.eval_strategy = self.resolved_eval_strategy()
        self.report_to = _report_list(self.report_to)
        if self.data_seed is None:
            self.data_seed = self.seed
        if self.use_cpu is None:
            self.use_cpu = not torch.cuda.is_available()
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = self.jepa_predictor_head != "none" and self.jepa_ratio < 1

    def resolved_eval_strategy(self) -> str:
        """--eval_strategy with its default filled in: giving --eval_file is asking for evaluation."""
        if self.eval_strategy is not None:
            return getattr(self.eval_strategy, "value", self.eval_strategy)
        return "steps" if self.eval_file else "no"

    def saved_dict(self) -> dict[str, Any]:
        """What `step_jepa_config.yaml` holds: every Step-JEPA field, and the TrainingArguments
        fields given a value other than our default. Reloads with --config to the same run."""
        ours = own_fields(type(self))
        given = getattr(self, "_given", None) or {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        rest = [k for k in given if k not in ours and plain(given[k]) != plain(field_default(type(self), k))]
        return {k: plain(given[k]) for k in [*ours, *rest]}

    def validate(self) -> None:
        """Refuse values that would fail late or silently train something else than asked.

        Runs before any model or data is loaded and before anything is written, so a typo costs
        one line and a rerun, not a model load and an output dir that then refuses the rerun.
        The JEPA ranges are `JEPAOptions`' checks; `_checks` adds the run's.
        """
        super().validate()
        if (
            self.jepa_loss == "infonce"
            and self.lbd > 0
            and not self.packing
            and self.pairs != "all"
            and self.per_device_train_batch_size < 2
        ):
            # One pair per micro-batch has no negatives: InfoNCE is identically 0 and trains nothing.
            raise ValueError(
                "--jepa_loss infonce needs several pairs per micro-batch: use "
                "--per_device_train_batch_size >= 2, --packing or --pairs all"
            )

    def _checks(self) -> list[tuple[bool, str]]:
        """JEPAOptions' ranges, then the run's: (value is fine, message), "ok" conditions so NaN fails."""
        return [
            *super()._checks(),
            (self.max_length >= 8, "--max_length must be >= 8"),
            (
                self.train_file is None or self.dataset_name is None,
                "give --train_file or --dataset_name, not both (neither: the built-in generator)",
            ),
            (
                self.train_file is not None or self.dataset_name is not None or self.generate_examples >= 1,
                "--generate_examples must be >= 1",
            ),
            (
                self.eval_strategy in (None, "no") or bool(self.eval_file),
                f"--eval_strategy {self.eval_strategy} needs --eval_file",
            ),
            (self.eval_steps is None or self.eval_steps >= 1, "--eval_steps must be >= 1"),
            (self.max_tokens_per_batch >= 1, "--max_tokens_per_batch must be >= 1"),
            (
                self.lora_rank >= 1 and 0.0 <= self.lora_dropout < 1.0,
                "--lora_rank must be >= 1 and --lora_dropout in [0, 1)",
            ),
            (self.learning_rate > 0, f"--learning_rate must be > 0, got {self.learning_rate}"),
            (
                self.max_steps > 0 or self.num_train_epochs > 0,
                f"--num_train_epochs must be > 0 (or give --max_steps > 0), got {self.num_train_epochs}",
            ),
            (self.per_device_train_batch_size >= 1, "--per_device_train_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be >= 1"),
            # HF reads a warm-up >= 1 as a number of steps: a ratio of 1 would warm up for one step.
            (0.0 <= self.warmup_ratio < 1.0, f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.weight_decay >= 0, "--weight_decay must be >= 0"),
            (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0, "--adam_beta1/2 must be in [0, 1)"),
            (self.max_grad_norm >= 0, "--max_grad_norm must be >= 0 (0 = no clipping)"),
            (self.logging_steps >= 1 and self.save_steps >= 1, "--logging_steps and --save_steps must be >= 1"),
            (self.dataloader_num_workers >= 0, "--dataloader_num_workers must be >= 0"),
            (self.max_nonfinite_steps >= 1, "--max_nonfinite_steps must be >= 1"),
        ]


def own_fields(cls: type = StepJEPAConfig) -> list[str]:
    """Fields declared by our classes (the bases before TrainingArguments: JEPAOptions' first, then
    the run's), then the TrainingArguments fields whose default or help we change (dataclasses keep
    a re-declared field at its base position)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is TrainingArguments:
            break
        names |= set(vars(klass).get("__annotations__", {}))
    hf = {f.name for f in fields(TrainingArguments)}
    ordered = [f.name for f in fields(cls) if f.name in names]
    return [n for n in ordered if n not in hf] + [n for n in ordered if n in hf]


def _report_list(value: str | list[str] | None) -> list[str]:
    """`tensorboard,wandb`, a YAML list or "none" as the list the Trainer wants ("none" = [])."""
    items = [value] if isinstance(value, str) or value is None else list(value)
    names = [n.strip() for item in items if item for n in str(item).split(",") if n.strip()]
    return [n for n in names if n != "none"]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = StepJEPAConfig) -> None:
    """`step-jepa train`'s flags (see `options.add_dataclass_arguments`): every field, plus --config."""
    add_dataclass_arguments(parser, cls)


def resolve_config(args: argparse.Namespace, cls: type = StepJEPAConfig) -> Any:
    """Defaults < YAML overlay < flags, built (and so validated) as `cls`; see `options.resolve_dataclass`."""
    return resolve_dataclass(args, cls)


def config_dict(cfg: Any) -> dict[str, Any]:
    """The reloadable, readable form of a config (see StepJEPAConfig.saved_dict)."""
    return cfg.saved_dict() if hasattr(cfg, "saved_dict") else plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, output_dir: str | Path) -> Path:
    """Write the resolved configuration next to the run's outputs (YAML, reloadable with --config)."""
    path = Path(output_dir) / "step_jepa_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False, allow_unicode=True))
    return path


def format_config(cfg: Any) -> str:
    return json.dumps(config_dict(cfg), indent=1, ensure_ascii=False)


def options_markdown(cls: type = StepJEPAConfig) -> str:
    """The options table of docs/options.md, generated from the dataclass so it cannot drift.

    Lists the fields our class declares; the other TrainingArguments fields keep Hugging Face's
    defaults and help (`step-jepa train --help`), so they would only copy its documentation.
    """
    hints = get_type_hints(cls)
    rows = ["| flag | type | default | meaning |", "|---|---|---|---|"]
    for name in own_fields(cls):
        f = cls.__dataclass_fields__[name]
        tp = non_none_type(hints[f.name])
        text = f.metadata.get("help", "").replace("|", "\\|")  # help strings list choices as a | b
        rows.append(f"| `--{f.name}` | {getattr(tp, '__name__', str(tp))} | `{f.default}` | {text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(options_markdown(), end="")
