"""`step-jepa train`: fine-tune with Step-JEPA (or plain SFT with --lbd 0)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from step_jepa.training.config import add_config_arguments

    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from step_jepa.training.config import resolve_config
    from step_jepa.training.trainer import run_train

    run_train(resolve_config(args))
    return 0
