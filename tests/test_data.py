"""load_records (step_jepa.data), and the names the old data/evaluate modules re-export."""

from __future__ import annotations

from conftest import FIX

from step_jepa.data import load_records
from step_jepa.records import DEFAULT_SYSTEM_PROMPT


def test_load_records_system_prompt_override():
    default, _ = load_records(FIX / "chat.jsonl")
    assert [r["messages"][0]["content"] for r in default] == [DEFAULT_SYSTEM_PROMPT, "You are terse."]
    forced, _ = load_records(FIX / "chat.jsonl", system_prompt="S")
    assert [r["messages"][0]["content"] for r in forced] == ["S", "S"]


def test_old_module_names_still_import():
    """The data layer and eval were split (issue #15); the names users import from the old modules stay."""
    from step_jepa import answers, data, evaluate, formats, generation, inputs, prepare, records

    for name, home in [("DEFAULT_SYSTEM_PROMPT", records), ("make_record", records), ("final_answer_step", records),
                       ("DataError", records), ("Skip", records), ("SKIP_REASONS", records),
                       ("convert_line", formats), ("FORMATS", formats), ("Report", inputs),
                       ("iter_input_files", inputs), ("prepare", prepare), ("split_dev", prepare),
                       ("add_cli", prepare), ("last_boxed", answers), ("clean_answer", answers)]:
        assert getattr(data, name) is getattr(home, name), name
    for name, home in [("answers_match", answers), ("extract_answer", answers), ("normalize_answer", answers),
                       ("generate", generation), ("GenResult", generation), ("encode_prompts", generation),
                       ("stop_token_ids", generation), ("plan_batches", generation)]:
        assert getattr(evaluate, name) is getattr(home, name), name
