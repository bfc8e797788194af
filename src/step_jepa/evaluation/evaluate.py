"""Evaluate a causal LM on GSM8K-style problems: generate, score, write the result files.

The pipeline, each layer usable alone:

* :mod:`step_jepa.data.answers`: :func:`extract_answer`, :func:`normalize_answer`, :func:`answers_match`
  turn free text into a comparable number (strict by default, ``lenient`` for base models);
* :mod:`step_jepa.evaluation.decode`: :func:`generate`, batched greedy decoding;
* this module: :func:`evaluate` scores records, writes ``predictions.jsonl`` and ``summary.json``.
  Every example is in the denominator: no answer and generation errors count as wrong.

Every summary.json carries a ``protocol``: what decides the score besides the model (dtype, batch
budget, CUDA graphs, max_new_tokens, extraction rule, prompt format, versions).
:func:`protocol_differences` says which of those differ between two runs; ``compare --report``
refuses to pair runs that differ (see docs/evaluate.md). The default is fp32 compute: measured on an
H100 (SmolLM2-135M SFT, GSM8K test), bf16 greedy outputs changed for ~1/3 of the problems when only
the batch budget changed, fp32 outputs did not.

:func:`add_cli` registers ``step-jepa eval``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from step_jepa.data.answers import answers_match, extract_answer
from step_jepa.evaluation.decode import GenResult, encode_prompts, timed_generate_ids
from step_jepa.models.environment import device_name, utc_timestamp, versions

# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------


def _question(record: dict) -> str:
    for m in record.get("messages", []):
        if m.get("role") == "user":
            return m["content"]
    return str(record.get("question", ""))


def build_prompts(records: Iterable[dict], system_prompt: str | None = None) -> list[list[dict]]:
    """Chat prompts (system + user) for records.

    ``system_prompt=None`` keeps each record's own system message: it is the prompt the model was
    trained with, and changing it measurably moves accuracy.  A string replaces it; ``""`` drops it
    (for templates or models that reject a system turn).
    """
    prompts = []
    for rec in records:
        own = [m for m in rec.get("messages", []) if m.get("role") == "system"]
        if system_prompt is None:
            system = own[0]["content"] if own else None
        else:
            system = system_prompt or None
        msgs = [{"role": "system", "content": system}] if system is not None else []
        msgs.append({"role": "user", "content": _question(rec)})
        prompts.append(msgs)
    return prompts


def evaluate(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict],
    *,
    out_dir: str | Path,
    max_new_tokens: int = 512,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    system_prompt: str | None = None,
    lenient: bool = False,
    progress: bool = True,
    model_name: str | None = None,
    cuda_graphs: bool | None = None,
    graph_window: int = 128,
) -> dict:
    """Generate for every record, score against ``record["answer"]``, write predictions and summary.

    Denominator policy: accuracy = correct / len(records).  An output without an extractable answer
    and an example whose generation raised are both wrong, never skipped, so a model cannot look
    better by failing more.  ``cuda_graphs=None``: on for a CUDA device, off elsewhere.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = build_prompts(records, system_prompt)
    run = timed_generate_ids(
        model,
        tokenizer,
        encode_prompts(tokenizer, prompts) if prompts else [],
        max_new_tokens=max_new_tokens,
        max_batch_tokens=max_batch_tokens,
        batch_size=batch_size,
        cuda_graphs=cuda_graphs,
        graph_window=graph_window,
        progress=progress,
    )
    gens, seconds, graphs, stats = run.results, run.seconds, run.cuda_graphs, run.stats
    max_batch_tokens, batch_size = run.max_batch_tokens, run.batch_size

    rows = [_score(rec, gen, lenient) for rec, gen in zip(records, gens)]
    write_predictions(out, rows)
    summary = _summarize(rows, seconds, model, max_new_tokens, lenient, model_name, batch_size, system_prompt)
    summary["max_batch_tokens"] = max_batch_tokens
    summary["cuda_graphs"] = graphs
    if graphs:
        summary["graph_window"] = graph_window
    summary["protocol"] = protocol(
        "step-jepa",
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        max_batch_tokens=max_batch_tokens,
        batch_size=batch_size,
        cuda_graphs=cuda_graphs,
        stats=stats,
        extraction="step-jepa-lenient" if lenient else "step-jepa-strict",
        prompt={
            "system_prompt": "record" if system_prompt is None else system_prompt,
            "chat_template": chat_template_id(tokenizer),
            "fewshot": 0,
        },
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# --------------------------------------------------------------------------------------------------------
# Protocol: what decides a score besides the model
# --------------------------------------------------------------------------------------------------------

# Fields that describe how the outputs are produced only; in fp32 they do not change a token
# (decoding is batch-invariant, and CUDA-graph and loop decoding agree: tests/evaluation), so two
# fp32 runs differing only in them are comparable. In bf16/fp16 they change outputs.
BATCH_FIELDS = ("max_batch_tokens", "batch_size", "cuda_graphs")


def chat_template_id(tokenizer: Any) -> str:
    """Which chat template renders the prompts: ``tokenizer:<sha256[:12]>`` of the template text, or
    ``plain`` for step-jepa's fallback (tokenizers without one)."""
    import hashlib

    from step_jepa.data.segment import chat_template_of

    own = getattr(tokenizer, "chat_template", None)
    text = chat_template_of(tokenizer)
    if not own or not isinstance(text, str):
        return "plain"
    return "tokenizer:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def protocol(
    name: str,
    model: Any,
    tokenizer: Any,
    *,
    max_new_tokens: int,
    max_batch_tokens: int | None,
    batch_size: int | None,
    cuda_graphs: bool | None,
    stats: list[dict],
    extraction: str,
    prompt: dict,
) -> dict:
    """The protocol block of summary.json. ``cuda_graphs``: what was asked (None = auto) and whether a
    graph was actually recorded (CUDA, an SDPA model without sliding windows)."""
    used = any(s.get("loop") == "static" and s.get("captures", 0) > 0 for s in stats)
    return {
        "name": name,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "max_new_tokens": max_new_tokens,
        "max_batch_tokens": max_batch_tokens,
        "batch_size": batch_size,
        "cuda_graphs": {"asked": "auto" if cuda_graphs is None else bool(cuda_graphs), "used": used},
        "extraction": extraction,
        "prompt": prompt,
        "versions": versions(),
    }


