"""Step-JEPA inside TRL's ``SFTTrainer`` (docs/library.md walks through it).

    pip install trl
    python examples/trl_sft.py --model HuggingFaceTB/SmolLM2-135M-Instruct --max_steps 20

The same pieces as examples/hf_trainer.py, plus two SFTTrainer settings:
  - ``dataset_kwargs={"skip_prepare_dataset": True}``: the rows are already tokenized, with step
    spans that TRL's own tokenization would not produce;
  - ``remove_unused_columns=False``: keep the step columns for the collator.
SFTTrainer's ``compute_loss`` expects the outputs of its fused LM head (log-probs, token
accuracy); ``StepJEPALossMixin`` puts back the plain Trainer's, which takes the loss that
``StepJEPAModel`` returns. Everything else (SFTConfig, logging, saving, PEFT) stays TRL's.
"""

from __future__ import annotations

import argparse

from hf_trainer import load_records


def main(
    model: str,
    output_dir: str,
    max_steps: int = 20,
    train_file: str | None = None,
    n: int = 64,
    lbd: float = 0.1,
    predictors: int = 1,
    learning_rate: float = 5e-5,
    batch_size: int = 4,
):
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from step_jepa import (
        JEPAOptions,
        StepJEPACallback,
        StepJEPACollator,
        StepJEPAModel,
        add_predictor_tokens,
        load_model,
        tokenize_for_step_jepa,
    )
    from step_jepa.training.integration import StepJEPALossMixin

    class StepJEPASFTTrainer(StepJEPALossMixin, SFTTrainer):
        pass

    # Resolved as `step-jepa train --model` resolves it: a local dir, the hub, or offline the
    # converted copy of the default model (an unreachable hub fails in seconds, saying what to do).
    lm, tok = load_model(model, attn_implementation="sdpa")
    pred_ids = add_predictor_tokens(lm, tok, predictors)

    records = [
        {"id": str(r.get("id", i)), "messages": r["messages"]} for i, r in enumerate(load_records(train_file, n))
    ]
    ds = Dataset.from_list(records)
    ds = ds.map(
        tokenize_for_step_jepa,
        batched=True,
        remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tok, "max_length": 1024},
    )

    args = SFTConfig(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )  # SFTConfig defaults to bf16
    trainer = StepJEPASFTTrainer(
        model=StepJEPAModel(lm, JEPAOptions(lbd=lbd, jepa_loss="cosine")),
        args=args,
        train_dataset=ds,
        processing_class=tok,
        data_collator=StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred_ids, pairs="first"),
        callbacks=[StepJEPACallback()],
    )
    trainer.train()
    lm.save_pretrained(f"{output_dir}/final")
    tok.save_pretrained(f"{output_dir}/final")
    return trainer


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--output_dir", default="runs/trl_sft_example")
    p.add_argument("--train_file", default=None, help="JSONL of {'messages': [...]} (default: generated problems)")
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--lbd", type=float, default=0.1)
    a = p.parse_args()
    main(a.model, a.output_dir, a.max_steps, a.train_file, lbd=a.lbd)
