"""``step-jepa prepare``: convert input files, a hub dataset and/or generated problems into one
prepared JSONL (written atomically, with ``<output>.report.json``), and the seeded dev split.

Only the standard library is needed; ``datasets`` is imported lazily for ``--dataset``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from step_jepa.data.formats import FORMATS, convert_line
from step_jepa.data.inputs import (
    Report,
    _Collector,
    _Converter,
    _file_items,
    _Item,
    hub_items,
    split_input_files,
)
from step_jepa.data.records import DEFAULT_SYSTEM_PROMPT, DataError


def _generated_items(
    n: int, seed: int, system_prompt: str, report: Report, task: dict[str, Any] | None = None
) -> Iterator[tuple[_Item, str]]:
    from step_jepa.data.synthetic import generate_problems

    task = task or {}
    knobs = "".join(f", {k}={v}" for k, v in task.items())
    report.files.append(f"generator(n={n}, seed={seed}{knobs})")
    for i, record in enumerate(generate_problems(n, seed=seed, system_prompt=system_prompt, **task)):
        yield ("generator", i + 1, record), record["id"]


def prepare(
    inputs: str | Path | None,
    output: str | Path,
    *,
    fmt: str = "auto",
    dataset: str | None = None,
    split: str = "train",
    keep_annotations: bool = False,
    min_step_chars: int = 1,
    min_steps: int = 2,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    generate: int | None = None,
    seed: int = 0,
    skip_invalid: bool = True,
    generate_task: dict[str, Any] | None = None,
) -> Report:
    """Convert input files, a hub dataset and/or generated problems into one prepared JSONL.

    The output is written atomically (temp file + rename), so a strict-mode failure or a crash
    never leaves a half-written training file behind. The report is printed and saved as
    ``<output>.report.json``.
    """
    if inputs is None and dataset is None and not generate:
        raise DataError("nothing to prepare: give an input path, a dataset or a number to generate")
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(output)
    report = Report(output=str(out))

    def convert(obj: dict, default_id: str) -> dict:
        return convert_line(
            obj,
            fmt,
            keep_annotations=keep_annotations,
            min_step_chars=min_step_chars,
            min_steps=min_steps,
            system_prompt=system_prompt,
            id=default_id,
        )

    def convert_generated(obj: dict, default_id: str) -> dict:
        # Generated records are already prepared: a forced --format must not reject them.
        return convert_line(obj, "prepared", min_step_chars=min_step_chars, min_steps=min_steps)

    sources: list[tuple[Iterable[tuple[_Item, str]], _Converter]] = []
    if inputs is not None:
        files, ignored = split_input_files(inputs)  # fail on a wrong path before touching the output
        report.ignored_files = [str(f) for f in ignored]
        sources.append((_file_items(Path(inputs), files, report, exclude=out.resolve()), convert))
    if dataset is not None:
        name, _, config = dataset.partition(":")  # NAME:CONFIG selects a config
        sources.append((hub_items(name, config or None, split, report), convert))
    if generate:
        sources.append((_generated_items(generate, seed, system_prompt, report, generate_task), convert_generated))
    _write_records(out, report, sources, strict=not skip_invalid)
    print(report.format())
    Path(f"{out}.report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return report


def _write_records(
    out: Path,
    report: Report,
    sources: list[tuple[Iterable[tuple[_Item, str]], _Converter]],
    strict: bool,
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # A plain open() (not mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            # One collector across sources, so ids must be unique over the whole output.
            collector = _Collector(report, strict)
            for items, convert in sources:
                for item, default_id in items:
                    record = collector.feed(item, default_id, convert)
                    if record is not None:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def split_dev(path: str | Path, fraction: float, seed: int) -> tuple[int, int, Path]:
    """Move a seeded random `fraction` of a prepared file's lines to `<stem>.dev.jsonl`.

    A fixed held-out split of the *training* data is where hyper-parameters get chosen, so the
    test set is touched only for the final comparison.
    """
    import random

    if not 0 < fraction < 1:
        raise DataError(f"--dev_fraction must be in (0, 1), got {fraction}")
    src = Path(path)
    # split on "\n" only: str.splitlines would also split on U+2028 inside JSON strings
    lines = [line + "\n" for line in src.read_text(encoding="utf-8").split("\n") if line.strip()]
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    dev_idx = set(order[: max(1, round(fraction * len(lines)))])
    dev = src.with_name(src.stem + ".dev.jsonl")
    for path, text in (
        (dev, "".join(lines[i] for i in sorted(dev_idx))),
        (src, "".join(line for i, line in enumerate(lines) if i not in dev_idx)),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # atomic: a crash leaves the old file, never half of one
    report = Path(f"{src}.report.json")
    if report.exists():  # the saved report must describe the files as they now are
        data = json.loads(report.read_text(encoding="utf-8"))
        data["dev_split"] = {
            "fraction": fraction,
            "seed": seed,
            "train": len(lines) - len(dev_idx),
            "dev": len(dev_idx),
            "dev_file": str(dev),
        }
        report.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(lines) - len(dev_idx), len(dev_idx), dev
