"""lm-evaluation-harness's ``gsm8k`` task, reimplemented on step-jepa's decoder: numbers comparable to
published lm-eval GSM8K scores, from local data files.

Read from lm_eval 0.4.13 (``lm_eval/tasks/gsm8k/gsm8k.yaml``, ``api/task.py``, ``api/samplers.py``,
``api/utils.py``, ``filters/extraction.py``, ``api/metrics.py``, ``models/huggingface.py``):

* prompt: ``doc_to_text: "Question: {{question}}\\nAnswer:"``, target ``{{answer}}`` (the full GSM8K
  solution ending ``#### N``), 5-shot from the train split; target delimiter ``" "``, few-shot
  delimiter ``"\\n\\n"``, no description;
* few-shot choice: the default sampler, ``random.Random(1234)`` (``fewshot_random_seed``) created
  once, then ``rnd.sample(train_docs, 5)`` for each test doc in order (the few-shot split is not the
  test split, so nothing is excluded): test doc *k* gets the *k*-th draw, so ``--limit`` keeps them;
* generation: greedy, ``until: ["Question:", "</s>", "<|im_end|>"]`` plus the tokenizer's eos,
  ``max_gen_toks`` 256 (the HF model's default), the output decoded without special tokens and cut
  at the first occurrence of each stop string in turn;
* tokenization: the tokenizer's default special tokens (``add_special_tokens`` unset) unless the text
  already starts with the BOS token;
* chat variant (``--apply_chat_template``): the system turn is ``--system_instruction`` when given (else
  none: the template may insert its own), the few-shot examples are user/assistant turns
  (``fewshot_as_multiturn``, the default with a chat template), then the question as a user turn and
  the generation prompt;
* filters: ``strict-match`` = regex ``#### (\\-?[0-9\\.\\,]+)``, first match, else ``[invalid]``;
  ``flexible-extract`` = regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match, its first non-empty group;
* metric: ``exact_match`` after removing ``,``, ``$``, ``(?s).*#### `` and a final ``.`` from both
  the filtered answer and the target, case-insensitively.

The step-jepa decoder stops on tokens, not strings: it generates until a stop *token* (eos, or a token
spelling one of the stop strings) or 256 tokens and then cuts the text at the stop strings, which
gives the text lm-eval's string stopping gives (a base model keeps writing the next "Question:" until
256 tokens: that costs time, not a different answer).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TASKS = {"lm-eval-gsm8k": False, "lm-eval-gsm8k-chat": True}  # protocol name -> apply_chat_template

NUM_FEWSHOT = 5
FEWSHOT_SEED = 1234  # lm_eval's default fewshot_random_seed
MAX_GEN_TOKS = 256  # lm_eval HFLM.max_gen_toks default; gsm8k.yaml sets none
UNTIL = ("Question:", "</s>", "<|im_end|>")
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
STRICT_REGEX = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE_REGEX = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
FALLBACK = "[invalid]"
IGNORE_REGEXES = (",", "\\$", "(?s).*#### ", "\\.$")
FILTERS = ("strict-match", "flexible-extract")


# --------------------------------------------------------------------------------------------------------
# Documents and prompts
# --------------------------------------------------------------------------------------------------------


def load_docs(path: str | Path) -> list[dict]:
    """Raw GSM8K rows ``{"question", "answer"}`` (the answer with its solution and ``#### N``)."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if (
                not isinstance(row.get("question"), str)
                or not isinstance(row.get("answer"), str)
                or "####" not in row["answer"]
            ):
                raise ValueError(
                    f"{path}:{n}: not a raw GSM8K row ({{question, answer with '#### N'}}); "
                    "lm-eval's gsm8k needs the original question and answer text"
                )
            docs.append({"question": row["question"], "answer": row["answer"]})
    return docs


def doc_to_text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def fewshot_examples(
    n_docs: int, fewshot_docs: Sequence[dict], num_fewshot: int = NUM_FEWSHOT, seed: int = FEWSHOT_SEED
) -> list[list[dict]]:
    """The few-shot docs of test docs 0..n_docs-1: one ``Random(seed)``, one ``sample`` per doc, in order."""
    rnd = random.Random(seed)
    pool = list(fewshot_docs)
    return [rnd.sample(pool, num_fewshot) if num_fewshot else [] for _ in range(n_docs)]


