"""Reliability of `step-jepa train` (issue 5): bad inputs, tokenizer/model variants, over-long
examples, atomic and damaged checkpoints, non-finite losses, determinism and the output dir.

Kill-and-resume is in test_resume.py. Every training run here uses the tiny model from
step_jepa.models.tiny and goes through the real CLI entry point (`cli.main`) in-process.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from step_jepa.cli import main as cli
from step_jepa.method.model import StepJEPAModel
from step_jepa.training import trainer as tr
from step_jepa.training.checkpoints import (
    checkpoint_problems,
    latest_checkpoint,
    load_lm_weights,
    publish_checkpoint,
)
from step_jepa.training.data import build_collator, segment_all

TRAIN_FIX = Path(__file__).resolve().parents[1] / "fixtures" / "train"
BASE = [
    "--max_steps",
    "2",
    "--logging_steps",
    "1",
    "--save_steps",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--generate_examples",
    "8",
    "--learning_rate",
    "1e-3",
    "--report_to",
    "none",
]


def save_tiny(path: Path, template: str = "chatml", pad_token: bool = True, tie: bool = False) -> Path:
    from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer(template, pad_token=pad_token)
    build_tiny_model(len(tok), tie=tie).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def train(capsys, *args: str) -> tuple[int, str, str]:
    """`step-jepa train ARGS` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main(["train", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def metrics(out_dir: Path) -> dict[int, dict]:
    """Last logged record per step: a resumed run logs the redone steps again."""
    recs: dict[int, dict] = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            recs[rec["step"]] = rec
    return recs


def one_error_line(err: str) -> str:
    """The CLI's error: one line, last on stderr, no traceback (progress bars may precede it)."""
    head = "step-jepa train: error: "
    assert "Traceback" not in err and err.count(head) == 1, err
    msg = err[err.index(head) :].strip()
    assert "\n" not in msg and "\r" not in msg, err
    return msg


# ------------------------------------------------------------------------- 1. bad input corpus

CORPUS = TRAIN_FIX / "corpus.jsonl"
CORPUS_LINES = CORPUS.read_bytes().split(b"\n")
CORPUS_SKIPS = {
    "invalid json": 2,
    "not utf-8": 1,
    "missing field": 1,
    "empty field": 1,
    "non-string field": 1,
    "no assistant turn": 1,
    "duplicate id": 1,
    "fewer than min steps": 1,
}


@pytest.mark.parametrize(
    "line, reason",
    [
        (6, "invalid json"),
        (7, "not utf-8"),
        (8, "missing field"),
        (9, "empty field"),
        (10, "non-string field"),
        (11, "no assistant turn"),
        (12, "duplicate id"),
        (13, "fewer than min steps"),
        (14, "looks truncated"),
    ],
)
def test_bad_line_stops_with_file_and_line(tmp_path, capsys, tiny, line, reason):
    # The valid lines 1-5, then one bad line: the error must name exactly that file:line.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(CORPUS_LINES[:5] + [CORPUS_LINES[line - 1]]) + (b"" if line == 14 else b"\n"))
    out_dir = tmp_path / "run"
    rc, _, err = train(capsys, "--model", str(tiny), "--train_file", str(bad), "--output_dir", str(out_dir), *BASE)
    assert rc == 2
    msg = one_error_line(err)
    assert f"{bad}:6: " in msg and reason in msg
    assert not out_dir.exists()  # nothing written: the same command can be rerun once the file is fixed


def test_skip_invalid_counts_every_reason(tmp_path, capsys, tiny):
    out_dir = tmp_path / "run"
    rc, out, _ = train(
        capsys, "--model", str(tiny), "--train_file", str(CORPUS), "--output_dir", str(out_dir), "--skip_invalid", *BASE
    )
    assert rc == 0
    report = json.loads((out_dir / "data_report.json").read_text())
    data, seg = report["data"], report["segmentation"]
    assert data["skipped"] == CORPUS_SKIPS
    assert data["lines_read"] == 14 == data["written"] + sum(data["skipped"].values())
    # CRLF, unicode math, a one-step answer and whitespace-only steps are all trainable.
    assert seg["examples"] == data["written"] == 5 and seg["skipped"] == {}
    assert seg["without_valid_pair"] == 1  # the one-step answer: LM loss only, not an error
    assert "14 lines read" in out and "5 used, 9 skipped" in out
    for reason, n in CORPUS_SKIPS.items():
        assert f"{n:>6}  {reason}" in out


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_empty_file_is_a_clear_error(tmp_path, capsys, tiny, skip_invalid):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    flags = ["--skip_invalid"] if skip_invalid else []
    rc, _, err = train(
        capsys, "--model", str(tiny), "--train_file", str(empty), "--output_dir", str(tmp_path / "run"), *flags, *BASE
    )
    assert rc == 2 and "Traceback" not in err
    assert f"{empty}: no usable training records" in err


def test_only_bad_lines_with_skip_invalid_is_an_error(tmp_path, capsys, tiny):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(CORPUS_LINES[5:11]) + b"\n")
    rc, _, err = train(
        capsys,
        "--model",
        str(tiny),
        "--train_file",
        str(bad),
        "--output_dir",
        str(tmp_path / "run"),
        "--skip_invalid",
        *BASE,
    )
    assert rc == 2 and "no usable training records" in err and "invalid json" in err


def write_chat(path: Path, answers: list[str]) -> Path:
    """Chat records with the given assistant answers (steps are the blank-line-separated parts)."""
    with path.open("w") as f:
        for i, a in enumerate(answers):
            f.write(
                json.dumps(
                    {
                        "id": f"r{i}",
                        "messages": [
                            {"role": "user", "content": f"What is {i} + 1?"},
                            {"role": "assistant", "content": a},
                        ],
                    }
                )
                + "\n"
            )
    return path


ONE_STEP = "{i} + 1 = {j}, so the final answer is \\boxed{{{j}}}."
TWO_STEPS = "Add one: {i} + 1 = {j}.\n\nThe final answer is \\boxed{{{j}}}."


def test_jepa_on_data_without_step_pairs_stops_before_writing(tmp_path, capsys, tiny):
    """λ > 0 on answers without a blank line between steps would silently be plain SFT."""
    data = write_chat(tmp_path / "flat.jsonl", [ONE_STEP.format(i=i, j=i + 1) for i in range(6)])
    out_dir = tmp_path / "run"
    rc, _, err = train(
        capsys, "--model", str(tiny), "--train_file", str(data), "--output_dir", str(out_dir), "--lbd", "0.5", *BASE
    )
    assert rc == 2
    msg = one_error_line(err)
    assert "none of the 6 examples has an intact S1→S2 step pair" in msg and "--lbd 0" in msg
    assert not out_dir.exists()
    # The same data as deliberate SFT trains without complaint.
    rc, _, err = train(
        capsys, "--model", str(tiny), "--train_file", str(data), "--output_dir", str(out_dir), "--lbd", "0", *BASE
    )
    assert rc == 0 and "[step-jepa] WARNING" not in err, err


def test_jepa_on_data_with_few_step_pairs_warns_loudly(tmp_path, capsys, tiny):
    answers = [TWO_STEPS.format(i=0, j=1)] + [ONE_STEP.format(i=i, j=i + 1) for i in range(1, 12)]  # 1 in 12
    data = write_chat(tmp_path / "few.jsonl", answers)
    rc, _, err = train(
        capsys,
        "--model",
        str(tiny),
        "--train_file",
        str(data),
        "--output_dir",
        str(tmp_path / "run"),
        "--lbd",
        "0.5",
        *BASE,
    )
    assert rc == 0, err
    assert "WARNING: only 8.3% of the 12 examples have an intact S1→S2 step pair" in err
    # 10 % and more is normal data (some one-step answers): no warning.
    rc, _, err = train(
        capsys,
        "--model",
        str(tiny),
        "--train_file",
        str(write_chat(tmp_path / "ok.jsonl", answers[:10])),
        "--output_dir",
        str(tmp_path / "run2"),
        "--lbd",
        "0.5",
        *BASE,
    )
    assert rc == 0 and "[step-jepa] WARNING" not in err, err


# ------------------------------------------------------------------------- 2. tokenizers and models


@pytest.mark.parametrize(
    "template, pad_token, tie",
    [
        ("none", True, False),  # no chat template: plain "Role: text<eos>" fallback
        ("chatml", False, False),  # no pad token: pads with EOS
        ("llama3", True, False),  # "\n\n" inside the template's headers
        ("chatml", True, True),  # tied input/output embeddings
    ],
)
def test_tokenizer_and_model_variants_train_save_reload(tmp_path, capsys, template, pad_token, tie):
    from transformers import AutoModelForCausalLM

    from step_jepa.models.loading import add_predictor_tokens, load_tokenizer

    model_dir = save_tiny(tmp_path / "m", template, pad_token, tie)
    tok = load_tokenizer(str(model_dir))
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    out_dir = tmp_path / "run"
    rc, _, err = train(capsys, "--model", str(model_dir), "--output_dir", str(out_dir), *BASE)
    assert rc == 0, err
    seg = json.loads((out_dir / "data_report.json").read_text())["segmentation"]
    assert seg["examples"] == 8 and seg["without_valid_pair"] == 0  # steps found despite "\n\n" in headers

    final = out_dir / "final"
    lm = AutoModelForCausalLM.from_pretrained(final)
    saved_tok = load_tokenizer(str(final))
    assert lm.get_input_embeddings().weight.shape[0] == len(saved_tok) == len(tok) + 1  # + one predictor
    if tie:
        assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    # Predictor tokens already in the vocabulary are reused, not added again.
    vocab = len(saved_tok)
    ids = add_predictor_tokens(lm, saved_tok, 1)
    assert len(saved_tok) == vocab == lm.get_input_embeddings().weight.shape[0]
    assert add_predictor_tokens(lm, saved_tok, 1) == ids and len(saved_tok) == vocab
    # The resume path loads the checkpoint's weights into a freshly built model.
    fresh = AutoModelForCausalLM.from_pretrained(model_dir)
    add_predictor_tokens(fresh, load_tokenizer(str(model_dir)), 1)
    load_lm_weights(fresh, str(out_dir / "checkpoint-2"))
    for (name, a), b in zip(fresh.state_dict().items(), lm.state_dict().values()):
        assert torch.equal(a, b), name
    if tie:
        assert fresh.get_output_embeddings().weight.data_ptr() == fresh.get_input_embeddings().weight.data_ptr()


# ------------------------------------------------------------------------- 3. over-long sequences


def test_overlong_examples_are_truncated_or_skipped_and_counted(tmp_path, capsys, tiny):
    out_dir = tmp_path / "run"
    rc, out, err = train(
        capsys,
        "--model",
        str(tiny),
        "--train_file",
        str(TRAIN_FIX / "long.jsonl"),
        "--output_dir",
        str(out_dir),
        "--max_length",
        "100",
        *BASE,
    )
    assert rc == 0, err
    seg = json.loads((out_dir / "data_report.json").read_text())["segmentation"]
    assert seg["examples"] == 2 and seg["truncated"] == 1
    assert seg["skipped"] == {"prompt longer than max_length": 1}
    assert [e["id"] for e in seg["skipped_examples"]] == ["long-prompt"]
    assert seg["first_pair_invalid"] == 1 and seg["without_valid_pair"] == 1  # cut pairs are invalid
    assert "skipped: prompt longer than max_length" in out


def test_truncation_keeps_the_prompt_and_cuts_the_answer_end(tok_chatml):
    from step_jepa.data.load import load_records
    from step_jepa.data.segment import segment

    rec = load_records(TRAIN_FIX / "long.jsonl")[0][0]
    full, cut = segment(rec, tok_chatml), segment(rec, tok_chatml, max_length=100)
    assert cut.truncated and cut.input_ids == full.input_ids[:100] and cut.labels == full.labels[:100]
    assert cut.prompt_len == full.prompt_len and all(x == -100 for x in cut.labels[: cut.prompt_len])
    assert cut.step_spans[0] == full.step_spans[0] and cut.step_spans[1:] == [None] * 3


# ------------------------------------------------------------------------- 5. checkpoints


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny) -> Path:
    """A finished 4-step run with checkpoint-2 and checkpoint-4."""
    out_dir = tmp_path_factory.mktemp("ckpt") / "run"
    args = ["train", "--model", str(tiny), "--output_dir", str(out_dir), *BASE]
    assert cli.main(args + ["--max_steps", "4", "--save_total_limit", "3"]) == 0
    return out_dir


