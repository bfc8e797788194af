"""The attention paths, checked against things that do not come from our dense mask.

1. FlexAttention: the ``mask_mod`` our BlockMask is built from, evaluated densely with
   ``torch.nn.attention.flex_attention.create_mask`` (works on CPU), equals ``dense_mask``; and a
   CPU forward with ``attn_implementation="flex_attention"`` gives the SDPA losses.
2. An independent oracle: the single-pass loss and gradients recomputed with ordinary causal
   calls of the model and **no custom mask** (nothing from masks.py or layout.py): per pair, one
   causal forward of prompt + step i + predictors (view 1) and one of step i+1 alone at its
   pass-2 position ids (view 2); per example, the plain SFT forward for L_LM.
   (tests/test_exactness.py compares single pass with two passes, both built from our masks.)
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import mixed_records
from torch.nn.attention.flex_attention import create_mask

from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator, meta_of
from step_jepa.method.masks import (
    dense_mask,
    flex_block_mask,
    flex_mask_mod,
    within_window,
)
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

LBD = 0.5


@pytest.fixture(scope="module")
def setup():
    tok = build_tiny_tokenizer("chatml")  # fresh: predictor tokens are added to it
    model = build_tiny_model(len(tok), seed=1)
    pred = add_predictor_tokens(model, tok, 2)
    return tok, model, pred, [segment(r, tok) for r in mixed_records()]


def _batch(setup, pairs, packing, pad_multiple=1, target_copies=False):
    tok, _, pred, exs = setup
    col = StepJEPACollator(
        pad_id=tok.pad_token_id,
        pred_ids=pred,
        mode="single_pass",
        pairs=pairs,
        packing=packing,
        max_tokens=256,
        pad_multiple=pad_multiple,
        target_copies=target_copies,
    )
    return col(exs)


@pytest.mark.parametrize("pairs", ["first", "all"])
@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("pad_multiple", [1, 128])
def test_flex_mask_mod_equals_dense_mask(setup, pairs, packing, pad_multiple):
    batch = _batch(setup, pairs, packing, pad_multiple)
    meta = meta_of(batch)
    B, T = batch["input_ids"].shape
    dense = dense_mask(meta)
    assert create_mask(flex_mask_mod(meta), B, 1, T, T, device="cpu").equal(dense)
    # The BlockMask really is built from that mask_mod (CPU: the eager create_block_mask).
    bm = flex_block_mask(meta)
    assert create_mask(bm.mask_mod, B, 1, T, T, device="cpu").equal(dense)
    # The sliding-window variant (Gemma 3 / Mistral layers) too, on position ids.
    window = (batch["position_ids"], 5)
    want = dense & within_window(*window)
    assert not want.equal(dense), "window too large to matter"
    assert create_mask(flex_mask_mod(meta, window), B, 1, T, T, device="cpu").equal(want)


def _ours(model, batch):
    model.zero_grad()
    out = StepJEPAModel(model, JEPAOptions(lbd=LBD, jepa_loss="cosine"))(**batch)
    loss = out["lm_sum"] / out["n_tokens"] + LBD * out["jepa"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _oracle(model, pred, exs, pairs):
    """The Step-JEPA loss from plain causal calls, one sequence at a time, no attention mask."""
    model.zero_grad()
    decoder = model.get_decoder()
    lm_sum, n_tokens, cos_terms = 0.0, 0, []
    for ex in exs:
        ids = torch.tensor([ex.input_ids])
        labels = torch.tensor([ex.labels])
        n = int((labels[:, 1:] != -100).sum())
        lm_sum = lm_sum + model(input_ids=ids, labels=labels).loss * n  # HF's own shifted mean
        n_tokens += n
        spans = ex.step_spans
        valid = [i for i in range(len(spans) - 1) if spans[i] and spans[i + 1] and spans[i][1] <= spans[i + 1][0]]
        for i in ([0] if 0 in valid else []) if pairs == "first" else valid:
            e_i = spans[i][1]
            s2, e2 = spans[i + 1]
            v1 = decoder(input_ids=torch.tensor([ex.input_ids[:e_i] + pred])).last_hidden_state[0, -1]
            pos2 = torch.arange(e_i + len(pred), e_i + len(pred) + e2 - s2)[None]
            v2 = decoder(input_ids=torch.tensor([ex.input_ids[s2:e2]]), position_ids=pos2).last_hidden_state[0, -1]
            cos_terms.append(1 - F.cosine_similarity(v1, v2, dim=0))
    assert cos_terms, "the batch must hold a pair"
    loss = lm_sum / n_tokens + LBD * torch.stack(cos_terms).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("pairs", ["first", "all"])
@pytest.mark.parametrize("packing", [False, True])
def test_single_pass_equals_plain_causal_oracle(setup, pairs, packing):
    _, model, pred, exs = setup
    want, g_want = _oracle(model, pred, exs, pairs)
    got, g_got = _ours(model, _batch(setup, pairs, packing))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for name in g_want:
        err = (g_got[name] - g_want[name]).norm() / g_want[name].norm().clamp(min=1e-30)
        assert err < 1e-5, f"{name}: relative gradient error {err:.2e}"


@pytest.mark.slow
def test_flex_attention_forward_on_cpu_equals_sdpa(setup):
    """The whole flex path (BlockMask handed to the model's flex_attention) gives the SDPA losses.
    FlexAttention has no CPU backward, so forward only; about 15 s of compilation."""
    tok, _, _, _ = setup
    batch = _batch(setup, "all", True, pad_multiple=128)
    res = []
    for impl in ("sdpa", "flex_attention"):
        lm = build_tiny_model(len(tok), seed=4, attn_implementation=impl)  # same seed: same weights
        with torch.no_grad():
            out = StepJEPAModel(lm, JEPAOptions(lbd=1.0))(**batch)
        res.append(torch.stack([out["lm_sum"] / out["n_tokens"], out["jepa"]]))
    torch.testing.assert_close(res[1], res[0], rtol=1e-5, atol=1e-6)


def _on_cuda(batch: dict) -> dict:
    return {k: _on_cuda(v) if isinstance(v, dict) else v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("target", ["grad", "frozen"])
def test_flex_attention_on_cuda_equals_sdpa_forward_and_backward(setup, target):
    """On the GPU the flex path (compiled FlexAttention kernels, forward and backward) gives the
    SDPA loss and gradients; with a frozen target too, whose online rows carry no step copies."""
    tok, _, _, _ = setup
    copies = target == "frozen"
    batch = _on_cuda(_batch(setup, "all", True, pad_multiple=128, target_copies=copies))
    res = []
    for impl in ("sdpa", "flex_attention"):
        lm = build_tiny_model(len(tok), seed=4, attn_implementation=impl).cuda()
        out = StepJEPAModel(lm, JEPAOptions(lbd=1.0, jepa_target=target))(**batch)
        loss = out["lm_sum"] / out["n_tokens"] + out["jepa"]
        loss.backward()
        res.append((loss.detach(), {n: p.grad for n, p in lm.named_parameters() if p.grad is not None}))
    (l_sdpa, g_sdpa), (l_flex, g_flex) = res
    torch.testing.assert_close(l_flex, l_sdpa, rtol=1e-5, atol=1e-6)
    assert g_flex.keys() == g_sdpa.keys() and g_sdpa
    for n in g_sdpa:
        torch.testing.assert_close(g_flex[n], g_sdpa[n], rtol=1e-4, atol=1e-5, msg=n)