def build_context(
    doc: dict, shots: Sequence[dict], *, chat_template: Any = None, system_instruction: str | None = None
) -> str:
    """lm-eval's ``fewshot_context`` for gsm8k: plain text, or (``chat_template``: a function rendering
    a message list with the generation prompt) multi-turn chat."""
    if chat_template is None:
        text = "".join(doc_to_text(s) + TARGET_DELIMITER + doc_to_target(s) + FEWSHOT_DELIMITER for s in shots)
        text = (system_instruction or "") + text  # lm-eval joins a plain-text system turn without a delimiter
        return text + doc_to_text(doc)
    msgs = [{"role": "system", "content": system_instruction}] if system_instruction else []
    for s in shots:
        msgs += [{"role": "user", "content": doc_to_text(s)}, {"role": "assistant", "content": doc_to_target(s)}]
    msgs.append({"role": "user", "content": doc_to_text(doc)})
    return chat_template(msgs)


def hf_chat_template(tokenizer: Any):
    """lm-eval's HFLM.apply_chat_template: the tokenizer's own template, generation prompt on; a
    template that rejects the system role is retried without it."""
    import jinja2

    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("lm-eval-gsm8k-chat needs a tokenizer with a chat template")

    def render(msgs: list[dict]) -> str:
        kw = {"tokenize": False, "add_generation_prompt": True, "continue_final_message": False}
        try:
            return tokenizer.apply_chat_template(msgs, **kw)
        except jinja2.exceptions.TemplateError:
            return tokenizer.apply_chat_template([m for m in msgs if m["role"] != "system"], **kw)

    return render


def encode(tokenizer: Any, text: str) -> list[int]:
    """lm-eval's causal-LM encoding: default special tokens, none when the text starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    kw = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
    return list(tokenizer(text, **kw)["input_ids"])


def stop_strings(tokenizer: Any) -> list[str]:
    """``until`` plus the eos token's text (lm_eval's ``handle_stop_sequences``)."""
    until = list(UNTIL)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is not None:
        eos = tokenizer.decode(eos_id, skip_special_tokens=False)
        if eos not in until:
            until.append(eos)
    return until


def postprocess(text: str, until: Sequence[str]) -> str:
    """lm_eval's ``postprocess_generated_text``: cut at each stop string in turn."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


# --------------------------------------------------------------------------------------------------------
# Filters and metric
# --------------------------------------------------------------------------------------------------------


def regex_filter(resp: str, pattern: str, group_select: int = 0, fallback: str = FALLBACK) -> str:
    """lm_eval's ``RegexFilter`` on one response."""
    if not isinstance(resp, str):
        resp = ""
    found = re.findall(pattern, resp)
    if not found:
        return fallback
    match = found[group_select]
    if isinstance(match, tuple):  # several groups: the first non-empty one, as lm_eval's filter takes
        groups = [m for m in match if m]
        match = groups[0] if groups else fallback
    return str(match).strip()


def strict_match(resp: str) -> str:
    return regex_filter(resp, STRICT_REGEX)


def flexible_extract(resp: str) -> str:
    return regex_filter(resp, FLEXIBLE_REGEX, group_select=-1)


def exact_match(prediction: str, reference: str) -> bool:
    """lm_eval's ``exact_match`` with gsm8k's ``regexes_to_ignore`` and ``ignore_case``."""
    for pat in IGNORE_REGEXES:
        prediction, reference = re.sub(pat, "", prediction), re.sub(pat, "", reference)
    return prediction.lower() == reference.lower()


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------


