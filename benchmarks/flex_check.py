"""GPU check of the FlexAttention backend: same loss and gradients as SDPA, same as the two-pass
reference, and no B×T×T mask materialised.

    python benchmarks/flex_check.py [--checks flex,compile,mask] [--models tiny,smollm2] [--smollm2 PATH]
                                    [--mask_T 8192 --mask_B 8]

For each model (a 4-layer hidden-256 random Llama, and SmolLM2-135M when it resolves), in fp32
with TF32 off, on padded and packed batches of real layouts (single-pass, pairs=all, K=2):

  flex_sp  vs sdpa_sp   single-pass loss and every parameter gradient, FlexAttention vs dense SDPA mask
  flex_sp  vs flex_tp   single-pass vs the two-pass reference, both with FlexAttention
  sdpa_sp  vs sdpa_tp   the same under SDPA (the CPU-tested path, as a control)

Relative error = |a−b|/|b| for losses and max over parameters of ‖ga−gb‖/‖gb‖ for gradients;
PASS below --tol (1e-4). `compile` checks, for each model and layout:

  compiled_sp vs flex_sp   single-pass with the decoder torch.compile'd in place (`--torch_compile`,
                           dynamic shapes) against the same model uncompiled, FlexAttention

`mask`: the block mask of a packed B×T layout is built (compiled, warm) and
the CUDA memory it allocates is compared with the B·T·T bytes a dense boolean mask would take;
PASS below 1/16 of that. Exit status 1 if anything FAILs, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from step_jepa.data.segment import SegmentError, segment
from step_jepa.method.layout import StepJEPACollator, meta_of
from step_jepa.method.masks import flex_block_mask
from step_jepa.method.model import StepJEPAModel
from step_jepa.method.options import JEPAOptions
from step_jepa.models.loading import add_predictor_tokens

ROWS: list[tuple[str, str, float, str]] = []  # (check, detail, value, PASS/FAIL)


def report(check: str, detail: str, value: float, ok: bool) -> None:
    ROWS.append((check, detail, value, "PASS" if ok else "FAIL"))
    print(f"[flex_check] {'PASS' if ok else 'FAIL'}  {check:<34} {detail:<40} {value:.3e}", flush=True)


def examples(tok, n: int, max_length: int = 512):
    from step_jepa.data.synthetic import generate_problems

    out = []
    for r in generate_problems(n * 2, seed=7):
        try:
            ex = segment(r, tok, max_length)
        except SegmentError:
            continue
        out.append(ex)
        if len(out) == n:
            break
    return out


def build_models(name: str, smollm2_path: str | None):
    """(sdpa model, flex model with the same weights, tokenizer) on CUDA in fp32."""
    from transformers import AutoModelForCausalLM

    if name == "tiny":
        from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer("chatml")

        def make(impl: str):
            return build_tiny_model(len(tok), layers=4, hidden=256, seed=0, attn_implementation=impl)
    else:
        from step_jepa.models.loading import load_tokenizer
        from step_jepa.models.sources import resolve_model_path

        path = resolve_model_path(smollm2_path or "HuggingFaceTB/SmolLM2-135M-Instruct")
        tok = load_tokenizer(path)
        make = lambda impl: AutoModelForCausalLM.from_pretrained(  # noqa: E731
            path, dtype=torch.float32, attn_implementation=impl
        )
    a, b = make("sdpa"), make("flex_attention")
    pred = add_predictor_tokens(a, tok, 2)
    add_predictor_tokens(b, tok, 2)
    b.load_state_dict(a.state_dict())
    return a.cuda().train(), b.cuda().train(), tok, pred


def loss_and_grads(lm, batch, lbd: float = 0.5):
    m = StepJEPAModel(lm, JEPAOptions(lbd=lbd, jepa_loss="cosine"))
    lm.zero_grad(set_to_none=True)
    out = m(**batch)
    loss = out["lm_sum"] / out["n_tokens"] + lbd * out["jepa"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in lm.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _to(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cuda()
    return {k: _to(v) for k, v in obj.items()} if isinstance(obj, dict) else obj


def compare(tag: str, a, b, tol: float) -> None:
    (la, ga), (lb, gb) = a, b
    rel_loss = ((la - lb).abs() / lb.abs().clamp(min=1e-30)).item()
    missing = set(ga) ^ set(gb)
    worst, worst_name = 0.0, ""
    for n in gb:
        if n not in ga:
            continue
        e = ((ga[n] - gb[n]).norm() / gb[n].norm().clamp(min=1e-30)).item()
        if not e <= worst:  # also catches NaN
            worst, worst_name = (e if e == e else float("inf")), n
    report(f"{tag} loss", "relative error", rel_loss, rel_loss < tol)
    report(
        f"{tag} grads",
        f"max rel err ({worst_name.split('.')[-2] if '.' in worst_name else worst_name})"[:40],
        worst,
        worst < tol and not missing,
    )


def layouts(tok, pred, *modes: str):
    """(name, [batch on CUDA per mode]) for padded and packed rows of 12 generated examples,
    pairs=all, K=2; the examples are segmented once and laid out in every mode asked for."""
    exs = examples(tok, 12)
    for packing in (False, True):
        kw = dict(
            pad_id=tok.pad_token_id, pred_ids=pred, pairs="all", packing=packing, max_tokens=2048, pad_multiple=128
        )
        yield ("packed" if packing else "padded"), [_to(StepJEPACollator(mode=m, **kw)(exs)) for m in modes]


def models_or_skip(name: str, args):
    """`build_models`, or None (reported) when the model does not resolve: skipped, not failed."""
    try:
        return build_models(name, args.smollm2)
    except Exception as e:  # noqa: BLE001
        print(f"[flex_check] skip {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return None


def check_compile(name: str, args) -> None:
    """The compiled decoder against the same model eager (FlexAttention, single-pass, fp32)."""
    from step_jepa.models.loading import compile_decoder

    models = models_or_skip(name, args)
    if models is None:
        return
    _, flex, tok, pred = models
    cases = [(lay, sp) for lay, (sp,) in layouts(tok, pred, "single_pass")]
    ref = {lay: loss_and_grads(flex, batch) for lay, batch in cases}
    compile_decoder(flex)
    for lay, batch in cases:
        compare(f"{name}/{lay} compiled_sp~flex_sp", loss_and_grads(flex, batch), ref[lay], args.tol)
    del flex
    torch.cuda.empty_cache()


def check_model(name: str, args) -> None:
    models = models_or_skip(name, args)
    if models is None:
        return
    sdpa, flex, tok, pred = models
    for lay, (sp, tp) in layouts(tok, pred, "single_pass", "two_pass"):
        res = {
            "sdpa_sp": loss_and_grads(sdpa, sp),
            "flex_sp": loss_and_grads(flex, sp),
            "sdpa_tp": loss_and_grads(sdpa, tp),
            "flex_tp": loss_and_grads(flex, tp),
        }
        compare(f"{name}/{lay} flex_sp~sdpa_sp", res["flex_sp"], res["sdpa_sp"], args.tol)
        compare(f"{name}/{lay} flex_sp~flex_tp", res["flex_sp"], res["flex_tp"], args.tol)
        compare(f"{name}/{lay} sdpa_sp~sdpa_tp", res["sdpa_sp"], res["sdpa_tp"], args.tol)
    del sdpa, flex
    torch.cuda.empty_cache()


def check_mask_memory(args) -> None:
    """Build the BlockMask of packed single-pass rows of length T and measure what it allocates."""
    from step_jepa.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<|predictor_1|>"]})
    pred = tok.convert_tokens_to_ids(["<|predictor_1|>"])
    T, B = args.mask_T, args.mask_B
    exs = examples(tok, max(64, B * T // 150))
    batch = StepJEPACollator(
        pad_id=tok.pad_token_id,
        pred_ids=pred,
        mode="single_pass",
        pairs="all",
        packing=True,
        max_tokens=T,
        pad_multiple=T,
    )(exs)
    meta = meta_of({k: v[:B].cuda() for k, v in batch.items() if k in ("seq", "role", "pair", "ctx", "position_ids")})
    B, T = meta.seq.shape
    flex_block_mask(meta)  # compile + warm
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    bm = flex_block_mask(meta)
    torch.cuda.synchronize()
    used = torch.cuda.max_memory_allocated() - base
    dense = B * T * T
    print(
        f"[flex_check] block mask B={B} T={T}: peak {used / 2**20:.2f} MiB allocated while building; a dense "
        f"bool B×T×T mask is {dense / 2**20:.0f} MiB; sparsity {getattr(bm, 'sparsity', lambda: float('nan'))():.1f}%",
        flush=True,
    )
    report(f"mask memory B={B} T={T}", f"peak/dense bytes ({used / 2**20:.1f} MiB)", used / dense, used < dense / 16)


def guarded(tag: str, fn, model, args) -> None:
    """Run one check; a crash becomes a FAIL row and the other checks still run."""
    try:
        fn(model, args)
    except Exception as e:  # noqa: BLE001
        report(tag, f"{type(e).__name__}: {str(e).splitlines()[0][:30]}", float("nan"), False)
        import traceback

        traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2", help="comma list: tiny, smollm2")
    p.add_argument("--smollm2", default=None, help="SmolLM2 directory (default: resolve_model_path)")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--checks", default="flex,compile,mask", help="comma list: flex, compile, mask")
    p.add_argument("--mask_T", type=int, default=8192)
    p.add_argument("--mask_B", type=int, default=8)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("[flex_check] needs CUDA (FlexAttention has no backward on CPU)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    import transformers

    print(
        f"[flex_check] torch {torch.__version__} | transformers {transformers.__version__} | "
        f"{torch.cuda.get_device_name()} | fp32, TF32 off",
        flush=True,
    )
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    checks = {c.strip() for c in args.checks.split(",") if c.strip()}
    jobs = [(f"{m} run", check_model, m) for m in models if "flex" in checks]
    jobs += [(f"{m} compile run", check_compile, m) for m in models if "compile" in checks]
    for tag, fn, model in jobs:
        guarded(tag, fn, model, args)
    if "mask" in checks:
        guarded("mask memory", lambda _, a: check_mask_memory(a), None, args)
    w = max(len(r[0]) for r in ROWS) if ROWS else 10
    print(f"\n{'check':<{w}}  {'measure':<40}  {'value':>10}  result")
    for check, detail, value, res in ROWS:
        print(f"{check:<{w}}  {detail:<40}  {value:>10.3e}  {res}")
    failed = [r for r in ROWS if r[3] == "FAIL"]
    print(f"\n{'FAIL' if failed or not ROWS else 'PASS'}: {len(ROWS) - len(failed)}/{len(ROWS)} checks passed")
    return 1 if failed or not ROWS else 0


if __name__ == "__main__":
    sys.exit(main())
