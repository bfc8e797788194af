"""`--protocol lm-eval-gsm8k`: our reimplementation of lm-evaluation-harness's gsm8k task.

The real-harness checks run only where ``lm_eval`` is importable (``pip install 'step-jepa[lm-eval]'``)."""

from __future__ import annotations

import json

import pytest

from step_jepa.evaluation import lm_eval_gsm8k as lm

DOCS = [
    {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
    for i in range(12)
]

GENERATIONS = [
    " 3 + 4 = 7\n#### 7",
    " The answer is $1,200.",
    "#### -3.5",
    "no number here",
    " 12 apples and 5 pears",
    " 2+2=4 so 4.\n#### 4.",
    " #### 1,000\nQuestion: next",
    "####5",
    " it costs $18. \\boxed{18}",
    " 0.5 then 10,000,",
    "",
    " -7 or -8",
]


def test_prompt_format_and_fewshot_draws() -> None:
    shots = lm.fewshot_examples(3, DOCS, num_fewshot=5, seed=1234)
    assert all(len(s) == 5 for s in shots) and shots[0] != shots[1]
    assert lm.fewshot_examples(2, DOCS)[:2] == shots[:2]  # doc k gets the k-th draw: --limit keeps them
    ctx = lm.build_context(DOCS[0], shots[0])
    first = shots[0][0]
    assert ctx.startswith(f"Question: {first['question']}\nAnswer: {first['answer']}\n\nQuestion: ")
    assert ctx.endswith(f"\n\nQuestion: {DOCS[0]['question']}\nAnswer:") and ctx.count("Question:") == 6


def test_chat_variant_is_multiturn_with_the_system_instruction(tok_chatml) -> None:
    shots = lm.fewshot_examples(1, DOCS)[0]
    ctx = lm.build_context(
        DOCS[0], shots, chat_template=lm.hf_chat_template(tok_chatml), system_instruction="Solve it."
    )
    assert ctx.count("<|im_start|>user") == 6 and ctx.count("<|im_start|>assistant") == 6
    assert "Solve it." in ctx and ctx.rstrip().endswith("<|im_start|>assistant")


def test_filters_and_metric_by_hand() -> None:
    assert lm.strict_match(" 3 + 4 = 7\n#### 7") == "7"
    assert lm.strict_match("The answer is 7") == "[invalid]"
    assert lm.flexible_extract(" The answer is $1,200.") == "$1,200."
    assert lm.exact_match("$1,200.", "x\n#### 1200") and not lm.exact_match("[invalid]", "#### 7")
    assert lm.postprocess(" 5\n#### 5\n\nQuestion: more", lm.UNTIL) == " 5\n#### 5\n\n"


def test_evaluate_end_to_end_tiny_model(model_dir, tmp_path) -> None:
    import torch

    from step_jepa.models.loading import load_for_inference

    model, tok = load_for_inference(str(model_dir), dtype=torch.float32, device="cpu")
    s = lm.evaluate_lm_eval(model, tok, DOCS[:3], DOCS[3:], out_dir=tmp_path, max_new_tokens=5, progress=False)
    assert s["n"] == 3 and s["protocol"]["name"] == "lm-eval-gsm8k" and s["protocol"]["prompt"]["fewshot"] == 5
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert {"strict", "flexible", "correct", "correct_strict", "prompt"} <= rows[0].keys()


def test_cli_lm_eval_needs_a_fewshot_file(model_dir, tmp_path) -> None:
    from step_jepa.cli.main import main

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(d) + "\n" for d in DOCS[:2]))
    with pytest.raises(SystemExit, match="--fewshot_file"):
        main(["eval", "--model", str(model_dir), "--test_file", str(test), "--protocol", "lm-eval-gsm8k"])
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--test_file",
                str(test),
                "--protocol",
                "lm-eval-gsm8k",
                "--fewshot_file",
                str(train),
                "--max_new_tokens",
                "4",
                "--output_dir",
                str(tmp_path / "o"),
                "--no_progress",
            ]
        )
        == 0
    )


# ---------------------------------------------------------------------------- against the real lm_eval


def test_filters_and_metric_match_real_lm_eval() -> None:
    """The same generations through lm_eval's own RegexFilter/TakeFirst/exact_match and through ours."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    resps = [[g] for g in GENERATIONS]
    strict = list(TakeFirstFilter().apply(RegexFilter(regex_pattern=lm.STRICT_REGEX).apply(resps, DOCS), DOCS))
    flex = list(
        TakeFirstFilter().apply(RegexFilter(regex_pattern=lm.FLEXIBLE_REGEX, group_select=-1).apply(resps, DOCS), DOCS)
    )
    assert strict == [lm.strict_match(g) for g in GENERATIONS]
    assert flex == [lm.flexible_extract(g) for g in GENERATIONS]
    refs = [d["answer"] for d in DOCS]
    for preds in (strict, flex, ["7", "1200", "-3.5", "[invalid]", "5", "4", "1000", "5", "18", "10000", "", "-8"]):
        for p, r in zip(preds, refs + refs):
            theirs = exact_match_hf_evaluate([p], [r], regexes_to_ignore=list(lm.IGNORE_REGEXES), ignore_case=True)[
                "exact_match"
            ]
            assert bool(theirs) == lm.exact_match(p, r), (p, r)
    for g in GENERATIONS:  # the same stop-string cut
        from lm_eval.models.utils import postprocess_generated_text

        assert postprocess_generated_text(g, list(lm.UNTIL), None) == lm.postprocess(g, lm.UNTIL)


def test_fewshot_sampler_matches_real_lm_eval() -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.api.samplers import ContextSampler

    sampler = ContextSampler(list(DOCS), rnd=None).set_rnd(1234)  # what evaluator.set_fewshot_seed does
    theirs = [sampler.sample(n=5, eval_doc=None) for _ in range(4)]
    assert theirs == lm.fewshot_examples(4, DOCS, 5, 1234)
