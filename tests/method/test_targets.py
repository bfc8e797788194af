"""Targets that cannot collapse with view 1: the frozen starting model and a view 2 read at another layer."""

import pytest
import torch
from conftest import record

from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator
from step_jepa.method.masks import PAD
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

STEPS = [
    ["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."],
    ["Ann has 10 pens.", "She gives away 2, so 10 - 2 = 8.", "The final answer is \\boxed{8}."],
    ["A box holds 6 eggs.", "Two boxes hold 2 * 6 = 12 eggs.", "The final answer is \\boxed{12}."],
]
K = 2


@pytest.fixture(scope="module")
def setup():
    tok = build_tiny_tokenizer("chatml")
    pred = add_predictor_tokens(build_tiny_model(len(tok)), tok, K)
    exs = [segment(record(s, rid=str(i)), tok) for i, s in enumerate(STEPS)]
    return tok, pred, exs


def _model(setup, **opts) -> StepJEPAModel:
    tok, _, _ = setup
    return StepJEPAModel(build_tiny_model(len(tok), seed=5), JEPAOptions(lbd=1.0, **opts))


def _batch(setup, m: StepJEPAModel, mode="single_pass"):
    """The batch the trainer builds for `m`: the step copies apart for an EMA or frozen target."""
    tok, pred, exs = setup
    copies = m.options.target_model()
    return StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, mode=mode, target_copies=copies)(exs)


def _isolated_step2(setup, layer: int | None = None) -> torch.Tensor:
    """View 2 written out by hand: the *starting* model on step 2 alone, at the positions it has
    after step 1 and K predictors, read at its last token (final norm; at `layer` if given)."""
    tok, _, exs = setup
    ref = build_tiny_model(len(tok), seed=5).model  # the same starting weights
    out = []
    for ex in exs:
        e1 = ex.step_spans[0][1]
        s2, e2 = ex.step_spans[1]
        ids = torch.tensor([ex.input_ids[s2:e2]])
        pos = torch.arange(e1 + K, e1 + K + e2 - s2)[None]
        o = ref(input_ids=ids, position_ids=pos, output_hidden_states=True)
        h = o.last_hidden_state if layer is None else ref.norm(o.hidden_states[layer + 1])
        out.append(h[0, -1])
    return torch.stack(out)


def _jepa_grad_of_step2_only_tokens(m: StepJEPAModel, setup) -> torch.Tensor:
    """The JEPA gradient on embedding rows of tokens that occur only in step 2 and later: view 1
    never sees them, so they get a gradient only through view 2."""
    tok, pred, exs = setup
    batch = _batch(setup, m)
    m.zero_grad()
    m(**batch)["jepa"].backward()
    seen = {t for ex in exs for t in ex.input_ids[: ex.step_spans[0][1]]} | set(pred)
    later = {t for ex in exs for t in ex.input_ids[ex.step_spans[1][0] :]} - seen
    assert later
    return m.lm.model.embed_tokens.weight.grad[sorted(later)]


def test_frozen_copy_never_changes_across_optimizer_steps(setup):
    m = _model(setup, jepa_target="frozen")
    frozen = m._frozen[0]
    start = {n: p.clone() for n, p in frozen.named_parameters()}
    online = {n: p.clone() for n, p in m.lm.named_parameters()}
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    batch = _batch(setup, m)
    for _ in range(3):
        opt.zero_grad()
        m(**batch)["loss"].backward()
        opt.step()
        m.update_ema()  # what the trainer calls after each step: it must not move a frozen target
    assert all(torch.equal(p, start[n]) for n, p in frozen.named_parameters())
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert not torch.equal(m.lm.model.layers[0].mlp.up_proj.weight, online["model.layers.0.mlp.up_proj.weight"])
    assert all("_frozen" not in n for n, _ in m.named_parameters())
    # After training moved the online model, view 2 is still the starting model's.
    torch.testing.assert_close(m(**batch)["view2"], _isolated_step2(setup), rtol=1e-5, atol=1e-6)


def test_frozen_view2_is_the_starting_model_on_the_isolated_step(setup):
    m = _model(setup, jepa_target="frozen")
    with torch.no_grad():
        for p in m.lm.parameters():
            p.add_(0.05)
    out = m(**_batch(setup, m))
    torch.testing.assert_close(out["view2"], _isolated_step2(setup), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "opts",
    [
        dict(jepa_target="frozen"),
        dict(jepa_target="stopgrad", jepa_target_layer=0),
        dict(jepa_target="frozen", jepa_target_layer=0),
    ],
)
def test_jepa_gradient_reaches_only_view1(setup, opts):
    g = _jepa_grad_of_step2_only_tokens(_model(setup, **opts), setup)
    assert torch.count_nonzero(g) == 0
    g_grad = _jepa_grad_of_step2_only_tokens(_model(setup), setup)  # the seed's target: view 2 pulled too
    assert torch.count_nonzero(g_grad) > 0


