"""The FLOP count behind bench's MFU: attended pairs against the mask itself, weights by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import record

from step_jepa.bench.flops import (
    FlopCounter,
    attended_pairs,
    matmul_peak,
    nonpad_tokens,
)
from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator, meta_of
from step_jepa.method.masks import PAD, dense_mask
from step_jepa.models.tiny import build_tiny_model

STEPS = [
    ["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."],
    ["Ann has 10 pens.", "The final answer is \\boxed{10}."],
]


def _mask_count(part: dict) -> int:
    """Brute force: allowed (query, key) entries of the dense mask, non-pad queries only."""
    m = dense_mask(meta_of(part))[:, 0]
    return int(m[part["role"] != PAD].sum())


@pytest.mark.parametrize(
    "mode,pairs,packing",
    [
        ("sft", "first", False),
        ("single_pass", "all", False),
        ("single_pass", "all", True),
        ("two_pass", "first", False),
    ],
)
def test_attended_pairs_equal_the_mask(tok_chatml, mode, pairs, packing):
    exs = [segment(record(s, rid=str(i)), tok_chatml) for i, s in enumerate(STEPS)]
    pred = [len(tok_chatml), len(tok_chatml) + 1]
    batch = StepJEPACollator(
        pad_id=tok_chatml.pad_token_id,
        pred_ids=pred if mode != "sft" else [],
        mode=mode,
        pairs=pairs,
        packing=packing,
        max_tokens=4096,
    )(exs)
    expected = _mask_count(batch) + (_mask_count(batch["pass2"]) if "pass2" in batch else 0)
    assert attended_pairs(batch) == expected


def test_one_causal_sequence_attends_n_times_n_plus_one_over_two(tok_chatml):
    ex = segment(record(STEPS[0]), tok_chatml)
    batch = StepJEPACollator(pad_id=tok_chatml.pad_token_id, pred_ids=[], mode="sft")([ex])
    n = len(ex.input_ids)
    assert attended_pairs(batch) == n * (n + 1) // 2 and nonpad_tokens(batch) == n


def test_counter_weights_of_the_tiny_llama_by_hand(tok_chatml):
    lm = build_tiny_model(100)  # hidden 64, 4 query heads and 2 KV heads of 16, MLP 128, 2 layers
    c = FlopCounter.of(lm)
    per_layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * (64 * 128)  # q, k and v, o, gate/up/down
    assert (c.linear_weights, c.head_weights, c.layers, c.attn_dim) == (2 * per_layer, 100 * 64, 2, 64)
    ex = segment(record(STEPS[1]), tok_chatml)
    batch = StepJEPACollator(pad_id=tok_chatml.pad_token_id, pred_ids=[], mode="sft")([ex])
    n, labelled = len(ex.input_ids), batch["lm_index"].numel()
    assert c.step_flops(batch) == 6 * 2 * per_layer * n + 6 * 6400 * labelled + 12 * 2 * 64 * n * (n + 1) // 2


def test_matmul_peak_is_a_positive_rate():
    peak = matmul_peak(torch.device("cpu"), torch.float32, n=128, reps=3)
    assert peak["flops_per_s"] > 0 and peak["n"] == 128 and peak["dtype"] == "float32"
