#!/usr/bin/env bash
# The compiled decoder on the GPU: exactness, the bench tables of the targets, and the real
# trainer. Two consecutive calls on a warm machine, after `bash scripts/device_setup.sh a`:
#   carry .carry-model-b .carry-data:  bash scripts/gpu_compile.sh 1
#       setup b; flex_check --checks compile (fp32: compiled vs eager loss and every gradient);
#       the B=32 padded+packed bench table, eager
#   no carry:                          bash scripts/gpu_compile.sh 2
#       the same bench table with --compile (VARIANTS=... picks a subset); `step-jepa train` 60 packed steps, compiled
set -uo pipefail
part=${1:?1 or 2}
source scripts/gpu_data.sh "$part"
bench() {  # $1 = name, $2 = timeout, rest = extra flags
  name=$1; t=$2; shift 2
  timeout "$t" python3 -m step_jepa.cli bench --model "$M" --data gsm8k /root/data/gsm8k_train.jsonl --device cuda \
    --dtype bf16 --attn flex_attention --batch_size 32 --steps 20 --warmup 5 \
    --variants ${VARIANTS:-hf_sft,sft,two_pass,sp_first,sft_packed,sp_first_packed} "$@" \
    --json $OUT/$name.json --markdown $OUT/$name.md > $OUT/$name.log 2>&1
  echo "$name rc=$?"; grep -E "^\[bench\] round" $OUT/$name.log | cut -c1-120
}
train() {  # $1 = name, rest = extra flags
  name=$1; shift
  timeout 150 python3 -m step_jepa.cli train --model "$M" --train_file /root/data/gsm8k_train.jsonl --bf16 true \
    --lbd 1 --packing true --max_tokens_per_batch 16384 --max_steps 60 --logging_steps 20 --learning_rate 5e-5 \
    --report_to none --save_steps 100000 --dataloader_num_workers 2 --output_dir /root/runs/$name "$@" \
    > $OUT/$name.log 2>&1
  echo "$name rc=$?"; grep -E "tokens_per_s" $OUT/$name.log | cut -c1-420
  cp /root/runs/$name/train_summary.json $OUT/${name}_summary.json 2>/dev/null
  cp /root/runs/$name/metrics.jsonl $OUT/${name}_metrics.jsonl 2>/dev/null
}
if [ "$part" = 1 ]; then
  timeout 240 python3 benchmarks/flex_check.py --checks compile --models tiny,smollm2 > $OUT/compile_check.log 2>&1
  echo "compile_check rc=$?"; grep -E "compiled_sp|PASS:|FAIL:" $OUT/compile_check.log | tail -9
  bench bench32_eager 200
else
  bench bench32_compiled 330 --compile
  train train_compiled --torch_compile true
fi
tar czf $OUT/compile_$part.tgz -C $OUT --exclude='*.tgz' . 2>/dev/null  # one file: only 8 come back per call
true