def protocol_differences(a: dict | None, b: dict | None) -> tuple[list[str], list[str]]:
    """(fields that make two runs' scores incomparable, version fields that differ) of two protocols.

    ``None`` (a result written before protocols were recorded) differs from any protocol as
    ``["protocol (unknown)"]``; two unknowns are not known to differ. The batch fields count only when
    either run decoded in a dtype other than float32 (see :data:`BATCH_FIELDS`); the budget's
    ``cuda_graphs`` entry compares what was used, not what was asked.
    """
    if a is None and b is None:
        return [], []
    if a is None or b is None:
        return ["protocol (unknown: written before step-jepa recorded it)"], []
    skip = {"versions"}
    if a.get("dtype") == "float32" and b.get("dtype") == "float32":
        skip |= set(BATCH_FIELDS)
    diff = []
    for key in sorted((set(a) | set(b)) - skip):
        va, vb = a.get(key), b.get(key)
        if key == "cuda_graphs":
            va, vb = (v.get("used") if isinstance(v, dict) else v for v in (va, vb))
        if isinstance(va, dict) and isinstance(vb, dict):
            diff += [f"{key}.{k}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
        elif va != vb:
            diff.append(key)
    va, vb = a.get("versions") or {}, b.get("versions") or {}
    versions = [f"versions.{k}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    return diff, versions


def _score(record: dict, gen: GenResult, lenient: bool) -> dict:
    extracted = None if gen.error else extract_answer(gen.text, lenient=lenient)
    gold = str(record.get("answer", ""))
    return {
        "id": record.get("id"),
        "question": _question(record),
        "output": gen.text,
        "extracted": extracted,
        "gold": gold,
        "correct": bool(gen.error is None and answers_match(extracted, gold)),
        "tokens": gen.n_tokens,
        "error": gen.error,
    }


def write_predictions(out: Path, rows: list[dict]) -> None:
    """predictions.jsonl: one scored row per example, in input order."""
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_fields(rows: list[dict], seconds: float, model: Any, model_name: str | None) -> dict:
    """The summary fields every protocol shares: errors, output length and speed, which model on which
    device and dtype. The versions live in the protocol block, once."""
    n = len(rows)
    tokens = sum(r["tokens"] for r in rows)
    param = next(model.parameters())
    return {
        "errors": sum(r["error"] is not None for r in rows),
        "mean_output_tokens": tokens / n if n else 0.0,
        "generation_seconds": round(seconds, 3),
        "generated_tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "model": model_name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "device": str(param.device),
        "device_name": device_name(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "finished_utc": utc_timestamp(),
    }


def _summarize(
    rows: list[dict],
    seconds: float,
    model: Any,
    max_new_tokens: int,
    lenient: bool,
    model_name: str | None,
    batch_size: int | None,
    system_prompt: str | None,
) -> dict:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    no_answer = sum(r["extracted"] is None and r["error"] is None for r in rows)
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "no_answer": no_answer,
        "no_answer_rate": no_answer / n if n else 0.0,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "lenient": lenient,
        "system_prompt": "record" if system_prompt is None else system_prompt,
        **run_fields(rows, seconds, model, model_name),
    }


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------

# fp32 is the default of `eval` and `compare`: batch-invariant greedy outputs. bf16/fp16 are faster, and
# their outputs depend on the batch budget. "auto" = bf16 on a CUDA GPU, the checkpoint dtype on CPU.
EVAL_DTYPES = {"auto": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


DEFAULT_EVAL_DTYPE = "fp32"
