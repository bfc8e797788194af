"""Semantic Tube Prediction: the loss on literal vectors, the triplet positions, and the model's term
against hidden states of each example run alone."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import record

from step_jepa.data.segment import IGNORE_INDEX, segment
from step_jepa.method.layout import StepJEPACollator, stp_triplet
from step_jepa.method.losses import stp_loss
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

STEPS = [
    ["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."],
    ["Ann has 10 pens.", "The final answer is \\boxed{10}."],
    ["A box holds 6 eggs.", "Two boxes hold 2 * 6 = 12 eggs.", "Three hold 18.", "The answer is \\boxed{18}."],
]


def test_straight_trajectory_costs_nothing_a_turn_costs_one_a_reversal_two():
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    r = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[3.0, 0.0], [1.0, 5.0], [0.5, 0.0]])
    per = [0.0, 1.0, 2.0]  # same direction (any length), a right angle, straight back
    assert stp_loss(s[:1], r[:1], t[:1]).item() == pytest.approx(0.0, abs=1e-7)
    assert stp_loss(s, r, t).item() == pytest.approx(sum(per) / 3)


def test_stp_loss_by_hand_at_45_degrees():
    s, r, t = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 1.0]]), torch.tensor([[3.0, 2.0]])
    assert stp_loss(s, r, t).item() == pytest.approx(1 - 1 / math.sqrt(2))


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer("chatml")


@pytest.fixture(scope="module")
def exs(tok):
    return [segment(record(s, rid=str(i)), tok) for i, s in enumerate(STEPS)]


def test_random_triplets_are_three_ordered_answer_tokens(exs):
    rng = random.Random(0)
    for ex in exs:
        for _ in range(20):
            s, r, t = stp_triplet(ex, "random", rng)
            assert s < r < t
            assert all(ex.labels[i] != IGNORE_INDEX for i in (s, r, t))


def test_step_triplets_are_the_ends_of_prompt_and_steps(tok, exs):
    """Two steps: the only triplet is (last prompt token, last token of step 1, last token of step 2)."""
    ex = exs[1]
    (a0, e0), (a1, e1) = ex.step_spans
    assert stp_triplet(ex, "steps", random.Random(0)) == (ex.prompt_len - 1, e0 - 1, e1 - 1)
    assert tok.decode(ex.input_ids[a0:e0]).strip() == STEPS[1][0]
    seen = {stp_triplet(exs[2], "steps", random.Random(k)) for k in range(30)}
    ends = [e - 1 for _, e in exs[2].step_spans]
    assert seen == {(exs[2].prompt_len - 1, ends[0], ends[1]), (ends[0], ends[1], ends[2]), (ends[1], ends[2], ends[3])}


def test_no_triplet_without_a_step_pair(tok):
    one = segment(record(["Just one step, \\boxed{1}."]), tok)
    assert stp_triplet(one, "steps", random.Random(0)) is None
    with pytest.raises(ValueError, match="unknown STP positions"):
        stp_triplet(one, "middle", random.Random(0))


def _alone_hidden(model, ex) -> torch.Tensor:
    ids = torch.tensor([ex.input_ids])
    return model.get_decoder()(input_ids=ids).last_hidden_state[0]


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("how", ["random", "steps"])
@pytest.mark.parametrize("mode", ["sft", "single_pass"])
def test_model_term_equals_each_example_run_alone(tok, exs, packing, how, mode):
    """The gathered flat indices address the right tokens in padded and packed rows, and the term
    equals the loss computed from each example's own causal forward pass."""
    torch.manual_seed(0)
    model = build_tiny_model(len(tok) + 1, seed=3)
    pred = [len(tok)]  # one extra row acts as the predictor token
    col = StepJEPACollator(
        pad_id=tok.pad_token_id,
        pred_ids=pred if mode != "sft" else [],
        mode=mode,
        packing=packing,
        max_tokens=4096,
        seed=7,
        stp=how,
    )
    batch = col(exs)
    assert batch["n_stp"] == len(exs) == batch["stp_index"].shape[0]
    out = StepJEPAModel(model, JEPAOptions(lbd=0.5))(**batch)
    T = batch["input_ids"].shape[1]
    hs, hr, ht = [], [], []
    for trip in batch["stp_index"].tolist():
        row, col = divmod(trip[0], T)
        seq = batch["seq"][row]
        start = int((seq == seq[col]).nonzero()[0])  # where this triplet's item begins in its row
        ex = next(e for e in exs if batch["input_ids"][row, start : start + len(e.input_ids)].tolist() == e.input_ids)
        local = [t - row * T - start for t in trip]
        h = _alone_hidden(model, ex)
        hs.append(h[local[0]]), hr.append(h[local[1]]), ht.append(h[local[2]])
    ref = stp_loss(torch.stack(hs), torch.stack(hr), torch.stack(ht))
    torch.testing.assert_close(out["stp"], ref, atol=1e-5, rtol=1e-5)
    out["stp"].backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_collator_without_stp_draws_as_before(tok, exs):
    """Adding the option must not change what runs without it see (pairs=random draws)."""
    a = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=[len(tok)], pairs="random", seed=3)(exs)
    b = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=[len(tok)], pairs="random", seed=3, stp="none")(exs)
    assert torch.equal(a["view2_cols"], b["view2_cols"]) and b["stp_index"].numel() == 0


@pytest.mark.slow
def test_train_with_stp_on_sft_data_logs_the_term(tmp_path: Path):
    """`--lbd 0 --stp_lbd …`: SFT plus STP, no predictor tokens, the term logged and falling or not NaN."""
    from step_jepa.training.config import StepJEPAConfig
    from step_jepa.training.trainer import run_train

    d = tmp_path / "tiny"
    t = build_tiny_tokenizer("chatml")
    build_tiny_model(len(t), seed=0).save_pretrained(d)
    t.save_pretrained(d)
    cfg = StepJEPAConfig(
        model=str(d),
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        lbd=0.0,
        stp_lbd=0.5,
        generate_examples=16,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to="none",
        save_steps=1000,
    )
    run_train(cfg)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    stp = [r["stp_loss"] for r in logs if "stp_loss" in r]
    assert len(stp) == 3 and all(0.0 <= v <= 2.0 for v in stp)
    assert all(r.get("stp_triplet_frac", 1.0) == 1.0 for r in logs if "loss" in r)
    assert not any("jepa_loss" in r for r in logs)
