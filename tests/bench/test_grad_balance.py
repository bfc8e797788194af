"""benchmarks/grad_balance.py: the LM and JEPA gradients measured apart add up to the trainer's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("grad_balance", ROOT / "benchmarks" / "grad_balance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, problems) -> Path:
    path = tmp_path_factory.mktemp("gb") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in problems))
    return path


def _cfg(model_dir: Path, train_file: Path, tmp_path: Path, **kw):
    from step_jepa.training.config import StepJEPAConfig

    return StepJEPAConfig(
        model=str(model_dir),
        train_file=str(train_file),
        output_dir=str(tmp_path / "unused"),
        predictors=2,
        per_device_train_batch_size=2,
        attn_implementation="sdpa",
        report_to="none",
        **kw,
    )


@pytest.mark.parametrize("packing,gamma", [(False, 1.0), (True, 1.0), (False, 0.5)])
def test_parts_add_up_to_the_trainer_loss_gradient(model_dir, train_file, tmp_path, packing, gamma):
    """‖∇(L_LM + λ L_JEPA)‖ of step_jepa_loss (what the Trainer differentiates) equals the total
    that grad_balance assembles from the two gradients and their cosine."""
    from step_jepa.method.model import step_jepa_loss

    gb = _module()
    cfg = _cfg(model_dir, train_file, tmp_path, lbd=0.7, gamma=gamma, packing=packing, max_tokens_per_batch=512)
    wrapper, dataset, collator = gb.setup(cfg)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    item = dataset[0]
    batch = collator(item if isinstance(item, list) else [item])
    row = gb.batch_row(wrapper, batch, params, cfg.lbd)
    assert row["pairs"] >= 1 and row["lm_grad"] > 0 and row["jepa_grad"] > 0
    assert row["ratio"] == pytest.approx(cfg.lbd * row["jepa_grad"] / (gamma * row["lm_grad"]))
    grads = torch.autograd.grad(step_jepa_loss(wrapper.terms(batch), wrapper.options), params, allow_unused=True)
    direct = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    assert row["total_grad"] == pytest.approx(direct, rel=1e-4)
    assert -1.0 <= row["cos"] <= 1.0


def test_cli_prints_the_table_and_writes_json(model_dir, train_file, tmp_path, capsys):
    gb = _module()
    out = tmp_path / "gb.json"
    assert (
        gb.main(
            [
                "--model",
                str(model_dir),
                "--train_file",
                str(train_file),
                "--lbd",
                "0.5",
                "--predictors",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--attn_implementation",
                "sdpa",
                "--output_dir",
                str(tmp_path / "unused"),
                "--batches",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "λ‖∇L_JEPA‖ ÷ ‖∇L_LM‖" in text and "median" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 and all(r["pairs"] >= 1 for r in rows)
    assert not (tmp_path / "unused").exists()  # measures only: nothing written


def test_lbd_zero_is_refused(model_dir, train_file, tmp_path):
    gb = _module()
    with pytest.raises(SystemExit, match="--lbd must be > 0"):
        gb.main(
            [
                "--model",
                str(model_dir),
                "--train_file",
                str(train_file),
                "--lbd",
                "0",
                "--output_dir",
                str(tmp_path / "unused"),
            ]
        )
