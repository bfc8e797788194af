"""The model card of a trained ``final/``: ``README.md`` in the Hugging Face model-card format
(YAML front matter, then Markdown), written by `run_train`, updated with scores by ``eval`` and
``compare``, and pushed with the folder by ``--push_to_hub``.

The card says what a reader of the hub page needs to reuse or judge the model: the base and
where its weights came from, the method and its options, the data and how much of it had a
step pair, the training summary, and the evaluation scores once there are any.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CARD = "README.md"
MARKER = "<!-- step-jepa model card -->"  # tells our cards from others (eval updates only ours)
EVAL_BEGIN, EVAL_END = "<!-- step-jepa:eval -->", "<!-- /step-jepa:eval -->"

# Licenses of the models `models.sources` knows; another base's license is not guessed.
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0", "google/gemma-3-270m": "gemma"}
# Data sets recognisable from a --train_file path (prepared by `step-jepa prepare`).
KNOWN_DATASETS = {"gsm8k": "openai/gsm8k"}

SUMMARY_FIELDS = (
    "global_step",
    "train_seconds",
    "train_loss",
    "examples",
    "resumed_from",
    "device_name",  # the hardware a card reader needs to weigh train_seconds
    "world_size",
    "finished_utc",
)


def _hub_id(name: str) -> str | None:
    """`name` when it is a hub id (owner/name, not a local path), else None; an alias of a known
    offline model gives its hub id."""
    from step_jepa.models.sources import offline_model

    known = offline_model(name)
    if known is not None:
        return known.names[0]
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def _yaml_front_matter(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def card_metadata(cfg, data_report: dict | None = None) -> dict[str, Any]:
    """The YAML front matter: base_model, library_name, tags, and datasets/license when known."""
    base = _hub_id(cfg.model)
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft" if cfg.lora else "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = (
        ["step-jepa", "jepa", "reasoning"] + (["lora"] if cfg.lora else []) + (["stp"] if cfg.stp_lbd > 0 else [])
    )
    source = str(cfg.train_file or (data_report or {}).get("source") or "")
    datasets = sorted({hub for key, hub in KNOWN_DATASETS.items() if key in source.lower()})
    if datasets:
        meta["datasets"] = datasets
    if base in KNOWN_LICENSES:
        meta["license"] = KNOWN_LICENSES[base]
    return meta


def _describe_weights(src: dict | None) -> str:
    if not src:
        return "unknown"
    kind = src.get("kind")
    if kind == "converted":
        return (
            f"a GGUF dequantized to fp32 by step-jepa, `{src.get('path')}` (from {src.get('source')}"
            + (f", sha256 `{src['sha256']}`" if src.get("sha256") else "")
            + "). "
            + (src.get("note") or "")
            + " Load the adapter onto these weights to reproduce the trained model."
        )
    if kind == "hub":
        return f"the Hugging Face hub, `{src.get('repo')}` at revision `{src.get('revision')}`"
    return f"the local directory `{src.get('path')}`"


def _options_table(cfg) -> str:
    rows = [
        ("λ (JEPA weight)", cfg.lbd),
        ("γ (LM weight)", cfg.gamma),
        ("K (predictor tokens)", cfg.predictors),
        ("JEPA loss", cfg.jepa_loss),
        ("pairs", cfg.pairs),
        ("JEPA layer", cfg.jepa_layer),
        ("JEPA target", cfg.jepa_target),
        ("predictor head", cfg.jepa_predictor_head),
        ("λ schedule", f"{cfg.lbd_schedule}, warm-up {cfg.lbd_warmup_steps} steps"),
        ("STP weight (λ_STP)", cfg.stp_lbd),
        ("packing", cfg.packing),
        ("max length", cfg.max_length),
        ("learning rate", cfg.learning_rate),
        ("scheduler", cfg.lr_scheduler_type),
        ("epochs / max steps", f"{cfg.num_train_epochs} / {cfg.max_steps}"),
        ("batch size × accumulation", f"{cfg.per_device_train_batch_size} × {cfg.gradient_accumulation_steps}"),
        ("seed", cfg.seed),
    ]
    if cfg.lora:
        rows.append(
            (
                "LoRA",
                f"r={cfg.lora_rank}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, targets={cfg.lora_targets}",
            )
        )
    return "| option | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _data_section(cfg, data_report: dict, seg: dict) -> str:
    skipped_lines = sum((data_report.get("skipped") or {}).values())
    skipped_seg = sum((seg.get("skipped") or {}).values())
    n = seg.get("examples", 0)
    missing = seg.get("first_pair_invalid", 0) if cfg.pairs == "first" else seg.get("without_valid_pair", 0)
    lines = [
        f"- source: `{cfg.train_file or data_report.get('source') or 'built-in generator'}`",
        f"- lines read: {data_report.get('lines_read', 'n/a')}, skipped: {skipped_lines}"
        + "".join(f"\n  - {r}: {c}" for r, c in (data_report.get("skipped") or {}).items()),
        f"- training examples: {n} (skipped at tokenization: {skipped_seg}, truncated: {seg.get('truncated', 0)})",
        f"- examples with a step pair (`--pairs {cfg.pairs}`): {n - missing} of {n}",
        f"- mean tokens per example: {seg.get('mean_tokens', 'n/a')}",
    ]
    if cfg.eval_file:
        lines.append(f"- held-out file: `{cfg.eval_file}`")
    return "\n".join(lines)


def _eval_section(results: list[dict] | None) -> str:
    if not results:
        return f"{EVAL_BEGIN}\nNo evaluation yet (`step-jepa eval --model <this folder>` adds it here).\n{EVAL_END}"
    rows = ["| data | n | accuracy | no answer | max new tokens |", "|---|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r.get('data', 'n/a')} | {r.get('n', 'n/a')} | {r.get('accuracy', float('nan')):.4f} "
            f"| {r.get('no_answer', 'n/a')} | {r.get('max_new_tokens', 'n/a')} |"
        )
    blob = json.dumps(results, separators=(",", ":"))
    return f"{EVAL_BEGIN}\n" + "\n".join(rows) + f"\n<!-- step-jepa:eval-data {blob} -->\n{EVAL_END}"


def render_model_card(
    cfg, summary: dict, data_report: dict, weights: dict | None, eval_results: list[dict] | None = None
) -> str:
    seg = summary.get("segmentation") or {}
    base = _hub_id(cfg.model) or cfg.model
    kind = "LoRA adapter" if cfg.lora else "full fine-tune"
    method = (
        "Step-JEPA: the LM loss plus λ times a JEPA loss between the representation of a reasoning step "
        "read at K predictor tokens and that of the next step, both from one forward pass"
        if cfg.lbd > 0
        else "plain supervised fine-tuning (λ = 0, no JEPA term)"
    )
    if cfg.stp_lbd > 0:
        method += f", with Semantic Tube Prediction (λ_STP = {cfg.stp_lbd})"
    load = (
        f'```python\nfrom step_jepa import load_for_inference\nmodel, tok = load_for_inference("<this folder>")'
        f"  # resizes the base, merges the adapter\n```\n\nor with PEFT (tokenizer from this folder, base vocabulary "
        f"resized to it):\n\n```python\nfrom peft import PeftModel\nfrom step_jepa import load_model\n"
        f'base, _ = load_model("{base}")\nbase.resize_token_embeddings(len(tok))\n'
        f'model = PeftModel.from_pretrained(base, "<this folder>")\n```'
        if cfg.lora
        else "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("<this folder>")\n'
        'tok = AutoTokenizer.from_pretrained("<this folder>")\n```'
    )
    summary_rows = "\n".join(f"| {k} | {summary.get(k)} |" for k in SUMMARY_FIELDS if k in summary)
    return (
        _yaml_front_matter(card_metadata(cfg, data_report)) + f"{MARKER}\n\n"
        f"# {Path(cfg.output_dir).name}: {base} fine-tuned with Step-JEPA ({kind})\n\n"
        f"## Base model\n\n- model: `{base}`\n- weights: {_describe_weights(weights)}\n\n"
        f"## Method\n\n{method}. Trained with `step-jepa train` (step-jepa).\n\n{_options_table(cfg)}\n\n"
        f"## Data\n\n{_data_section(cfg, data_report, seg)}\n\n"
        f"## Training\n\n| field | value |\n|---|---|\n{summary_rows}\n\n"
        f"`train_summary.json` and `step_jepa_config.yaml` in the run directory hold the rest.\n\n"
        f"## Evaluation\n\n{_eval_section(eval_results)}\n\n"
        f"## Loading\n\n{load}\n"
    )


def write_model_card(final_dir: str | Path, cfg, summary: dict, data_report: dict, weights: dict | None = None) -> Path:
    """Write ``final_dir/README.md`` (replacing the stub PEFT writes for an adapter)."""
    path = Path(final_dir) / CARD
    path.write_text(render_model_card(cfg, summary, data_report, weights), encoding="utf-8")
    return path


def is_step_jepa_model_dir(model_dir: str | Path) -> bool:
    card = Path(model_dir) / CARD
    return card.exists() and MARKER in card.read_text(encoding="utf-8")


def update_model_card_eval(model_dir: str | Path, eval_summary: dict, data: str | None = None) -> bool:
    """Add (or replace, for the same data and generation length) an evaluation row in the card of a
    step-jepa ``final/``. Returns False (and does nothing) for any other directory.

    Called by ``step-jepa eval`` and ``compare`` with their summary (accuracy, n, no_answer, ...)."""
    if not is_step_jepa_model_dir(model_dir):
        return False
    card = Path(model_dir) / CARD
    text = card.read_text(encoding="utf-8")
    m = re.search(r"<!-- step-jepa:eval-data (.*?) -->", text)
    results = json.loads(m.group(1)) if m else []
    row = {
        "data": data or eval_summary.get("data") or "n/a",
        **{k: eval_summary.get(k) for k in ("n", "accuracy", "correct", "no_answer", "max_new_tokens")},
    }
    results = [r for r in results if (r.get("data"), r.get("max_new_tokens")) != (row["data"], row["max_new_tokens"])]
    results.append(row)
    start, end = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if start < 0 or end < 0:
        return False
    text = text[:start] + _eval_section(results) + text[end + len(EVAL_END) :]
    card.write_text(text, encoding="utf-8")
    return True


def push_final(final_dir: str | Path, cfg) -> str:
    """Push ``final/`` (model or adapter, tokenizer, card) to ``--hub_model_id`` (default: the
    output directory's name under the user's account). Returns the repo id."""
    from huggingface_hub import HfApi

    api = HfApi(token=getattr(cfg, "hub_token", None))
    repo = cfg.hub_model_id or Path(cfg.output_dir).resolve().name
    repo_id = api.create_repo(repo, private=getattr(cfg, "hub_private_repo", None), exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(final_dir),
        revision=getattr(cfg, "hub_revision", None),
        commit_message="step-jepa: final model and card",
    )
    return repo_id
