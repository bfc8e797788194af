#!/usr/bin/env bash
# Toward the 105K tok/s target: packed steps of 64 GSM8K examples, SFT vs single-pass JEPA, eager and
# with a compiled decoder, each one bench invocation (its own table). Two consecutive calls on a warm
# machine, after `bash scripts/device_setup.sh a`:
#   carry .carry-model-b .carry-data:  bash scripts/gpu_throughput.sh 1   (setup b, eager)
#   no carry:                          bash scripts/gpu_throughput.sh 2   (compiled)
# The 2026-12-02 round (results/h200-2026-12-02) ran this script at commit 4d5afdd, which also timed
# the since removed Liger option.
set -uo pipefail
part=${1:?1 or 2}
source scripts/gpu_data.sh "$part"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() {  # $1 = name, rest = extra flags
  name=$1; shift
  timeout 280 python3 -m step_jepa.cli bench --model "$M" --data gsm8k /root/data/gsm8k_train.jsonl --device cuda \
    --dtype bf16 --attn flex_attention --batch_size 64 --steps 10 --warmup 3 --variants sp_first_packed,sft_packed "$@" \
    --json $OUT/$name.json --markdown $OUT/$name.md > $OUT/$name.log 2>&1
  echo "$name rc=$?"; grep -E "^\[bench\] round|^sp_first|^sft" $OUT/$name.log | cut -c1-160
}
if [ "$part" = 1 ]; then
  run eager --rounds 2
else
  run compiled --compile
fi
tar czf $OUT/throughput_$part.tgz -C $OUT --exclude='*.tgz' . 2>/dev/null  # one file: only 8 come back per call
true
