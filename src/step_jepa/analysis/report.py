"""The report of ``step-jepa compare``: the files of a grid's output directory, read back into a
table (accuracy mean ± std, paired Δ, McNemar and bootstrap against the baseline, collapse
diagnostics) and a bar chart.

:func:`build_report` rebuilds ``compare_table.md``, ``compare_results.json`` and ``compare.png``
from the ``<name>/seed<s>/result.json`` files alone, so it also runs on a finished or partial grid
(``step-jepa compare --report DIR``). The run-directory layout (:func:`run_dir`, the file names)
lives here, below :mod:`step_jepa.analysis.compare`, which writes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from step_jepa.analysis.stats import alignment_note, paired_stats
from step_jepa.evaluation.evaluate import protocol_differences

RESULT = "result.json"


TABLE = "compare_table.md"


RESULTS = "compare_results.json"


PLOT = "compare.png"


GRID_COPY = "compare_grid.json"
# The key collect_results adds to each result it reads: the run directory it came from (a Path).
READ_FROM = "_read_from"


def grid_order(output_dir: str | Path) -> list[str]:
    """The configs of the grid that made `output_dir`, in the grid file's order ([] without its copy)."""
    copy = Path(output_dir) / GRID_COPY
    return [str(n) for n in json.loads(copy.read_text()).get("configs", {})] if copy.exists() else []


PREDICTIONS = "predictions.jsonl"  # written by evaluate.evaluate into <run>/eval/


# Per-problem correctness alone ({"id", "correct"} per line), read when a run has no predictions.jsonl:
# committed result directories keep this (gzipped) instead of the full model outputs.
CORRECT = "correct.jsonl"
CELL_LOG = "compare.log"  # <run>/compare.log: stdout and stderr of the run's process under `compare --jobs`


def log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def run_dir(output_dir: Path, name: str, seed: int) -> Path:
    return Path(output_dir) / name / f"seed{seed}"


def fingerprint(obj: Any) -> str:
    """Short stable hash of JSON-able settings, to notice a grid edited between resumed invocations."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so a crash never leaves a truncated result/table behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_text_or_gz(path: Path) -> str | None:
    """The text of ``path``, or of ``path.gz`` when only the gzipped copy exists (committed result
    dirs keep predictions and metrics gzipped); None when neither does."""
    import gzip

    if path.exists():
        return path.read_text(encoding="utf-8")
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        with gzip.open(gz, "rt", encoding="utf-8") as f:
            return f.read()
    return None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of each non-blank line of JSON-lines text. Split on "\\n" only:
    predictions.jsonl is written with ensure_ascii=False, so a model output may hold U+2028 and the
    other characters at which str.splitlines() also breaks lines."""
    return ((k, line) for k, line in enumerate(text.split("\n"), 1) if line.strip())


def load_correct(path: str | Path) -> dict[str, bool]:
    """{problem id → correct} of one predictions.jsonl or correct.jsonl (either may be gzipped). A
    missing id falls back to the line number (every run of a grid evaluates the same records in the same order); a duplicate id is an error,
    because aligning by id would silently pair the wrong problems."""
    out: dict[str, bool] = {}
    text = read_text_or_gz(Path(path))
    if text is None:
        raise FileNotFoundError(path)
    for k, line in jsonl_lines(text):
        row = json.loads(line)
        key = str(row["id"]) if row.get("id") is not None else f"line{k - 1}"
        if key in out:
            raise ValueError(f"{path}: duplicate problem id {key!r}")
        out[key] = bool(row["correct"])
    return out


