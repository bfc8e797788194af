"""`step-jepa eval`: greedy-decode a model on GSM8K-style problems and score it."""

from __future__ import annotations

import argparse
from pathlib import Path

from step_jepa.evaluation.evaluate import DEFAULT_EVAL_DTYPE, EVAL_DTYPES, evaluate

PROTOCOLS = ("step-jepa", "lm-eval-gsm8k", "lm-eval-gsm8k-chat")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``step-jepa eval`` on an ``argparse`` subparsers object."""

    p.description = (
        "Evaluate a model (HF id, merged dir or LoRA adapter dir) on GSM8K-style "
        "problems with fast batched greedy decoding."
    )
    p.add_argument("--model", required=True, help="model id or directory (LoRA adapter dirs are merged)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--test_file", help="prepared JSONL or raw GSM8K {question, answer} lines")
    src.add_argument("--dataset", help="Hugging Face dataset name, e.g. openai/gsm8k (needs `datasets`)")
    src.add_argument("--generate", type=int, metavar="N", help="evaluate on N synthetic problems")
    p.add_argument("--split", default="test", help="dataset split (with --dataset)")
    p.add_argument("--dataset_config", default="main", help="dataset config name (with --dataset)")
    p.add_argument(
        "--seed",
        type=int,
        default=1000,
        help="seed for --generate (default 1000: training on generated problems uses the run seed, 0 by default)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="step-jepa",
        help="step-jepa: zero-shot chat prompt with the training system prompt, the model's answer "
        "extracted (default); lm-eval-gsm8k: lm-evaluation-harness's gsm8k task (5-shot "
        "'Question: ...\\nAnswer:', strict-match and flexible-extract), comparable to published "
        "lm-eval numbers; lm-eval-gsm8k-chat: the same with the chat template "
        "(lm_eval --apply_chat_template --fewshot_as_multiturn). See docs/evaluate.md",
    )
    p.add_argument(
        "--fewshot_file",
        default=None,
        help="lm-eval protocols: raw GSM8K train JSONL the 5 shots are drawn from (required; "
        "e.g. ../shared/data/gsm8k/train.jsonl)",
    )
    p.add_argument(
        "--fewshot_seed",
        type=int,
        default=1234,
        help="lm-eval protocols: lm_eval's fewshot_random_seed (default 1234, lm_eval's)",
    )
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="generation limit per problem, in tokens (default: 512; with an lm-eval protocol: 256, "
        "lm_eval's max_gen_toks)",
    )
    p.add_argument("--batch_size", type=int, default=None, help="max rows per batch (default: by memory)")
    p.add_argument(
        "--max_batch_tokens",
        type=int,
        default=None,
        help="max rows x (prompt + max_new_tokens) per batch (default: half the free GPU memory)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N examples (default: all)")
    p.add_argument(
        "--system_prompt",
        default=None,
        help="replace each record's system prompt ('' drops it; default: each record's own). "
        "lm-eval protocols: lm_eval's --system_instruction (default: none)",
    )
    p.add_argument("--lenient", action="store_true", help="fall back to the last number in the output")
    p.add_argument(
        "--output_dir",
        default=None,
        help="where predictions.jsonl and summary.json go (default: RUN/eval-<source> for a run's "
        "final/ dir, RUN/eval-<dir>-<source> for its checkpoint-N/ or merged/, else "
        "./eval/<model name>-<source>; never inside the model dir)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(EVAL_DTYPES),
        default=DEFAULT_EVAL_DTYPE,
        help="compute dtype (default fp32: the weights as trained, the same outputs at any batch "
        "budget). bf16/fp16 are faster, but their greedy outputs depend on the batch budget "
        "(--batch_size, --max_batch_tokens, free GPU memory): on GSM8K ~1/3 of the outputs "
        "changed between two budgets. auto: bf16 on a CUDA GPU, the checkpoint dtype on CPU",
    )
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument(
        "--cuda_graphs",
        choices=("auto", "true", "false"),
        default="auto",
        help="replay each decode step as a recorded CUDA graph (SDPA models without sliding "
        "windows; same tokens, less launch overhead). auto (default): on a CUDA device, "
        "the plain loop elsewhere; true on CPU runs the same static loop unrecorded",
    )
    p.add_argument(
        "--graph_window",
        type=int,
        default=128,
        help="with --cuda_graphs: attention windows are rounded up to this many cache slots "
        "(smaller: less attention over empty slots, more graphs recorded)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def _load_model(name: str, dtype: str, device: str | None):
    """Load through ``step_jepa.models.loading.load_for_inference`` (adapters, merged dirs, offline default)."""
    import torch

    dtype_name = EVAL_DTYPES[dtype]
    torch_dtype = getattr(torch, dtype_name) if dtype_name else None
    from step_jepa.models.loading import load_for_inference

    return load_for_inference(
        name, dtype=torch_dtype, device=device or ("cuda" if torch.cuda.is_available() else "cpu")
    )


def _dataset_records(name: str, config: str | None, split: str) -> list[dict]:
    """Rows of a Hugging Face dataset (or a `save_to_disk` directory), converted like a test file."""
    from step_jepa.data.load import load_dataset_records
    from step_jepa.data.records import DataError

    try:
        records, _report = load_dataset_records(name, config, split, purpose="test")
    except DataError as exc:  # no `datasets`, offline, unknown name: one message, no traceback
        raise SystemExit(f"{exc}\nOffline? Save the split as JSONL and pass --test_file.") from None
    return records


def _load_file(path: str | Path) -> list[dict]:
    from step_jepa.data.load import load_records

    records, _report = load_records(str(path), purpose="test")
    return list(records)


def _lm_eval_docs(args: argparse.Namespace) -> tuple[list[dict], list[dict], str]:
    """(test docs, few-shot docs, source name) of an lm-eval protocol: raw GSM8K rows only."""
    from step_jepa.evaluation.lm_eval_gsm8k import load_docs

    if not args.fewshot_file:
        raise SystemExit(
            f"--protocol {args.protocol} needs --fewshot_file: the GSM8K train split as raw JSONL "
            "(e.g. ../shared/data/gsm8k/train.jsonl), where lm-eval draws its 5 shots from"
        )
    if not Path(args.fewshot_file).exists():
        raise SystemExit(f"--fewshot_file {args.fewshot_file} does not exist")
    if args.test_file:
        docs, source = load_docs(args.test_file), Path(args.test_file).stem
    elif args.dataset:
        try:
            from datasets import load_dataset
        except ImportError as exc:
            raise SystemExit("--dataset needs the `datasets` package: pip install 'step-jepa[datasets]'") from exc

        ds = load_dataset(args.dataset, args.dataset_config, split=args.split)
        docs, source = (
            [{"question": r["question"], "answer": r["answer"]} for r in ds],
            f"{args.dataset.split('/')[-1]}-{args.split}",
        )
    else:
        raise SystemExit(f"--protocol {args.protocol} scores GSM8K: give --test_file (raw GSM8K JSONL) or --dataset")
    if args.limit is not None:
        docs = docs[: args.limit]
    return docs, load_docs(args.fewshot_file), f"{args.protocol}-{source}"


def _records_from_args(args: argparse.Namespace) -> tuple[list[dict], str]:
    if args.test_file:
        records, source = _load_file(args.test_file), Path(args.test_file).stem
    elif args.dataset:
        records, source = (
            _dataset_records(args.dataset, args.dataset_config, args.split),
            f"{args.dataset.split('/')[-1]}-{args.split}",
        )
    else:
        from step_jepa.data.synthetic import generate_problems

        records, source = generate_problems(args.generate, seed=args.seed), f"generated{args.generate}-s{args.seed}"
    if args.limit is not None:
        records = records[: args.limit]
    return records, source


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range values before any data or model is loaded.

    Without this, ``--limit -3`` slices off the last 3 examples and evaluates the rest, and
    ``--max_new_tokens 0`` "succeeds" with an error recorded for every example.
    """
    checks = [
        (args.limit is None or args.limit >= 1, f"--limit must be >= 1, got {args.limit}"),
        (
            args.max_new_tokens is None or args.max_new_tokens >= 1,
            f"--max_new_tokens must be >= 1, got {args.max_new_tokens}",
        ),
        (args.batch_size is None or args.batch_size >= 1, f"--batch_size must be >= 1, got {args.batch_size}"),
        (
            args.max_batch_tokens is None or args.max_batch_tokens >= 1,
            f"--max_batch_tokens must be >= 1, got {args.max_batch_tokens}",
        ),
        (args.generate is None or args.generate >= 1, f"--generate must be >= 1, got {args.generate}"),
        (args.graph_window >= 1, f"--graph_window must be >= 1, got {args.graph_window}"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise ValueError("; ".join(problems))


def default_output_dir(model: str, source: str) -> Path:
    """Where results go without --output_dir: next to the model, never inside it.

    A run's final/ (or checkpoint-N/, merged/) is what gets loaded, copied and uploaded as the
    model; eval files written into it would travel with the weights, and a second eval of the
    same run would be hidden inside the model dir. So a model dir of a training run (named
    final, or whose parent holds step_jepa_config.yaml) writes into the run dir; any other
    model writes under ./eval, named after the model's last path component.
    """
    path = Path(model)
    if path.is_dir() and (path.name == "final" or (path.parent / "step_jepa_config.yaml").exists()):
        tag = "" if path.name == "final" else f"{path.name}-"
        return path.parent / f"eval-{tag}{source}"
    name = path.resolve().name if path.is_dir() else model.rstrip("/").split("/")[-1]
    return Path("eval") / f"{name}-{source}"


def _graphs(value: str) -> bool | None:
    return None if value == "auto" else value == "true"


def run(args: argparse.Namespace) -> int:
    """``step-jepa eval``: load, evaluate, print the summary. Returns the process exit code."""
    check_args(args)
    protocol = getattr(args, "protocol", "step-jepa")
    if protocol != "step-jepa":
        return _run_lm_eval(args)
    records, source = _records_from_args(args)
    if not records:
        print("no examples to evaluate")
        return 1
    out_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.model, source)
    model, tokenizer = _load_model(args.model, args.dtype, args.device)
    summary = evaluate(
        model,
        tokenizer,
        records,
        out_dir=out_dir,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else 512,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        system_prompt=args.system_prompt,
        lenient=args.lenient,
        progress=not args.no_progress,
        model_name=args.model,
        cuda_graphs=_graphs(args.cuda_graphs),
        graph_window=args.graph_window,
    )
    from step_jepa.training.model_card import update_model_card_eval

    if update_model_card_eval(args.model, summary, data=source):  # a step-jepa final/: its card gets the scores
        print(f"[step-jepa] model card updated: {Path(args.model) / 'README.md'}")
    print(
        f"accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['n']}), "
        f"no answer {summary['no_answer']}, errors {summary['errors']}, "
        f"{summary['generation_seconds']:.1f} s, {summary['generated_tokens_per_s']} tok/s -> {out_dir}"
    )
    return 0


def _run_lm_eval(args: argparse.Namespace) -> int:
    """``--protocol lm-eval-gsm8k[-chat]``: lm-evaluation-harness's gsm8k scoring (lm_eval_gsm8k)."""
    from step_jepa.evaluation.lm_eval_gsm8k import MAX_GEN_TOKS, evaluate_lm_eval

    if args.lenient:
        raise SystemExit(
            "--lenient is step-jepa's extraction; lm-eval protocols report strict-match and flexible-extract both"
        )
    docs, fewshot, source = _lm_eval_docs(args)
    if not docs:
        print("no examples to evaluate")
        return 1
    out_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.model, source)
    model, tokenizer = _load_model(args.model, args.dtype, args.device)
    summary = evaluate_lm_eval(
        model,
        tokenizer,
        docs,
        fewshot,
        out_dir=out_dir,
        task=args.protocol,
        system_instruction=args.system_prompt or None,
        max_new_tokens=args.max_new_tokens or MAX_GEN_TOKS,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        progress=not args.no_progress,
        model_name=args.model,
        cuda_graphs=_graphs(args.cuda_graphs),
        graph_window=args.graph_window,
        fewshot_seed=args.fewshot_seed,
        fewshot_file=args.fewshot_file,
    )
    print(
        f"{args.protocol}: exact_match flexible-extract {summary['accuracy']:.4f} ({summary['correct']}/"
        f"{summary['n']}), strict-match {summary['accuracy_strict']:.4f} ({summary['correct_strict']}/"
        f"{summary['n']}), {summary['generation_seconds']:.1f} s -> {out_dir}"
    )
    return 0
