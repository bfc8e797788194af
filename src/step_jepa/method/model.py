"""The training-time module: γ·L_LM + λ·L_JEPA from the layouts of `layout.py`.

It wraps the Hugging Face causal LM so that DDP/accelerate see one module whose forward
does everything: the decoder is called once (single-pass) or twice (two-pass reference), logits
are computed only at labelled positions, and the views are gathered from the final hidden states.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from step_jepa.method.layout import meta_of
from step_jepa.method.lm_loss import chunked_lm_loss_sum
from step_jepa.method.losses import (
    gather_views,
    jepa_loss,
    stp_loss,
    variance_covariance,
)
from step_jepa.method.masks import PAD, build_model_mask
from step_jepa.method.options import JEPAOptions


class PredictorHead(nn.Module):
    """A small MLP on view 1 only (BYOL/JEPA-style predictor); trained, saved, unused at generation.

    Starts as the identity (zero-initialised last layer + residual), so switching it on does not
    perturb the first steps of training.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def step_jepa_loss(
    out: dict,
    options: JEPAOptions,
    step: int = 0,
    max_steps: int = 0,
    num_items_in_batch=None,
    accumulation_steps: int = 1,
    world_size: int = 1,
) -> torch.Tensor:
    """γ·L_LM + λ·L_JEPA + λ_STP·L_STP of one micro-batch, from `StepJEPAModel.terms`.

    λ is ``options.lbd_at(step, max_steps)`` (the schedule). Without `num_items_in_batch`: the
    per-token LM mean of this micro-batch plus the JEPA/STP means (the Trainer then divides by
    the accumulation steps itself). With it (the labelled tokens of the whole optimizer step,
    summed over ranks, as the Trainer counts them from ``labels``): ``lm_sum / num_items · world``,
    so that DDP's gradient *average* over ranks gives the per-token mean of the whole step, plus
    the JEPA/STP means divided by the accumulation steps (a mean per micro-batch, averaged over
    micro-batches). StepJEPATrainer.compute_loss and StepJEPAModel.forward's ``loss`` both come
    from here. A term whose weight is configured > 0 stays in the graph even while its scheduled
    weight is 0, so DDP sees the same parameters used on every step.
    """
    if num_items_in_batch is None:
        lm = out["lm_sum"] / max(out["n_tokens"], 1)
        ga = 1
    else:
        n = num_items_in_batch.clamp(min=1) if torch.is_tensor(num_items_in_batch) else max(num_items_in_batch, 1)
        lm = out["lm_sum"] / n * world_size
        ga = accumulation_steps
    loss = options.gamma * lm
    if options.lbd > 0:
        loss = loss + options.lbd_at(step, max_steps) * out["jepa"] / ga
    if options.stp_lbd > 0:
        loss = loss + options.stp_lbd * out["stp"] / ga
    return loss


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that takes no gradient and stays in eval mode (a target encoder)."""
    out = copy.deepcopy(module).eval()
    out.requires_grad_(False)
    return out


def _capture(store: dict[int, torch.Tensor], i: int):
    """A forward hook keeping layer i's output (the last call's, as gradient checkpointing reruns)."""

    def hook(module: nn.Module, args, out) -> None:
        store[i] = out[0] if isinstance(out, tuple) else out

    return hook


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class StepJEPAModel(nn.Module):
    """Wraps a causal LM (optionally PEFT) and returns the loss terms for a collated batch.

    `options` is a `JEPAOptions` or anything that inherits it (a `StepJEPAConfig` as it is);
    the model reads the JEPA fields under their flag names (`options.jepa_loss`, ...).
    """

    def __init__(self, lm: nn.Module, options: JEPAOptions):
        super().__init__()
        self.lm = lm
        self.options = options
        hidden = lm.get_input_embeddings().weight.shape[1]
        self.head = PredictorHead(hidden) if options.jepa_predictor_head == "mlp" else None
        # Where training stands, for `loss` (λ schedule, accumulation); kept current by
        # StepJEPACallback in a plain Trainer and by StepJEPATrainer (which computes its own loss).
        self.global_step = 0
        self.max_steps = 0
        self.accumulation_steps = 1
        # Target models are kept out of the module tree (a list) so the optimizer, DDP and
        # checkpoints ignore them. The EMA model is the whole LM (checkpoints save it, resuming
        # continues the average); the frozen copy is the starting model's decoder alone, up to
        # the layer view 2 is read at, and is rebuilt from the starting weights on resume.
        self._ema: list[nn.Module] = []
        self._frozen: list[nn.Module] = []
        if options.jepa_target == "ema":
            self._ema.append(_frozen_copy(lm))
        if options.jepa_target == "frozen":
            frozen = _frozen_copy(lm.get_decoder())
            del frozen.layers[self._target_layer_index() + 1 :]  # later layers cannot change view 2
            self._frozen.append(frozen)

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← d·ema + (1−d)·online, after each optimizer step."""
        if not self._ema:
            return
        d = self.options.ema_decay
        for pe, p in zip(self._ema[0].parameters(), self.lm.parameters()):
            if pe.device != p.device:
                self._ema[0].to(p.device)
            pe.lerp_(p.detach().to(pe.dtype), 1.0 - d)

    @property
    def config(self):
        return self.lm.config

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """What the Trainer calls for --activation_checkpointing (a wrapper defining only the
        deprecated gradient_checkpointing_enable gets a FutureWarning from it on every run)."""
        self.lm.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs
        )
        if hasattr(self.lm, "enable_input_require_grads"):
            self.lm.enable_input_require_grads()  # LoRA + checkpointing needs grads flowing into inputs

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)
        if hasattr(self.lm, "enable_input_require_grads"):
            self.lm.enable_input_require_grads()  # LoRA + checkpointing needs grads flowing into inputs

    def add_model_tags(self, tags) -> None:
        """Passed to the LM (TRL's SFTTrainer tags the model it trains)."""
        if hasattr(self.lm, "add_model_tags"):
            self.lm.add_model_tags(tags)

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    def attn_impl(self) -> str:
        return getattr(self.lm.config, "_attn_implementation", None) or "sdpa"

    def _mask(self, part: dict[str, torch.Tensor]):
        if part["plain_causal"]:
            return (part["role"] != PAD).long()
        dtype = self.lm.get_input_embeddings().weight.dtype
        return build_model_mask(meta_of(part), self.lm.config, self.attn_impl(), dtype, part["position_ids"])

    def hidden_states(
        self, part: dict[str, torch.Tensor], lm: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states [B, T, H] for the LM head, hidden states at --jepa_layer for the views)."""
        final, (views,) = self.states_at(part, (self.options.jepa_layer,), (lm or self.lm).get_decoder())
        return final, views

    def states_at(
        self, part: dict[str, torch.Tensor], layers: tuple[int, ...], decoder: nn.Module | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(final hidden states, the views' hidden states at each of `layers`) of one decoder pass.

        A layer's output is captured by a forward hook (no list of every layer's states is
        requested), with the final norm under --jepa_final_norm; the last layer with the norm is
        the final output itself. Indices count from the full model (a truncated frozen copy
        keeps the low layers, so its indices agree).
        """
        decoder = decoder if decoder is not None else self.lm.get_decoder()
        norm = self.options.jepa_final_norm
        idx = [layer % self._n_layers for layer in layers]
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            decoder.layers[i].register_forward_hook(_capture(captured, i))
            for i in sorted(set(idx))
            if i != self._n_layers - 1 or not norm
        ]
        try:
            out = decoder(
                input_ids=part["input_ids"],
                attention_mask=self._mask(part),
                position_ids=part["position_ids"],
                use_cache=False,
            )
        finally:
            for hook in hooks:
                hook.remove()
        final = out.last_hidden_state
        return final, [final if i not in captured else decoder.norm(captured[i]) if norm else captured[i] for i in idx]

    @property
    def _n_layers(self) -> int:
        """Decoder layers of the online model (layer indices of both views count from it)."""
        return len(self.lm.get_decoder().layers)

    def _target_layer_index(self) -> int:
        """The layer view 2 is read at: --jepa_target_layer, else --jepa_layer (0 … layers-1)."""
        o = self.options
        return (o.jepa_layer if o.jepa_target_layer is None else o.jepa_target_layer) % self._n_layers

    def _online_layers(self) -> tuple[int, ...]:
        """Layers the online pass reads: view 1's, and view 2's when that is another layer of it."""
        o = self.options
        if o.jepa_target_layer is None or o.target_model():
            return (o.jepa_layer,)
        return (o.jepa_layer, o.jepa_target_layer)

    def lm_sum(self, hidden: torch.Tensor, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed next-token loss over labelled positions only (no [B, T, V] logits)."""
        h = hidden.flatten(0, 1).index_select(0, part["lm_index"])
        return chunked_lm_loss_sum(h, self.lm.get_output_embeddings(), part["lm_labels"])

    @staticmethod
    def views(
        hidden: torch.Tensor, part: dict[str, torch.Tensor], target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """View 1 from `hidden`, view 2 from `target` (another layer's states) or `hidden`."""
        rows = part["view_rows"]
        return hidden[rows, part["view1_cols"]], (hidden if target is None else target)[rows, part["view2_cols"]]

    def target_views(self, batch: dict, v2: torch.Tensor) -> torch.Tensor:
        """View 2 as the objective sees it: with gradients (the seed), detached, or from the EMA or
        frozen model, which encodes only the isolated step copies (``batch["copies"]``).

        Read at another layer (--jepa_target_layer), view 2 is always detached: a gradient there
        would pull the lower layer towards the upper one, the shortcut this option is meant to avoid.
        """
        o = self.options
        if "copies" in batch and not o.target_model():
            raise ValueError(
                "this batch was collated for an EMA or frozen target (target_copies: the step copies are "
                f"not in the online rows), but --jepa_target is {o.jepa_target}: build the collator with "
                "target_copies=options.target_model()"
            )
        if o.target_model():
            part = batch["copies"]
            with torch.no_grad():
                decoder = self._target_decoder(v2.device)
                _, (h,) = self.states_at(part, (self._target_layer_index(),), decoder)
            return h[part["view_rows"], part["view2_cols"]]
        if o.jepa_target == "stopgrad" or o.jepa_target_layer is not None:
            return v2.detach()
        return v2

    def _target_decoder(self, device: torch.device) -> nn.Module:
        """The EMA or frozen decoder, on `device` (moved there on first use, like the LM itself)."""
        model = self._ema[0] if self._ema else self._frozen[0]
        if next(model.parameters()).device != device:
            model.to(device)
        return model.get_decoder() if self._ema else model

    @staticmethod
    def stp(hidden: torch.Tensor, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean STP loss over the batch's triplets (0 without any): hidden states gathered at the
        collator's flat indices, so no position is looked up on the host."""
        idx = part["stp_index"]
        if idx.numel() == 0:
            return hidden.new_zeros((), dtype=torch.float32)
        h = hidden.flatten(0, 1).index_select(0, idx.flatten()).view(idx.shape[0], 3, -1)
        return stp_loss(h[:, 0], h[:, 1], h[:, 2])

    def forward(self, labels: torch.Tensor | None = None, num_items_in_batch=None, **batch) -> dict[str, torch.Tensor]:
        """Returns loss, lm_sum (summed token losses), n_tokens, jepa (mean over pairs), the views
        and, when the collator drew STP triplets, stp (their mean loss, on the ordinary pass).

        ``loss`` is γ·L_LM + λ·L_JEPA + λ_STP·L_STP (`step_jepa_loss`), what a plain
        ``transformers.Trainer`` optimizes: with `num_items_in_batch` (the Trainer passes it when
        the batch has ``labels``, as StepJEPACollator's does) L_LM is per token over the whole
        optimizer step, and the result is divided by the world size, which the Trainer multiplies
        back in (``average_tokens_across_devices``). `labels` ([B, T], the collator's
        ``lm_targets`` shifted right, Hugging Face's convention) are only counted by the Trainer;
        the loss uses the precomputed ``lm_index``/``lm_labels``.
        """
        out = self.terms(batch)
        world = _world_size() if num_items_in_batch is not None else 1
        out["loss"] = (
            step_jepa_loss(
                out, self.options, self.global_step, self.max_steps, num_items_in_batch, self.accumulation_steps, world
            )
            / world
        )
        return out

    def terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss terms of a collated batch (forward without the combined loss)."""
        layers = self._online_layers()
        final, states = self.states_at(batch, layers)
        out = {"lm_sum": self.lm_sum(final, batch), "n_tokens": batch["lm_index"].numel()}
        if "stp_index" in batch:
            out["stp"] = self.stp(states[0], batch)
        part = batch
        if "pass2" in batch:  # two-pass reference: views come from a second forward pass
            part = batch["pass2"]
            states = self.states_at(part, layers)[1]
        has_pairs = part["view_rows"].numel() > 0
        # In-batch negatives are gathered from every rank; a rank without pairs must still take
        # part in the collective, or the others wait for it forever.
        gather = self.options.jepa_loss == "infonce" and _world_size() > 1
        if has_pairs or gather:
            v1, v2 = self.views(states[0], part, states[-1])
            if self.head is not None:
                v1 = self.head(v1)
            if has_pairs:
                v2 = self.target_views(batch, v2)
            if gather:
                v1, v2 = gather_views(v1), gather_views(v2)
        if has_pairs or (gather and len(v1) > 0):
            out["jepa"] = jepa_loss(v1, v2, self.options.jepa_loss, self.options.jepa_temperature)
            if self.options.vicreg_weight > 0:
                reg = variance_covariance(v1.float()) + variance_covariance(v2.float())
                out["jepa"] = out["jepa"] + self.options.vicreg_weight * reg
            out["view1"], out["view2"] = v1.detach(), v2.detach()
        else:
            # Touch the head so DDP sees its parameters used even on a step without pairs.
            zero = final.new_zeros((), dtype=torch.float32)
            out["jepa"] = zero + (sum(p.sum() for p in self.head.parameters()) * 0 if self.head is not None else 0)
        return out
