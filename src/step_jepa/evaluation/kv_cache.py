"""Two pieces that make a greedy decode step cost what it should: a slab KV cache and GQA decode attention.

Measured on an H100 with transformers 5.17 and SmolLM2-135M (9 query heads, 3 key/value heads), the
whole GSM8K test set decoded as one batch spent most of each step copying the cache, not computing:

* ``DynamicLayer.update`` concatenates the new token onto the cache, so every step copies every
  layer's keys and values (the whole cache, growing to tens of GB for 1,319 rows).
* transformers' SDPA wrapper, given an attention mask (left padding needs one), falls back from
  ``enable_gqa`` to ``repeat_kv`` and materialises the key/value heads ``groups`` times, every layer,
  every step.

:class:`SlabLayer` writes each new token into a buffer allocated once at full capacity (rows x (prompt +
max_new_tokens), the slots :func:`step_jepa.evaluation.decode.plan_batches` already budgets) and hands attention a
view.  :func:`grouped_decode_attention` reshapes a single query token's heads to
``[batch, kv_heads, groups, dim]`` so SDPA attends each key/value head once; prompt processing (more
than one query token) goes through transformers' own SDPA function unchanged.  Both give the same
tokens as ``model.generate`` (tested on CPU in fp32 against it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

DECODE_ATTENTION = "step_jepa_gqa_decode"


def _dynamic_layer_cls() -> type:
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class SlabLayer(_dynamic_layer_cls()):  # type: ignore[misc]
    """A full-attention cache layer whose keys and values are views into buffers allocated once.

    It subclasses ``DynamicLayer`` so everything transformers asks of a layer (sequence length, mask
    sizes) keeps working on the views; only ``update`` and ``batch_select_indices`` change.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        rows, heads, length, _ = keys.shape
        if capacity < length:
            raise ValueError(f"capacity {capacity} is smaller than the {length} cached tokens")
        self._k = keys.new_empty((rows, heads, capacity, keys.shape[-1]))
        self._v = values.new_empty((rows, heads, capacity, values.shape[-1]))
        self._k[:, :, :length] = keys
        self._v[:, :, :length] = values
        self.device = keys.device
        self.is_initialized = True
        self._set_length(length)

    def _set_length(self, length: int) -> None:
        self._len = length
        self.keys = self._k[:, :, :length]
        self.values = self._v[:, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._len + key_states.shape[-2]
        if end > self._k.shape[-2]:
            raise RuntimeError(f"KV slab full: {end} tokens for a capacity of {self._k.shape[-2]}")
        self._k[:, :, self._len : end] = key_states
        self._v[:, :, self._len : end] = value_states
        self._set_length(end)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only ``indices`` rows; the copy is the size of the live cache, done when rows finish."""
        self._k = self._k[indices]
        self._v = self._v[indices]
        self._set_length(self._len)


def to_slabs(cache: Any, capacity: int) -> int:
    """Replace the cache's plain full-attention layers by :class:`SlabLayer` s in place; return how many.

    Sliding-window, linear-attention or otherwise special layers (their class is not exactly
    ``DynamicLayer``) are left as they are: their update rules differ.
    """
    dynamic = _dynamic_layer_cls()
    replaced = 0
    for i, layer in enumerate(cache.layers):
        if type(layer) is dynamic and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            cache.layers[i] = SlabLayer(layer.keys, layer.values, capacity)
            replaced += 1
    return replaced


def grouped_decode_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for one query token per row without repeating key/value heads; anything else goes to HF SDPA.

    Query head ``h`` reads key/value head ``h // groups`` (the order ``repeat_kv`` produces), so the
    query ``[B, H, 1, D]`` reshaped to ``[B, H/groups, groups, D]`` lines up with keys ``[B, H/groups, L, D]``
    and the ``groups`` queries of a head ride along as SDPA's query length; a ``[B, 1, 1, L]`` padding mask
    broadcasts over them.  Without causal masking this is exactly the single-token attention.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    special = any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux", "sinks"))
    mask_ok = attention_mask is None or (
        attention_mask.dim() == 4 and attention_mask.shape[1] == 1 and attention_mask.shape[2] == 1
    )
    if query.shape[2] != 1 or groups == 1 or special or not mask_ok:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    rows, heads, _, dim = query.shape
    q = query.reshape(rows, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(rows, 1, heads, value.shape[-1]), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, grouped_decode_attention)


@contextlib.contextmanager
def decode_attention(model: Any) -> Iterator[bool]:
    """While active, an SDPA model's attention layers use :func:`grouped_decode_attention`.

    Yields whether the switch happened: only plain SDPA models switch (eager, flex and flash keep their
    own kernels).  The model's setting is restored on exit, also after an error.
    """
    before = getattr(model.config, "_attn_implementation", None)
    if before != "sdpa":
        yield False
        return
    _register()
    model.config._attn_implementation = DECODE_ATTENTION
    try:
        yield True
    finally:
        model.config._attn_implementation = before
