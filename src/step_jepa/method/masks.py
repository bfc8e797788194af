"""Who attends to whom — the one place the Step-JEPA attention rules live.

Every token carries metadata (which example of the row it belongs to, its role, the JEPA pair it
serves and, for predictors, how much of the original sequence it may see; position ids go to the
model separately and play no part in who sees whom). The
pure function `query_ranges` turns that metadata into the keys each query may see — two index
ranges — and `allowed` evaluates them; the backends (a dense boolean/additive mask for SDPA and
eager, a FlexAttention BlockMask) only call these two (the dense mask applies `allowed`'s two
ranges in two passes, for speed; a test holds it equal to `allowed` everywhere).

Roles:
  ORIG  the example as written (prompt + answer): causal within its example — exactly pass 1.
  PRED  predictor tokens of a pair: see the example's original tokens up to the end of step i
        (position < ctx) and the earlier predictors of the same pair.
  COPY  the isolated copy of step i+1: sees only earlier tokens of the same copy.
  PAD   padding: sees only itself, so no softmax row is empty (an all-masked row gives NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, ORIG, PRED, COPY = 0, 1, 2, 3


@dataclass
class TokenMeta:
    """Per-token metadata, each a LongTensor [B, T] (or broadcastable views of them)."""

    seq: torch.Tensor  # example index within the row, -1 for padding
    role: torch.Tensor
    pair: torch.Tensor  # JEPA pair index within the example, -1 when not a PRED/COPY token
    ctx: torch.Tensor  # for PRED: original tokens with position < ctx are visible


def query_ranges(meta: TokenMeta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention rules, per query: it sees keys in [lo1, hi1) ∪ [lo2, q].

    A layout places each example's original tokens first and contiguously (positions 0..n-1),
    and each pair's predictors and copy as contiguous runs, so every role's rule is two ranges:
      ORIG  [start of its example, q]                       causal within the example (pass 1)
      PRED  [start of example, start + ctx) ∪ [first predictor of its pair, q]
            (prompt + steps up to step i, then the earlier predictors of the pair)
      COPY  [first token of its copy, q]                    the isolated step i+1
      PAD   [q, q]                                          itself, so no softmax row is empty
    Computed in O(B·T); every backend evaluates `allowed` on these three numbers.
    """
    B, T = meta.seq.shape
    idx = torch.arange(T, device=meta.seq.device).expand(B, T)
    zero = torch.zeros_like(idx)

    def run_start(key: torch.Tensor) -> torch.Tensor:
        change = torch.ones_like(key, dtype=torch.bool)
        change[:, 1:] = key[:, 1:] != key[:, :-1]
        return torch.where(change, idx, zero).cummax(dim=1).values

    # Separate runs per example and per (role, pair); a large stride keeps the combined keys distinct.
    seq_start = run_start(meta.seq)
    run = run_start((meta.seq + 1) * (4 * T + 8) + meta.role * (T + 2) + meta.pair + 1)
    is_pred = meta.role == PRED
    lo1 = torch.where(is_pred, seq_start, zero)
    hi1 = torch.where(is_pred, seq_start + meta.ctx, zero)
    lo2 = torch.where(meta.role == PAD, idx, run)
    return lo1, hi1, lo2


def allowed(lo1, hi1, lo2, q_idx, k_idx):
    """True where query q may attend to key k, given q's ranges (scalars for flex, tensors for dense)."""
    return ((k_idx >= lo1) & (k_idx < hi1)) | ((k_idx >= lo2) & (k_idx <= q_idx))


def dense_mask(meta: TokenMeta) -> torch.Tensor:
    """Boolean mask [B, 1, T, T] (True = attend) for SDPA; also the reference picture for tests.

    `allowed` evaluated at every (query, key), in two parts: the second range on all rows, the
    first range on the rows where it is non-empty (predictor queries: K per pair, a few per row).
    Written out in full, `allowed` costs 7 B×T×T operations; this costs 2 plus the predictor rows.
    Finding the predictor rows needs `nonzero`, which on a GPU would stall the host once per
    step; there the mask is `allowed` written out (cheap on a GPU, and FlexAttention, the CUDA
    default, builds no dense mask at all). `benchmarks/mask_cost.py` times both forms.
    """
    if meta.seq.device.type != "cpu":
        return allowed_everywhere(meta)
    T = meta.seq.shape[-1]
    lo1, hi1, lo2 = query_ranges(meta)
    idx = torch.arange(T, device=meta.seq.device)
    m = idx >= lo2[:, :, None]
    m &= idx <= idx[:, None]
    b, q = (hi1 > lo1).nonzero(as_tuple=True)
    if b.numel():
        m[b, q] |= (idx >= lo1[b, q, None]) & (idx < hi1[b, q, None])
    return m[:, None]


def allowed_everywhere(meta: TokenMeta) -> torch.Tensor:
    """`allowed` at every (query, key), [B, 1, T, T]: 7 full B×T×T operations, no host sync."""
    T = meta.seq.shape[-1]
    lo1, hi1, lo2 = (t[:, :, None] for t in query_ranges(meta))
    idx = torch.arange(T, device=meta.seq.device)
    return allowed(lo1, hi1, lo2, idx[:, None], idx)[:, None]


