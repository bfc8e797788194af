"""The library API for users of their own Trainer: exports, forward's loss, labels, tokenized rows."""

import pytest
import torch
from conftest import mixed_records

import step_jepa
from step_jepa.data.segment import SegmentError, segment
from step_jepa.method.layout import StepJEPACollator
from step_jepa.method.model import StepJEPAModel, step_jepa_loss
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer
from step_jepa.training.integration import tokenize_for_step_jepa


@pytest.fixture(scope="module")
def setup():
    tok = build_tiny_tokenizer("chatml")
    model = build_tiny_model(len(tok), seed=1)
    pred = add_predictor_tokens(model, tok, 2)
    return tok, model, pred


def _collator(tok, pred, **kw):
    return StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, pairs="all", **kw)


def test_public_api_exports():
    for name in step_jepa.__all__:
        assert getattr(step_jepa, name) is not None
    assert step_jepa.StepJEPAModel is StepJEPAModel
    with pytest.raises(AttributeError):
        step_jepa.no_such_name  # noqa: B018


@pytest.mark.parametrize("packing", [False, True])
def test_collator_emits_standard_labels(setup, packing):
    tok, _, pred = setup
    b = _collator(tok, pred, packing=packing, max_tokens=256)([segment(r, tok) for r in mixed_records()])
    assert b["labels"].shape == b["input_ids"].shape
    assert b["labels"][:, 1:].equal(b["lm_targets"][:, :-1]) and (b["labels"][:, 0] == -100).all()
    # What the Trainer counts as num_items_in_batch is exactly the tokens the loss uses.
    assert int(b["labels"][..., 1:].ne(-100).sum()) == b["lm_index"].numel()


def test_forward_loss_is_the_combined_objective(setup):
    tok, model, pred = setup
    opts = JEPAOptions(lbd=0.3, gamma=0.7, stp_lbd=0.2)
    m = StepJEPAModel(model, opts)
    batch = _collator(tok, pred, stp="random")([segment(r, tok) for r in mixed_records()])
    out = m(**batch)
    want = 0.7 * out["lm_sum"] / out["n_tokens"] + 0.3 * out["jepa"] + 0.2 * out["stp"]
    torch.testing.assert_close(out["loss"], want)
    assert out["loss"].requires_grad


def test_forward_loss_normalised_over_accumulation(setup):
    """With num_items_in_batch (what the Trainer passes) the micro-batch losses of one optimizer
    step sum to γ·(all LM token losses)/(all tokens) + λ·(mean of the micro-batch JEPA means)."""
    tok, model, pred = setup
    m = StepJEPAModel(model, JEPAOptions(lbd=0.5))
    m.accumulation_steps = 2
    exs = [segment(r, tok) for r in mixed_records()]
    col = _collator(tok, pred)
    parts = [col(exs[:3]), col(exs[3:])]
    n = sum(int(p["labels"][..., 1:].ne(-100).sum()) for p in parts)
    outs = [m(**p, num_items_in_batch=torch.tensor(n)) for p in parts]
    total = sum(o["loss"] for o in outs)
    want = sum(o["lm_sum"] for o in outs) / n + 0.5 * sum(o["jepa"] for o in outs) / 2
    torch.testing.assert_close(total, want)
    # The shared function is what StepJEPATrainer.compute_loss uses.
    torch.testing.assert_close(
        step_jepa_loss(outs[0], m.options, num_items_in_batch=n, accumulation_steps=2), outs[0]["loss"]
    )


def test_tokenized_rows_collate_like_segmented(setup):
    tok, _, pred = setup
    recs = mixed_records()
    exs = [segment(r, tok, max_length=90) for r in recs]
    rows = [tokenize_for_step_jepa(r, tok, max_length=90) for r in recs]
    assert any(ex.truncated for ex in exs) and any(None in ex.step_spans for ex in exs)
    for packing in (False, True):
        col = _collator(tok, pred, packing=packing, max_tokens=256)
        a, b = col(exs), col(rows)
        for k in a:
            assert a[k].equal(b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k


def test_tokenize_for_step_jepa_with_datasets_map(setup):
    datasets = pytest.importorskip("datasets")
    tok, _, pred = setup
    recs = mixed_records() + [{"id": "bad", "messages": [{"role": "user", "content": "no answer"}]}]
    with pytest.raises(SegmentError):
        tokenize_for_step_jepa(recs[-1], tok)
    ds = datasets.Dataset.from_list([{"id": r["id"], "messages": r["messages"]} for r in recs])
    mapped = ds.map(tokenize_for_step_jepa, batched=True, fn_kwargs={"tokenizer": tok}, remove_columns=ds.column_names)
    assert len(mapped) == len(recs) - 1  # the record without an answer is dropped
    col = _collator(tok, pred)
    a, b = col([segment(r, tok) for r in recs[:-1]]), col([mapped[i] for i in range(len(mapped))])
    assert a["input_ids"].equal(b["input_ids"]) and a["view1_cols"].equal(b["view1_cols"])
