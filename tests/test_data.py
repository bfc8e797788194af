"""Tests for the data layer: conversion of every input format, the bad-input corpus under
tests/fixtures/data, reports, prepare/load_records and the `prepare` CLI."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from step_jepa import data
from step_jepa.data import (
    DEFAULT_SYSTEM_PROMPT,
    DataError,
    Report,
    Skip,
    convert_line,
    iter_input_files,
    load_records,
    make_record,
    prepare,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "data"
GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def lines(name: str) -> list[dict]:
    return [json.loads(x) for x in (FIX / name).read_text(encoding="utf-8").splitlines() if x.strip()]


def assert_prepared(rec: dict) -> None:
    """The record contract every consumer relies on."""
    assert set(rec) == {"id", "messages", "steps", "total_steps", "answer"}
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["messages"][2]["content"] == "\n\n".join(rec["steps"])
    assert rec["total_steps"] == len(rec["steps"]) >= 1
    for step in rec["steps"]:
        assert step and step == step.strip() and "\n\n" not in step and "\r" not in step
    assert isinstance(rec["answer"], str) and isinstance(rec["id"], str)


def skip_reason(obj, **kw) -> str:
    with pytest.raises(Skip) as exc:
        convert_line(obj, **kw)
    assert exc.value.reason in data.SKIP_REASONS
    return exc.value.reason


def run_cli(argv: list[str]) -> int:
    """The real entry point, so error formatting and exit codes are the user's."""
    from step_jepa.cli import main

    return main(argv)


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
    assert data.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert data.last_boxed("\\boxed{7} then \\boxed{8") == "7"  # cut-off generation
    assert data.last_boxed("no box") is None


def test_skip_rejects_unknown_reasons():
    with pytest.raises(ValueError):
        Skip("something new")


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
    strip = data._strip_marker
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
    [(2, "no assistant turn"), (3, "no user turn"), (4, "malformed messages"),
     (5, "multi-turn conversation"), (7, "fewer than min steps")],
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
    assert data.merge_short_steps(["a", "b"], 10) == ["a\nb"]


def test_ids_from_object_argument_or_content():
    c1 = lines("chat.jsonl")[0]
    assert convert_line(dict(c1, id=17))["id"] == "17"
    assert convert_line(c1, id="given")["id"] == "given"
    assert convert_line(c1)["id"] == convert_line(c1)["id"].strip() != ""
    assert skip_reason(dict(c1, id="")) == "empty field"
    assert skip_reason(dict(c1, id=[1])) == "non-string field"


# ---------------------------------------------------------------------------- the bad-input corpus


@pytest.mark.parametrize(
    "name, line, reason",
    [
        ("invalid_json.jsonl", 2, "invalid json"),
        ("truncated.jsonl", 3, "invalid json"),
        ("bad_fields.jsonl", 2, "missing field"),
        ("chat_cases.jsonl", 2, "no assistant turn"),
        ("non_utf8.jsonl", 2, "not utf-8"),
        ("steps_cases.jsonl", 5, "no final answer"),
        ("duplicate_ids.jsonl", 3, "duplicate id"),
        ("deepseek_cases.jsonl", 2, "answer mismatch"),
    ],
)
def test_strict_loading_names_file_and_line(name, line, reason):
    with pytest.raises(DataError) as exc:
        load_records(FIX / name)
    assert str(exc.value).startswith(f"{FIX / name}:{line}: {reason}")


def test_truncated_last_line_says_so():
    with pytest.raises(DataError, match="looks truncated"):
        load_records(FIX / "truncated.jsonl")


@pytest.mark.parametrize(
    "name, kept, expected",
    [
        ("invalid_json.jsonl", 2, {2: "invalid json"}),
        ("truncated.jsonl", 2, {3: "invalid json"}),
        ("non_utf8.jsonl", 2, {2: "not utf-8"}),
        ("duplicate_ids.jsonl", 3, {3: "duplicate id"}),
        ("bad_fields.jsonl", 1, {2: "missing field", 3: "empty field", 4: "non-string field",
                                 5: "non-string field", 6: "unknown format", 7: "not a json object",
                                 8: "missing field"}),
        ("chat_cases.jsonl", 2, {2: "no assistant turn", 3: "no user turn", 4: "malformed messages",
                                 5: "multi-turn conversation", 7: "fewer than min steps"}),
        ("steps_cases.jsonl", 4, {5: "no final answer", 6: "empty answer", 7: "no final answer"}),
        ("unicode_math.jsonl", 3, {}),
        ("crlf.jsonl", 3, {}),
    ],
)
def test_skipping_counts_every_line(name, kept, expected):
    records, report = load_records(FIX / name, skip_invalid=True)
    assert len(records) == kept == report.written
    assert {line: reason for _, line, reason in report.skipped_lines} == expected
    assert report.lines_read == report.written + sum(report.skipped.values())
    for rec in records:
        assert_prepared(rec)