def test_checkpoints_are_staged_then_renamed_and_rotated(tmp_path, capsys, tiny, monkeypatch):
    seen = []
    publish = publish_checkpoint

    def spy(staged: Path, final: Path) -> None:
        # At rename time the staged dir is complete and nothing is visible under the final name.
        seen.append((final.name, checkpoint_problems(staged), final.exists(), staged.parent.name))
        publish(staged, final)

    monkeypatch.setattr(tr, "publish_checkpoint", spy)
    out_dir = tmp_path / "run"
    stale = out_dir / ".tmp-checkpoint-1"  # what a kill during a save leaves behind
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    rc, _, err = train(
        capsys,
        "--model",
        str(tiny),
        "--output_dir",
        str(out_dir),
        "--resume",
        *BASE,
        "--max_steps",
        "6",
        "--save_steps",
        "1",
        "--save_total_limit",
        "2",
    )
    assert rc == 0, err
    assert seen == [(f"checkpoint-{n}", [], False, f".tmp-checkpoint-{n}") for n in range(1, 7)]
    assert sorted(p.name for p in out_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-5", "checkpoint-6"]


def damage_truncate_weights(c: Path) -> None:
    with open(c / "model.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(c / "model.safetensors") // 2)


def damage_truncate_optimizer(c: Path) -> None:
    with open(c / "optimizer.pt", "r+b") as f:
        f.truncate(100)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (damage_truncate_weights, "model.safetensors truncated"),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json missing"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json unreadable"),
        (damage_truncate_optimizer, "optimizer.pt truncated"),
        (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt missing"),
        (lambda c: (c / "rng_state.pth").unlink(), "rng_state.pth missing"),
        (lambda c: (c / "model.safetensors").unlink(), "no model.safetensors"),
    ],
)
def test_damaged_checkpoint_is_reported_and_skipped(tmp_path, capsys, two_checkpoints, damage, problem):
    out_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, out_dir)
    assert latest_checkpoint(out_dir) == str(out_dir / "checkpoint-4")
    damage(out_dir / "checkpoint-4")
    capsys.readouterr()
    assert latest_checkpoint(out_dir) == str(out_dir / "checkpoint-2")
    assert problem in capsys.readouterr().err


