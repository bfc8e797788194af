"""Who attends to whom — the one place the Step-JEPA attention rules live.

Every token carries metadata (which example of the row it belongs to, its role, the JEPA pair it
serves, its position id and, for predictors, how much of the original sequence it may see). The
pure function `allowed` turns the metadata of a query and a key into a boolean; the backends
(a dense boolean/additive mask for SDPA and eager, a FlexAttention BlockMask) only evaluate it.

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
ROLE_NAMES = {PAD: "pad", ORIG: "orig", PRED: "pred", COPY: "copy"}


@dataclass
class TokenMeta:
    """Per-token metadata, each a LongTensor [B, T] (or broadcastable views of them)."""

    seq: torch.Tensor  # example index within the row, -1 for padding
    role: torch.Tensor
    pair: torch.Tensor  # JEPA pair index within the example, -1 when not a PRED/COPY token
    ctx: torch.Tensor  # for PRED: original tokens with position < ctx are visible
    pos: torch.Tensor  # position ids

    def to(self, device) -> "TokenMeta":
        return TokenMeta(*(t.to(device) for t in (self.seq, self.role, self.pair, self.ctx, self.pos)))


def allowed(q_seq, q_role, q_pair, q_ctx, q_idx, k_seq, k_role, k_pair, k_pos, k_idx):
    """True where query q may attend to key k. Works on scalars (flex) and broadcast tensors (dense).

    Causality uses the index in the row, not the position id: appended tokens reuse the position
    ids of the two-pass layout, so positions are not monotone along a row.
    """
    same = (q_seq == k_seq) & (q_seq >= 0)
    causal = k_idx <= q_idx
    same_pair = (q_pair == k_pair) & causal
    orig_rule = (q_role == ORIG) & (k_role == ORIG) & causal
    pred_rule = (q_role == PRED) & (((k_role == ORIG) & (k_pos < q_ctx)) | ((k_role == PRED) & same_pair))
    copy_rule = (q_role == COPY) & (k_role == COPY) & same_pair
    pad_rule = (q_role == PAD) & (k_idx == q_idx)
    return (same & (orig_rule | pred_rule | copy_rule)) | pad_rule


def dense_mask(meta: TokenMeta) -> torch.Tensor:
    """Boolean mask [B, 1, T, T] (True = attend) for SDPA; also the reference for every backend."""
    T = meta.seq.shape[-1]
    idx = torch.arange(T, device=meta.seq.device)
    q = lambda t: t[:, :, None]  # noqa: E731 - query axis
    k = lambda t: t[:, None, :]  # noqa: E731 - key axis
    m = allowed(
        q(meta.seq), q(meta.role), q(meta.pair), q(meta.ctx), idx[None, :, None],
        k(meta.seq), k(meta.role), k(meta.pair), k(meta.pos), idx[None, None, :],
    )
    return m[:, None]


def additive_mask(meta: TokenMeta, dtype: torch.dtype) -> torch.Tensor:
    """Float mask [B, 1, T, T]: 0 where allowed, the dtype's minimum elsewhere (eager attention adds it)."""
    m = dense_mask(meta)
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


def flex_block_mask(meta: TokenMeta):
    """FlexAttention BlockMask evaluating `allowed` per block.

    Rows should be padded to a multiple of 128 (the block size) so lengths fall into few buckets.
    """
    seq, role, pair, ctx, pos = meta.seq, meta.role, meta.pair, meta.ctx, meta.pos

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(
            seq[b, q_idx], role[b, q_idx], pair[b, q_idx], ctx[b, q_idx], q_idx,
            seq[b, kv_idx], role[b, kv_idx], pair[b, kv_idx], pos[b, kv_idx], kv_idx,
        )

    B, T = seq.shape
    return _create_block_mask_fn(seq.device.type)(mask_mod, B, None, T, T, device=seq.device)


def build_attention_mask(meta: TokenMeta, impl: str, dtype: torch.dtype = torch.float32):
    """The mask object a Hugging Face model expects for its attention implementation."""
    if impl == "flex_attention":
        return flex_block_mask(meta)
    if impl == "eager":
        return additive_mask(meta, dtype)
    return dense_mask(meta)
