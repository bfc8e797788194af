"""The slab KV cache and the grouped decode attention: same numbers as transformers' own paths."""

from __future__ import annotations

import types

import pytest
import torch

from step_jepa.evaluation import decode as gen
from step_jepa.evaluation import kv_cache as decoding
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer


def _hf_sdpa(module, q, k, v, mask, **kw):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, q, k, v, mask, **kw)[0]


@pytest.mark.parametrize("groups", [1, 3])
def test_grouped_attention_equals_repeated_heads(groups: int) -> None:
    torch.manual_seed(0)
    rows, kv_heads, length, dim = 4, 2, 11, 8
    module = types.SimpleNamespace(num_key_value_groups=groups, is_causal=True)
    q = torch.randn(rows, kv_heads * groups, 1, dim)
    k, v = torch.randn(rows, kv_heads, length, dim), torch.randn(rows, kv_heads, length, dim)
    mask = torch.ones(rows, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :5] = False  # left padding of different widths
    mask[2, ..., :1] = False
    got, _ = decoding.grouped_decode_attention(module, q, k, v, mask, scaling=0.3)
    want = _hf_sdpa(module, q, k, v, mask, scaling=0.3)
    assert got.shape == want.shape == (rows, 1, kv_heads * groups, dim)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_grouped_attention_hands_prompts_to_hf_sdpa() -> None:
    """Several query tokens (prefill) are not a decode step: the result is transformers' causal SDPA."""
    torch.manual_seed(1)
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    got, _ = decoding.grouped_decode_attention(module, q, k, v, None)
    torch.testing.assert_close(got, _hf_sdpa(module, q, k, v, None))


def test_slab_layer_writes_in_place_and_selects_rows() -> None:
    keys, values = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    layer = decoding.SlabLayer(keys, values, capacity=6)
    buffer = layer._k
    new_k, new_v = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8)
    k, v = layer.update(new_k, new_v)
    assert layer._k is buffer and k.data_ptr() == buffer.data_ptr()  # no copy of the cache
    torch.testing.assert_close(k, torch.cat([keys, new_k], 2))
    torch.testing.assert_close(v, torch.cat([values, new_v], 2))
    assert layer.get_seq_length() == 5
    layer.batch_select_indices(torch.tensor([0, 2]))
    torch.testing.assert_close(layer.keys, torch.cat([keys, new_k], 2)[[0, 2]])
    layer.update(new_k[:2], new_v[:2])
    with pytest.raises(RuntimeError, match="capacity of 6"):
        layer.update(new_k[:2], new_v[:2])


def test_decode_uses_slabs_and_grouped_attention(monkeypatch) -> None:
    """The fast pieces really run in the decode loop (the loop's tokens are compared with
    ``model.generate`` in test_evaluate), and the model's attention setting is restored afterwards."""
    tok = build_tiny_tokenizer("chatml")
    model = build_tiny_model(len(tok), seed=1, attn_implementation="sdpa").eval()
    calls = {"decode": 0, "slabs": 0}
    real_attn, real_slabs = decoding.grouped_decode_attention, decoding.to_slabs

    def counting_attn(module, query, *args, **kwargs):
        calls["decode"] += query.shape[2] == 1
        return real_attn(module, query, *args, **kwargs)

    def counting_slabs(cache, capacity):
        calls["slabs"] += real_slabs(cache, capacity)
        return calls["slabs"]

    monkeypatch.setattr(decoding, "grouped_decode_attention", counting_attn)
    monkeypatch.setattr(decoding, "to_slabs", counting_slabs)
    seqs = [[5, 6, 7, 8], [9, 10]]
    with torch.no_grad():
        gen._decode_batch(model, seqs, 4, [], tok.pad_token_id)
    layers = model.config.num_hidden_layers
    assert calls == {"decode": 3 * layers, "slabs": layers}
    assert model.config._attn_implementation == "sdpa"


def test_attention_switch_only_for_sdpa() -> None:
    tok = build_tiny_tokenizer("chatml")
    eager = build_tiny_model(len(tok), seed=1, attn_implementation="eager")
    with decoding.decode_attention(eager) as switched:
        assert not switched and eager.config._attn_implementation == "eager"
    sdpa = build_tiny_model(len(tok), seed=1, attn_implementation="sdpa")
    with pytest.raises(ValueError), decoding.decode_attention(sdpa) as switched:
        assert switched and sdpa.config._attn_implementation == decoding.DECODE_ATTENTION
        raise ValueError("boom")
    assert sdpa.config._attn_implementation == "sdpa"


def test_sliding_window_models_keep_the_2d_mask() -> None:
    """A 4D padding mask would bypass the window, so such models take transformers' mask path."""
    tok = build_tiny_tokenizer("chatml")
    model = build_tiny_model(len(tok), seed=1, attn_implementation="sdpa")
    assert gen._decode_mask(model) is gen._padding_mask_4d
    model.config.sliding_window, model.config.use_sliding_window = 16, True
    assert gen._decode_mask(model) is gen._identity
