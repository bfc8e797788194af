"""Cost of one optimizer step per training layout (HF SFT, our SFT, two-pass, single-pass), same examples.

Thin wrapper around ``step-jepa bench`` (see ``step_jepa/bench.py`` and docs/performance.md)::

    python benchmarks/step_cost.py --model smollm2 --data gsm8k PATH --dtype bf16 --device cuda --json out.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from step_jepa.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
