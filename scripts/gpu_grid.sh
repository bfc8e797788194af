#!/usr/bin/env bash
# One wave per seed: the configs of examples/gsm8k_h100.yaml run side by side (3 processes on one
# GPU), results copied to $OUT after every wave so a timed-out call still returns what finished.
set -uo pipefail
source scripts/gpu_env.sh
mkdir -p data  # rebuilt each call: the machine keeps only ignored paths between calls
[ -f data/gsm8k_train.jsonl ] || python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl --output data/gsm8k_train.jsonl > /dev/null
[ -f data/gsm8k_test.jsonl ] || python3 -m step_jepa.cli prepare --input .carry-data/test.jsonl --output data/gsm8k_test.jsonl > /dev/null
for s in "$@"; do
  for c in sft jepa_first jepa_all; do
    python3 -m step_jepa.cli compare --config examples/gsm8k_h100.yaml --only $c --seeds $s > runs_${c}_${s}.log 2>&1 &
  done
  wait
  for f in runs_*_${s}.log; do tail -n 2 $f; done
  tar czf $OUT/results.tgz runs/gsm8k_h100/*/seed*/result.json runs/gsm8k_h100/*/seed*/metrics.jsonl \
    runs/gsm8k_h100/*/seed*/*/summary.json runs/gsm8k_h100/*/seed*/train_summary.json runs_*.log 2>/dev/null
done
python3 -m step_jepa.cli compare --report runs/gsm8k_h100 > $OUT/report.txt 2>&1; tail -12 $OUT/report.txt
