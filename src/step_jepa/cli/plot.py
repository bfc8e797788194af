"""`step-jepa plot`: loss curves (total, LM, JEPA) of one or more runs from their metrics.jsonl."""

from __future__ import annotations

import argparse

from step_jepa.analysis.plots import PLOT_METRICS, plot_runs, short_labels


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output dirs (or metrics.jsonl files)")
    p.add_argument("--out", default="loss_curves.png", help="PNG path (default ./loss_curves.png)")
    p.add_argument(
        "--metrics",
        default=",".join(PLOT_METRICS),
        help=f"comma-separated metrics.jsonl keys, one subplot each (default {','.join(PLOT_METRICS)})",
    )


def run(args: argparse.Namespace) -> int:
    from step_jepa.analysis.deps import require_matplotlib

    require_matplotlib("plot")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    plot_runs(args.runs, args.out, metrics)
    print(f"[plot] wrote {args.out} ({len(args.runs)} run(s): {', '.join(short_labels(args.runs))})")
    return 0
