"""`step-jepa inspect`: show one example exactly as the trainer sees it.

The single-pass row (the default training layout: the example, then K predictor tokens and an
isolated copy of step i+1) is listed as runs of same-role tokens — prompt, step i, predictors,
step i+1, the rest — each with its index range, position ids and labels, followed by block
pictures of the attention masks. Runs keep the output a screenful even for long examples, and
block pictures show exactly what a user needs to check: who may see whom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from step_jepa.data.segment import IGNORE_INDEX, Segmented
from step_jepa.method.layout import (
    Item,
    meta_of,
    original_item,
    pass2_items,
    place,
    single_pass_item,
)
from step_jepa.method.masks import COPY, ORIG, PRED, dense_mask

_COLORS = {
    "prompt": "\033[90m",
    "step1": "\033[94m",
    "pred": "\033[95m",
    "step2": "\033[92m",
    "copy": "\033[4;92m",
    "sep": "\033[0m",
    "rest": "\033[0m",
}
_DIM = "\033[2m"
_RESET = "\033[0m"
NO_LABEL = "·"
# Runs other than the pair's steps and predictors longer than this show only their ends, so a
# long example stays a screenful; the index range still says exactly what was left out.
ELIDE_OVER = 32
_KEEP = 10
LEGEND = "# all attend, . none, \\ causal within the block, ~ partial"


@dataclass(frozen=True)
class Run:
    """A contiguous stretch [start, end) of one row whose tokens share a role (and label mark)."""

    start: int
    end: int
    kind: str  # colour key: prompt, step1, sep, step2, pred, copy, rest
    name: str  # what the user reads: "prompt", "S1", "pred", "S2 copy", ...
    label: str = NO_LABEL


def token_roles(ex: Segmented, pair: int) -> list[str]:
    """Role kind of each original token for the pair (pair, pair+1): prompt, step1, sep (between
    the two steps), step2 or rest."""
    names = ["rest"] * len(ex.input_ids)
    for t in range(ex.prompt_len):
        names[t] = "prompt"
    spans = ex.step_spans
    if 0 <= pair < len(spans) - 1 and spans[pair] is not None and spans[pair + 1] is not None:
        for t in range(spans[pair][1], spans[pair + 1][0]):
            names[t] = "sep"
    for name, i in (("step1", pair), ("step2", pair + 1)):
        span = ex.step_spans[i] if 0 <= i < len(ex.step_spans) else None
        if span is not None:
            for t in range(*span):
                names[t] = name
    return names


def _kind_names(pair: int) -> dict[str, str]:
    return {
        "prompt": "prompt",
        "step1": f"S{pair + 1}",
        "step2": f"S{pair + 2}",
        "pred": "pred",
        "copy": f"S{pair + 2} copy",
        "sep": "sep",
        "rest": "rest",
    }


def row_kinds(ex: Segmented, pair: int, item: Item) -> list[str]:
    """Role kind of every token of a layout item: original tokens by span, then predictors and copies."""
    orig = token_roles(ex, pair)
    kinds = []
    for t, role in enumerate(item.role):
        if role == PRED:
            kinds.append("pred")
        elif role == COPY:
            kinds.append("copy")
        else:
            kinds.append(orig[t])
    return kinds


def label_marks(ex: Segmented, item: Item) -> list[str]:
    """Per token: 'id' when its label is its own token id (LM loss on it), '·' for -100, else the label.

    Appended predictors and copies carry no LM label: only the original tokens are language-modelled.
    """
    n = len(ex.input_ids)
    marks = []
    for t, tid in enumerate(item.ids):
        y = ex.labels[t] if t < n and item.role[t] == ORIG else IGNORE_INDEX
        marks.append(NO_LABEL if y == IGNORE_INDEX else ("id" if y == tid else str(y)))
    return marks


def runs_of(kinds: Sequence[str], names: dict[str, str], labels: Sequence[str] | None = None) -> list[Run]:
    """Split a row into maximal runs of equal (kind, label) — the unit of every listing below."""
    out: list[Run] = []
    for t, kind in enumerate(kinds):
        label = labels[t] if labels is not None else NO_LABEL
        if out and out[-1].kind == kind and out[-1].label == label and out[-1].end == t:
            out[-1] = Run(out[-1].start, t + 1, kind, out[-1].name, label)
        else:
            out.append(Run(t, t + 1, kind, names[kind], label))
    return out


def _paint(text: str, kind: str, color: bool) -> str:
    return f"{_COLORS[kind]}{text}{_RESET}" if color else text


def _token_text(tokenizer, tid: int) -> str:
    return tokenizer.decode([tid]).replace("\r", "\\r").replace("\n", "\\n")


def _run_text(r: Run, item: Item, tokenizer, color: bool) -> str:
    """The run's tokens, '·'-separated so token boundaries are visible; long context runs elided."""
    sep = f"{_DIM}·{_RESET}" if color else "·"
    ids = item.ids[r.start : r.end]
    elide = r.kind in ("prompt", "rest") and len(ids) > ELIDE_OVER
    shown = [ids[:_KEEP], ids[-_KEEP:]] if elide else [ids]
    parts = [sep.join(_paint(_token_text(tokenizer, tid), r.kind, color) for tid in chunk) for chunk in shown]
    return f" … ({len(ids) - 2 * _KEEP} tokens) … ".join(parts)