def load_run_predictions(
    results: list[dict[str, Any]],
) -> tuple[dict[str, dict[int, dict[str, bool]]], dict[str, str]]:
    """config → seed → {id → correct} for every finished run that has <run>/eval/predictions.jsonl
    (else <run>/eval/correct.jsonl; either may be gzipped), and config → error for configs with an
    unreadable one (reported as n/a, not a failed report)."""
    out: dict[str, dict[int, dict[str, bool]]] = {}
    errors: dict[str, str] = {}
    for r in results:
        eval_dir = r[READ_FROM] / "eval"
        try:
            try:
                correct = load_correct(eval_dir / PREDICTIONS)
            except FileNotFoundError:
                correct = load_correct(eval_dir / CORRECT)
        except FileNotFoundError:  # no per-problem file at all: an older run
            continue
        except (ValueError, KeyError) as e:  # KeyError: a row without "correct"
            errors[r["config"]] = f"{type(e).__name__}: {e}"
            continue
        out.setdefault(r["config"], {})[int(r["seed"])] = correct
    return out, errors


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
        "| config | Δ points [95% CI] | McNemar p | b / c | seeds × problems | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, st in paired.items():
        if st.get("status") != "ok":
            lines.append(f"| {name} | {st['status']} | — | — | — | |")
            continue
        lo, hi = st["ci95_points"]
        lines.append(
            f"| {name} | {st['delta_points']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {_fmt_p(st['mcnemar_p'])} "
            f"({st['mcnemar']['method']}) | {st['b']} / {st['c']} | {st['n_seeds']} × {st['n_problems']} | "
            f"{alignment_note(st)} |"
        )
    lines.append("")
    lines.append(
        f"Δ: candidate − {baseline} accuracy in points, averaged over the paired seeds. CI: percentile "
        "bootstrap over problems (one resampled problem set for all seeds). McNemar pooled over seeds: "
        f"b = {baseline} right & candidate wrong, c = the reverse; exact binomial test."
    )
    return "\n".join(lines) + "\n"


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


def collect_results(*dirs: str | Path) -> list[dict[str, Any]]:
    """Every finished run under the grid output dirs (<name>/seed<s>/result.json), each with the run
    directory it was read from under :data:`READ_FROM`. One cell (config, seed) in two dirs is an
    error: a table pairs one training of each cell, and which one would be an accident of order."""
    out: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], Path] = {}
    for d in dirs:
        for path in sorted(Path(d).glob(f"*/seed*/{RESULT}")):
            result = json.loads(path.read_text())
            cell = (str(result["config"]), int(result["seed"]))
            if cell in seen:
                raise ValueError(
                    f"{cell[0]} seed {cell[1]} is in both {seen[cell]} and {path.parent}; "
                    "a table pairs one training of each cell: leave one of the directories out"
                )
            seen[cell] = result[READ_FROM] = path.parent
            out.append(result)
    return out


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
                "train_seconds": _mean_std([float(runs[s]["train_seconds"]) for s in seeds])[0],
                "eval_seconds": _mean_std([float(runs[s]["eval_seconds"]) for s in seeds])[0],
                "n_eval": runs[seeds[0]].get("n"),
            }
        )
    return rows


def _unset(v: Any) -> Any:
    """One spelling for "not set": versions of the config wrote False, None or "" for it."""
    return None if v is None or v is False or v == "" or v == [] else v


def _shared_keys(runs: list[dict[str, Any]]) -> tuple[list[dict], set[str], set[str]]:
    """(configs, keys every run records, keys only some record), without each run's overrides."""
    overridden = {k for r in runs for k in (r.get("overrides") or {})} | {"output_dir"}
    cfgs = [r.get("train_config") or {} for r in runs]
    every = set.intersection(*(set(c) for c in cfgs)) - overridden if cfgs else set()
    some = {k for c in cfgs for k in c} - overridden - every
    return cfgs, every, some


def differing_settings(runs: list[dict[str, Any]]) -> list[str]:
    """The training settings whose values differ between these runs, leaving out each run's own
    overrides (the JEPA options a grid varies on purpose): what makes them incomparable, by name.
    Only settings every run records count (see `version_only_settings`)."""
    cfgs, every, _ = _shared_keys(runs)
    return [k for k in sorted(every) if len({json.dumps(_unset(c[k]), sort_keys=True, default=str) for c in cfgs}) > 1]


