"""The training-time module: γ·L_LM + λ·L_JEPA from the layouts of `layout.py`.

It wraps the Hugging Face causal LM so that DDP/FSDP/accelerate see one module whose forward
does everything: the decoder is called once (single-pass) or twice (two-pass reference), logits
are computed only at labelled positions, and the views are gathered from the final hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layout import meta_of
from .losses import jepa_loss
from .masks import ORIG, PAD, build_attention_mask
from .modeling import chunked_lm_loss_sum
from .segment import IGNORE_INDEX


@dataclass
class JEPAOptions:
    lbd: float = 0.1
    gamma: float = 1.0
    loss: str = "cosine"
    temperature: float = 0.1


def _is_plain_causal(part: dict[str, torch.Tensor]) -> bool:
    """A batch of one original sequence per row: the model's own causal+padding mask is exact."""
    return bool(((part["role"] == ORIG) | (part["role"] == PAD)).all() and (part["seq"] <= 0).all())


class StepJEPAModel(nn.Module):
    """Wraps a causal LM (optionally PEFT) and returns the loss terms for a collated batch."""

    def __init__(self, lm: nn.Module, options: JEPAOptions):
        super().__init__()
        self.lm = lm
        self.options = options

    @property
    def config(self):
        return self.lm.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        if hasattr(self.lm, "enable_input_require_grads"):
            self.lm.enable_input_require_grads()  # LoRA + checkpointing needs grads flowing into inputs

    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    def attn_impl(self) -> str:
        return getattr(self.lm.config, "_attn_implementation", None) or "sdpa"

    def hidden_states(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden states [B, T, H] (after the final norm) under the layout's attention mask."""
        if _is_plain_causal(part):
            mask = (part["role"] != PAD).long()
        else:
            dtype = self.lm.get_input_embeddings().weight.dtype
            mask = build_attention_mask(meta_of(part), self.attn_impl(), dtype)
        out = self.lm.get_decoder()(
            input_ids=part["input_ids"], attention_mask=mask, position_ids=part["position_ids"], use_cache=False)
        return out.last_hidden_state

    def lm_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed next-token loss over labelled positions only (no [B, T, V] logits)."""
        sel = targets != IGNORE_INDEX
        return chunked_lm_loss_sum(hidden[sel], self.lm.get_output_embeddings(), targets[sel])

    @staticmethod
    def views(hidden: torch.Tensor, part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = part["view_rows"]
        return hidden[rows, part["view1_cols"]], hidden[rows, part["view2_cols"]]

    def forward(self, **batch) -> dict[str, torch.Tensor]:
        """Returns lm_sum (summed token losses), n_tokens, jepa (mean over pairs) and the views."""
        hidden = self.hidden_states(batch)
        out = {"lm_sum": self.lm_sum(hidden, batch["lm_targets"]),
               "n_tokens": (batch["lm_targets"] != IGNORE_INDEX).sum()}
        source, part = (hidden, batch)
        if "pass2" in batch:  # two-pass reference: views come from a second forward pass
            part = batch["pass2"]
            source = self.hidden_states(part)
        if part["view_rows"].numel() > 0:
            v1, v2 = self.views(source, part)
            out["jepa"] = jepa_loss(v1, v2, self.options.loss, self.options.temperature)
            out["view1"], out["view2"] = v1.detach(), v2.detach()
        else:
            out["jepa"] = hidden.new_zeros((), dtype=torch.float32)
        return out
