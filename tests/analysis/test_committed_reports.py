"""Every report committed under results/ is what today's `compare --report` computes from the files
kept beside it.

docs/results.md quotes these tables; a change to the statistics, the collapse diagnostics or the
comparability checks that moved one of their numbers would otherwise go unnoticed until someone
rebuilt a table by hand. Each report is rebuilt from a copy of its archived runs, with the inputs it
records (the directories its runs were read from, its row order), and must come out byte for byte.
Reports whose runs predate the recorded `run_dir` (2026-11-25, 2026-12-02: no per-problem outputs
kept) cannot be rebuilt and are left out, by name below, so that a new report cannot silently join them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from step_jepa.analysis.comparable import ProtocolMismatch
from step_jepa.analysis.report import build_report

RESULTS = Path(__file__).resolve().parents[2] / "results"
REPORT_FILES = ("compare_table.md", "compare_results.json")
NOT_REBUILDABLE = {  # written before reports recorded where each run was read from
    "2026-11-25-h100",
    "2026-11-25-h100/dev_sweep",
    "2026-11-25-h100/gsm8k_test",
    "2026-12-02-h200/chain/s4d3/n1000",
    "2026-12-02-h200/chain/s6d3/n1000",
    "2026-12-02-h200/gsm8k_lr_dev",
    "2026-12-02-h200/seed0-1_reports/chain_s3d2_n1000",
    "2026-12-02-h200/seed0-1_reports/chain_s3d2_n250",
    "2026-12-02-h200/seed0-1_reports/chain_s3d2_n4000",
    "2026-12-02-h200/seed0-1_reports/gsm8k_methods",
}


def _reports() -> list[str]:
    return sorted(str(p.parent.relative_to(RESULTS)) for p in RESULTS.glob("**/compare_results.json"))


def _inputs(report: Path) -> tuple[list[str], list[Path]]:
    """The row order and the other directories the report read runs from, in its own order."""
    recorded = json.loads((report / "compare_results.json").read_text(encoding="utf-8"))
    order = [row["config"] for row in recorded["configs"]]
    grid_dirs = (Path(os.path.normpath(report / run["run_dir"])).parent.parent for run in recorded["runs"])
    others = list(dict.fromkeys(d for d in grid_dirs if d != report))
    return order, others


def test_the_reports_quoted_in_the_docs_are_checked() -> None:
    rebuildable = set(_reports()) - NOT_REBUILDABLE
    assert {
        "2026-12-06-h100/smollm2_gsm8k_fp32",
        "2026-12-07-h100/gemma_gsm8k_fp32",
        "2026-12-07-h100/smollm2_gsm8k_fp32",
        "2026-12-03-h200/gsm8k_methods",
    } <= rebuildable
    assert NOT_REBUILDABLE <= set(_reports()), "a report listed as not rebuildable is gone: drop it from the list"


@pytest.mark.parametrize("name", [r for r in _reports() if r not in NOT_REBUILDABLE])
def test_committed_report_rebuilds_identically(name: str, tmp_path: Path) -> None:
    order, others = _inputs(RESULTS / name)
    copy = tmp_path / "results"
    for d in [RESULTS / name, *others]:  # the same layout, so the recorded relative run_dirs resolve
        shutil.copytree(d, copy / d.relative_to(RESULTS), dirs_exist_ok=True)
    out, also_from = copy / name, [copy / d.relative_to(RESULTS) for d in others]
    try:
        build_report(out, order, also_from=also_from)
    except ProtocolMismatch:  # the committed table then carries the mismatch warning, compared below
        build_report(out, order, allow_protocol_mismatch=True, also_from=also_from)
    for f in REPORT_FILES:
        assert (out / f).read_text(encoding="utf-8") == (RESULTS / name / f).read_text(encoding="utf-8"), (
            f"results/{name}/{f} differs from what `step-jepa compare --report` builds from its runs today"
        )
