"""`JEPAOptions`: the options of the Step-JEPA method, declared once.

`StepJEPAModel` reads them, `step-jepa train`'s `StepJEPAConfig` inherits them (they are its
`--lbd`, `--jepa_loss`, ... flags and YAML keys), and `step-jepa bench`'s `BenchConfig` inherits
them too, so a flag means the same thing and has the same name, default and help everywhere. The
field metadata (`help`, `choices`) is what the command-line parser turns into flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its flag's help (and argparse options such as `choices`) as metadata."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class JEPAOptions:
    """γ·L_LM + λ·L_JEPA (+ λ_STP·L_STP): the objective's weights, views, target and step pairs.

    Usable alone (`StepJEPAModel(lm, JEPAOptions(lbd=0.1))`) or through a class that inherits it
    (`StepJEPAConfig`, `BenchConfig`). `validate()` checks the ranges; `lbd_at()` is λ's schedule.
    """

    lbd: float = option(0.1, "λ, weight of the JEPA loss (0 = plain SFT, no extra tokens)")
    gamma: float = option(1.0, "γ, weight of the LM loss")
    jepa_loss: str = option(
        "cosine", "cosine | l2 | mse | infonce | vicreg", choices=("cosine", "l2", "mse", "infonce", "vicreg")
    )
    jepa_temperature: float = option(0.1, "InfoNCE temperature")
    vicreg_weight: float = option(0.0, "add a VICReg variance/covariance term on both views with this weight")
    jepa_layer: int = option(-1, "decoder layer whose output gives the views (-1 = last)")
    jepa_final_norm: bool = option(True, "apply the model's final norm to the views")
    jepa_predictor_head: str = option(
        "none", "none | mlp: predictor head on view 1 (saved, unused at generation)", choices=("none", "mlp")
    )
    jepa_target: str = option(
        "grad",
        "view 2 with gradients (grad), stop-gradient, from an EMA model, or from a "
        "frozen copy of the starting model (a target that cannot move with view 1)",
        choices=("grad", "stopgrad", "ema", "frozen"),
    )
    jepa_target_layer: int | None = option(
        None,
        "decoder layer whose output gives view 2 (default: --jepa_layer); view 2 read there has no "
        "gradient, so it needs --jepa_target stopgrad, ema or frozen",
    )
    ema_decay: float = option(0.996, "decay of the EMA target model (--jepa_target ema)")
    lbd_schedule: str = option(
        "constant", "λ after warm-up: constant | linear | cosine decay to 0", choices=("constant", "linear", "cosine")
    )
    lbd_warmup_steps: int = option(0, "linear warm-up of λ from 0 over this many steps")
    stp_lbd: float = option(
        0.0,
        "weight of Semantic Tube Prediction, 1 − cos(h_t − h_r, h_r − h_s) on the "
        "ordinary pass (0 = off); needs no step pairs, so it also works with --lbd 0",
    )
    stp_positions: str = option(
        "random",
        "STP triplets s < r < t: random answer tokens (the STP paper) | steps: "
        "the ends of the prompt or step i-1, step i and step i+1",
        choices=("random", "steps"),
    )
    predictors: int = option(1, "K, number of predictor tokens after step i")
    sft_predictor_tokens: bool = option(
        False,
        "with λ=0, still add the K (unused) predictor tokens, so an SFT "
        "baseline has the same vocabulary as the JEPA runs it is compared "
        "with",
    )
    pairs: str = option("first", "which step pairs: first (S1→S2) | random | all", choices=("first", "random", "all"))
    jepa_ratio: float = option(
        1.0, "probability that a micro-batch computes the JEPA term (drawn per micro-batch and rank)"
    )
    view_boundary: str = option(
        "content",
        "where a step ends: content (its last content token: predictors "
        "after it, view 2 read at step i+1's last token) | separator (the "
        "blank line after it; after the last step, the end-of-turn token)",
        choices=("content", "separator"),
    )
    jepa_mode: str = option(
        "single_pass", "single_pass (exact, ~SFT cost) | two_pass (reference)", choices=("single_pass", "two_pass")
    )

    def lbd_at(self, step: int, total_steps: int) -> float:
        """λ at an optimizer step: linear warm-up, then constant or decaying to 0 at the end."""
        if self.lbd_warmup_steps and step < self.lbd_warmup_steps:
            return self.lbd * step / self.lbd_warmup_steps
        if self.lbd_schedule == "constant" or total_steps <= self.lbd_warmup_steps:
            return self.lbd
        frac = min(1.0, (step - self.lbd_warmup_steps) / max(1, total_steps - self.lbd_warmup_steps))
        if self.lbd_schedule == "linear":
            return self.lbd * (1.0 - frac)
        return self.lbd * 0.5 * (1.0 + math.cos(math.pi * frac))

    def target_model(self) -> bool:
        """Whether view 2 comes from a second model (EMA or frozen), run on the step copies alone."""
        return self.jepa_target in ("ema", "frozen")

    def validate(self) -> None:
        """Refuse out-of-range values, every problem in one ValueError line.

        A class that inherits these options adds its own ranges by extending `_checks()`.
        """
        problems = [msg for ok, msg in self._checks() if not ok]
        if problems:
            raise ValueError("; ".join(problems))

    def _checks(self) -> list[tuple[bool, str]]:
        """(value is fine, message) per range. Written as "ok" conditions so that NaN fails them."""
        return [
            (self.lbd >= 0 and self.gamma >= 0 and self.stp_lbd >= 0, "--lbd, --gamma and --stp_lbd must be >= 0"),
            (self.predictors >= 1, "--predictors must be >= 1"),
            (0.0 <= self.jepa_ratio <= 1.0, "--jepa_ratio must be in [0, 1]"),
            (self.jepa_temperature > 0, "--jepa_temperature must be > 0"),
            (self.vicreg_weight >= 0, "--vicreg_weight must be >= 0"),
            (0.0 <= self.ema_decay <= 1.0, "--ema_decay must be in [0, 1]"),
            (self.lbd_warmup_steps >= 0, "--lbd_warmup_steps must be >= 0"),
            # A gradient into layer L would pull it towards the last layer, a shortcut of its own; so
            # view 2 there is always detached, and the config must say so rather than read "grad".
            (
                self.jepa_target_layer is None or self.jepa_target != "grad",
                "--jepa_target_layer reads view 2 without gradients: give --jepa_target stopgrad, ema or frozen",
            ),
        ]
