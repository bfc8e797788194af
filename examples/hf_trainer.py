"""Step-JEPA inside a plain ``transformers.Trainer`` script (docs/library.md walks through it).

    python examples/hf_trainer.py --model HuggingFaceTB/SmolLM2-135M-Instruct --max_steps 20

What changes compared with an ordinary SFT script:
  1. add the predictor tokens to the model and tokenizer (``add_predictor_tokens``);
  2. tokenize once with ``tokenize_for_step_jepa`` (``datasets.map``): rows carry the step spans;
  3. wrap the LM in ``StepJEPAModel`` (its forward returns ``loss`` = γ·L_LM + λ·L_JEPA);
  4. collate with ``StepJEPACollator`` and add ``StepJEPACallback``; keep ``remove_unused_columns=False``
     (the rows' step columns are not arguments of a model forward);
  5. save ``model.lm`` (the Hugging Face model), not the wrapper.
Records are chat messages whose assistant answer separates steps by a blank line.
"""

from __future__ import annotations

import argparse
import json


def load_records(train_file: str | None, n: int) -> list[dict]:
    if train_file:
        with open(train_file) as f:
            return [json.loads(line) for line in f if line.strip()]
    from step_jepa.data.synthetic import (
        generate_problems,  # built-in multi-step arithmetic problems
    )

    return generate_problems(n, seed=0)


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
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from step_jepa import (
        JEPAOptions,
        StepJEPACallback,
        StepJEPACollator,
        StepJEPAModel,
        add_predictor_tokens,
        load_model,
        tokenize_for_step_jepa,
    )

    # Resolved as `step-jepa train --model` resolves it: a local dir, the hub, or offline the
    # converted copy of the default model (an unreachable hub fails in seconds, saying what to do).
    # sdpa takes our dense boolean mask; on CUDA "flex_attention" avoids the B×T×T mask
    # (then pass pad_multiple=128 to the collator).
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

    step_model = StepJEPAModel(lm, JEPAOptions(lbd=lbd, jepa_loss="cosine"))
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=step_model,
        args=args,
        train_dataset=ds,
        data_collator=StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred_ids, pairs="first"),
        callbacks=[StepJEPACallback()],
    )
    trainer.train()
    lm.save_pretrained(f"{output_dir}/final")  # loads with AutoModelForCausalLM.from_pretrained
    tok.save_pretrained(f"{output_dir}/final")
    return trainer


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--output_dir", default="runs/hf_trainer_example")
    p.add_argument("--train_file", default=None, help="JSONL of {'messages': [...]} (default: generated problems)")
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--lbd", type=float, default=0.1)
    a = p.parse_args()
    main(a.model, a.output_dir, a.max_steps, a.train_file, lbd=a.lbd)
