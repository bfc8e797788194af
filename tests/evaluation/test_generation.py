"""Batched greedy decoding (step_jepa.evaluation.decode): plan_batches, the lean decode loop == HF generate."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from step_jepa.evaluation import decode as gen
from step_jepa.evaluation import evaluate as ev

# --------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------


def test_plan_batches_budget_and_order() -> None:
    lengths = [5, 50, 20, 10, 40]
    batches = gen.plan_batches(lengths, max_new_tokens=10, max_batch_tokens=130, batch_size=None)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert batches[0][0] == 1  # longest first
    for b in batches:
        assert len(b) * (max(lengths[i] for i in b) + 10) <= 130 or len(b) == 1
    assert gen.plan_batches(lengths, 10, None, 2) == [[1, 4], [2, 3], [0]]
    assert gen.plan_batches(lengths, 10, None, None) == [[1, 4, 2, 3, 0]]


# --------------------------------------------------------------------------------------------------------
# Lean decode loop == HF generate
# --------------------------------------------------------------------------------------------------------


def _prompt_ids(tok, problems) -> list[list[int]]:
    prompts = ev.build_prompts(problems[:6])
    prompts[1][1]["content"] += " Please think about it very carefully before you answer."
    prompts[4][1]["content"] = "Hi"
    prompts[5] = prompts[5][1:]  # no system turn: a much shorter prompt
    return gen.encode_prompts(tok, prompts)


def _hf_generate(model, seqs, max_new, stops, pad) -> list[list[int]]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=list(stops),
            pad_token_id=pad,
        )
    return gen._trim(out[:, width:].tolist(), set(stops))


def _staggered_stop(rows: list[list[int]]) -> int:
    """The generated token whose first occurrence differs most between rows: used as EOS, it makes
    rows finish at different steps (a random tiny model never emits its real EOS reliably)."""

    def first_positions(t: int) -> set[int]:
        return {row.index(t) if t in row else len(row) for row in rows}

    candidates = Counter(t for row in rows for t in row)
    return max(sorted(candidates), key=lambda t: len(first_positions(t)))


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("qwen2", "sdpa"), ("llama", "eager")])
def test_lean_decode_matches_hf_generate(tok, problems, arch: str, attn: str) -> None:
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok), arch=arch, seed=1, attn_implementation=attn).eval()
    seqs = _prompt_ids(tok, problems)
    assert len({len(s) for s in seqs}) >= 3  # left padding really happens
    pad = tok.pad_token_id
    # 1) EOS never emitted: every row runs the full length.
    ref = _hf_generate(model, seqs, 24, [], pad)
    with torch.no_grad():
        assert gen._decode_batch(model, seqs, 24, [], pad) == ref
    # 2) A frequently generated token as "EOS": rows stop at different steps, finished rows are
    #    dropped from the batch (check_every=1 compacts as early as possible).
    stops = [_staggered_stop(ref)]
    ref = _hf_generate(model, seqs, 24, stops, pad)
    lengths = [len(r) for r in ref]
    assert len(set(lengths)) > 1 and min(lengths) < 24
    for check_every in (1, 3, 8):
        with torch.no_grad():
            got = gen._decode_batch(model, seqs, 24, stops, pad, check_every=check_every)
        assert got == ref, check_every


def test_chunked_prefill_and_mask_paths_agree(tok, problems, monkeypatch) -> None:
    """Prefill split into row chunks, and the 2D-mask decode path, give the same tokens as the default."""
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok), seed=2).eval()
    seqs = _prompt_ids(tok, problems)
    with torch.no_grad():
        whole = gen._decode_batch(model, seqs, 12, [], tok.pad_token_id)
        chunked = gen._decode_batch(model, seqs, 12, [], tok.pad_token_id, prefill_tokens=100)
        monkeypatch.setattr(gen, "_decode_mask", lambda model: lambda m: m)
        mask_2d = gen._decode_batch(model, seqs, 12, [], tok.pad_token_id)
    assert chunked == whole == mask_2d


def test_generate_results_in_input_order(tok, problems) -> None:
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok), seed=1).eval()
    prompts = ev.build_prompts(problems[:5])
    prompts[2][1]["content"] = "Hi"
    seqs = gen.encode_prompts(tok, prompts)
    stops = gen.stop_token_ids(model, tok)
    res = gen.generate(model, tok, prompts, max_new_tokens=10, batch_size=2, progress=False)
    assert len(res) == 5 and all(r.error is None for r in res)
    for r, s in zip(res, seqs):
        ref = _hf_generate(model, [s], 10, stops, tok.pad_token_id)[0]
        assert r.n_tokens == len(ref)
        body = ref[:-1] if ref and ref[-1] in stops else ref
        assert r.text == tok.decode(body, skip_special_tokens=True)


def test_stop_tokens_include_end_of_turn(tok) -> None:
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok))
    stops = gen.stop_token_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops


def test_failing_batches_fall_back_to_single_examples(tok, problems, monkeypatch) -> None:
    """A batch that raises is split; only the example that fails alone is an error."""
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok)).eval()
    prompts = ev.build_prompts(problems[:4])
    prompts[3][1]["content"] = "poison"
    poison = gen.encode_prompts(tok, prompts[3:])[0]
    real = gen._decode_batch
    calls = []

    def flaky(model, seqs, *args, **kwargs):
        calls.append(len(seqs))
        if any(list(s) == poison for s in seqs):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, seqs, *args, **kwargs)

    monkeypatch.setattr(gen, "_decode_batch", flaky)
    res = gen.generate(model, tok, prompts, max_new_tokens=4, batch_size=4, progress=False)
    assert [r.error is None for r in res] == [True, True, True, False]
    assert "out of memory" in res[3].error and res[3].n_tokens == 0
    assert calls[0] == 4 and 1 in calls