def evaluate_lm_eval(
    model: Any,
    tokenizer: Any,
    docs: Sequence[dict],
    fewshot_docs: Sequence[dict],
    *,
    out_dir: str | Path,
    task: str = "lm-eval-gsm8k",
    system_instruction: str | None = None,
    max_new_tokens: int = MAX_GEN_TOKS,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
    cuda_graphs: bool | None = None,
    graph_window: int = 128,
    fewshot_seed: int = FEWSHOT_SEED,
    fewshot_file: str | None = None,
) -> dict:
    """Score ``docs`` (raw GSM8K test rows) the way ``lm_eval --tasks gsm8k`` does; write
    predictions.jsonl (one row per doc: prompt, output, both filtered answers) and summary.json, whose
    ``accuracy`` is flexible-extract's exact match and ``accuracy_strict`` strict-match's."""

    from step_jepa.evaluation.decode import stop_token_ids, timed_generate_ids
    from step_jepa.evaluation.evaluate import chat_template_id, protocol, run_fields, write_predictions

    if task not in TASKS:
        raise ValueError(f"unknown lm-eval task {task!r} (known: {', '.join(TASKS)})")
    chat = TASKS[task]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = hf_chat_template(tokenizer) if chat else None
    shots = fewshot_examples(len(docs), fewshot_docs, NUM_FEWSHOT, fewshot_seed)
    contexts = [
        build_context(d, s, chat_template=template, system_instruction=system_instruction) for d, s in zip(docs, shots)
    ]
    seqs = [encode(tokenizer, c) for c in contexts]
    until = stop_strings(tokenizer)
    run = timed_generate_ids(
        model,
        tokenizer,
        seqs,
        max_new_tokens=max_new_tokens,
        max_batch_tokens=max_batch_tokens,
        batch_size=batch_size,
        cuda_graphs=cuda_graphs,
        graph_window=graph_window,
        progress=progress,
        stop_ids=stop_token_ids(model, tokenizer, until),
    )
    gens, seconds, graphs, stats = run.results, run.seconds, run.cuda_graphs, run.stats
    max_batch_tokens, batch_size = run.max_batch_tokens, run.batch_size

    rows = []
    for k, (doc, ctx, gen) in enumerate(zip(docs, contexts, gens)):
        resp = postprocess(gen.text, until)
        target = doc_to_target(doc)
        strict, flexible = strict_match(resp), flexible_extract(resp)
        rows.append(
            {
                "id": doc.get("id", k),
                "doc_id": k,
                "question": doc["question"],
                "prompt": ctx,
                "output": resp,
                "gold": target,
                "strict": strict,
                "flexible": flexible,
                "correct_strict": exact_match(strict, target),
                "correct": exact_match(flexible, target),
                "tokens": gen.n_tokens,
                "error": gen.error,
            }
        )
    write_predictions(out, rows)
    n = len(rows)
    summary = {
        "accuracy": sum(r["correct"] for r in rows) / n if n else 0.0,
        "accuracy_strict": sum(r["correct_strict"] for r in rows) / n if n else 0.0,
        "n": n,
        "correct": sum(r["correct"] for r in rows),
        "correct_strict": sum(r["correct_strict"] for r in rows),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "max_batch_tokens": max_batch_tokens,
        "cuda_graphs": graphs,
        **run_fields(rows, seconds, model, model_name),
    }
    summary["metrics"] = {
        "exact_match,strict-match": summary["accuracy_strict"],
        "exact_match,flexible-extract": summary["accuracy"],
    }
    summary["protocol"] = protocol(
        task,
        model,
        tokenizer,
        max_new_tokens=max_new_tokens,
        max_batch_tokens=max_batch_tokens,
        batch_size=batch_size,
        cuda_graphs=cuda_graphs,
        stats=stats,
        extraction="lm-eval gsm8k: accuracy = flexible-extract, accuracy_strict = strict-match (exact_match)",
        prompt={
            "format": "lm-eval gsm8k 'Question: ...\\nAnswer:'",
            "fewshot": NUM_FEWSHOT,
            "fewshot_seed": fewshot_seed,
            "fewshot_file": Path(fewshot_file).name if fewshot_file else None,
            "fewshot_as_multiturn": chat,
            "system_prompt": system_instruction,
            "chat_template": chat_template_id(tokenizer) if chat else None,
            "stop": until,
        },
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
