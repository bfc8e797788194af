"""The report of ``step-jepa compare``: a grid's runs read back into a table (accuracy mean ± std,
paired Δ, McNemar and bootstrap against the baseline, collapse diagnostics) and a bar chart.

:func:`build_report` rebuilds ``compare_table.md``, ``compare_results.json`` and ``compare.png``
from the ``<name>/seed<s>/result.json`` files alone (:mod:`step_jepa.analysis.runs`), so it also
runs on a finished or partial grid (``step-jepa compare --report DIR``), after checking that the
runs can be compared (:mod:`step_jepa.analysis.comparable`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from step_jepa.analysis.comparable import consistency_warnings, protocol_check
from step_jepa.analysis.runs import (
    PLOT,
    READ_FROM,
    RESULT,
    RESULTS,
    SHARING,
    TABLE,
    collect_results,
    grid_order,
    load_run_predictions,
    log,
    read_text_or_gz,
    write_atomic,
)
from step_jepa.analysis.stats import alignment_note, paired_stats


def paired_vs_baseline(
    rows: list[dict[str, Any]],
    results: list[dict[str, Any]],
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Paired stats of every config against the first (baseline) row; a config that cannot be
    paired gets {"status": "n/a (...)"} instead of failing the whole report."""
    if not rows:
        return {}
    preds, errors = load_run_predictions(results)
    base = rows[0]["config"]
    out: dict[str, dict[str, Any]] = {}
    for row in rows[1:]:
        name = row["config"]
        bad = [f"{n}: {errors[n]}" for n in (base, name) if n in errors]
        if bad:
            out[name] = {"status": f"n/a (bad predictions.jsonl, {'; '.join(bad)})"}
            log(f"paired {name} vs {base}: {out[name]['status']}")
            continue
        if not preds.get(base) or not preds.get(name):
            out[name] = {"status": "n/a (no predictions)"}
            continue
        try:
            stats = paired_stats(preds[base], preds[name], n_boot=n_boot, seed=seed)
        except ValueError as e:
            out[name] = {"status": f"n/a ({e})"}
            continue
        stats["runs_without_predictions"] = sorted(set(row["seeds"]) - set(preds[name]))
        stats["status"] = "ok"
        out[name] = stats
        _log_alignment(name, base, stats)
    return out


def _log_alignment(name: str, base: str, stats: dict[str, Any]) -> None:
    """Say what could not be paired; the table carries the same note."""
    note = alignment_note(stats)
    if note:
        log(f"paired {name} vs {base}: {note}")


def format_paired(paired: dict[str, dict[str, Any]], baseline: str) -> str:
    """Markdown section: Δ points [95 % CI], McNemar p and b/c per config against the baseline."""
    if not paired:
        return ""
    lines = [
        f"\n## Paired vs {baseline} (per problem)\n",
        "| config | Δ points [95% CI] | McNemar p | b / c | seeds × problems | Δ per seed | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, st in paired.items():
        if st.get("status") != "ok":
            lines.append(f"| {name} | {st['status']} | — | — | — | — | |")
            continue
        lo, hi = st["ci95_points"]
        lines.append(
            f"| {name} | {st['delta_points']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {_fmt_p(st['mcnemar_p'])} "
            f"({st['mcnemar']['method']}) | {st['b']} / {st['c']} | {st['n_seeds']} × {st['n_problems']} | "
            f"{_per_seed(st['per_seed_delta_points'])} | {alignment_note(st)} |"
        )
    lines.append("")
    lines.append(
        f"Δ: candidate − {baseline} accuracy in points, averaged over the paired seeds. CI: percentile "
        "bootstrap over problems (one resampled problem set for all seeds). McNemar pooled over seeds: "
        f"b = {baseline} right & candidate wrong, c = the reverse; exact binomial test. Δ per seed: the "
        "same difference within each paired seed, and on how many seeds the candidate is ahead: a mean "
        "carried by one seed reads differently from one that every seed shares."
    )
    return "\n".join(lines) + "\n"


def _per_seed(deltas: Mapping[Any, float]) -> str:
    """``s0 +1.67 / s1 -0.99 (ahead on 1 of 2)``; seeds are ints, or strings once read back from JSON."""
    ordered = sorted((int(s), d) for s, d in deltas.items())
    ahead = sum(d > 0 for _, d in ordered)
    return " / ".join(f"s{s} {d:+.2f}" for s, d in ordered) + f" (ahead on {ahead} of {len(ordered)})"


def _fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


# metrics.jsonl keys (see trainer/objective) averaged over the last logged steps of each run.
DIAG_KEYS = (
    "lm_loss",
    "jepa_loss",
    "view1_pairwise_cos",
    "view2_pairwise_cos",
    "view1_std",
    "view2_std",
    "jepa_retrieval_acc",
    "jepa_pairs",
    "stp_loss",
)


DIAG_LAST = 3


def run_diagnostics(metrics_path: Path, last: int = DIAG_LAST) -> dict[str, float] | None:
    """Mean of each diagnostic over the last ``last`` logged steps that have it (one step is noisy)."""
    text = read_text_or_gz(metrics_path)
    if text is None:
        return None
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # blank, or the half-written last line of a killed run
            continue
    out = {}
    for key in DIAG_KEYS:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))][-last:]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out or None


