"""The LM loss of the objective: next-token cross-entropy at the labelled positions only, in
chunks, so that [B, T, V] logits are never built (and the LM head padded to an aligned width)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

VOCAB_ALIGN = 64


def padded_head(
    lm_head: nn.Module, hidden_size: int, device: torch.device, align: int | None = None
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


def chunked_lm_loss_sum(
    hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor, chunk: int = 4096, align: int | None = None
) -> torch.Tensor:
    """Sum of next-token cross-entropies over the labelled positions only.

    `hidden` is [N, H] for the N labelled positions. Each chunk's logits are recomputed in the
    backward pass (activation checkpointing), so memory stays at one chunk × vocab whatever N is.
    """
    head = padded_head(lm_head, hidden.shape[-1], hidden.device, align)

    def part(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s : s + chunk], targets[s : s + chunk]
        total = total + (checkpoint(part, h, y, use_reentrant=False) if torch.is_grad_enabled() else part(h, y))
    return total
