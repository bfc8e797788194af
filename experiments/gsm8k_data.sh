#!/usr/bin/env bash
# GSM8K prepared for the experiments/ grids (the steps docs/results.md's runs used): annotations
# stripped, one step per line, last step `The final answer is \boxed{N}.`
#   data/gsm8k/train.jsonl, data/gsm8k/test.jsonl    all 7,473 / 1,319 problems
#   data/gsm8k/sweep/train.jsonl, train.dev.jsonl    train minus 747 held-out dev problems (seed 0)
# Run from the project root; GSM8K is read from ../shared/data/gsm8k (or GSM8K_DIR).
set -euo pipefail
src=${GSM8K_DIR:-../shared/data/gsm8k}
step-jepa prepare --input "$src/train.jsonl" --output data/gsm8k/train.jsonl
step-jepa prepare --input "$src/test.jsonl" --output data/gsm8k/test.jsonl
step-jepa prepare --input "$src/train.jsonl" --output data/gsm8k/sweep/train.jsonl --dev_fraction 0.1 --seed 0
