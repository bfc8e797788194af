"""The model as training and evaluation use it: loading (its source is found by `sources`),
predictor tokens, compilation, LoRA, and the chunked LM loss that never builds [B, T, V] logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:  # the annotation only: build_model takes a config, it needs none of its code
    from .config import TrainConfig

from .sources import (  # noqa: F401 - re-exported: the model-loading API of this module
    DEFAULT_MODEL,
    OFFLINE_MODELS,
    ModelNotFound,
    OfflineModel,
    cache_dir,
    cached_model_dir,
    gguf_path,
    gguf_tokenizer,
    offline_model,
    resolve_model_path,
)


def predictor_tokens(k: int) -> list[str]:
    return [f"<|predictor_{i + 1}|>" for i in range(k)]


def add_predictor_tokens(model, tokenizer, k: int) -> list[int]:
    """Add K predictor tokens (reusing any already in the vocabulary) and size the embeddings.

    New rows start at the mean of the existing embeddings (HF's mean resizing), so predictors
    begin as 'an average token' rather than noise far from the data distribution.
    """
    names = predictor_tokens(k)
    vocab = tokenizer.get_vocab()
    missing = [t for t in names if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(names)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return ids


COMPILE_SCOPES = ("layers", "decoder")


def compile_decoder(lm, scope: str = "layers") -> nn.Module:
    """``torch.compile`` the decoder in place, with dynamic shapes; return the decoder.

    A profile of a packed step on an H100 showed about half of the GPU time in unfused elementwise
    kernels, with the host barely keeping up (docs/performance.md). Fusing them is what compilation
    is for. Only the decoder is compiled: the JEPA views, the chunked loss and the mask building
    stay eager, so they cause no graph breaks. ``nn.Module.compile`` works in place, so parameter
    names and checkpoints do not change. ``dynamic=True``: batches vary in length, and a static
    compile would recompile for each new shape.

    ``scope="layers"`` (the default) compiles each decoder layer instead of the whole stack: the
    layers share one code object and, with parameters traced as inputs, one graph, so dynamo and
    inductor work on one layer rather than thirty. For SmolLM2 on an H200 the whole-stack compile
    took ~2 minutes (warm cache), longer than an eager GSM8K epoch; per layer, the first step took
    23 s against 17 s eager (docs/performance.md). The per-layer graph loses only the fusions
    across layer boundaries. ``scope="decoder"`` compiles the whole stack.
    """
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope {scope!r}: choose from {', '.join(COMPILE_SCOPES)}")
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # a PEFT model wraps the LM
    decoder = base.get_decoder()
    if scope == "decoder":
        decoder.compile(dynamic=True)
    else:
        for layer in decoder.layers:
            layer.compile(dynamic=True)
    return decoder


def ensure_pad_token(tokenizer) -> None:
    """Models without a pad token pad with EOS; padded positions never carry a label."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer(path: str, tok=None):
    """The fast tokenizer at `path` (or `tok`, already loaded), set up the way training uses it."""
    from transformers import AutoTokenizer

    tok = tok if tok is not None else AutoTokenizer.from_pretrained(path)
    if not tok.is_fast:
        raise ValueError(f"{path}: a fast tokenizer is required (character offsets map steps to tokens)")
    ensure_pad_token(tok)
    tok.padding_side = "left"  # generation pads on the left; training builds its own rows
    return tok


def load_for_inference(name_or_path: str, dtype: torch.dtype | None = None, device: str | None = None):
    """Model + tokenizer for generation: a merged model dir, a LoRA adapter dir (merged on load),
    or any model name resolvable by `resolve_model_path`."""
    from transformers import AutoModelForCausalLM

    if dtype is None and (device or "").startswith("cuda") and torch.cuda.is_bf16_supported():
        # Training keeps fp32 master weights, so checkpoints are fp32; decoding in fp32 on a GPU
        # would only be slower. Pass dtype=torch.float32 to evaluate in full precision.
        dtype = torch.bfloat16
    path = resolve_model_path(name_or_path)
    adapter_cfg = Path(path) / "adapter_config.json"
    if adapter_cfg.exists():
        from peft import PeftModel

        base_name = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        tok = load_tokenizer(path)
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_name), dtype=dtype or "auto")
        if len(tok) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tok), mean_resizing=False)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    if device:
        model.to(device)
    model.eval()
    return model, tok


VOCAB_ALIGN = 64


