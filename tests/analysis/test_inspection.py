"""`step-jepa inspect`: role-marked tokens with predictors, labels, and compact block masks."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import record

from step_jepa.analysis.inspect import block_symbol, describe
from step_jepa.data.segment import segment

STEPS = ["Tom has 3 apples.", "He buys 2 more: 3 + 2 = 5.", "The final answer is \\boxed{5}."]
PREDICTORS = ["<|predictor_1|>", "<|predictor_2|>"]


@pytest.fixture(scope="module")
def tok():
    from step_jepa.models.tiny import build_tiny_tokenizer

    t = build_tiny_tokenizer("chatml")  # a private copy: predictors are added to it
    t.add_special_tokens({"additional_special_tokens": PREDICTORS})
    return t


def pred_ids(tok, k: int = 2) -> list[int]:
    return tok.convert_tokens_to_ids(PREDICTORS[:k])


def matrix(text: str, title: str) -> list[tuple[str, str, str]]:
    """(role name, cells, token range) of each row of the block matrix that follows `title`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 2 :]:
        m = re.fullmatch(r"  [a-z] (.+?)\s{2,}([#.\\~ ]+?)\s+(\[\d+, \d+\))", line)
        if not m:
            break
        rows.append((m.group(1).strip(), m.group(2), m.group(3)))
    return rows


def listing(text: str) -> dict[str, list[str]]:
    """Token-listing lines by role name: [index range, position range, label mark, tokens]."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"  (\[\d+, \d+\))\s+(\[\d+, \d+\))\s+(\S+)\s+(prompt|S\d+ copy|S\d+|sep|rest|pred)\s+(.*)", line)
        if m:
            out.setdefault(m.group(4), []).append([m.group(1), m.group(2), m.group(3), m.group(5)])
    return out


def test_tokens_show_predictors_roles_and_labels(tok):
    ex = segment(record(STEPS), tok)
    text = describe(ex, tok, pred_ids(tok), pair=0, color=False)
    rows = listing(text)
    (s1,) = rows["S1"]
    assert s1[0] == f"[{ex.step_spans[0][0]}, {ex.step_spans[0][1]})" and s1[2] == "id"
    assert "·has·" in s1[3].replace(" ", "")  # tokens shown, '·'-separated
    (pred,) = rows["pred"]
    n = len(ex.input_ids)
    e1 = ex.step_spans[0][1]
    # Predictors sit after the original row, with the positions pass 2 gives them, and no label.
    assert pred == [f"[{n}, {n + 2})", f"[{e1}, {e1 + 2})", "·", "<|predictor_1|>·<|predictor_2|>"]
    assert rows["prompt"][0][2] == "·" and rows["S2 copy"][0][2] == "·"
    labelled_end = max(t for t, y in enumerate(ex.labels) if y != -100) + 1
    assert f"at [{ex.prompt_len}, {labelled_end});" in text
    assert "\033[" not in text


def test_block_matrices_for_a_known_example(tok):
    ex = segment(record(STEPS), tok)
    text = describe(ex, tok, pred_ids(tok), pair=0, color=False)
    single = matrix(text, "single-pass row:")
    assert [(name, cells) for name, cells, _ in single] == [
        ("prompt", "\\ . . . . . ."),
        ("S1", "# \\ . . . . ."),
        ("sep", "# # \\ . . . ."),
        ("S2", "# # # \\ . . ."),
        ("rest", "# # # # \\ . ."),
        ("pred", "# # . . . \\ ."),  # predictors see prompt + S1 only, and each other causally
        ("S2 copy", ". . . . . . \\"),  # the isolated step sees only itself
    ]
    assert single[0][2] == f"[0, {ex.prompt_len})"
    pass2 = matrix(text, "pass-2 attention")
    e1 = ex.step_spans[0][1]
    assert [(name, cells) for name, cells, _ in pass2] == [
        ("prompt", "\\ . . ."),
        ("S1", "# \\ . ."),
        ("pred", "# # \\ ."),
        ("S2 copy", ". . . \\"),
    ]
    assert pass2[2][2] == f"[{e1}, {e1 + 2})"


def test_later_pair_names_its_steps(tok):
    ex = segment(record(STEPS), tok)
    text = describe(ex, tok, pred_ids(tok, 1), pair=1, color=False)
    names = [name for name, _, _ in matrix(text, "single-pass row:")]
    assert names == ["prompt", "rest", "S2", "sep", "S3", "rest", "pred", "S3 copy"]


def test_long_example_stays_compact(tok):
    steps = [f"Step {i}: {i} + {i} = {2 * i}, so we carry on." for i in range(1, 12)]
    ex = segment(record(steps), tok)
    assert len(ex.input_ids) >= 250
    text = describe(ex, tok, pred_ids(tok), pair=0, color=False)
    assert len(text.splitlines()) < 40
    assert "tokens) …" in text  # the long tail after S2 is elided, its range still exact
    assert max(len(line) for line in text.splitlines()) < 400


def test_invalid_pair_shows_tokens_but_no_mask(tok):
    ex = segment(record(STEPS), tok, max_length=60)  # cuts into S2
    assert 0 not in ex.valid_pairs()
    text = describe(ex, tok, pred_ids(tok), pair=0, color=False)
    assert "is not valid: no JEPA term" in text and "labels:" in text
    assert "pred" not in listing(text) and "attention" not in text


def test_color_marks_predictors(tok):
    ex = segment(record(STEPS), tok)
    text = describe(ex, tok, pred_ids(tok), pair=0, color=True)
    assert "\033[95m<|predictor_1|>\033[0m" in text


def test_block_symbols():
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    assert block_symbol(causal, diagonal=True) == "\\"
    assert block_symbol(causal, diagonal=False) == "~"
    assert block_symbol(torch.ones(2, 3, dtype=torch.bool), diagonal=False) == "#"
    assert block_symbol(torch.zeros(2, 3, dtype=torch.bool), diagonal=False) == "."
    assert block_symbol(torch.ones(1, 1, dtype=torch.bool), diagonal=True) == "#"
