"""Token layouts of a batch: SFT, the two-pass reference and the single-pass form, padded or packed.

An *item* is one example's tokens with their mask metadata; a *row* is one sequence of the batch,
holding one item (padded) or several (packed). The single-pass item is the original sequence
followed, for each selected pair (i, i+1), by K predictor tokens and a copy of step i+1, with the
position ids the two-pass reference would give them. The views are read at the last predictor
token and at the last token of the copy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from step_jepa.data.segment import IGNORE_INDEX, Segmented
from step_jepa.method.masks import COPY, ORIG, PAD, PRED, TokenMeta


@dataclass
class Item:
    """Tokens of one unit of attention (an example, or one pass-2 sequence) before placement."""

    ids: list[int] = field(default_factory=list)
    role: list[int] = field(default_factory=list)
    pair: list[int] = field(default_factory=list)
    ctx: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    target: list[int] = field(default_factory=list)  # next-token target at this position, or -100
    views: list[tuple[int, int, int]] = field(default_factory=list)  # (pair uid, view1 idx, view2 idx)
    stp: list[tuple[int, int, int]] = field(default_factory=list)  # STP triplets (s, r, t), item indices

    def add(self, ids, role, pair, ctx, pos, target=None) -> None:
        n = len(ids)
        self.ids += ids
        self.role += [role] * n
        self.pair += [pair] * n
        self.ctx += [ctx] * n
        self.pos += pos
        self.target += target if target is not None else [IGNORE_INDEX] * n

    def __len__(self) -> int:
        return len(self.ids)


def select_pairs(ex: Segmented, how: str, rng: random.Random) -> list[int]:
    """Pairs that compute the JEPA term: S1→S2 ('first'), one random pair, or every pair ('all')."""
    valid = ex.valid_pairs()
    if how == "first":
        return [0] if 0 in valid else []
    if how == "random":
        return [rng.choice(valid)] if valid else []
    if how == "all":
        return valid
    raise ValueError(f"unknown pairs selection {how!r} (first|random|all)")


STP_POSITIONS = ("random", "steps")


def stp_triplet(ex: Segmented, how: str, rng: random.Random) -> tuple[int, int, int] | None:
    """Positions s < r < t of one Semantic Tube Prediction triplet in the example's own tokens.

    'random' (the STP paper): three distinct answer tokens. 'steps': the last token of the
    prompt or of step i-1, of step i and of step i+1 for one random step pair i, so each move
    along the trajectory is one whole reasoning step (the step-level reading of the tube, and
    the same pairs Step-JEPA uses). None when the example has no such triplet (counted by the
    caller like an example without a JEPA pair).
    """
    if how == "random":
        answer = [t for t, lab in enumerate(ex.labels) if lab != IGNORE_INDEX]
        return tuple(sorted(rng.sample(answer, 3))) if len(answer) >= 3 else None  # type: ignore[return-value]
    if how == "steps":
        ends = [s[1] - 1 if s is not None and s[1] > s[0] else None for s in ex.step_spans]
        before = [ex.prompt_len - 1] + ends[:-1]  # the anchor before step i
        usable = [i for i in ex.valid_pairs() if before[i] is not None and before[i] < ends[i]]
        if not usable:
            return None
        i = rng.choice(usable)
        return before[i], ends[i], ends[i + 1]  # type: ignore[return-value]
    raise ValueError(f"unknown STP positions {how!r} ({'|'.join(STP_POSITIONS)})")


def _shifted_targets(ex: Segmented) -> list[int]:
    """Target at position t is the label of token t+1: logits are computed only where this is set."""
    return ex.labels[1:] + [IGNORE_INDEX]


def original_item(ex: Segmented) -> Item:
    """Pass 1 / SFT: the example as written, causal."""
    it = Item()
    n = len(ex.input_ids)
    it.add(list(ex.input_ids), ORIG, -1, 0, list(range(n)), _shifted_targets(ex))
    return it


def _add_copy(it: Item, ex: Segmented, i: int, uid: int, K: int) -> None:
    """Append the isolated copy of step i+1 at the positions pass 2 gives it (after K predictors)."""
    e_i = ex.step_spans[i][1]
    s2, e2 = ex.step_spans[i + 1]
    it.add(list(ex.input_ids[s2:e2]), COPY, uid, 0, list(range(e_i + K, e_i + K + e2 - s2)))


def _append_pair(it: Item, ex: Segmented, i: int, uid: int, pred_ids: list[int], copy: bool = True) -> None:
    """Append K predictors after step i and an isolated step i+1 to `it` (two-pass positions).

    Without the copy (a target encoder computes view 2 from `copy_items`), view 2's index is a
    placeholder, view 1's own: nothing in the online pass attends to the copy, so leaving it out
    changes no other state and saves its forward and backward."""
    e_i = ex.step_spans[i][1]
    K = len(pred_ids)
    it.add(list(pred_ids), PRED, uid, e_i, list(range(e_i, e_i + K)))
    v1 = len(it) - 1
    if copy:
        _add_copy(it, ex, i, uid, K)
    it.views.append((uid, v1, len(it) - 1))


def single_pass_item(ex: Segmented, pairs: list[int], pred_ids: list[int], uid0: int, copies: bool = True) -> Item:
    """Original tokens, then for each pair K predictors and (with `copies`) a copy of step i+1 (one forward pass)."""
    it = original_item(ex)
    for j, i in enumerate(pairs):
        _append_pair(it, ex, i, uid0 + j, pred_ids, copies)
    return it


def pass2_items(ex: Segmented, pairs: list[int], pred_ids: list[int], uid0: int) -> list[Item]:
    """Two-pass reference, pass 2: one sequence per pair — prefix to end of step i, predictors, isolated step i+1."""
    out = []
    for j, i in enumerate(pairs):
        it = Item()
        e_i = ex.step_spans[i][1]
        it.add(list(ex.input_ids[:e_i]), ORIG, -1, 0, list(range(e_i)))
        _append_pair(it, ex, i, uid0 + j, pred_ids)
        out.append(it)
    return out


def copy_items(ex: Segmented, pairs: list[int], pred_ids: list[int], uid0: int) -> list[Item]:
    """Only the isolated copies of step i+1 (same positions), for a target encoder (EMA) that
    needs view 2 but nothing else."""
    out = []
    for j, i in enumerate(pairs):
        it = Item()
        _add_copy(it, ex, i, uid0 + j, len(pred_ids))
        it.views.append((uid0 + j, len(it) - 1, len(it) - 1))
        out.append(it)
    return out


def place(
    items: list[list[Item]], pad_id: int, multiple_of: int = 1, min_rows: int = 1, allow_plain: bool = True
) -> dict[str, torch.Tensor]:
    """Place rows of items into padded [B, T] tensors and resolve view indices to (row, column).

    ``min_rows``: empty (all-padding) rows are added up to this many; a compiled decoder
    specialises on a batch of one row, so a last short batch would compile it again.
    ``allow_plain``: whether ``plain_causal`` may be set (see `plain_causal`).
    """
    items = list(items) + [[] for _ in range(min_rows - len(items))]
    lengths = [sum(len(it) for it in row) for row in items]
    T = max(lengths) if lengths else 0
    T = max(multiple_of, -(-T // multiple_of) * multiple_of) if T else multiple_of
    B = len(items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    target = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    seq = torch.full((B, T), -1, dtype=torch.long)
    role = torch.full((B, T), PAD, dtype=torch.long)
    pair = torch.full((B, T), -1, dtype=torch.long)
    ctx = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    views: list[tuple[int, int, int, int]] = []  # (uid, row, col1, col2)
    stp: list[list[int]] = []  # flat indices into [B*T] of each STP triplet
    for r, row in enumerate(items):
        off = 0
        for s, it in enumerate(row):
            n = len(it)
            sl = slice(off, off + n)
            ids[r, sl] = torch.tensor(it.ids)
            target[r, sl] = torch.tensor(it.target)
            seq[r, sl] = s
            role[r, sl] = torch.tensor(it.role)
            pair[r, sl] = torch.tensor(it.pair)
            ctx[r, sl] = torch.tensor(it.ctx)
            pos[r, sl] = torch.tensor(it.pos)
            views += [(uid, r, off + a, off + b) for uid, a, b in it.views]
            stp += [[r * T + off + i for i in trip] for trip in it.stp]
            off += n
        # Padding gets increasing positions so that no position id is out of range or repeated oddly.
        pos[r, off:] = torch.arange(T - off)
    views.sort()
    v = torch.tensor([[r, a, b] for _, r, a, b in views], dtype=torch.long).reshape(-1, 3)
    labels = torch.full_like(target, IGNORE_INDEX)
    labels[:, 1:] = target[:, :-1]  # Hugging Face's unshifted convention; the last column's target is always -100
    flat = target.flatten()
    lm_index = (flat != IGNORE_INDEX).nonzero().flatten()
    return {
        "input_ids": ids,
        "position_ids": pos,
        "lm_targets": target,
        # For Hugging Face Trainer / TRL, which count labels[..., 1:] != -100 as num_items_in_batch.
        "labels": labels,
        # Precomputed here so the model gathers labelled positions without a device→host sync.
        "lm_index": lm_index,
        "lm_labels": flat[lm_index],
        "seq": seq,
        "role": role,
        "pair": pair,
        "ctx": ctx,
        "view_rows": v[:, 0],
        "view1_cols": v[:, 1],
        "view2_cols": v[:, 2],
        "stp_index": torch.tensor(stp, dtype=torch.long).reshape(-1, 3),
        "plain_causal": allow_plain and plain_causal(items),
    }


def plain_causal(items: list[list[Item]]) -> bool:
    """One original sequence per row (or none: an added padding row): the model's own causal +
    padding mask is then exact, and cheaper than ours (SDPA can take its causal kernels)."""
    return all(
        len(row) == 0 or (len(row) == 1 and not any(row[0].views) and all(r == ORIG for r in row[0].role))
        for row in items
    )


def segmented_from_row(row) -> Segmented:
    """A `Segmented` example, or a tokenized dataset row (`step_jepa.training.integration.tokenize_for_step_jepa`:
    ``input_ids``, ``labels``, ``step_starts``/``step_ends`` with -1 for a step cut by truncation,
    optional ``prompt_len``, ``id``, ``truncated``) turned into one. Other keys are ignored."""
    if isinstance(row, Segmented):
        return row
    spans = [None if int(s) < 0 else (int(s), int(e)) for s, e in zip(row["step_starts"], row["step_ends"])]
    labels = [int(x) for x in row["labels"]]
    prompt_len = row.get("prompt_len")
    if prompt_len is None:
        prompt_len = next((t for t, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))
    return Segmented(
        id=str(row.get("id", "")),
        input_ids=[int(x) for x in row["input_ids"]],
        labels=labels,
        step_spans=spans,
        prompt_len=int(prompt_len),
        truncated=bool(row.get("truncated", False)),
    )


def flatten_examples(examples: list) -> list[Segmented]:
    """The examples of a data-loader batch: Segmented or tokenized rows, single or packed groups (lists)."""
    return [segmented_from_row(e) for item in examples for e in (item if isinstance(item, list) else [item])]


def meta_of(batch: dict[str, torch.Tensor]) -> TokenMeta:
    return TokenMeta(batch["seq"], batch["role"], batch["pair"], batch["ctx"])


def pack_rows(items: list[Item], max_tokens: int) -> list[list[Item]]:
    """Greedy first-fit packing of items into rows of at most max_tokens (longer items get a row alone)."""
    rows: list[list[Item]] = []
    room: list[int] = []
    for it in items:
        for r, free in enumerate(room):
            if len(it) <= free:
                rows[r].append(it)
                room[r] -= len(it)
                break
        else:
            rows.append([it])
            room.append(max_tokens - len(it))
    return rows


@dataclass
class StepJEPACollator:
    """Turns segmented examples (or tokenized dataset rows, see `segmented_from_row`) into model inputs.

    mode: 'sft' (no JEPA), 'single_pass' (default) or 'two_pass' (reference: a second batch of
    pass-2 sequences under key 'pass2'). With `packing`, items share rows up to `max_tokens`
    tokens and never attend to each other.
    """

    pad_id: int
    pred_ids: list[int]
    mode: str = "single_pass"
    pairs: str = "first"
    packing: bool = False
    max_tokens: int = 4096
    pad_multiple: int = 1
    seed: int = 0
    jepa_ratio: float = 1.0
    # EMA or frozen target encoder: the step copies go alone under 'copies' for it, and not into
    # the online rows, where nothing would read them.
    target_copies: bool = False
    boundary: str = "content"  # --view_boundary: where a step ends (`Segmented.with_boundary`)
    stp: str = "none"  # none | random | steps: Semantic Tube Prediction triplets on the original tokens
    min_rows: int = 1  # pad a shorter batch with empty rows (2 under torch.compile: see `place`)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, examples: list) -> dict[str, torch.Tensor]:
        exs = flatten_examples(examples)  # a packed dataset yields whole groups of examples
        # Pairs, predictors and copies follow the step boundary; the original tokens are the same.
        exs = [ex.with_boundary(self.boundary) for ex in exs]
        use_jepa = self.mode != "sft" and (self.jepa_ratio >= 1.0 or self._rng.random() < self.jepa_ratio)
        selected = [select_pairs(ex, self.pairs, self._rng) if use_jepa else [] for ex in exs]
        uid0 = [0]
        for s in selected:
            uid0.append(uid0[-1] + len(s))
        if self.mode == "single_pass":
            items = [
                single_pass_item(ex, s, self.pred_ids, u, copies=not self.target_copies)
                for ex, s, u in zip(exs, selected, uid0)
            ]
        else:
            items = [original_item(ex) for ex in exs]
        if self.stp != "none":  # drawn after the pairs, so runs without STP draw exactly as before
            for ex, it in zip(exs, items):
                trip = stp_triplet(ex, self.stp, self._rng)
                it.stp = [trip] if trip is not None else []
        batch = self._place(items)
        if self.mode == "two_pass":
            p2 = [it for ex, s, u in zip(exs, selected, uid0) for it in pass2_items(ex, s, self.pred_ids, u)]
            if p2:
                batch["pass2"] = self._place(p2)
        if self.target_copies and use_jepa:
            cp = [it for ex, s, u in zip(exs, selected, uid0) for it in copy_items(ex, s, self.pred_ids, u)]
            if cp:
                batch["copies"] = self._place(cp)
        # Plain Python numbers: counters for logging must not cost a device→host sync.
        batch["n_examples"] = len(exs)
        # Examples of a JEPA step, and those of them that contribute a pair (after --pairs selection).
        batch["n_jepa_examples"] = len(exs) if use_jepa else 0
        batch["n_with_pair"] = sum(1 for s in selected if s)
        batch["n_pairs"] = uid0[-1]
        batch["n_stp"] = sum(len(it.stp) for it in items)
        batch["n_nonpad"] = sum(len(ex.input_ids) for ex in exs)
        return batch

    def _place(self, items: list[Item]) -> dict[str, torch.Tensor]:
        rows = pack_rows(items, self.max_tokens) if self.packing else [[it] for it in items]
        return place(
            rows, self.pad_id, self.pad_multiple, 1 if self.packing else self.min_rows, self.plain_batches_only
        )

    @property
    def plain_batches_only(self) -> bool:
        """Whether every batch of this collator is plain causal (unpacked and without JEPA pairs).

        Only then may a batch take the model's own mask: a run that mixes the two masks (a
        single-pass batch without a valid pair, a packed group of one example) hands a compiled
        decoder a mask of another rank and dtype, and it compiles a second graph mid-run.
        """
        return self.mode != "single_pass" and not self.packing