def additive_mask(meta: TokenMeta, dtype: torch.dtype) -> torch.Tensor:
    """Float mask [B, 1, T, T]: 0 where allowed, the dtype's minimum elsewhere (eager attention adds it)."""
    return _additive(dense_mask(meta), dtype)


def _additive(m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(m.shape, dtype=dtype, device=m.device)
    return out.masked_fill(~m, torch.finfo(dtype).min)


_compiled_create_block_mask = None


def _create_block_mask_fn(device_type: str):
    """torch.compile'd create_block_mask on CUDA (dynamic shapes, so new lengths reuse the kernel);
    the eager version elsewhere. Compiled, the mask is evaluated block by block and never
    materialised as a B×T×T tensor."""
    global _compiled_create_block_mask
    from torch.nn.attention.flex_attention import create_block_mask

    if device_type != "cuda":
        return create_block_mask
    if _compiled_create_block_mask is None:
        _compiled_create_block_mask = torch.compile(create_block_mask, dynamic=True)
    return _compiled_create_block_mask


def flex_block_mask(meta: TokenMeta, window: tuple[torch.Tensor, int] | None = None):
    """FlexAttention BlockMask evaluating `allowed` per block (and the sliding window, if given).

    Rows should be padded to a multiple of 128 (the block size) so lengths fall into few buckets.
    """
    B, T = meta.seq.shape
    fn = flex_mask_mod(meta, window)
    return _create_block_mask_fn(meta.seq.device.type)(fn, B, None, T, T, device=meta.seq.device)


def flex_mask_mod(meta: TokenMeta, window: tuple[torch.Tensor, int] | None = None):
    """The FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` of a batch: `allowed` on the query's
    ranges (and the sliding window on position ids, if given). `flex_block_mask` builds its
    BlockMask from it; tests evaluate it densely with ``create_mask`` against `dense_mask`."""
    lo1, hi1, lo2 = query_ranges(meta)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(lo1[b, q_idx], hi1[b, q_idx], lo2[b, q_idx], q_idx, kv_idx)

    def windowed_mod(b, h, q_idx, kv_idx):
        pos, size = window
        return mask_mod(b, h, q_idx, kv_idx) & (pos[b, q_idx] - pos[b, kv_idx] < size)

    return mask_mod if window is None else windowed_mod


def within_window(position_ids: torch.Tensor, window: int) -> torch.Tensor:
    """[B, 1, T, T]: True where the key's position is less than `window` before the query's.

    Hugging Face's sliding-window rule is ``kv_idx > q_idx - window`` on *indices*; in every
    sequence of the two-pass reference, index = position id, so the rule on position ids is the
    same rule, and it stays right in the single-pass and packed layouts, where indices are not
    positions. Allowed keys are never after the query, so no lower bound is needed.
    """
    return (position_ids[:, :, None] - position_ids[:, None, :] < window)[:, None]


def build_attention_mask(
    meta: TokenMeta, impl: str, dtype: torch.dtype = torch.float32, window: tuple[torch.Tensor, int] | None = None
):
    """The mask object a Hugging Face model expects for its attention implementation.

    `window` = (position ids, size) also limits each query to the keys of a sliding window.
    """
    if impl == "flex_attention":
        return flex_block_mask(meta, window)
    m = dense_mask(meta)
    return _dense_for(m & within_window(*window) if window is not None else m, impl, dtype)


def _dense_for(m: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as `impl` takes it: additive floats for eager attention, booleans for SDPA."""
    return _additive(m, dtype) if impl == "eager" else m


def sliding_window_of(config) -> tuple[int | None, list[str] | None]:
    """(window size, per-layer types) of a model config; (None, None) for full attention only.

    A 4D mask handed to a Hugging Face model is used as it is, on every layer: the model's own
    window would be dropped silently. So the window is found here and built into our masks.
    Layer types other than full and sliding attention (chunked, linear...) are refused.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = list(getattr(cfg, "layer_types", None) or [])
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise NotImplementedError(f"Step-JEPA masks do not support layer types {sorted(unknown)}")
    window = getattr(cfg, "sliding_window", None)
    if types:
        return (window, types) if "sliding_attention" in types and window else (None, None)
    if window and getattr(cfg, "use_sliding_window", True) is not False:
        return window, None  # one window on every layer (e.g. Mistral)
    return None, None


def build_model_mask(meta: TokenMeta, config, impl: str, dtype: torch.dtype, position_ids: torch.Tensor):
    """Our mask in the form the model takes: one mask, or one per layer type when some layers
    use a sliding window (the dict Gemma 3 / Qwen2 accept as ``attention_mask``). The dense rule
    is evaluated once per step and windowed from there; FlexAttention builds a BlockMask per kind."""
    window, types = sliding_window_of(config)
    if window is None:
        return build_attention_mask(meta, impl, dtype)
    win = (position_ids, window)
    if impl == "flex_attention":
        windowed, full = flex_block_mask(meta, win), (flex_block_mask(meta) if types is not None else None)
    else:
        m = dense_mask(meta)
        windowed = _dense_for(m & within_window(*win), impl, dtype)
        full = _dense_for(m, impl, dtype) if types is not None else None
    return windowed if full is None else {"full_attention": full, "sliding_attention": windowed}