def test_crlf_file_matches_lf_file():
    def strip_ids(recs):
        return [{k: v for k, v in r.items() if k != "id"} for r in recs]

    assert strip_ids(load_records(FIX / "crlf.jsonl")[0]) == strip_ids(load_records(FIX / "gsm_format.jsonl")[0])


def test_windows_bom_and_crlf(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes((FIX / "crlf.jsonl").read_bytes().replace(b"{", b"\xef\xbb\xbf{", 1))
    records, report = load_records(path)
    assert len(records) == 3 and report.skipped == {}


def test_unicode_math_survives_prepare(tmp_path):
    out = tmp_path / "u.jsonl"
    prepare(FIX / "unicode_math.jsonl", out)
    text = out.read_text(encoding="utf-8")
    for s in ("√16", "½·4", "∑_{k=1}^{3} k²", "📐", "⇒"):
        assert s in text  # written as UTF-8, not \u escapes
    recs = [json.loads(x) for x in text.splitlines()]
    assert [r["answer"] for r in recs] == ["2", "14", "7"]


def test_one_megabyte_lines(tmp_path):
    big_response = "\n\n".join(f"Line {i}: {i} + 1 = {i + 1}. " + "x" * 1000 for i in range(1000))
    good = {"question": "Big?", "ground_truth": "1000", "deepseek_response": big_response}
    bad = json.dumps(good)[:-3]  # a 1 MB line cut short
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(good) + "\n" + bad + "\n" + json.dumps(dict(good, id="again")) + "\n")
    assert path.stat().st_size > 2_000_000
    records, report = load_records(path, skip_invalid=True)
    assert [r["total_steps"] for r in records] == [1001, 1001]
    assert report.skipped == {"invalid json": 1} and report.skipped_lines[0][1] == 2


def test_empty_file_is_a_clear_zero(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    report = prepare(FIX / "empty.jsonl", out)
    assert (report.lines_read, report.written, report.skipped) == (0, 0, {})
    assert out.read_text() == ""
    assert "no examples were written" in capsys.readouterr().out
    with pytest.raises(DataError, match="no usable training records"):
        load_records(FIX / "empty.jsonl")
    assert run_cli(["prepare", "--input", str(FIX / "empty.jsonl"), "--output", str(out)]) == 1
    assert "no examples were written" in capsys.readouterr().err


def test_blank_lines_are_not_records(tmp_path):
    g1 = json.dumps(lines("gsm_format.jsonl")[0])
    path = tmp_path / "blanks.jsonl"
    path.write_text(f"\n{g1}\n   \n\t\r\n{g1.replace('Priya', 'Pri')}\n\n")
    records, report = load_records(path)
    assert [r["id"] for r in records] == ["blanks-2", "blanks-5"]  # ids keep real line numbers
    assert (report.lines_read, report.blank_lines) == (2, 4)


def test_mixed_directory(tmp_path):
    files = iter_input_files(FIX / "mixed_dir")
    assert [f.relative_to(FIX / "mixed_dir").as_posix() for f in files] == [
        "a_gsm_format.jsonl", "c_chat.json", "nested/b_deepseek.jsonl", "nested/d_prepared.jsonl",
    ]
    out = tmp_path / "mixed.jsonl"
    report = prepare(FIX / "mixed_dir", out)
    assert report.written == 8 and report.skipped == {"invalid json": 1}
    assert report.skipped_lines == [(str(FIX / "mixed_dir/nested/d_prepared.jsonl"), 2, "invalid json")]
    assert report.blank_lines == 1 and report.lines_read == 9
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    # JSON-array elements are numbered by the line they start on; nested files keep their folder.
    assert ids[:4] == ["a_gsm_format-1", "a_gsm_format-3", "c_chat-2", "chat-own-system"]
    assert "nested/b_deepseek-1" in ids
    with pytest.raises(DataError, match=r"d_prepared\.jsonl:2: invalid json"):
        load_records(FIX / "mixed_dir")


def test_json_array_errors_point_at_the_element_line(tmp_path):
    c1 = lines("chat.jsonl")[0]
    no_assistant = {"messages": [{"role": "user", "content": "Q"}]}
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([c1, no_assistant], indent=1))
    starts = [n for n, text in enumerate(path.read_text().splitlines(), start=1) if text == " {"]
    line = starts[1]  # the second element, the bad one
    assert line > 2
    with pytest.raises(DataError, match=rf"arr\.json:{line}: no assistant turn"):
        load_records(path)


