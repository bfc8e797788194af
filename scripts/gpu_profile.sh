#!/usr/bin/env bash
# Where a packed training step's GPU time goes (after `device_setup.sh a`; carry .carry-model-b +
# .carry-data): SFT and single-pass JEPA, 64 GSM8K examples per packed row, torch.profiler op tables.
set -uo pipefail
bash scripts/device_setup.sh b > /dev/null 2>&1 || exit 1
source scripts/gpu_env.sh
mkdir -p data
python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl --output data/gsm8k_train.jsonl > /dev/null 2>&1
timeout 200 python3 -m step_jepa.cli bench --model "$M" --data gsm8k data/gsm8k_train.jsonl --device cuda --dtype bf16 \
  --attn flex_attention --batch_size 64 --steps 5 --warmup 3 --variants sp_first_packed,sft_packed \
  --profile_dir $OUT --profile_steps 2 --markdown $OUT/bench_profile.md > $OUT/bench_profile.log 2>&1
echo "rc=$?"; grep "^\[bench\]" $OUT/bench_profile.log; head -30 $OUT/profile_sp_first_packed.txt | cut -c1-220