def token_listing(runs: list[Run], item: Item, tokenizer, color: bool) -> list[str]:
    """One line per run: index range, position ids, label mark, name and the tokens."""
    lines = [f"  {'index':<11}  {'position':<11}  {'label':>5}  {'role':<8}  tokens"]
    for r in runs:
        idx = f"[{r.start}, {r.end})"
        pos = f"[{item.pos[r.start]}, {item.pos[r.end - 1] + 1})"
        name = _paint(f"{r.name:<8}", r.kind, color)
        lines.append(f"  {idx:<11}  {pos:<11}  {r.label:>5}  {name}  {_run_text(r, item, tokenizer, color)}")
    return lines


def label_summary(marks: list[str]) -> str:
    """Exact index ranges that carry an LM label; everything else is -100."""
    ranges = [
        f"[{r.start}, {r.end})" for r in runs_of(["rest"] * len(marks), {"rest": ""}, marks) if r.label != NO_LABEL
    ]
    n = sum(1 for m in marks if m != NO_LABEL)
    return (
        f"labels: {n} of {len(marks)} tokens carry the LM loss ('id': label = the token's own id), "
        f"at {', '.join(ranges) or 'none'}; '{NO_LABEL}' = -100"
    )


def block_symbol(sub: torch.Tensor, diagonal: bool) -> str:
    """'#' all, '.' none, '\\' exactly causal (diagonal blocks of 2+ tokens), '~' anything else."""
    if diagonal and sub.shape[0] > 1 and torch.equal(sub, torch.ones_like(sub).tril()):
        return "\\"
    if bool(sub.all()):
        return "#"
    if not bool(sub.any()):
        return "."
    return "~"


def block_matrix(mask: torch.Tensor, blocks: list[Run], color: bool) -> list[str]:
    """Rows = query blocks, columns = key blocks (lettered a, b, ...); each cell one symbol."""
    letters = [chr(ord("a") + i) if i < 26 else "?" for i in range(len(blocks))]
    width = max(len(b.name) for b in blocks)
    lines = [f"  {'':{width + 2}}  " + " ".join(letters) + "   tokens"]
    for i, q in enumerate(blocks):
        cells = " ".join(block_symbol(mask[q.start : q.end, k.start : k.end], i == j) for j, k in enumerate(blocks))
        lines.append(f"  {letters[i]} {_paint(f'{q.name:<{width}}', q.kind, color)}  {cells}   [{q.start}, {q.end})")
    return lines


def _mask_of(item: Item, pad_id: int) -> torch.Tensor:
    batch = place([[item]], pad_id)
    return dense_mask(meta_of(batch))[0, 0]


def _mask_section(title: str, ex: Segmented, pair: int, item: Item, pad_id: int, color: bool) -> list[str]:
    blocks = runs_of(row_kinds(ex, pair, item), _kind_names(pair))
    return [title] + block_matrix(_mask_of(item, pad_id), blocks, color)


def _header(ex: Segmented) -> list[str]:
    spans = ", ".join(f"S{i + 1}=" + (f"[{s[0]}, {s[1]})" if s else "cut") for i, s in enumerate(ex.step_spans))
    return [
        f"id: {ex.id}   tokens: {len(ex.input_ids)}   prompt tokens: {ex.prompt_len}   truncated: {ex.truncated}",
        f"step token spans [start, end): {spans}",
        f"valid pairs: {[(i + 1, i + 2) for i in ex.valid_pairs()]}",
    ]


def describe(ex: Segmented, tokenizer, pred_ids: list[int], pair: int = 0, color: bool = True) -> str:
    """Human-readable account of one example: spans, role-marked tokens with labels, and the masks."""
    out = _header(ex)
    valid = pair in ex.valid_pairs()
    item = single_pass_item(ex, [pair], pred_ids, 0) if valid else original_item(ex)
    marks = label_marks(ex, item)
    names = _kind_names(pair)
    if valid:
        out.append(
            f"single-pass row for S{pair + 1}→S{pair + 2} (what the trainer feeds; "
            f"{len(pred_ids)} predictor(s) and a copy of S{pair + 2} appended):"
        )
    else:
        out.append(f"pair S{pair + 1}→S{pair + 2} is not valid: no JEPA term for it (LM loss only); the row:")
    out += token_listing(runs_of(row_kinds(ex, pair, item), names, marks), item, tokenizer, color)
    out.append(label_summary(marks))
    if not valid:
        return "\n".join(out)
    out.append(
        "view 1 = last predictor token; view 2 = last token of the isolated step "
        f"(S{pair + 2} copy). Attention ({LEGEND}):"
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out += _mask_section("single-pass row:", ex, pair, item, pad, color)
    p2 = pass2_items(ex, [pair], pred_ids, 0)[0]
    out += _mask_section(
        "pass-2 attention (two-pass reference: its own sequence, same position ids):", ex, pair, p2, pad, color
    )
    return "\n".join(out)
