"""`step-jepa bench`: what one optimizer step costs, per training layout, on the same examples.

Variants (each padded, or with the ``_packed`` suffix: the same examples packed into rows):

  hf_sft     the model's own loss: ``lm(input_ids, attention_mask, labels).loss`` (full [B, T, V] logits)
  sft        our SFT: λ = 0 through StepJEPAModel (logits only at labelled positions)
  two_pass   the two-pass JEPA reference (pairs=first): a second forward pass for the views
  sp_first   single-pass JEPA, pairs=first
  sp_all     single-pass JEPA, pairs=all

Every variant sees the same fixed list of batches (``n_batches`` batches of ``per_device_train_batch_size``
examples, cycled), starts from the same weights and gets a fresh AdamW. Batches are collated and
moved to the device before timing; the timed loop is zero_grad(set_to_none) → forward → backward →
step with no host synchronisation added by the benchmark (the model's own syncs, if any, count).
Time ratios compare a variant with the SFT row of the same layout (padded vs packed).

Throughput counts *non-pad tokens of the original examples* only: padding and the appended JEPA
tokens (predictors, step copies, pass-2 sequences) are overhead, not throughput.

The config, result row, timed loop and memory probes are :mod:`step_jepa.bench.timing`, the table
:mod:`step_jepa.bench.table`; this module sets the variants up, runs them and holds the CLI.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

import torch

from step_jepa.bench.flops import FlopCounter, matmul_peak
from step_jepa.bench.timing import (
    MEMORY_NOTE_CPU,
    MEMORY_NOTE_CUDA,
    BenchConfig,
    Row,
    _CpuMemory,
    _graphs,
    environment,
    run_variant,
)
from step_jepa.data.segment import IGNORE_INDEX, Segmented, SegmentError, segment
from step_jepa.method.layout import StepJEPACollator
from step_jepa.method.masks import PAD
from step_jepa.method.options import JEPAOptions
from step_jepa.training.model import check_jepa_layer

BASE_VARIANTS = {
    "hf_sft": dict(kind="hf", mode="sft", pairs="first"),
    "sft": dict(kind="ours", mode="sft", pairs="first"),
    "two_pass": dict(kind="ours", mode="two_pass", pairs="first"),
    "sp_first": dict(kind="ours", mode="single_pass", pairs="first"),
    "sp_all": dict(kind="ours", mode="single_pass", pairs="all"),
    # The anti-collapse options on top of single-pass pairs=first: what each one costs.
    "sp_first_stopgrad": dict(kind="ours", mode="single_pass", pairs="first", opts={"jepa_target": "stopgrad"}),
    "sp_first_ema": dict(kind="ours", mode="single_pass", pairs="first", opts={"jepa_target": "ema"}),
    "sp_first_frozen": dict(kind="ours", mode="single_pass", pairs="first", opts={"jepa_target": "frozen"}),
    "sp_first_head": dict(kind="ours", mode="single_pass", pairs="first", opts={"jepa_predictor_head": "mlp"}),
    "sp_first_infonce": dict(kind="ours", mode="single_pass", pairs="first", opts={"jepa_loss": "infonce"}),
    "sp_first_vicreg": dict(kind="ours", mode="single_pass", pairs="first", opts={"vicreg_weight": 1.0}),
    # The seed's step boundary: predictors after step i's blank line, view 2 at the one ending step i+1.
    "sp_first_separator": dict(kind="ours", mode="single_pass", pairs="first", opts={"view_boundary": "separator"}),
    # Semantic Tube Prediction on the ordinary pass: SFT's layout plus three gathered states per example.
    "stp": dict(kind="ours", mode="sft", pairs="first", stp="random"),
    "stp_steps": dict(kind="ours", mode="sft", pairs="first", stp="steps"),
}


VARIANTS = [v for b in BASE_VARIANTS for v in (b, b + "_packed")]


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


# `--data gsm8k` without a path: the raw GSM8K train split where the checkout keeps shared data beside it
GSM8K_DEFAULT = "../shared/data/gsm8k/train.jsonl"


LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    head_dim=64,
)


def resolve_device(cfg: BenchConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_attn(cfg: BenchConfig, device: torch.device) -> str:
    if cfg.attn_implementation != "auto":
        if cfg.attn_implementation == "flex_attention" and device.type != "cuda":
            raise ValueError("flex_attention has no backward on CPU: use --attn_implementation sdpa (or eager)")
        return cfg.attn_implementation
    return "flex_attention" if device.type == "cuda" else "sdpa"


def resolve_dtype(cfg: BenchConfig, device: torch.device) -> str:
    if cfg.dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if cfg.dtype not in ("bf16", "fp32"):
        raise ValueError(f"--dtype must be auto, bf16 or fp32, not {cfg.dtype!r}")
    return cfg.dtype


def _smollm2_tokenizer():
    from step_jepa.models.loading import load_tokenizer
    from step_jepa.models.sources import resolve_model_path

    return load_tokenizer(resolve_model_path(SMOLLM2))


def load_model(name: str, attn: str, device: torch.device, seed: int = 0):
    """(model in fp32 on `device`, tokenizer, description). Weights are fp32 master weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

    torch.manual_seed(seed)
    if name == "tiny":
        tok = build_tiny_tokenizer("chatml")
        lm = build_tiny_model(len(tok), layers=2, hidden=64, seed=seed, attn_implementation=attn)
        desc = "tiny llama (2 layers, hidden 64, random)"
    elif name == "llama1b-random":
        try:
            tok, tok_desc = _smollm2_tokenizer(), "SmolLM2 tokenizer"
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the offline tiny tokenizer
            print(f"[bench] SmolLM2 tokenizer unavailable ({type(e).__name__}); using the tiny tokenizer", flush=True)
            tok, tok_desc = build_tiny_tokenizer("chatml"), "tiny tokenizer"
        with torch.device(device):
            lm = AutoModelForCausalLM.from_config(
                LlamaConfig(**LLAMA_1B), attn_implementation=attn, dtype=torch.float32
            )
        desc = f"random Llama-3.2-1B-shaped (hidden 2048, 16 layers, 32/8 heads, vocab 128256; {tok_desc})"
    else:
        from step_jepa.models.loading import load_tokenizer
        from step_jepa.models.sources import resolve_model_path

        path = resolve_model_path(SMOLLM2 if name == "smollm2" else name)
        tok = load_tokenizer(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
        desc = path
    lm.to(device)
    lm.train()
    return lm, tok, desc


def load_examples(cfg: BenchConfig, tok) -> tuple[list[Segmented], str]:
    """n_batches × per_device_train_batch_size segmented examples (records that do not segment are skipped)."""
    need = cfg.per_device_train_batch_size * cfg.n_batches
    src = cfg.data or ["generator"]
    if src[0] == "generator":
        from step_jepa.data.synthetic import generate_problems

        records, label = generate_problems(need * 2, seed=cfg.seed), "generator"
    else:
        from step_jepa.data.load import load_records

        path = src[1] if src[0] == "gsm8k" and len(src) > 1 else (GSM8K_DEFAULT if src[0] == "gsm8k" else src[0])
        records, _ = load_records(path, skip_invalid=True)
        label = f"{path}"
    out = []
    for r in records:
        try:
            out.append(segment(r, tok, cfg.max_length))
        except SegmentError:
            continue
        if len(out) == need:
            break
    if len(out) < need:
        raise ValueError(
            f"{label}: only {len(out)} usable examples, need {need} (per_device_train_batch_size × n_batches)"
        )
    return out, label


def _layout_tokens(batch: dict) -> int:
    n = batch["input_ids"].numel()
    return n + (batch["pass2"]["input_ids"].numel() if "pass2" in batch else 0)


def _rows(batch: dict) -> int:
    return batch["input_ids"].shape[0] + (batch["pass2"]["input_ids"].shape[0] if "pass2" in batch else 0)


def hf_inputs(batch: dict, packed: bool) -> dict[str, torch.Tensor]:
    """The plain HF call for an SFT layout: unshifted labels; padded rows get a 2-D padding mask,
    packed rows no mask and per-sequence position ids (HF then builds a block-diagonal causal mask)."""
    t = batch["lm_targets"]
    labels = torch.cat([torch.full_like(t[:, :1], IGNORE_INDEX), t[:, :-1]], dim=1)
    if packed:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "labels": labels}
    return {"input_ids": batch["input_ids"], "attention_mask": (batch["role"] != PAD).long(), "labels": labels}


