"""How large is the JEPA gradient next to the LM gradient? One table, on real batches, at the start.

    python benchmarks/grad_balance.py --model gemma3-270m --train_file data/gsm8k_train.jsonl \
        --lbd 0.5 --predictors 4 --packing true --max_tokens_per_batch 4096 --batches 4 [--json out.json]

Takes the flags of `step-jepa train` (and `--config`), builds the model, data and collator the
trainer would, and for the first `--batches` batches of the dataset computes, in one forward each, the gradient of
L_LM (per-token mean) and of L_JEPA separately with respect to every trained parameter. It prints
their norms, the ratio λ·|∇L_JEPA| / (γ·|∇L_LM|), their cosine, and the norm of the combined gradient
next to `--max_grad_norm`.

Why: the optimizer sees only the clipped sum. When λ·|∇L_JEPA| is several times |∇L_LM| and the
sum is clipped to `--max_grad_norm`, the update is mostly the JEPA direction and the LM term is
scaled down with it; how much that happens differs between model families at the same λ (their
hidden-state scales differ), which a λ taken from one model does not show. Nothing is trained; the
weights are the starting ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _norm(grads: list[torch.Tensor | None]) -> torch.Tensor:
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))


def _dot(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> torch.Tensor:
    return sum((x.float() * y.float()).sum() for x, y in zip(a, b) if x is not None and y is not None)


def batch_row(wrapper, batch: dict, params: list[torch.nn.Parameter], lbd: float) -> dict:
    """Norms of ∇L_LM and ∇L_JEPA of one collated batch (one forward, two backward passes); the
    ratio and the total weigh them as the loss does, γ·L_LM + λ·L_JEPA."""
    out = wrapper.terms(batch)
    lm = out["lm_sum"] / max(out["n_tokens"], 1)
    g_lm = torch.autograd.grad(lm, params, retain_graph=True, allow_unused=True)
    row = {"tokens": int(batch["input_ids"].numel()), "lm_loss": float(lm.detach()), "lm_grad": float(_norm(g_lm))}
    if "view1" not in out:
        return {**row, "pairs": 0}
    g_j = torch.autograd.grad(out["jepa"], params, allow_unused=True)
    n_lm, n_j, gamma = _norm(g_lm), _norm(g_j), wrapper.options.gamma
    total = torch.sqrt((gamma * n_lm) ** 2 + (lbd * n_j) ** 2 + 2 * gamma * lbd * _dot(g_lm, g_j))
    return {
        **row,
        "pairs": int(out["view1"].shape[0]),
        "jepa_loss": float(out["jepa"].detach()),
        "jepa_grad": float(n_j),
        "ratio": float(lbd * n_j / (gamma * n_lm)),
        "cos": float(_dot(g_lm, g_j) / (n_lm * n_j)),
        "total_grad": float(total),
    }


def format_rows(rows: list[dict], model: str, lbd: float, clip: float) -> str:
    head = (
        "| batch | tokens | pairs | L_LM | ‖∇L_LM‖ | L_JEPA | ‖∇L_JEPA‖ | λ‖∇L_JEPA‖ ÷ ‖∇L_LM‖ | cos | "
        f"‖∇ total‖ (clip {clip:g}) |"
    )
    lines = [f"{model}, λ {lbd:g}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for i, r in enumerate(rows):
        j = (
            (
                f"{r['jepa_loss']:.3f} | {r['jepa_grad']:.3g} | {r['ratio']:.2f} | {r['cos']:+.3f} | "
                f"{r['total_grad']:.3g}"
            )
            if r.get("pairs")
            else "– | – | – | – | –"
        )
        lines.append(f"| {i} | {r['tokens']} | {r.get('pairs', 0)} | {r['lm_loss']:.3f} | {r['lm_grad']:.3g} | {j} |")
    with_pairs = [r for r in rows if r.get("pairs")]
    if with_pairs:
        ratios = sorted(r["ratio"] for r in with_pairs)
        lines += ["", f"median λ‖∇L_JEPA‖ ÷ ‖∇L_LM‖ = {ratios[len(ratios) // 2]:.2f} over {len(ratios)} batches"]
    return "\n".join(lines)


def setup(cfg):
    """The wrapper, dataset and collator `step-jepa train` would build for `cfg` (nothing written)."""
    from step_jepa.method.model import StepJEPAModel
    from step_jepa.training.data import (
        build_collator,
        load_training_records,
        make_dataset,
        segment_all,
    )
    from step_jepa.training.model import build_model, resolve_attn_implementation

    torch.manual_seed(cfg.seed)
    lm, tok, pred_ids, _ = build_model(cfg)
    records, _ = load_training_records(cfg)
    examples, _ = segment_all(records, tok, cfg.max_length)
    collator = build_collator(cfg, tok, pred_ids, resolve_attn_implementation(cfg))
    return StepJEPAModel(lm, cfg), make_dataset(examples, cfg), collator


def measure(cfg, batches: int, device: str = "cpu", log=print) -> list[dict]:
    """`batch_row` for the first `batches` batches of the dataset (packed groups in their seeded
    order; the trainer's sampler shuffles them again, so these are its batches, not its first ones)."""
    wrapper, dataset, collator = setup(cfg)
    wrapper.to(device)
    params = [q for q in wrapper.parameters() if q.requires_grad]
    rows = []
    for i in range(min(batches, len(dataset))):
        item = dataset[i]
        batch = collator(item if isinstance(item, list) else [item])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        rows.append(batch_row(wrapper, batch, params, cfg.lbd))
        log(f"[grad_balance] batch {i + 1}: {rows[-1]}")
    return rows


def main(argv: list[str] | None = None) -> int:
    from step_jepa.training.config import add_config_arguments, resolve_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--batches", type=int, default=4, help="how many batches to measure")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    batches, out, device = args.batches, args.json, args.device
    for k in ("batches", "json", "device"):
        delattr(args, k)  # not StepJEPAConfig fields
    cfg = resolve_config(args)
    if cfg.lbd <= 0:
        raise SystemExit("grad_balance: --lbd must be > 0 (there is no JEPA gradient to compare)")
    rows = measure(cfg, batches, device)
    print(format_rows(rows, cfg.model, cfg.lbd, cfg.max_grad_norm))
    if out:
        out.write_text(json.dumps({"model": cfg.model, "lbd": cfg.lbd, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