def version_only_settings(runs: list[dict[str, Any]]) -> list[str]:
    """Settings only some runs record: runs made by different versions of step-jepa, where a newer
    version added (or dropped) an option. They cannot differ in effect unless a value is set."""
    cfgs, _, some = _shared_keys(runs)
    return sorted(some)


def consistency_warnings(results: list[dict[str, Any]]) -> list[str]:
    """Runs of one seed whose shared (non-JEPA) settings or eval settings differ: not comparable.
    Seeds with the same finding share one line (a grid read from two dates would repeat it per seed)."""
    per_seed: dict[str, list[int]] = {}
    by_seed: dict[int, dict[str, set]] = {}
    for r in results:
        d = by_seed.setdefault(int(r["seed"]), {"train": set(), "eval": set()})
        d["train"].add(r.get("shared_fingerprint"))
        d["eval"].add(fingerprint(r.get("eval")))
    for s, d in sorted(by_seed.items()):
        if len(d["train"]) > 1:
            runs = [r for r in results if int(r["seed"]) == s]
            per_seed.setdefault(_training_difference(runs), []).append(s)
        if len(d["eval"]) > 1:
            per_seed.setdefault("runs were evaluated with different settings", []).append(s)
    warnings = [f"{_seeds_label(seeds)}: {text}" for text, seeds in per_seed.items()]
    counts: dict[str, int] = {}
    for r in results:
        counts[r["config"]] = counts.get(r["config"], 0) + 1
    if len(set(counts.values())) > 1:
        warnings.append(f"unequal numbers of seeds per config: {counts}")
    return warnings + device_warnings(results)


def _training_difference(runs: list[dict[str, Any]]) -> str:
    """What differs between one seed's runs whose shared fingerprints differ: named settings (not
    comparable) or only settings that a newer step-jepa records (comparable, from other versions)."""
    named, extra = differing_settings(runs), version_only_settings(runs)
    if named or not extra:
        return f"runs differ in non-JEPA training settings ({', '.join(named) or 'see result.json'}); they are not comparable"
    return (
        "runs come from different step-jepa versions; every setting all "
        f"of them record is equal (recorded by only some: {', '.join(extra)})"
    )


