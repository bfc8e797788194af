"""Single-pass Step-JEPA equals the two-pass reference: same loss, same gradient for every parameter."""

import pytest
import torch
from conftest import mixed_records

from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer


def _loss_and_grads(model, batch, lbd=0.5):
    m = StepJEPAModel(model, JEPAOptions(lbd=lbd, jepa_loss="cosine"))
    model.zero_grad()
    out = m(**batch)
    loss = out["lm_sum"] / out["n_tokens"] + lbd * out["jepa"]
    loss.backward()
    return loss.detach(), out["jepa"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("pairs", ["first", "all"])
@pytest.mark.parametrize("packing", [False, True])
def test_single_pass_equals_two_pass(arch, K, pairs, packing):
    tok = build_tiny_tokenizer("chatml")  # fresh: predictor tokens are added to it
    model = build_tiny_model(len(tok), arch=arch, seed=1)
    pred = add_predictor_tokens(model, tok, K)
    exs = [segment(r, tok) for r in mixed_records()]
    for lo, hi in [(0, 3), (3, 6)]:  # several batches
        res = {}
        for mode in ("two_pass", "single_pass"):
            col = StepJEPACollator(
                pad_id=tok.pad_token_id, pred_ids=pred, mode=mode, pairs=pairs, packing=packing, max_tokens=256
            )
            res[mode] = _loss_and_grads(model, col(exs[lo:hi]))
        (l2, j2, g2), (l1, j1, g1) = res["two_pass"], res["single_pass"]
        assert j2.item() > 0, "batch must contain a valid pair"
        torch.testing.assert_close(l1, l2, rtol=1e-5, atol=0)
        torch.testing.assert_close(j1, j2, rtol=1e-5, atol=0)
        for name in g2:
            err = (g1[name] - g2[name]).norm() / g2[name].norm().clamp(min=1e-30)
            assert err < 1e-5, f"{name}: relative gradient error {err:.2e}"


def test_sft_mode_matches_plain_hf_loss(tok_chatml):
    """λ=0 (no JEPA tokens) gives the model's own next-token loss on the assistant tokens."""
    model = build_tiny_model(len(tok_chatml), seed=2)
    exs = [segment(r, tok_chatml) for r in mixed_records()[:4]]
    batch = StepJEPACollator(pad_id=tok_chatml.pad_token_id, pred_ids=[], mode="sft")(exs)
    out = StepJEPAModel(model, JEPAOptions(lbd=0))(**batch)
    ours = out["lm_sum"] / out["n_tokens"]
    ids = batch["input_ids"]
    labels = torch.full_like(ids, -100)
    for r, ex in enumerate(exs):
        labels[r, : len(ex.labels)] = torch.tensor(ex.labels)
    ref = model(input_ids=ids, attention_mask=(batch["role"] != 0).long(), labels=labels).loss
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_eager_backend_equals_sdpa():
    """The additive (eager) and boolean (SDPA) forms of the mask give the same losses."""
    tok = build_tiny_tokenizer("chatml")
    pred = add_predictor_tokens(build_tiny_model(len(tok)), tok, 2)
    exs = [segment(r, tok) for r in mixed_records()]
    losses = []
    for impl in ("sdpa", "eager"):
        model = build_tiny_model(len(tok), seed=3, attn_implementation=impl)  # same seed: same weights
        batch = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, mode="single_pass", pairs="all")(exs)
        out = StepJEPAModel(model, JEPAOptions(lbd=1.0))(**batch)
        losses.append(torch.stack([out["lm_sum"] / out["n_tokens"], out["jepa"]]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pairs", ["first", "all"])
@pytest.mark.parametrize("packing", [False, True])
def test_separator_boundary_single_pass_equals_two_pass(pairs, packing):
    """--view_boundary separator (predictors after the blank line, view 2 at the separator or the
    end-of-turn token ending step i+1): the single-pass layout is still exact."""
    tok = build_tiny_tokenizer("chatml")
    model = build_tiny_model(len(tok), arch="llama", seed=1)
    pred = add_predictor_tokens(model, tok, 2)
    exs = [segment(r, tok) for r in mixed_records()]
    res = {}
    for mode in ("two_pass", "single_pass"):
        col = StepJEPACollator(
            pad_id=tok.pad_token_id,
            pred_ids=pred,
            mode=mode,
            pairs=pairs,
            packing=packing,
            max_tokens=256,
            boundary="separator",
        )
        batch = col(exs)
        assert batch["n_pairs"] > 0
        res[mode] = _loss_and_grads(model, batch)
    content = _loss_and_grads(
        model,
        StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, pairs=pairs, packing=packing, max_tokens=256)(exs),
    )
    (l2, j2, g2), (l1, j1, g1) = res["two_pass"], res["single_pass"]
    assert not torch.allclose(j1, content[1])  # the boundary changes the views
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=0)
    torch.testing.assert_close(j1, j2, rtol=1e-5, atol=0)
    for name in g2:
        err = (g1[name] - g2[name]).norm() / g2[name].norm().clamp(min=1e-30)
        assert err < 1e-5, f"{name}: relative gradient error {err:.2e}"
