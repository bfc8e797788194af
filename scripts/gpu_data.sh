# Sourced by the GPU scripts with the call's part number: on part 1 the model is rebuilt from its
# carried second half (`device_setup.sh b`, after `device_setup.sh a` in the call before); then the
# environment (scripts/gpu_env.sh) and GSM8K train prepared at /root/data (carry .carry-data on part 1).
[ "${1:-}" = 1 ] && { bash scripts/device_setup.sh b > /dev/null 2>&1 || { echo "setup b failed"; exit 1; }; }
source scripts/gpu_env.sh
mkdir -p /root/data
[ -f /root/data/gsm8k_train.jsonl ] || python3 -m step_jepa.cli prepare --input .carry-data/train.jsonl \
  --output /root/data/gsm8k_train.jsonl > /dev/null 2>&1
