"""Scoring, result files and the `step-jepa eval` CLI (step_jepa.evaluation.evaluate)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from step_jepa.cli.eval import default_output_dir
from step_jepa.evaluation import decode as gen
from step_jepa.evaluation import evaluate as ev
from step_jepa.models.environment import device_name

# --------------------------------------------------------------------------------------------------------
# evaluate()
# --------------------------------------------------------------------------------------------------------

SUMMARY_KEYS = {
    "accuracy",
    "n",
    "correct",
    "no_answer",
    "no_answer_rate",
    "errors",
    "mean_output_tokens",
    "generation_seconds",
    "generated_tokens_per_s",
    "max_new_tokens",
    "model",
    "device",
    "dtype",
    "device_name",
    "finished_utc",
}


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_end_to_end_tiny_model(tok, problems, tmp_path) -> None:
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok)).eval()
    summary = ev.evaluate(model, tok, problems, out_dir=tmp_path, max_new_tokens=8, progress=False)
    assert SUMMARY_KEYS <= summary.keys()
    assert "versions" not in summary and "torch" in summary["protocol"]["versions"]  # recorded once
    assert summary["n"] == len(problems)
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["errors"] == 0 and summary["device"] == "cpu" and summary["dtype"] == "float32"
    assert summary["device_name"] == device_name("cpu")
    rows = _read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["id"] for r in rows] == [p["id"] for p in problems]
    assert set(rows[0]) == {"id", "question", "output", "extracted", "gold", "correct", "tokens", "error"}
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == len(problems)
    assert summary["no_answer"] == sum(r["extracted"] is None for r in rows)


def test_evaluate_scores_and_counts_every_example(tok, problems, tmp_path, monkeypatch) -> None:
    """Correct, wrong, unanswered and failed examples: all in the denominator, only correct ones count."""
    outputs = [
        gen.GenResult(f"Some steps.\n\nThe final answer is \\boxed{{{problems[0]['answer']}}}.", 20),
        gen.GenResult(f"#### {problems[1]['answer']}", 5),
        gen.GenResult("The final answer is \\boxed{-999999}.", 9),
        gen.GenResult("I am not sure.", 6),
        gen.GenResult("", 0, error="RuntimeError: boom"),
    ]
    monkeypatch.setattr(gen, "generate_ids", lambda *a, **k: outputs)
    summary = ev.evaluate(_FakeModel(), tok, problems[:5], out_dir=tmp_path, progress=False)
    assert (summary["n"], summary["correct"], summary["no_answer"], summary["errors"]) == (5, 2, 1, 1)
    assert summary["accuracy"] == pytest.approx(0.4)
    assert summary["no_answer_rate"] == pytest.approx(0.2)
    rows = _read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["correct"] for r in rows] == [True, True, False, False, False]
    assert rows[4]["error"] == "RuntimeError: boom"


def test_evaluate_error_path_counted_wrong(tok, problems, tmp_path, monkeypatch) -> None:
    from step_jepa.models.tiny import build_tiny_model

    model = build_tiny_model(len(tok)).eval()

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failure")

    monkeypatch.setattr(gen, "_decode_batch", broken)
    summary = ev.evaluate(model, tok, problems[:3], out_dir=tmp_path, max_new_tokens=4, progress=False)
    assert (summary["n"], summary["errors"], summary["correct"], summary["accuracy"]) == (3, 3, 0, 0.0)


def test_system_prompt_policy(problems) -> None:
    own = ev.build_prompts(problems[:1])[0]
    assert own[0] == problems[0]["messages"][0] and own[1]["role"] == "user"
    assert ev.build_prompts(problems[:1], "Be brief.")[0][0]["content"] == "Be brief."
    assert [m["role"] for m in ev.build_prompts(problems[:1], "")[0]] == ["user"]


class _FakeModel(torch.nn.Module):
    """Just enough of a model for the summary (device, dtype, name) when generation is stubbed."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = argparse.Namespace(_name_or_path="fake")


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    from step_jepa.models.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _parse(argv: list[str]) -> argparse.Namespace:
    from step_jepa.cli.main import build_parser

    return build_parser(argv).parse_args(argv)


def test_cli_generated_problems(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = _parse(
        [
            "eval",
            "--model",
            str(model_dir),
            "--generate",
            "5",
            "--seed",
            "1",
            "--max_new_tokens",
            "6",
            "--output_dir",
            str(out),
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--no_progress",
        ]
    )
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 5 and summary["max_new_tokens"] == 6 and summary["model"] == str(model_dir)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5
    assert "accuracy" in capsys.readouterr().out


def test_cli_raw_gsm8k_file_with_limit(model_dir, tmp_path) -> None:
    raw = tmp_path / "test.jsonl"
    lines = [
        {
            "question": f"Tom has {i} apples and buys 2 more. How many now?",
            "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}",
        }
        for i in range(4)
    ]
    raw.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    args = _parse(
        [
            "eval",
            "--model",
            str(model_dir),
            "--test_file",
            str(raw),
            "--limit",
            "3",
            "--max_new_tokens",
            "4",
            "--output_dir",
            str(out),
            "--device",
            "cpu",
            "--no_progress",
            "--batch_size",
            "2",
            "--lenient",
        ]
    )
    assert args.func(args) == 0
    rows = _read_jsonl(out / "predictions.jsonl")
    assert [r["gold"] for r in rows] == ["2", "3", "4"]
    assert json.loads((out / "summary.json").read_text())["lenient"] is True


def test_cli_requires_one_source(model_dir) -> None:
    with pytest.raises(SystemExit):
        _parse(["eval", "--model", str(model_dir)])
    with pytest.raises(SystemExit):
        _parse(["eval", "--model", str(model_dir), "--generate", "2", "--test_file", "x.jsonl"])


def test_cli_dataset_error_is_clear(model_dir, monkeypatch) -> None:
    """--dataset without network (or without `datasets`) ends with a message, not a traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    args = _parse(["eval", "--model", str(model_dir), "--dataset", "openai/gsm8k"])
    with pytest.raises(SystemExit, match="datasets"):
        args.func(args)


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("run/final", "run/eval-gsm"),  # a run's final model: results in the run dir
        ("run/checkpoint-4", "run/eval-checkpoint-4-gsm"),  # parent holds step_jepa_config.yaml
        ("other/final", "other/eval-gsm"),  # named final/: a run dir even without its config
        ("plain-model", "eval/plain-model-gsm"),
    ],
)
def test_default_output_dir_is_outside_the_model(tmp_path, monkeypatch, rel, expected) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "step_jepa_config.yaml").write_text("lbd: 0.1\n")
    assert default_output_dir(rel, "gsm") == Path(expected)
    assert default_output_dir("HuggingFaceTB/SmolLM2-135M-Instruct", "test") == Path("eval/SmolLM2-135M-Instruct-test")


def test_cli_default_output_dir_of_a_run(model_dir, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "final")
    monkeypatch.chdir(tmp_path)
    args = _parse(
        [
            "eval",
            "--model",
            str(run / "final"),
            "--generate",
            "2",
            "--max_new_tokens",
            "2",
            "--device",
            "cpu",
            "--no_progress",
        ]
    )
    assert args.func(args) == 0
    assert (run / "eval-generated2-s1000" / "summary.json").exists()
    assert sorted(p.name for p in (run / "final").iterdir()) == sorted(p.name for p in model_dir.iterdir())


def test_cli_empty_test_file_says_test_records(model_dir, tmp_path, capsys) -> None:
    from step_jepa.cli import main as cli

    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    assert cli.main(["eval", "--model", str(model_dir), "--test_file", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no usable test records" in err and "training" not in err
