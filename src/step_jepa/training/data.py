"""Training data for `step-jepa train`: records from a file or the generator, tokenized and
segmented with every skip counted, packed into token budgets, and collated with per-batch seeds.

Kept apart from the Trainer subclass (trainer.py): these steps run before any model exists, and a
bad file must fail here — with its file:line or its skip counts — before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from typing import Any

import torch
from torch.utils.data import Dataset

from step_jepa.data.logs import get_logger
from step_jepa.data.segment import Segmented, SegmentError, segment
from step_jepa.method.layout import StepJEPACollator, flatten_examples
from step_jepa.training.checkpoints import _is_main_process
from step_jepa.training.config import StepJEPAConfig

logger = get_logger(__name__)


class ListDataset(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def load_training_records(cfg: StepJEPAConfig) -> tuple[list[dict], dict[str, Any]]:
    """Records from --train_file (strict by default: the first bad line is an error naming file:line),
    --dataset_name (its rows converted and reported the same way), or the built-in generator."""
    from step_jepa.data.synthetic import generate_problems

    if cfg.dataset_name is not None:
        return load_hub_records(cfg)
    if cfg.train_file is None:
        recs = generate_problems(cfg.generate_examples, seed=cfg.seed)
        return _with_system_prompt(recs, cfg), {
            "source": f"generator ({cfg.generate_examples} problems, seed {cfg.seed})",
            "lines_read": len(recs),
        }
    return load_file_records(cfg.train_file, cfg)


def load_file_records(path: str, cfg: StepJEPAConfig) -> tuple[list[dict], dict[str, Any]]:
    """Records of a JSONL file (train or eval), read and prompted the same way."""
    from step_jepa.data.load import load_records

    recs, rep = load_records(path, skip_invalid=cfg.skip_invalid)
    return _with_system_prompt(recs, cfg), {"source": path, **rep.to_dict()}


def load_hub_records(cfg: StepJEPAConfig) -> tuple[list[dict], dict[str, Any]]:
    """--dataset_name/--dataset_config/--dataset_train_split, through the loader `step-jepa prepare`
    and `step-jepa eval --dataset` use; "source" names it NAME[SPLIT] in the data report."""
    from step_jepa.data.load import load_dataset_records

    assert cfg.dataset_name is not None
    recs, rep = load_dataset_records(
        cfg.dataset_name, cfg.dataset_config, cfg.dataset_train_split, skip_invalid=cfg.skip_invalid
    )
    return _with_system_prompt(recs, cfg), {"source": f"{cfg.dataset_name}[{cfg.dataset_train_split}]", **rep.to_dict()}


def _with_system_prompt(recs: list[dict], cfg: StepJEPAConfig) -> list[dict]:
    if cfg.system_prompt is not None:
        for r in recs:
            r["messages"] = [{"role": "system", "content": cfg.system_prompt}] + [
                m for m in r["messages"] if m["role"] != "system"
            ]
    return recs


def segment_all(
    records: list[dict], tokenizer, max_length: int, boundary: str = "content"
) -> tuple[list[Segmented], dict[str, Any]]:
    """Tokenize every record; unusable ones are counted per reason and reported, never dropped silently.

    The pair counts follow `boundary` (--view_boundary): under 'separator' a step whose end is not
    known (the last one of a truncated example) has no pair, though its content is intact."""
    out: list[Segmented] = []
    skipped: Counter = Counter()
    skipped_examples: list[dict[str, str]] = []
    for r in records:
        try:
            out.append(segment(r, tokenizer, max_length))
        except SegmentError as e:
            skipped[e.reason] += 1
            if len(skipped_examples) < 20:  # enough to find them; counts stay exact
                skipped_examples.append({"id": str(r.get("id", "")), "reason": str(e)})
    bounded = [ex.with_boundary(boundary) for ex in out]
    stats = {
        "examples": len(out),
        "skipped": dict(skipped),
        "skipped_examples": skipped_examples,
        "truncated": sum(ex.truncated for ex in out),
        "without_valid_pair": sum(not ex.valid_pairs() for ex in bounded),
        "first_pair_invalid": sum(0 not in ex.valid_pairs() for ex in bounded),
        "mean_tokens": round(sum(len(ex.input_ids) for ex in out) / max(1, len(out)), 1),
    }
    if not out:
        raise ValueError(f"no usable training example (skipped: {dict(skipped)})")
    return out, stats


def appended_tokens(ex: Segmented, cfg: StepJEPAConfig) -> int:
    """Tokens the single-pass layout appends to `ex` (K predictors + the step copy per used pair;
    the predictors alone with an EMA or frozen target, which encodes the copies in its own pass),
    so packed batches respect the token budget with the JEPA extras counted exactly."""
    if cfg.lbd == 0:
        return 0
    ex = ex.with_boundary(cfg.view_boundary)
    valid = ex.valid_pairs()
    online_copy = not cfg.target_model()

    def size(i: int) -> int:
        start, end = ex.step_spans[i + 1]
        return cfg.predictors + (end - start if online_copy else 0)

    sizes = {i: size(i) for i in valid}
    if cfg.pairs == "first":
        return sizes.get(0, 0)
    if cfg.pairs == "all":
        return sum(sizes.values())
    return max(sizes.values(), default=0)  # random: the largest pair it could draw


def pack_groups(examples: list[Segmented], budget: int, extra, seed: int) -> list[list[Segmented]]:
    """Groups of examples whose tokens (plus the JEPA extras: an int, or a function of the example)
    fit one batch budget, in a seeded order."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    groups: list[list[Segmented]] = []
    cur: list[Segmented] = []
    used = 0
    for i in order:
        n = len(examples[i].input_ids) + (extra(examples[i]) if callable(extra) else extra)
        if cur and used + n > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(examples[i])
        used += n
    if cur:
        groups.append(cur)
    return groups


