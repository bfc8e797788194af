"""`step-jepa bench` on the tiny model: every variant runs, rows are consistent, ratios use the SFT row."""

import json

import pytest

from step_jepa.bench.run import build_batches, hf_inputs, run_bench
from step_jepa.bench.table import format_table
from step_jepa.bench.timing import BenchConfig
from step_jepa.cli.main import main


def tiny_bench(variants: list[str], steps: int = 2) -> BenchConfig:
    """The tiny model on the CPU: 2 batches of 4 generated examples, 1 thread."""
    return BenchConfig(
        model="tiny",
        per_device_train_batch_size=4,
        n_batches=2,
        steps=steps,
        warmup=1,
        device="cpu",
        threads=1,
        variants=variants,
    )


@pytest.fixture(scope="module")
def result():
    cfg = tiny_bench(["hf_sft", "sft", "two_pass", "sp_first", "sft_packed", "sp_all_packed"])
    return run_bench(cfg, log=lambda s: None)


def test_rows_present_and_positive(result):
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["hf_sft", "sft", "two_pass", "sp_first", "sft_packed", "sp_all_packed"]
    for r in rows.values():
        assert r["ms_median"] > 0 and r["nonpad_tokens_per_s"] > 0
        assert r["ms_min"] <= r["ms_median"]
        assert r["loss_first"] == r["loss_first"] and r["loss_last"] == r["loss_last"]  # finite, not NaN
        assert 0 < r["mfu"] and r["model_tflops_per_s"] > 0


def test_model_flops_follow_the_layout(result):
    """FLOPs per step (rate × time) grow with what the layout computes: SFT < single pass < two pass;
    HF's SFT call needs the same FLOPs as ours (logits beyond the labelled positions are waste)."""
    per_step = {r["variant"]: r["model_tflops_per_s"] * r["ms_median"] for r in result["rows"]}
    assert per_step["sft"] < per_step["sp_first"] < per_step["two_pass"]
    assert per_step["hf_sft"] == pytest.approx(per_step["sft"])
    assert result["env"]["matmul_peak_tflops"] > 0


def test_ratios_against_sft_of_same_layout(result):
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["sft"]["time_x_sft"] == pytest.approx(1.0)
    assert rows["sp_first"]["time_x_sft"] == pytest.approx(rows["sp_first"]["ms_median"] / rows["sft"]["ms_median"])
    assert rows["sp_first"]["time_x_hf"] == pytest.approx(rows["sp_first"]["ms_median"] / rows["hf_sft"]["ms_median"])
    assert rows["sp_all_packed"]["time_x_sft"] == pytest.approx(
        rows["sp_all_packed"]["ms_median"] / rows["sft_packed"]["ms_median"]
    )
    assert rows["sp_all_packed"]["time_x_hf"] is None  # no hf_sft_packed row
    assert rows["sp_first"]["time_x_sft_range"] is None  # one round: no spread to show
    if rows["sft"]["delta_peak_mib"]:
        assert rows["two_pass"]["delta_mem_x_sft"] == pytest.approx(
            rows["two_pass"]["delta_peak_mib"] / rows["sft"]["delta_peak_mib"]
        )


def test_same_examples_in_every_variant(result):
    rows = result["rows"]
    assert len({r["nonpad_tokens_per_step"] for r in rows}) == 1
    by = {r["variant"]: r for r in rows}
    # JEPA tokens are overhead: more layout tokens, same non-pad (throughput) tokens
    assert by["sp_first"]["layout_tokens_per_step"] > by["sft"]["layout_tokens_per_step"]
    assert by["two_pass"]["rows_per_step"] > by["sft"]["rows_per_step"]


