#!/usr/bin/env bash
# The chain task's data for the experiments/ grids: bash experiments/chain_data.sh STEPS DIGITS
# (S operations of D-digit numbers; docs/results.md section 2 uses 3 2, 4 3 and 6 3), into
# data/chain/s<S>d<D>/:
#   train_{250,1000,4000}.jsonl  the first N problems of one stream (seed 0)
#   test.jsonl                   500 problems of seed 1000 whose question is not a training question
#   dev.jsonl                    500 problems of the training stream after the first 1,000 whose
#                                question is not among those 1,000 (option selection, section 3)
set -euo pipefail
s=${1:?STEPS}; d=${2:?DIGITS}
dest=data/chain/s${s}d${d}
knobs=(--task chain --chain_steps "$s" --chain_digits "$d")
step-jepa prepare --generate 4000 --seed 0 --output "$dest/train_all.jsonl" "${knobs[@]}"
step-jepa prepare --generate 520 --seed 1000 --output "$dest/test_raw.jsonl" "${knobs[@]}"
for n in 250 1000 4000; do head -n "$n" "$dest/train_all.jsonl" > "$dest/train_$n.jsonl"; done
python3 - "$dest" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
question = lambda line: json.loads(line)["messages"][1]["content"]
train = (d / "train_all.jsonl").read_text().splitlines(keepends=True)
seen = {question(x) for x in train}
test = [x for x in (d / "test_raw.jsonl").read_text().splitlines(keepends=True) if question(x) not in seen][:500]
(d / "test.jsonl").write_text("".join(test))
first = {question(x) for x in train[:1000]}
(d / "dev.jsonl").write_text("".join([x for x in train[1000:] if question(x) not in first][:500]))
print(f"{d}: {len(test)} test problems not in train, 500 dev problems")
PY