class BatchSeededCollator:
    """Makes the collator's random choices (--pairs random, --jepa_ratio < 1) a function of the
    batch's examples instead of how many batches came before.

    The wrapped collator draws from one running RNG, and a resumed run skips the batches it has
    seen without collating them, so the draws after a resume would differ from an uninterrupted
    run's. Seeding each batch from its example ids keeps resume exact, and also makes the draws
    independent of data-loader workers and prefetching.
    """

    def __init__(self, inner: StepJEPACollator):
        self.inner = inner

    def __call__(self, examples: list) -> dict[str, torch.Tensor]:
        flat = flatten_examples(examples)
        key = "\x1f".join(f"{ex.id}:{len(ex.input_ids)}" for ex in flat)
        digest = hashlib.sha256(f"{self.inner.seed}\x1e{key}".encode()).digest()
        return dataclasses.replace(self.inner, seed=int.from_bytes(digest[:8], "little"))(flat)


def build_collator(cfg: StepJEPAConfig, tok, pred_ids: list[int], attn: str) -> BatchSeededCollator:
    mode = "sft" if cfg.lbd == 0 else cfg.jepa_mode
    return BatchSeededCollator(
        StepJEPACollator(
            pad_id=tok.pad_token_id,
            pred_ids=pred_ids,
            mode=mode,
            pairs=cfg.pairs,
            packing=cfg.packing,
            # The groups are budgeted already; under --packing_budget examples a group's row may exceed
            # the budget by its JEPA extras and must stay one row (no padding between rows).
            max_tokens=cfg.max_tokens_per_batch if cfg.packing_budget == "all" else 2**31,
            pad_multiple=128 if attn == "flex_attention" else 1,
            seed=cfg.seed,
            jepa_ratio=cfg.jepa_ratio,
            target_copies=cfg.target_model(),
            boundary=cfg.view_boundary,
            stp=cfg.stp_positions if cfg.stp_lbd > 0 else "none",
            min_rows=2 if cfg.torch_compile else 1,  # a 1-row last batch would recompile the decoder
        )
    )


