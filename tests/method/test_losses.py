"""Each JEPA loss against values computed by hand, and the collapse diagnostics."""

import math

import pytest
import torch

from step_jepa.method.losses import jepa_loss, view_diagnostics

V1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
V2 = torch.tensor([[1.0, 1.0], [0.0, -1.0]])


def test_cosine():
    # cos = 1/sqrt(2) and -1  ->  mean(1 - cos) = (1 - 0.7071 + 2) / 2
    assert jepa_loss(V1, V2, "cosine").item() == pytest.approx((1 - 1 / math.sqrt(2) + 2) / 2)


def test_l2():
    # distances: |(0,-1)| = 1, |(0,3)| = 3
    assert jepa_loss(V1, V2, "l2").item() == pytest.approx(2.0)


def test_mse():
    # squared differences: 0, 1, 0, 9 -> mean 2.5
    assert jepa_loss(V1, V2, "mse").item() == pytest.approx(2.5)


def test_infonce_by_hand():
    t = 0.5
    a = torch.nn.functional.normalize(V1, dim=-1)
    b = torch.nn.functional.normalize(V2, dim=-1)
    s = (a @ b.T / t).tolist()
    row = [-math.log(math.exp(s[i][i]) / sum(math.exp(x) for x in s[i])) for i in range(2)]
    col = [-math.log(math.exp(s[i][i]) / sum(math.exp(s[j][i]) for j in range(2))) for i in range(2)]
    want = 0.5 * (sum(row) / 2 + sum(col) / 2)
    assert jepa_loss(V1, V2, "infonce", temperature=t).item() == pytest.approx(want, rel=1e-6)


def test_infonce_is_not_minimised_by_collapse():
    same = torch.ones(4, 8)
    assert jepa_loss(same, same, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert jepa_loss(same, same, "infonce").item() == pytest.approx(math.log(4), rel=1e-5)


def test_both_views_get_gradients():
    a, b = V1.clone().requires_grad_(), V2.clone().requires_grad_()
    jepa_loss(a, b, "cosine").backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown jepa loss"):
        jepa_loss(V1, V2, "nope")


def test_diagnostics_detect_collapse_and_retrieval():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    good = view_diagnostics(x, x + 0.01 * torch.randn(16, 32))
    assert good["jepa_retrieval_acc"] == 1.0 and good["jepa_cos"] > 0.99
    collapsed = view_diagnostics(torch.ones(16, 32) + 1e-3 * x, torch.ones(16, 32))
    assert collapsed["jepa_cos"] > 0.99 and collapsed["view1_pairwise_cos"] > 0.99
    assert collapsed["view2_std"] == 0.0
