"""The data layer's loading entry point: :func:`load_records` reads a training (or test) file back.

The data layer, bottom up:

* :mod:`step_jepa.data.answers`: answer extraction, normalisation and matching;
* :mod:`step_jepa.data.records`: the prepared-record schema (:func:`make_record`), step cleaning, the
  errors :class:`DataError` and :class:`Skip` (with its fixed :data:`SKIP_REASONS`);
* :mod:`step_jepa.data.formats`: :func:`convert_line`, one raw line (GSM8K, DeepSeek-style, chat,
  prepared) to a record;
* :mod:`step_jepa.data.inputs`: reading files line by line into a :class:`Report`;
* :mod:`step_jepa.data.prepare`: ``step-jepa prepare`` and the dev split;
* this module: :func:`load_records` and :func:`load_dataset_records` (a hub dataset), and the names above re-exported so that
  ``from step_jepa.data.load import ...`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from step_jepa.data.formats import convert_line
from step_jepa.data.inputs import Report, _Collector, _Converter, _file_items, _Item, hub_items, split_input_files
from step_jepa.data.records import DataError


def load_records(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    system_prompt: str | None = None,
    min_steps: int = 1,
    purpose: str = "training",
) -> tuple[list[dict], Report]:
    """Read a training file (or directory): prepared records or any raw format, converted on the
    fly.

    By default the first bad line raises ``DataError("{path}:{line}: {reason}: ...")``: a
    training run should not silently learn from a different dataset than the user thinks. With
    ``skip_invalid`` bad lines are counted per reason in the returned report instead.

    ``min_steps`` defaults to 1 (unlike ``prepare``'s 2): a one-step example still trains the LM
    loss, it just contributes no JEPA step pair. ``system_prompt``, when given, replaces every
    record's system message (the training config is the authority at train time); None keeps
    each record's own, with the default for raw records that have none.

    Raises ``DataError`` as well when no usable record is left, since training on nothing is
    never what the user meant. ``purpose`` names the records in that message ("training",
    "test", ...): eval and bench read files through here too, and "no usable training records"
    about a test file sends the user looking in the wrong place.
    """
    report = Report()
    files, ignored = split_input_files(path)
    report.ignored_files = [str(f) for f in ignored]
    items = _file_items(Path(path), files, report, exclude=None)
    return _collect(str(path), items, report, _converter(min_steps, system_prompt), skip_invalid, purpose)


def load_dataset_records(
    name: str,
    config: str | None = None,
    split: str = "train",
    *,
    skip_invalid: bool = False,
    system_prompt: str | None = None,
    min_steps: int = 1,
    purpose: str = "training",
) -> tuple[list[dict], Report]:
    """:func:`load_records` for a Hugging Face dataset (hub name, or a ``save_to_disk``
    directory): its rows are converted like the lines of a file, with the same strictness,
    system prompt and :class:`Report` (``files`` names it ``NAME[SPLIT]``, errors ``NAME[SPLIT]:ROW``).
    """
    report = Report()
    items = hub_items(name, config, split, report)
    return _collect(f"{name}[{split}]", items, report, _converter(min_steps, system_prompt), skip_invalid, purpose)


def _converter(min_steps: int, system_prompt: str | None) -> _Converter:
    def convert(obj: dict, default_id: str) -> dict:
        record = convert_line(obj, "auto", min_steps=min_steps, id=default_id)
        if system_prompt is not None:
            record["messages"][0]["content"] = system_prompt
        return record

    return convert


def _collect(
    where: str,
    items: Iterable[tuple[_Item, str]],
    report: Report,
    convert: _Converter,
    skip_invalid: bool,
    purpose: str,
) -> tuple[list[dict], Report]:
    collector = _Collector(report, strict=not skip_invalid)
    records = [r for item, rid in items if (r := collector.feed(item, rid, convert)) is not None]
    if not records:
        raise DataError(f"{where}: no usable {purpose} records\n{report.format()}")
    return records, report
