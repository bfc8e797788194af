"""GPU check of the FlexAttention backend: same loss and gradients as SDPA, same as the two-pass
reference, and no B×T×T mask materialised.

    python benchmarks/flex_check.py [--models tiny,smollm2] [--smollm2 PATH] [--mask_T 8192 --mask_B 8] [--liger]

For each model (a 4-layer hidden-256 random Llama, and SmolLM2-135M when it resolves), in fp32
with TF32 off, on padded and packed batches of real layouts (single-pass, pairs=all, K=2):

  flex_sp  vs sdpa_sp   single-pass loss and every parameter gradient, FlexAttention vs dense SDPA mask
  flex_sp  vs flex_tp   single-pass vs the two-pass reference, both with FlexAttention
  sdpa_sp  vs sdpa_tp   the same under SDPA (the CPU-tested path, as a control)

Relative error = |a−b|/|b| for losses and max over parameters of ‖ga−gb‖/‖gb‖ for gradients;
PASS below --tol (1e-4). With --liger, after all of that (Liger patches RoPE module-wide, so it
must not leak into the checks above), for each model and layout:

  liger_sp vs flex_sp   --use_liger_kernel (fused RMSNorm/RoPE/SwiGLU, fused linear cross-entropy)
                        against the same model without it, single-pass, FlexAttention; --liger_tol

Then the block mask of a packed B×T layout is built (compiled, warm) and
the CUDA memory it allocates is compared with the B·T·T bytes a dense boolean mask would take;
PASS below 1/16 of that. Exit status 1 if anything FAILs, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from step_jepa.layout import StepJEPACollator, meta_of  # noqa: E402
from step_jepa.masks import flex_block_mask  # noqa: E402
from step_jepa.modeling import add_predictor_tokens  # noqa: E402
from step_jepa.objective import JEPAOptions, StepJEPAModel  # noqa: E402
from step_jepa.segment import SegmentError, segment  # noqa: E402

ROWS: list[tuple[str, str, float, str]] = []  # (check, detail, value, PASS/FAIL)


def report(check: str, detail: str, value: float, ok: bool) -> None:
    ROWS.append((check, detail, value, "PASS" if ok else "FAIL"))
    print(f"[flex_check] {'PASS' if ok else 'FAIL'}  {check:<34} {detail:<40} {value:.3e}", flush=True)


def examples(tok, n: int, max_length: int = 512):
    from step_jepa.generator import generate_problems

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
        from step_jepa.tiny import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer("chatml")
        make = lambda impl: build_tiny_model(len(tok), layers=4, hidden=256, seed=0,  # noqa: E731
                                             attn_implementation=impl)
    else:
        from step_jepa.modeling import load_tokenizer, resolve_model_path

        path = resolve_model_path(smollm2_path or "HuggingFaceTB/SmolLM2-135M-Instruct")
        tok = load_tokenizer(path)
        make = lambda impl: AutoModelForCausalLM.from_pretrained(  # noqa: E731
            path, dtype=torch.float32, attn_implementation=impl)
    a, b = make("sdpa"), make("flex_attention")
    pred = add_predictor_tokens(a, tok, 2)
    add_predictor_tokens(b, tok, 2)
    b.load_state_dict(a.state_dict())
    return a.cuda().train(), b.cuda().train(), tok, pred


def loss_and_grads(lm, batch, lbd: float = 0.5, liger: bool = False):
    m = StepJEPAModel(lm, JEPAOptions(lbd=lbd, loss="cosine"), liger_loss=liger)
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
    report(f"{tag} grads", f"max rel err ({worst_name.split('.')[-2] if '.' in worst_name else worst_name})"[:40],
           worst, worst < tol and not missing)


def layouts(tok, pred, mode: str = "single_pass"):
    """(name, batch on CUDA) for padded and packed rows of 12 generated examples, pairs=all, K=2."""
    exs = examples(tok, 12)
    for packing in (False, True):
        kw = dict(pad_id=tok.pad_token_id, pred_ids=pred, pairs="all", packing=packing, max_tokens=2048,
                  pad_multiple=128)
        yield ("packed" if packing else "padded"), _to(StepJEPACollator(mode=mode, **kw)(exs))


def check_liger(name: str, args) -> None:
    """Liger's kernels against the same model without them (FlexAttention, single-pass)."""
    from step_jepa.modeling import apply_liger_kernels

    try:
        _, plain, tok, pred = build_models(name, args.smollm2)
    except Exception as e:  # noqa: BLE001 - a model that does not resolve is skipped, not failed
        print(f"[flex_check] skip liger {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return
    cases = list(layouts(tok, pred))
    ref = {lay: loss_and_grads(plain, batch) for lay, batch in cases}  # before Liger patches RoPE
    apply_liger_kernels(plain)
    for lay, batch in cases:
        compare(f"{name}/{lay} liger_sp~flex_sp", loss_and_grads(plain, batch, liger=True), ref[lay], args.liger_tol)
    del plain
    torch.cuda.empty_cache()


def check_model(name: str, args) -> None:
    try:
        sdpa, flex, tok, pred = build_models(name, args.smollm2)
    except Exception as e:  # noqa: BLE001 - a model that does not resolve is skipped, not failed
        print(f"[flex_check] skip {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return
    for (lay, sp), (_, tp) in zip(layouts(tok, pred), layouts(tok, pred, "two_pass")):
        res = {"sdpa_sp": loss_and_grads(sdpa, sp), "flex_sp": loss_and_grads(flex, sp),
               "sdpa_tp": loss_and_grads(sdpa, tp), "flex_tp": loss_and_grads(flex, tp)}
        compare(f"{name}/{lay} flex_sp~sdpa_sp", res["flex_sp"], res["sdpa_sp"], args.tol)
        compare(f"{name}/{lay} flex_sp~flex_tp", res["flex_sp"], res["flex_tp"], args.tol)
        compare(f"{name}/{lay} sdpa_sp~sdpa_tp", res["sdpa_sp"], res["sdpa_tp"], args.tol)
    del sdpa, flex
    torch.cuda.empty_cache()


def check_mask_memory(args) -> None:
    """Build the BlockMask of packed single-pass rows of length T and measure what it allocates."""
    from step_jepa.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<|predictor_1|>"]})
    pred = tok.convert_tokens_to_ids(["<|predictor_1|>"])
    T, B = args.mask_T, args.mask_B
    exs = examples(tok, max(64, B * T // 150))
    batch = StepJEPACollator(pad_id=tok.pad_token_id, pred_ids=pred, mode="single_pass", pairs="all",
                             packing=True, max_tokens=T, pad_multiple=T)(exs)
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
    print(f"[flex_check] block mask B={B} T={T}: peak {used / 2**20:.2f} MiB allocated while building; a dense "
          f"bool B×T×T mask is {dense / 2**20:.0f} MiB; sparsity {getattr(bm, 'sparsity', lambda: float('nan'))():.1f}%",
          flush=True)
    report(f"mask memory B={B} T={T}", f"peak/dense bytes ({used / 2**20:.1f} MiB)", used / dense, used < dense / 16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2", help="comma list: tiny, smollm2")
    p.add_argument("--smollm2", default=None, help="SmolLM2 directory (default: resolve_model_path)")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--liger", action="store_true", help="also check --use_liger_kernel (needs liger-kernel)")
    p.add_argument("--liger_tol", type=float, default=1e-3,
                   help="Liger's kernels reduce in another order than PyTorch's: a looser bound than --tol")
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

    print(f"[flex_check] torch {torch.__version__} | transformers {transformers.__version__} | "
          f"{torch.cuda.get_device_name()} | fp32, TF32 off", flush=True)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            check_model(name, args)
        except Exception as e:  # noqa: BLE001 - a crash is a FAIL row, the other checks still run
            report(f"{name} run", f"{type(e).__name__}: {str(e).splitlines()[0][:30]}", float("nan"), False)
            import traceback

            traceback.print_exc()
    for name in [m.strip() for m in args.models.split(",") if m.strip()] if args.liger else []:
        try:
            check_liger(name, args)
        except Exception as e:  # noqa: BLE001
            report(f"{name} liger run", f"{type(e).__name__}: {str(e).splitlines()[0][:30]}", float("nan"), False)
            import traceback

            traceback.print_exc()
    try:
        check_mask_memory(args)
    except Exception as e:  # noqa: BLE001
        report("mask memory", f"{type(e).__name__}: {str(e).splitlines()[0][:30]}", float("nan"), False)
        import traceback

        traceback.print_exc()
    w = max(len(r[0]) for r in ROWS) if ROWS else 10
    print(f"\n{'check':<{w}}  {'measure':<40}  {'value':>10}  result")
    for check, detail, value, res in ROWS:
        print(f"{check:<{w}}  {detail:<40}  {value:>10.3e}  {res}")
    failed = [r for r in ROWS if r[3] == "FAIL"]
    print(f"\n{'FAIL' if failed or not ROWS else 'PASS'}: {len(ROWS) - len(failed)}/{len(ROWS)} checks passed")
    return 1 if failed or not ROWS else 0


if __name__ == "__main__":
    sys.exit(main())
