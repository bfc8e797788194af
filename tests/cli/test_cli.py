"""The `step-jepa` command line: lazy imports, one-line user errors, --traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import main_in_process

from step_jepa.cli import main as cli
from step_jepa.cli.parsing import suggest

SRC = Path(__file__).resolve().parents[2] / "src"


def python(code: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300
    )


def step_jepa(*args: str) -> subprocess.CompletedProcess:
    return main_in_process(*args)


@pytest.fixture(autouse=True)
def _own_allocator_setting(monkeypatch):
    """main() sets PYTORCH_CUDA_ALLOC_CONF; in-process calls must not leave it to other tests."""
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "placeholder")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")


def assert_one_line_error(proc: subprocess.CompletedProcess, cmd: str, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"step-jepa {cmd}: error: ") and text in lines[0], proc.stderr


# ---------------------------------------------------------------------------- lazy imports


def test_help_does_not_import_torch():
    """One fresh interpreter (the point: nothing imported torch before) checks each --help in turn."""
    argvs = [["prepare", "--help"], ["--help"], ["plot", "--help"]]
    proc = python(
        "import sys\nfrom step_jepa.cli.main import build_parser\n"
        f"for argv in {argvs!r}:\n"
        "    try:\n        build_parser(argv).parse_args(argv)\n    except SystemExit:\n        pass\n"
        "    print('RESULT', argv, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == len(argvs)
    for argv, line in zip(argvs, results):
        assert line.endswith("False False"), (argv, line)


def test_prepare_runs_without_torch(tmp_path):
    out = tmp_path / "gen.jsonl"
    proc = python(
        "import sys\nfrom step_jepa.cli.main import main\n"
        f"rc = main(['prepare', '--generate', '3', '--output', {str(out)!r}])\n"
        "print(rc, 'torch' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 False"
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("preset", [None, "max_split_size_mb:128"])
def test_cli_sets_expandable_segments_unless_configured(tmp_path, preset, monkeypatch):
    """Every command runs with expandable segments (fragmentation OOMs, docs/performance.md); a user's own
    allocator config is kept as it is."""
    if preset:
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", preset)
    proc = step_jepa("prepare", "--generate", "2", "--output", str(tmp_path / "g.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == (preset or "expandable_segments:True")


def test_top_level_help_lists_every_subcommand_with_its_own_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping inside a help line
    with pytest.raises(SystemExit):
        cli.build_parser(["--help"]).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    full = cli.build_parser(None)  # every module registered for real
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    real = {a.dest: a.help for a in sub._choices_actions}
    # The lazy table must say what the modules themselves say, so the two cannot drift apart.
    assert real == {c.name: c.help for c in cli.COMMANDS}
    for c in cli.COMMANDS:
        assert f"{c.name} {' '.join(c.help.split())}" in text


def test_chosen_subcommand_gets_its_real_arguments():
    args = cli.build_parser(["plot", "run_a"]).parse_args(["plot", "run_a"])
    assert args.command == "plot" and args.runs == ["run_a"] and callable(args.func)
    with pytest.raises(SystemExit):
        cli.build_parser(["bogus"]).parse_args(["bogus"])


# ---------------------------------------------------------------------------- user errors


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from step_jepa.models.tiny import build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-tok")
    build_tiny_tokenizer("chatml").save_pretrained(d)
    return d


def test_inspect_index_out_of_range_is_one_line(tok_dir):
    data = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "prepared.jsonl"
    proc = step_jepa("inspect", "--model", str(tok_dir), "--train_file", str(data), "--index", "999")
    assert_one_line_error(proc, "inspect", "--index 999 is out of range")


def test_model_not_found_is_reported_without_traceback(tmp_path):
    proc = step_jepa("inspect", "--model", str(tmp_path / "no-such-model"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("step-jepa inspect: error: could not load model")
    assert "Tried:" in proc.stderr  # the list of what was tried may span lines


def _fail_with(monkeypatch, exc: BaseException) -> None:
    """Make `step-jepa inspect` raise `exc` (its `run` is looked up when the parser is built)."""
    from step_jepa.cli import inspect as inspect_command

    def boom(args):
        raise exc

    monkeypatch.setattr(inspect_command, "run", boom)


def test_non_finite_loss_is_one_line(monkeypatch, capsys):
    from step_jepa.training.trainer import NonFiniteLossError

    _fail_with(monkeypatch, NonFiniteLossError("loss is nan for 3 consecutive steps"))
    assert cli.main(["inspect"]) == 2
    err = capsys.readouterr().err
    assert err == "step-jepa inspect: error: loss is nan for 3 consecutive steps\n"


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    _fail_with(monkeypatch, KeyboardInterrupt())
    assert cli.main(["inspect"]) == 130
    assert capsys.readouterr().err == "step-jepa inspect: interrupted\n"


def test_bugs_still_raise_and_traceback_flag_reraises_user_errors(monkeypatch):
    _fail_with(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["inspect"])
    _fail_with(monkeypatch, ValueError("bad value"))
    assert cli.main(["inspect"]) == 2
    with pytest.raises(ValueError, match="bad value"):
        cli.main(["--traceback", "inspect"])
    monkeypatch.setenv("STEP_JEPA_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bad value"):
        cli.main(["inspect"])


# ---------------------------------------------------------------------------- flags are never abbreviated


@pytest.mark.parametrize(
    "flag, value, meant",
    [
        ("--lr", "1e-4", "--learning_rate"),  # would have been --lr_scheduler_type 1e-4
        ("--warmup", "10", "--warmup_ratio"),
        ("--res", None, "--resume"),
    ],
)
def test_abbreviated_train_flag_is_refused_with_a_suggestion(tmp_path, flag, value, meant):
    out = tmp_path / "run"
    proc = step_jepa("train", "--output_dir", str(out), flag, *([value] if value else []))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: step-jepa train "), proc.stderr  # the subcommand's usage
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"step-jepa train: error: unrecognized arguments: {flag}"), last
    assert f"did you mean {meant}" in last
    assert "resolved config" not in proc.stdout and not out.exists()  # training never started


def test_unknown_flag_of_other_subcommands_and_top_level():
    proc = step_jepa("plot", "run_a", "--ou", "x.png")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: step-jepa plot ")
    assert "did you mean --out?" in proc.stderr
    proc = step_jepa("--trace", "prepare")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: step-jepa [-h]")
    assert "did you mean --traceback?" in proc.stderr


def test_every_parser_refuses_abbreviations():
    parser = cli.build_parser(None)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert not parser.allow_abbrev
    assert all(not p.allow_abbrev for p in sub.choices.values())


def test_suggest_prefers_aliases_and_prefixes_over_typos():
    opts = ["--learning_rate", "--lr_scheduler_type", "--lora", "--resume", "--resume_from_checkpoint"]
    assert suggest("--lr", opts) == ["--learning_rate", "--lr_scheduler_type"]
    assert suggest("--res", opts) == ["--resume", "--resume_from_checkpoint"]
    assert suggest("--resme", opts)[0] == "--resume"
    assert suggest("--zzz", opts) == []


def test_version_flag():
    from step_jepa import __version__

    proc = step_jepa("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"step-jepa {__version__}"


def test_version_is_the_packages() -> None:
    """Summaries record `__version__`; it must be the version pip installs (pyproject.toml), which
    carries a .dev suffix while CHANGELOG's next release is unreleased."""
    import re

    from step_jepa import __version__

    root = Path(__file__).resolve().parents[2]
    declared = re.search(r'^version = "([^"]+)"$', (root / "pyproject.toml").read_text(), re.M)
    assert declared and declared.group(1) == __version__
    latest = (root / "CHANGELOG.md").read_text().split("\n## ", 2)[1]
    assert latest.startswith("[Unreleased") == (".dev" in __version__)


