"""The LM-head helpers of step_jepa.models.loading: padding the vocabulary changes no number."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from step_jepa.method.lm_loss import VOCAB_ALIGN, aligned_logits, chunked_lm_loss_sum


@pytest.mark.parametrize("vocab", [101, 128])
def test_aligned_logits_pad_with_minus_inf(vocab: int) -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, vocab, bias=False)
    h = torch.randn(5, 16)
    assert aligned_logits(h, head).shape == (5, vocab)  # CPU default: no padding
    out = aligned_logits(h, head, align=VOCAB_ALIGN)
    padded = -(-vocab // VOCAB_ALIGN) * VOCAB_ALIGN
    assert out.shape == (5, padded)
    torch.testing.assert_close(out[:, :vocab], head(h))
    assert torch.isneginf(out[:, vocab:]).all()


def test_heads_that_are_not_plain_linear_are_called_as_they_are() -> None:
    head = nn.Linear(16, 101, bias=True)
    h = torch.randn(3, 16)
    assert aligned_logits(h, head, align=VOCAB_ALIGN).shape == (3, 101)


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_loss_and_gradients_equal_plain_cross_entropy(autocast: bool) -> None:
    torch.manual_seed(1)
    head = nn.Linear(16, 101, bias=False)
    h = torch.randn(10, 16, requires_grad=True)
    y = torch.randint(0, 101, (10,))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        want = F.cross_entropy(head(h).float(), y, reduction="sum")
        got = chunked_lm_loss_sum(h, head, y, chunk=4, align=VOCAB_ALIGN)
    g_want = torch.autograd.grad(want, [h, head.weight])
    g_got = torch.autograd.grad(got, [h, head.weight])
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, **tol)
    assert all(torch.isfinite(g).all() for g in g_got)


def test_compile_decoder_refuses_an_unknown_scope() -> None:
    from step_jepa.models.loading import compile_decoder
    from step_jepa.models.tiny import build_tiny_model

    with pytest.raises(ValueError, match="compile scope 'model': choose from layers, decoder"):
        compile_decoder(build_tiny_model(64), "model")
