"""Step-JEPA: fine-tune causal LMs on step-by-step reasoning with a JEPA objective between steps.

The library API (docs/library.md) is importable from here; names load on first use, so
``import step_jepa`` stays cheap (the CLI imports it before anything heavy).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "StepJEPAModel": "objective", "JEPAOptions": "objective", "step_jepa_loss": "objective",
    "StepJEPACollator": "layout", "segmented_from_row": "layout",
    "segment": "segment", "Segmented": "segment", "SegmentError": "segment",
    "add_predictor_tokens": "modeling", "load_for_inference": "modeling",
    "tokenize_for_step_jepa": "integration", "StepJEPACallback": "integration",
    "StepJEPATrainer": "trainer", "run_train": "trainer",
    "TrainConfig": "config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'step_jepa' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
