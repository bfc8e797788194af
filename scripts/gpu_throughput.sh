#!/usr/bin/env bash
# Next step for the 105K tok/s target (after `device_setup.sh a`; carry .carry-model-b + .carry-data):
# packed steps of 64 GSM8K examples, eager vs a torch.compile'd decoder, both with the LM head padded
# to a multiple of 64 (modeling.aligned_logits). Op tables of the compiled run under $OUT/profile_compiled.
set -uo pipefail
bash scripts/device_setup.sh b > /dev/null 2>&1 || exit 1
source scripts/gpu_env.sh
mkdir -p data
python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl --output data/gsm8k_train.jsonl > /dev/null 2>&1
run() {  # $1 = name, rest = extra flags
  name=$1; shift
  timeout 240 python3 -m step_jepa.cli bench --model "$M" --data gsm8k data/gsm8k_train.jsonl --device cuda --dtype bf16 \
    --attn flex_attention --batch_size 64 --steps 10 --warmup 3 --variants sp_first_packed,sft_packed "$@" \
    --json $OUT/$name.json --markdown $OUT/$name.md > $OUT/$name.log 2>&1
  echo "$name rc=$?"; grep "^\[bench\] round" $OUT/$name.log
}
run eager
run compiled --compile --profile_dir $OUT/profile_compiled --profile_steps 2
tar czf $OUT/all.tgz -C $OUT --exclude=all.tgz .   # one file: only 8 come back per call
