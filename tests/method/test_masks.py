"""The attention rules against literal boolean matrices."""

import torch

from step_jepa.data.segment import Segmented
from step_jepa.method.layout import meta_of, pass2_items, place, single_pass_item
from step_jepa.method.masks import additive_mask, allowed, dense_mask, query_ranges

# 8 tokens: p0 p1 | a0 a1 (step 1) | s (separator) | b0 b1 (step 2) | r (end of turn)
EX = Segmented(
    id="x",
    input_ids=list(range(10, 18)),
    labels=[-100, -100] + list(range(12, 18)),
    step_spans=[(2, 4), (5, 7)],
    prompt_len=2,
)


def M(rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r.split()[0]] for r in rows.strip().splitlines()])


def mask_of(rows_of_items, pad_multiple=1) -> torch.Tensor:
    return dense_mask(meta_of(place(rows_of_items, pad_id=0, multiple_of=pad_multiple)))[:, 0]


def test_pass2_k1():
    got = mask_of([pass2_items(EX, [0], [99], 0)])[0]
    want = M("""
        1000000  p0
        1100000  p1
        1110000  a0
        1111000  a1
        1111100  P1: prompt + step 1 + itself
        0000010  b0: isolated
        0000011  b1
    """)
    assert torch.equal(got, want)


def test_pass2_k2():
    got = mask_of([pass2_items(EX, [0], [98, 99], 0)])[0]
    want = M("""
        10000000
        11000000
        11100000
        11110000
        11111000  P1
        11111100  P2 sees P1
        00000010  b0
        00000011  b1
    """)
    assert torch.equal(got, want)


def test_pass2_positions_run_straight_through():
    b = place([pass2_items(EX, [0], [98, 99], 0)], pad_id=0)
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert b["input_ids"][0].tolist() == [10, 11, 12, 13, 98, 99, 15, 16]


def test_single_pass_with_right_padding():
    short = Segmented(
        id="y", input_ids=[10, 11, 12, 13], labels=[-100, 11, 12, 13], step_spans=[(1, 2), (3, 4)], prompt_len=1
    )
    got = mask_of([[single_pass_item(EX, [0], [99], 0)], [single_pass_item(short, [0], [99], 1)]])
    want0 = M("""
        10000000000
        11000000000
        11100000000
        11110000000
        11111000000
        11111100000
        11111110000
        11111111000
        11110000100  P1: original tokens with position < 4 (prompt + step 1)
        00000000010  b0 copy
        00000000011  b1 copy
    """)
    want1 = M("""
        10000000000
        11000000000
        11100000000
        11110000000
        11001000000  P1 of the short example: positions < 2, and itself
        00000100000  copy of its step 2 (one token)
        00000010000  padding: only itself
        00000001000
        00000000100
        00000000010
        00000000001
    """)
    assert torch.equal(got[0], want0)
    # Row 1 is padded to the longer row; every pad query sees exactly itself.
    assert torch.equal(got[1], want1)


def test_step2_as_last_step_and_positions():
    last = Segmented(
        id="z", input_ids=[1, 2, 3, 4, 5], labels=[-100, 2, 3, 4, 5], step_spans=[(1, 3), (3, 5)], prompt_len=1
    )
    b = place([[single_pass_item(last, [0], [99], 0)]], pad_id=0)
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    got = dense_mask(meta_of(b))[0, 0]
    want = M("""
        10000000
        11000000
        11100000
        11110000
        11111000
        11100100  P1 sees positions < 3
        00000010
        00000011
    """)
    assert torch.equal(got, want)
    assert b["view1_cols"].tolist() == [5] and b["view2_cols"].tolist() == [7]


def test_packed_examples_do_not_see_each_other():
    other = Segmented(id="o", input_ids=[1, 2, 3], labels=[-100, 2, 3], step_spans=[(1, 2), (2, 3)], prompt_len=1)
    items = [single_pass_item(other, [0], [99], 0), single_pass_item(EX, [0], [99], 1)]
    m = mask_of([items])[0]
    n0 = len(items[0])
    assert not m[n0:, :n0].any() and not m[:n0, n0:].any()
    assert torch.equal(m[n0:, n0:], mask_of([[items[1]]])[0])


def test_additive_mask_matches_boolean():
    b = place([[single_pass_item(EX, [0], [99], 0)]], pad_id=0)
    meta = meta_of(b)
    add = additive_mask(meta, torch.float32)
    assert torch.equal(add == 0, dense_mask(meta))


def test_dense_mask_is_allowed_evaluated_everywhere():
    """The dense mask splits the rule for speed; it must equal `allowed` at every (query, key)."""
    other = Segmented(
        id="o",
        input_ids=[1, 2, 3, 4, 5, 6],
        labels=[-100, 2, 3, 4, 5, 6],
        step_spans=[(1, 2), (3, 4), (5, 6)],
        prompt_len=1,
    )
    rows = [
        [single_pass_item(other, [0, 1], [97, 98, 99], 0), single_pass_item(EX, [0], [97, 98, 99], 1)],
        [single_pass_item(EX, [0], [97, 98, 99], 0)],
        [single_pass_item(other, [1], [97, 98, 99], 0)],
    ]
    meta = meta_of(place(rows, pad_id=0, multiple_of=8))
    T = meta.seq.shape[1]
    lo1, hi1, lo2 = (t[:, :, None] for t in query_ranges(meta))
    idx = torch.arange(T)
    want = allowed(lo1, hi1, lo2, idx[None, :, None], idx[None, None, :])
    got = dense_mask(meta)[:, 0]
    assert (meta.role == 2).sum() == 15  # predictor rows: the part computed separately
    assert torch.equal(got, want)


def test_separator_boundary_single_pass_layout():
    """--view_boundary separator: the predictor follows step 1's separator s (position 5, sees
    p0…s), the copy is b0 b1 r (step 2 up to the end-of-turn token) at positions 6-8, and view 2
    is read at r."""
    b = place([[single_pass_item(EX.with_boundary("separator"), [0], [99], 0)]], pad_id=0)
    assert b["input_ids"][0].tolist() == [10, 11, 12, 13, 14, 15, 16, 17, 99, 15, 16, 17]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8]
    want = M("""
        100000000000
        110000000000
        111000000000
        111100000000
        111110000000
        111111000000
        111111100000
        111111110000
        111110001000  P sees positions < 5: the prompt, step 1 and its separator
        000000000100
        000000000110
        000000000111
    """)
    assert torch.equal(dense_mask(meta_of(b))[0, 0], want)
    assert b["view1_cols"].tolist() == [8] and b["view2_cols"].tolist() == [11]
    # The content boundary (today's default) on the same example: P after a1, copy b0 b1, view 2 at b1.
    c = place([[single_pass_item(EX, [0], [99], 0)]], pad_id=0)
    assert c["input_ids"][0].tolist() == [10, 11, 12, 13, 14, 15, 16, 17, 99, 15, 16]
    assert c["position_ids"][0, 8:].tolist() == [4, 5, 6]
    assert c["view1_cols"].tolist() == [8] and c["view2_cols"].tolist() == [10]


def test_separator_boundary_pass2_layout():
    (it,) = pass2_items(EX.with_boundary("separator"), [0], [99], 0)
    assert it.ids == [10, 11, 12, 13, 14, 99, 15, 16, 17] and it.pos == list(range(9))
    assert it.views == [(0, 5, 8)]
