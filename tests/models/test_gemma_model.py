"""The real Gemma 3 270M (converted from the PyPI GGUF) trains exactly: single pass = two passes,
and our masks keep the 512-token window of its sliding-attention layers.

About 2 minutes on CPU, plus a one-off conversion (1-3 minutes, 1 GiB in the cache). So that CI
stays short, it runs only when a converted copy is cached already or STEP_JEPA_TEST_GEMMA=1 asks
for it (the tiny Gemma 3 of test_sliding_window.py checks the same mask rules in seconds).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from conftest import record

from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator, meta_of, original_item, place
from step_jepa.method.masks import build_model_mask
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens, load_tokenizer
from step_jepa.models.sources import cached_model_dir, offline_model, resolve_model_path

GEMMA = offline_model("gemma3-270m")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gguf") is None or importlib.util.find_spec(GEMMA.parts[0][0]) is None,
        reason="needs `" + GEMMA.install_hint + "`",
    ),
    pytest.mark.skipif(
        cached_model_dir(GEMMA) is None and os.environ.get("STEP_JEPA_TEST_GEMMA") != "1",
        reason="no converted gemma3-270m cached; STEP_JEPA_TEST_GEMMA=1 converts it (1 GiB)",
    ),
]
CHECKED = (
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.5.self_attn.k_proj.weight",
    "model.layers.17.mlp.down_proj.weight",
)


@pytest.fixture(scope="module")
def gemma():
    from transformers import AutoModelForCausalLM

    path = resolve_model_path("gemma3-270m")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), load_tokenizer(path)


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = StepJEPAModel(model, JEPAOptions(lbd=0.5, jepa_loss="cosine"))(**batch)
    loss = out["lm_sum"] / out["n_tokens"] + 0.5 * out["jepa"]
    loss.backward()
    params = dict(model.named_parameters())
    return loss.detach(), out["lm_sum"].detach() / out["n_tokens"], {n: params[n].grad.clone() for n in CHECKED}


def test_real_gemma_single_pass_equals_two_pass(gemma):
    model, tok = gemma
    assert "sliding_attention" in model.config.layer_types and model.config.sliding_window == 512
    pred = add_predictor_tokens(model, tok, 2)
    recs = [
        record(["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."]),
        record(
            ["Ann has 2 pears.", "She eats one, so 1 is left.", "The final answer is \\boxed{1}."],
            question="How many pears?",
            rid="r1",
        ),
    ]
    exs = [segment(r, tok) for r in recs]
    res = {
        mode: _loss_and_grads(
            model, StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, mode=mode, pairs="all")(exs)
        )
        for mode in ("two_pass", "single_pass")
    }
    (l2, _, g2), (l1, lm1, g1) = res["two_pass"], res["single_pass"]
    assert 0 < lm1.item() < 8  # trained weights (ln 262k ≈ 12.5 for random ones)
    torch.testing.assert_close(l1, l2, rtol=1e-4, atol=0)
    for name in CHECKED:
        err = (g1[name] - g2[name]).norm() / g2[name].norm().clamp(min=1e-30)
        assert err < 1e-3, f"{name}: relative gradient error {err:.2e}"


def test_real_gemma_masks_keep_the_sliding_window(gemma):
    """A 600-token sequence: our dict of masks gives HF's own result, the window-less mask does not."""
    model, tok = gemma
    steps = [f"Step {i}: we add {i} to the running total and write it down carefully." for i in range(40)]
    ex = segment(record(steps), tok)
    batch = place([[original_item(ex)]], pad_id=tok.pad_token_id)
    ids, pos = batch["input_ids"], batch["position_ids"]
    assert ids.shape[1] > model.config.sliding_window
    with torch.no_grad():
        ref = model.model(input_ids=ids, position_ids=pos).last_hidden_state
        mask = build_model_mask(meta_of(batch), model.config, "sdpa", torch.float32, pos)
        ours = model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        full = mask["full_attention"]
        no_window = model.model(input_ids=ids, attention_mask=full, position_ids=pos).last_hidden_state
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert (no_window[0, 520:] - ref[0, 520:]).abs().max() > 1e-3
