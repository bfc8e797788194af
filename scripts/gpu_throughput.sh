#!/usr/bin/env bash
# Toward the 105K tok/s target: packed steps of 64 GSM8K examples, SFT vs single-pass JEPA, under
# four kernel set-ups, each one bench invocation (its own table): eager, Liger kernels, compiled
# decoder, Liger + compiled. Two consecutive calls on a warm machine, after `device_setup.sh a`:
#   carry .carry-model-b .carry-data .whl:  bash scripts/gpu_throughput.sh 1   (setup b, Liger check, eager, Liger)
#   carry .whl:                             bash scripts/gpu_throughput.sh 2   (compiled, Liger + compiled)
# .whl holds the liger-kernel wheel (pure Python; Triton is in the GPU image).
set -uo pipefail
part=${1:?1 or 2}
python3 -m pip install -q --no-index --no-deps --upgrade --target /root/site .whl/*.whl 2>&1 | tail -1
[ "$part" = 1 ] && { bash scripts/device_setup.sh b > /dev/null 2>&1 || { echo "setup b failed"; exit 1; }; }
source scripts/gpu_env.sh
mkdir -p /root/data
[ -f /root/data/gsm8k_train.jsonl ] || python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl \
  --output /root/data/gsm8k_train.jsonl > /dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() {  # $1 = name, rest = extra flags
  name=$1; shift
  timeout 280 python3 -m step_jepa.cli bench --model "$M" --data gsm8k /root/data/gsm8k_train.jsonl --device cuda \
    --dtype bf16 --attn flex_attention --batch_size 64 --steps 10 --warmup 3 --variants sp_first_packed,sft_packed "$@" \
    --json $OUT/$name.json --markdown $OUT/$name.md > $OUT/$name.log 2>&1
  echo "$name rc=$?"; grep -E "^\[bench\] round|^sp_first|^sft" $OUT/$name.log | cut -c1-160
}
if [ "$part" = 1 ]; then
  timeout 150 python3 benchmarks/flex_check.py --models tiny,smollm2 --liger --mask_T 4096 > $OUT/liger_check.log 2>&1
  echo "liger_check rc=$?"; grep -E "liger|PASS:|FAIL:" $OUT/liger_check.log | tail -8
  run eager --rounds 2
  run liger --rounds 2 --use_liger_kernel
else
  run compiled --compile
  run liger_compiled --compile --use_liger_kernel
fi
tar czf $OUT/throughput_$part.tgz -C $OUT --exclude='*.tgz' .   # one file: only 8 come back per call
