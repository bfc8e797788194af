"""A LoRA `final/` scores in lm-evaluation-harness through its own `peft=` route (base + adapter,
no merge), on a model with tied embeddings: the route that failed in `tie_weights()` while the
predictor rows were stored as PEFT trainable tokens."""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")


@pytest.mark.slow
def test_lora_final_scores_with_lm_eval_peft(tmp_path, gsm8k_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the task's data is a local file
    from lm_eval.tasks import TaskManager

    from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer
    from step_jepa.training.config import StepJEPAConfig
    from step_jepa.training.trainer import run_train

    base = tmp_path / "base"
    tok = build_tiny_tokenizer("chatml")
    build_tiny_model(len(tok), seed=0, tie=True).save_pretrained(base)
    tok.save_pretrained(base)
    run_train(
        StepJEPAConfig(
            model=str(base),
            lora=True,
            max_steps=2,
            generate_examples=8,
            per_device_train_batch_size=4,
            output_dir=str(tmp_path / "run"),
            report_to="none",
        )
    )
    final = tmp_path / "run" / "final"

    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()[:2]]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_gsm8k.yaml").write_text(
        "task: tiny_gsm8k\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'test.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_target: \"{{answer.split('####')[-1].strip()}}\"\n"
        'generation_kwargs:\n  until: ["Question:"]\n  do_sample: false\n  max_gen_toks: 4\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={base},peft={final},tokenizer={final},dtype=float32",
        tasks=["tiny_gsm8k"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        device="cpu",
        batch_size=1,
    )
    result = out["results"]["tiny_gsm8k"]
    assert result["sample_len"] == 2 and 0.0 <= result["exact_match,none"] <= 1.0