def collapse_table(rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """Markdown section: per config, the end-of-training JEPA diagnostics averaged over seeds.

    A JEPA loss near 0 with view pairwise cosine near 1 and retrieval near chance (1 / pairs in the
    batch) is a collapsed embedding; retrieval well above chance means view 1 still identifies its own
    next step among the batch's.
    """
    per_config: dict[str, list[dict[str, float]]] = {}
    for r in results:
        d = run_diagnostics(r[READ_FROM] / "metrics.jsonl")
        if d:
            per_config.setdefault(r["config"], []).append(d)
    logged = {k for ds in per_config.values() for d in ds for k in d}
    if not logged & {"jepa_loss", "stp_loss"}:
        return ""
    stp = "stp_loss" in logged  # a column only when some run trained with STP
    lines = [
        f"\n## Collapse diagnostics (mean of the last {DIAG_LAST} logged steps, then over seeds)\n",
        "| config | lm_loss | jepa_loss | view-1 pairwise cos | view-2 pairwise cos | view-1 spread | "
        "view-2 spread | retrieval | chance |" + (" stp_loss |" if stp else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if stp else ""),
    ]

    def mean(ds: list[dict[str, float]], key: str) -> str:
        vals = [d[key] for d in ds if key in d]
        return f"{sum(vals) / len(vals):.4g}" if vals else "—"

    for row in rows:
        ds = per_config.get(row["config"], [])
        pairs = [d["jepa_pairs"] for d in ds if d.get("jepa_pairs")]
        chance = f"{len(pairs) / sum(pairs):.3g}" if pairs else "—"
        lines.append(
            f"| {row['config']} | {mean(ds, 'lm_loss')} | {mean(ds, 'jepa_loss')} | "
            f"{mean(ds, 'view1_pairwise_cos')} | {mean(ds, 'view2_pairwise_cos')} | "
            f"{mean(ds, 'view1_std')} | {mean(ds, 'view2_std')} | {mean(ds, 'jepa_retrieval_acc')} | {chance} |"
            + (f" {mean(ds, 'stp_loss')} |" if stp else "")
        )
    lines.append("")
    lines.append(
        "Spread: each view's standard deviation over the micro-batch's pairs, averaged over hidden "
        "dimensions (0 when every pair has the same view). Retrieval: how often view 1 of a pair is "
        "closer to its own view 2 than to any other pair's in the micro-batch; chance = 1 / pairs per "
        "micro-batch. A falling JEPA loss with retrieval at chance is collapse."
    )
    return "\n".join(lines) + "\n"


def sources_note(results: list[dict[str, Any]], output_dir: Path) -> str:
    """Which configs' runs were read from directories other than the report's own (with
    `compare --report DIR OTHER...`), as paths relative to it; empty when all are its own."""
    elsewhere: dict[str, set[str]] = {}
    for r in results:
        grid = r[READ_FROM].parent.parent
        if grid.resolve() != output_dir.resolve():
            elsewhere.setdefault(os.path.relpath(grid, output_dir), set()).add(str(r["config"]))
    return "".join(
        f"\nRuns of {', '.join(sorted(names))} read from `{where}`.\n" for where, names in sorted(elsewhere.items())
    )


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed, shown as such in the table)."""
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def aggregate(results: list[dict[str, Any]], order: list[str] | None = None) -> list[dict[str, Any]]:
    """Per config: accuracy mean ± std over seeds, and the paired (same-seed) difference to the baseline.

    The baseline is the first config of the grid (put SFT first). Seeds share data and data order, so
    the per-seed difference cancels part of the seed noise that the two std's alone would show.
    """
    by_name: dict[str, dict[int, dict]] = {}
    for r in results:
        by_name.setdefault(r["config"], {})[int(r["seed"])] = r
    names = [n for n in (order or []) if n in by_name] + sorted(n for n in by_name if n not in (order or []))
    base = by_name[names[0]] if names else {}
    rows = []
    for name in names:
        runs = by_name[name]
        seeds = sorted(runs)
        accs = [float(runs[s]["accuracy"]) for s in seeds]
        mean, std = _mean_std(accs)
        common = [s for s in seeds if s in base]
        deltas = [float(runs[s]["accuracy"]) - float(base[s]["accuracy"]) for s in common]
        dmean, dstd = _mean_std(deltas) if deltas and name != names[0] else (None, None)
        rows.append(
            {
                "config": name,
                "n": len(seeds),
                "seeds": seeds,
                "accuracy": accs,
                "mean": mean,
                "std": std,
                "delta_vs_baseline": dmean,
                "delta_std": dstd,
                "baseline": names[0],
                "paired_seeds": common,
                "overrides": runs[seeds[0]].get("overrides", {}),
                "optimizer_steps": [(runs[s].get("train_summary") or {}).get("global_step") for s in seeds],
                "train_seconds": _mean_std([float(runs[s]["train_seconds"]) for s in seeds])[0],
                "eval_seconds": _mean_std([float(runs[s]["eval_seconds"]) for s in seeds])[0],
                "n_eval": runs[seeds[0]].get("n"),
            }
        )
    return rows


def _steps(steps: list[int | None]) -> str:
    """'820', '818–822' when the seeds differ, '—' when no run recorded its steps."""
    known = sorted({int(x) for x in steps if x is not None})
    if not known:
        return "—"
    return str(known[0]) if len(known) == 1 else f"{known[0]}–{known[-1]}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def format_table(rows: list[dict[str, Any]], warnings: list[str]) -> str:
    """Markdown table: accuracy in percent, mean ± sample std over seeds, paired Δ to the baseline."""
    base = rows[0]["config"] if rows else ""
    lines = [
        f"| config | overrides | accuracy % (mean ± std) | n seeds | per seed | Δ vs {base} (paired) | steps "
        "| train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "—"
        per = " / ".join(f"s{s}: {_pct(a)}" for s, a in zip(r["seeds"], r["accuracy"]))
        delta = (
            "—"
            if r["delta_vs_baseline"] is None
            else f"{100 * r['delta_vs_baseline']:+.2f} ± {100 * r['delta_std']:.2f} (n={len(r['paired_seeds'])})"
        )
        lines.append(
            f"| {r['config']} | {over} | {_pct(r['mean'])} ± {_pct(r['std'])} | {r['n']} | {per} | "
            f"{delta} | {_steps(r['optimizer_steps'])} | {r['train_seconds']:.1f} | {r['eval_seconds']:.1f} |"
        )
    n_eval = {r["n_eval"] for r in rows}
    lines.append("")
    lines.append(
        f"Accuracy on {', '.join(str(n) for n in sorted(x for x in n_eval if x is not None))} eval examples; "
        "std is the sample std over seeds (0 with one seed). Δ is the mean ± std over seeds of the "
        "same-seed difference (same data and data order). Steps: optimizer steps per run (a range when "
        "seeds differ); with packing, a JEPA run's extra tokens count against the token budget, so it "
        "can take more, smaller steps than SFT over the same epochs."
    )
    for w in warnings:
        lines.append(f"\n**Warning:** {w}")
    return "\n".join(lines) + "\n"


def also_protocols_table(rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """The cells' scores under the grid's `eval.also_protocols` (lm-eval's gsm8k), per config: mean ±
    std over the seeds that have one. Empty when no run was scored so."""
    names = sorted({p for r in results for p in (r.get("also_protocols") or {})})
    if not names:
        return ""
    lines = [
        "",
        "## Other protocols (eval.also_protocols; flexible-extract / strict-match %, mean ± std over seeds)",
        "",
        "| config | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in rows:
        cells = []
        for name in names:
            got = [
                r["also_protocols"][name]
                for r in results
                if r["config"] == row["config"] and name in (r.get("also_protocols") or {})
            ]
            if not got:
                cells.append("—")
                continue
            flex, flex_sd = _mean_std([g["accuracy"] for g in got])
            strict, strict_sd = _mean_std([g["accuracy_strict"] for g in got])
            cells.append(f"{_pct(flex)} ± {_pct(flex_sd)} / {_pct(strict)} ± {_pct(strict_sd)} (n={len(got)})")
        lines.append(f"| {row['config']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_compare(rows: list[dict[str, Any]], path: str | Path):
    """Bar per config (mean accuracy, std error bar) with each seed's accuracy as a dot; returns the Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 4.0))  # no pyplot: no global figure state
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    means = [100 * r["mean"] for r in rows]
    stds = [100 * r["std"] for r in rows]
    ax.bar(xs, means, yerr=stds, capsize=5, color="#4C72B0", alpha=0.8, ecolor="black", label="mean ± std")
    for x, r in zip(xs, rows):
        ax.scatter([x] * len(r["accuracy"]), [100 * a for a in r["accuracy"]], color="black", s=14, zorder=3)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{r['config']}\n(n={r['n']})" for r in rows], rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    # Two short lines: a one-line title was wider than a figure of two or three bars and got cut.
    ax.set_title("accuracy per config\nbars: mean ± std over seeds, dots: seeds", fontsize=10)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def build_report(
    output_dir: str | Path,
    order: list[str] | None = None,
    allow_protocol_mismatch: bool = False,
    also_from: Sequence[str | Path] = (),
) -> list[dict[str, Any]]:
    """Rebuild compare_table.md, compare_results.json and compare.png from the result.json files,
    plus per-problem paired stats of every config against the first from eval/predictions.jsonl.
    Runs scored under different evaluation protocols raise :class:`ProtocolMismatch` (see
    :func:`protocol_check`) unless ``allow_protocol_mismatch``. ``also_from``: other grid output dirs
    whose runs join the table, read in place (e.g. the baseline's, archived on another date); the
    report is written into ``output_dir`` and says which runs came from where."""
    out = Path(output_dir)
    results = collect_results(out, *also_from)
    if not results:
        raise FileNotFoundError(f"no */seed*/{RESULT} under {', '.join(map(str, [out, *also_from]))}")
    protocol_warnings = protocol_check(results, allow_protocol_mismatch)
    if order is None:
        order = grid_order(out) or None
    rows = aggregate(results, order)
    warnings = consistency_warnings(results) + protocol_warnings
    paired = paired_vs_baseline(rows, results)
    for row in rows:  # None for the baseline itself
        row["paired"] = paired.get(row["config"])
    table = (
        format_table(rows, warnings)
        + sources_note(results, out)
        + format_paired(paired, rows[0]["config"])
        + collapse_table(rows, results)
        + also_protocols_table(rows, results)
    )
    write_atomic(out / TABLE, table)
    write_atomic(
        out / RESULTS,
        json.dumps(
            {
                "configs": rows,
                "warnings": warnings,
                "paired_baseline": rows[0]["config"],
                "runs": [
                    {k: r[k] for k in ("config", "seed", "accuracy", "correct", "n", "train_seconds", "eval_seconds")}
                    | {"run_dir": os.path.relpath(r[READ_FROM], out)}
                    | ({SHARING: r[SHARING]} if SHARING in r else {})
                    for r in results
                ],
            },
            indent=1,
        ),
    )
    plot_compare(rows, out / PLOT)
    print(table, flush=True)
    log(f"wrote {out / TABLE}, {out / RESULTS}, {out / PLOT}")
    return rows
