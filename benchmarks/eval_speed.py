"""Generation speed of step_jepa.evaluation.evaluate's decode loop vs HF ``model.generate``, same prompts, same scoring.

    python benchmarks/eval_speed.py --model DIR --test_file test.jsonl --max_new_tokens 512 [--limit N] \
        [--compare_hf] [--hf_batch_size 512] [--dtype bf16]

Prints one row per method (wall seconds of generation, generated tokens/s, accuracy) and, with
``--compare_hf``, how many outputs differ.

``--variants loop:400000,loop:auto,graphs:auto:128,...`` times our loop in several settings in one
process (one model load): ``loop`` is the default decode loop, ``graphs`` the CUDA-graph loop
(``--cuda_graphs true``), then the batch budget (``--max_batch_tokens``; ``auto`` = the default, half
the free GPU memory) and, for ``graphs``, the attention window step. Each row also gives batches,
decode steps, graphs recorded, host seconds in new-shape steps, and how many outputs are
token-identical to the first variant's and to the ``loop`` variant of the same budget (when one
was run); ``--json`` writes the rows.  In fp32 the two must agree exactly; in bf16 a few rows can
flip because a different batch composition changes the matmul reduction order, so they are counted,
not asserted.

``--random_init`` replaces the model's weights by a random SmolLM2-135M-shaped Llama (for machines
without the real weights): it never emits EOS, so every row runs the full ``max_new_tokens`` (the
worst case for both methods) and accuracy is meaningless.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from step_jepa.evaluation import evaluate as ev
from step_jepa.evaluation.decode import (
    GenResult,
    _pad_id,
    _to_result,
    _trim,
    attention_backends,
    encode_prompts,
    generate,
    plan_batches,
    stop_token_ids,
)

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)


def _records(args: argparse.Namespace) -> list[dict]:
    if args.test_file:
        from step_jepa.data.load import load_records

        records, _ = load_records(args.test_file)
    else:
        from step_jepa.data.synthetic import generate_problems

        records = generate_problems(args.generate, seed=0)
    return records[: args.limit] if args.limit else records


def _load(args: argparse.Namespace):
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "auto": None}[args.dtype]
    if args.random_init:
        from transformers import AutoModelForCausalLM, LlamaConfig

        from step_jepa.models.tiny import build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_135M), attn_implementation="sdpa")
        model.to(device=args.device, dtype=dtype or torch.bfloat16).eval()
        return model, tok
    from step_jepa.models.loading import load_for_inference

    return load_for_inference(args.model, dtype=dtype, device=args.device)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_ours(model, tok, prompts, args) -> tuple[list[GenResult], float]:
    _sync()
    t0 = time.perf_counter()
    res = generate(
        model,
        tok,
        prompts,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        progress=False,
        stop_ids=args.stops,
    )
    _sync()
    return res, time.perf_counter() - t0


def run_hf(model, tok, prompts, args) -> tuple[list[GenResult], float]:
    """HF generate in length-sorted batches of ``--hf_batch_size`` (its fairest configuration)."""
    seqs = encode_prompts(tok, prompts)
    pad = _pad_id(tok, args.stops)
    stops = set(args.stops)
    results: list[GenResult | None] = [None] * len(seqs)
    _sync()
    t0 = time.perf_counter()
    for idx in plan_batches([len(s) for s in seqs], args.max_new_tokens, None, args.hf_batch_size):
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]) :] = torch.tensor(seqs[i])
            mask[r, width - len(seqs[i]) :] = 1
        # Same SDPA backends as ours: identical kernels, so identical tokens are possible, and HF is
        # spared cuDNN's per-shape plan building (which would make this baseline several times slower).
        with torch.inference_mode(), attention_backends(model.device):
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=list(stops) or None,
                pad_token_id=pad,
            )
        for i, toks in zip(idx, _trim(out[:, width:].tolist(), stops)):
            results[i] = _to_result(tok, toks, stops)
    _sync()
    return [r for r in results if r is not None], time.perf_counter() - t0


def run_variant(model, tok, prompts, spec: str, args) -> dict:
    """One ``loop|graphs:BUDGET[:WINDOW]`` setting of our decode loop, timed, with its per-batch stats."""
    kind, budget, *window = spec.split(":")
    if kind not in ("loop", "graphs"):
        raise SystemExit(f"--variants: {spec!r}: the kind must be loop or graphs")
    stats: list[dict] = []
    _sync()
    t0 = time.perf_counter()
    gens = generate(
        model,
        tok,
        prompts,
        max_new_tokens=args.max_new_tokens,
        progress=False,
        max_batch_tokens=None if budget == "auto" else int(budget),
        stop_ids=args.stops,
        cuda_graphs=kind == "graphs",
        graph_window=int(window[0]) if window else 128,
        stats=stats,
    )
    _sync()
    secs = time.perf_counter() - t0
    return {
        "variant": spec,
        "seconds": round(secs, 3),
        "gens": gens,
        "batches": len(stats),
        "steps": sum(s["steps"] for s in stats),
        "captures": sum(s.get("captures", 0) for s in stats),
        "capture_s": round(sum(s.get("capture_s", 0.0) for s in stats), 3),
        "stats": stats,
    }


def run_variants(model, tok, records, prompts, args) -> int:
    rows = [run_variant(model, tok, prompts, spec, args) for spec in args.variants.split(",")]
    ref = rows[0]["gens"]
    # The loop run at the same batch budget: a graph variant's outputs are compared with it too,
    # since the budget alone changes bf16 outputs (docs/evaluate.md).
    loops = {r["variant"].split(":")[1]: r["gens"] for r in rows if r["variant"].startswith("loop:")}
    same = lambda x, y: sum(a.text == b.text and a.n_tokens == b.n_tokens for a, b in zip(x, y))  # noqa: E731
    print(
        f"{'variant':<22} {'wall s':>7} {'tok/s':>8} {'correct':>8} {'same as 1st':>11} {'same as loop':>12} "
        f"{'batches':>7} {'steps':>6} {'graphs':>6} {'capture s':>9}"
    )
    for r in rows:
        gens = r.pop("gens")
        loop = loops.get(r["variant"].split(":")[1])
        n_tok = sum(g.n_tokens for g in gens)
        r.update(
            tokens=n_tok,
            tokens_per_s=round(n_tok / r["seconds"]),
            correct=sum(ev._score(rec, g, False)["correct"] for rec, g in zip(records, gens)),
            identical=same(gens, ref),
            identical_to_loop=same(gens, loop) if loop is not None else None,
        )
        vs_loop = "-" if r["identical_to_loop"] is None else str(r["identical_to_loop"])
        print(
            f"{r['variant']:<22} {r['seconds']:>7.2f} {r['tokens_per_s']:>8d} {r['correct']:>8d} "
            f"{r['identical']:>11d} {vs_loop:>12} {r['batches']:>7d} {r['steps']:>6d} {r['captures']:>6d} "
            f"{r['capture_s']:>9.2f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "n": len(records),
                    "max_new_tokens": args.max_new_tokens,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


def _accuracy(records, gens) -> float:
    return sum(ev._score(r, g, False)["correct"] for r, g in zip(records, gens)) / max(len(records), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--test_file")
    p.add_argument("--generate", type=int, default=1319, help="synthetic problems when no --test_file")
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--limit", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--max_batch_tokens", type=int)
    p.add_argument("--compare_hf", action="store_true")
    p.add_argument("--hf_batch_size", type=int, default=512)
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--random_init", action="store_true", help="random SmolLM2-135M-shaped weights, no EOS")
    p.add_argument("--warmup", type=int, default=8, help="prompts decoded once before timing (kernel warm-up)")
    p.add_argument("--variants", help="comma list of loop|graphs:BUDGET|auto[:WINDOW] settings of our loop")
    p.add_argument("--json", help="with --variants: write the rows here")
    args = p.parse_args(argv)

    model, tok = _load(args)
    records = _records(args)
    prompts = ev.build_prompts(records)
    args.stops = [] if args.random_init else stop_token_ids(model, tok)
    if args.warmup:
        generate(model, tok, prompts[: args.warmup], max_new_tokens=8, progress=False, stop_ids=args.stops)
    if args.variants:
        return run_variants(model, tok, records, prompts, args)

    rows = []
    ours, t_ours = run_ours(model, tok, prompts, args)
    rows.append(("ours", t_ours, ours))
    if args.compare_hf:
        hf, t_hf = run_hf(model, tok, prompts, args)
        rows.append((f"HF generate batch {args.hf_batch_size}", t_hf, hf))

    print(
        f"model {args.model}{' (random init)' if args.random_init else ''}, n={len(records)}, "
        f"max_new_tokens={args.max_new_tokens}, dtype={next(model.parameters()).dtype}, device={args.device}"
    )
    print(f"{'method':<24} {'wall s':>8} {'gen tokens':>11} {'tokens/s':>10} {'accuracy':>9} {'errors':>7}")
    for name, secs, gens in rows:
        n_tok = sum(g.n_tokens for g in gens)
        print(
            f"{name:<24} {secs:>8.2f} {n_tok:>11d} {n_tok / secs:>10.0f} {_accuracy(records, gens):>9.4f} "
            f"{sum(g.error is not None for g in gens):>7d}"
        )
    if args.compare_hf:
        differ = sum(a.text != b.text or a.n_tokens != b.n_tokens for a, b in zip(ours, hf))
        print(f"differing outputs (ours vs HF): {differ} / {len(ours)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
