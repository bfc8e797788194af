cd "$(dirname "$0")/../.."
R=results/2026-12-06-cpu
B="/work/venv/bin/python -m step_jepa.cli bench --model tiny --device cpu --threads 1 --rounds 3 --variants sft,sp_first"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$B --json $R/default.json --markdown $R/default.md > $R/default.log 2>&1
$B --jepa_target frozen --json $R/frozen.json --markdown $R/frozen.md > $R/frozen.log 2>&1
$B --jepa_target_layer 1 --json $R/target_layer1.json --markdown $R/target_layer1.md > $R/target_layer1.log 2>&1
