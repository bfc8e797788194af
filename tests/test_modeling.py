"""The LM-head helpers of step_jepa.modeling: padding the vocabulary changes no number."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from step_jepa.modeling import VOCAB_ALIGN, aligned_logits, chunked_lm_loss_sum


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


def test_liger_kernels_refuse_a_machine_without_cuda(monkeypatch) -> None:
    """Triton has no CPU backend: the flag must fail at once, naming the reason."""
    from step_jepa.modeling import apply_liger_kernels
    from step_jepa.tiny import build_tiny_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        apply_liger_kernels(build_tiny_model(64, layers=1, hidden=32))


def test_liger_kernels_without_the_package_say_how_to_install(monkeypatch) -> None:
    import sys

    from step_jepa.modeling import apply_liger_kernels, liger_lm_loss_sum
    from step_jepa.tiny import build_tiny_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(ImportError, match=r"step-jepa\[liger\]"):
        apply_liger_kernels(build_tiny_model(64, layers=1, hidden=32))
    with pytest.raises(ImportError, match=r"step-jepa\[liger\]"):
        liger_lm_loss_sum(torch.zeros(2, 8), nn.Linear(8, 5, bias=False), torch.zeros(2, dtype=torch.long))


def test_objective_routes_the_lm_loss_through_liger_when_asked(monkeypatch) -> None:
    """`liger_loss=True` must call the fused loss with the head and the labelled hidden states only."""
    import step_jepa.objective as objective
    from step_jepa.objective import JEPAOptions, StepJEPAModel
    from step_jepa.tiny import build_tiny_model

    seen = {}

    def fake(hidden, head, targets):
        seen.update(n=hidden.shape[0], head=head, targets=targets)
        return F.cross_entropy(head(hidden), targets, reduction="sum")

    monkeypatch.setattr(objective, "liger_lm_loss_sum", fake)
    lm = build_tiny_model(64, layers=1, hidden=32)
    ids = torch.randint(0, 64, (1, 6))
    batch = {"input_ids": ids, "position_ids": torch.arange(6)[None], "role": torch.ones(1, 6, dtype=torch.long),
             "plain_causal": True, "lm_index": torch.tensor([2, 3, 4]), "lm_labels": ids[0, 3:6],
             "view_rows": torch.zeros(0, dtype=torch.long)}
    for liger in (False, True):
        seen.clear()
        model = StepJEPAModel(lm, JEPAOptions(lbd=0.0), liger_loss=liger)
        out = model.lm_sum(model.hidden_states(batch)[0], batch)
        assert bool(seen) is liger
        assert torch.isfinite(out)
    assert seen["n"] == 3 and seen["head"] is lm.get_output_embeddings()
    assert torch.equal(seen["targets"], ids[0, 3:6])