def padded_head(lm_head: nn.Module, hidden_size: int, device: torch.device, align: int | None = None
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM head as a function, with the vocabulary padded to a multiple of ``align`` columns.

    Adding K predictor tokens makes the vocabulary odd (SmolLM2: 49,152 + 1), so the logits' row
    stride is misaligned. In a torch.profiler run of a packed step on an H100 (docs/performance.md),
    8 matmuls per step ran in old cutlass sm75 kernels at 1.5–2.1 ms each, about 14 ms of a 184 ms
    step. The LM head's odd width is the likely cause. The speed-up of this padding has not been
    timed yet. Zero weight rows are appended, and a bias of -inf keeps the extra columns out of the
    softmax, so the cross-entropy and every gradient are unchanged. Only a plain bias-free
    ``nn.Linear`` is padded; any other head (or a sharded weight) is returned as it is. ``align``
    defaults to 64 on CUDA, where the fallback was seen, and to no padding elsewhere, where it would
    only add columns. The padded weight is built once per call, so callers that apply the head to
    many chunks pay for it once.
    """
    if align is None:
        align = VOCAB_ALIGN if device.type == "cuda" else 1
    vocab = getattr(lm_head, "out_features", 0)
    if type(lm_head) is not nn.Linear or lm_head.bias is not None or vocab % align == 0:
        return lm_head
    if tuple(lm_head.weight.shape) != (vocab, hidden_size):  # e.g. a sharded (FSDP) weight
        return lm_head
    extra = align - vocab % align
    weight = F.pad(lm_head.weight, (0, 0, 0, extra))
    if torch.is_autocast_enabled(device.type):  # cast once here, not once per chunk (weight is no leaf)
        weight = weight.to(torch.get_autocast_dtype(device.type))
    bias = torch.zeros(vocab + extra, device=weight.device, dtype=weight.dtype)
    bias[vocab:] = float("-inf")
    return lambda h: F.linear(h, weight, bias)


def aligned_logits(h: torch.Tensor, lm_head: nn.Module, align: int | None = None) -> torch.Tensor:
    """``lm_head(h)`` through :func:`padded_head`: padded columns hold -inf."""
    return padded_head(lm_head, h.shape[-1], h.device, align)(h)


def chunked_lm_loss_sum(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                        chunk: int = 4096, align: int | None = None) -> torch.Tensor:
    """Sum of next-token cross-entropies over the labelled positions only.

    `hidden` is [N, H] for the N labelled positions. Each chunk's logits are recomputed in the
    backward pass (activation checkpointing), so memory stays at one chunk × vocab whatever N is.
    """
    head = padded_head(lm_head, hidden.shape[-1], hidden.device, align)

    def part(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s:s + chunk], targets[s:s + chunk]
        total = total + (checkpoint(part, h, y, use_reentrant=False) if torch.is_grad_enabled() else part(h, y))
    return total


# --------------------------------------------------------------------------- building a training model


def resolve_attn_implementation(cfg: TrainConfig) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    # FlexAttention has no backward on CPU; a dense boolean mask is exact there.
    return "flex_attention" if torch.cuda.is_available() and cfg.lbd > 0 else "sdpa"


def check_jepa_layer(layer: int, n_layers: int, model: str) -> None:
    """Refuse a --jepa_layer the model does not have before training starts; otherwise the first
    forward pass fails with a bare IndexError from inside the hook set-up."""
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"--jepa_layer {layer}: {model} has {n_layers} decoder layers "
                         f"(use 0 … {n_layers - 1}, or -1 … -{n_layers} from the top)")


def build_model(cfg: TrainConfig):
    """Load the LM and tokenizer, add predictor tokens, and apply LoRA if asked."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path)
    lm = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=resolve_attn_implementation(cfg))
    check_jepa_layer(cfg.jepa_layer, len(lm.get_decoder().layers), path)
    old_rows = lm.get_input_embeddings().weight.shape[0]
    pred_ids = add_predictor_tokens(lm, tok, cfg.predictors) if cfg.lbd > 0 or cfg.sft_predictor_tokens else []
    if cfg.lora:
        new_rows = sorted(set(pred_ids) | set(range(old_rows, lm.get_input_embeddings().weight.shape[0])))
        lm = apply_lora(lm, cfg, new_rows)
    if cfg.torch_compile:
        compile_decoder(lm, cfg.torch_compile_scope)
    return lm, tok, pred_ids, path


def apply_lora(lm, cfg: TrainConfig, new_rows: list[int]):
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
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        task_type="CAUSAL_LM", trainable_token_indices=tokens)
    peft = get_peft_model(lm, lcfg)
    # PEFT records the resolved path (a hub cache snapshot, machine-specific); keep what the user
    # typed, so the adapter loads elsewhere. A local directory is made absolute for the same reason.
    local = Path(cfg.model).expanduser()
    peft.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.is_dir() else cfg.model
    return peft


def _module_leaf(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """The last component of `module`'s name in `root` (what PEFT matches target keys against)."""
    return next(name for name, m in root.named_modules() if m is module).rsplit(".", 1)[-1]
