"""Deterministic evaluation: the same predictions at any batch budget (fp32), CUDA graphs = loop,
and the protocol recorded in summary.json."""

from __future__ import annotations

import json

import pytest
import torch

from step_jepa.evaluation import decode as gen
from step_jepa.evaluation import evaluate as ev

PROTOCOL_KEYS = {
    "name",
    "dtype",
    "max_new_tokens",
    "max_batch_tokens",
    "batch_size",
    "cuda_graphs",
    "extraction",
    "prompt",
    "versions",
}


def _preds(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_predictions_at_two_batch_budgets_fp32(model_dir, problems, tmp_path) -> None:
    """One tiny checkpoint, fp32 on the CPU: the batch budget decides the batches, never an output."""
    from step_jepa.models.loading import load_for_inference

    model, tok = load_for_inference(str(model_dir), dtype=torch.float32, device="cpu")
    a = ev.evaluate(model, tok, problems, out_dir=tmp_path / "a", max_new_tokens=12, batch_size=1, progress=False)
    b = ev.evaluate(
        model,
        tok,
        problems,
        out_dir=tmp_path / "b",
        max_new_tokens=12,
        max_batch_tokens=100_000,
        batch_size=64,
        progress=False,
    )
    assert a["protocol"]["dtype"] == "float32" and a["protocol"]["batch_size"] == 1
    assert b["protocol"]["batch_size"] == 64 and b["protocol"]["max_batch_tokens"] == 100_000
    pa, pb = _preds(tmp_path / "a" / "predictions.jsonl"), _preds(tmp_path / "b" / "predictions.jsonl")
    assert [r["output"] for r in pa] == [r["output"] for r in pb]
    assert ev.protocol_differences(a["protocol"], b["protocol"]) == ([], [])


def test_summary_records_the_protocol(tok, problems, tmp_path) -> None:
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok)).eval()
    summary = ev.evaluate(
        model,
        tok,
        problems[:3],
        out_dir=tmp_path,
        max_new_tokens=6,
        progress=False,
        lenient=True,
        system_prompt="Be brief.",
    )
    saved = json.loads((tmp_path / "summary.json").read_text())
    p = saved["protocol"]
    assert PROTOCOL_KEYS <= p.keys() and p == summary["protocol"]
    assert p["name"] == "step-jepa" and p["dtype"] == "float32" and p["max_new_tokens"] == 6
    assert p["batch_size"] == 16 and p["max_batch_tokens"] is None  # as used on the CPU
    assert p["cuda_graphs"] == {"asked": "auto", "used": False}  # auto: off on the CPU
    assert p["extraction"] == "step-jepa-lenient"
    assert p["prompt"]["system_prompt"] == "Be brief." and p["prompt"]["fewshot"] == 0
    assert p["prompt"]["chat_template"].startswith("tokenizer:")
    assert {"torch", "transformers", "step_jepa"} <= p["versions"].keys()


def test_protocol_differences_names_fields() -> None:
    base = {
        "name": "step-jepa",
        "dtype": "bfloat16",
        "max_batch_tokens": 10,
        "cuda_graphs": {"asked": True, "used": True},
        "prompt": {"fewshot": 0},
        "versions": {"torch": "1"},
    }
    other = {
        **base,
        "max_batch_tokens": 20,
        "prompt": {"fewshot": 5},
        "versions": {"torch": "2"},
        "cuda_graphs": {"asked": "auto", "used": True},
    }
    assert ev.protocol_differences(base, other) == (["max_batch_tokens", "prompt.fewshot"], ["versions.torch"])
    assert ev.protocol_differences(None, None) == ([], [])
    assert "unknown" in ev.protocol_differences(None, base)[0][0]


def test_cli_defaults_are_fp32_and_auto_graphs(model_dir, tmp_path) -> None:
    from step_jepa.cli.main import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--generate",
                "3",
                "--max_new_tokens",
                "4",
                "--output_dir",
                str(out),
                "--no_progress",
            ]
        )
        == 0
    )
    p = json.loads((out / "summary.json").read_text())["protocol"]
    assert p["dtype"] == "float32" and p["cuda_graphs"]["asked"] == "auto"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_and_loop_decoding_identical_fp32(tok, problems) -> None:
    """On a GPU in fp32, recorded-graph decoding and the plain loop give the same tokens."""
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok), seed=3, attn_implementation="sdpa").to("cuda", torch.float32).eval()
    prompts = [[{"role": "user", "content": p["messages"][1]["content"]}] for p in problems]
    stats: list[dict] = []
    graphs = gen.generate(model, tok, prompts, max_new_tokens=40, progress=False, cuda_graphs=True, stats=stats)
    loop = gen.generate(model, tok, prompts, max_new_tokens=40, progress=False, cuda_graphs=False)
    assert any(s.get("captures", 0) > 0 for s in stats)  # graphs were really recorded
    assert [g.text for g in graphs] == [p.text for p in loop]
    assert [g.n_tokens for g in graphs] == [p.n_tokens for p in loop]
