"""Time of building the dense SDPA mask on the CPU: `masks.dense_mask` (the second range on every
row, the first on predictor rows only) against `allowed` evaluated at every (query, key).

    python benchmarks/mask_cost.py [--batch 32] [--repeats 20] [--threads 1]

Both are built for the same single-pass batch of generated problems (pairs=first, K=1) and must
agree; the table gives the median ms of each over --repeats builds after 3 warm-up builds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from step_jepa.data.segment import segment
from step_jepa.data.synthetic import generate_problems
from step_jepa.method.layout import StepJEPACollator, meta_of
from step_jepa.method.masks import allowed_everywhere, dense_mask
from step_jepa.models.tiny import build_tiny_tokenizer


def median_ms(fn, meta, repeats: int) -> float:
    for _ in range(3):
        fn(meta)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(meta)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = build_tiny_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<|predictor_1|>"]})
    pred = tok.convert_tokens_to_ids(["<|predictor_1|>"])
    exs = [segment(r, tok, 512) for r in generate_problems(args.batch, seed=0)]
    meta = meta_of(StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, mode="single_pass", pairs="first")(exs))
    if not torch.equal(dense_mask(meta), allowed_everywhere(meta)):
        print("dense_mask differs from allowed", file=sys.stderr)
        return 1
    B, T = meta.seq.shape
    print(f"torch {torch.__version__} | {args.threads} thread(s) | batch {B} × {T}")
    print("| mask | median ms |\n|---|---:|")
    print(f"| allowed at every (query, key) | {median_ms(allowed_everywhere, meta, args.repeats):.2f} |")
    print(f"| dense_mask (split by rows) | {median_ms(dense_mask, meta, args.repeats):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
