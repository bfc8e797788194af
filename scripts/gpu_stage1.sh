#!/usr/bin/env bash
# Second call of a GPU session (after `device_setup.sh a`): model, data, flex check, step-cost
# benchmark and the untouched model's GSM8K accuracy. Writes logs and tables under $OUT.
set -uo pipefail
bash scripts/device_setup.sh b || exit 1
source scripts/gpu_env.sh
mkdir -p data
python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl --output data/gsm8k_train.jsonl > $OUT/prepare.log 2>&1
python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl --output data/sweep/train.jsonl --dev_fraction 0.1 --seed 0 >> $OUT/prepare.log 2>&1
python3 -m step_jepa.cli prepare --input .carry-data/test.jsonl --output data/gsm8k_test.jsonl >> $OUT/prepare.log 2>&1
tail -3 $OUT/prepare.log
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 150 python3 benchmarks/flex_check.py --models tiny,smollm2 --smollm2 "$M" > $OUT/flex_check.log 2>&1; echo "flex_check rc=$?"; tail -15 $OUT/flex_check.log
timeout 220 python3 benchmarks/step_cost.py --model "$M" --data gsm8k data/gsm8k_train.jsonl --device cuda --dtype bf16 \
  --attn flex_attention --batch_size 32 --steps 20 --warmup 5 --json $OUT/bench_flex.json --markdown $OUT/bench_flex.md > $OUT/bench.log 2>&1
echo "bench rc=$?"; tail -16 $OUT/bench.log
timeout 170 python3 -m step_jepa.cli eval --model "$M" --test_file data/gsm8k_test.jsonl --max_new_tokens 512 \
  --output_dir runs/eval_base --no_progress > $OUT/eval_base.log 2>&1; echo "eval rc=$?"; tail -4 $OUT/eval_base.log
cp runs/eval_base/summary.json $OUT/eval_base_summary.json 2>/dev/null
