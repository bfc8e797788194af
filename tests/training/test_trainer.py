"""Trainer-level guarantees: per-token LM normalisation across gradient accumulation, packing budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import set_seed

from step_jepa.method.model import StepJEPAModel
from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer
from step_jepa.training.config import StepJEPAConfig
from step_jepa.training.data import (
    ListDataset,
    appended_tokens,
    build_collator,
    load_training_records,
    make_dataset,
    pack_groups,
    segment_all,
)
from step_jepa.training.model import build_model
from step_jepa.training.trainer import StepJEPATrainer


def _one_sgd_step(model_dir: Path, out: Path, bs: int, ga: int) -> dict[str, torch.Tensor]:
    """Parameters after one plain-SGD step (lr 1, no clipping): the update is exactly −gradient."""
    cfg = StepJEPAConfig(
        model=str(model_dir),
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga,
        learning_rate=1.0,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=1e9,
        report_to="none",
        generate_examples=8,
        lbd=0.5,
        save_steps=1000,
        logging_steps=1000,
    )
    set_seed(0)
    lm, tok, pred_ids, _ = build_model(cfg)
    records, _ = load_training_records(cfg)
    examples, _ = segment_all(records, tok, cfg.max_length)
    args = cfg
    args.optim = "sgd"
    trainer = StepJEPATrainer(
        model=StepJEPAModel(lm, cfg),
        args=args,
        train_dataset=ListDataset(examples),
        data_collator=build_collator(cfg, tok, pred_ids, "sdpa"),
        processing_class=tok,
        step_config=cfg,
    )
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    trainer.train()
    return {n: before[n] - p.detach() for n, p in lm.named_parameters()}


@pytest.mark.slow
def test_gradient_accumulation_gives_the_large_batch_gradient(model_dir: Path, tmp_path: Path):
    """Batch 4 in one micro-batch and batch 2 × 2 accumulation step give the same update: the LM loss
    is normalised over all labelled tokens of the optimizer step, the JEPA mean over micro-batches."""
    big = _one_sgd_step(model_dir, tmp_path / "ga1", bs=4, ga=1)
    acc = _one_sgd_step(model_dir, tmp_path / "ga2", bs=2, ga=2)
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=2e-4, atol=1e-6, msg=name)
    assert sum(v.abs().sum() for v in big.values()) > 0


@pytest.mark.parametrize("pairs", ["first", "all", "random"])
def test_packed_groups_respect_the_token_budget(model_dir: Path, tmp_path: Path, pairs: str):
    cfg = StepJEPAConfig(
        model=str(model_dir),
        output_dir=str(tmp_path),
        generate_examples=40,
        pairs=pairs,
        packing=True,
        max_tokens_per_batch=1024,
        predictors=2,
    )
    lm, tok, pred_ids, _ = build_model(cfg)
    examples, _ = segment_all(load_training_records(cfg)[0], tok, cfg.max_length)
    groups = pack_groups(examples, cfg.max_tokens_per_batch, lambda ex: appended_tokens(ex, cfg), cfg.seed)
    assert sum(len(g) for g in groups) == len(examples)
    collate = build_collator(cfg, tok, pred_ids, "sdpa")
    for g in groups:
        batch = collate([g])
        assert batch["input_ids"].shape == (1, batch["input_ids"].shape[1])  # one padding-free row
        assert batch["input_ids"].shape[1] <= cfg.max_tokens_per_batch
        if pairs != "random":
            assert (batch["role"] != 0).sum() == sum(len(ex.input_ids) + appended_tokens(ex, cfg) for ex in g)


def test_packing_budget_examples_gives_jepa_the_sft_batches(model_dir: Path, tmp_path: Path):
    """--packing_budget examples: the JEPA run's batches are the SFT run's (same examples per step,
    same step count), each still one row holding the JEPA extras; the default budget counts the
    extras and so makes more, smaller batches."""
    base = dict(
        model=str(model_dir),
        output_dir=str(tmp_path),
        generate_examples=40,
        packing=True,
        max_tokens_per_batch=1024,
        predictors=2,
        sft_predictor_tokens=True,
    )
    sft, jepa = StepJEPAConfig(**base, lbd=0), StepJEPAConfig(**base, lbd=0.5)
    same = StepJEPAConfig(**base, lbd=0.5, packing_budget="examples")
    lm, tok, pred_ids, _ = build_model(jepa)
    examples, _ = segment_all(load_training_records(jepa)[0], tok, jepa.max_length)
    ids = lambda cfg: [[ex.id for ex in g] for g in make_dataset(examples, cfg).items]  # noqa: E731
    assert ids(same) == ids(sft)
    assert len(ids(jepa)) > len(ids(sft))
    collate = build_collator(same, tok, pred_ids, "sdpa")
    over = 0
    for g in make_dataset(examples, same).items:
        batch = collate([g])
        assert batch["input_ids"].shape[0] == 1  # one padding-free row, even past the budget
        assert (batch["role"] != 0).sum() == sum(len(ex.input_ids) + appended_tokens(ex, jepa) for ex in g)
        over += batch["input_ids"].shape[1] > same.max_tokens_per_batch
    assert over > 0  # the extras do push rows past the budget: the case is exercised


@pytest.mark.parametrize("flag", [False, True])
def test_sft_predictor_tokens_match_the_jepa_vocabulary(model_dir: Path, tmp_path: Path, flag: bool):
    sft = StepJEPAConfig(model=str(model_dir), output_dir=str(tmp_path), lbd=0, predictors=2, sft_predictor_tokens=flag)
    jepa = StepJEPAConfig(model=str(model_dir), output_dir=str(tmp_path), lbd=0.1, predictors=2)
    lm_s, tok_s, ids_s, _ = build_model(sft)
    lm_j, tok_j, ids_j, _ = build_model(jepa)
    assert (ids_s == ids_j) is flag and len(ids_s) == (2 if flag else 0)
    assert (len(tok_s) == len(tok_j)) is flag
    assert lm_s.get_input_embeddings().weight.shape[0] == len(tok_s)
    # The tokens exist but SFT batches never contain them.
    batch = build_collator(sft, tok_s, ids_s, "sdpa")(
        segment_all(load_training_records(sft)[0][:2], tok_s, sft.max_length)[0]
    )
    assert not torch.isin(batch["input_ids"], torch.tensor(ids_j)).any()


def test_ema_target_of_a_tied_model_saves_and_loads(tmp_path: Path):
    """Tied embeddings share memory, which safetensors refuses: the saved EMA state keeps one copy
    and loading restores both (the head stays tied to the input embeddings)."""
    from safetensors.torch import load_file, save_model

    from step_jepa.method.options import JEPAOptions
    from step_jepa.models.tiny import build_tiny_model
    from step_jepa.training.checkpoints import EMA_FILE

    wrapper = StepJEPAModel(build_tiny_model(50, tie=True), JEPAOptions(jepa_target="ema"))
    ema = wrapper._ema[0]
    save_model(ema, str(tmp_path / EMA_FILE))  # what the trainer's checkpoint save does
    assert len(load_file(tmp_path / EMA_FILE)) == len(ema.state_dict()) - 1  # the lm_head alias is dropped
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    StepJEPATrainer._load_ema(wrapper, str(tmp_path))
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, saved[k], msg=k)
    assert ema.get_output_embeddings().weight.data_ptr() == ema.get_input_embeddings().weight.data_ptr()


@pytest.mark.slow
def test_torch_compile_trains_and_saves_plain_weights(model_dir: Path, tmp_path: Path):
    """`--torch_compile` through the real training loop: the loss is that of the eager run, and
    the saved weights carry the base model's parameter names (no `_orig_mod.` prefix), so
    `from_pretrained` finds every one of them."""
    from safetensors import safe_open

    from step_jepa.training.trainer import run_train

    def saved_keys(d: Path) -> set[str]:
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            return set(f.keys())

    def run(compile_: bool, out: Path) -> float:
        cfg = StepJEPAConfig(
            model=str(model_dir),
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=4,
            generate_examples=8,
            lbd=0.5,
            report_to="none",
            save_steps=1000,
            logging_steps=1,
            torch_compile=compile_,
            seed=0,
        )
        return run_train(cfg)["train_loss"]

    eager = run(False, tmp_path / "eager")
    compiled = run(True, tmp_path / "compiled")
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert (
        saved_keys(tmp_path / "compiled" / "final") == saved_keys(tmp_path / "eager" / "final") == saved_keys(model_dir)
    )


class _KeepModel:
    """A TrainerCallback that keeps the trained model, to compare it with what was saved."""

    def __init__(self):
        self.model = None

    def __getattr__(self, name):  # every other TrainerCallback event: do nothing
        if name.startswith("on_"):
            return lambda *a, **kw: None
        raise AttributeError(name)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_lora_final_loads_the_documented_way_with_the_same_logits(tmp_path: Path, tie: bool):
    """final/ of a --lora run holds the adapter, the predictor rows (untied: K rows of the embedding
    and the head; tied: the resized input embedding, see `finalize_adapter`) and a portable base
    name; loaded with `load_for_inference` or with plain PEFT onto a resized base — which then
    survives `tie_weights()` — it gives the logits of the trained model, predictor column included."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from step_jepa.models.loading import load_for_inference, load_tokenizer
    from step_jepa.training.trainer import run_train

    base_dir = tmp_path / "base"
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok), tie=tie, seed=3).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    keep = _KeepModel()
    cfg = StepJEPAConfig(
        model=str(base_dir),
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=4,
        generate_examples=8,
        lbd=0.5,
        predictors=2,
        lora=True,
        learning_rate=5e-2,
        warmup_ratio=0.0,
        report_to="none",
        save_steps=1000,
        logging_steps=1000,
    )
    run_train(cfg, callbacks=[keep])
    final = tmp_path / "run" / "final"
    trained = keep.model.lm.eval()
    ftok = load_tokenizer(str(final))
    pred = ftok.convert_tokens_to_ids(["<|predictor_1|>", "<|predictor_2|>"])
    ids = torch.tensor([ftok("Step 1: 12 + 30 = 42.\n\n")["input_ids"] + pred])
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        merged, _ = load_for_inference(str(final), dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        base.resize_token_embeddings(len(ftok))
        adapter = PeftModel.from_pretrained(base, final).eval()
        adapter.tie_weights()  # raised AttributeError for a tied model with trainable tokens (peft 0.21)
        if tie:
            assert adapter.get_output_embeddings().weight is adapter.get_input_embeddings().weight
        for got in (merged(input_ids=ids).logits, adapter(input_ids=ids).logits):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The predictor rows were trained (not still at their initial values), so the check above covers them.
    deltas = {n: p for n, p in trained.named_parameters() if "trainable_tokens_delta" in n}
    originals = {n: b for n, b in trained.named_buffers() if "trainable_tokens_original" in n}
    assert len(deltas) == len(originals) == (1 if tie else 2)
    for (_, d), (_, o) in zip(sorted(deltas.items()), sorted(originals.items())):
        assert d.shape == (2, d.shape[1]) and (d - o).abs().max() > 1e-3

    from safetensors import safe_open

    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    full = [k for k, s in shapes.items() if s[0] >= len(tok)]
    if tie:  # the resized input embedding alone, no trainable tokens (they break tie_weights on load)
        assert full == ["base_model.model.model.embed_tokens.weight"] and shapes[full[0]][0] == len(ftok)
        assert not [k for k in shapes if "trainable_tokens" in k]
    else:  # K rows of the embedding and of the head, no full matrix
        assert not full and sum(1 for k in shapes if "trainable_tokens_delta" in k) == 2
        trainable = sum(p.numel() * p.element_size() for p in trained.parameters() if p.requires_grad)
        assert (final / "adapter_model.safetensors").stat().st_size < trainable + 16_384  # + the JSON header
    import json

    acfg = json.loads((final / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(base_dir.resolve())
    assert (acfg["trainable_token_indices"] is None) == tie
    base_record = json.loads((final / "step_jepa_base.json").read_text())
    assert base_record["kind"] == "local" and base_record["path"] == str(base_dir.resolve())


def test_lora_adapter_records_the_model_name_the_user_gave(model_dir: Path, tmp_path: Path):
    """A hub name must stay a hub name in adapter_config.json, not this machine's cache path."""
    from step_jepa.training.model import apply_lora

    lm, _, pred_ids, _ = build_model(StepJEPAConfig(model=str(model_dir), output_dir=str(tmp_path), lbd=0.1))
    cfg = StepJEPAConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct", output_dir=str(tmp_path), lora=True)
    peft = apply_lora(lm, cfg, pred_ids)
    assert peft.peft_config["default"].base_model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert peft.peft_config["default"].trainable_token_indices == {"embed_tokens": pred_ids, "lm_head": pred_ids}


def test_lora_default_keeps_no_dropped_input_copies(model_dir: Path, tmp_path: Path):
    """LoRA dropout > 0 stores a dropped copy of every adapted layer's input for backward, which
    made LoRA peak above full fine-tuning (docs/performance.md); the default must not."""
    lm, *_ = build_model(StepJEPAConfig(model=str(model_dir), output_dir=str(tmp_path), lbd=0.1, lora=True))
    dropouts = [m for n, m in lm.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(isinstance(m, torch.nn.Identity) for m in dropouts)


def _direct_eval_losses(final: Path, records: list[dict], cfg: StepJEPAConfig) -> tuple[float, float]:
    """Per-token LM loss of the saved model on `records` from plain HF logits, and the mean JEPA loss
    over their pairs, one example at a time: no batching for the two to share."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from step_jepa.data.segment import segment
    from step_jepa.models.loading import load_tokenizer

    lm = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = load_tokenizer(str(final))
    pred_ids = tok.convert_tokens_to_ids(["<|predictor_1|>"])
    wrapper = StepJEPAModel(lm, cfg).eval()
    collate = build_collator(cfg, tok, pred_ids, "sdpa")
    ce, tokens, jepa = 0.0, 0, []
    with torch.no_grad():
        for r in records:
            ex = segment(r, tok, cfg.max_length)
            ids, labels = torch.tensor([ex.input_ids]), torch.tensor(ex.labels[1:])
            logits = lm(input_ids=ids).logits[0, :-1]
            ce += F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
            tokens += int((labels != -100).sum())
            jepa.append(wrapper(**collate([ex]))["jepa"].item())
    return ce / tokens, sum(jepa) / len(jepa)


@pytest.mark.slow
def test_eval_file_logs_held_out_losses_of_the_whole_set(model_dir: Path, tmp_path: Path):
    """--eval_file: eval_lm_loss is the per-token loss over the whole held-out set (batches of 4
    and 3 examples of different lengths, so a mean of batch means would differ), eval_jepa_loss the
    mean over its pairs, both at the logged steps and equal to a direct computation at the end."""
    import json

    from step_jepa.data.synthetic import generate_problems
    from step_jepa.training.trainer import run_train

    records = generate_problems(7, seed=77)
    eval_file = tmp_path / "heldout.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = StepJEPAConfig(
        model=str(model_dir),
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=4,
        generate_examples=8,
        lbd=0.5,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        report_to="none",
        save_steps=1000,
        logging_steps=1,
        eval_file=str(eval_file),
        eval_steps=2,
    )
    run_train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logged if "eval_lm_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert evals[0]["eval_lm_loss"] != evals[1]["eval_lm_loss"]  # evaluated on the weights of that step
    lm_loss, jepa_loss = _direct_eval_losses(tmp_path / "run" / "final", records, cfg)
    last = evals[-1]
    assert last["eval_lm_loss"] == pytest.approx(lm_loss, rel=1e-5)
    assert last["eval_jepa_loss"] == pytest.approx(jepa_loss, rel=1e-4, abs=1e-6)  # 1 - cos, near 0 in fp32
    assert last["eval_pairs"] == 7
    assert last["eval_loss"] == pytest.approx(lm_loss + 0.5 * jepa_loss, rel=1e-5)


def test_eval_file_with_stp_logs_its_term_in_eval_loss(model_dir: Path, tmp_path: Path):
    """With --stp_lbd the held-out STP term is logged (mean over triplets: one per example) and
    counted in eval_loss, as it is in the training loss."""
    import json

    from step_jepa.data.synthetic import generate_problems
    from step_jepa.training.trainer import run_train

    eval_file = tmp_path / "heldout.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in generate_problems(5, seed=78)))
    cfg = StepJEPAConfig(
        model=str(model_dir),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        generate_examples=8,
        lbd=0.0,
        stp_lbd=0.5,
        report_to="none",
        save_steps=1000,
        logging_steps=1,
        eval_file=str(eval_file),
        eval_steps=2,
    )
    run_train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (last,) = [r for r in logged if "eval_lm_loss" in r]
    assert 0.0 <= last["eval_stp_loss"] <= 2.0 and "eval_jepa_loss" not in last
    assert last["eval_loss"] == pytest.approx(last["eval_lm_loss"] + 0.5 * last["eval_stp_loss"], rel=1e-6)


def test_eval_strategy_needs_an_eval_file(tmp_path: Path):
    with pytest.raises(ValueError, match="--eval_strategy steps needs --eval_file"):
        StepJEPAConfig(eval_strategy="steps").validate()
    assert StepJEPAConfig().resolved_eval_strategy() == "no"
    assert StepJEPAConfig(eval_file="x.jsonl").resolved_eval_strategy() == "steps"
    assert StepJEPAConfig(eval_file="x.jsonl", eval_strategy="no").resolved_eval_strategy() == "no"


def test_save_honours_a_given_state_dict(model_dir: Path, tmp_path: Path):
    """FSDP / DeepSpeed hand `_save` the gathered state dict of the wrapper: it is what gets written
    (keys without the wrapper's "lm." prefix; the predictor head's beside the model)."""
    from safetensors.torch import load_file

    from step_jepa.training.checkpoints import HEAD_FILE

    cfg = StepJEPAConfig(
        model=str(model_dir),
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        report_to="none",
        generate_examples=4,
        jepa_predictor_head="mlp",
    )
    lm, tok, pred_ids, _ = build_model(cfg)
    wrapper = StepJEPAModel(lm, cfg)
    trainer = StepJEPATrainer(
        model=wrapper,
        args=cfg,
        train_dataset=ListDataset([]),
        data_collator=build_collator(cfg, tok, pred_ids, "sdpa"),
        processing_class=tok,
        step_config=cfg,
    )
    given = {k: v.detach() + 1.0 for k, v in wrapper.state_dict().items()}
    trainer._save(str(tmp_path / "saved"), state_dict=given)
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert saved and all(torch.equal(v, given["lm." + k]) for k, v in saved.items())
    head = load_file(tmp_path / "saved" / HEAD_FILE)
    assert head and all(torch.equal(v, given["head." + k]) for k, v in head.items())


def test_jepa_layer_outside_the_model_is_refused_at_build(model_dir: Path, tmp_path: Path):
    """A --jepa_layer the model lacks (the tiny model has 2 layers) is one clear error naming the
    layer count, before any training; -2 (from the top) is accepted."""
    with pytest.raises(ValueError, match=r"--jepa_layer 15: .* has 2 decoder layers"):
        build_model(StepJEPAConfig(model=str(model_dir), output_dir=str(tmp_path), lbd=0.1, jepa_layer=15))
    build_model(StepJEPAConfig(model=str(model_dir), output_dir=str(tmp_path), lbd=0.1, jepa_layer=-2))
