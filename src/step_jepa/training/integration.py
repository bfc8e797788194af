"""Step-JEPA inside your own training script: a plain ``transformers.Trainer`` or TRL's ``SFTTrainer``.

Three pieces (docs/library.md shows whole scripts, examples/ holds runnable ones):

- `tokenize_for_step_jepa`: a ``datasets.map`` function turning chat records (``messages`` with an
  assistant answer whose steps are separated by blank lines) into rows with ``input_ids``,
  ``labels`` and the token spans of the steps (``step_starts``/``step_ends``).
- ``StepJEPACollator`` (step_jepa.method.layout) collates those rows (or `Segmented` examples) into the
  single-pass layout; its batches carry standard ``labels`` so the Trainer counts tokens.
- `StepJEPACallback`: keeps the wrapper's λ schedule and accumulation count in step with the
  Trainer and moves an EMA target after each optimizer step.

``StepJEPAModel(lm, JEPAOptions(...))`` is the model you hand to the Trainer; its forward returns
``loss`` (γ·L_LM + λ·L_JEPA + λ_STP·L_STP). Save the trained LM with ``model.lm.save_pretrained``.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from step_jepa.data.segment import SegmentError, segment


def _row(seg) -> dict[str, Any]:
    return {
        "input_ids": seg.input_ids,
        "labels": seg.labels,
        "prompt_len": seg.prompt_len,
        "step_starts": [s[0] if s is not None else -1 for s in seg.step_spans],
        "step_ends": [s[1] if s is not None else -1 for s in seg.step_spans],
        "truncated": seg.truncated,
    }


def tokenize_for_step_jepa(example: dict, tokenizer, max_length: int | None = None) -> dict[str, Any]:
    """Tokenize a chat record for Step-JEPA (use with ``datasets.Dataset.map``).

    One record (``{"messages": [...]}``) gives one row and raises `SegmentError` when it cannot be
    used. With ``map(..., batched=True)`` (a dict of lists) unusable records are dropped and the
    others returned, so the dataset shrinks instead of failing; ``id`` is kept when present.
    Steps are found by character offsets in the tokenizer's chat template (docs/design.md), so
    the tokenizer must be a fast one, with the predictor tokens already added (any order is fine:
    the spans do not depend on them).
    """
    messages = example["messages"]
    batched = bool(messages) and isinstance(messages[0], list)
    if not batched:
        seg = segment(example, tokenizer, max_length)
        return {**_row(seg), **({"id": str(example["id"])} if "id" in example else {})}
    out: dict[str, list] = {}
    ids = example.get("id")
    for i, msgs in enumerate(messages):
        rec = {"messages": msgs, "id": ids[i] if ids is not None else str(i)}
        try:
            row = {**_row(segment(rec, tokenizer, max_length)), "id": str(rec["id"])}
        except SegmentError:
            continue
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    if not out:  # every record of this batch was unusable: an empty batch with the same columns
        out = {k: [] for k in ("input_ids", "labels", "prompt_len", "step_starts", "step_ends", "truncated", "id")}
    return out


def _unwrap(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


class StepJEPACallback(TrainerCallback):
    """Keeps a `StepJEPAModel` in step with a plain Trainer.

    Before each optimizer step it sets the model's ``global_step``/``max_steps`` (the λ schedule
    of `JEPAOptions.lbd_at`) and ``accumulation_steps`` (the JEPA mean per micro-batch is divided
    by it when the Trainer normalises L_LM over the whole accumulated step); after each step it
    moves the EMA target (``JEPAOptions(jepa_target="ema")``). Pass the model, or let the Trainer hand
    it over (``model`` in the callback's kwargs).
    """

    def __init__(self, model=None):
        self.model = model

    def _target(self, kwargs):
        return _unwrap(self.model if self.model is not None else kwargs.get("model"))

    def on_step_begin(self, args, state, control, **kwargs):
        m = self._target(kwargs)
        m.global_step, m.max_steps = state.global_step, state.max_steps
        m.accumulation_steps = args.gradient_accumulation_steps

    on_train_begin = on_step_begin

    def on_step_end(self, args, state, control, **kwargs):
        self._target(kwargs).update_ema()


class StepJEPALossMixin:
    """Mix into a Trainer subclass whose ``compute_loss`` expects its own model outputs (TRL's
    SFTTrainer reads its fused LM head's log-probs): the plain ``transformers.Trainer.compute_loss``
    is used instead, which takes `StepJEPAModel`'s ``loss`` (with ``num_items_in_batch``).

        class StepJEPASFTTrainer(StepJEPALossMixin, SFTTrainer): pass
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from transformers import Trainer

        return Trainer.compute_loss(
            self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
