"""`--torch_compile` must compile the decoder once per run: batches of other lengths, a batch
without a valid step pair, a packed group of one example and a last short batch must all reuse
the graph (a recompile of a 30-layer decoder costs minutes on the GPU)."""

import pytest
import torch
from conftest import record

from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator, meta_of
from step_jepa.method.masks import dense_mask
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens, compile_decoder
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

PAIRED = [
    ["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."],
    ["Ann has 10 pens and gives 2 away.", "So 10 - 2 = 8 are left.", "The final answer is \\boxed{8}."],
]
NO_PAIR = [["One box holds 6 eggs, two hold 2 * 6 = 12. The final answer is \\boxed{12}."]]


def _batches(tok, pred, mode: str, packing: bool) -> list[dict]:
    """Varying lengths; a batch whose examples have no pair; a batch of one example."""
    ex = lambda steps, i: segment(record(steps, rid=str(i)), tok)  # noqa: E731
    paired, lone = [ex(s, i) for i, s in enumerate(PAIRED)], ex(NO_PAIR[0], 9)
    groups = [paired, [lone, lone], [paired[1]], [lone]]
    col = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, mode=mode, packing=packing, min_rows=2)
    return [col([g] if packing else g) for g in groups]


def _losses(lm, batches: list[dict]) -> list[torch.Tensor]:
    m = StepJEPAModel(lm, JEPAOptions(lbd=0.5))
    out = []
    for b in batches:
        terms = m.terms(b)
        loss = terms["lm_sum"] / terms["n_tokens"] + 0.5 * terms["jepa"]
        loss.backward()
        out.append(loss.detach())
    return out


# Each case is a torch.compile of its own (~15 s on 2 CPU cores), so each scope, each mode and
# packing appear once: the per-layer SFT exception, per-layer compiling of packed single-pass
# batches, and the whole decoder on padded single-pass batches.
CASES = [("layers", "sft", False), ("layers", "single_pass", True), ("decoder", "single_pass", False)]


@pytest.mark.slow
@pytest.mark.parametrize("scope,mode,packing", CASES)
def test_compiled_training_compiles_the_decoder_once(mode: str, packing: bool, scope: str, device: str = "cpu"):
    """One graph for the run. Per-layer compiling of a plain-causal (SFT, padded) batch is the
    exception: an unpadded batch hands the layers no mask (SDPA's is_causal shortcut) and a padded
    one a tensor, so the layer graph exists twice — a one-layer compile, seconds, once per run."""
    import torch._dynamo.utils as du

    tok = build_tiny_tokenizer("chatml")
    pred = add_predictor_tokens(build_tiny_model(len(tok)), tok, 4) if mode != "sft" else []
    batches = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in _batches(tok, pred, mode, packing)
    ]
    eager = _losses(build_tiny_model(len(tok), seed=5).to(device), batches)
    torch._dynamo.reset()
    du.counters.clear()
    lm = build_tiny_model(len(tok), seed=5).to(device)
    compile_decoder(lm, scope)
    compiled = _losses(lm, batches)
    graphs = 2 if (scope, mode) == ("layers", "sft") else 1
    assert du.counters["stats"]["unique_graphs"] == graphs, dict(du.counters["stats"])
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("scope,mode,packing", [("decoder", "single_pass", False), ("layers", "sft", False)])
def test_compiled_training_compiles_the_decoder_once_on_cuda(mode: str, packing: bool, scope: str):
    """The same reuse on the GPU, where a recompile of a real decoder costs minutes."""
    test_compiled_training_compiles_the_decoder_once(mode, packing, scope, device="cuda")


def test_collator_pads_a_short_batch_and_keeps_one_mask_kind(tok_chatml):
    """min_rows adds an all-padding row (no labels, no views); a single-pass or packed collator
    never hands out a plain-causal batch, whose mask would be of another kind."""
    tok = tok_chatml
    ex = segment(record(NO_PAIR[0]), tok)
    one = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=[], mode="sft", min_rows=2)([ex])
    ref = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=[], mode="sft")([ex])
    assert one["input_ids"].shape[0] == 2 and one["plain_causal"] and ref["plain_causal"]
    assert torch.equal(one["lm_labels"], ref["lm_labels"]) and (one["labels"][1] == -100).all()
    for kw in ({"mode": "single_pass"}, {"mode": "sft", "packing": True}):
        assert not StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=[], **kw)([ex])["plain_causal"]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("mode,plain", [("sft", True), ("sft", False), ("single_pass", False)])
def test_padding_row_changes_no_gradient(tok_chatml, impl: str, mode: str, plain: bool):
    """The all-padding row of min_rows changes nothing: finite hidden states, and gradients equal
    to those of the same example without it (a NaN in that row would poison every weight's
    gradient through NaN·0 in the backward matmuls). Through our mask, each padding query sees
    itself, so no softmax row is empty on any backend; through the model's own (plain causal)
    mask the row is fully masked, which torch's SDPA (>= 2.5) answers with zeros and eager
    attention's additive minimum with finite weights."""
    tok = tok_chatml
    lm = build_tiny_model(len(tok), seed=3, attn_implementation=impl)
    pred = add_predictor_tokens(lm, tok, 4) if mode != "sft" else []
    ex = segment(record(PAIRED[0]), tok)
    m = StepJEPAModel(lm, JEPAOptions(lbd=0.5))
    grads = []
    for rows in (1, 2):
        b = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, mode=mode, min_rows=rows)([ex])
        assert b["input_ids"].shape[0] == rows and b["plain_causal"] == (mode == "sft")
        b["plain_causal"] = plain
        if not plain:
            assert dense_mask(meta_of(b)).any(-1).all()  # no query without a key
        lm.zero_grad()
        with torch.no_grad():
            final, views = m.hidden_states(b)
        assert torch.isfinite(final).all() and torch.isfinite(views).all()
        terms = m.terms(b)
        assert (terms["jepa"] != 0) == (mode != "sft")
        (terms["lm_sum"] / terms["n_tokens"] + 0.5 * terms["jepa"]).backward()
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None})
    ref, padded = grads
    assert ref.keys() == padded.keys() and ref
    for n, g in padded.items():
        assert torch.isfinite(g).all(), n
        torch.testing.assert_close(g, ref[n], rtol=1e-5, atol=1e-7, msg=n)
