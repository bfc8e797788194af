"""The JEPA options are declared once (`step_jepa.method.options.JEPAOptions`): train's config,
the model and bench share that one declaration, and bench names its other options as train does."""

from __future__ import annotations

from dataclasses import fields

from step_jepa.bench.timing import BenchConfig
from step_jepa.method.options import JEPAOptions
from step_jepa.training.config import StepJEPAConfig

JEPA_FIELDS = {f.name for f in fields(JEPAOptions)}


def _declaring(cls: type, name: str) -> list[type]:
    return [k for k in cls.__mro__ if name in vars(k).get("__annotations__", {})]


def test_jepa_fields_are_declared_in_one_class():
    assert {"lbd", "jepa_loss", "jepa_target", "stp_lbd", "predictors", "pairs", "jepa_mode"} <= JEPA_FIELDS
    for cls in (StepJEPAConfig, BenchConfig):
        assert issubclass(cls, JEPAOptions)
        for name in JEPA_FIELDS:
            assert _declaring(cls, name) == [JEPAOptions], (cls.__name__, name)
            # the same Field object: same default, help and choices
            assert cls.__dataclass_fields__[name] is JEPAOptions.__dataclass_fields__[name]


def test_the_model_reads_the_config_itself():
    import torch

    from step_jepa.method.model import StepJEPAModel

    lm = torch.nn.Module()
    lm.get_input_embeddings = lambda: torch.nn.Embedding(4, 8)
    cfg = StepJEPAConfig(jepa_predictor_head="mlp", report_to="none", use_cpu=True)
    assert StepJEPAModel(lm, cfg).options is cfg and StepJEPAModel(lm, cfg).head is not None
    assert StepJEPAModel(lm, JEPAOptions()).head is None


def test_bench_flags_are_named_as_trains():
    train = {f.name for f in fields(StepJEPAConfig)}
    shared = {
        "attn_implementation",
        "learning_rate",
        "torch_compile",
        "torch_compile_scope",
        "per_device_train_batch_size",
        "max_length",
        "seed",
        "model",
    }
    bench = {f.name for f in fields(BenchConfig)}
    assert shared <= bench and JEPA_FIELDS <= bench
    assert not bench & {"attn", "lr", "compile", "compile_scope", "batch_size"}
    # bench's own options (no train counterpart) are only these
    assert bench - train == {
        "data",
        "n_batches",
        "steps",
        "warmup",
        "dtype",
        "device",
        "variants",
        "pack_tokens",
        "mem_steps",
        "threads",
        "rounds",
        "profile_dir",
        "profile_steps",
    }


def test_jepa_ranges_are_checked_once_for_every_user():
    import pytest

    for make in (
        lambda: JEPAOptions(predictors=0).validate(),
        lambda: BenchConfig(predictors=0).validate(),
        lambda: StepJEPAConfig(predictors=0, report_to="none", use_cpu=True),
    ):
        with pytest.raises(ValueError, match="--predictors must be >= 1"):
            make()
