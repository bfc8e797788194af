"""`step-jepa convert`: an offline model into the cache, optionally with a tokenizer from a directory.

The real conversion dequantizes a GGUF (Gemma 3: 1 GiB, minutes); here the GGUF's weights are a
tiny model and the tokenizers are made in the test, so only the command's own logic runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import step_jepa.models.sources as mm
from step_jepa.cli.main import main as cli_main


def _word_and_char_tokenizers():
    """A word-level tokenizer (a subword one's token count, roughly) and a character-level one
    (what transformers 5.17 rebuilt from the Gemma 3 GGUF)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(mm.TOKENIZER_PROBE.replace(",", " ,").replace(".", " .").split()))
    word = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words, ",", "."])}, unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    chars = sorted(set(mm.TOKENIZER_PROBE))
    char = Tokenizer(models.BPE({c: i for i, c in enumerate(["<unk>", *chars])}, merges=[], unk_token="<unk>"))
    return (
        PreTrainedTokenizerFast(tokenizer_object=word, unk_token="<unk>"),
        PreTrainedTokenizerFast(tokenizer_object=char, unk_token="<unk>"),
    )


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path: Path):
    """An empty cache, a 'GGUF' that exists, and its weights a tiny model (no dequantization)."""
    from step_jepa.models.tiny import build_tiny_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STEP_JEPA_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(mm, "gguf_path", lambda m: gguf)
    monkeypatch.setattr(mm, "_dequantized_model", lambda path: build_tiny_model(64, seed=0))
    return tmp_path / "cache" / "models" / mm.offline_model("gemma3-270m").cached_name


def test_convert_with_a_tokenizer_directory(fake_gguf, tmp_path, capsys):
    from transformers import AutoTokenizer

    word, char = _word_and_char_tokenizers()
    good, bad = tmp_path / "tok_good", tmp_path / "tok_bad"
    word.save_pretrained(good)
    char.save_pretrained(bad)

    # A character-level tokenizer is refused, and nothing is written.
    assert cli_main(["convert", "gemma3-270m", "--tokenizer", str(bad)]) == 2
    assert "into 94 tokens" in capsys.readouterr().err and not fake_gguf.exists()

    assert cli_main(["convert", "gemma3-270m", "--tokenizer", str(good)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(fake_gguf)
    tok = AutoTokenizer.from_pretrained(fake_gguf)
    assert tok.chat_template == mm.GEMMA3_CHAT_TEMPLATE  # the tokenizer had none: Gemma's is added
    assert len(tok("Natalia sold clips")["input_ids"]) <= 4
    source = json.loads((fake_gguf / "step_jepa_source.json").read_text())
    assert source["tokenizer"] == f"from {good.resolve()}" and "GEMMA3_CHAT_TEMPLATE" in source["chat_template"]
    assert mm.resolve_model_path("gemma3-270m") == str(fake_gguf)  # the cached copy is what --model finds

    # Again: the copy is kept (a new tokenizer needs --force); a bad tokenizer with --force keeps it too.
    assert cli_main(["convert", "gemma3-270m"]) == 0
    assert "already converted" in capsys.readouterr().out
    assert cli_main(["convert", "gemma3-270m", "--tokenizer", str(good)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["convert", "gemma3-270m", "--tokenizer", str(bad), "--force"]) == 2
    assert (fake_gguf / "config.json").exists()
    assert cli_main(["convert", "smollm2-135m", "--tokenizer", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_convert_refuses_an_unknown_model(capsys):
    assert cli_main(["convert", "no-such/model"]) == 2
    err = capsys.readouterr().err
    assert "not an offline model" in err and "gemma3-270m" in err