# ---------------------------------------------------------------------------- values checked before any work


@pytest.mark.parametrize(
    "argv, text",
    [
        (["eval", "--generate", "4", "--limit", "-3"], "--limit must be >= 1, got -3"),
        (["eval", "--generate", "4", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1, got 0"),
        (["eval", "--generate", "4", "--batch_size", "0"], "--batch_size must be >= 1"),
        (["eval", "--generate", "4", "--graph_window", "0"], "--graph_window must be >= 1, got 0"),
        (["train", "--warmup_ratio", "1.5"], "--warmup_ratio must be in [0, 1), got 1.5"),
        (["train", "--warmup_ratio", "-0.1"], "--warmup_ratio must be in [0, 1), got -0.1"),
    ],
)
def test_bad_value_is_one_line_before_the_model_loads(tmp_path, argv, text):
    # The model does not exist: reaching its load would be a different error ("could not load model").
    proc = step_jepa(*argv, "--model", str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path / "out"))
    assert_one_line_error(proc, argv[0], text)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- malformed YAML


@pytest.mark.parametrize("cmd", ["train", "compare"])
def test_malformed_yaml_is_one_line_naming_file_and_line(tmp_path, cmd):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lbd: 0.5\nmax_steps: [3\nseed: 1\n")
    proc = step_jepa(cmd, "--config", str(bad))
    assert_one_line_error(proc, cmd, f"{bad}:3: invalid YAML: ")
    assert "<unicode string>" not in proc.stderr


# ---------------------------------------------------------------------------- help text


@pytest.mark.parametrize("cmd", ["inspect", "bench", "eval"])
def test_every_option_has_help(cmd):
    parser = cli.build_parser([cmd])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd]
    missing = [a.option_strings or a.dest for a in sub._actions if not (a.help or "").strip()]
    assert not missing, f"{cmd}: options without help: {missing}"


@pytest.mark.parametrize(
    "cmd, line",
    [
        ("eval", "generation limit per problem, in tokens (default: 512;"),
        ("inspect", "(0-based line of --train_file) (default: 0)"),  # a default of 0 is shown too
        ("bench", "examples per optimizer step (default: 32)"),
    ],
)
def test_help_shows_defaults(cmd, line, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside a help line
    with pytest.raises(SystemExit):
        cli.build_parser([cmd, "--help"]).parse_args([cmd, "--help"])
    out = capsys.readouterr().out
    assert line in out and "(default: None)" not in out and "(default: False)" not in out
