"""Conversion of every input format to a prepared record (step_jepa.data.formats)."""

from __future__ import annotations

import pytest
from conftest import assert_prepared, lines, skip_reason

from step_jepa.data import formats, records
from step_jepa.data.formats import convert_line

# ---------------------------------------------------------------------------- formats


def test_gsm8k_annotations_commas_and_final_step():
    g1, g2, g3 = lines("gsm_format.jsonl")
    rec = convert_line(g1, id="g1")
    assert rec["steps"] == [
        "Priya packed 48/2 = 24 jars in July.",
        "Priya packed 48+24 = 72 jars altogether in June and July.",
        "The final answer is \\boxed{72}.",
    ]
    assert rec["answer"] == "72" and rec["id"] == "g1"
    assert convert_line(g2)["answer"] == "1000"
    assert convert_line(g2)["steps"][-1] == "The final answer is \\boxed{1000}."
    kept = convert_line(g3, keep_annotations=True)
    assert "<<12/60=0.2>>" in kept["steps"][0]
    assert "<<" not in convert_line(g3)["messages"][2]["content"]
    for obj in (g1, g2, g3):
        assert_prepared(convert_line(obj))


def test_gsm8k_without_final_answer_is_skipped():
    assert skip_reason({"question": "Q", "answer": "1 + 1 = 2"}) == "no final answer"
    assert skip_reason({"question": "Q", "answer": "1 + 1 = 2\n####"}) == "empty answer"


def test_deepseek_think_markers_titles_and_boxed():
    d1, d2, d3 = lines("deepseek.jsonl")
    r1 = convert_line(d1)
    # The think block is dropped because an answer follows it; bold markers go, the title stays.
    assert r1["steps"] == ["Count the apples: 3 * 4 = 12.", "Subtract the eaten ones\n12 - 2 = 10.", "\\boxed{10}"]
    r2 = convert_line(d2)
    # Everything was inside <think>: then the thinking is the solution.
    assert r2["steps"][0] == "Add the ones: 5 + 7 = 12." and r2["steps"][-1].endswith("\\boxed{42}.")
    r3 = convert_line(d3)
    # Empty ground_truth falls back to "answer"; "1." / "### Step 3:" markers and the --- rule go;
    # no \boxed in the response, so a final step is appended.
    assert r3["answer"] == "2400"
    assert r3["steps"] == [
        "Pens per day: 1200.",
        "Two days: 1200 * 2 = 2400.",
        "Conclude\nSo the shop sells 2400 pens.",
        "The final answer is \\boxed{2400}.",
    ]
    for r in (r1, r2, r3):
        assert_prepared(r)


def test_deepseek_answer_checks():
    ok, wrong, float_box, gsm_answer = lines("deepseek_cases.jsonl")
    assert skip_reason(wrong) == "answer mismatch"
    assert convert_line(float_box)["answer"] == "9"  # \boxed{9.0} matches ground truth 9 (an int)
    # A GSM8K-style solution in "answer" supplies the truth when ground_truth is missing.
    rec = convert_line(gsm_answer)
    assert rec["answer"] == "9" and rec["steps"][-1] == "The final answer is \\boxed{9}."
    no_truth = {"question": "Q", "deepseek_response": "a\n\nb"}
    assert skip_reason(no_truth) == "no final answer"
    boxed_only = {"question": "Q", "deepseek_response": "a\n\nso \\boxed{1,500}"}
    assert convert_line(boxed_only)["answer"] == "1500"


def test_step_marker_variants():
    strip = formats._strip_marker
    assert strip("**Step 1:** Add.") == "Add."
    assert strip("**Step 2: Compute the total** It is 5.") == "Compute the total: It is 5."
    assert strip("**Step 2: Compute the total**\nIt is 5.") == "Compute the total\nIt is 5."
    assert strip("Step 3: Multiply.") == "Multiply."
    assert strip("## Step 4 - Check") == "Check"
    assert strip("2. Subtract.") == "Subtract."
    assert strip("3.5 hours pass.") == "3.5 hours pass."  # a decimal is not a list marker


def test_chat_system_prompt_and_answer():
    c1, c2 = lines("chat.jsonl")
    r1 = convert_line(c1, system_prompt="Given prompt.")
    assert r1["messages"][0]["content"] == "Given prompt."  # inserted: the chat had none
    assert r1["answer"] == "14" and r1["total_steps"] == 3
    r2 = convert_line(c2, system_prompt="Given prompt.")
    assert r2["messages"][0]["content"] == "You are terse."  # the chat's own system is kept
    assert r2["id"] == "chat-own-system"


@pytest.mark.parametrize(
    "line, reason",
    [
        (2, "no assistant turn"),
        (3, "no user turn"),
        (4, "malformed messages"),
        (5, "multi-turn conversation"),
        (7, "fewer than min steps"),
    ],
)
def test_chat_bad_cases(line, reason):
    assert skip_reason(lines("chat_cases.jsonl")[line - 1]) == reason


def test_chat_without_boxed_is_kept_with_empty_answer():
    rec = convert_line(lines("chat_cases.jsonl")[5])
    assert rec["answer"] == "" and rec["total_steps"] == 3


def test_prepared_round_trip_and_consistency():
    for rec in lines("prepared.jsonl"):
        assert convert_line(rec) == rec
    p1 = lines("prepared.jsonl")[0]
    assert skip_reason(dict(p1, steps=["something else", "x"])) == "inconsistent record"
    assert skip_reason(dict(p1, total_steps=5)) == "inconsistent record"
    assert skip_reason(dict(p1, steps="6 * 7 = 42.")) == "non-string field"
    assert skip_reason(dict(p1, answer=None)) == "missing field"


def test_auto_detection_and_forced_formats():
    g1 = lines("gsm_format.jsonl")[0]
    assert skip_reason(g1, fmt="deepseek") == "missing field"
    assert skip_reason(g1, fmt="chat") == "missing field"
    assert skip_reason({"text": "hi"}) == "unknown format"
    assert skip_reason(["not", "a", "dict"]) == "not a json object"
    with pytest.raises(ValueError):
        convert_line(g1, fmt="csv")


def test_min_steps_and_min_step_chars():
    one = {"question": "What is 5?", "answer": "#### 5"}
    assert skip_reason(one) == "fewer than min steps"  # the converter default is 2
    assert convert_line(one, min_steps=1)["total_steps"] == 1
    short = {"question": "Q", "answer": "So:\n1 + 1 = 2\nok\n#### 2"}
    assert convert_line(short)["total_steps"] == 4
    merged = convert_line(short, min_step_chars=5)
    # Short fragments are merged (never dropped), so the assistant text keeps every word.
    assert merged["steps"] == ["So:\n1 + 1 = 2", "ok\nThe final answer is \\boxed{2}."]
    assert records.merge_short_steps(["a", "b"], 10) == ["a\nb"]


def test_ids_from_object_argument_or_content():
    c1 = lines("chat.jsonl")[0]
    assert convert_line(dict(c1, id=17))["id"] == "17"
    assert convert_line(c1, id="given")["id"] == "given"
    assert convert_line(c1)["id"] == convert_line(c1)["id"].strip() != ""
    assert skip_reason(dict(c1, id="")) == "empty field"
    assert skip_reason(dict(c1, id=[1])) == "non-string field"
