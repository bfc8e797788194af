#!/usr/bin/env bash
# One GPU call of the experiment in docs/results.md (after `device_setup.sh a` on a warm machine).
#   first call:  carry .carry-model-b + .carry-data:  bash scripts/gpu_round.sh setup
#   next calls:  carry .carry-data:                   bash scripts/gpu_round.sh
# The first call also measures eval speed (bf16 default and fp32) and packed throughput at 64
# examples per step; then every call runs the resumable job queue of scripts/gpu_queue.py until ~580 s.
set -uo pipefail
T0=$SECONDS
if [ "${1:-}" = setup ]; then bash scripts/device_setup.sh b || exit 1; fi
source scripts/gpu_env.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p data/sweep runs
prep() { [ -f "$2" ] || python3 -m step_jepa.cli prepare --input "$1" --output "$2" "${@:3}" >> $OUT/prepare.log 2>&1; }
prep .carry-data/train.jsonl data/gsm8k_train.jsonl
prep .carry-data/train.jsonl data/sweep/train.jsonl --dev_fraction 0.1 --seed 0
prep .carry-data/test.jsonl data/gsm8k_test.jsonl
wc -l data/gsm8k_train.jsonl data/sweep/train.jsonl data/sweep/train.dev.jsonl data/gsm8k_test.jsonl
if [ ! -f runs/stage1.done ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
  timeout 150 python3 -m step_jepa.cli eval --model "$M" --test_file data/gsm8k_test.jsonl --max_new_tokens 512 \
    --output_dir runs/eval_base_bf16 --no_progress > $OUT/eval_base_bf16.log 2>&1; echo "eval bf16 rc=$?"
  tail -2 $OUT/eval_base_bf16.log; cp runs/eval_base_bf16/summary.json $OUT/eval_base_bf16_summary.json
  cp runs/eval_base_bf16/predictions.jsonl $OUT/eval_base_bf16_predictions.jsonl
  timeout 150 python3 benchmarks/eval_speed.py --model "$M" --test_file data/gsm8k_test.jsonl --dtype fp32 \
    > $OUT/eval_speed_fp32.log 2>&1; echo "eval fp32 rc=$?"; tail -4 $OUT/eval_speed_fp32.log
  timeout 170 python3 -m step_jepa.cli bench --model "$M" --data gsm8k data/gsm8k_train.jsonl --device cuda \
    --dtype bf16 --attn flex_attention --batch_size 64 --steps 15 --warmup 5 \
    --variants hf_sft_packed,sft_packed,sp_first_packed --json $OUT/bench_pack64.json \
    --markdown $OUT/bench_pack64.md > $OUT/bench_pack64.log 2>&1; echo "bench rc=$?"; tail -6 $OUT/bench_pack64.log
  touch runs/stage1.done
fi
python3 scripts/gpu_queue.py --deadline $((585 - (SECONDS - T0))) --slots 3 --est 135 --out $OUT
tail -30 runs/dev_sweep/compare_table.md 2>/dev/null; tail -30 runs/gsm8k_test/compare_table.md 2>/dev/null