def test_iter_input_files_errors(tmp_path):
    assert iter_input_files(FIX / "gsm_format.jsonl") == [FIX / "gsm_format.jsonl"]
    with pytest.raises(DataError, match="no such file"):
        iter_input_files(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no \*\.jsonl or \*\.json files"):
        iter_input_files(tmp_path)


# ---------------------------------------------------------------------------- prepare & reports


def test_prepare_writes_records_and_report(tmp_path, capsys):
    out = tmp_path / "sub" / "out.jsonl"
    report = prepare(FIX / "bad_fields.jsonl", out)
    printed = capsys.readouterr().out
    saved = json.loads(Path(f"{out}.report.json").read_text())
    assert saved == report.to_dict()
    assert saved["lines_read"] == 8 == saved["written"] + sum(saved["skipped"].values())
    assert saved["skipped"] == {"missing field": 2, "non-string field": 2, "empty field": 1,
                                "not a json object": 1, "unknown format": 1}
    assert "non-string field" in printed and f"{FIX / 'bad_fields.jsonl'}:4: non-string field" in printed
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["bad_fields-1"]


def test_prepare_strict_stops_without_output(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"invalid_json\.jsonl:2: invalid json"):
        prepare(FIX / "invalid_json.jsonl", out, skip_invalid=False)
    assert list(tmp_path.iterdir()) == []  # neither output, temp file nor report


def test_prepare_min_steps_default_two_but_training_accepts_one(tmp_path):
    report = prepare(FIX / "steps_cases.jsonl", tmp_path / "o.jsonl")
    assert report.skipped["fewer than min steps"] == 1 and report.written == 3
    records, _ = load_records(FIX / "steps_cases.jsonl", skip_invalid=True)
    assert records[0]["total_steps"] == 1


def test_prepare_does_not_read_its_own_output(tmp_path):
    (tmp_path / "in.jsonl").write_text((FIX / "gsm_format.jsonl").read_text())
    for _ in range(2):  # the second run finds out.jsonl and its report inside the input dir
        report = prepare(tmp_path, tmp_path / "out.jsonl")
        assert report.written == 3 and report.lines_read == 3


def test_prepare_generate_and_files_share_unique_ids(tmp_path):
    report = prepare(FIX / "prepared.jsonl", tmp_path / "o.jsonl", generate=5, seed=7)
    ids = [json.loads(x)["id"] for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert ids == ["p-1", "p-2"] + [f"gen-7-{i}" for i in range(5)]
    assert report.lines_read == report.written == 7


def test_load_records_system_prompt_override():
    default, _ = load_records(FIX / "chat.jsonl")
    assert [r["messages"][0]["content"] for r in default] == [DEFAULT_SYSTEM_PROMPT, "You are terse."]
    forced, _ = load_records(FIX / "chat.jsonl", system_prompt="S")
    assert [r["messages"][0]["content"] for r in forced] == ["S", "S"]


def test_report_caps_details_but_not_counts(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n" * 1500 + json.dumps(lines("gsm_format.jsonl")[0]) + "\n")
    _, report = load_records(path, skip_invalid=True)
    assert report.skipped == {"invalid json": 1500}
    assert len(report.skipped_lines) == data.MAX_SKIPPED_DETAILS
    assert report.to_dict()["skipped_lines_truncated"] is True
    assert "and 1490 more" in report.format()


def test_report_format_and_invariant():
    r = Report()
    r.lines_read = 3
    r.add_written({"total_steps": 4})
    r.add_skip("f.jsonl", 2, "invalid json")
    assert not r.consistent
    r.add_skip("f.jsonl", 3, "invalid json")
    assert r.consistent
    text = r.format()
    assert "2  invalid json" in text and "f.jsonl:3: invalid json" in text and "4:1" in text


# ---------------------------------------------------------------------------- CLI


def test_cli_prepare_options(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    rc = run_cli(["prepare", "--input", str(FIX / "gsm_format.jsonl"), "--output", str(out),
                  "--keep_annotations", "--system_prompt", "SP", "--min_steps", "3"])
    assert rc == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 2  # the two-step example is below --min_steps 3
    assert "<<48/2=24>>" in recs[0]["steps"][0] and recs[0]["messages"][0]["content"] == "SP"
    assert "written:    2" in capsys.readouterr().out


def test_cli_strict_reports_file_and_line(tmp_path, capsys):
    rc = run_cli(["prepare", "--input", str(FIX / "non_utf8.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--strict"])
    assert rc == 2
    assert f"error: {FIX / 'non_utf8.jsonl'}:2: not utf-8" in capsys.readouterr().err


def test_cli_needs_a_source(capsys):
    assert run_cli(["prepare"]) == 2
    assert "--input, --dataset or --generate" in capsys.readouterr().err


def test_cli_dataset_without_datasets_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    rc = run_cli(["prepare", "--dataset", "openai/gsm8k", "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install" in err and "Traceback" not in err


def test_cli_dataset_hub_unreachable(tmp_path, capsys, monkeypatch):
    def load_dataset(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rc = run_cli(["prepare", "--dataset", "openai/gsm8k", "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "could not load dataset 'openai/gsm8k'" in err and "ConnectionError" in err


def test_dataset_rows_are_converted(tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return lines("gsm_format.jsonl") + [{"question": "Q", "answer": "no marker"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    report = prepare(None, tmp_path / "o.jsonl", dataset="openai/gsm8k", split="test")
    assert calls == [("openai/gsm8k", "main", "test")]  # gsm8k needs its "main" config
    assert report.written == 3 and report.skipped_lines == [("openai/gsm8k[test]", 4, "no final answer")]
    ids = [json.loads(x)["id"] for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert ids == ["openai/gsm8k-test-0", "openai/gsm8k-test-1", "openai/gsm8k-test-2"]


# ---------------------------------------------------------------------------- real GSM8K


@pytest.mark.parametrize("split, count", [("train", 7473), ("test", 1319)])
def test_real_gsm8k(tmp_path, split, count):
    src = GSM8K_DIR / f"{split}.jsonl"
    if not src.exists():
        pytest.skip(f"{src} not available")
    out = tmp_path / f"{split}.jsonl"
    report = prepare(src, out)
    assert report.written == count and report.skipped == {}
    records, loaded = load_records(out)
    assert len(records) == count and loaded.skipped == {}
    for rec in records:
        assert_prepared(rec)
        assert rec["steps"][-1] == f"The final answer is \\boxed{{{rec['answer']}}}."
        assert rec["answer"].lstrip("-").isdigit()  # commas normalised away
        assert "<<" not in rec["messages"][2]["content"]
    assert min(report.step_histogram) >= 2


def test_dev_fraction_split_is_seeded_and_disjoint(tmp_path):
    from step_jepa.data import split_dev
    from step_jepa.generator import generate_problems

    p = tmp_path / "t.jsonl"
    recs = generate_problems(50, seed=3)
    recs[0]["messages"][1]["content"] += " \u2028 odd separator"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    n_train, n_dev, dev = split_dev(p, 0.2, seed=0)
    train_ids = [json.loads(x)["id"] for x in p.read_text(encoding="utf-8").split("\n") if x]
    dev_ids = [json.loads(x)["id"] for x in dev.read_text(encoding="utf-8").split("\n") if x]
    assert (n_train, n_dev) == (40, 10) and len(train_ids) == 40 and len(dev_ids) == 10
    assert not set(train_ids) & set(dev_ids)
    assert set(train_ids) | set(dev_ids) == {r["id"] for r in recs}


# ---------------------------------------------------------------------------- ignored directory files


def test_directory_files_that_are_not_read_are_reported(tmp_path):
    """notes.txt and our own old report are left out of a directory, but never silently."""
    read, ignored = data.split_input_files(FIX / "mixed_dir")
    assert [f.name for f in read] == ["a_gsm_format.jsonl", "c_chat.json", "b_deepseek.jsonl", "d_prepared.jsonl"]
    assert sorted(f.name for f in ignored) == ["notes.txt", "old.jsonl.report.json"]
    out = tmp_path / "mixed.jsonl"
    report = prepare(FIX / "mixed_dir", out, skip_invalid=True)
    expected = sorted(str(f) for f in ignored)
    assert sorted(report.ignored_files) == expected
    assert "ignored 2 file(s) that are not .jsonl/.json input" in report.format()
    assert "notes.txt" in report.format()
    saved = json.loads(Path(f"{out}.report.json").read_text())
    assert sorted(saved["ignored_files"]) == expected
    _, loaded = load_records(FIX / "mixed_dir", skip_invalid=True)
    assert sorted(loaded.ignored_files) == expected


def test_single_file_input_ignores_nothing_and_hidden_files_are_not_listed(tmp_path):
    _, report = load_records(FIX / "gsm_format.jsonl", skip_invalid=True)
    assert report.ignored_files == [] and "ignored" not in report.format().replace("blank line(s) ignored", "")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    (tmp_path / "a.jsonl").write_text((FIX / "gsm_format.jsonl").read_text())
    (tmp_path / "README.md").write_text("x")
    read, ignored = data.split_input_files(tmp_path)
    assert [f.name for f in read] == ["a.jsonl"] and [f.name for f in ignored] == ["README.md"]


def test_directory_without_inputs_names_what_it_found(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no \*\.jsonl or \*\.json files in this directory \(found only: readme\.txt\)"):
        iter_input_files(tmp_path)


def test_report_lists_at_most_max_lines_ignored_files():
    r = Report(ignored_files=[f"d/f{i}.txt" for i in range(15)])
    text = r.format(max_lines=10)
    assert "ignored 15 file(s)" in text and "d/f9.txt" in text and "d/f10.txt" not in text
    assert "... and 5 more" in text