def test_frozen_target_keeps_only_the_layers_view2_needs(setup):
    assert len(_model(setup, jepa_target="frozen")._frozen[0].layers) == 2
    assert len(_model(setup, jepa_target="frozen", jepa_target_layer=0)._frozen[0].layers) == 1
    assert len(_model(setup, jepa_target="frozen", jepa_layer=-2)._frozen[0].layers) == 1


@pytest.mark.parametrize("target", ["stopgrad", "frozen"])
def test_target_layer_reads_view2_there_and_view1_at_jepa_layer(setup, target):
    m, d = _model(setup, jepa_target=target, jepa_target_layer=0), _model(setup)
    out, default = m(**_batch(setup, m)), d(**_batch(setup, d))
    torch.testing.assert_close(out["view1"], default["view1"])  # view 1 stays at the last layer
    torch.testing.assert_close(out["view2"], _isolated_step2(setup, layer=0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["view2"], default["view2"])


def test_target_layer_goes_through_the_predictor_head_on_view1_only(setup):
    m = _model(setup, jepa_target="stopgrad", jepa_target_layer=0, jepa_predictor_head="mlp")
    with torch.no_grad():
        m.head.net[-1].bias.fill_(0.3)
    out = m(**_batch(setup, m))
    p = _model(setup)
    plain = p(**_batch(setup, p))
    torch.testing.assert_close(out["view1"], plain["view1"] + 0.3)
    torch.testing.assert_close(out["view2"], _isolated_step2(setup, layer=0), rtol=1e-5, atol=1e-6)


def _loss_and_grads(m: StepJEPAModel, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m.zero_grad()
    out = m(**batch)
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in m.lm.named_parameters()}


@pytest.mark.parametrize(
    "opts",
    [
        dict(jepa_target="frozen"),
        dict(jepa_target="stopgrad", jepa_target_layer=0),
        dict(jepa_target="frozen", jepa_target_layer=0, jepa_layer=0),
    ],
)
def test_single_pass_equals_two_pass(setup, opts):
    m = _model(setup, gamma=0.5, **opts)
    l1, g1 = _loss_and_grads(m, _batch(setup, m, "single_pass"))
    l2, g2 = _loss_and_grads(m, _batch(setup, m, "two_pass"))
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=0)
    for name in g2:
        err = (g1[name] - g2[name]).norm() / g2[name].norm().clamp(min=1e-30)
        assert err < 1e-5, f"{name}: relative gradient error {err:.2e}"


def test_target_layer_with_gradients_is_refused():
    from step_jepa.method.options import JEPAOptions

    with pytest.raises(ValueError, match="--jepa_target_layer reads view 2 without gradients"):
        JEPAOptions(jepa_target_layer=0).validate()
    JEPAOptions(jepa_target="stopgrad", jepa_target_layer=0).validate()


def test_a_target_encoder_takes_the_step_copies_out_of_the_online_rows(setup):
    """With an EMA or frozen target nothing reads the online copy of step i+1, so the collator
    leaves it out: the online rows end at the predictors, view 2's index is a placeholder (view
    1's), and the copies travel alone for the target encoder."""
    tok, pred, exs = setup
    full = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred)(exs)
    lean = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, target_copies=True)(exs)
    for r, ex in enumerate(exs):
        n, e2 = len(ex.input_ids), ex.step_spans[1]
        assert int((lean["role"][r] != PAD).sum()) == n + K  # the example and K predictors
        assert int((full["role"][r] != PAD).sum()) == n + K + e2[1] - e2[0]
        assert lean["input_ids"][r, n : n + K].tolist() == pred
    assert torch.equal(lean["view1_cols"], lean["view2_cols"])
    assert torch.equal(lean["view1_cols"], full["view1_cols"])
    copies = lean["copies"]
    for r, ex in enumerate(exs):
        s2, e2 = ex.step_spans[1]
        row = copies["input_ids"][r][copies["role"][r] != PAD].tolist()
        assert row == ex.input_ids[s2:e2]
        assert copies["position_ids"][r, 0] == ex.step_spans[0][1] + K  # after step 1 and K predictors
    with pytest.raises(ValueError, match="collated for an EMA or frozen target"):
        _model(setup, jepa_target="stopgrad")(**lean)


def test_the_budget_counts_no_online_copy_for_a_target_encoder(setup):
    from step_jepa.training.config import StepJEPAConfig
    from step_jepa.training.data import appended_tokens

    _, _, exs = setup
    ex = exs[0]
    s2, e2 = ex.step_spans[1]
    kw = dict(lbd=1.0, predictors=K, output_dir="/tmp/unused", report_to="none")
    assert appended_tokens(ex, StepJEPAConfig(**kw)) == K + e2 - s2
    assert appended_tokens(ex, StepJEPAConfig(jepa_target="frozen", **kw)) == K
    assert appended_tokens(ex, StepJEPAConfig(jepa_target="ema", **kw)) == K