def format_data_report(data: dict[str, Any], seg: dict[str, Any]) -> str:
    """Two readable lines: what happened to the input lines, and to the records at tokenization."""
    skipped = data.get("skipped") or {}
    line = f"data: {data.get('lines_read', 0)} lines read from {data.get('source')}"
    if "written" in data:
        line += f", {data['written']} used, {sum(skipped.values())} skipped"
        line += "".join(f"\n  {n:>6}  {reason}" for reason, n in skipped.items())
    seg_line = (
        f"segmentation: {seg['examples']} examples, {seg['truncated']} truncated, "
        f"{seg['without_valid_pair']} without a valid step pair, {seg['first_pair_invalid']} without a valid "
        f"S1→S2 pair (what --pairs first uses), mean {seg['mean_tokens']} tokens"
    )
    seg_line += "".join(f"\n  {n:>6}  skipped: {reason}" for reason, n in seg["skipped"].items())
    return f"{line}\n{seg_line}"


LOW_PAIR_FRACTION = 0.10  # below this share of examples with a usable pair, λ > 0 is mostly SFT


def pair_fraction(cfg: StepJEPAConfig, seg: dict[str, Any]) -> float:
    """Share of the examples that can contribute a JEPA pair under --pairs (first: the S1→S2 pair)."""
    missing = seg["first_pair_invalid"] if cfg.pairs == "first" else seg["without_valid_pair"]
    return (seg["examples"] - missing) / max(1, seg["examples"])  # not 1 - m/n: 1 - 9/10 < 0.1


def check_pair_coverage(cfg: StepJEPAConfig, seg: dict[str, Any]) -> None:
    """Stop, or warn loudly, when λ > 0 but (almost) no example has a step pair.

    Without pairs the JEPA term is 0 on every batch, so the run is plain SFT that claims to be
    Step-JEPA: the usual cause is data whose steps are not separated by a blank line, or a
    --max_length that cuts step 2. Raised before anything is written, so the rerun is clean.
    """
    if cfg.lbd == 0:
        return
    frac = pair_fraction(cfg, seg)
    what = "an intact S1→S2 step pair (what --pairs first uses)" if cfg.pairs == "first" else "a valid step pair"
    if frac == 0:
        raise ValueError(
            f"--lbd {cfg.lbd} but none of the {seg['examples']} examples has {what}, so the JEPA loss would be 0 "
            "and this would be plain SFT. Steps are found at blank lines ('\\n\\n') in the answer: check the data "
            "(step-jepa inspect), raise --max_length if steps are cut, or train SFT on purpose with --lbd 0."
        )
    if frac < LOW_PAIR_FRACTION and _is_main_process():
        logger.warning(
            f"only {100 * frac:.1f}% of the {seg['examples']} examples have {what}; the JEPA term "
            f"(λ={cfg.lbd}) sees few pairs and this run is mostly plain SFT. Check the step "
            "separators of the data (step-jepa inspect) or --max_length."
        )


def make_dataset(examples: list[Segmented], cfg: StepJEPAConfig) -> ListDataset:
    """Examples as the collator takes them: one per item, or packed groups within the token budget.

    With ``--packing_budget examples`` the JEPA extras are not counted, so the groups are exactly
    those of an SFT run of the same seed: the same examples per optimizer step and the same number
    of steps. Counting them (the default) keeps every row within the budget, but a JEPA run then
    takes ~13 % more, smaller steps than its SFT baseline (GSM8K, K 4), a difference beside λ.
    """
    if not cfg.packing:
        return ListDataset(examples)
    counted = cfg.jepa_mode == "single_pass" and cfg.packing_budget == "all"
    extra = (lambda ex: appended_tokens(ex, cfg)) if counted else 0
    return ListDataset(pack_groups(examples, cfg.max_tokens_per_batch, extra, cfg.seed))


def load_eval_examples(cfg: StepJEPAConfig, tok) -> list[Segmented]:
    """--eval_file tokenized like the training data (empty without one), with its own report line."""
    if not cfg.eval_file or cfg.resolved_eval_strategy() == "no":
        return []
    records, report = load_file_records(cfg.eval_file, cfg)
    examples, seg = segment_all(records, tok, cfg.max_length, cfg.view_boundary)
    logger.info("eval " + format_data_report(report, seg).replace("\nsegmentation", "\neval segmentation", 1))
    return examples