def build_batches(
    variant: str,
    groups: list[list[Segmented]],
    pad_id: int,
    pred_ids: list[int],
    attn: str,
    pack_tokens: int,
    seed: int,
    flops: FlopCounter | None = None,
    flops_out: list[float] | None = None,
    options: JEPAOptions | None = None,
) -> list[dict]:
    """The variant's collated CPU batches for the fixed groups of examples; with `flops`, each
    batch's model FLOPs are appended to `flops_out` (counted on our layout, before an HF variant
    drops its metadata)."""
    base = variant.removesuffix("_packed")
    packed = variant.endswith("_packed")
    spec = BASE_VARIANTS[base]
    pad_multiple = 128 if attn == "flex_attention" else 1
    # An EMA or frozen target needs the step copies in the batch (the variant's options, or the spec's alone).
    opts = options if options is not None else JEPAOptions(**spec.get("opts", {}))
    out = []
    for g in groups:
        kw = dict(
            pad_id=pad_id,
            pred_ids=pred_ids if spec["mode"] != "sft" else [],
            mode=spec["mode"],
            pairs=spec["pairs"],
            pad_multiple=pad_multiple,
            seed=seed,
            target_copies=opts.target_model(),
            boundary=opts.view_boundary,
            stp=spec.get("stp", "none"),
        )
        if packed:
            if pack_tokens > 0:
                cap = pack_tokens
            elif attn == "flex_attention":
                cap = 1 << 30  # the whole batch in one row: flex skips the blocks no one attends to
            else:  # dense masks cost rows × T²: rows no longer than this variant's padded rows
                ref = StepJEPACollator(**{**kw, "pad_multiple": 1})(g)
                cap = max(ref["input_ids"].shape[1], ref["pass2"]["input_ids"].shape[1] if "pass2" in ref else 0)
            batch = StepJEPACollator(**kw, packing=True, max_tokens=cap)(g)
        else:
            batch = StepJEPACollator(**kw)(g)
        if flops is not None and flops_out is not None:
            flops_out.append(flops.step_flops(batch))
        if spec["kind"] == "hf":
            batch = hf_inputs(batch, packed)
        out.append(batch)
    return out


