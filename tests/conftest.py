"""Shared fixtures: tokenizers and models built in the test process, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K_DIR = SHARED / "data" / "gsm8k"


def record(steps: list[str], question: str = "How many apples?", rid: str = "r0") -> dict:
    return {
        "id": rid,
        "messages": [
            {"role": "system", "content": "Solve step by step."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": "\n\n".join(steps)},
        ],
        "steps": steps,
        "total_steps": len(steps),
        "answer": "0",
    }


@pytest.fixture(scope="session")
def tok_chatml():
    from step_jepa.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer("chatml")


@pytest.fixture(scope="session")
def tok_llama3():
    from step_jepa.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer("llama3")


@pytest.fixture
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "train.jsonl").exists():
        pytest.skip("../shared/data/gsm8k not present")
    return GSM8K_DIR
