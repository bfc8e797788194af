"""examples/hf_trainer.py and examples/trl_sft.py run on a tiny model: a few steps, finite losses,
weights that change."""

import math
import sys
from pathlib import Path

import pytest
import torch

from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def tiny_dir(tmp_path):
    d = tmp_path / "tiny"
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok), seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _run(module: str, tiny_dir: Path, out: Path):
    pytest.importorskip("datasets")
    if module == "trl_sft":
        pytest.importorskip("trl")
    sys.path.insert(0, str(EXAMPLES))
    try:
        mod = __import__(module)
        trainer = mod.main(str(tiny_dir), str(out), max_steps=3, n=12, lbd=0.5, learning_rate=1e-3)
    finally:
        sys.path.remove(str(EXAMPLES))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    from safetensors.torch import load_file

    before, after = load_file(tiny_dir / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    changed = [
        k for k in before if k in after and before[k].shape == after[k].shape and not torch.equal(before[k], after[k])
    ]
    assert changed, "no weight changed"
    return trainer


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """The examples resolve models as the CLI does (`load_model`): with the hub off they must not reach for it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_trainer_example(tiny_dir, tmp_path):
    _run("hf_trainer", tiny_dir, tmp_path / "hf")


def test_trl_sft_example(tiny_dir, tmp_path):
    _run("trl_sft", tiny_dir, tmp_path / "trl")


def test_examples_fail_fast_and_say_what_to_do(tmp_path):
    """A model found nowhere: ModelNotFound naming HF_HUB_OFFLINE and the fix, not a hub OSError."""
    from step_jepa.models.sources import ModelNotFound

    sys.path.insert(0, str(EXAMPLES))
    try:
        import hf_trainer

        with pytest.raises(ModelNotFound, match="Tried"):
            hf_trainer.main("nobody/no-such-model", str(tmp_path / "x"), max_steps=1, n=2)
    finally:
        sys.path.remove(str(EXAMPLES))
