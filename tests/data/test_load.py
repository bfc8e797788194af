"""load_records (step_jepa.data.load): reading a training or test file back."""

from __future__ import annotations

from conftest import FIX

from step_jepa.data.load import load_records
from step_jepa.data.records import DEFAULT_SYSTEM_PROMPT


def test_load_records_system_prompt_override():
    default, _ = load_records(FIX / "chat.jsonl")
    assert [r["messages"][0]["content"] for r in default] == [DEFAULT_SYSTEM_PROMPT, "You are terse."]
    forced, _ = load_records(FIX / "chat.jsonl", system_prompt="S")
    assert [r["messages"][0]["content"] for r in forced] == ["S", "S"]
