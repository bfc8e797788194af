#!/usr/bin/env python3
"""Accuracy against training-set size, from the `step-jepa compare` reports of one size per directory.

    python3 scripts/size_curve.py results/2026-12-03-h200/chain/s3d2 --out curve.png

Reads ROOT/n<N>/compare_results.json (written by `step-jepa compare --report ROOT/n<N> --baseline sft`),
prints one markdown table (size × config: mean ± std over seeds, paired Δ vs the baseline with its
95 % CI and McNemar p) and draws accuracy (mean, with the seeds as dots) against N on a log axis.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def load(root: Path) -> dict[int, list[dict]]:
    """size → the configs rows of that size's report."""
    out = {}
    for d in root.iterdir():
        m = re.fullmatch(r"n(\d+)", d.name)
        if m and (d / "compare_results.json").exists():
            out[int(m.group(1))] = json.loads((d / "compare_results.json").read_text())["configs"]
    if not out:
        raise SystemExit(f"no {root}/n<N>/compare_results.json")
    return dict(sorted(out.items()))


def table(curve: dict[int, list[dict]]) -> str:
    rows = [
        "| train problems | config | seeds | accuracy % (mean ± std) | Δ vs SFT, points [95 % CI] | McNemar p (b / c) |",
        "|---|---|---|---|---|---|",
    ]
    for n, configs in curve.items():
        for c in configs:
            p = c.get("paired") or {}
            if p.get("status") == "ok":
                lo, hi = p["ci95_points"]
                delta = f"{p['delta_points']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                mc = f"{p['mcnemar_p']:.2f} ({p['b']} / {c['paired']['c']})"
            else:
                delta = mc = "—"
            rows.append(
                f"| {n:,} | {c['config']} | {c['n']} | {100 * c['mean']:.2f} ± {100 * c['std']:.2f} | {delta} | {mc} |"
            )
    return "\n".join(rows) + "\n"


def plot(curve: dict[int, list[dict]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    names = [c["config"] for c in next(iter(curve.values()))]
    for k, name in enumerate(names):
        xs, ys = [], []
        for n, configs in curve.items():
            c = next((c for c in configs if c["config"] == name), None)
            if c is None:
                continue
            xs.append(n * (1 + 0.04 * (k - 1)))  # a small offset so the seeds' dots do not overlap
            ys.append(100 * c["mean"])
            ax.scatter([xs[-1]] * len(c["accuracy"]), [100 * a for a in c["accuracy"]], s=12, alpha=0.5, color=f"C{k}")
        ax.plot(xs, ys, marker="o", color=f"C{k}", label=name)
    ax.set_xscale("log")
    ax.set_xticks(list(curve), [f"{n:,}" for n in curve])
    ax.minorticks_off()
    ax.set_xlabel("training problems")
    ax.set_ylabel("test accuracy % (mean; dots: seeds)")
    ax.set_title(title)
    ax.legend()
    fig.savefig(out, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="directory holding n<N>/compare_results.json")
    p.add_argument("--out", type=Path, help="write the plot here (PNG)")
    p.add_argument("--title", default="accuracy vs training-set size")
    args = p.parse_args()
    curve = load(args.root)
    print(table(curve), end="")
    if args.out:
        plot(curve, args.out, args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
