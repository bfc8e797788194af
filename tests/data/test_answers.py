"""Answer extraction, normalisation and matching (step_jepa.data.answers)."""

from __future__ import annotations

import pytest

from step_jepa.data.answers import answers_match, extract_answer, normalize_answer

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


@pytest.mark.parametrize(
    "pred,gold,same",
    [
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
    ],
)
def test_answers_match(pred, gold, same: bool) -> None:
    assert answers_match(pred, gold) is same


def test_normalize_is_exact() -> None:
    assert normalize_answer("2/3") == "2/3"
    assert normalize_answer("0.1") == "0.1"
    assert normalize_answer("-0") == "0"
    assert normalize_answer("1/0") is None
    assert normalize_answer(None) is None
