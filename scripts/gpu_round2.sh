#!/usr/bin/env bash
# Second GPU session of 2026-11-25 (after `device_setup.sh a`; carry .carry-model-b + .carry-data):
# packed throughput at 64 examples per step, then SFT and Step-JEPA (cosine, λ=1, K=1, the dev-sweep
# winner) trained side by side for 1 epoch, seed 0, and their embeddings and loss curves drawn.
set -uo pipefail
bash scripts/device_setup.sh b > /dev/null || exit 1
source scripts/gpu_env.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p data runs/embed
python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl --output data/gsm8k_train.jsonl > /dev/null 2>&1
python3 -m step_jepa.cli prepare --input .carry-data/test.jsonl --output data/gsm8k_test.jsonl > /dev/null 2>&1
bench() {  # $1 = name, $2 = variants, $3 = time limit
  timeout $3 python3 -m step_jepa.cli bench --model "$M" --data gsm8k data/gsm8k_train.jsonl --device cuda --dtype bf16 \
    --attn flex_attention --batch_size 64 --steps 10 --warmup 3 --variants $2 --json $OUT/$1.json \
    --markdown $OUT/$1.md > $OUT/$1.log 2>&1; echo "$1 rc=$?"; grep "^\[bench\]\|^|" $OUT/$1.log | tail -8
}
bench bench_pack64 sp_first_packed,sft_packed 120
common="--model HuggingFaceTB/SmolLM2-135M-Instruct --train_file data/gsm8k_train.jsonl --num_train_epochs 1
  --per_device_train_batch_size 32 --learning_rate 5e-5 --warmup_ratio 0.03 --lr_scheduler_type cosine
  --adam_beta2 0.95 --weight_decay 0 --bf16 --logging_steps 10 --save_steps 100000 --report_to none --seed 0"
python3 -m step_jepa.cli train $common --lbd 0 --output_dir runs/embed/sft > $OUT/train_sft.log 2>&1 &
python3 -m step_jepa.cli train $common --lbd 1.0 --predictors 1 --pairs first --output_dir runs/embed/jepa > $OUT/train_jepa.log 2>&1 &
wait; tail -n 2 $OUT/train_sft.log $OUT/train_jepa.log
timeout 150 python3 -m step_jepa.cli embed --model runs/embed/jepa/final --model2 runs/embed/sft/final \
  --data data/gsm8k_test.jsonl -n 512 --out $OUT/embed > $OUT/embed.log 2>&1; echo "embed rc=$?"; tail -5 $OUT/embed.log
python3 -m step_jepa.cli plot runs/embed/sft runs/embed/jepa --out $OUT/loss_curves.png > $OUT/plot.log 2>&1; echo "plot rc=$?"
for r in sft jepa; do cp runs/embed/$r/metrics.jsonl $OUT/metrics_$r.jsonl; done
bench bench_pack64_hf hf_sft_packed 90
ls -la $OUT $OUT/embed
