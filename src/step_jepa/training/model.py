"""The model a training run trains, built from its config: the LM and tokenizer loaded through
:mod:`step_jepa.models`, predictor tokens added, the --jepa_layer checked, LoRA applied, the
decoder compiled."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from step_jepa.models.loading import (
    add_predictor_tokens,
    compile_decoder,
    load_tokenizer,
)
from step_jepa.models.sources import resolve_model_path
from step_jepa.training.config import StepJEPAConfig


def resolve_attn_implementation(cfg: StepJEPAConfig) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    # FlexAttention has no backward on CPU; a dense boolean mask is exact there.
    return "flex_attention" if torch.cuda.is_available() and cfg.lbd > 0 else "sdpa"


def check_jepa_layer(layer: int | None, n_layers: int, model: str, flag: str = "--jepa_layer") -> None:
    """Refuse a --jepa_layer (or --jepa_target_layer) the model does not have before training
    starts; otherwise the first forward pass fails with a bare IndexError from inside the hook
    set-up. None (--jepa_target_layer unset) is always fine."""
    if layer is not None and not -n_layers <= layer < n_layers:
        raise ValueError(
            f"{flag} {layer}: {model} has {n_layers} decoder layers "
            f"(use 0 … {n_layers - 1}, or -1 … -{n_layers} from the top)"
        )


def build_model(cfg: StepJEPAConfig):
    """Load the LM and tokenizer, add predictor tokens, and apply LoRA if asked."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path)
    lm = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=resolve_attn_implementation(cfg)
    )
    check_jepa_layer(cfg.jepa_layer, len(lm.get_decoder().layers), path)
    check_jepa_layer(cfg.jepa_target_layer, len(lm.get_decoder().layers), path, "--jepa_target_layer")
    old_rows = lm.get_input_embeddings().weight.shape[0]
    pred_ids = add_predictor_tokens(lm, tok, cfg.predictors) if cfg.lbd > 0 or cfg.sft_predictor_tokens else []
    if cfg.lora:
        new_rows = sorted(set(pred_ids) | set(range(old_rows, lm.get_input_embeddings().weight.shape[0])))
        lm = apply_lora(lm, cfg, new_rows)
    if cfg.torch_compile:
        compile_decoder(lm, cfg.torch_compile_scope)
    return lm, tok, pred_ids, path


def apply_lora(lm, cfg: StepJEPAConfig, new_rows: list[int]):
    """Wrap `lm` in a LoRA PeftModel whose adapter alone restores the trained model.

    The rows added by the resize (the predictor tokens) exist in no base checkpoint, so they are
    PEFT *trainable tokens*: trained, and saved as K rows rather than the whole embedding. An
    untied LM head got a (randomly drawn, mean-resized) row for them too, so it is a trainable-
    tokens target as well; a tied head follows the embedding. `_save` then passes
    `save_embedding_layers=False`, which would otherwise default to saving both full matrices.
    """
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    tokens: dict[str, list[int]] | None = None
    if new_rows:
        tokens = {_module_leaf(lm, lm.get_input_embeddings()): new_rows}
        if not lm.config.get_text_config().tie_word_embeddings:
            tokens[_module_leaf(lm, lm.get_output_embeddings())] = new_rows
    lcfg = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        trainable_token_indices=tokens,
    )
    with warnings.catch_warnings():
        # PEFT (0.21) reads the model's `is_gradient_checkpointing`, a property transformers 5
        # deprecated: the FutureWarning is PEFT's, not the user's, and would open every --lora run.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft = get_peft_model(lm, lcfg)
    # PEFT records the resolved path (a hub cache snapshot, machine-specific); keep what the user
    # typed, so the adapter loads elsewhere. A local directory is made absolute for the same reason.
    local = Path(cfg.model).expanduser()
    peft.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.is_dir() else cfg.model
    return peft


def _module_leaf(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """The last component of `module`'s name in `root` (what PEFT matches target keys against)."""
    return next(name for name, m in root.named_modules() if m is module).rsplit(".", 1)[-1]


def finalize_adapter(final_dir: str | Path, lm, cfg: StepJEPAConfig, model_path: str) -> None:
    """Make a saved LoRA ``final/`` loadable by standard clients and record its base.

    Tied embeddings: PEFT's trainable tokens wrap the input embedding (and the tied head) on
    load, so ``model.embed_tokens.weight`` is no longer a parameter and transformers 5's
    ``tie_weights()`` (called by ``resize_token_embeddings``, ``device_map`` dispatch, ...) raises
    AttributeError (peft 0.21; untied models have nothing to tie). For a tied model the adapter
    therefore stores the resized input embedding itself (trained predictor rows included), the
    way PEFT saves a targeted embedding, and no trainable tokens: PEFT loads it into the base's
    own embedding, which the head stays tied to. It costs the embedding's size on disk (SmolLM2:
    49k × 576 fp32, 113 MB) against K rows; an untied model keeps the K-row form.

    The base: ``base_model_name_or_path`` is what the user passed (hub id or absolute local
    path), ``revision`` the hub commit when the weights came from a hub snapshot, and
    `BASE_RECORD` beside it says which weights were trained on (a dequantized GGUF copy: its
    path, source file and sha256), which `load_for_inference` checks. (PEFT warns "upgrade
    PEFT" on any key of adapter_config.json it does not know, so the record is a file of its own.)
    """
    import json

    from safetensors.torch import load_file, save_file

    from step_jepa.models.loading import BASE_RECORD
    from step_jepa.models.sources import weights_source

    final_dir = Path(final_dir)
    cfg_file = final_dir / "adapter_config.json"
    acfg = json.loads(cfg_file.read_text())
    source = weights_source(cfg.model, model_path)
    if source.get("kind") == "hub" and source.get("revision"):
        acfg["revision"] = source["revision"]
    tied = lm.config.get_text_config().tie_word_embeddings
    if tied and acfg.get("trainable_token_indices"):
        weights_file = final_dir / "adapter_model.safetensors"
        state = {k: v for k, v in load_file(weights_file).items() if "trainable_tokens_" not in k}
        base = lm.get_base_model()
        emb = base.get_input_embeddings()  # the TrainableTokensWrapper: .weight is the merged matrix
        name = next(n for n, m in base.named_modules() if m is emb)
        state[f"base_model.model.{name}.weight"] = emb.weight.detach().to("cpu").contiguous().clone()
        save_file(state, weights_file, metadata={"format": "pt"})
        acfg["trainable_token_indices"] = None
    cfg_file.write_text(json.dumps(acfg, indent=2, sort_keys=True))
    (final_dir / BASE_RECORD).write_text(json.dumps(source, indent=1))
