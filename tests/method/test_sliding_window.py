"""Sliding-window layers (Gemma 3, Mistral): our 4D masks carry the window, so they match HF's own."""

from __future__ import annotations

import pytest
import torch
from conftest import record

from step_jepa.data.segment import segment
from step_jepa.method.layout import StepJEPACollator, meta_of, original_item, place
from step_jepa.method.masks import build_model_mask, sliding_window_of
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens
from step_jepa.models.tiny import build_tiny_tokenizer

WINDOW = 6  # far shorter than the examples, so a dropped window changes every later hidden state


def _tiny_gemma3(vocab: int, impl: str = "sdpa", seed: int = 0):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=512,
        attn_implementation=impl,
    )
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def _records():
    steps = [
        ["Tom has 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The final answer is \\boxed{7}."],
        ["Ann has 2 pears.", "She eats one.", "Then one is left.", "The final answer is \\boxed{1}."],
    ]
    return [record(s, rid=str(i)) for i, s in enumerate(steps)]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_our_mask_equals_hf_sliding_mask_on_plain_sequences(impl):
    """On plain causal rows our mask (a dict per layer type) gives HF's own sliding-window result."""
    tok = build_tiny_tokenizer("chatml")
    model = _tiny_gemma3(len(tok), impl)
    ex = segment(_records()[0], tok)
    batch = place([[original_item(ex)]], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape[1] > 3 * WINDOW
    ids, pos = batch["input_ids"], batch["position_ids"]
    dtype = torch.float32
    with torch.no_grad():
        ref = model.model(input_ids=ids, position_ids=pos).last_hidden_state
        mask = build_model_mask(meta_of(batch), model.config, impl, dtype, pos)
        ours = model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        full = mask["full_attention"]
        no_window = model.model(input_ids=ids, attention_mask=full, position_ids=pos).last_hidden_state
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(no_window, ref, atol=1e-3), "the window must matter in this test"


def test_sliding_window_of_configs():
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig

    g = Gemma3TextConfig(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], sliding_window=8)
    assert sliding_window_of(g) == (8, ["sliding_attention", "full_attention"])
    assert sliding_window_of(MistralConfig(sliding_window=16))[0] == 16
    assert sliding_window_of(LlamaConfig()) == (None, None)
    weird = LlamaConfig(num_hidden_layers=1)
    weird.layer_types = ["chunked_attention"]
    with pytest.raises(NotImplementedError):
        sliding_window_of(weird)


@pytest.mark.parametrize("packing", [False, True])
def test_single_pass_equals_two_pass_with_sliding_window(packing):
    tok = build_tiny_tokenizer("chatml")
    model = _tiny_gemma3(len(tok), seed=1)
    model.train()
    pred = add_predictor_tokens(model, tok, 2)
    exs = [segment(r, tok) for r in _records()]
    res = {}
    for mode in ("two_pass", "single_pass"):
        col = StepJEPACollator(
            pad_id=tok.pad_token_id, pred_ids=pred, mode=mode, pairs="all", packing=packing, max_tokens=512
        )
        m = StepJEPAModel(model, JEPAOptions(lbd=0.5, jepa_loss="cosine"))
        model.zero_grad()
        out = m(**col(exs))
        loss = out["lm_sum"] / out["n_tokens"] + 0.5 * out["jepa"]
        loss.backward()
        res[mode] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (l2, g2), (l1, g1) = res["two_pass"], res["single_pass"]
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=0)
    for name in g2:
        err = (g1[name] - g2[name]).norm() / g2[name].norm().clamp(min=1e-30)
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"
