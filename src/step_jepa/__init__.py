"""Step-JEPA: fine-tune causal LMs on step-by-step reasoning with a JEPA objective between steps.

The package follows the pipeline, each subpackage importing only the ones before it:
``data`` (records, formats, segmentation) → ``method`` (masks, layouts, the Step-JEPA model and
losses) → ``models`` (where weights come from, loading, what they run on) → ``training`` (config,
trainer) → ``evaluation`` (decoding, scoring) → ``analysis`` (grids, compare, report, embed) → ``bench`` → ``cli``.

The library API (docs/library.md) is the list below. Names load on first use, so
``import step_jepa`` stays cheap (the CLI imports it before anything heavy).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0.dev0"

# public name -> the module that defines it
_API = {
    "segment": "step_jepa.data.segment",
    "Segmented": "step_jepa.data.segment",
    "SegmentError": "step_jepa.data.segment",
    "StepJEPACollator": "step_jepa.method.layout",
    "segmented_from_row": "step_jepa.method.layout",
    "JEPAOptions": "step_jepa.method.options",
    "StepJEPAModel": "step_jepa.method.model",
    "step_jepa_loss": "step_jepa.method.model",
    "resolve_model_path": "step_jepa.models.sources",
    "add_predictor_tokens": "step_jepa.models.loading",
    "load_for_inference": "step_jepa.models.loading",
    "load_model": "step_jepa.models.loading",
    "StepJEPAConfig": "step_jepa.training.config",
    "StepJEPACallback": "step_jepa.training.integration",
    "tokenize_for_step_jepa": "step_jepa.training.integration",
    "StepJEPATrainer": "step_jepa.training.trainer",
    "run_train": "step_jepa.training.trainer",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'step_jepa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
