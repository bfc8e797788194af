"""Step-JEPA: fine-tune causal LMs on step-by-step reasoning with a JEPA objective between steps."""

__version__ = "0.1.0"
