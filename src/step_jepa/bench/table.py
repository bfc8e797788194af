"""The output of ``step-jepa bench``: the results table (plain or Markdown) and the environment line."""

from __future__ import annotations

COLUMNS = [
    ("variant", "variant"),
    ("ms_median", "ms/step"),
    ("nonpad_tokens_per_s", "non-pad tok/s"),
    ("model_tflops_per_s", "model TFLOP/s"),
    ("mfu", "MFU %"),
    ("time_x_sft", "time ×SFT"),
    ("time_x_sft_rounds", "×SFT by round"),
    ("time_x_sft_range", "×SFT range"),
    ("time_x_hf", "time ×HF"),
    ("peak_mib", "peak MiB"),
    ("mem_x_sft", "peak ×SFT"),
    ("delta_peak_mib", "Δpeak MiB"),
    ("delta_mem_x_sft", "Δpeak ×SFT"),
    ("layout_tokens_per_step", "layout tok/step"),
    ("rows_per_step", "rows"),
]


def _fmt(key: str, v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if key == "time_x_sft_range":
        return f"{v[0]:.3f}–{v[1]:.3f}"
    if key in ("time_x_sft", "time_x_sft_rounds", "time_x_hf", "mem_x_sft", "delta_mem_x_sft"):
        return f"{v:.3f}"
    if key == "mfu":
        return f"{100 * v:.1f}"
    if key == "model_tflops_per_s":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if key == "ms_median":
        return f"{v:.2f}" if v < 100 else f"{v:.1f}"
    if key in ("peak_mib", "delta_peak_mib"):
        return f"{v:.1f}"
    if key == "rows_per_step":
        return f"{v:.1f}"
    return f"{v:.0f}"


def format_env(result: dict) -> str:
    e = result["env"]
    return "\n".join(
        [
            f"torch {e['torch']} | transformers {e['transformers']} | python {e['python']} | {e['device']}: {e['device_name']}"
            + (f" | {e['started_utc']}" if "started_utc" in e else ""),
            f"model: {e['model']} ({e['params_m']}M params) | attn {e['attn']} | {e['dtype']}",
            f"data: {e['data']} | {e['batches']} batches × {e['examples_per_batch']} examples, "
            f"{e['mean_example_tokens']} tokens/example, {e['pairs_valid_frac']:.0%} with a valid pair",
            f"MFU: model FLOPs of the step's layout (step_jepa/flops.py) / step time / matmul peak "
            f"{e.get('matmul_peak_tflops', 'n/a')} TFLOP/s measured here ({e.get('matmul_peak_shape', '')})",
            f"memory: {result['memory_note']}",
        ]
    )


def format_table(result: dict, markdown: bool = False) -> str:
    head = [h for _, h in COLUMNS]
    cells = [[_fmt(k, r[k]) for k, _ in COLUMNS] for r in result["rows"]]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(s.ljust(w[i]) if i == 0 else s.rjust(w[i]) for i, s in enumerate(row))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * x for x in w])] + [fmt(c) for c in cells])
