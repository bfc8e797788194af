"""The static-shape decode loop (step_jepa.evaluation.cuda_graphs) gives model.generate's tokens.

CUDA graphs cannot be recorded on the CPU, so these tests run the very step function a graph
records, eagerly; a GPU run (docs/performance.md) checks the recorded version against the eager loop.
"""

from __future__ import annotations

import pytest
import torch
from test_generation import _hf_generate, _prompt_ids, _staggered_stop

from step_jepa.evaluation import cuda_graphs as gd
from step_jepa.evaluation import decode as gen


def _static(model, seqs, max_new, stops, pad, **kw) -> tuple[list[list[int]], int]:
    fwd, cache, logits, mask, plen = gen._prefilled(model, seqs, max_new, pad, 65536)
    from step_jepa.evaluation.kv_cache import decode_attention

    with decode_attention(model):
        out, stats = gd.decode_batch_static(fwd, cache, logits, mask, plen, max_new, stops, pad, **kw)
    return gen._trim(out.tolist(), set(stops)), stats["captures"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_loop_matches_hf_generate(tok, problems, arch: str) -> None:
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok), arch=arch, seed=1, attn_implementation="sdpa").eval()
    seqs = _prompt_ids(tok, problems)
    pad = tok.pad_token_id
    ref_full = _hf_generate(model, seqs, 24, [], pad)
    stops = [_staggered_stop(ref_full)]
    ref = _hf_generate(model, seqs, 24, stops, pad)
    assert len({len(r) for r in ref}) > 2  # rows finish at different steps: the batch shrinks
    with torch.no_grad():
        # window_step 4: the attention window grows several times during one decode
        for check_every, window_step in ((1, 4), (3, 7), (8, 128)):
            got, captures = _static(model, seqs, 24, stops, pad, check_every=check_every, window_step=window_step)
            assert got == ref, (check_every, window_step)
            assert captures == 0  # nothing is recorded on the CPU
        assert _static(model, seqs, 24, [], pad, window_step=5)[0] == ref_full


@pytest.mark.gpu
def test_recorded_cuda_graphs_give_the_eager_tokens(tok, problems) -> None:
    """On the GPU the loop is recorded (captures > 0) and its replays give the unrecorded loop's
    tokens; `generate(cuda_graphs=True)` gives the default loop's texts."""
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok), seed=1, attn_implementation="sdpa").cuda().eval()
    seqs = _prompt_ids(tok, problems)
    pad = tok.pad_token_id
    with torch.no_grad():
        ref_full, _ = _static(model, seqs, 24, [], pad, capture=False)
        stops = [_staggered_stop(ref_full)]
        ref, none = _static(model, seqs, 24, stops, pad, check_every=3, window_step=7, capture=False)
        got, captures = _static(model, seqs, 24, stops, pad, check_every=3, window_step=7)
    assert none == 0 and captures > 0 and got == ref
    prompts = [[{"role": "user", "content": p["messages"][1]["content"]}] for p in problems[:5]]
    graphs = gen.generate(model, tok, prompts, max_new_tokens=10, progress=False, cuda_graphs=True)
    plain = gen.generate(model, tok, prompts, max_new_tokens=10, progress=False)
    assert [g.text for g in graphs] == [p.text for p in plain]


def test_generate_with_cuda_graphs_flag_matches(tok, problems, monkeypatch) -> None:
    """The public switch takes the static loop (on the CPU: unrecorded) and keeps the tokens."""
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok), seed=3, attn_implementation="sdpa").eval()
    prompts = [[{"role": "user", "content": p["messages"][1]["content"]}] for p in problems[:5]]
    calls = []
    real = gd.decode_batch_static
    monkeypatch.setattr(gd, "decode_batch_static", lambda *a, **k: calls.append(1) or real(*a, **k))
    graphs = gen.generate(model, tok, prompts, max_new_tokens=10, progress=False, cuda_graphs=True)
    monkeypatch.undo()
    plain = gen.generate(model, tok, prompts, max_new_tokens=10, progress=False)
    assert calls and [g.text for g in graphs] == [p.text for p in plain]


def test_shrink_keeps_running_rows_and_a_power_of_two() -> None:
    class _Cache:
        def batch_select_indices(self, keep):
            self.keep = keep.tolist()

    done = torch.tensor([True, False, True, True, False, True, True, True])
    st = gd._State(
        tok=torch.arange(8),
        pos=torch.arange(8),
        mask=torch.ones(8, 3),
        done=done.clone(),
        row_ids=torch.arange(8),
        cur=torch.tensor([0]),
        step=torch.tensor([0]),
    )
    cache = _Cache()
    assert gd._shrink(cache, st, n_done=6)
    assert cache.keep[:2] == [1, 4] and len(cache.keep) == 2  # 2 running rows: a batch of 2
    st2 = gd._State(
        tok=torch.arange(8),
        pos=torch.arange(8),
        mask=torch.ones(8, 3),
        done=torch.tensor([True, False, False, False, False, True, False, False]),
        row_ids=torch.arange(8),
        cur=torch.tensor([0]),
        step=torch.tensor([0]),
    )
    assert not gd._shrink(cache, st2, n_done=2)  # 6 of 8 still running: keep the shape
    st3 = gd._State(
        tok=torch.arange(8),
        pos=torch.arange(8),
        mask=torch.ones(8, 3),
        done=torch.tensor([True, False, True, True, False, True, False, True]),
        row_ids=torch.arange(8),
        cur=torch.tensor([0]),
        step=torch.tensor([0]),
    )
    assert gd._shrink(cache, st3, n_done=5)
    assert sorted(cache.keep[:3]) == [1, 4, 6] and len(cache.keep) == 4  # 3 running + 1 finished filler
    assert st3.done.tolist() == [False, False, False, True]


def test_static_layer_writes_at_device_index_and_hides_nothing_stale() -> None:
    k = torch.randn(2, 1, 3, 4)
    write_at = torch.tensor([3])
    layer = gd.StaticSlabLayer(k, k.clone(), capacity=8, write_at=write_at)
    layer.set_window(6)
    new = torch.ones(2, 1, 1, 4)
    keys, _ = layer.update(new, new)
    assert keys.shape == (2, 1, 6, 4)
    assert torch.equal(keys[:, :, :3], k) and torch.equal(keys[:, :, 3:4], new)
    assert torch.count_nonzero(keys[:, :, 4:]) == 0  # unwritten slots are zeros, never garbage
