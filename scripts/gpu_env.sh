# Sourced by the GPU scripts: the carried gguf reader and the project on the path, offline.
export PYTHONPATH=/root/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
M=$(python3 -c "from step_jepa.modeling import resolve_model_path; print(resolve_model_path('HuggingFaceTB/SmolLM2-135M-Instruct'))" 2>/dev/null | tail -1)
export M
