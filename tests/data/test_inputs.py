"""Reading inputs (step_jepa.data.inputs): the bad-input corpus under tests/fixtures/data, reports, directory inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIX, assert_prepared, lines, run_cli

from step_jepa.data import inputs
from step_jepa.data.inputs import Report, iter_input_files
from step_jepa.data.load import load_records
from step_jepa.data.prepare import prepare
from step_jepa.data.records import DataError

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
        (
            "bad_fields.jsonl",
            1,
            {
                2: "missing field",
                3: "empty field",
                4: "non-string field",
                5: "non-string field",
                6: "unknown format",
                7: "not a json object",
                8: "missing field",
            },
        ),
        (
            "chat_cases.jsonl",
            2,
            {
                2: "no assistant turn",
                3: "no user turn",
                4: "malformed messages",
                5: "multi-turn conversation",
                7: "fewer than min steps",
            },
        ),
        ("steps_cases.jsonl", 4, {5: "no final answer", 6: "empty answer", 7: "no final answer"}),
        ("unicode_math.jsonl", 3, {}),
        ("crlf.jsonl", 3, {}),
    ],
)
def test_skipping_counts_every_line(name, kept, expected):
    records, report = load_records(FIX / name, skip_invalid=True)
    assert len(records) == kept == report.written
    assert {line: reason for _, line, reason, _ in report.skipped_lines} == expected
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
        "a_gsm_format.jsonl",
        "c_chat.json",
        "nested/b_deepseek.jsonl",
        "nested/d_prepared.jsonl",
    ]
    out = tmp_path / "mixed.jsonl"
    report = prepare(FIX / "mixed_dir", out)
    assert report.written == 8 and report.skipped == {"invalid json": 1}
    [(path, line, reason, detail)] = report.skipped_lines
    assert (path, line, reason) == (str(FIX / "mixed_dir/nested/d_prepared.jsonl"), 2, "invalid json")
    assert "at column" in detail  # where on the line the JSON breaks
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


def test_report_caps_details_but_not_counts(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n" * 1500 + json.dumps(lines("gsm_format.jsonl")[0]) + "\n")
    _, report = load_records(path, skip_invalid=True)
    assert report.skipped == {"invalid json": 1500}
    assert len(report.skipped_lines) == inputs.MAX_SKIPPED_DETAILS
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


def test_report_keeps_details_per_reason():
    r = Report()
    for n in range(30):
        r.add_skip("f.jsonl", n + 1, "invalid json", f"Expecting value at column {n}")
    r.add_skip("g.jsonl", 7, "answer mismatch", "response says '41', ground truth is '42'")
    r.add_skip("g.jsonl", 8, "duplicate id", "x" * 5000)
    d = r.to_dict()
    assert list(d["skipped_details"]) == ["invalid json", "answer mismatch", "duplicate id"]  # by count
    assert len(d["skipped_details"]["invalid json"]) == inputs.MAX_DETAILS_PER_REASON
    assert d["skipped_details"]["invalid json"][3] == {
        "path": "f.jsonl",
        "line": 4,
        "detail": "Expecting value at column 3",
    }
    assert d["skipped_details"]["answer mismatch"] == [
        {"path": "g.jsonl", "line": 7, "detail": "response says '41', ground truth is '42'"}
    ]
    assert len(d["skipped_details"]["duplicate id"][0]["detail"]) == inputs.MAX_DETAIL_CHARS  # capped
    assert d["skipped_lines"][0] == {
        "path": "f.jsonl",
        "line": 1,
        "reason": "invalid json",
        "detail": "Expecting value at column 0",
    }
    text = r.format(max_lines=5)
    assert "f.jsonl:1: invalid json: Expecting value at column 0" in text and "f.jsonl:6:" not in text
    # the first 5 lines are all "invalid json": the other reasons still get one example each
    assert "g.jsonl:7: answer mismatch: response says '41', ground truth is '42'" in text
    assert "g.jsonl:8: duplicate id: xxx" in text and "x" * 200 not in text  # clipped on screen


# ---------------------------------------------------------------------------- ignored directory files


def test_directory_files_that_are_not_read_are_reported(tmp_path):
    """notes.txt and our own old report are left out of a directory, but never silently."""
    read, ignored = inputs.split_input_files(FIX / "mixed_dir")
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
    read, ignored = inputs.split_input_files(tmp_path)
    assert [f.name for f in read] == ["a.jsonl"] and [f.name for f in ignored] == ["README.md"]


def test_directory_without_inputs_names_what_it_found(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(
        DataError, match=r"no \*\.jsonl or \*\.json files in this directory \(found only: readme\.txt\)"
    ):
        iter_input_files(tmp_path)


def test_report_lists_at_most_max_lines_ignored_files():
    r = Report(ignored_files=[f"d/f{i}.txt" for i in range(15)])
    text = r.format(max_lines=10)
    assert "ignored 15 file(s)" in text and "d/f9.txt" in text and "d/f10.txt" not in text
    assert "... and 5 more" in text
