"""Evaluate a causal LM on GSM8K-style problems: generate, score, write the result files.

The pipeline, each layer usable alone:

* :mod:`step_jepa.data.answers`: :func:`extract_answer`, :func:`normalize_answer`, :func:`answers_match`
  turn free text into a comparable number (strict by default, ``lenient`` for base models);
* :mod:`step_jepa.evaluation.decode`: :func:`generate`, batched greedy decoding;
* this module: :func:`evaluate` scores records, writes ``predictions.jsonl`` and ``summary.json``.
  Every example is in the denominator: no answer and generation errors count as wrong.

:func:`add_cli` registers ``step-jepa eval``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from step_jepa.data.answers import answers_match, extract_answer
from step_jepa.evaluation.decode import GenResult, generate

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


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from step_jepa import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "step_jepa": __version__}


def evaluate(model: Any, tokenizer: Any, records: Sequence[dict], *, out_dir: str | Path,
             max_new_tokens: int = 512, batch_size: int | None = None, max_batch_tokens: int | None = None,
             system_prompt: str | None = None, lenient: bool = False, progress: bool = True,
             model_name: str | None = None, cuda_graphs: bool = False, graph_window: int = 128) -> dict:
    """Generate for every record, score against ``record["answer"]``, write predictions and summary.

    Denominator policy: accuracy = correct / len(records).  An output without an extractable answer
    and an example whose generation raised are both wrong, never skipped, so a model cannot look
    better by failing more.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = build_prompts(records, system_prompt)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    max_batch_tokens=max_batch_tokens, progress=progress, cuda_graphs=cuda_graphs,
                    graph_window=graph_window)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    rows = [_score(rec, gen, lenient) for rec, gen in zip(records, gens)]
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = _summarize(rows, seconds, model, max_new_tokens, lenient, model_name, batch_size, system_prompt)
    summary["cuda_graphs"] = cuda_graphs
    if cuda_graphs:
        summary["graph_window"] = graph_window
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _score(record: dict, gen: GenResult, lenient: bool) -> dict:
    extracted = None if gen.error else extract_answer(gen.text, lenient=lenient)
    gold = str(record.get("answer", ""))
    return {"id": record.get("id"), "question": _question(record), "output": gen.text, "extracted": extracted,
            "gold": gold, "correct": bool(gen.error is None and answers_match(extracted, gold)),
            "tokens": gen.n_tokens, "error": gen.error}


def _summarize(rows: list[dict], seconds: float, model: Any, max_new_tokens: int, lenient: bool,
               model_name: str | None, batch_size: int | None, system_prompt: str | None) -> dict:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    no_answer = sum(r["extracted"] is None and r["error"] is None for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    param = next(model.parameters())
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "no_answer": no_answer,
        "no_answer_rate": no_answer / n if n else 0.0,
        "errors": sum(r["error"] is not None for r in rows),
        "mean_output_tokens": tokens / n if n else 0.0,
        "generation_seconds": round(seconds, 3),
        "generated_tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "lenient": lenient,
        "system_prompt": "record" if system_prompt is None else system_prompt,
        "model": model_name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "versions": _versions(),
    }


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------

EVAL_DTYPES = {"auto": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
















