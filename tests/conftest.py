"""Shared fixtures: tokenizers and models built in the test process, no network."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K_DIR = SHARED / "data" / "gsm8k"


def _checkpointing_name() -> str:
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


# transformers renamed --gradient_checkpointing to --activation_checkpointing after 5.17, the oldest
# version step-jepa supports (CI runs the tests on both); tests that set it use the installed name.
CHECKPOINTING = _checkpointing_name()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: without it they are skipped, not failed."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (the gpu marker)")
        for item in gpu:
            item.add_marker(skip)


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
    from step_jepa.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer("chatml")


@pytest.fixture(scope="session")
def tok_llama3():
    from step_jepa.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer("llama3")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama + chatml tokenizer: a model directory the CLI and the Trainer can load
    (read only: built once per test run)."""
    from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok), seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "train.jsonl").exists():
        pytest.skip("../shared/data/gsm8k not present")
    return GSM8K_DIR


@pytest.fixture(scope="session")
def tok():
    from step_jepa.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def problems():
    from step_jepa.data.synthetic import generate_problems

    return generate_problems(8, seed=3)


# ---------------------------------------------------------------------------- data-layer helpers
# (shared by test_records, test_formats, test_inputs, test_prepare, test_data)

FIX = Path(__file__).resolve().parent / "fixtures" / "data"


def lines(name: str) -> list[dict]:
    return [json.loads(x) for x in (FIX / name).read_text(encoding="utf-8").splitlines() if x.strip()]


def assert_prepared(rec: dict) -> None:
    """The record contract every consumer relies on."""
    assert set(rec) == {"id", "messages", "steps", "total_steps", "answer"}
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["messages"][2]["content"] == "\n\n".join(rec["steps"])
    assert rec["total_steps"] == len(rec["steps"]) >= 1
    for step in rec["steps"]:
        assert step and step == step.strip() and "\n\n" not in step and "\r" not in step
    assert isinstance(rec["answer"], str) and isinstance(rec["id"], str)


def skip_reason(obj, **kw) -> str:
    from step_jepa.data.formats import convert_line
    from step_jepa.data.records import SKIP_REASONS, Skip

    with pytest.raises(Skip) as exc:
        convert_line(obj, **kw)
    assert exc.value.reason in SKIP_REASONS
    return exc.value.reason


def main_in_process(*args: str) -> subprocess.CompletedProcess:
    """`step-jepa ARGS` in this process (a fresh interpreter costs seconds of torch imports): the
    real entry point, its exit code (argparse's SystemExit included), stdout and stderr."""
    import contextlib
    import io

    from step_jepa.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(["step-jepa", *args], rc, out.getvalue(), err.getvalue())


def run_main(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`run_cli` in this process: the same entry point, exit code and output, no new interpreter."""
    proc = main_in_process(*args)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"step-jepa {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def run_cli(argv: list[str]) -> int:
    """The real entry point, so error formatting and exit codes are the user's."""
    from step_jepa.cli.main import main

    return main(argv)


# --------------------------------------------------------------------------- compare grids


def grid_dict(model: str, out: Path, **extra) -> dict:
    """A 2-config × 2-seed grid on generated problems (2 training steps a run)."""
    grid = {
        "base": {
            "model": model,
            "generate_examples": 16,
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "report_to": "none",
            "logging_steps": 1,
            "save_steps": 1000,
        },
        "eval": {"generate": 16, "max_new_tokens": 8},
        "configs": {"sft": {"lbd": 0}, "jepa_l0.1_k1": {"lbd": 0.1, "predictors": 1, "pairs": "first"}},
        "seeds": [0, 1],
        "output_dir": str(out),
    }
    grid.update(extra)
    return grid


def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


def raw_gsm8k(path: Path, n: int, seed: int = 0) -> Path:
    """Raw GSM8K-style rows ({question, answer ending '#### N'}), what lm-eval's gsm8k reads."""
    rows = [
        {
            "question": f"Tom has {i + seed} apples and buys {i + 2}. How many?",
            "answer": f"{i + seed} + {i + 2}\n#### {2 * i + seed + 2}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mixed_records() -> list[dict]:
    """Examples of different lengths (so rows are padded) with 1 to 4 steps."""
    out = []
    for i in range(6):
        steps = [
            f"Tom has {i + 3} apples.",
            f"He buys {i} more, so {i + 3} + {i} = {2 * i + 3}.",
            "Then he eats one apple." * (i % 2 + 1),
            f"The final answer is \\boxed{{{2 * i + 2}}}.",
        ]
        out.append(record(steps[: 1 + i % 4], question=f"Question {i}: " + "how many? " * i, rid=str(i)))
    return out
