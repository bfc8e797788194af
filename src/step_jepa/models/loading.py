"""Loading a model for training or inference (its source is found by :mod:`.sources`), the
predictor tokens, and per-layer compilation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from step_jepa.models.sources import resolve_model_path, weights_source

BASE_RECORD = "step_jepa_base.json"  # beside an adapter: the weights it was trained on (see weights_source)


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


def load_model(
    name: str,
    *,
    dtype: torch.dtype | str | None = torch.float32,
    device: str | None = None,
    predictors: int = 0,
    **from_pretrained_kwargs,
):
    """(model, tokenizer) for `name`, resolved exactly as ``step-jepa train --model`` resolves it.

    `name` is a local directory, a hub id, or a known offline model (the default SmolLM2,
    ``gemma3-270m``): a converted copy in the cache is used first, an unreachable hub is given up
    on within seconds (`sources.hub_reachable`), and a model found nowhere raises `ModelNotFound`
    naming what was tried and what to do. The tokenizer is the fast one training needs, with a pad
    token. ``dtype`` defaults to fp32 (training keeps fp32 master weights); ``predictors=K`` also
    adds the K predictor tokens (`add_predictor_tokens`); other keyword arguments
    (``attn_implementation="sdpa"``, ...) go to ``AutoModelForCausalLM.from_pretrained``.
    For a trained ``final/`` (adapter or full model) to generate with, use `load_for_inference`.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype if dtype is not None else "auto", **from_pretrained_kwargs
    )
    if predictors:
        add_predictor_tokens(model, tok, predictors)
    if device:
        model.to(device)
    return model, tok


def check_adapter_base(adapter_dir: str | Path, base_path: str) -> None:
    """Warn when the weights an adapter is loaded onto are not those it was trained on (as recorded
    in its `BASE_RECORD`): a hub id can resolve to the hub's bf16 weights on one machine and to a
    dequantized GGUF on another, and the adapter then loads without error onto the wrong weights."""
    import warnings

    rec_file = Path(adapter_dir) / BASE_RECORD
    if not rec_file.exists():
        return
    trained = json.loads(rec_file.read_text())
    now = weights_source(trained.get("model", base_path), base_path)
    keys = (
        ("sha256", "source")
        if trained.get("kind") == "converted"
        else ("revision",)
        if trained.get("kind") == "hub"
        else ()
    )
    same_kind = trained.get("kind") == now.get("kind")
    differs = not same_kind or any(trained.get(k) != now.get(k) for k in keys)
    if trained.get("kind") == "local" and same_kind:
        differs = trained.get("path") != now.get("path")
    if differs:

        def describe(r: dict) -> str:
            return ", ".join(f"{k}={r[k]}" for k in ("kind", "path", "source", "sha256", "revision") if r.get(k))

        warnings.warn(
            f"{adapter_dir}: adapter trained on weights ({describe(trained)}), now loaded onto different "
            f"weights ({describe(now)}); its outputs will differ from the trained model's. Pass the "
            f"recorded path as the base to reproduce them.",
            stacklevel=3,
        )


def load_for_inference(name_or_path: str, dtype: torch.dtype | None = None, device: str | None = None):
    """Model + tokenizer for generation: a merged model dir, a LoRA adapter dir (merged on load),
    or any model name resolvable by `resolve_model_path`. An adapter loaded onto weights other
    than those it was trained on (its `BASE_RECORD`) warns."""
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
        base_path = resolve_model_path(base_name)
        check_adapter_base(path, base_path)
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype or "auto")
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