def test_table_and_json_cli(tmp_path, capsys):
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    rc = main(
        [
            "bench",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--per_device_train_batch_size",
            "2",
            "--n_batches",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--variants",
            "sft,sp_first",
            "--threads",
            "1",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "torch" in printed and "ms/step" in printed and "sp_first" in printed
    data = json.loads(out.read_text())
    assert [r["variant"] for r in data["rows"]] == ["sft", "sp_first"]
    assert "| variant |" in md.read_text()
    assert "time ×SFT" in format_table(data) and "MFU %" in format_table(data)


def test_hf_labels_are_the_unshifted_targets(tok_chatml):
    """hf_sft trains the same tokens: its labels shifted by one are our lm_targets."""
    from step_jepa.bench.run import load_examples
    from step_jepa.bench.timing import BenchConfig

    exs, _ = load_examples(BenchConfig(per_device_train_batch_size=3, n_batches=1), tok_chatml)
    for packed in (False, True):
        (b,) = build_batches("sft_packed" if packed else "sft", [exs], tok_chatml.pad_token_id, [], "sdpa", 0, 0)
        h = hf_inputs(b, packed)
        assert (h["labels"][:, 1:] == b["lm_targets"][:, :-1]).all()
        assert (h["labels"][:, 0] == -100).all()
        for r, ex in enumerate(exs if not packed else []):
            assert h["labels"][r, : len(ex.labels)].tolist() == ex.labels


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        run_bench(BenchConfig(variants=["nope"], device="cpu"))


def test_profile_dir_writes_an_op_table_per_variant(tmp_path):
    cfg = BenchConfig(
        model="tiny",
        device="cpu",
        per_device_train_batch_size=4,
        n_batches=1,
        steps=1,
        warmup=1,
        mem_steps=0,
        variants=["sft", "sp_first"],
        profile_dir=str(tmp_path),
        profile_steps=1,
    )
    run_bench(cfg, log=lambda s: None)
    for variant in cfg.variants:
        text = (tmp_path / f"profile_{variant}.txt").read_text()
        assert text.startswith(f"{variant}: 1 steps, sorted by self_cpu_time_total")
        assert "aten::mm" in text  # the linear layers' matmuls are among the recorded ops


def test_profile_needs_steps():
    with pytest.raises(ValueError, match="--profile_steps"):
        run_bench(BenchConfig(device="cpu", profile_dir="x", profile_steps=0))


@pytest.mark.slow
def test_compile_option_runs_and_is_reported():
    cfg = BenchConfig(
        model="tiny",
        device="cpu",
        per_device_train_batch_size=4,
        n_batches=1,
        steps=1,
        warmup=1,
        mem_steps=0,
        variants=["sp_first"],
        torch_compile=True,
    )
    result = run_bench(cfg, log=lambda s: None)
    assert "torch.compile'd decoder" in result["env"]["attn"]
    assert result["rows"][0]["ms_median"] > 0 and result["rows"][0]["compiled_graphs"] >= 1


def test_rounds_give_a_per_round_ratio_against_sft():
    """×SFT by round pairs each round's medians; with two rounds it is the mean of the two ratios, and
    the range is their lowest and highest."""
    cfg = BenchConfig(
        model="tiny",
        per_device_train_batch_size=4,
        n_batches=2,
        steps=2,
        warmup=1,
        device="cpu",
        threads=1,
        rounds=2,
        variants=["sft", "sp_first"],
    )
    result = run_bench(cfg, log=lambda s: None)
    rows = {r["variant"]: r for r in result["rows"]}
    sft, sp = rows["sft"], rows["sp_first"]
    assert len(sft["round_ms"]) == len(sp["round_ms"]) == 2
    assert sft["time_x_sft_rounds"] == pytest.approx(1.0)
    ratios = [a / b for a, b in zip(sp["round_ms"], sft["round_ms"])]
    assert sp["time_x_sft_rounds"] == pytest.approx(sum(ratios) / 2)
    assert sp["time_x_sft_range"] == pytest.approx((min(ratios), max(ratios)))
    assert sft["time_x_sft_range"] == pytest.approx((1.0, 1.0))
    lo, hi = sp["time_x_sft_range"]
    assert f"| {lo:.3f}–{hi:.3f} |" in format_table(result, markdown=True)
    assert sp["ms_median"] == pytest.approx(min(sp["round_ms"]))  # the table keeps the fastest round


def test_target_and_boundary_variants_change_the_layout_as_designed():
    """A frozen target takes the step copy out of the online rows (only the K predictors stay); the
    seed's boundary lengthens each copy by its step's separator tokens."""
    cfg = tiny_bench(["sft", "sp_first", "sp_first_frozen", "sp_first_separator"], steps=1)
    tokens = {r["variant"]: r["layout_tokens_per_step"] for r in run_bench(cfg, log=lambda s: None)["rows"]}
    examples = cfg.per_device_train_batch_size
    assert tokens["sp_first_frozen"] - tokens["sft"] == cfg.predictors * examples
    assert tokens["sp_first"] > tokens["sp_first_frozen"]
    extra = tokens["sp_first_separator"] - tokens["sp_first"]
    assert extra > 0 and extra % examples == 0  # the same separator after every example's step 2