# The weight of the STP variants' term when --stp_lbd is left at train's default 0 (off): the STP
# paper's GSM8K value, so that `bench` always costs the term it names.
STP_LBD = 0.005


def variant_options(cfg: BenchConfig, spec: dict) -> JEPAOptions:
    """The JEPAOptions of one of our variants: the bench's JEPA options, with what the variant sets.

    An SFT layout has no JEPA term (λ = 0), so neither a target model nor a head to pay for; only
    the STP variants weigh the STP term; a variant's own `opts` (the anti-collapse ones) win.
    """
    values = {f.name: getattr(cfg, f.name) for f in fields(JEPAOptions)}
    if spec["mode"] == "sft":
        values.update(lbd=0.0, jepa_target="grad", jepa_target_layer=None, jepa_predictor_head="none")
    values["stp_lbd"] = (cfg.stp_lbd or STP_LBD) if "stp" in spec else 0.0
    values.update(spec.get("opts", {}))
    return JEPAOptions(**values)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every variant; returns {"env": ..., "config": ..., "rows": [Row as dict, ...]}."""
    from step_jepa.method.model import StepJEPAModel
    from step_jepa.models.loading import add_predictor_tokens, compile_decoder

    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    cfg.validate()
    device = resolve_device(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    attn = resolve_attn(cfg, device)
    dtype = resolve_dtype(cfg, device)
    torch.manual_seed(cfg.seed)
    lm, tok, model_desc = load_model(cfg.model, attn, device, cfg.seed)
    n_layers = len(lm.get_decoder().layers)
    check_jepa_layer(cfg.jepa_layer, n_layers, cfg.model)
    check_jepa_layer(cfg.jepa_target_layer, n_layers, cfg.model, "--jepa_target_layer")
    # Predictor tokens are added for every variant, so all of them train the same embedding matrix.
    pred_ids = add_predictor_tokens(lm, tok, cfg.predictors)
    lm.to(device)
    examples, data_label = load_examples(cfg, tok)
    size = cfg.per_device_train_batch_size
    groups = [examples[i * size : (i + 1) * size] for i in range(cfg.n_batches)]
    nonpad = [sum(len(ex.input_ids) for ex in g) for g in groups]
    init_state = {k: v.detach().to("cpu", copy=True) for k, v in lm.state_dict().items()}
    if cfg.torch_compile:  # compiled during each variant's warm-up steps, which are not timed
        compile_decoder(lm, cfg.torch_compile_scope)
    env = environment(device)
    env.update(
        model=model_desc,
        params_m=round(sum(p.numel() for p in lm.parameters()) / 1e6, 2),
        attn=attn + (f", torch.compile'd decoder ({cfg.torch_compile_scope})" if cfg.torch_compile else ""),
        dtype=dtype + (" autocast, fp32 master weights" if dtype == "bf16" else ""),
        data=data_label,
        examples_per_batch=cfg.per_device_train_batch_size,
        batches=cfg.n_batches,
        mean_example_tokens=round(sum(nonpad) / len(examples), 1),
        pairs_valid_frac=round(sum(bool(ex.valid_pairs()) for ex in examples) / len(examples), 3),
    )
    counter = FlopCounter.of(lm)
    # The matmuls run in the autocast dtype on the GPU (bf16) and in fp32 on the CPU.
    matmul = matmul_peak(device, torch.bfloat16 if dtype == "bf16" else torch.float32)
    env.update(
        matmul_peak_tflops=round(matmul["flops_per_s"] / 1e12, 3), matmul_peak_shape=f"{matmul['n']}³ {matmul['dtype']}"
    )
    cpu_mem = _CpuMemory()

    prepared = []
    for variant in cfg.variants:
        spec = BASE_VARIANTS[variant.removesuffix("_packed")]
        if spec["kind"] == "hf":

            def step_loss(b):
                return lm(**b).loss
        else:
            # Each variant's wrapper carries its own weights of the terms; one with options also its
            # EMA copy or head (the head's few parameters stay out of the optimizer, so its AdamW
            # cost is not counted). The loss is the model's own (`step_jepa_loss`), as in training.
            jm = StepJEPAModel(lm, variant_options(cfg, spec)).to(device)

            def step_loss(b, jm=jm):
                jm.update_ema()  # the per-step EMA update is part of the cost (a no-op without EMA)
                return jm(**b)["loss"]

        t0 = time.perf_counter()
        step_flops: list[float] = []
        batches = build_batches(
            variant,
            groups,
            tok.pad_token_id,
            pred_ids,
            attn,
            cfg.pack_tokens,
            cfg.seed,
            counter,
            step_flops,
            options=variant_options(cfg, spec),
        )
        prepared.append((variant, step_loss, batches, step_flops))
        # Progress lines, so that a run stopped by a time limit still shows where the time went.
        log(f"[bench] {variant}: {len(batches)} batches built in {time.perf_counter() - t0:.1f} s")

    idx = [i % cfg.n_batches for i in range(cfg.warmup, cfg.warmup + cfg.steps)]
    tok_per_timed_step = sum(nonpad[i] for i in idx) / len(idx)
    results: dict[str, dict[str, Any]] = {}
    for rnd in range(cfg.rounds):  # rounds: on a shared CPU, the least-disturbed round is kept
        for variant, step_loss, batches, _ in prepared:
            log(f"[bench] {variant}: {cfg.warmup} warm-up + {cfg.steps} timed steps ...")
            g0 = _graphs()
            times, peak, delta, first, last = run_variant(
                variant, lm, step_loss, batches, init_state, cfg, device, dtype, cpu_mem
            )
            med = statistics.median(times)
            prev = results.get(variant)
            log(
                f"[bench] round {rnd + 1}/{cfg.rounds} {variant:<16} {med * 1e3:9.2f} ms/step (median)  "
                f"loss {first:.3f} → {last:.3f}"
            )
            keep = prev is None or med < statistics.median(prev["times"])
            peaks = [x for x in (peak, prev and prev["peak"]) if x is not None]
            deltas = [x for x in (delta, prev and prev["delta"]) if x is not None]
            results[variant] = {
                "times": times if keep else prev["times"],
                "first": first,
                "last": last,
                "round_ms": (prev["round_ms"] if prev else []) + [med * 1e3],
                "peak": max(peaks) if peaks else None,
                "delta": max(deltas) if deltas else None,
                "graphs": (prev["graphs"] if prev else 0) + _graphs() - g0,
            }

    rows: list[Row] = []
    for variant, _, batches, step_flops in prepared:
        r = results[variant]
        times = r["times"]
        med = statistics.median(times)
        flops_per_step = sum(step_flops[i] for i in idx) / len(idx)  # the batches the timed steps ran
        rows.append(
            Row(
                variant=variant,
                ms_median=med * 1e3,
                ms_mean=statistics.fmean(times) * 1e3,
                ms_min=min(times) * 1e3,
                nonpad_tokens_per_s=tok_per_timed_step / med,
                nonpad_tokens_per_step=sum(nonpad) / len(nonpad),
                layout_tokens_per_step=sum(_layout_tokens(b) for b in batches) / len(batches),
                rows_per_step=sum(_rows(b) for b in batches) / len(batches),
                peak_mib=r["peak"],
                delta_peak_mib=r["delta"],
                compiled_graphs=r["graphs"],
                loss_first=r["first"],
                loss_last=r["last"],
                round_ms=r["round_ms"],
                model_tflops_per_s=flops_per_step / med / 1e12,
                mfu=flops_per_step / med / matmul["flops_per_s"],
            )
        )
    by_name = {r.variant: r for r in rows}
    for r in rows:
        suffix = "_packed" if r.variant.endswith("_packed") else ""
        sft, hf = by_name.get("sft" + suffix), by_name.get("hf_sft" + suffix)
        r.time_x_sft = _ratio(r.ms_median, sft.ms_median if sft else None)
        if sft:
            by_round = [a / b for a, b in zip(r.round_ms, sft.round_ms)]
            r.time_x_sft_rounds = statistics.median(by_round)
            if len(by_round) > 1:
                r.time_x_sft_range = (min(by_round), max(by_round))
        r.time_x_hf = _ratio(r.ms_median, hf.ms_median if hf else None)
        r.mem_x_sft = _ratio(r.peak_mib, sft.peak_mib if sft else None)
        r.delta_mem_x_sft = _ratio(r.delta_peak_mib, sft.delta_peak_mib if sft else None)
    return {
        "env": env,
        "config": asdict(cfg),
        "rows": [asdict(r) for r in rows],
        "memory_note": MEMORY_NOTE_CUDA if device.type == "cuda" else MEMORY_NOTE_CPU,
    }
