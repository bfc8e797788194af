"""Model FLOPs of a training step and a measured matmul peak: the two numbers behind `bench`'s MFU.

MFU = FLOPs the step's layout needs / step time / the rate of one large matrix product measured on
the same device and dtype (not a datasheet number: cards and shared CPUs differ from theirs).
The FLOPs are counted from the layout, not profiled, so they are the same for any kernel choice:

- 6 × (weights of the decoder's linear layers) × non-pad tokens of every pass (forward 2, backward 4);
- 6 × (LM-head weights) × labelled tokens: the objective needs logits only where there is a label
  (our loss computes exactly those; HF's `model(labels=...)` computes all and pays the difference);
- 12 × layers × (query heads × head dim) × attended (query, key) pairs, counted from the same
  ranges every mask backend evaluates (`masks.query_ranges`), so causal halves, packing's block
  diagonal and the isolated step copy are counted as they are computed by a kernel that skips
  masked blocks (FlexAttention), and SDPA's dense masked work counts as waste.

Not counted: norms, activations, RoPE, softmax, the optimizer, and the EMA target's extra forward.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from step_jepa.method.layout import meta_of
from step_jepa.method.masks import PAD, query_ranges


def _parts(batch: dict) -> list[dict]:
    return [batch] + ([batch["pass2"]] if "pass2" in batch else [])


def attended_pairs(batch: dict) -> int:
    """(query, key) pairs the mask allows, over non-pad queries of every pass: a query sees
    [lo1, hi1) ∪ [lo2, q], disjoint ranges, so the count is O(B·T) without building a mask."""
    total = 0
    for part in _parts(batch):
        lo1, hi1, lo2 = query_ranges(meta_of(part))
        q = torch.arange(part["role"].shape[1]).expand_as(lo2)
        per_query = (hi1 - lo1) + (q - lo2 + 1)
        total += int(per_query[part["role"] != PAD].sum())
    return total


def nonpad_tokens(batch: dict) -> int:
    return sum(int((part["role"] != PAD).sum()) for part in _parts(batch))


@dataclass(frozen=True)
class FlopCounter:
    linear_weights: int  # decoder linear layers (attention and MLP projections)
    head_weights: int  # LM head (tied or not: it is a matmul either way)
    layers: int
    attn_dim: int  # query heads × head dim

    @classmethod
    def of(cls, lm: nn.Module) -> FlopCounter:
        decoder = lm.get_decoder()
        cfg = lm.config.get_text_config()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            linear_weights=sum(m.weight.numel() for m in decoder.modules() if isinstance(m, nn.Linear)),
            head_weights=lm.get_output_embeddings().weight.numel(),
            layers=cfg.num_hidden_layers,
            attn_dim=cfg.num_attention_heads * head_dim,
        )

    def step_flops(self, batch: dict) -> float:
        """Forward + backward FLOPs of one collated batch (our layout keys; see the module doc)."""
        labelled = batch["lm_index"].numel()
        return (
            6.0 * self.linear_weights * nonpad_tokens(batch)
            + 6.0 * self.head_weights * labelled
            + 12.0 * self.layers * self.attn_dim * attended_pairs(batch)
        )


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 10) -> dict:
    """FLOP/s of an n×n×n product on random data (never zeros: they can run faster), median of
    `reps` timed runs after a warm-up; on CUDA timed with events."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return {"flops_per_s": 2.0 * n**3 / statistics.median(times), "n": n, "dtype": str(dtype).removeprefix("torch.")}