def test_resume_past_a_damaged_checkpoint(tmp_path, capsys, two_checkpoints, tiny):
    out_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, out_dir)
    damage_truncate_weights(out_dir / "checkpoint-4")
    rc, out, err = train(
        capsys,
        "--model",
        str(tiny),
        "--output_dir",
        str(out_dir),
        "--resume",
        *BASE,
        "--max_steps",
        "4",
        "--save_total_limit",
        "3",
    )
    assert rc == 0, err
    assert "checkpoint-4 is damaged" in err and "continuing from" in out and "checkpoint-2" in out
    assert json.loads((out_dir / "train_summary.json").read_text())["global_step"] == 4
    assert checkpoint_problems(out_dir / "checkpoint-4") == []  # redone and replaced
    # Steps 3-4 were redone from checkpoint-2 exactly as the original run did them.
    old, new = metrics(two_checkpoints), metrics(out_dir)
    assert sorted(new) == [1, 2, 3, 4]
    for step in (3, 4):
        assert new[step]["loss"] == pytest.approx(old[step]["loss"], rel=1e-5)


# ------------------------------------------------------------------------- 6. non-finite losses


class Poison(TrainerCallback):
    """Makes the forward pass of chosen steps non-finite, and records weights and optimizer state
    around every step."""

    def __init__(self, steps: set[int], kind: str):
        self.steps, self.kind, self.active = steps, kind, False
        self.before: dict[int, tuple] = {}
        self.after: dict[int, tuple] = {}

    @staticmethod
    def snapshot(model, optimizer) -> tuple:
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return params, copy.deepcopy(optimizer.state_dict()["state"])

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.active = state.global_step + 1 in self.steps
        self.before[state.global_step + 1] = self.snapshot(model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self.after[state.global_step] = self.snapshot(model, optimizer)


def poison_forward(monkeypatch, poison: Poison) -> None:
    forward = StepJEPAModel.forward

    def poisoned(self, **batch):
        out = forward(self, **batch)
        if poison.active and poison.kind == "loss":
            out["lm_sum"] = out["lm_sum"] * float("nan")
        elif poison.active and poison.kind == "grad":
            # Finite loss, NaN gradients: only the gradient check can catch this one.
            out["lm_sum"].register_hook(lambda g: g * float("nan"))
        return out

    monkeypatch.setattr(StepJEPAModel, "forward", poisoned)


def same_state(a: tuple, b: tuple) -> bool:
    (pa, oa), (pb, ob) = a, b
    if any(not torch.equal(pa[k], pb[k]) for k in pa) or oa.keys() != ob.keys():
        return False
    return all(torch.equal(torch.as_tensor(oa[i][k]), torch.as_tensor(ob[i][k])) for i in oa for k in oa[i])


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_leaves_no_trace(tmp_path, capsys, tiny, monkeypatch, kind):
    from step_jepa.training.config import StepJEPAConfig

    poison = Poison({3}, kind)
    poison_forward(monkeypatch, poison)
    cfg = StepJEPAConfig(
        model=str(tiny),
        output_dir=str(tmp_path / "run"),
        max_steps=5,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=2,
        generate_examples=10,
        learning_rate=1e-3,
        report_to="none",
    )
    summary = tr.run_train(cfg, callbacks=[poison])
    assert summary["global_step"] == 5
    assert same_state(poison.before[3], poison.after[3])  # weights and Adam state untouched
    for step in (2, 4, 5):  # the finite steps around it do update, with finite values
        assert not same_state(poison.before[step], poison.after[step])
        assert all(torch.isfinite(v).all() for v in poison.after[step][0].values())
    logged = metrics(tmp_path / "run")
    assert [logged[s]["skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 0, 0]
    assert "non-finite loss or gradient at step 3: optimizer step skipped (1/5 in a row)" in capsys.readouterr().err


def test_too_many_nonfinite_steps_stop_with_one_clear_line(tmp_path, capsys, tiny, monkeypatch):
    poison = Poison(set(), "loss")
    poison_forward(monkeypatch, poison)
    poisoned = StepJEPAModel.forward

    def from_second_call(self, **batch):  # the CLI takes no callbacks: poison every step from step 2
        from_second_call.calls += 1
        poison.active = from_second_call.calls >= 2
        return poisoned(self, **batch)

    from_second_call.calls = 0
    monkeypatch.setattr(StepJEPAModel, "forward", from_second_call)
    rc, out, err = train(
        capsys,
        "--model",
        str(tiny),
        "--output_dir",
        str(tmp_path / "run"),
        *BASE,
        "--max_steps",
        "20",
        "--max_nonfinite_steps",
        "3",
    )
    assert rc == 2
    line = one_error_line(err)
    assert "3 consecutive optimizer steps with a non-finite loss or gradient (last at step 4)" in line
    assert "(3/3 in a row)" in err and not (tmp_path / "run" / "final").exists()


def _any_rank_worker(rank: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results[rank] = (tr.any_rank(torch.tensor(rank == 1)), tr.any_rank(torch.tensor(False)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_skipping(tmp_path):
    """Two real gloo processes: a non-finite step on rank 1 only makes both ranks skip."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_any_rank_worker, args=(str(tmp_path / "init"), results), nprocs=2)
        assert dict(results) == {0: (True, False), 1: (True, False)}


def test_grads_finite():
    p = torch.nn.Parameter(torch.ones(3))
    assert bool(tr.grads_finite([p]))  # no gradient yet
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    assert bool(tr.grads_finite([p]))
    for bad in (float("nan"), float("inf")):
        p.grad = torch.tensor([1.0, bad, 3.0])
        assert not bool(tr.grads_finite([p]))


# ------------------------------------------------------------------------- 7. determinism


def test_same_seed_same_first_five_losses(tmp_path, capsys, tiny):
    runs = []
    for name in ("a", "b"):
        rc, _, err = train(
            capsys,
            "--model",
            str(tiny),
            "--output_dir",
            str(tmp_path / name),
            *BASE,
            "--max_steps",
            "5",
            "--pairs",
            "random",
        )
        assert rc == 0, err
        runs.append([metrics(tmp_path / name)[s]["loss"] for s in range(1, 6)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1  # the losses move: the run really trained


def test_pair_sampling_depends_on_the_batch_not_on_history(tok_chatml):
    from step_jepa.data.synthetic import generate_problems
    from step_jepa.training.config import StepJEPAConfig

    cfg = StepJEPAConfig(pairs="random")
    examples, _ = segment_all(generate_problems(6, seed=1), tok_chatml, 1024)
    fresh = lambda: build_collator(cfg, tok_chatml, [tok_chatml.eos_token_id], "sdpa")  # noqa: E731
    warm = fresh()
    for i in range(5):
        warm(examples[i : i + 2])  # a run that has already collated other batches
    batch = examples[3:6]
    assert torch.equal(warm(batch)["view2_cols"], fresh()(batch)["view2_cols"])


# ------------------------------------------------------------------------- 8. output dir


def test_refuses_a_non_empty_output_dir(tmp_path, capsys, tiny):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("another run")
    rc, _, err = train(capsys, "--model", str(tiny), "--output_dir", str(out_dir), *BASE)
    assert rc == 2 and "is not empty" in one_error_line(err) and "--overwrite_output_dir" in err
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]
    rc, _, err = train(capsys, "--model", str(tiny), "--output_dir", str(out_dir), "--overwrite_output_dir", *BASE)
    assert rc == 0, err
    assert (out_dir / "final" / "model.safetensors").exists() and (out_dir / "notes.txt").exists()


@pytest.mark.parametrize("exists", [False, True])
def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys, tiny, exists):
    out_dir = tmp_path / "run"
    if exists:
        out_dir.mkdir()
    rc, out, err = train(capsys, "--model", str(tiny), "--output_dir", str(out_dir), "--resume", *BASE)
    assert rc == 0, err
    assert "no complete checkpoint" in out and "starting a fresh run" in out
    assert json.loads((out_dir / "train_summary.json").read_text())["global_step"] == 2


@pytest.mark.parametrize(
    "bad",
    [
        ["--lr_scheduler_type", "bogus"],  # refused by Hugging Face's TrainingArguments
        ["--report_to", "bogus"],  # refused by the Trainer's integrations
        ["--warmup_ratio", "5"],  # refused by StepJEPAConfig.validate
    ],
)
def test_a_start_that_fails_on_a_bad_value_can_be_rerun(tmp_path, capsys, tiny, bad):
    out_dir = tmp_path / "run"
    args = ["--model", str(tiny), "--output_dir", str(out_dir), *BASE]
    rc, _, err = train(capsys, *args, *bad)
    assert rc == 2 and bad[1] in one_error_line(err)
    assert not out_dir.exists(), sorted(p.name for p in out_dir.iterdir())  # nothing written
    rc, _, err = train(capsys, *args)  # the corrected command, same --output_dir
    assert rc == 0, err
    assert json.loads((out_dir / "train_summary.json").read_text())["global_step"] == 2


# ------------------------------------------------------------------------- --resume_from_checkpoint


def test_resume_from_a_named_checkpoint_not_the_latest(tmp_path, capsys, two_checkpoints, tiny):
    out_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, out_dir)
    ckpt = out_dir / "checkpoint-2"  # checkpoint-4 is the latest: --resume would take that one
    rc, out, err = train(
        capsys,
        "--model",
        str(tiny),
        "--output_dir",
        str(out_dir),
        *BASE,
        "--resume_from_checkpoint",
        str(ckpt),
        "--max_steps",
        "4",
        "--save_total_limit",
        "3",
    )
    assert rc == 0, err
    summary = json.loads((out_dir / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(ckpt) and summary["global_step"] == 4
    old, new = metrics(two_checkpoints), metrics(out_dir)
    assert sorted(new) == [1, 2, 3, 4]
    for step in (3, 4):  # redone from checkpoint-2 exactly as the original run did them
        assert new[step]["loss"] == pytest.approx(old[step]["loss"], rel=1e-5)


def test_named_checkpoint_missing_or_damaged_is_an_error(tmp_path, capsys, two_checkpoints, tiny):
    out_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, out_dir)
    damage_truncate_optimizer(out_dir / "checkpoint-4")
    args = ["--model", str(tiny), "--output_dir", str(out_dir), *BASE, "--resume"]  # the named one wins
    rc, _, err = train(capsys, *args, "--resume_from_checkpoint", str(out_dir / "checkpoint-4"))
    assert rc == 2 and "is damaged or not a checkpoint: optimizer.pt truncated" in one_error_line(err)
    rc, _, err = train(capsys, *args, "--resume_from_checkpoint", str(out_dir / "checkpoint-9"))
    assert rc == 2 and "no such checkpoint directory" in one_error_line(err)
    # Refused before anything ran: the finished run's files are as they were.
    assert json.loads((out_dir / "train_summary.json").read_text())["global_step"] == 4
    assert checkpoint_problems(out_dir / "checkpoint-4") == ["optimizer.pt truncated or corrupt"]


def test_named_checkpoint_of_another_run_needs_an_empty_output_dir(tmp_path, capsys, two_checkpoints, tiny):
    out_dir = tmp_path / "branch"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("another run")
    args = [
        "--model",
        str(tiny),
        "--output_dir",
        str(out_dir),
        *BASE,
        "--max_steps",
        "3",
        "--resume_from_checkpoint",
        str(two_checkpoints / "checkpoint-2"),
    ]
    rc, _, err = train(capsys, *args)
    assert rc == 2 and "is not empty" in one_error_line(err)
    (out_dir / "notes.txt").unlink()
    rc, _, err = train(capsys, *args)
    assert rc == 0, err
    assert json.loads((out_dir / "train_summary.json").read_text())["global_step"] == 3


def test_pair_counts_follow_the_view_boundary(tok_chatml):
    """A two-step answer cut after step 2's content but before its end-of-turn token keeps its pair
    under the content boundary; under the seed's separator boundary the last step's end is not
    known, so the example is counted without a pair (and check_pair_coverage sees that)."""
    from conftest import record

    from step_jepa.data.segment import segment

    rec = record(["Tom has 3 apples.", "He buys 4 more: 7."])
    whole = segment(rec, tok_chatml, 1024)
    cut_at = whole.step_spans[1][1] + 1  # step 2 intact, the closing tokens cut
    assert cut_at < len(whole.input_ids)
    _, content = segment_all([rec], tok_chatml, cut_at)
    (ex,), separator = segment_all([rec], tok_chatml, cut_at, "separator")
    assert ex.truncated and content["truncated"] == 1
    assert content["first_pair_invalid"] == 0 and content["without_valid_pair"] == 0
    assert separator["first_pair_invalid"] == 1 and separator["without_valid_pair"] == 1
