"""`prepare` and `eval` agree on what the same answer is, so prepare never drops a trace eval would accept."""

import pytest

from step_jepa.data.answers import answers_match
from step_jepa.data.formats import convert_line
from step_jepa.data.records import Skip


@pytest.mark.parametrize(
    "boxed,truth",
    [("\\frac{3}{4}", "0.75"), ("18 dollars", "18"), ("x = 5", "5"), ("1,000", "1000"), ("$12.50", "12.5")],
)
def test_equivalent_answers_are_kept(boxed, truth):
    assert answers_match(boxed, truth)
    obj = {
        "question": "Q?",
        "answer": truth,
        "ground_truth": truth,
        "deepseek_response": f"First step.\n\nSecond step.\n\n\\boxed{{{boxed}}}",
    }
    rec = convert_line(obj, "deepseek")
    assert rec["answer"] and len(rec["steps"]) >= 2


def test_different_answer_is_a_counted_mismatch():
    obj = {
        "question": "Q?",
        "answer": "7",
        "ground_truth": "7",
        "deepseek_response": "First step.\n\nSecond step.\n\n\\boxed{8}",
    }
    with pytest.raises(Skip) as e:
        convert_line(obj, "deepseek")
    assert e.value.reason == "answer mismatch"
