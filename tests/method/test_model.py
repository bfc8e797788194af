"""Options of the JEPA objective: view layer, predictor head, target treatment, λ schedule, VICReg."""

import pytest
import torch
from conftest import record

from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator
from step_jepa.method.losses import jepa_loss, variance_covariance
from step_jepa.method.model import PredictorHead, StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

STEPS = [
    ["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."],
    ["Ann has 10 pens.", "She gives away 2, so 10 - 2 = 8.", "The final answer is \\boxed{8}."],
    ["A box holds 6 eggs.", "Two boxes hold 2 * 6 = 12 eggs.", "The final answer is \\boxed{12}."],
]


@pytest.fixture(scope="module")
def setup():
    tok = build_tiny_tokenizer("chatml")
    pred = add_predictor_tokens(build_tiny_model(len(tok)), tok, 1)
    exs = [segment(record(s, rid=str(i)), tok) for i, s in enumerate(STEPS)]
    return tok, pred, exs


def _run(setup, target_copies=False, **opts):
    tok, pred, exs = setup
    model = build_tiny_model(len(tok), seed=5)
    m = StepJEPAModel(model, JEPAOptions(lbd=1.0, **opts))
    batch = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, target_copies=target_copies)(exs)
    return m, batch, m(**batch)


def test_layer_option_reads_that_layer(setup):
    m, batch, out = _run(setup, jepa_layer=0, jepa_final_norm=False)
    tok, pred, exs = setup
    captured = []
    h = m.lm.model.layers[0].register_forward_hook(
        lambda mod, i, o: captured.append(o[0] if isinstance(o, tuple) else o)
    )
    m.lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=m._mask(batch), position_ids=batch["position_ids"])
    h.remove()
    v1_ref = captured[0][batch["view_rows"], batch["view1_cols"]]
    torch.testing.assert_close(out["view1"], v1_ref)
    _, _, last = _run(setup)
    assert not torch.allclose(out["view1"], last["view1"])


def test_predictor_head_starts_as_identity_and_gets_gradients(setup):
    head = PredictorHead(8)
    x = torch.randn(3, 8)
    torch.testing.assert_close(head(x), x)
    m, _, out = _run(setup, jepa_predictor_head="mlp")
    (out["jepa"]).backward()
    assert m.head.net[-1].weight.grad.abs().sum() > 0


def test_stopgrad_blocks_view2_gradient(setup):
    """With stop-gradient, the JEPA gradient reaches the model only through view 1."""
    m, batch, out = _run(setup, jepa_target="stopgrad")
    m.zero_grad()
    out["jepa"].backward()
    g_stop = m.lm.model.embed_tokens.weight.grad.clone()
    m2, _, out2 = _run(setup)
    out2["jepa"].backward()
    g_full = m2.lm.model.embed_tokens.weight.grad
    assert not torch.allclose(g_stop, g_full)
    tok, pred, exs = setup
    # tokens appearing only inside step 2 copies get no JEPA gradient through the copy under stopgrad
    assert g_stop[pred[0]].abs().sum() > 0


def test_ema_target_uses_the_ema_model(setup):
    m, batch, out = _run(setup, jepa_target="ema", target_copies=True)
    # At start the EMA model equals the online one: same loss as stop-gradient.
    _, _, ref = _run(setup, jepa_target="stopgrad")
    torch.testing.assert_close(out["jepa"], ref["jepa"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in m.lm.parameters():
            p.add_(0.1)
    before = [p.clone() for p in m._ema[0].parameters()]
    m.update_ema()
    moved = [not torch.equal(a, b) for a, b in zip(before, m._ema[0].parameters())]
    assert all(moved)
    assert not any(p.requires_grad for p in m._ema[0].parameters())
    assert all("_ema" not in n for n, _ in m.named_parameters())


def test_lbd_schedule():
    o = JEPAOptions(lbd=1.0, lbd_warmup_steps=10, lbd_schedule="linear")
    assert o.lbd_at(0, 110) == 0.0 and o.lbd_at(5, 110) == 0.5
    assert o.lbd_at(10, 110) == 1.0 and o.lbd_at(60, 110) == pytest.approx(0.5) and o.lbd_at(110, 110) == 0.0
    c = JEPAOptions(lbd=2.0, lbd_schedule="cosine")
    assert (
        c.lbd_at(0, 100) == 2.0 and c.lbd_at(50, 100) == pytest.approx(1.0) and c.lbd_at(100, 100) == pytest.approx(0.0)
    )
    assert JEPAOptions(lbd=0.3).lbd_at(77, 100) == 0.3


def test_vicreg_penalises_collapse_not_spread():
    torch.manual_seed(0)
    spread = torch.randn(256, 4) * 1.5
    collapsed = torch.ones(256, 4)
    assert variance_covariance(collapsed).item() == pytest.approx(1.0, abs=0.02)  # all stds 0 -> hinge 1
    assert variance_covariance(spread).item() < 0.1
    assert jepa_loss(collapsed, collapsed, "vicreg").item() > jepa_loss(spread, spread, "vicreg").item()


def test_vicreg_weight_adds_regulariser(setup):
    _, _, plain = _run(setup)
    _, _, reg = _run(setup, vicreg_weight=0.5)
    v1, v2 = plain["view1"].float(), plain["view2"].float()
    want = plain["jepa"] + 0.5 * (variance_covariance(v1) + variance_covariance(v2))
    torch.testing.assert_close(reg["jepa"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
# Two compiles, not four: each scope once, each head kind once (SmolLM2 ties its head to the input
# embeddings); a torch.compile costs ~6 s on 2 CPU cores.
@pytest.mark.parametrize("tie,scope", [(True, "decoder"), (False, "layers")])
def test_compiled_decoder_gives_the_eager_loss_and_gradients(setup, tie: bool, scope: str):
    """--torch_compile compiles the decoder in place: same loss and gradients, same parameter names."""
    from step_jepa.models.loading import compile_decoder

    tok, pred, exs = setup
    batch = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred)(exs)
    results = []
    for compiled in (False, True):
        lm = build_tiny_model(len(tok), seed=5, tie=tie)
        names = [n for n, _ in lm.named_parameters()]
        if compiled:
            compile_decoder(lm, scope)
            assert [n for n, _ in lm.named_parameters()] == names  # checkpoints keep their keys
        m = StepJEPAModel(lm, JEPAOptions(lbd=1.0))
        out = m(**batch)
        loss = out["lm_sum"] / out["n_tokens"] + out["jepa"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}))
    (l_eager, g_eager), (l_comp, g_comp) = results
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-5, atol=1e-6)
    assert g_comp.keys() == g_eager.keys()
    for n in g_eager:
        torch.testing.assert_close(g_comp[n], g_eager[n], rtol=1e-4, atol=1e-5, msg=n)