def _seeds_label(seeds: list[int]) -> str:
    """'seed 1' or 'seeds 0, 1, 2'."""
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def device_warnings(results: list[dict[str, Any]]) -> list[str]:
    """Runs of one table that trained or were scored on different devices (by the name their summaries
    record; older runs record none): their seconds are not comparable, and kernels differ between
    cards, so a paired difference may hold a card's effect too."""
    configs_on: dict[str, set[str]] = {}
    for r in results:
        for part in ("train_summary", "eval_summary"):
            name = (r.get(part) or {}).get("device_name")
            if name:
                configs_on.setdefault(name, set()).add(r["config"])
    if len(configs_on) < 2:
        return []
    where = "; ".join(f"{name} ({', '.join(sorted(cfgs))})" for name, cfgs in sorted(configs_on.items()))
    return [f"runs ran on different devices: {where}; their times are not comparable"]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def format_table(rows: list[dict[str, Any]], warnings: list[str]) -> str:
    """Markdown table: accuracy in percent, mean ± sample std over seeds, paired Δ to the baseline."""
    base = rows[0]["config"] if rows else ""
    lines = [
        f"| config | overrides | accuracy % (mean ± std) | n seeds | per seed | Δ vs {base} (paired) | train s | eval s |",
        "|---|---|---|---|---|---|---|---|",
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
            f"{delta} | {r['train_seconds']:.1f} | {r['eval_seconds']:.1f} |"
        )
    n_eval = {r["n_eval"] for r in rows}
    lines.append("")
    lines.append(
        f"Accuracy on {', '.join(str(n) for n in sorted(x for x in n_eval if x is not None))} eval examples; "
        "std is the sample std over seeds (0 with one seed). Δ is the mean ± std over seeds of the "
        "same-seed difference (same data and data order)."
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


class ProtocolMismatch(ValueError):
    """Runs scored under different evaluation protocols (summary.json ``protocol``) in one report."""


def run_protocol(result: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation protocol a result.json was scored under; None for runs from before it was recorded."""
    return (result.get("eval_summary") or {}).get("protocol")


def _recorded(result: dict[str, Any]) -> str:
    """For a run without a protocol block: what its summary.json does record of the protocol, so that
    a reader can tell an fp32 run of the days before the block from a bf16 one."""
    if run_protocol(result) is not None:
        return ""
    summary = result.get("eval_summary") or {}
    known = [f"{k} {summary[k]}" for k in ("dtype", "max_new_tokens", "cuda_graphs") if summary.get(k) is not None]
    return f" [{', '.join(known)}]" if known else ""


def protocol_check(results: list[dict[str, Any]], allow_mismatch: bool = False) -> list[str]:
    """Refuse to compare runs scored under different protocols; return the warnings to print.

    Runs are grouped by protocol, each run joining the first group (in config, seed order) whose
    first run it does not differ from; every later group is then named against the first. A field that
    changes the score (dtype, max_new_tokens, extraction, prompt, ...; the batch budget only outside
    fp32) raises :class:`ProtocolMismatch` naming it, as does a run without a recorded protocol next
    to one with (an "unknown protocol"). ``allow_mismatch`` turns both into warnings. Differing
    versions (torch, transformers, step-jepa) only warn.
    """
    ordered = sorted(results, key=lambda r: (str(r["config"]), int(r["seed"])))
    groups: list[list[dict[str, Any]]] = []
    version_fields: set[str] = set()
    for r in ordered:
        for g in groups:
            diff, versions = protocol_differences(run_protocol(g[0]), run_protocol(r))
            if not diff:
                version_fields.update(versions)
                g.append(r)
                break
        else:
            groups.append([r])
    warnings = []
    if version_fields:
        warnings.append(
            f"runs were evaluated with different versions ({', '.join(sorted(version_fields))}); "
            "the protocol is otherwise the same"
        )
    if len(groups) < 2:
        return warnings
    first = groups[0]
    problems = [
        f"{_name_runs(g)} vs {_name_runs(first)}: "
        + ", ".join(protocol_differences(run_protocol(first[0]), run_protocol(g[0]))[0])
        for g in groups[1:]
    ]
    unknown = any(run_protocol(g[0]) is None for g in groups)
    msg = (
        "runs were scored under different evaluation protocols, so their accuracies are not comparable: "
        + "; ".join(problems)
        + (
            ". Runs without a recorded protocol were evaluated before step-jepa recorded it (bf16 by "
            "default before 2026-12-06, whose outputs depend on the batch budget; the fields their "
            "summaries do record are named in brackets): re-evaluate them"
            if unknown
            else ""
        )
    )
    if not allow_mismatch:
        raise ProtocolMismatch(msg + ". Pass --allow_protocol_mismatch to report them anyway.")
    return [*warnings, msg + ". Reported anyway (--allow_protocol_mismatch)."]


def _name_runs(runs: list[dict[str, Any]]) -> str:
    """'jepa/seed0-3, sft/seed0,2 [dtype float32]': a group's runs by config, seeds compacted, with
    what a run without a protocol block records (runs of one config that record alike share a name)."""
    seeds: dict[tuple[str, str], list[int]] = {}
    for r in runs:
        seeds.setdefault((str(r["config"]), _recorded(r)), []).append(int(r["seed"]))
    return ", ".join(f"{config}/seed{_seed_span(sorted(s))}{rec}" for (config, rec), s in seeds.items())


def _seed_span(seeds: list[int]) -> str:
    """'0-4' for a run of consecutive seeds, else '0,2,5'."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


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
