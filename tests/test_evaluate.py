"""Tests for step_jepa.evaluate: answer extraction, the lean decode loop (== HF generate), scoring, CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from step_jepa import evaluate as ev
from step_jepa.evaluate import answers_match, extract_answer, normalize_answer

# --------------------------------------------------------------------------------------------------------
# Extraction + normalisation
# --------------------------------------------------------------------------------------------------------

# (model output, lenient, expected normalised answer or None)
EXTRACT_CASES = [
    ("The final answer is \\boxed{42}.", False, "42"),
    ("\\boxed{\\frac{1}{2}}", False, "0.5"),
    ("\\boxed{\\dfrac{3}{4}}", False, "0.75"),
    ("\\boxed{\\tfrac{1}{3}}", False, "1/3"),
    ("\\boxed{-\\frac{1}{2}}", False, "-0.5"),
    ("\\boxed{\\frac12}", False, "0.5"),
    ("First \\boxed{3} then \\boxed{7}.", False, "7"),
    ("\\boxed{1,000}", False, "1000"),
    ("\\boxed{1{,}000}", False, "1000"),
    ("\\boxed{\\$12.50}", False, "12.5"),
    ("\\boxed{$12.50}", False, "12.5"),
    ("\\boxed{12.0}", False, "12"),
    ("\\boxed{12.00}", False, "12"),
    ("\\boxed{-3}", False, "-3"),
    ("\\boxed{+5}", False, "5"),
    ("\\boxed{x = 5}", False, "5"),
    ("\\boxed{5 \\text{ apples}}", False, "5"),
    ("\\boxed{12 \\text{dollars}}", False, "12"),
    ("\\boxed{\\text{12}}", False, "12"),
    ("\\boxed{10\\%}", False, "10"),
    ("\\boxed{50%}", False, "50"),
    ("\\boxed{5 cm}", False, "5"),
    ("\\boxed{3/4}", False, "0.75"),
    ("\\boxed{0.333}", False, "0.333"),
    ("\\boxed{ 18 }", False, "18"),
    ("\\boxed{{18}}", False, "18"),
    ("\\boxed{\\mathbf{7}}", False, "7"),
    ("\\boxed 5", False, "5"),
    ("\\fbox{9}", False, "9"),
    ("\\boxed{}", False, None),
    ("\\boxed{4} and finally \\boxed{}", False, "4"),
    ("\\boxed{12", False, None),  # truncated: never closed
    ("\\boxed{abc}", False, None),
    ("She has 3 apples. #### 72", False, "72"),
    ("#### 1,234", False, "1234"),
    ("#### $5", False, "5"),
    ("#### 5\n#### 6", False, "6"),
    ("#### 9 \\boxed{10}", False, "10"),  # boxed beats ####
    ("The answer is 17.", False, None),
    ("The answer is 17.", True, "17"),
    ("3 + 4 = 7 so -2.5 remains", True, "-2.5"),
    ("It costs $1,500 in total.", True, "1500"),
    ("no numbers here", True, None),
    ("", False, None),
    ("The final answer is \\boxed{\\left(4\\right)}.", False, "4"),
    ("\\boxed{\u22128}", False, "-8"),
    ("\\boxed{0.50}", False, "0.5"),
    ("\\boxed{.5}", False, "0.5"),
]


@pytest.mark.parametrize("text,lenient,expected", EXTRACT_CASES)
def test_extract_and_normalize(text: str, lenient: bool, expected: str | None) -> None:
    assert normalize_answer(extract_answer(text, lenient=lenient)) == expected


def test_extract_returns_raw_text() -> None:
    assert extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("so #### 72") == "72"
    assert extract_answer("no answer") is None


@pytest.mark.parametrize("pred,gold,same", [
    ("\\frac{3}{4}", "0.75", True),
    ("3/4", "0.75", True),
    ("$1,000.00", "1000", True),
    ("12 dollars", "12", True),
    ("-3", "3", False),
    ("0.1", "1/10", True),
    ("1/3", "0.333", False),
    ("72", "72.0", True),
    (None, "5", False),
    ("abc", "5", False),
    ("5", "", False),
])
def test_answers_match(pred, gold, same: bool) -> None:
    assert answers_match(pred, gold) is same


def test_normalize_is_exact() -> None:
    assert normalize_answer("2/3") == "2/3"
    assert normalize_answer("0.1") == "0.1"
    assert normalize_answer("-0") == "0"
    assert normalize_answer("1/0") is None
    assert normalize_answer(None) is None


# --------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------


def test_plan_batches_budget_and_order() -> None:
    lengths = [5, 50, 20, 10, 40]
    batches = ev.plan_batches(lengths, max_new_tokens=10, max_batch_tokens=130, batch_size=None)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert batches[0][0] == 1  # longest first
    for b in batches:
        assert len(b) * (max(lengths[i] for i in b) + 10) <= 130 or len(b) == 1
    assert ev.plan_batches(lengths, 10, None, 2) == [[1, 4], [2, 3], [0]]
    assert ev.plan_batches(lengths, 10, None, None) == [[1, 4, 2, 3, 0]]


# --------------------------------------------------------------------------------------------------------
# Lean decode loop == HF generate
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    from step_jepa.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def problems():
    from step_jepa.generator import generate_problems

    return generate_problems(8, seed=3)


def _prompt_ids(tok, problems) -> list[list[int]]:
    prompts = ev.build_prompts(problems[:6])
    prompts[1][1]["content"] += " Please think about it very carefully before you answer."
    prompts[4][1]["content"] = "Hi"
    prompts[5] = prompts[5][1:]  # no system turn: a much shorter prompt
    return ev.encode_prompts(tok, prompts)


def _hf_generate(model, seqs, max_new, stops, pad) -> list[list[int]]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=list(stops), pad_token_id=pad)
    return ev._trim(out[:, width:].tolist(), set(stops))


def _staggered_stop(rows: list[list[int]]) -> int:
    """The generated token whose first occurrence differs most between rows: used as EOS, it makes
    rows finish at different steps (a random tiny model never emits its real EOS reliably)."""

    def first_positions(t: int) -> set[int]:
        return {row.index(t) if t in row else len(row) for row in rows}

    candidates = Counter(t for row in rows for t in row)
    return max(sorted(candidates), key=lambda t: len(first_positions(t)))


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("qwen2", "sdpa"), ("llama", "eager")])
def test_lean_decode_matches_hf_generate(tok, problems, arch: str, attn: str) -> None:
    from step_jepa.tiny import build_tiny_model

    model = build_tiny_model(len(tok), arch=arch, seed=1, attn_implementation=attn).eval()
    seqs = _prompt_ids(tok, problems)
    assert len({len(s) for s in seqs}) >= 3  # left padding really happens
    pad = tok.pad_token_id
    # 1) EOS never emitted: every row runs the full length.
    ref = _hf_generate(model, seqs, 24, [], pad)
    with torch.no_grad():
        assert ev._decode_batch(model, seqs, 24, [], pad) == ref
    # 2) A frequently generated token as "EOS": rows stop at different steps, finished rows are
    #    dropped from the batch (check_every=1 compacts as early as possible).
    stops = [_staggered_stop(ref)]
    ref = _hf_generate(model, seqs, 24, stops, pad)
    lengths = [len(r) for r in ref]
    assert len(set(lengths)) > 1 and min(lengths) < 24
    for check_every in (1, 3, 8):
        with torch.no_grad():
            got = ev._decode_batch(model, seqs, 24, stops, pad, check_every=check_every)
        assert got == ref, check_every


def test_chunked_prefill_and_mask_paths_agree(tok, problems, monkeypatch) -> None:
    """Prefill split into row chunks, and the 2D-mask decode path, give the same tokens as the default."""
    from step_jepa.tiny import build_tiny_model

    model = build_tiny_model(len(tok), seed=2).eval()
    seqs = _prompt_ids(tok, problems)
    with torch.no_grad():
        whole = ev._decode_batch(model, seqs, 12, [], tok.pad_token_id)
        chunked = ev._decode_batch(model, seqs, 12, [], tok.pad_token_id, prefill_tokens=100)
        monkeypatch.setattr(ev, "_decode_mask", lambda model: (lambda m: m))
        mask_2d = ev._decode_batch(model, seqs, 12, [], tok.pad_token_id)
    assert chunked == whole == mask_2d


def test_generate_results_in_input_order(tok, problems) -> None:
    from step_jepa.tiny import build_tiny_model

    model = build_tiny_model(len(tok), seed=1).eval()
    prompts = ev.build_prompts(problems[:5])
    prompts[2][1]["content"] = "Hi"
    seqs = ev.encode_prompts(tok, prompts)
    stops = ev.stop_token_ids(model, tok)
    res = ev.generate(model, tok, prompts, max_new_tokens=10, batch_size=2, progress=False)
    assert len(res) == 5 and all(r.error is None for r in res)
    for r, s in zip(res, seqs):
        ref = _hf_generate(model, [s], 10, stops, tok.pad_token_id)[0]
        assert r.n_tokens == len(ref)
        body = ref[:-1] if ref and ref[-1] in stops else ref
        assert r.text == tok.decode(body, skip_special_tokens=True)


def test_stop_tokens_include_end_of_turn(tok) -> None:
    from step_jepa.tiny import build_tiny_model

    model = build_tiny_model(len(tok))
    stops = ev.stop_token_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops


def test_failing_batches_fall_back_to_single_examples(tok, problems, monkeypatch) -> None:
    """A batch that raises is split; only the example that fails alone is an error."""
    from step_jepa.tiny import build_tiny_model

    model = build_tiny_model(len(tok)).eval()
    prompts = ev.build_prompts(problems[:4])
    prompts[3][1]["content"] = "poison"
    poison = ev.encode_prompts(tok, prompts[3:])[0]
    real = ev._decode_batch
    calls = []

    def flaky(model, seqs, *args, **kwargs):
        calls.append(len(seqs))
        if any(list(s) == poison for s in seqs):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, seqs, *args, **kwargs)

    monkeypatch.setattr(ev, "_decode_batch", flaky)
    res = ev.generate(model, tok, prompts, max_new_tokens=4, batch_size=4, progress=False)
    assert [r.error is None for r in res] == [True, True, True, False]
    assert "out of memory" in res[3].error and res[3].n_tokens == 0
    assert calls[0] == 4 and 1 in calls


# --------------------------------------------------------------------------------------------------------
# evaluate()
# --------------------------------------------------------------------------------------------------------

SUMMARY_KEYS = {"accuracy", "n", "correct", "no_answer", "no_answer_rate", "errors", "mean_output_tokens",
                "generation_seconds", "generated_tokens_per_s", "max_new_tokens", "model", "device", "dtype",
                "versions"}


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_end_to_end_tiny_model(tok, problems, tmp_path) -> None:
    from step_jepa.tiny import build_tiny_model

    model = build_tiny_model(len(tok)).eval()
    summary = ev.evaluate(model, tok, problems, out_dir=tmp_path, max_new_tokens=8, progress=False)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["n"] == len(problems)
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["errors"] == 0 and summary["device"] == "cpu" and summary["dtype"] == "float32"
    rows = _read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["id"] for r in rows] == [p["id"] for p in problems]
    assert set(rows[0]) == {"id", "question", "output", "extracted", "gold", "correct", "tokens", "error"}
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == len(problems)
    assert summary["no_answer"] == sum(r["extracted"] is None for r in rows)


def test_evaluate_scores_and_counts_every_example(tok, problems, tmp_path, monkeypatch) -> None:
    """Correct, wrong, unanswered and failed examples: all in the denominator, only correct ones count."""
    outputs = [
        ev.GenResult(f"Some steps.\n\nThe final answer is \\boxed{{{problems[0]['answer']}}}.", 20),
        ev.GenResult(f"#### {problems[1]['answer']}", 5),
        ev.GenResult("The final answer is \\boxed{-999999}.", 9),
        ev.GenResult("I am not sure.", 6),
        ev.GenResult("", 0, error="RuntimeError: boom"),
    ]
    monkeypatch.setattr(ev, "generate", lambda *a, **k: outputs)
    summary = ev.evaluate(_FakeModel(), tok, problems[:5], out_dir=tmp_path, progress=False)
    assert (summary["n"], summary["correct"], summary["no_answer"], summary["errors"]) == (5, 2, 1, 1)
    assert summary["accuracy"] == pytest.approx(0.4)
    assert summary["no_answer_rate"] == pytest.approx(0.2)
    rows = _read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["correct"] for r in rows] == [True, True, False, False, False]
    assert rows[4]["error"] == "RuntimeError: boom"


def test_evaluate_error_path_counted_wrong(tok, problems, tmp_path, monkeypatch) -> None:
    from step_jepa.tiny import build_tiny_model

    model = build_tiny_model(len(tok)).eval()

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failure")

    monkeypatch.setattr(ev, "_decode_batch", broken)
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
    from step_jepa.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="step-jepa")
    ev.add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_generated_problems(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = _parse(["eval", "--model", str(model_dir), "--generate", "5", "--seed", "1", "--max_new_tokens", "6",
                   "--output_dir", str(out), "--dtype", "fp32", "--device", "cpu", "--no_progress"])
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 5 and summary["max_new_tokens"] == 6 and summary["model"] == str(model_dir)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5
    assert "accuracy" in capsys.readouterr().out


def test_cli_raw_gsm8k_file_with_limit(model_dir, tmp_path) -> None:
    raw = tmp_path / "test.jsonl"
    lines = [{"question": f"Tom has {i} apples and buys 2 more. How many now?",
              "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}"} for i in range(4)]
    raw.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    args = _parse(["eval", "--model", str(model_dir), "--test_file", str(raw), "--limit", "3",
                   "--max_new_tokens", "4", "--output_dir", str(out), "--device", "cpu", "--no_progress",
                   "--batch_size", "2", "--lenient"])
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


@pytest.mark.parametrize("rel, expected", [
    ("run/final", "run/eval-gsm"),  # a run's final model: results in the run dir
    ("run/checkpoint-4", "run/eval-checkpoint-4-gsm"),  # parent holds step_jepa_config.yaml
    ("other/final", "other/eval-gsm"),  # named final/: a run dir even without its config
    ("plain-model", "eval/plain-model-gsm"),
])
def test_default_output_dir_is_outside_the_model(tmp_path, monkeypatch, rel, expected) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "step_jepa_config.yaml").write_text("lbd: 0.1\n")
    assert ev.default_output_dir(rel, "gsm") == Path(expected)
    assert ev.default_output_dir("HuggingFaceTB/SmolLM2-135M-Instruct", "test") == Path(
        "eval/SmolLM2-135M-Instruct-test")


def test_cli_default_output_dir_of_a_run(model_dir, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "final")
    monkeypatch.chdir(tmp_path)
    args = _parse(["eval", "--model", str(run / "final"), "--generate", "2", "--max_new_tokens", "2",
                   "--device", "cpu", "--no_progress"])
    assert args.func(args) == 0
    assert (run / "eval-generated2-s1000" / "summary.json").exists()
    assert sorted(p.name for p in (run / "final").iterdir()) == sorted(p.name for p in model_dir.iterdir())


def test_cli_empty_test_file_says_test_records(model_dir, tmp_path, capsys) -> None:
    from step_jepa import cli

    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    assert cli.main(["eval", "--model", str(model_dir), "--test_file", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no usable test records" in err and "training" not in err
