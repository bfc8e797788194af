"""Memory a SmolLM2-135M-shaped model needs for one training step: full fine-tuning vs LoRA.

Why this exists: on a GPU a `--lora` run peaked above full fine-tuning (11.7 vs 8.4 GB). This
counts, on the CPU, the three parts of a step's memory separately: the weights, the gradient +
AdamW state of the trainable parameters (fp32: 3 copies), and the tensors autograd keeps for the
backward pass (each storage counted once). Weights are random: only the shapes matter.

    PYTHONPATH=src python benchmarks/lora_memory.py [--examples 8]

Results: docs/performance.md, "LoRA memory".
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from step_jepa.method.model import StepJEPAModel
from step_jepa.training.config import StepJEPAConfig
from step_jepa.training.data import build_collator, load_training_records, segment_all
from step_jepa.training.model import build_model

MB = 2**20
VARIANTS = {
    "full fine-tuning": {},
    "LoRA r16, dropout 0.05": {"lora": True, "lora_dropout": 0.05},
    "LoRA r16, dropout 0": {"lora": True, "lora_dropout": 0.0},
}


def smollm2_shaped(path: Path) -> Path:
    """A random model with SmolLM2-135M's shapes (tied embeddings) and the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from step_jepa.models.tiny import build_tiny_tokenizer

    if not (path / "config.json").exists():
        cfg = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        )
        AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
        build_tiny_tokenizer("chatml").save_pretrained(path)
    return path


def saved_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes of the distinct storages autograd saves for backward during one forward pass."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(seen.values())


def measure(model_dir: Path, examples: int, **overrides) -> dict[str, float]:
    cfg = StepJEPAConfig(
        model=str(model_dir),
        output_dir=tempfile.mkdtemp(),
        generate_examples=examples,
        lbd=0.1,
        attn_implementation="sdpa",
        **overrides,
    )
    lm, tok, pred_ids, _ = build_model(cfg)
    ex, _ = segment_all(load_training_records(cfg)[0], tok, cfg.max_length)
    batch = build_collator(cfg, tok, pred_ids, "sdpa")(ex)
    model = StepJEPAModel(lm, cfg).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "tokens": int(batch["role"].ne(0).sum()),
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / MB,
        "grad_adam_mb": trainable * 4 * 3 / MB,
        "saved_mb": saved_bytes(model, batch) / MB,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=8, help="generated examples in the one batch")
    args = ap.parse_args()
    model_dir = smollm2_shaped(Path(tempfile.gettempdir()) / "step_jepa_smollm2_shaped")
    print(
        "| variant | tokens | weights MB | grad+AdamW MB | saved for backward MB | sum MB |\n|---|---|---|---|---|---|"
    )
    for name, overrides in VARIANTS.items():
        m = measure(model_dir, args.examples, **overrides)
        total = m["weights_mb"] + m["grad_adam_mb"] + m["saved_mb"]
        print(
            f"| {name} | {m['tokens']} | {m['weights_mb']:.0f} | {m['grad_adam_mb']:.0f} | {m['saved_mb']:.0f} "
            f"| {total:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
