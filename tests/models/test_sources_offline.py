"""Models resolve for library users as for the CLI (`load_model`), and an unreachable hub is given up
on in seconds with a message that says what to do."""

from __future__ import annotations

import time

import pytest

from step_jepa.models.sources import ModelNotFound, resolve_model_path, weights_source


def test_load_model_gives_the_training_model_and_tokenizer(model_dir):
    import step_jepa

    model, tok = step_jepa.load_model(str(model_dir), predictors=2)
    assert tok.is_fast and tok.pad_token_id is not None
    assert "<|predictor_2|>" in tok.get_vocab() and model.get_input_embeddings().weight.shape[0] == len(tok)
    assert weights_source(str(model_dir))["kind"] == "local"


def test_unreachable_hub_fails_in_seconds_saying_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("STEP_JEPA_CACHE", str(tmp_path))
    (tmp_path / "models" / "Some-Copy").mkdir(parents=True)
    (tmp_path / "models" / "Some-Copy" / "config.json").write_text("{}")
    # nothing listens on port 9 of localhost: refused at once (a network that drops: the probe's timeout)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound) as e:
        resolve_model_path("nobody/no-such-model")
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert (
        "http://127.0.0.1:9 unreachable" in msg
        and "HF_HUB_OFFLINE=1" in msg
        and str(tmp_path / "models" / "Some-Copy") in msg
    )


def test_hub_probe_gives_up_after_its_timeout(monkeypatch):
    """A hub that accepts the connection and never answers (a stalling proxy or firewall): given up
    on after the probe's timeout, not after the hub client's minute of retries."""
    import socket

    from step_jepa.models.sources import hub_reachable

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # connections complete in the kernel's backlog; nothing ever reads or answers
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
    t0 = time.perf_counter()
    try:
        assert "waited at most 0.5 s" in hub_reachable(timeout=0.5)
    finally:
        srv.close()
    assert time.perf_counter() - t0 < 5


def test_offline_skips_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STEP_JEPA_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound, match=r"skipped \(HF_HUB_OFFLINE=1\)"):
        resolve_model_path("nobody/no-such-model")
