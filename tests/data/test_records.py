"""The prepared-record schema, step cleaning and skip reasons (step_jepa.data.records, step_jepa.data.answers.last_boxed)."""

from __future__ import annotations

import pytest
from conftest import assert_prepared

from step_jepa.data import answers
from step_jepa.data.records import DEFAULT_SYSTEM_PROMPT, Skip, make_record

# ---------------------------------------------------------------------------- records & helpers


def test_make_record_keeps_steps_free_of_blank_lines():
    rec = make_record("x", "  Q?  ", ["a\r\n\r\nb  ", "   ", "c\n\n\n\nd", "\\boxed{1}"], "1")
    assert rec["steps"] == ["a\nb", "c\nd", "\\boxed{1}"]
    assert rec["messages"][0]["content"] == DEFAULT_SYSTEM_PROMPT
    assert rec["messages"][1]["content"] == "Q?"
    assert_prepared(rec)
    with pytest.raises(ValueError):
        make_record("x", "Q", [" ", ""], "1")


def test_last_boxed_handles_nested_braces_and_truncation():
    assert answers.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert answers.last_boxed("\\boxed{7} then \\boxed{8") == "7"  # cut-off generation
    assert answers.last_boxed("no box") is None


def test_skip_rejects_unknown_reasons():
    with pytest.raises(ValueError):
        Skip("something new")
