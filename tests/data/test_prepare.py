"""`prepare` and the `step-jepa prepare` CLI (step_jepa.data.prepare): output, report, hub datasets, real GSM8K, dev split."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import FIX, GSM8K_DIR, assert_prepared, lines, run_cli

from step_jepa.data.load import load_records
from step_jepa.data.prepare import prepare
from step_jepa.data.records import DataError

# ---------------------------------------------------------------------------- prepare & reports


def test_prepare_writes_records_and_report(tmp_path, capsys):
    out = tmp_path / "sub" / "out.jsonl"
    report = prepare(FIX / "bad_fields.jsonl", out)
    printed = capsys.readouterr().out
    saved = json.loads(Path(f"{out}.report.json").read_text())
    assert saved == report.to_dict()
    assert saved["lines_read"] == 8 == saved["written"] + sum(saved["skipped"].values())
    assert saved["skipped"] == {
        "missing field": 2,
        "non-string field": 2,
        "empty field": 1,
        "not a json object": 1,
        "unknown format": 1,
    }
    assert "non-string field" in printed and f"{FIX / 'bad_fields.jsonl'}:4: non-string field: " in printed
    # every reason has its lines with file:line and what was wrong, in the file and on screen
    assert set(saved["skipped_details"]) == set(saved["skipped"])
    for reason, details in saved["skipped_details"].items():
        assert len(details) == saved["skipped"][reason]
        assert all(d["path"] == str(FIX / "bad_fields.jsonl") and d["line"] > 1 and d["detail"] for d in details)
        d = details[0]
        assert f"{d['path']}:{d['line']}: {reason}: {d['detail']}" in printed
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["bad_fields-1"]


def test_prepare_report_says_what_was_wrong(tmp_path, capsys):
    """The details --strict shows for its one line, for every skipped line of a normal run."""
    src = tmp_path / "in.jsonl"
    good = {
        "id": "a",
        "question": "Q?",
        "deepseek_response": "Step one.\n\nStep two.\n\nSo \\boxed{5}",
        "ground_truth": "5",
    }
    src.write_text(
        "\n".join(
            [json.dumps(good), json.dumps(dict(good, ground_truth="6")), '{"question": "Q?",,}', json.dumps(good)]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    report = prepare(src, out)
    printed = capsys.readouterr().out
    saved = json.loads(Path(f"{out}.report.json").read_text())["skipped_details"]
    assert saved["answer mismatch"] == [
        {"path": str(src), "line": 2, "detail": "response says '5', ground truth is '6'"}
    ]
    [invalid] = saved["invalid json"]
    assert invalid["line"] == 3 and "at column 19" in invalid["detail"]  # the second comma
    assert f"{src}:2: answer mismatch: response says '5', ground truth is '6'" in printed
    assert f"{src}:3: invalid json: " in printed
    assert report.skipped["duplicate id"] == 1 and "already used" in saved["duplicate id"][0]["detail"]


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


# ---------------------------------------------------------------------------- CLI


def test_cli_prepare_options(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    rc = run_cli(
        [
            "prepare",
            "--input",
            str(FIX / "gsm_format.jsonl"),
            "--output",
            str(out),
            "--keep_annotations",
            "--system_prompt",
            "SP",
            "--min_steps",
            "3",
        ]
    )
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
    assert report.written == 3
    assert [s[:3] for s in report.skipped_lines] == [("openai/gsm8k[test]", 4, "no final answer")]
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
    from step_jepa.data.prepare import split_dev
    from step_jepa.data.synthetic import generate_problems

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
