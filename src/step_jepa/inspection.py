"""`step-jepa inspect`: show one example exactly as the trainer sees it.

Tokens coloured by role (prompt, step 1, predictors, step 2, rest), the step spans, the labels,
and a compact picture of the attention pattern, so a user can check what the two views are.
"""

from __future__ import annotations

import argparse

import torch

from .layout import meta_of, pass2_items, place, single_pass_item
from .masks import COPY, ORIG, PRED, dense_mask
from .segment import IGNORE_INDEX, Segmented, segment

_COLORS = {"prompt": "\033[90m", "step1": "\033[94m", "pred": "\033[95m", "step2": "\033[92m", "rest": "\033[0m"}
_RESET = "\033[0m"


def token_roles(ex: Segmented, pair: int) -> list[str]:
    """Role name of each original token for the pair (pair, pair+1)."""
    names = ["rest"] * len(ex.input_ids)
    for t in range(ex.prompt_len):
        names[t] = "prompt"
    for name, span in (("step1", ex.step_spans[pair]), ("step2", ex.step_spans[pair + 1])):
        if span is not None:
            for t in range(*span):
                names[t] = name
    return names


def mask_picture(mask: torch.Tensor, roles: list[int], max_cols: int = 120) -> str:
    """Rows = queries, columns = keys; '#' attends, '.' does not. Long rows are subsampled."""
    T = mask.shape[-1]
    step = max(1, -(-T // max_cols))
    cols = list(range(0, T, step))
    sym = {ORIG: "o", PRED: "P", COPY: "c"}
    lines = ["    keys: " + "".join(sym.get(roles[c], " ") for c in cols)]
    for q in range(0, T, step):
        lines.append(f"{q:4d} {sym.get(roles[q], ' ')}    " + "".join("#" if mask[q, c] else "." for c in cols))
    return "\n".join(lines)


def describe(ex: Segmented, tokenizer, pred_ids: list[int], pair: int = 0, color: bool = True) -> str:
    """Human-readable account of one example: spans, role-marked tokens, labels and the mask."""
    out = [f"id: {ex.id}   tokens: {len(ex.input_ids)}   prompt tokens: {ex.prompt_len}   truncated: {ex.truncated}"]
    out.append("step token spans: " + ", ".join(f"S{i + 1}={s}" for i, s in enumerate(ex.step_spans)))
    valid = ex.valid_pairs()
    out.append(f"valid pairs: {[(i + 1, i + 2) for i in valid]}")
    if pair not in valid:
        out.append(f"pair S{pair + 1}→S{pair + 2} is not valid: no JEPA term for it (LM loss only)")
        return "\n".join(out)
    roles = token_roles(ex, pair)
    pieces = []
    for t, tid in enumerate(ex.input_ids):
        text = tokenizer.decode([tid]).replace("\n", "\\n")
        pieces.append(f"{_COLORS[roles[t]]}{text}{_RESET}" if color else f"[{roles[t]}:{text}]")
    out.append("tokens (grey prompt, blue step 1, green step 2):\n" + "".join(pieces))
    labelled = sum(1 for y in ex.labels if y != IGNORE_INDEX)
    out.append(f"labels: {labelled} tokens (assistant turn + end of turn); first labelled index {ex.prompt_len}")
    e1 = ex.step_spans[pair][1]
    s2, e2 = ex.step_spans[pair + 1]
    out.append(f"pass 2: tokens [0, {e1}) then {len(pred_ids)} predictor(s) at positions {e1}..{e1 + len(pred_ids) - 1}, "
               f"then step {pair + 2} isolated at positions {e1 + len(pred_ids)}..{e1 + len(pred_ids) + e2 - s2 - 1}")
    out.append("view 1 = last predictor token; view 2 = last token of the isolated step")
    p2 = place([[pass2_items(ex, [pair], pred_ids, 0)[0]]], tokenizer.pad_token_id)
    out.append("pass-2 attention (o original, P predictor, c isolated copy):\n" +
               mask_picture(dense_mask(meta_of(p2))[0, 0], p2["role"][0].tolist()))
    sp = place([[single_pass_item(ex, [pair], pred_ids, 0)]], tokenizer.pad_token_id)
    out.append(f"single-pass row: {len(ex.input_ids)} original tokens + {sp['input_ids'].shape[1] - len(ex.input_ids)} "
               f"appended (same views, one forward pass)")
    return "\n".join(out)


def run_inspect(args: argparse.Namespace) -> int:
    from .modeling import load_tokenizer, resolve_model_path
    from .trainer import load_training_records
    from .config import TrainConfig

    cfg = TrainConfig(model=args.model, train_file=args.train_file, generate_examples=max(args.index + 1, 8))
    tok = load_tokenizer(resolve_model_path(cfg.model))
    names = [f"<|predictor_{i + 1}|>" for i in range(args.predictors)]
    tok.add_special_tokens({"additional_special_tokens": names}, replace_extra_special_tokens=False)
    pred_ids = tok.convert_tokens_to_ids(names)
    records, _ = load_training_records(cfg)
    if not 0 <= args.index < len(records):
        raise IndexError(f"--index {args.index} out of range: {len(records)} examples")
    ex = segment(records[args.index], tok, args.max_length)
    print(describe(ex, tok, pred_ids, pair=args.pair, color=not args.no_color))
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show one example's tokens, step spans, labels and JEPA mask")
    p.add_argument("--train_file", default=None, help="prepared JSONL (default: the built-in generator)")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--pair", type=int, default=0, help="pair i shows S(i+1)→S(i+2); 0 = S1→S2")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="tokenizer source")
    p.add_argument("--predictors", type=int, default=1)
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--no_color", action="store_true")
    p.set_defaults(func=run_inspect)
