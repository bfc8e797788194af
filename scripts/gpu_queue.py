#!/usr/bin/env python3
"""The GPU experiment of docs/results.md as a resumable job queue, one `run` call (≤ 10 min) at a time.

    python3 scripts/gpu_queue.py --deadline 570 --slots 3 --est 150 --out $OUT

Jobs are `step-jepa compare --only NAME --seeds S` cells, each training + evaluating one run:

1. the dev sweep (examples/gsm8k_dev_sweep.yaml, in priority order), interleaved with the SFT seeds
   of the test grid (examples/gsm8k_test.yaml), which need no choice;
2. once every dev cell is finished: the Step-JEPA config with the most correct dev answers (ties: the
   one listed first) becomes ``best`` and its other-pairs variant ``best_<pairs>``; the test grid
   with both is written to runs/gsm8k_test_grid.yaml and their seeds are queued (5 and 3).

A job is started only if ``--est`` seconds remain before ``--deadline`` (seconds since start), so
the call ends before the device's limit; finished cells (result.json) are skipped, so the same
command continues in the next call.  A job that fails is not retried within the call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

DEV = Path("examples/gsm8k_dev_sweep.yaml")
TEST = Path("examples/gsm8k_test.yaml")
TEST_GRID = Path("runs/gsm8k_test_grid.yaml")
BEST_SEEDS, OTHER_SEEDS = [0, 1, 2, 3, 4], [0, 1, 2]


def _grid(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _done(grid: dict, name: str, seed: int) -> bool:
    return (Path(grid["output_dir"]) / name / f"seed{seed}" / "result.json").exists()


def phase1() -> list[tuple[Path, str, int]]:
    dev, test = _grid(DEV), _grid(TEST)
    dev_jobs = [(DEV, n, s) for n in dev["configs"] for s in dev["seeds"]]
    sft_jobs = [(TEST, "sft", s) for s in test["seeds"]]
    jobs = []
    while dev_jobs or sft_jobs:  # two dev cells, then one SFT test seed
        jobs += dev_jobs[:2] + sft_jobs[:1]
        dev_jobs, sft_jobs = dev_jobs[2:], sft_jobs[1:]
    return jobs


def choose() -> dict | None:
    """Write the test grid with the dev winner once the sweep is complete; return its configs."""
    dev = _grid(DEV)
    if not all(_done(dev, n, s) for n in dev["configs"] for s in dev["seeds"]):
        return None
    out = Path(dev["output_dir"])
    scores = {}
    for name in dev["configs"]:
        if dev["configs"][name].get("lbd", 0.1) > 0:
            results = [json.loads((out / name / f"seed{s}" / "result.json").read_text()) for s in dev["seeds"]]
            scores[name] = sum(r["correct"] for r in results)
    winner = max(scores, key=lambda n: (scores[n], -list(scores).index(n)))
    best = dict(dev["configs"][winner])
    other = dict(best, pairs="first" if best.get("pairs", "first") == "all" else "all")
    test = _grid(TEST)
    test["configs"] = {"sft": test["configs"]["sft"], "best": best, f"best_{other['pairs']}": other}
    TEST_GRID.parent.mkdir(parents=True, exist_ok=True)
    TEST_GRID.write_text(f"# written by scripts/gpu_queue.py: best = {winner} of {DEV}\n"
                         + yaml.safe_dump(test, sort_keys=False))
    record = Path(test["output_dir"]) / "chosen_on_dev.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"winner": winner, "dev_correct": scores, "best": best, "other": other}, indent=1))
    return test["configs"]


def phase2() -> list[tuple[Path, str, int]]:
    # The choice is made once: later polls read the grid it wrote instead of choosing (and writing) again.
    configs = _grid(TEST_GRID)["configs"] if TEST_GRID.exists() else choose()
    if configs is None:
        return []
    names = list(configs)
    return ([(TEST_GRID, names[1], s) for s in BEST_SEEDS] + [(TEST_GRID, names[2], s) for s in OTHER_SEEDS])


def _launch(job: tuple[Path, str, int], logs: Path) -> subprocess.Popen:
    path, name, seed = job
    log = open(logs / f"{path.stem}.{name}.seed{seed}.log", "a")
    cmd = [sys.executable, "-m", "step_jepa.cli", "compare", "--config", str(path), "--only", name,
           "--seeds", str(seed)]
    print(f"[queue {time.strftime('%H:%M:%S')}] start {path.stem} {name} seed {seed}", flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def run_queue(deadline: float, slots: int, est: float, logs: Path) -> None:
    start = time.monotonic()
    running: dict[tuple, subprocess.Popen] = {}
    failed: set[tuple] = set()
    while True:
        for job, proc in list(running.items()):
            if proc.poll() is not None:
                del running[job]
                print(f"[queue {time.strftime('%H:%M:%S')}] end {job[0].stem} {job[1]} seed {job[2]} rc={proc.returncode}",
                      flush=True)
                if proc.returncode != 0:
                    failed.add(job)
        todo = [j for j in phase1() + phase2()
                if j not in running and j not in failed and not _done(_grid(j[0]), j[1], j[2])]
        left = deadline - (time.monotonic() - start)
        if todo and len(running) < slots and left > est:
            job = todo[0]
            running[job] = _launch(job, logs)
            continue
        if not running:
            break
        time.sleep(2)
    print(f"[queue] stopped after {time.monotonic() - start:.0f} s; failed: {sorted(map(str, failed))}", flush=True)


def collect(out: Path, logs: Path) -> None:
    """Small files only: results, metrics, eval summaries and per-problem predictions, logs, reports."""
    for grid in (DEV, TEST_GRID if TEST_GRID.exists() else TEST):
        g = _grid(grid)
        subprocess.run([sys.executable, "-m", "step_jepa.cli", "compare", "--report", g["output_dir"]],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        for root in ("runs/dev_sweep", "runs/gsm8k_test"):
            for p in sorted(Path(root).rglob("*")):
                if p.is_file() and (p.name in {"result.json", "metrics.jsonl", "summary.json", "predictions.jsonl",
                                               "train_summary.json", "step_jepa_config.yaml"}
                                    or p.parent == Path(root)):
                    tar.add(p)
        if TEST_GRID.exists():
            tar.add(TEST_GRID)
        tar.add(logs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deadline", type=float, default=570, help="seconds from now by which all jobs must end")
    p.add_argument("--slots", type=int, default=3, help="runs sharing the GPU at once")
    p.add_argument("--est", type=float, default=150, help="seconds one job may take (start only if this is left)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    args = p.parse_args()
    logs = Path("runs/queue_logs")
    logs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    run_queue(args.deadline, args.slots, args.est, logs)
    collect(args.out, logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
